//! Who may send what: the in-memory index of the configuration snapshot and the checks every
//! ingest request goes through.
//!
//! The index is built off the hot path whenever the configuration changes and swapped in
//! atomically; a request reads one consistent version without taking a lock. A delta from the
//! control plane builds the next index from the current one: it copies the workspace index
//! (one entry per workspace) and only the token shards it touches, so a large configuration
//! changing under load costs the node little. Tokens are looked
//! up by the SHA-256 of the presented secret, so no secret is ever kept in memory.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use sluice_config::data_out::{OutputConfig, WebhookConfig};
use sluice_config::snapshot::{ConfigSnapshot, Protocol, Scope, TokenConfig, WorkspaceConfig};
use sluice_config::state::{ConfigChange, ConfigState};
use uuid::Uuid;

use crate::export::output::CompiledOutput;
use crate::rate_limit::{Bucket, RateLimits};
use crate::shape::{SchemaCache, SchemaError, SourceShape};
use crate::token_table::TokenTable;

/// A workspace as the hot path needs it.
#[derive(Debug)]
pub struct WorkspaceView {
    pub id: Uuid,
    /// The [`ConfigView::generation`] that built this entry. A view shares the entries of the
    /// workspaces a change leaves alone, so a workspace whose entry is no newer than the
    /// generation a session was checked against has not changed since.
    pub generation: u64,
    pub slug: String,
    pub enabled: bool,
    /// Web origins whose pages may send events (CORS).
    pub cors_origins: Vec<String>,
    /// Each source: the protocols it takes and what shapes its events.
    pub sources: HashMap<String, SourceView>,
    /// Export endpoints by slug, each with its output compiled.
    pub endpoints: HashMap<String, Arc<CompiledOutput>>,
    /// Webhook subscriptions, each with its output compiled.
    pub webhooks: Vec<ActiveWebhook>,
    pub bucket: Arc<Bucket>,
}

/// A source as the hot path needs it.
#[derive(Debug)]
pub struct SourceView {
    protocols: Protocols,
    /// `None` for a source without a schema or tag rules.
    pub shape: Option<Arc<SourceShape>>,
}

/// The protocols a source takes, as a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocols {
    http: bool,
    mqtt: bool,
}

impl Protocols {
    fn of(list: &[Protocol]) -> Self {
        Protocols {
            http: list.contains(&Protocol::Http),
            mqtt: list.contains(&Protocol::Mqtt),
        }
    }

    fn allow(self, protocol: Protocol) -> bool {
        match protocol {
            Protocol::Http => self.http,
            Protocol::Mqtt => self.mqtt,
        }
    }
}

/// A token as the hot path needs it.
#[derive(Debug)]
pub struct TokenView {
    pub workspace_id: Uuid,
    pub can_ingest: bool,
    pub can_read: bool,
    /// Export endpoints a read token may read; all of them when `None`.
    pub endpoints: Option<HashSet<String>>,
    pub sources: Option<HashSet<String>>,
    pub device_id: Option<String>,
    pub expires_at_us: Option<i64>,
}

/// One version of the configuration, indexed.
#[derive(Debug, Default)]
pub struct ConfigView {
    pub version: u64,
    /// Counts the views this node has installed (each one more than the last), whatever
    /// their versions: a control plane may start again from a lower version.
    pub generation: u64,
    workspaces: HashMap<String, Arc<WorkspaceView>>,
    tokens: TokenTable,
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
    /// The source does not take events over this protocol.
    ProtocolNotAllowed,
    MissingScope,
    SourceNotAllowed,
    DeviceNotAllowed {
        bound: String,
    },
    UnknownEndpoint,
    EndpointNotAllowed,
}

