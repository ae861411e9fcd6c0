//! Where a node's configuration comes from, until the control plane streams it: a snapshot
//! file (watched for changes), else the last-known-good copy in the redb cache, else a fresh
//! bootstrap (see [`crate::bootstrap`]).
//!
//! Every snapshot is validated before it is cached or applied; an invalid or older one is
//! logged and ignored, and the node keeps serving the configuration it has.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use sluice_config::nudge::SnapshotNudge;
use sluice_config::snapshot::ConfigSnapshot;
use sluice_config::state::ConfigState;
use sluice_storage::cache::ConfigCache;
use sluice_storage::shutdown::Shutdown;
use tracing::{error, info, warn};

use crate::access::Access;
use crate::metrics::NodeMetrics;

/// How often the snapshot file is checked for changes (at once when nudged).
const WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// Errors reading a snapshot file.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading config snapshot {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config snapshot {path} is not valid JSON for a snapshot: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("config snapshot {path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: sluice_config::snapshot::SnapshotError,
    },
}

/// Reads and validates a snapshot file.
pub fn read_snapshot_file(path: &Path) -> Result<ConfigSnapshot, SourceError> {
    let bytes = std::fs::read(path).map_err(|source| SourceError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let snapshot: ConfigSnapshot =
        serde_json::from_slice(&bytes).map_err(|source| SourceError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
    snapshot.validate().map_err(|source| SourceError::Invalid {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(snapshot)
}

/// Polls a snapshot file and applies newer versions, until the shutdown signal (seen within
/// one poll interval). A control plane in the same process nudges it after each version it
/// writes, and the file is read at once.
pub struct SnapshotWatch {
    thread: JoinHandle<()>,
}

impl SnapshotWatch {
    /// Follows `path` from `current`, the configuration the node serves now; `nudge`, when
    /// given, says a new version was written.
    pub fn start(
        path: PathBuf,
        nudge: Option<SnapshotNudge>,
        current: ConfigSnapshot,
        cache: Arc<ConfigCache>,
        access: Arc<Access>,
        metrics: Arc<NodeMetrics>,
        shutdown: Shutdown,
    ) -> std::io::Result<Self> {
        Self::start_polling(
            path,
            nudge,
            WATCH_INTERVAL,
            current,
            (cache, access, metrics),
            shutdown,
        )
    }

    fn start_polling(
        path: PathBuf,
        nudge: Option<SnapshotNudge>,
        interval: Duration,
        current: ConfigSnapshot,
        (cache, access, metrics): (Arc<ConfigCache>, Arc<Access>, Arc<NodeMetrics>),
        shutdown: Shutdown,
    ) -> std::io::Result<Self> {
        // Counted before the thread starts: a version written from here on is a nudge it sees.
        let mut nudged = nudge.as_ref().map_or(0, SnapshotNudge::count);
        let thread = std::thread::Builder::new()
            .name("sluice-config-watch".into())
            .spawn(move || {
                let version = current.version;
                let mut state = ConfigState::new(current).unwrap_or_else(|e| {
                    // Cannot happen for a configuration validated before it was served.
                    warn!(error = %e, version, "the configuration served at start does not index; the next file replaces it whole");
                    ConfigState::empty()
                });
                let mut seen = stamp(&path);
                while !shutdown.is_requested() {
                    let was_nudged = match &nudge {
                        Some(nudge) => {
                            let before = nudged;
                            nudged = nudge.wait(before, interval);
                            nudged != before
                        }
                        None => {
                            std::thread::sleep(interval);
                            false
                        }
                    };
                    let now = stamp(&path);
                    // A nudge is read even when the stamp looks the same (two writes within
                    // the file system's time resolution, of the same length).
                    if now == seen && !was_nudged {
                        continue;
                    }
                    seen = now;
                    apply_file(&path, &mut state, &cache, &access, &metrics);
                }
            })?;
        Ok(SnapshotWatch { thread })
    }
}

impl SnapshotWatch {
    /// Waits for the watch's thread to end (after the shutdown signal).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn apply_file(
    path: &Path,
    state: &mut ConfigState,
    cache: &ConfigCache,
    access: &Access,
    metrics: &NodeMetrics,
) {
    let snapshot = match read_snapshot_file(path) {
        Ok(snapshot) => snapshot,
        Err(err) => {
            error!(error = %err, "config snapshot change ignored; keeping the current configuration");
            return;
        }
    };
    let current = access.current().version;
    if snapshot.version == current && snapshot.content_hash() == state.hash() {
        // The version served, written again (the control plane's first write after a start
        // nudges too): nothing to say.
        tracing::debug!(
            version = current,
            "config snapshot file holds the version served"
        );
        return;
    }
    if snapshot.version <= current {
        warn!(
            file_version = snapshot.version,
            current, "config snapshot file changed without a higher version; ignored"
        );
        return;
    }
    if let Err(err) = access.check(snapshot.workspaces.iter()) {
        error!(error = %err, "config snapshot change refused; keeping the current configuration");
        return;
    }
    let version = snapshot.version;
    // The access table and the cache change only where the configuration did; should either
    // not be at the state's version, it takes the whole configuration.
    let change = match state.replace(snapshot) {
        Ok(change) => change,
        Err(err) => {
            error!(error = %err, "config snapshot change ignored; keeping the current configuration");
            return;
        }
    };
    if let Err(err) = access.apply_change(&change) {
        warn!(error = %err, "rebuilding the access table from the whole configuration");
        if let Err(err) = access.apply_state(state) {
            // Checked above; cannot happen.
            error!(error = %err, "the configuration could not be installed");
        }
    }
    // Served but not cached: a restart serves the cached older version, then this file again.
    sluice_storage::chaos::point("config-swap");
    if let Err(err) = cache.store_change(&change) {
        warn!(error = %err, "rewriting the whole configuration cache");
        if let Err(err) = cache.store(&state.snapshot()) {
            error!(error = %err, "caching the new config snapshot failed; serving it anyway");
        }
    }
    metrics.config_version.set(version as i64);
    info!(version, "config snapshot applied");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::RateDefaults;
    use sluice_config::test_fixtures::workspace;
    use sluice_storage::metrics::StorageMetrics;

    #[test]
    fn a_nudged_watch_applies_the_new_file_without_waiting_for_its_poll() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config-snapshot.json");
        let v1 = ConfigSnapshot {
            version: 1,
            workspaces: vec![workspace("plant", &[1])],
        };
        std::fs::write(&path, serde_json::to_vec(&v1).expect("json")).expect("write v1");
        let cache = Arc::new(ConfigCache::open(&dir.path().join("cache.redb")).expect("cache"));
        let access = Arc::new(Access::new(
            &v1,
            RateDefaults {
                events_per_second: 10,
            },
        ));
        let metrics = Arc::new(NodeMetrics::new(&StorageMetrics::default()));
        let trigger = sluice_storage::shutdown::ShutdownTrigger::new();
        let nudge = SnapshotNudge::default();
        // A poll far beyond the test: only the nudge can make it read the file.
        let watch = SnapshotWatch::start_polling(
            path.clone(),
            Some(nudge.clone()),
            Duration::from_secs(3600),
            v1.clone(),
            (cache, access.clone(), metrics),
            trigger.signal(),
        )
        .expect("watch");

        let v2 = ConfigSnapshot {
            version: 2,
            workspaces: vec![workspace("plant", &[1, 2])],
        };
        std::fs::write(&path, serde_json::to_vec(&v2).expect("json")).expect("write v2");
        nudge.nudge();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while access.current().version != 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the nudged watch did not apply version 2"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // It stops on the shutdown signal once woken.
        trigger.trigger(std::time::Instant::now());
        nudge.nudge();
        watch.join();
    }
}
