//! The configuration snapshot: what a data-plane node needs to know to accept or refuse an
//! event (workspaces and their state, sources, token hashes with scopes and bindings).
//!
//! A snapshot is versioned and self-contained. Today it comes from a JSON file or from the
//! bootstrap; the control plane will stream the same type (full snapshots, then deltas applied
//! to it), so everything here must stay serialisable and never carry token secrets.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::data_out::{self, ExportEndpointConfig, OutputConfig, WebhookConfig};
use crate::shaping::{self, OnInvalid, TagRule};

/// One version of a node's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSnapshot {
    /// Grows with every change; a node never applies an older version over a newer one.
    pub version: u64,
    #[serde(default)]
    pub workspaces: Vec<WorkspaceConfig>,
}

/// A workspace as the data plane sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceConfig {
    /// UUIDv7; names the workspace's partition in object storage.
    pub id: Uuid,
    /// URL-safe name used in ingest URLs.
    pub slug: String,
    #[serde(default)]
    pub name: String,
    /// A disabled workspace (e.g. its creator's trial ended) accepts no events.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Events per second the workspace may ingest on one node; the node default when absent.
    #[serde(default)]
    pub events_per_second_max: Option<u64>,
    /// Web origins (`scheme://host[:port]`, as browsers send them) whose pages may send
    /// events to this workspace's ingest URLs. Left out of the JSON when empty, so that
    /// workspaces without them hash as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cors_origins: Vec<String>,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Tag rules, in the order they apply ([`crate::shaping`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tag_rules: Vec<TagRule>,
    /// Outputs: filtered, projected views of a source's events ([`crate::data_out`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputConfig>,
    /// Export endpoints: outputs end-users read with `read` tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_endpoints: Vec<ExportEndpointConfig>,
    /// Webhook subscriptions: outputs delivered to URLs by the nodes that accepted the events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookConfig>,
}

fn enabled_by_default() -> bool {
    true
}

/// An ingest point of a workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub id: Uuid,
    pub slug: String,
    #[serde(default)]
    pub name: String,
    /// The protocols devices may send to this source over; a configuration written before
    /// sources had them means every protocol.
    #[serde(default = "Protocol::all")]
    pub protocols: Vec<Protocol>,
    /// JSON Schema (draft 2020-12) every event must meet; any JSON object when absent. Its
    /// top-level scalar properties become typed Parquet columns ([`crate::shaping::columns`]).
    /// The shaping fields are left out of the JSON at their defaults, so that sources without
    /// them hash as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
    /// What becomes of events the schema refuses.
    #[serde(default, skip_serializing_if = "OnInvalid::is_reject")]
    pub on_invalid: OnInvalid,
    /// Whether the `payload` column (the event's JSON text) is written beside the typed
    /// columns; a source may turn it off once it trusts its schema.
    #[serde(default = "enabled_by_default", skip_serializing_if = "is_true")]
    pub keep_payload: bool,
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A protocol devices send events over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Http,
    Mqtt,
}

impl Protocol {
    /// Every protocol, the default of a source.
    pub fn all() -> Vec<Protocol> {
        vec![Protocol::Http, Protocol::Mqtt]
    }

    /// The name stored in the `protocol` column and in configurations.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Mqtt => "mqtt",
        }
    }
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Send events.
    Ingest,
    /// Read export endpoints (`/v1/stream/...`); never send events.
    Read,
}

/// An access token, by hash only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub id: Uuid,
    #[serde(default)]
    pub name: String,
    /// Lowercase hex SHA-256 of the secret.
    pub sha256: String,
    pub scopes: Vec<Scope>,
    /// Source slugs the token may write; all sources of the workspace when absent.
    #[serde(default)]
    pub sources: Option<Vec<String>>,
    /// The only device id the token may send as, when set.
    #[serde(default)]
    pub device_id: Option<String>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// Export endpoint slugs a `read` token may read; every endpoint of the workspace when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<String>>,
}

