//! Forgetting what has expired: sessions and personal tokens past their expiry, invitations
//! past theirs. Expired records are already refused when used; this keeps them from piling up.

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
        let result = app
            .write(|s| {
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
                Ok((changes, ()))
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = ?e, "removing expired records failed; retrying later");
        }
    }
}
