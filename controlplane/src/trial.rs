//! Trials: a workspace is enabled while the user who created it has a paid plan or a running
//! trial. A sweeper applies the rule when trials end; operator changes apply it at once.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::app::App;
use crate::model::User;
use crate::store::{Change, State};

/// Changes that bring the enabled state of workspaces in line with their creators' plans at
/// `now`: of every workspace, or, with `creator` (a user record about to be stored), of the
/// workspaces that user created.
pub fn reconcile(s: &State, now: DateTime<Utc>, creator: Option<&User>) -> Vec<Change> {
    s.workspaces
        .values()
        .filter(|ws| creator.is_none_or(|c| ws.created_by == c.id))
        .filter_map(|ws| {
            let active = match creator {
                Some(user) => user.is_active(now),
                None => s.users.get(&ws.created_by).is_some_and(|u| u.is_active(now)),
            };
            (ws.enabled != active).then(|| {
                let mut ws = ws.clone();
                ws.enabled = active;
                tracing::info!(workspace = %ws.slug, enabled = active, "workspace state follows its creator's plan");
                Change::PutWorkspace(ws)
            })
        })
        .collect()
}

/// Runs [`reconcile`] for everyone every `interval`, until the control plane stops.
pub async fn sweep(app: App, interval: Duration) {
    let mut stopping = app.stop_signal();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopping.requested() => return,
        }
        let result = app
            .write(|s| Ok((reconcile(s, Utc::now(), None), ())))
            .await;
        if let Err(e) = result {
            tracing::warn!(error = ?e, "trial sweep failed; retrying at the next tick");
        }
    }
}
