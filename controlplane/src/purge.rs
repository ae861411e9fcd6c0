//! Deleting a deleted workspace's data from object storage.
//!
//! Deleting a workspace records a purge in the same transaction; this task removes the objects
//! under `workspace=<id>/`, retrying every 30 s until the store answers. Data-plane nodes may
//! still hold events of the workspace in their WALs and upload them after the first pass, so a
//! second pass runs [`REPEAT_AFTER`] later. A crash in between only repeats the (idempotent)
//! deletion.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sluice_storage::lake::Lake;
use sluice_storage::layout::workspace_prefix;

use crate::app::App;
use crate::store::Change;

/// Deletion passes per deleted workspace.
pub const PASSES: u32 = 2;
/// Time between passes: longer than a node's default batch age (60 s) and the configuration
/// propagation, so what nodes flushed after the deletion is gone too.
pub const REPEAT_AFTER: Duration = Duration::from_secs(15 * 60);
/// How often a failed pass is retried.
const RETRY: Duration = Duration::from_secs(30);

/// Runs purges as they fall due, until the control plane stops.
pub async fn run(app: App, lake: Arc<Lake>) {
    let mut stopping = app.stop_signal();
    let mut versions = app.config_version.subscribe();
    loop {
        // A pass cut short by the stop is repeated whole at the next start: deleting is
        // idempotent, and the purge record goes only after its last pass.
        tokio::select! {
            () = run_due(&app, &lake) => {}
            _ = stopping.requested() => return,
        }
        let next_due = app.store.read(|s| s.purges.iter().map(|p| p.due_at).min());
        let wait = next_due
            .and_then(|at| (at - Utc::now()).to_std().ok())
            .unwrap_or(RETRY)
            .min(RETRY);
        tokio::select! {
            changed = versions.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
            _ = stopping.requested() => return,
        }
    }
}

/// Runs the passes that are due now.
async fn run_due(app: &App, lake: &Lake) {
    let now = Utc::now();
    let due: Vec<_> = app.store.read(|s| {
        s.purges
            .iter()
            .filter(|p| p.due_at <= now)
            .cloned()
            .collect()
    });
    for purge in due {
        let id = purge.workspace_id;
        let prefix = workspace_prefix(lake.prefix(), id);
        let change = match lake.delete_all_under(&prefix).await {
            Ok(count) => {
                tracing::info!(workspace = %id, objects = count, "deleted workspace data");
                if purge.passes_left > 1 {
                    let mut next = purge.clone();
                    next.passes_left -= 1;
                    next.due_at =
                        Utc::now() + chrono::Duration::from_std(REPEAT_AFTER).unwrap_or_default();
                    Change::PutPurge(next)
                } else {
                    Change::DeletePurge(id)
                }
            }
            Err(e) => {
                tracing::warn!(workspace = %id, error = %e, "deleting workspace data failed; will retry");
                let mut retry = purge.clone();
                retry.due_at = Utc::now() + chrono::Duration::from_std(RETRY).unwrap_or_default();
                Change::PutPurge(retry)
            }
        };
        if let Err(e) = app.write(move |_| Ok((vec![change], ()))).await {
            tracing::warn!(error = ?e, "recording a purge pass failed");
        }
    }
}