/// What an accepted token grants for this request.
#[derive(Debug)]
pub struct Grant<'a> {
    pub workspace: Arc<WorkspaceView>,
    /// The device the events are from: the header's, or the token's binding.
    pub device_id: Option<&'a str>,
    /// Whether the token is bound to that device (a tag rule's device does not replace it).
    pub device_bound: bool,
    /// What shapes the source's events; `None` when nothing does.
    pub shape: Option<Arc<SourceShape>>,
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
    fn build<'a>(
        version: u64,
        generation: u64,
        workspaces: impl Iterator<Item = &'a WorkspaceConfig>,
        limits: &RateLimits,
        rates: RateDefaults,
        schemas: &SchemaCache,
    ) -> Self {
        let mut view = ConfigView {
            version,
            generation,
            ..ConfigView::default()
        };
        let mut ids = HashSet::new();
        for ws in workspaces {
            ids.insert(ws.id);
            view.add(ws, limits, rates, schemas);
        }
        limits.retain(|id| ids.contains(id));
        view
    }

    /// The next version: this one with `change` made, sharing everything it does not touch.
    fn changed(
        &self,
        change: &ConfigChange,
        limits: &RateLimits,
        rates: RateDefaults,
        schemas: &SchemaCache,
    ) -> Self {
        let mut view = ConfigView {
            version: change.to,
            generation: self.generation + 1,
            workspaces: self.workspaces.clone(),
            tokens: self.tokens.clone(),
        };
        // A token the change leaves as it was (same workspace, same fields) keeps its entry:
        // disabling a workspace of 10,000 tokens copies no token.
        let before: HashMap<Uuid, &WorkspaceConfig> = change
            .before
            .iter()
            .map(|ws| (ws.id, ws.as_ref()))
            .collect();
        let after: HashMap<Uuid, &WorkspaceConfig> =
            change.after.iter().map(|ws| (ws.id, ws.as_ref())).collect();
        // Everything old goes before anything new comes: a slug or token may move between
        // the workspaces of one change.
        for ws in &change.before {
            view.workspaces.remove(&ws.slug);
            let kept = TokensById::of(after.get(&ws.id));
            for token in ws.tokens.iter().filter(|t| !kept.has(t)) {
                if let Some(hash) = token.hash_bytes() {
                    view.tokens.remove(&hash);
                }
            }
        }
        for ws in &change.after {
            view.add_workspace(ws, limits, rates, schemas);
            let kept = TokensById::of(before.get(&ws.id));
            for token in ws.tokens.iter().filter(|t| !kept.has(t)) {
                view.add_token(ws.id, token);
            }
        }
        let gone: HashSet<Uuid> = change
            .before
            .iter()
            .map(|ws| ws.id)
            .filter(|id| !after.contains_key(id))
            .collect();
        if !gone.is_empty() {
            limits.retain(|id| !gone.contains(id));
        }
        view
    }

    fn add(
        &mut self,
        ws: &WorkspaceConfig,
        limits: &RateLimits,
        rates: RateDefaults,
        schemas: &SchemaCache,
    ) {
        self.add_workspace(ws, limits, rates, schemas);
        for token in &ws.tokens {
            self.add_token(ws.id, token);
        }
    }

    fn add_workspace(
        &mut self,
        ws: &WorkspaceConfig,
        limits: &RateLimits,
        rates: RateDefaults,
        schemas: &SchemaCache,
    ) {
        let rate = ws
            .events_per_second_max
            .unwrap_or(rates.events_per_second)
            .max(1);
        // One second's worth: a workspace may not exceed its rate even in one request.
        let burst = rate;
        self.workspaces.insert(
            ws.slug.clone(),
            Arc::new(WorkspaceView {
                id: ws.id,
                generation: self.generation,
                slug: ws.slug.clone(),
                enabled: ws.enabled,
                cors_origins: ws.cors_origins.clone(),
                sources: ws
                    .sources
                    .iter()
                    .map(|s| {
                        let view = SourceView {
                            protocols: Protocols::of(&s.protocols),
                            shape: SourceShape::of(ws, s, schemas),
                        };
                        (s.slug.clone(), view)
                    })
                    .collect(),
                endpoints: export_endpoints(ws),
                webhooks: webhooks(ws),
                bucket: limits.bucket(ws.id, rate, burst),
            }),
        );
    }

    fn add_token(&mut self, workspace_id: Uuid, token: &TokenConfig) {
        let Some(hash) = token.hash_bytes() else {
            return;
        };
        self.tokens.insert(
            hash,
            TokenView {
                workspace_id,
                can_ingest: token.scopes.contains(&Scope::Ingest),
                can_read: token.scopes.contains(&Scope::Read),
                endpoints: token
                    .endpoints
                    .as_ref()
                    .map(|e| e.iter().cloned().collect()),
                sources: token.sources.as_ref().map(|s| s.iter().cloned().collect()),
                device_id: token.device_id.clone(),
                expires_at_us: token.expires_at.map(|t| t.timestamp_micros()),
            },
        );
    }

    /// The generation of `workspace`'s entry (see [`WorkspaceView::generation`]); `None` when
    /// there is no such workspace.
    pub fn workspace_generation(&self, workspace: &str) -> Option<u64> {
        self.workspaces.get(workspace).map(|ws| ws.generation)
    }

    /// Every webhook subscription of every workspace.
    pub fn webhooks(&self) -> impl Iterator<Item = &ActiveWebhook> {
        self.workspaces.values().flat_map(|ws| ws.webhooks.iter())
    }

    /// Whether pages on `origin` may send events to `workspace` (the token is checked apart).
    pub fn cors_allows(&self, workspace: &str, origin: &str) -> bool {
        self.workspaces
            .get(workspace)
            .is_some_and(|ws| ws.cors_origins.iter().any(|o| o == origin))
    }

    /// Decides whether the token whose SHA-256 is `token_hash` may send events to
    /// `workspace`/`source` as `device`. Checks run in this order so that a caller without a
    /// valid token learns nothing about which workspaces exist. Tokens are known by their hash
    /// only: HTTP hashes the presented secret, an MQTT session keeps the hash.
    pub fn check_hash<'a>(
        &'a self,
        token_hash: &[u8; 32],
        workspace: &str,
        source: &str,
        device: Option<&'a str>,
        protocol: Protocol,
        now_us: i64,
    ) -> Result<Grant<'a>, Refusal> {
        let (token, ws) = self.token_for(token_hash, workspace, Scope::Ingest, now_us)?;
        let source_view = ws.sources.get(source).ok_or(Refusal::UnknownSource)?;
        if token.sources.as_ref().is_some_and(|s| !s.contains(source)) {
            return Err(Refusal::SourceNotAllowed);
        }
        if !source_view.protocols.allow(protocol) {
            return Err(Refusal::ProtocolNotAllowed);
        }
        let device_id = bound_device(token, device)?;
        Ok(Grant {
            workspace: ws.clone(),
            device_id,
            device_bound: token.device_id.is_some(),
            shape: source_view.shape.clone(),
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
        let (token, ws) = self.token_for(token_hash, workspace, Scope::Ingest, now_us)?;
        bound_device(token, Some(device))?;
        Ok(SessionGrant {
            workspace_id: ws.id,
            expires_at_us: token.expires_at_us,
        })
    }

    /// Whether the token may read export endpoint `endpoint` of `workspace`; the endpoint's
    /// output when it may. An ingest token may not (tokens are single-purpose).
    pub fn check_read(
        &self,
        token_hash: &[u8; 32],
        workspace: &str,
        endpoint: &str,
        now_us: i64,
    ) -> Result<ExportGrant, Refusal> {
        let (token, ws) = self.token_for(token_hash, workspace, Scope::Read, now_us)?;
        let output = ws.endpoints.get(endpoint).ok_or(Refusal::UnknownEndpoint)?;
        if token
            .endpoints
            .as_ref()
            .is_some_and(|e| !e.contains(endpoint))
        {
            return Err(Refusal::EndpointNotAllowed);
        }
        Ok(ExportGrant {
            workspace_id: ws.id,
            output: output.clone(),
        })
    }

    /// The token and its workspace, checked against each other, the workspace's state and
    /// `scope`.
    fn token_for(
        &self,
        token_hash: &[u8; 32],
        workspace: &str,
        scope: Scope,
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
        let allowed = match scope {
            Scope::Ingest => token.can_ingest,
            Scope::Read => token.can_read,
        };
        if !allowed {
            return Err(Refusal::MissingScope);
        }
        Ok((token, ws))
    }
}

