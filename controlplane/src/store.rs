//! The control plane's state: every record in memory for reading, and in one redb file for
//! keeping.
//!
//! A change is computed from a consistent read of the state as a list of [`Change`]s, committed
//! to redb in one transaction, and only then applied in memory. A refused request therefore
//! changes nothing, anywhere. Writes are serialised; reads never wait for a commit's fsync.
//! Every committed change that touches what data-plane nodes see (workspaces, sources, tag
//! rules, outputs, export endpoints, webhooks, access tokens) raises the configuration version in the
//! same transaction.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Mutex, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use sluice_config::shaping::TagRule;

use crate::mcp_ingest::IngestCredential;
use crate::model::{
    AccessToken, Credential, Delivery, ExportEndpoint, Identity, Invitation, Member, Output, Purge,
    Source, TagRules, User, Webhook, WebhookAttemptRecord, WebhookHealth, Workspace, WorkspaceSmtp,
};

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const CREDENTIALS: TableDefinition<&str, &[u8]> = TableDefinition::new("credentials");
/// Identity id -> a provider account that signs a user in.
const IDENTITIES: TableDefinition<&str, &[u8]> = TableDefinition::new("identities");
const WORKSPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("workspaces");
const MEMBERS: TableDefinition<&str, &[u8]> = TableDefinition::new("members");
const INVITATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("invitations");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("access_tokens");
const SOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("sources");
/// Workspace id -> its tag rules, in order.
const TAG_RULES: TableDefinition<&str, &[u8]> = TableDefinition::new("tag_rules");
/// Output id -> a filtered, projected view of a source's events.
const OUTPUTS: TableDefinition<&str, &[u8]> = TableDefinition::new("outputs");
/// Export endpoint id -> an output readable with `read` tokens.
const EXPORT_ENDPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("export_endpoints");
/// Webhook id -> an output delivered to a URL.
const WEBHOOKS: TableDefinition<&str, &[u8]> = TableDefinition::new("webhooks");
/// Webhook id -> what its health is judged by (nodes never see it).
const WEBHOOK_HEALTH: TableDefinition<&str, &[u8]> = TableDefinition::new("webhook_health");
/// `<webhook id>/<attempt id>` -> one of its most recent delivery attempts.
const WEBHOOK_DELIVERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("webhook_deliveries");
/// `<webhook id>/<attempt id>` -> one of its most recent batches given up (`failed`).
const WEBHOOK_FAILURES: TableDefinition<&str, &[u8]> = TableDefinition::new("webhook_failures");
/// Workspaces deleted whose objects in the lake are still to be removed.
const PURGES: TableDefinition<&str, &[u8]> = TableDefinition::new("lake_purges");
const SMTP: TableDefinition<&str, &[u8]> = TableDefinition::new("workspace_smtp");
const DELIVERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("email_deliveries");
/// Workspace id -> the control plane's own ingest token of the workspace (`mcp_ingest.rs`).
const INGEST_CREDENTIALS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("mcp_ingest_credentials");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CONFIG_VERSION: &str = "config_version";
/// Prefix of the `meta` keys `workspace_version/<workspace id>`: the configuration version of
/// the workspace's last change that its AsyncAPI document shows.
const WORKSPACE_VERSION_PREFIX: &str = "workspace_version/";

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("control-plane database error: {0}")]
    Db(#[from] redb::Error),
    #[error("a stored record is unreadable: {0}")]
    Corrupt(#[from] serde_json::Error),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Everything the control plane knows, indexed for the API's questions.
#[derive(Debug, Default, Clone)]
pub struct State {
    pub users: BTreeMap<Uuid, User>,
    /// Lower-cased e-mail -> user id.
    pub emails: HashMap<String, Uuid>,
    /// Secret hash -> session or personal access token.
    pub credentials: HashMap<String, Credential>,
    /// Identity id -> provider account linked to a user.
    pub identities: BTreeMap<Uuid, Identity>,
    /// (provider, subject) -> identity id.
    pub identity_keys: HashMap<(String, String), Uuid>,
    pub workspaces: BTreeMap<Uuid, Workspace>,
    pub slugs: HashMap<String, Uuid>,
    /// (workspace, user) -> membership.
    pub members: BTreeMap<(Uuid, Uuid), Member>,
    pub invitations: BTreeMap<Uuid, Invitation>,
    pub tokens: BTreeMap<Uuid, AccessToken>,
    pub sources: BTreeMap<Uuid, Source>,
    /// Workspace id -> its tag rules, in the order they apply.
    pub tag_rules: HashMap<Uuid, Vec<TagRule>>,
    /// Output id -> output; ids are UUIDv7, so in creation order.
    pub outputs: BTreeMap<Uuid, Output>,
    /// Export endpoint id -> endpoint; ids are UUIDv7, so in creation order.
    pub export_endpoints: BTreeMap<Uuid, ExportEndpoint>,
    /// Webhook id -> webhook; ids are UUIDv7, so in creation order.
    pub webhooks: BTreeMap<Uuid, Webhook>,
    /// Webhook id -> its health.
    pub webhook_health: HashMap<Uuid, WebhookHealth>,
    /// (webhook, attempt id) -> attempt; attempt ids are UUIDv7 of the attempt's time.
    pub webhook_deliveries: BTreeMap<(Uuid, Uuid), WebhookAttemptRecord>,
    /// (webhook, attempt id) -> a `failed` attempt (a batch given up).
    pub webhook_failures: BTreeMap<(Uuid, Uuid), WebhookAttemptRecord>,
    /// Deleted workspaces whose lake objects are still to be deleted.
    pub purges: Vec<Purge>,
    /// Workspace id -> its own SMTP server.
    pub smtp: HashMap<Uuid, WorkspaceSmtp>,
    /// (workspace, delivery id) -> attempt; ids are UUIDv7, so in time order.
    pub deliveries: BTreeMap<(Uuid, Uuid), Delivery>,
    /// Version of the data-plane configuration derived from this state.
    pub config_version: u64,
    /// Workspace id -> the configuration version of its last change that its AsyncAPI document
    /// shows (the workspace, its sources, tag rules, outputs, export endpoints and webhooks):
    /// the document's `x-sluice-configVersion`, which `If-Match` compares, so that changes in
    /// other workspaces do not make an import fail.
    pub workspace_versions: HashMap<Uuid, u64>,
    /// OAuth clients, grants, codes and tokens (`oauth/records.rs`).
    pub oauth: crate::oauth::records::OAuthState,
    /// Workspace id -> the token the MCP endpoint forwards events with (`mcp_ingest.rs`).
    pub ingest_credentials: HashMap<Uuid, IngestCredential>,
}

/// One edit of the state.
#[derive(Debug, Clone)]
pub enum Change {
    PutUser(User),
    PutCredential(Credential),
    DeleteCredential(String),
    PutIdentity(Identity),
    DeleteIdentity(Uuid),
    PutWorkspace(Workspace),
    /// Stores a workspace whose change nodes do not see (the AsyncAPI public toggle), so that
    /// it makes no new configuration version.
    PutWorkspaceSettings(Workspace),
    DeleteWorkspace(Uuid),
    PutMember(Member),
    DeleteMember(Uuid, Uuid),
    PutInvitation(Invitation),
    DeleteInvitation(Uuid),
    PutToken(AccessToken),
    DeleteToken(Uuid),
    PutSource(Source),
    DeleteSource(Uuid),
    /// Replaces a workspace's tag rules (an empty list removes the record).
    PutTagRules(TagRules),
    PutOutput(Output),
    DeleteOutput(Uuid),
    PutExportEndpoint(ExportEndpoint),
    DeleteExportEndpoint(Uuid),
    PutWebhook(Webhook),
    DeleteWebhook(Uuid),
    PutWebhookHealth(WebhookHealth),
    DeleteWebhookHealth(Uuid),
    PutWebhookDelivery(WebhookAttemptRecord),
    DeleteWebhookDelivery(Uuid, Uuid),
    PutWebhookFailure(WebhookAttemptRecord),
    DeleteWebhookFailure(Uuid, Uuid),
    PutPurge(Purge),
    DeletePurge(Uuid),
    PutSmtp(WorkspaceSmtp),
    DeleteSmtp(Uuid),
    PutDelivery(Delivery),
    DeleteDelivery(Uuid, Uuid),
    /// An edit of the OAuth records (`oauth/records.rs`).
    OAuth(crate::oauth::records::OAuthChange),
    /// Keeps a workspace's MCP ingest credential (nodes see it as a token).
    PutIngestCredential(IngestCredential),
    /// Forgets the MCP ingest credential of the workspace with this id.
    DeleteIngestCredential(Uuid),
}

impl Change {
    /// Whether data-plane nodes see the effect of this change.
    fn affects_config(&self) -> bool {
        matches!(
            self,
            Change::PutWorkspace(_)
                | Change::DeleteWorkspace(_)
                | Change::PutToken(_)
                | Change::DeleteToken(_)
                | Change::PutSource(_)
                | Change::DeleteSource(_)
                | Change::PutTagRules(_)
                | Change::PutOutput(_)
                | Change::DeleteOutput(_)
                | Change::PutExportEndpoint(_)
                | Change::DeleteExportEndpoint(_)
                | Change::PutWebhook(_)
                | Change::DeleteWebhook(_)
                | Change::PutIngestCredential(_)
                | Change::DeleteIngestCredential(_)
        )
    }
}

/// Key of a record that belongs to another (a workspace's member or mail delivery, a webhook's
/// attempt).
fn member_key(workspace: Uuid, item: Uuid) -> String {
    format!("{workspace}/{item}")
}

impl State {
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::PutUser(user) => {
                self.emails.insert(user.email.to_lowercase(), user.id);
                self.users.insert(user.id, user);
            }
            Change::PutCredential(c) => {
                self.credentials.insert(c.sha256.clone(), c);
            }
            Change::DeleteCredential(hash) => {
                self.credentials.remove(&hash);
            }
            Change::PutIdentity(i) => {
                self.identity_keys
                    .insert((i.provider.clone(), i.subject.clone()), i.id);
                self.identities.insert(i.id, i);
            }
            Change::DeleteIdentity(id) => {
                if let Some(i) = self.identities.remove(&id) {
                    self.identity_keys.remove(&(i.provider, i.subject));
                }
            }
            Change::PutWorkspace(ws) | Change::PutWorkspaceSettings(ws) => {
                self.slugs.insert(ws.slug.clone(), ws.id);
                self.workspaces.insert(ws.id, ws);
            }
            Change::DeleteWorkspace(id) => {
                if let Some(ws) = self.workspaces.remove(&id) {
                    self.slugs.remove(&ws.slug);
                }
                self.workspace_versions.remove(&id);
            }
            Change::PutMember(m) => {
                self.members.insert((m.workspace_id, m.user_id), m);
            }
            Change::DeleteMember(ws, user) => {
                self.members.remove(&(ws, user));
            }
            Change::PutInvitation(i) => {
                self.invitations.insert(i.id, i);
            }
            Change::DeleteInvitation(id) => {
                self.invitations.remove(&id);
            }
            Change::PutToken(t) => {
                self.tokens.insert(t.id, t);
            }
            Change::DeleteToken(id) => {
                self.tokens.remove(&id);
            }
            Change::PutSource(s) => {
                self.sources.insert(s.id, s);
            }
            Change::DeleteSource(id) => {
                self.sources.remove(&id);
            }
            Change::PutTagRules(r) if r.rules.is_empty() => {
                self.tag_rules.remove(&r.workspace_id);
            }
            Change::PutTagRules(r) => {
                self.tag_rules.insert(r.workspace_id, r.rules);
            }
            Change::PutOutput(o) => {
                self.outputs.insert(o.id, o);
            }
            Change::DeleteOutput(id) => {
                self.outputs.remove(&id);
            }
            Change::PutExportEndpoint(e) => {
                self.export_endpoints.insert(e.id, e);
            }
            Change::DeleteExportEndpoint(id) => {
                self.export_endpoints.remove(&id);
            }
            Change::PutWebhook(w) => {
                self.webhooks.insert(w.id, w);
            }
            Change::DeleteWebhook(id) => {
                self.webhooks.remove(&id);
            }
            Change::PutWebhookHealth(h) => {
                self.webhook_health.insert(h.webhook_id, h);
            }
            Change::DeleteWebhookHealth(id) => {
                self.webhook_health.remove(&id);
            }
            Change::PutWebhookDelivery(a) => {
                self.webhook_deliveries.insert((a.webhook_id, a.id), a);
            }
            Change::DeleteWebhookDelivery(webhook, id) => {
                self.webhook_deliveries.remove(&(webhook, id));
            }
            Change::PutWebhookFailure(a) => {
                self.webhook_failures.insert((a.webhook_id, a.id), a);
            }
            Change::DeleteWebhookFailure(webhook, id) => {
                self.webhook_failures.remove(&(webhook, id));
            }
            Change::PutPurge(purge) => {
                self.purges.retain(|p| p.workspace_id != purge.workspace_id);
                self.purges.push(purge);
            }
            Change::DeletePurge(id) => self.purges.retain(|p| p.workspace_id != id),
            Change::PutSmtp(smtp) => {
                self.smtp.insert(smtp.workspace_id, smtp);
            }
            Change::DeleteSmtp(id) => {
                self.smtp.remove(&id);
            }
            Change::PutDelivery(d) => {
                self.deliveries.insert((d.workspace_id, d.id), d);
            }
            Change::DeleteDelivery(ws, id) => {
                self.deliveries.remove(&(ws, id));
            }
            Change::OAuth(change) => self.oauth.apply(change),
            Change::PutIngestCredential(c) => {
                self.ingest_credentials.insert(c.workspace_id, c);
            }
            Change::DeleteIngestCredential(id) => {
                self.ingest_credentials.remove(&id);
            }
        }
    }

    /// The configuration version of `workspace`'s last change its AsyncAPI document shows; 0
    /// for a workspace not changed since the control plane began keeping it.
    pub fn workspace_version(&self, workspace: Uuid) -> u64 {
        self.workspace_versions
            .get(&workspace)
            .copied()
            .unwrap_or(0)
    }

    /// The workspace whose AsyncAPI document `change` changes, if any (read before the change
    /// is applied, so that a deletion still finds what it deletes). Tokens are not in the
    /// document, so a new token does not make an import of an earlier export fail.
    fn document_workspace(&self, change: &Change) -> Option<Uuid> {
        match change {
            Change::PutWorkspace(ws) => Some(ws.id),
            Change::PutSource(x) => Some(x.workspace_id),
            Change::DeleteSource(id) => self.sources.get(id).map(|x| x.workspace_id),
            Change::PutTagRules(r) => Some(r.workspace_id),
            Change::PutOutput(o) => Some(o.workspace_id),
            Change::DeleteOutput(id) => self.outputs.get(id).map(|o| o.workspace_id),
            Change::PutExportEndpoint(e) => Some(e.workspace_id),
            Change::DeleteExportEndpoint(id) => {
                self.export_endpoints.get(id).map(|e| e.workspace_id)
            }
            Change::PutWebhook(w) => Some(w.workspace_id),
            Change::DeleteWebhook(id) => self.webhooks.get(id).map(|w| w.workspace_id),
            _ => None,
        }
    }

    pub fn user_by_email(&self, email: &str) -> Option<&User> {
        self.emails
            .get(&email.to_lowercase())
            .and_then(|id| self.users.get(id))
    }

    /// The identity of `provider`'s account `subject`, when linked.
    pub fn identity(&self, provider: &str, subject: &str) -> Option<&Identity> {
        self.identity_keys
            .get(&(provider.to_owned(), subject.to_owned()))
            .and_then(|id| self.identities.get(id))
    }

    /// A user's identities, oldest first.
    pub fn identities_of(&self, user: Uuid) -> impl Iterator<Item = &Identity> {
        self.identities.values().filter(move |i| i.user_id == user)
    }

    /// A workspace by id or by slug.
    pub fn workspace(&self, key: &str) -> Option<&Workspace> {
        let id = match Uuid::parse_str(key) {
            Ok(id) => id,
            Err(_) => *self.slugs.get(key)?,
        };
        self.workspaces.get(&id)
    }

    pub fn members_of(&self, workspace: Uuid) -> impl Iterator<Item = &Member> {
        self.members
            .range((workspace, Uuid::nil())..=(workspace, Uuid::max()))
            .map(|(_, m)| m)
    }

    pub fn workspaces_of(&self, user: Uuid) -> impl Iterator<Item = (&Workspace, &Member)> + '_ {
        self.members
            .values()
            .filter(move |m| m.user_id == user)
            .filter_map(|m| self.workspaces.get(&m.workspace_id).map(|ws| (ws, m)))
    }

    pub fn sources_of(&self, workspace: Uuid) -> impl Iterator<Item = &Source> {
        self.sources
            .values()
            .filter(move |s| s.workspace_id == workspace)
    }

    /// A workspace's tag rules, in the order they apply.
    pub fn tag_rules_of(&self, workspace: Uuid) -> &[TagRule] {
        self.tag_rules
            .get(&workspace)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// A workspace's outputs, oldest first.
    pub fn outputs_of(&self, workspace: Uuid) -> impl Iterator<Item = &Output> {
        self.outputs
            .values()
            .filter(move |o| o.workspace_id == workspace)
    }

    /// A workspace's export endpoints, oldest first.
    pub fn export_endpoints_of(&self, workspace: Uuid) -> impl Iterator<Item = &ExportEndpoint> {
        self.export_endpoints
            .values()
            .filter(move |e| e.workspace_id == workspace)
    }

    /// A workspace's webhooks, oldest first.
    pub fn webhooks_of(&self, workspace: Uuid) -> impl Iterator<Item = &Webhook> {
        self.webhooks
            .values()
            .filter(move |w| w.workspace_id == workspace)
    }

    /// A webhook's delivery log, oldest first.
    pub fn webhook_deliveries_of(
        &self,
        webhook: Uuid,
    ) -> impl DoubleEndedIterator<Item = &WebhookAttemptRecord> {
        self.webhook_deliveries
            .range((webhook, Uuid::nil())..=(webhook, Uuid::max()))
            .map(|(_, a)| a)
    }

    /// A webhook's failure log, oldest first.
    pub fn webhook_failures_of(
        &self,
        webhook: Uuid,
    ) -> impl DoubleEndedIterator<Item = &WebhookAttemptRecord> {
        self.webhook_failures
            .range((webhook, Uuid::nil())..=(webhook, Uuid::max()))
            .map(|(_, a)| a)
    }

    /// The changes that delete `webhook` with its health and logs.
    pub fn webhook_deletion(&self, webhook: Uuid) -> Vec<Change> {
        let mut changes = vec![Change::DeleteWebhook(webhook)];
        if self.webhook_health.contains_key(&webhook) {
            changes.push(Change::DeleteWebhookHealth(webhook));
        }
        changes.extend(
            self.webhook_deliveries_of(webhook)
                .map(|a| Change::DeleteWebhookDelivery(webhook, a.id)),
        );
        changes.extend(
            self.webhook_failures_of(webhook)
                .map(|a| Change::DeleteWebhookFailure(webhook, a.id)),
        );
        changes
    }

    pub fn tokens_of(&self, workspace: Uuid) -> impl Iterator<Item = &AccessToken> {
        self.tokens
            .values()
            .filter(move |t| t.workspace_id == workspace)
    }

    /// A workspace's delivery attempts, oldest first.
    pub fn deliveries_of(&self, workspace: Uuid) -> impl DoubleEndedIterator<Item = &Delivery> {
        self.deliveries
            .range((workspace, Uuid::nil())..=(workspace, Uuid::max()))
            .map(|(_, d)| d)
    }

    pub fn invitations_of(&self, workspace: Uuid) -> impl Iterator<Item = &Invitation> {
        self.invitations
            .values()
            .filter(move |i| i.workspace_id == workspace)
    }
}