/// Why a snapshot cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("invalid snapshot: {0}")]
    Invalid(String),
}

/// Longest slug accepted for workspaces and sources.
pub const SLUG_LEN_MAX: usize = 63;

/// Whether `slug` is a valid workspace or source slug: 1 to 63 characters of `a-z`, `0-9`
/// and `-`, starting with a letter or digit. Slugs appear in URLs and object paths, so nothing
/// else (no `/`, `..`, `=`, or upper case) may pass.
pub fn is_valid_slug(slug: &str) -> bool {
    let bytes = slug.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= SLUG_LEN_MAX
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Longest device id accepted.
pub const DEVICE_ID_LEN_MAX: usize = 128;

/// Whether `id` is a valid device id: 1 to 128 visible ASCII characters.
pub fn is_valid_device_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= DEVICE_ID_LEN_MAX && id.bytes().all(|b| b.is_ascii_graphic())
}

impl ConfigSnapshot {
    /// An empty configuration: every request is refused.
    pub fn empty() -> Self {
        ConfigSnapshot {
            version: 0,
            workspaces: Vec::new(),
        }
    }

    /// Checks the invariants the data plane relies on: unique ids, slugs and token hashes,
    /// valid slugs, well-formed hashes.
    pub fn validate(&self) -> Result<(), SnapshotError> {
        let mut ids = HashSet::new();
        let mut slugs = HashSet::new();
        let mut hashes = HashSet::new();
        for ws in &self.workspaces {
            ws.validate()?;
            if !ids.insert(ws.id) || !slugs.insert(ws.slug.as_str()) {
                return Err(SnapshotError::Invalid(format!(
                    "workspace {:?} appears twice",
                    ws.slug
                )));
            }
            for token in &ws.tokens {
                if !hashes.insert(token.sha256.as_str()) {
                    return Err(SnapshotError::duplicate_token(token));
                }
            }
        }
        Ok(())
    }
}

impl SnapshotError {
    pub(crate) fn duplicate_token(token: &TokenConfig) -> Self {
        SnapshotError::Invalid(format!("token hash of {} appears twice", token.id))
    }
}

impl WorkspaceConfig {
    /// The invariants that hold within one workspace: valid slugs, unique source slugs and ids,
    /// well-formed and unique token hashes, unique token ids (a node matches a token's old and
    /// new copy by id). Uniqueness across workspaces is the snapshot's.
    pub fn validate(&self) -> Result<(), SnapshotError> {
        let invalid = |m: String| Err(SnapshotError::Invalid(m));
        if !is_valid_slug(&self.slug) {
            return invalid(format!(
                "workspace slug {:?} is not a valid slug",
                self.slug
            ));
        }
        let mut sources = HashSet::new();
        let mut ids = HashSet::new();
        for source in &self.sources {
            if !ids.insert(source.id) {
                return invalid(format!(
                    "source id {} appears twice in workspace {:?}",
                    source.id, self.slug
                ));
            }
            if !is_valid_slug(&source.slug) {
                return invalid(format!(
                    "source slug {:?} in workspace {:?} is not a valid slug",
                    source.slug, self.slug
                ));
            }
            if !sources.insert(source.slug.as_str()) {
                return invalid(format!(
                    "source {:?} appears twice in workspace {:?}",
                    source.slug, self.slug
                ));
            }
            if let Some(schema) = &source.schema {
                shaping::check_schema(schema).map_err(|e| {
                    SnapshotError::Invalid(format!(
                        "source {:?} in workspace {:?}: {e}",
                        source.slug, self.slug
                    ))
                })?;
            }
        }
        shaping::check_rules(&self.tag_rules)
            .map_err(|e| SnapshotError::Invalid(format!("workspace {:?}: {e}", self.slug)))?;
        let slugs: Vec<&str> = self.sources.iter().map(|s| s.slug.as_str()).collect();
        data_out::check_workspace(
            &slugs,
            &self.outputs,
            &self.export_endpoints,
            &self.webhooks,
        )
        .map_err(|e| SnapshotError::Invalid(format!("workspace {:?}: {e}", self.slug)))?;
        let mut hashes = HashSet::new();
        let mut ids = HashSet::new();
        for token in &self.tokens {
            if !ids.insert(token.id) {
                return invalid(format!(
                    "token id {} appears twice in workspace {:?}",
                    token.id, self.slug
                ));
            }
            if token.hash_bytes().is_none() {
                return invalid(format!(
                    "token {} in workspace {:?} has no valid lowercase hex sha256",
                    token.id, self.slug
                ));
            }
            if !hashes.insert(token.sha256.as_str()) {
                return Err(SnapshotError::duplicate_token(token));
            }
        }
        Ok(())
    }
}