/// What a read token may read.
#[derive(Debug, Clone)]
pub struct ExportGrant {
    pub workspace_id: Uuid,
    pub output: Arc<CompiledOutput>,
}

/// A webhook subscription as its deliveries need it.
#[derive(Debug, Clone)]
pub struct ActiveWebhook {
    pub workspace_id: Uuid,
    pub config: Arc<WebhookConfig>,
    /// The output as configured (a delivery restarts when it changes) and compiled.
    pub output_config: Arc<OutputConfig>,
    pub output: Arc<CompiledOutput>,
}

fn webhooks(ws: &WorkspaceConfig) -> Vec<ActiveWebhook> {
    ws.webhooks
        .iter()
        .filter_map(|w| {
            let output = ws.outputs.iter().find(|o| o.slug == w.output)?;
            Some(ActiveWebhook {
                workspace_id: ws.id,
                config: Arc::new(w.clone()),
                output_config: Arc::new(output.clone()),
                output: Arc::new(CompiledOutput::new(output)),
            })
        })
        .collect()
}

/// A workspace's export endpoints with their outputs compiled; an endpoint whose output is
/// missing (the configuration's checks forbid it) is left out.
fn export_endpoints(ws: &WorkspaceConfig) -> HashMap<String, Arc<CompiledOutput>> {
    let outputs: HashMap<&str, Arc<CompiledOutput>> = ws
        .outputs
        .iter()
        .map(|o| (o.slug.as_str(), Arc::new(CompiledOutput::new(o))))
        .collect();
    ws.export_endpoints
        .iter()
        .filter_map(|e| Some((e.slug.clone(), outputs.get(e.output.as_str())?.clone())))
        .collect()
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

/// The tokens of a workspace's other copy in a change, by id.
struct TokensById<'a>(HashMap<Uuid, &'a TokenConfig>);