/// The redb file and the state it holds.
pub struct Store {
    db: Database,
    state: RwLock<State>,
    /// Serialises writers so that a change is computed from the state it is applied to.
    writer: Mutex<()>,
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    Ok(serde_json::to_vec(value)?)
}

fn load_table<T: DeserializeOwned>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
) -> Result<Vec<T>, StoreError> {
    let table = match txn.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in table.iter()? {
        let (_, value) = row?;
        out.push(serde_json::from_slice(value.value())?);
    }
    Ok(out)
}

impl Store {
    /// Opens (or creates) the store at `path` and loads it into memory.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path)?;
        let mut state = State::default();
        {
            let txn = db.begin_read()?;
            for user in load_table::<User>(&txn, USERS)? {
                state.apply(Change::PutUser(user));
            }
            for c in load_table::<Credential>(&txn, CREDENTIALS)? {
                state.apply(Change::PutCredential(c));
            }
            for i in load_table::<Identity>(&txn, IDENTITIES)? {
                state.apply(Change::PutIdentity(i));
            }
            for ws in load_table::<Workspace>(&txn, WORKSPACES)? {
                state.apply(Change::PutWorkspace(ws));
            }
            for m in load_table::<Member>(&txn, MEMBERS)? {
                state.apply(Change::PutMember(m));
            }
            for i in load_table::<Invitation>(&txn, INVITATIONS)? {
                state.apply(Change::PutInvitation(i));
            }
            for t in load_table::<AccessToken>(&txn, TOKENS)? {
                state.apply(Change::PutToken(t));
            }
            for s in load_table::<Source>(&txn, SOURCES)? {
                state.apply(Change::PutSource(s));
            }
            for rules in load_table::<TagRules>(&txn, TAG_RULES)? {
                state.apply(Change::PutTagRules(rules));
            }
            for o in load_table::<Output>(&txn, OUTPUTS)? {
                state.apply(Change::PutOutput(o));
            }
            for e in load_table::<ExportEndpoint>(&txn, EXPORT_ENDPOINTS)? {
                state.apply(Change::PutExportEndpoint(e));
            }
            for w in load_table::<Webhook>(&txn, WEBHOOKS)? {
                state.apply(Change::PutWebhook(w));
            }
            for h in load_table::<WebhookHealth>(&txn, WEBHOOK_HEALTH)? {
                state.apply(Change::PutWebhookHealth(h));
            }
            for a in load_table::<WebhookAttemptRecord>(&txn, WEBHOOK_DELIVERIES)? {
                state.apply(Change::PutWebhookDelivery(a));
            }
            for a in load_table::<WebhookAttemptRecord>(&txn, WEBHOOK_FAILURES)? {
                state.apply(Change::PutWebhookFailure(a));
            }
            for purge in load_table::<Purge>(&txn, PURGES)? {
                state.apply(Change::PutPurge(purge));
            }
            for smtp in load_table::<WorkspaceSmtp>(&txn, SMTP)? {
                state.apply(Change::PutSmtp(smtp));
            }
            for d in load_table::<Delivery>(&txn, DELIVERIES)? {
                state.apply(Change::PutDelivery(d));
            }
            for c in load_table::<IngestCredential>(&txn, INGEST_CREDENTIALS)? {
                state.apply(Change::PutIngestCredential(c));
            }
            crate::oauth::records::load_all(&txn, &mut state.oauth)?;
            match txn.open_table(META) {
                Ok(meta) => {
                    state.config_version =
                        meta.get(CONFIG_VERSION)?.map(|v| v.value()).unwrap_or(0);
                    for row in meta.iter()? {
                        let (key, value) = row?;
                        let id = key
                            .value()
                            .strip_prefix(WORKSPACE_VERSION_PREFIX)
                            .and_then(|id| Uuid::parse_str(id).ok());
                        if let Some(id) = id {
                            state.workspace_versions.insert(id, value.value());
                        }
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Store {
            db,
            state: RwLock::new(state),
            writer: Mutex::new(()),
        })
    }

    /// Copies the store as of one read transaction into a new redb file at `dest`, while
    /// writers go on (see `backup`). Returns the configuration version copied.
    pub fn backup_to(&self, dest: &Path) -> Result<u64, crate::backup::BackupError> {
        crate::backup::copy(&self.db, dest)
    }

    /// Runs `f` on a consistent view of the state.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        f(&state)
    }

    /// Computes changes with `f` from the current state, commits them durably, then applies
    /// them. Returns `f`'s value and whether the configuration version moved. Blocking (fsync):
    /// call from a blocking thread.
    pub fn write<T, E>(&self, f: impl FnOnce(&State) -> Result<(Vec<Change>, T), E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let (changes, value) = self.read(f)?;
        if changes.is_empty() {
            return Ok(value);
        }
        let bump = changes.iter().any(Change::affects_config);
        let (version, workspaces) = self.read(|s| {
            let mut workspaces: Vec<Uuid> = changes
                .iter()
                .filter_map(|c| s.document_workspace(c))
                .collect();
            workspaces.sort();
            workspaces.dedup();
            (s.config_version + u64::from(bump), workspaces)
        });
        // Every change a document shows affects the configuration, so it has a new version.
        let workspaces = if bump { workspaces } else { Vec::new() };
        self.commit(&changes, bump.then_some(version), &workspaces)?;
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        for change in changes {
            state.apply(change);
        }
        state.config_version = version;
        for id in workspaces {
            if state.workspaces.contains_key(&id) {
                state.workspace_versions.insert(id, version);
            }
        }
        Ok(value)
    }

    fn commit(
        &self,
        changes: &[Change],
        version: Option<u64>,
        touched: &[Uuid],
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut users = txn.open_table(USERS)?;
            let mut credentials = txn.open_table(CREDENTIALS)?;
            let mut identities = txn.open_table(IDENTITIES)?;
            let mut workspaces = txn.open_table(WORKSPACES)?;
            let mut members = txn.open_table(MEMBERS)?;
            let mut invitations = txn.open_table(INVITATIONS)?;
            let mut tokens = txn.open_table(TOKENS)?;
            let mut sources = txn.open_table(SOURCES)?;
            let mut tag_rules = txn.open_table(TAG_RULES)?;
            let mut outputs = txn.open_table(OUTPUTS)?;
            let mut export_endpoints = txn.open_table(EXPORT_ENDPOINTS)?;
            let mut webhooks = txn.open_table(WEBHOOKS)?;
            let mut webhook_health = txn.open_table(WEBHOOK_HEALTH)?;
            let mut webhook_deliveries = txn.open_table(WEBHOOK_DELIVERIES)?;
            let mut webhook_failures = txn.open_table(WEBHOOK_FAILURES)?;
            let mut purges = txn.open_table(PURGES)?;
            let mut smtp = txn.open_table(SMTP)?;
            let mut deliveries = txn.open_table(DELIVERIES)?;
            let mut ingest_credentials = txn.open_table(INGEST_CREDENTIALS)?;
            for change in changes {
                match change {
                    Change::PutUser(u) => {
                        users.insert(u.id.to_string().as_str(), encode(u)?.as_slice())?;
                    }
                    Change::PutCredential(c) => {
                        credentials.insert(c.sha256.as_str(), encode(c)?.as_slice())?;
                    }
                    Change::DeleteCredential(hash) => {
                        credentials.remove(hash.as_str())?;
                    }
                    Change::PutIdentity(i) => {
                        identities.insert(i.id.to_string().as_str(), encode(i)?.as_slice())?;
                    }
                    Change::DeleteIdentity(id) => {
                        identities.remove(id.to_string().as_str())?;
                    }
                    Change::PutWorkspace(w) | Change::PutWorkspaceSettings(w) => {
                        workspaces.insert(w.id.to_string().as_str(), encode(w)?.as_slice())?;
                    }
                    Change::DeleteWorkspace(id) => {
                        workspaces.remove(id.to_string().as_str())?;
                    }
                    Change::PutMember(m) => {
                        let key = member_key(m.workspace_id, m.user_id);
                        members.insert(key.as_str(), encode(m)?.as_slice())?;
                    }
                    Change::DeleteMember(ws, user) => {
                        members.remove(member_key(*ws, *user).as_str())?;
                    }
                    Change::PutInvitation(i) => {
                        invitations.insert(i.id.to_string().as_str(), encode(i)?.as_slice())?;
                    }
                    Change::DeleteInvitation(id) => {
                        invitations.remove(id.to_string().as_str())?;
                    }
                    Change::PutToken(t) => {
                        tokens.insert(t.id.to_string().as_str(), encode(t)?.as_slice())?;
                    }
                    Change::DeleteToken(id) => {
                        tokens.remove(id.to_string().as_str())?;
                    }
                    Change::PutSource(s) => {
                        sources.insert(s.id.to_string().as_str(), encode(s)?.as_slice())?;
                    }
                    Change::DeleteSource(id) => {
                        sources.remove(id.to_string().as_str())?;
                    }
                    Change::PutTagRules(r) if r.rules.is_empty() => {
                        tag_rules.remove(r.workspace_id.to_string().as_str())?;
                    }
                    Change::PutTagRules(r) => {
                        let key = r.workspace_id.to_string();
                        tag_rules.insert(key.as_str(), encode(r)?.as_slice())?;
                    }
                    Change::PutOutput(o) => {
                        outputs.insert(o.id.to_string().as_str(), encode(o)?.as_slice())?;
                    }
                    Change::DeleteOutput(id) => {
                        outputs.remove(id.to_string().as_str())?;
                    }
                    Change::PutExportEndpoint(e) => {
                        let key = e.id.to_string();
                        export_endpoints.insert(key.as_str(), encode(e)?.as_slice())?;
                    }
                    Change::DeleteExportEndpoint(id) => {
                        export_endpoints.remove(id.to_string().as_str())?;
                    }
                    Change::PutWebhook(w) => {
                        webhooks.insert(w.id.to_string().as_str(), encode(w)?.as_slice())?;
                    }
                    Change::DeleteWebhook(id) => {
                        webhooks.remove(id.to_string().as_str())?;
                    }
                    Change::PutWebhookHealth(h) => {
                        let key = h.webhook_id.to_string();
                        webhook_health.insert(key.as_str(), encode(h)?.as_slice())?;
                    }
                    Change::DeleteWebhookHealth(id) => {
                        webhook_health.remove(id.to_string().as_str())?;
                    }
                    Change::PutWebhookDelivery(a) => {
                        let key = member_key(a.webhook_id, a.id);
                        webhook_deliveries.insert(key.as_str(), encode(a)?.as_slice())?;
                    }
                    Change::DeleteWebhookDelivery(webhook, id) => {
                        webhook_deliveries.remove(member_key(*webhook, *id).as_str())?;
                    }
                    Change::PutWebhookFailure(a) => {
                        let key = member_key(a.webhook_id, a.id);
                        webhook_failures.insert(key.as_str(), encode(a)?.as_slice())?;
                    }
                    Change::DeleteWebhookFailure(webhook, id) => {
                        webhook_failures.remove(member_key(*webhook, *id).as_str())?;
                    }
                    Change::PutPurge(p) => {
                        let key = p.workspace_id.to_string();
                        purges.insert(key.as_str(), encode(p)?.as_slice())?;
                    }
                    Change::DeletePurge(id) => {
                        purges.remove(id.to_string().as_str())?;
                    }
                    Change::PutSmtp(x) => {
                        let key = x.workspace_id.to_string();
                        smtp.insert(key.as_str(), encode(x)?.as_slice())?;
                    }
                    Change::DeleteSmtp(id) => {
                        smtp.remove(id.to_string().as_str())?;
                    }
                    Change::PutDelivery(d) => {
                        let key = member_key(d.workspace_id, d.id);
                        deliveries.insert(key.as_str(), encode(d)?.as_slice())?;
                    }
                    Change::DeleteDelivery(ws, id) => {
                        deliveries.remove(member_key(*ws, *id).as_str())?;
                    }
                    Change::OAuth(_) => {}
                    Change::PutIngestCredential(c) => {
                        let key = c.workspace_id.to_string();
                        ingest_credentials.insert(key.as_str(), encode(c)?.as_slice())?;
                    }
                    Change::DeleteIngestCredential(id) => {
                        ingest_credentials.remove(id.to_string().as_str())?;
                    }
                }
            }
            let mut meta = txn.open_table(META)?;
            if let Some(version) = version {
                meta.insert(CONFIG_VERSION, version)?;
                for id in touched {
                    let deleted = changes
                        .iter()
                        .any(|c| matches!(c, Change::DeleteWorkspace(w) if w == id));
                    if !deleted {
                        let key = format!("{WORKSPACE_VERSION_PREFIX}{id}");
                        meta.insert(key.as_str(), version)?;
                    }
                }
            }
            for change in changes {
                if let Change::DeleteWorkspace(id) = change {
                    meta.remove(format!("{WORKSPACE_VERSION_PREFIX}{id}").as_str())?;
                }
            }
        }
        let oauth = changes.iter().filter_map(|c| match c {
            Change::OAuth(change) => Some(change),
            _ => None,
        });
        crate::oauth::records::commit(&txn, oauth)?;
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Workspace;

    fn workspace(slug: &str) -> Workspace {
        Workspace {
            id: Uuid::now_v7(),
            slug: slug.into(),
            name: slug.into(),
            created_by: Uuid::now_v7(),
            created_at: chrono::Utc::now(),
            enabled: true,
            cors_allowed_origins: vec![],
            asyncapi_public: false,
        }
    }

    #[test]
    fn a_workspace_version_moves_with_its_own_changes_only_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cp.redb");
        let (plant, other) = (workspace("plant"), workspace("other"));
        let source = |ws: &Workspace| Source {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            slug: "telemetry".into(),
            name: "telemetry".into(),
            protocols: vec![sluice_config::snapshot::Protocol::Http],
            schema: None,
            on_invalid: sluice_config::shaping::OnInvalid::Reject,
            keep_payload: true,
            created_at: chrono::Utc::now(),
        };
        let put = |store: &Store, changes: Vec<Change>| {
            store
                .write(|_| Ok::<_, StoreError>((changes, ())))
                .expect("write");
        };
        let mine = source(&plant);
        {
            let store = Store::open(&path).expect("open");
            put(&store, vec![Change::PutWorkspace(plant.clone())]);
            put(&store, vec![Change::PutSource(mine.clone())]);
            assert_eq!(store.read(|s| s.workspace_version(plant.id)), 2);
            put(&store, vec![Change::PutWorkspace(other.clone())]);
            put(&store, vec![Change::PutSource(source(&other))]);
            // Neither another workspace nor a setting nodes never see moves it.
            put(&store, vec![Change::PutWorkspaceSettings(plant.clone())]);
            assert_eq!(store.read(|s| s.config_version), 4);
            assert_eq!(store.read(|s| s.workspace_version(plant.id)), 2);
            assert_eq!(store.read(|s| s.workspace_version(other.id)), 4);
            // A deletion counts for the workspace of what it deletes.
            put(&store, vec![Change::DeleteSource(mine.id)]);
            assert_eq!(store.read(|s| s.workspace_version(plant.id)), 5);
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.read(|s| s.workspace_version(plant.id)), 5);
        assert_eq!(store.read(|s| s.workspace_version(other.id)), 4);
        put(&store, vec![Change::DeleteWorkspace(other.id)]);
        drop(store);
        let store = Store::open(&path).expect("reopen");
        assert!(store.read(|s| !s.workspace_versions.contains_key(&other.id)));
    }

