//! Deleting a deleted workspace's data from object storage.
//!
//! Deleting a workspace records a purge in the same transaction; this task removes the objects
//! under `workspace=<id>/` and then the record, retrying until the store answers. A crash in
//! between only repeats the (idempotent) deletion.

use std::sync::Arc;
use std::time::Duration;

use sluice_storage::lake::Lake;
use sluice_storage::layout::workspace_prefix;

use crate::app::App;
use crate::store::Change;

/// Runs pending purges after every configuration change and every `retry`, until the runtime
/// stops.
pub async fn run(app: App, lake: Arc<Lake>, retry: Duration) {
    let mut versions = app.config_version.subscribe();
    loop {
        for id in app.store.read(|s| s.purges.clone()) {
            let prefix = workspace_prefix(lake.prefix(), id);
            match lake.delete_all_under(&prefix).await {
                Ok(count) => {
                    tracing::info!(workspace = %id, objects = count, "deleted workspace data");
                    if let Err(e) = app
                        .write(move |_| Ok((vec![Change::DeletePurge(id)], ())))
                        .await
                    {
                        tracing::warn!(error = ?e, "recording a finished purge failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(workspace = %id, error = %e, "deleting workspace data failed; will retry")
                }
            }
        }
        tokio::select! {
            changed = versions.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(retry) => {}
        }
    }
}
