//! Who may send what: the in-memory index of the configuration snapshot and the checks every
//! ingest request goes through.
//!
//! The index is rebuilt off the hot path whenever the snapshot changes and swapped in
//! atomically; a request reads one consistent version without taking a lock. Tokens are looked
//! up by the SHA-256 of the presented secret, so no secret is ever kept in memory.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use sluice_storage::snapshot::{ConfigSnapshot, Scope};
use sluice_storage::token;
use uuid::Uuid;

use crate::rate_limit::{Bucket, RateLimits};

/// A workspace as the hot path needs it.
#[derive(Debug)]
pub struct WorkspaceView {
    pub id: Uuid,
    pub slug: String,
    pub enabled: bool,
    pub sources: HashSet<String>,
    pub bucket: Arc<Bucket>,
}

/// A token as the hot path needs it.
#[derive(Debug)]
pub struct TokenView {
    pub workspace_id: Uuid,
    pub can_ingest: bool,
    pub sources: Option<HashSet<String>>,
    pub device_id: Option<String>,
    pub expires_at_us: Option<i64>,
}

/// One version of the configuration, indexed.
#[derive(Debug, Default)]
pub struct ConfigView {
    pub version: u64,
    workspaces: HashMap<String, Arc<WorkspaceView>>,
    tokens: HashMap<[u8; 32], TokenView>,
}

/// Why a request is refused before its body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    UnknownToken,
    ExpiredToken,
    UnknownWorkspace,
    WrongWorkspace,
    WorkspaceDisabled,
    UnknownSource,
    MissingScope,
    SourceNotAllowed,
    DeviceNotAllowed { bound: String },
}

/// What an accepted token grants for this request.
#[derive(Debug)]
pub struct Grant<'a> {
    pub workspace: Arc<WorkspaceView>,
    /// The device the events are from: the header's, or the token's binding.
    pub device_id: Option<&'a str>,
}

/// What an accepted MQTT CONNECT may rely on until the configuration changes.
#[derive(Debug)]
pub struct SessionGrant {
    pub workspace_id: Uuid,
    /// When the token stops working; the session is closed then.
    pub expires_at_us: Option<i64>,
}

/// Rate settings applied to every workspace without its own.
#[derive(Debug, Clone, Copy)]
pub struct RateDefaults {
    pub events_per_second: u64,
}

impl ConfigView {
    fn build(snapshot: &ConfigSnapshot, limits: &RateLimits, rates: RateDefaults) -> Self {
        let mut workspaces = HashMap::new();
        let mut tokens = HashMap::new();
        for ws in &snapshot.workspaces {
            let rate = ws
                .events_per_second_max
                .unwrap_or(rates.events_per_second)
                .max(1);
            // One second's worth: a workspace may not exceed its rate even in one request.
            let burst = rate;
            workspaces.insert(
                ws.slug.clone(),
                Arc::new(WorkspaceView {
                    id: ws.id,
                    slug: ws.slug.clone(),
                    enabled: ws.enabled,
                    sources: ws.sources.iter().map(|s| s.slug.clone()).collect(),
                    bucket: limits.bucket(ws.id, rate, burst),
                }),
            );
            for tok in &ws.tokens {
                let mut hash = [0u8; 32];
                if hex::decode_to_slice(&tok.sha256, &mut hash).is_err() {
                    continue;
                }
                tokens.insert(
                    hash,
                    TokenView {
                        workspace_id: ws.id,
                        can_ingest: tok.scopes.contains(&Scope::Ingest),
                        sources: tok.sources.as_ref().map(|s| s.iter().cloned().collect()),
                        device_id: tok.device_id.clone(),
                        expires_at_us: tok.expires_at.map(|t| t.timestamp_micros()),
                    },
                );
            }
        }
        let ids: HashSet<Uuid> = snapshot.workspaces.iter().map(|w| w.id).collect();
        limits.retain(|id| ids.contains(id));
        ConfigView {
            version: snapshot.version,
            workspaces,
            tokens,
        }
    }