impl<'a> TokensById<'a> {
    fn of(ws: Option<&&'a WorkspaceConfig>) -> Self {
        TokensById(
            ws.map(|ws| ws.tokens.iter().map(|t| (t.id, t)).collect())
                .unwrap_or_default(),
        )
    }

    /// Whether the other copy holds `token` exactly as it is.
    fn has(&self, token: &TokenConfig) -> bool {
        self.0.get(&token.id).is_some_and(|t| *t == token)
    }
}

/// A change that does not start from the version the view holds.
#[derive(Debug, thiserror::Error)]
#[error("the access table is at version {held}, the change starts from {from}")]
pub struct NotAtBase {
    pub held: u64,
    pub from: u64,
}

/// Why a node refuses a configuration version (it keeps serving the one it has).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    NotAtBase(#[from] NotAtBase),
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// The current configuration view, swapped atomically on change.
pub struct Access {
    view: ArcSwap<ConfigView>,
    limits: RateLimits,
    rates: RateDefaults,
    /// The version installed last, for those who act on changes (live MQTT sessions).
    changes: tokio::sync::watch::Sender<u64>,
    /// Held while a new view is built from the current one, so that two writers cannot
    /// both build on the same version.
    writer: Mutex<()>,
    /// Whether the view is a configuration at all. False only on a node that follows a control
    /// plane, had nothing cached, and has not heard from the control plane yet: its empty view
    /// would answer every token as wrong, so ingest answers "not configured" (503) instead
    /// and `/readyz` keeps the node out of the load balancer.
    configured: AtomicBool,
    /// Sources' schemas, compiled once per schema version.
    schemas: SchemaCache,
}

