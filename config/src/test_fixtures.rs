//! Configurations for unit tests: workspaces with one `telemetry` source and tokens whose
//! hashes are given as numbers; and how long each fuzz test runs.

use uuid::Uuid;

use crate::snapshot::{Protocol, Scope, SourceConfig, TokenConfig, WorkspaceConfig};

/// An ingest token whose SHA-256 is `hash` as 64 hex digits.
pub fn token(hash: u64) -> TokenConfig {
    TokenConfig {
        id: Uuid::now_v7(),
        name: String::new(),
        sha256: format!("{hash:064x}"),
        scopes: vec![Scope::Ingest],
        sources: None,
        device_id: None,
        expires_at: None,
        endpoints: None,
    }
}

/// An enabled workspace with the source `telemetry` and one token per hash.
pub fn workspace(slug: &str, tokens: &[u64]) -> WorkspaceConfig {
    WorkspaceConfig {
        id: Uuid::now_v7(),
        slug: slug.into(),
        name: slug.into(),
        enabled: true,
        events_per_second_max: None,
        cors_origins: Vec::new(),
        sources: vec![SourceConfig {
            id: Uuid::now_v7(),
            slug: "telemetry".into(),
            name: String::new(),
            protocols: Protocol::all(),
            schema: None,
            on_invalid: Default::default(),
            keep_payload: true,
        }],
        tokens: tokens.iter().map(|h| token(*h)).collect(),
        tag_rules: Vec::new(),
        outputs: Vec::new(),
        export_endpoints: Vec::new(),
        webhooks: Vec::new(),
    }
}

/// Milliseconds each fuzz test runs: `SLUICE_FUZZ_MS`, else one second (the test suite's
/// short run; `SLUICE_FUZZ_MS=600000` is the documented long one).
pub fn fuzz_budget_ms() -> u64 {
    std::env::var("SLUICE_FUZZ_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}