    /// Decides whether `secret` may send events to `workspace`/`source` as `device`.
    /// Checks run in this order so that a caller without a valid token learns nothing about
    /// which workspaces exist.
    pub fn check<'a>(
        &'a self,
        secret: &str,
        workspace: &str,
        source: &str,
        device: Option<&'a str>,
        now_us: i64,
    ) -> Result<Grant<'a>, Refusal> {
        self.check_hash(&token::hash(secret), workspace, source, device, now_us)
    }

    /// [`check`](Self::check) for a token known by its SHA-256, as an MQTT session keeps it.
    pub fn check_hash<'a>(
        &'a self,
        token_hash: &[u8; 32],
        workspace: &str,
        source: &str,
        device: Option<&'a str>,
        now_us: i64,
    ) -> Result<Grant<'a>, Refusal> {
        let (token, ws) = self.token_for(token_hash, workspace, now_us)?;
        if !ws.sources.contains(source) {
            return Err(Refusal::UnknownSource);
        }
        if token.sources.as_ref().is_some_and(|s| !s.contains(source)) {
            return Err(Refusal::SourceNotAllowed);
        }
        let device_id = bound_device(token, device)?;
        Ok(Grant {
            workspace: ws.clone(),
            device_id,
        })
    }

    /// Whether the token may ingest into `workspace` at all, whatever the source: what an MQTT
    /// CONNECT is checked against, and re-checked whenever the configuration changes.
    pub fn check_session(
        &self,
        token_hash: &[u8; 32],
        workspace: &str,
        device: &str,
        now_us: i64,
    ) -> Result<SessionGrant, Refusal> {
        let (token, ws) = self.token_for(token_hash, workspace, now_us)?;
        bound_device(token, Some(device))?;
        Ok(SessionGrant {
            workspace_id: ws.id,
            expires_at_us: token.expires_at_us,
        })
    }

    /// The token and its workspace, checked against each other, the workspace's state and
    /// the ingest scope.
    fn token_for(
        &self,
        token_hash: &[u8; 32],
        workspace: &str,
        now_us: i64,
    ) -> Result<(&TokenView, &Arc<WorkspaceView>), Refusal> {
        let token = self.tokens.get(token_hash).ok_or(Refusal::UnknownToken)?;
        if token.expires_at_us.is_some_and(|at| at <= now_us) {
            return Err(Refusal::ExpiredToken);
        }
        let ws = self
            .workspaces
            .get(workspace)
            .ok_or(Refusal::UnknownWorkspace)?;
        if ws.id != token.workspace_id {
            return Err(Refusal::WrongWorkspace);
        }
        if !ws.enabled {
            return Err(Refusal::WorkspaceDisabled);
        }
        // Scope before source: a token that may not ingest learns nothing about sources.
        if !token.can_ingest {
            return Err(Refusal::MissingScope);
        }
        Ok((token, ws))
    }
}

/// The device the events are from: the one asked for, or the token's binding; a bound token
/// may not speak for another device.
fn bound_device<'a>(
    token: &'a TokenView,
    device: Option<&'a str>,
) -> Result<Option<&'a str>, Refusal> {
    match (&token.device_id, device) {
        (Some(bound), Some(asked)) if bound != asked => Err(Refusal::DeviceNotAllowed {
            bound: bound.clone(),
        }),
        (Some(bound), _) => Ok(Some(bound)),
        (None, asked) => Ok(asked),
    }
}

/// The current configuration view, swapped atomically on change.
pub struct Access {
    view: ArcSwap<ConfigView>,
    limits: RateLimits,
    rates: RateDefaults,
    /// The version installed last, for those who act on changes (live MQTT sessions).
    changes: tokio::sync::watch::Sender<u64>,
}

impl Access {
    pub fn new(snapshot: &ConfigSnapshot, rates: RateDefaults) -> Self {
        let limits = RateLimits::default();
        let view = ConfigView::build(snapshot, &limits, rates);
        let (changes, _) = tokio::sync::watch::channel(view.version);
        Access {
            view: ArcSwap::from_pointee(view),
            limits,
            rates,
            changes,
        }
    }

    /// The view to use for one request.
    pub fn current(&self) -> Arc<ConfigView> {
        self.view.load_full()
    }

    /// Installs `snapshot` (already validated) as the current configuration.
    pub fn apply(&self, snapshot: &ConfigSnapshot) {
        let view = ConfigView::build(snapshot, &self.limits, self.rates);
        let version = view.version;
        self.view.store(Arc::new(view));
        self.changes.send_replace(version);
    }

    /// Wakes after every [`apply`](Self::apply) (not on the runtime of the caller: any
    /// executor can wait on it).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_storage::snapshot::{SourceConfig, TokenConfig, WorkspaceConfig};

    fn workspace(slug: &str, secret: &str, enabled: bool) -> WorkspaceConfig {
        WorkspaceConfig {
            id: Uuid::now_v7(),
            slug: slug.into(),
            name: String::new(),
            enabled,
            events_per_second_max: None,
            sources: vec![SourceConfig {
                id: Uuid::now_v7(),
                slug: "telemetry".into(),
                name: String::new(),
            }],
            tokens: vec![TokenConfig {
                id: Uuid::now_v7(),
                name: String::new(),
                sha256: token::hash_hex(secret),
                scopes: vec![Scope::Ingest],
                sources: None,
                device_id: None,
                expires_at: None,
            }],
        }
    }

    #[test]
    fn checks_refuse_in_a_stable_order() {
        let snapshot = ConfigSnapshot {
            version: 1,
            workspaces: vec![workspace("a", "ta", true), workspace("b", "tb", false)],
        };
        let rates = RateDefaults {
            events_per_second: 10,
        };
        let access = Access::new(&snapshot, rates);
        let view = access.current();
        let check = |t: &str, w: &str, s: &str| view.check(t, w, s, None, 0).map(|_| ());
        assert_eq!(
            check("nope", "zzz", "telemetry"),
            Err(Refusal::UnknownToken)
        );
        assert_eq!(
            check("ta", "zzz", "telemetry"),
            Err(Refusal::UnknownWorkspace)
        );
        assert_eq!(check("ta", "b", "telemetry"), Err(Refusal::WrongWorkspace));
        assert_eq!(
            check("tb", "b", "telemetry"),
            Err(Refusal::WorkspaceDisabled)
        );
        assert_eq!(check("ta", "a", "other"), Err(Refusal::UnknownSource));
        assert_eq!(check("ta", "a", "telemetry"), Ok(()));
    }
}