impl Access {
    pub fn new(snapshot: &ConfigSnapshot, rates: RateDefaults) -> Self {
        let limits = RateLimits::default();
        let schemas = SchemaCache::default();
        let view = ConfigView::build(
            snapshot.version,
            1,
            snapshot.workspaces.iter(),
            &limits,
            rates,
            &schemas,
        );
        let (changes, _) = tokio::sync::watch::channel(view.version);
        Access {
            view: ArcSwap::from_pointee(view),
            limits,
            rates,
            changes,
            writer: Mutex::new(()),
            configured: AtomicBool::new(true),
            schemas,
        }
    }

    /// Checks what a node must be able to apply in `workspaces` before it takes a
    /// configuration: every source's schema compiles (and stays compiled for the view).
    pub fn check<'a>(
        &self,
        workspaces: impl Iterator<Item = &'a WorkspaceConfig>,
    ) -> Result<(), SchemaError> {
        self.schemas.check(workspaces)
    }

    /// Marks the view as no configuration yet: until the first version is installed or
    /// [`Access::mark_configured`] is called, [`Access::is_configured`] says false.
    pub fn await_configuration(&self) {
        self.configured.store(false, Ordering::Release);
    }

    /// The view is the configuration's source's current one (the control plane said so),
    /// even if no version had to be installed for it.
    pub fn mark_configured(&self) {
        self.configured.store(true, Ordering::Release);
    }

    /// Whether the node has a configuration (see the field).
    pub fn is_configured(&self) -> bool {
        self.configured.load(Ordering::Acquire)
    }

    /// The view to use for one request.
    pub fn current(&self) -> Arc<ConfigView> {
        self.view.load_full()
    }

    /// Installs `snapshot` (already validated) as the current configuration; refused (the
    /// current one stays) when a schema does not compile.
    pub fn apply(&self, snapshot: &ConfigSnapshot) -> Result<(), ApplyError> {
        self.check(snapshot.workspaces.iter())?;
        self.replace(snapshot.version, snapshot.workspaces.iter());
        Ok(())
    }

    /// Installs `state` as the current configuration; refused (the current one stays) when a
    /// schema does not compile.
    pub fn apply_state(&self, state: &ConfigState) -> Result<(), ApplyError> {
        self.check(state.workspaces())?;
        self.replace(state.version(), state.workspaces());
        Ok(())
    }

    fn replace<'a>(&self, version: u64, workspaces: impl Iterator<Item = &'a WorkspaceConfig>) {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.view.load().generation + 1;
        let view = ConfigView::build(
            version,
            generation,
            workspaces,
            &self.limits,
            self.rates,
            &self.schemas,
        );
        self.install(view);
    }

    /// Installs the version `change` leads to, copying only what it touches. Refused when the
    /// current view is not the version the change starts from; apply the whole state then.
    pub fn apply_change(&self, change: &ConfigChange) -> Result<(), ApplyError> {
        self.check(change.after.iter().map(|ws| ws.as_ref()))?;
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.view.load();
        if current.version != change.from {
            return Err(NotAtBase {
                held: current.version,
                from: change.from,
            }
            .into());
        }
        let view = current.changed(change, &self.limits, self.rates, &self.schemas);
        self.install(view);
        Ok(())
    }

    fn install(&self, view: ConfigView) {
        let version = view.version;
        self.view.store(Arc::new(view));
        self.schemas.prune();
        self.configured.store(true, Ordering::Release);
        self.changes.send_replace(version);
    }

    /// Wakes after every change (not on the runtime of the caller: any executor can wait on
    /// it).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_config::snapshot::SourceConfig;
    use sluice_config::token;

    fn workspace(slug: &str, secret: &str, enabled: bool) -> WorkspaceConfig {
        WorkspaceConfig {
            id: Uuid::now_v7(),
            slug: slug.into(),
            name: String::new(),
            enabled,
            events_per_second_max: None,
            cors_origins: Vec::new(),
            tag_rules: Vec::new(),
            outputs: Vec::new(),
            export_endpoints: Vec::new(),
            webhooks: Vec::new(),
            sources: vec![SourceConfig {
                id: Uuid::now_v7(),
                slug: "telemetry".into(),
                name: String::new(),
                protocols: Protocol::all(),
                schema: None,
                on_invalid: Default::default(),
                keep_payload: true,
            }],
            tokens: vec![TokenConfig {
                id: Uuid::now_v7(),
                name: String::new(),
                sha256: token::hash_hex(secret),
                scopes: vec![Scope::Ingest],
                sources: None,
                device_id: None,
                expires_at: None,
                endpoints: None,
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
        let check = |t: &str, w: &str, s: &str| {
            view.check_hash(&token::hash(t), w, s, None, Protocol::Http, 0)
                .map(|_| ())
        };
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

    /// What every token (by secret) gets for every workspace and source, as a user sees it.
    fn outcomes(view: &ConfigView, secrets: &[&str], slugs: &[&str]) -> Vec<String> {
        let mut seen = Vec::new();
        for secret in secrets {
            for slug in slugs {
                for source in ["telemetry", "other"] {
                    let outcome = view
                        .check_hash(
                            &token::hash(secret),
                            slug,
                            source,
                            Some("dev"),
                            Protocol::Http,
                            0,
                        )
                        .map(|grant| (grant.workspace.id, grant.device_id.map(str::to_owned)));
                    seen.push(format!("{secret} {slug} {source}: {outcome:?}"));
                }
            }
        }
        seen
    }

    /// A change applied in place answers every request as a view built afresh from the
    /// resulting configuration does.
    #[test]
    fn changes_applied_in_place_answer_like_a_fresh_build() {
        let rates = RateDefaults {
            events_per_second: 10,
        };
        let (a, b, c) = (
            workspace("a", "ta", true),
            workspace("b", "tb", true),
            workspace("c", "tc", true),
        );
        let v1 = ConfigSnapshot {
            version: 1,
            workspaces: vec![a.clone(), b.clone(), c.clone()],
        };
        // Revoke a's token and give a a new bound one; disable b; rename c to a slug a had.
        let mut a2 = a.clone();
        a2.tokens = workspace("x", "ta2", true).tokens;
        a2.tokens[0].device_id = Some("dev".into());
        a2.slug = "a2".into();
        let mut b2 = b.clone();
        b2.enabled = false;
        let mut c2 = c.clone();
        c2.slug = "a".into();
        let v2 = ConfigSnapshot {
            version: 2,
            workspaces: vec![a2.clone(), b2, c2.clone()],
        };
        // Remove b, move c's token to a new workspace d, add a source to a.
        let mut a3 = a2.clone();
        a3.sources.push(SourceConfig {
            id: Uuid::now_v7(),
            slug: "other".into(),
            name: String::new(),
            protocols: Protocol::all(),
            schema: None,
            on_invalid: Default::default(),
            keep_payload: true,
        });
        let mut c3 = c2.clone();
        c3.tokens.clear();
        let mut d = workspace("d", "td", true);
        d.tokens.push(c.tokens[0].clone());
        let v3 = ConfigSnapshot {
            version: 3,
            workspaces: vec![a3, c3, d],
        };

        let secrets = ["ta", "ta2", "tb", "tc", "td", "nope"];
        let slugs = ["a", "a2", "b", "c", "d", "zzz"];
        let access = Access::new(&v1, rates);
        let mut state = ConfigState::new(v1.clone()).expect("valid");
        let mut previous = v1;
        for target in [v2, v3] {
            let change = state.apply(&previous.delta_to(&target)).expect("applies");
            access.apply_change(&change).expect("at base");
            let fresh = Access::new(&target, rates);
            assert_eq!(access.current().version, target.version);
            assert_eq!(
                outcomes(&access.current(), &secrets, &slugs),
                outcomes(&fresh.current(), &secrets, &slugs),
                "version {}",
                target.version
            );
            previous = target;
        }
        // The revoked token is refused, the moved one works in its new workspace.
        let view = access.current();
        assert_eq!(
            view.check_hash(
                &token::hash("ta"),
                "a2",
                "telemetry",
                None,
                Protocol::Http,
                0
            )
            .map(|_| ()),
            Err(Refusal::UnknownToken)
        );
        assert!(view
            .check_hash(
                &token::hash("tc"),
                "d",
                "telemetry",
                None,
                Protocol::Http,
                0
            )
            .is_ok());

        // A change built on another version is refused and the view stays.
        let stale = state
            .apply(&previous.delta_to(&ConfigSnapshot {
                version: 4,
                workspaces: vec![],
            }))
            .expect("applies");
        let behind = ConfigChange { from: 2, ..stale };
        assert!(access.apply_change(&behind).is_err());
        assert_eq!(access.current().version, 3);
    }

    /// What the MQTT watch relies on to re-check only the sessions a change may affect: a
    /// change gives the workspaces it touches a newer generation and leaves the others'
    /// entries as they were, a whole new configuration renews every entry, and generations
    /// keep rising when a control plane starts again from a lower version.
    #[test]
    fn a_change_renews_only_the_workspaces_it_touches() {
        let rates = RateDefaults {
            events_per_second: 10,
        };
        let (a, b) = (workspace("a", "ta", true), workspace("b", "tb", true));
        let v1 = ConfigSnapshot {
            version: 1,
            workspaces: vec![a.clone(), b.clone()],
        };
        let access = Access::new(&v1, rates);
        let first = access.current();
        assert_eq!(first.workspace_generation("a"), Some(first.generation));
        assert_eq!(first.workspace_generation("b"), Some(first.generation));
        assert_eq!(first.workspace_generation("zzz"), None);

        // Revoke a's token.
        let mut a2 = a.clone();
        a2.tokens = workspace("x", "ta2", true).tokens;
        let v2 = ConfigSnapshot {
            version: 2,
            workspaces: vec![a2, b.clone()],
        };
        let mut state = ConfigState::new(v1.clone()).expect("valid");
        let change = state.apply(&v1.delta_to(&v2)).expect("applies");
        access.apply_change(&change).expect("at base");
        let second = access.current();
        assert!(second.generation > first.generation);
        assert_eq!(second.workspace_generation("a"), Some(second.generation));
        assert_eq!(
            second.workspace_generation("b"),
            Some(first.generation),
            "b untouched"
        );

        // A whole configuration, at a lower version than before.
        let restarted = ConfigSnapshot {
            version: 1,
            workspaces: vec![a, b],
        };
        access.apply(&restarted).expect("valid");
        let third = access.current();
        assert!(third.generation > second.generation);
        assert_eq!(third.workspace_generation("a"), Some(third.generation));
        assert_eq!(third.workspace_generation("b"), Some(third.generation));
    }

    #[test]
    fn a_source_takes_only_its_protocols() {
        let mut ws = workspace("a", "ta", true);
        ws.sources[0].protocols = vec![Protocol::Http];
        let snapshot = ConfigSnapshot {
            version: 1,
            workspaces: vec![ws],
        };
        let access = Access::new(
            &snapshot,
            RateDefaults {
                events_per_second: 1000,
            },
        );
        let view = access.current();
        let hash = token::hash("ta");
        assert!(view
            .check_hash(&hash, "a", "telemetry", None, Protocol::Http, 0)
            .is_ok());
        assert_eq!(
            view.check_hash(&hash, "a", "telemetry", None, Protocol::Mqtt, 0)
                .map(|_| ())
                .unwrap_err(),
            Refusal::ProtocolNotAllowed
        );
    }
}
