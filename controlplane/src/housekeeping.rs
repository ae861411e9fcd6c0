//! Forgetting what has expired: sessions and personal tokens past their expiry, invitations
//! past theirs, OAuth codes and tokens past theirs, OAuth clients unused too long and grants
//! whose workspace or member is gone. Expired records are already refused when used; this
//! keeps them from piling up.

use std::time::Duration;

use chrono::Utc;

use crate::app::App;
use crate::store::Change;

/// How often expired records are removed.
pub const INTERVAL: Duration = Duration::from_secs(600);

/// Removes expired records every `interval`, until the control plane stops.
pub async fn sweep(app: App, interval: Duration) {
    let mut stopping = app.stop_signal();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopping.requested() => return,
        }
        let unused_days = app.config.oauth_client_unused_days as i64;
        let result = app
            .write(move |s| {
                let now = Utc::now();
                let mut changes: Vec<Change> = s
                    .credentials
                    .values()
                    .filter(|c| c.expires_at.is_some_and(|at| at <= now))
                    .map(|c| Change::DeleteCredential(c.sha256.clone()))
                    .collect();
                changes.extend(
                    s.invitations
                        .values()
                        .filter(|i| i.expires_at <= now)
                        .map(|i| Change::DeleteInvitation(i.id)),
                );
                let unused_before = now - chrono::Duration::days(unused_days);
                changes.extend(
                    crate::oauth::expired(s, now, unused_before)
                        .into_iter()
                        .map(Change::OAuth),
                );
                Ok((changes, ()))
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = ?e, "removing expired records failed; retrying later");
        }
    }
}
