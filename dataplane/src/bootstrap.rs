//! First-start bootstrap: a ready-to-use workspace `default` with a source `telemetry` and an
//! ingest token, so that `sluice up` accepts events without any setup.
//!
//! The token secret is written once to `<data-dir>/bootstrap.json` (mode 0600) and never
//! stored elsewhere; the cache keeps only its hash. Later starts reuse both.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluice_config::snapshot::{
    ConfigSnapshot, Protocol, Scope, SourceConfig, TokenConfig, WorkspaceConfig,
};
use sluice_config::token;
use uuid::Uuid;

pub const FILE_NAME: &str = "bootstrap.json";

/// Contents of `bootstrap.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bootstrap {
    /// Workspace slug.
    pub workspace: String,
    /// Source slug.
    pub source: String,
    /// The ingest token secret.
    pub token: String,
    /// Where to POST events.
    pub http_url: String,
}

/// A new configuration with one workspace, source and token, and the secret of that token.
pub fn create() -> (ConfigSnapshot, Bootstrap) {
    let secret = token::generate();
    let snapshot = ConfigSnapshot {
        version: 1,
        workspaces: vec![WorkspaceConfig {
            id: Uuid::now_v7(),
            slug: "default".into(),
            name: "Default".into(),
            enabled: true,
            events_per_second_max: None,
            cors_origins: Vec::new(),
            sources: vec![SourceConfig {
                id: Uuid::now_v7(),
                slug: "telemetry".into(),
                name: "Telemetry".into(),
                protocols: Protocol::all(),
                schema: None,
                on_invalid: Default::default(),
                keep_payload: true,
            }],
            tokens: vec![TokenConfig {
                id: Uuid::now_v7(),
                name: "bootstrap ingest token".into(),
                sha256: token::hash_hex(&secret),
                scopes: vec![Scope::Ingest],
                sources: None,
                device_id: None,
                expires_at: None,
                endpoints: None,
            }],
            tag_rules: Vec::new(),
            outputs: Vec::new(),
            export_endpoints: Vec::new(),
            webhooks: Vec::new(),
        }],
    };
    let bootstrap = Bootstrap {
        workspace: "default".into(),
        source: "telemetry".into(),
        token: secret,
        http_url: String::new(),
    };
    (snapshot, bootstrap)
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Reads `bootstrap.json` if present.
pub fn read(data_dir: &Path) -> Option<Bootstrap> {
    let bytes = std::fs::read(path(data_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes `bootstrap.json` with mode 0600, atomically.
pub fn write(data_dir: &Path, bootstrap: &Bootstrap) -> std::io::Result<()> {
    let target = path(data_dir);
    let tmp = data_dir.join(format!("{FILE_NAME}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    let json = serde_json::to_vec_pretty(bootstrap).map_err(std::io::Error::other)?;
    file.write_all(&json)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, &target)
}
