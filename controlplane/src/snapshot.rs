//! The data-plane configuration derived from the control plane's state, in the `storage/`
//! snapshot format (token hashes only, never secrets).
//!
//! Each version is also written to `<data-dir>/config-snapshot.json`, which a data-plane node
//! can follow with `--config-snapshot` until the configuration stream exists.

use std::io::Write;
use std::path::{Path, PathBuf};

use sluice_config::snapshot::{ConfigSnapshot, SourceConfig, TokenConfig, WorkspaceConfig};

use crate::app::App;
use crate::store::State;

/// File name of the written snapshot under the data dir.
pub const FILE_NAME: &str = "config-snapshot.json";

/// The configuration data-plane nodes need, at the state's version.
pub(crate) fn build(s: &State) -> ConfigSnapshot {
    ConfigSnapshot {
        version: s.config_version,
        workspaces: s
            .workspaces
            .values()
            .map(|ws| WorkspaceConfig {
                id: ws.id,
                slug: ws.slug.clone(),
                name: ws.name.clone(),
                enabled: ws.enabled,
                events_per_second_max: None,
                cors_origins: ws.cors_allowed_origins.clone(),
                sources: s
                    .sources_of(ws.id)
                    .map(|x| SourceConfig {
                        id: x.id,
                        slug: x.slug.clone(),
                        name: x.name.clone(),
                        protocols: x.protocols.clone(),
                        schema: None,
                        on_invalid: Default::default(),
                        keep_payload: true,
                    })
                    .collect(),
                tokens: s
                    .tokens_of(ws.id)
                    .map(|t| TokenConfig {
                        id: t.id,
                        name: t.name.clone(),
                        sha256: t.sha256.clone(),
                        scopes: t.scopes.clone(),
                        sources: t.sources.clone(),
                        device_id: t.device_id.clone(),
                        expires_at: t.expires_at,
                    })
                    .collect(),
                tag_rules: Vec::new(),
            })
            .collect(),
    }
}

/// Writes `snapshot` to `path` atomically (a reader sees the old or the new file, whole).
pub(crate) fn write_file(path: &Path, snapshot: &ConfigSnapshot) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(snapshot)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Publishes every new version, until the control plane stops: to the history the
/// configuration stream serves from, and to the snapshot file.
pub(crate) async fn keep_file_current(app: App, path: PathBuf) {
    let mut stopping = app.stop_signal();
    let mut versions = app.config_version.subscribe();
    loop {
        // Marked seen before reading the state: a change committed while this version is
        // written wakes the loop again instead of being lost.
        versions.borrow_and_update();
        let target = path.clone();
        let worker = app.clone();
        // Building, diffing and hashing a large configuration takes tens of milliseconds of
        // CPU: off the async threads, like the file write.
        let written = tokio::task::spawn_blocking(move || {
            let snapshot = worker.store.read(build);
            let version = snapshot.version;
            worker.history.advance(snapshot.clone());
            write_file(&target, &snapshot).map(|()| version)
        })
        .await;
        match written {
            Ok(Ok(version)) => tracing::debug!(version, "configuration snapshot written"),
            Ok(Err(e)) => {
                tracing::warn!(path = %path.display(), error = %e, "writing the configuration snapshot failed")
            }
            Err(e) => tracing::warn!(error = %e, "writing the configuration snapshot failed"),
        }
        // A version committed before the stop is still written (hence `biased`); one committed
        // after it, at the next start.
        tokio::select! {
            biased;
            changed = versions.changed() => if changed.is_err() { return },
            _ = stopping.requested() => return,
        }
    }
}