impl TokenConfig {
    /// The token's SHA-256 as bytes, when `sha256` is 64 lowercase hex digits.
    pub fn hash_bytes(&self) -> Option<[u8; 32]> {
        let lowercase_hex = self
            .sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let mut bytes = [0u8; 32];
        (lowercase_hex && hex::decode_to_slice(&self.sha256, &mut bytes).is_ok()).then_some(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_refuse_path_tricks() {
        for bad in [
            "",
            "..",
            "a/b",
            "A",
            "a b",
            "-a",
            "a=b",
            "ü",
            &"a".repeat(64),
        ] {
            assert!(!is_valid_slug(bad), "{bad:?} passed");
        }
        for good in ["default", "telemetry", "a", "fleet-01"] {
            assert!(is_valid_slug(good), "{good:?} refused");
        }
    }

    #[test]
    fn duplicate_token_hashes_are_invalid() {
        let token = TokenConfig {
            id: Uuid::now_v7(),
            name: String::new(),
            sha256: "a".repeat(64),
            scopes: vec![Scope::Ingest],
            sources: None,
            device_id: None,
            expires_at: None,
            endpoints: None,
        };
        let ws = |slug: &str| WorkspaceConfig {
            id: Uuid::now_v7(),
            slug: slug.into(),
            name: String::new(),
            enabled: true,
            events_per_second_max: None,
            cors_origins: Vec::new(),
            sources: vec![],
            tokens: vec![token.clone()],
            tag_rules: Vec::new(),
            outputs: Vec::new(),
            export_endpoints: Vec::new(),
            webhooks: Vec::new(),
        };
        let snapshot = ConfigSnapshot {
            version: 1,
            workspaces: vec![ws("a"), ws("b")],
        };
        assert!(snapshot.validate().is_err());
    }

    /// A node matches the old and new copy of a token by id, so ids must be unique within a
    /// workspace, or a token could vanish from one copy and not the other.
    #[test]
    fn duplicate_token_or_source_ids_are_invalid() {
        let token = |hash: char| TokenConfig {
            id: Uuid::nil(),
            name: String::new(),
            sha256: hash.to_string().repeat(64),
            scopes: vec![Scope::Ingest],
            sources: None,
            device_id: None,
            expires_at: None,
            endpoints: None,
        };
        let mut ws = WorkspaceConfig {
            id: Uuid::now_v7(),
            slug: "a".into(),
            name: String::new(),
            enabled: true,
            events_per_second_max: None,
            cors_origins: Vec::new(),
            sources: vec![],
            tokens: vec![token('a'), token('b')],
            tag_rules: Vec::new(),
            outputs: Vec::new(),
            export_endpoints: Vec::new(),
            webhooks: Vec::new(),
        };
        assert!(ws.validate().is_err(), "two tokens with one id");
        ws.tokens.pop();
        assert!(ws.validate().is_ok());
        let source = |slug: &str| SourceConfig {
            id: Uuid::nil(),
            slug: slug.into(),
            name: String::new(),
            protocols: Protocol::all(),
            schema: None,
            on_invalid: Default::default(),
            keep_payload: true,
        };
        ws.sources = vec![source("one"), source("two")];
        assert!(ws.validate().is_err(), "two sources with one id");
    }
}
