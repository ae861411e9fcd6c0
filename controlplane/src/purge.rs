//! Deleting a deleted workspace's data from object storage.
//!
//! Deleting a workspace records a purge in the same transaction; this task removes the objects
//! under `workspace=<id>/`, retrying every 30 s until the store answers. Data-plane nodes may
//! still hold events of the workspace in their WALs and upload them after the first pass, so a
//! second pass runs [`REPEAT_AFTER`] later. A crash in between only repeats the (idempotent)
//! deletion.
//!
//! In a local lake, object storage deletes files but leaves their directories behind, so each
//! pass then removes the empty directories under `workspace=<id>/` and that directory itself.
//! It never follows a symlink and never touches anything outside that directory.

use std::path::{Component, Path as FsPath};
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
/// Deepest directory below a workspace's that is looked into (the layout has four levels:
/// source, date, hour, files).
const DIR_DEPTH_MAX: usize = 8;

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
                if let Some(root) = lake.local_root() {
                    let dir = root.join(prefix.as_ref());
                    let root = root.to_path_buf();
                    let removed =
                        tokio::task::spawn_blocking(move || remove_empty_dirs_under(&root, &dir))
                            .await;
                    match removed {
                        Ok(Ok(dirs)) => {
                            tracing::debug!(workspace = %id, dirs, "removed empty directories")
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(workspace = %id, error = %e, "removing the workspace's empty directories failed; the next pass retries")
                        }
                        Err(e) => {
                            tracing::warn!(workspace = %id, error = %e, "removing the workspace's empty directories did not complete")
                        }
                    }
                }
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

/// Removes `dir` (a workspace's directory inside the local lake `root`) and the directories
/// below it, deepest first, as far as they are empty; returns how many went. Does nothing
/// unless `dir` lies strictly inside `root` and is a directory itself rather than a symlink;
/// never follows symlinks below it (a symlink, like a file, keeps its directory).
fn remove_empty_dirs_under(root: &FsPath, dir: &FsPath) -> std::io::Result<usize> {
    let inside = dir.strip_prefix(root).is_ok_and(|rest| {
        rest.components().next().is_some()
            && rest.components().all(|c| matches!(c, Component::Normal(_)))
    });
    if !inside {
        return Ok(0);
    }
    remove_empty_dirs(dir, 0)
}

fn remove_empty_dirs(dir: &FsPath, depth: usize) -> std::io::Result<usize> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    }
    let mut removed = 0;
    if depth < DIR_DEPTH_MAX {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            // `file_type` does not follow symlinks: a symlink to a directory is not one here.
            if entry.file_type()?.is_dir() {
                removed += remove_empty_dirs(&entry.path(), depth + 1)?;
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(removed + 1),
        // Not empty (a file, a symlink, or something uploaded meanwhile), or already gone.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::DirectoryNotEmpty | std::io::ErrorKind::NotFound
            ) =>
        {
            Ok(removed)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_directories_go_while_files_symlinks_and_everything_outside_stay() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("lake");
        let ws = root.join("workspace=1");
        std::fs::create_dir_all(ws.join("source=a/date=2026-01-01/hour=00")).expect("mkdir");
        std::fs::create_dir_all(ws.join("source=b/date=2026-01-01/hour=00")).expect("mkdir");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(outside.join("empty")).expect("mkdir");
        std::os::unix::fs::symlink(&outside, ws.join("source=b/link")).expect("symlink");
        let other = root.join("workspace=2/source=a");
        std::fs::create_dir_all(&other).expect("mkdir");

        let removed = remove_empty_dirs_under(&root, &ws).expect("removed");
        assert_eq!(removed, 5, "source=a with date and hour, b's date and hour");
        assert!(!ws.join("source=a").exists());
        assert!(ws.join("source=b/link").symlink_metadata().is_ok());
        assert!(outside.join("empty").is_dir(), "a symlink is not followed");
        assert!(other.is_dir(), "other workspaces stay");

        std::fs::remove_file(ws.join("source=b/link")).expect("unlink");
        assert_eq!(remove_empty_dirs_under(&root, &ws).expect("removed"), 2);
        assert!(!ws.exists() && root.is_dir(), "the lake root stays");
        assert_eq!(remove_empty_dirs_under(&root, &ws).expect("gone"), 0);
    }

    #[test]
    fn nothing_outside_the_lake_or_behind_a_symlink_is_touched() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("lake");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(outside.join("empty")).expect("mkdir");
        std::fs::create_dir_all(&root).expect("mkdir");
        std::os::unix::fs::symlink(&outside, root.join("workspace=1")).expect("symlink");
        for dir in [
            root.join("workspace=1"),
            root.clone(),
            tmp.path().to_path_buf(),
            root.join("../outside"),
        ] {
            assert_eq!(
                remove_empty_dirs_under(&root, &dir).expect("ok"),
                0,
                "{dir:?}"
            );
        }
        assert!(outside.join("empty").is_dir() && root.is_dir());
    }
}