    #[test]
    fn committed_changes_survive_reopen_and_raise_the_config_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cp.redb");
        let ws = workspace("fleet");
        {
            let store = Store::open(&path).expect("open");
            store
                .write(|_| Ok::<_, StoreError>((vec![Change::PutWorkspace(ws.clone())], ())))
                .expect("write");
            assert_eq!(store.read(|s| s.config_version), 1);
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.read(|s| s.config_version), 1);
        assert_eq!(
            store.read(|s| s.workspace("fleet").map(|w| w.id)),
            Some(ws.id)
        );
    }

    #[test]
    fn a_source_stored_before_shaping_reads_with_the_defaults() {
        let old = serde_json::json!({
            "id": Uuid::now_v7(), "workspace_id": Uuid::now_v7(), "slug": "telemetry",
            "name": "telemetry", "protocols": ["http", "mqtt"], "schema": null,
            "created_at": "2026-01-01T00:00:00Z"
        });
        let source: Source = serde_json::from_value(old).expect("an old record reads");
        assert_eq!(source.on_invalid, sluice_config::shaping::OnInvalid::Reject);
        assert!(source.keep_payload);
    }

    #[test]
    fn identities_survive_reopen_found_by_provider_and_subject() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cp.redb");
        let now = chrono::Utc::now();
        let identity = crate::model::Identity {
            id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            provider: "google".into(),
            subject: "1234".into(),
            email: Some("ada@example.com".into()),
            linked_at: now,
            last_used_at: now,
        };
        {
            let store = Store::open(&path).expect("open a store made before identities");
            assert!(store.read(|s| s.identities.is_empty()));
            store
                .write(|_| Ok::<_, StoreError>((vec![Change::PutIdentity(identity.clone())], ())))
                .expect("write");
            assert_eq!(store.read(|s| s.config_version), 0, "nodes never see them");
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(
            store.read(|s| s.identity("google", "1234").map(|i| i.user_id)),
            Some(identity.user_id)
        );
        store
            .write(|_| Ok::<_, StoreError>((vec![Change::DeleteIdentity(identity.id)], ())))
            .expect("delete");
        assert!(store.read(|s| s.identity("google", "1234").is_none()));
    }

    #[test]
    fn a_webhook_its_health_and_logs_survive_reopen_and_go_together() {
        use crate::model::{Webhook, WebhookAttemptRecord, WebhookHealth};
        use sluice_config::stream::WebhookOutcome;

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cp.redb");
        let ws = workspace("plant");
        let now = chrono::Utc::now();
        let webhook = Webhook {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            slug: "alerts".into(),
            name: "alerts".into(),
            output: "hot".into(),
            url: "https://hooks.example.com/in".into(),
            enabled: true,
            batch_events_max: 500,
            batch_bytes_max: 1 << 20,
            batch_interval_ms: 1000,
            disable_after_s: 86_400,
            secret_sealed: "v1.sealed".into(),
            secret_for_nodes: None,
            disabled: None,
            created_at: now,
        };
        let attempt = WebhookAttemptRecord {
            id: Uuid::now_v7(),
            webhook_id: webhook.id,
            workspace_id: ws.id,
            node: "n1".into(),
            at: now,
            outcome: WebhookOutcome::Failed,
            status: Some(400),
            events: 3,
            first_event_id: None,
            last_event_id: None,
            duration_ms: 9,
            error: Some("400".into()),
            webhook_message_id: "msg".into(),
            test: false,
        };
        {
            let store = Store::open(&path).expect("open");
            let changes = vec![
                Change::PutWorkspace(ws.clone()),
                Change::PutWebhook(webhook.clone()),
                Change::PutWebhookHealth(WebhookHealth::new(&webhook, None)),
                Change::PutWebhookDelivery(attempt.clone()),
                Change::PutWebhookFailure(attempt.clone()),
            ];
            store
                .write(|_| Ok::<_, StoreError>((changes, ())))
                .expect("write");
            let version = store.read(|s| s.config_version);
            // Logs and health are the control plane's: nodes get no new version for them.
            let log_only = vec![Change::PutWebhookDelivery(WebhookAttemptRecord {
                id: Uuid::now_v7(),
                ..attempt.clone()
            })];
            store
                .write(|_| Ok::<_, StoreError>((log_only, ())))
                .expect("write");
            assert_eq!(store.read(|s| s.config_version), version);
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(
            store.read(|s| (
                s.webhooks_of(ws.id).count(),
                s.webhook_health.len(),
                s.webhook_deliveries_of(webhook.id).count(),
                s.webhook_failures_of(webhook.id).count()
            )),
            (1, 1, 2, 1)
        );
        store
            .write(|s| Ok::<_, StoreError>((s.webhook_deletion(webhook.id), ())))
            .expect("delete");
        let store = {
            drop(store);
            Store::open(&path).expect("reopen")
        };
        assert!(store.read(|s| s.webhooks.is_empty()
            && s.webhook_health.is_empty()
            && s.webhook_deliveries.is_empty()
            && s.webhook_failures.is_empty()));
    }

    #[test]
    fn a_refused_change_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("cp.redb")).expect("open");
        let result: Result<(), crate::problem::ApiError> =
            store.write(|_| Err(crate::problem::ApiError::internal("refused")));
        assert!(result.is_err());
        assert!(store.read(|s| s.workspaces.is_empty() && s.config_version == 0));
    }
}
