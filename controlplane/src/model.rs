//! The control plane's records: what is stored in its redb file, one JSON value per record.
//!
//! Secrets never appear here in clear: passwords are argon2id hashes, session and access tokens
//! are SHA-256 hashes, one-time codes are SHA-256 hashes salted with their owner's id.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sluice_config::data_out::{ExportEndpointConfig, Field, Filter, OutputConfig, WebhookConfig};
use sluice_config::shaping::{OnInvalid, TagRule};
use sluice_config::snapshot::Scope;
use sluice_config::stream::WebhookOutcome;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::roles::Role;

/// A person who signs in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    /// The object id (OID): generated, stable, unique.
    pub id: Uuid,
    /// As typed at sign-up; unique case-insensitively.
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    /// argon2id PHC string; empty for a user who signed up through a provider and has set no
    /// password (password sign-in then always fails, and a password reset sets one).
    pub password_hash: String,
    pub email_verified: bool,
    pub created_at: DateTime<Utc>,
    pub trial_ends_at: DateTime<Utc>,
    pub plan: Plan,
    /// Operators manage plans and trials of every user.
    pub operator: bool,
    /// The pending e-mail verification or password reset code, if any.
    pub code: Option<OneTimeCode>,
}

impl User {
    /// Whether the user can sign in with a password.
    pub fn has_password(&self) -> bool {
        !self.password_hash.is_empty()
    }

    /// Whether the workspaces this user created may be used at `now`.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.plan == Plan::Paid || self.operator || now < self.trial_ends_at
    }
}

/// What a user pays for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    /// The free trial; workspaces are disabled when it ends.
    Trial,
    /// A paid plan; workspaces stay enabled.
    Paid,
}

/// What a one-time code proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodePurpose {
    VerifyEmail,
    ResetPassword,
}

/// A short code sent by e-mail: expires and allows a few attempts only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OneTimeCode {
    pub purpose: CodePurpose,
    /// SHA-256 of `user id || code`, hex.
    pub sha256: String,
    pub expires_at: DateTime<Utc>,
    pub attempts_left: u32,
}

/// An account at an OpenID Connect or OAuth 2 provider that signs a user in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub id: Uuid,
    pub user_id: Uuid,
    /// The provider's `id` in `[[controlplane.sign_in.providers]]`.
    pub provider: String,
    /// The provider's stable id of the account (`sub`, or GitHub's and X's numeric user id);
    /// unique per provider.
    pub subject: String,
    /// The address the provider gave when the identity was linked, if any.
    pub email: Option<String>,
    pub linked_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
}

/// What a credential is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// Returned by sign-in, also set as a cookie.
    Session,
    /// A personal access token for scripts.
    PersonalToken,
}

/// A session or a personal access token, by hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credential {
    pub id: Uuid,
    /// SHA-256 of the secret, hex; the redb key.
    pub sha256: String,
    pub kind: CredentialKind,
    pub user_id: Uuid,
    pub name: String,
    /// The first and last characters of the secret, to recognise it in a list.
    pub hint: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// An isolated container of sources, tokens and data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workspace {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    /// False while its creator's trial is over without a paid plan.
    pub enabled: bool,
    /// Browser origins allowed to call the workspace's ingest endpoints.
    pub cors_allowed_origins: Vec<String>,
    /// Whether its AsyncAPI document is served without authentication at
    /// `/public/{slug}/asyncapi.json` and `.yaml`; false in records written before the toggle.
    #[serde(default)]
    pub asyncapi_public: bool,
}

/// A user's role in a workspace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    pub workspace_id: Uuid,
    pub user_id: Uuid,
    pub role: Role,
    pub joined_at: DateTime<Utc>,
}

/// A pending invitation to join a workspace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Invitation {
    pub id: Uuid,
    pub workspace_id: Uuid,
    /// As typed by the inviter; matched case-insensitively.
    pub email: String,
    pub role: Role,
    pub invited_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// SHA-256 of the link's token, hex: the link works only while this record exists.
    pub token_sha256: String,
}

/// A workspace access token for devices and readers, by hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessToken {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub name: String,
    pub sha256: String,
    pub hint: String,
    pub scopes: Vec<Scope>,
    /// Source slugs the token may write; all when absent.
    pub sources: Option<Vec<String>>,
    /// The only device id the token may send as.
    pub device_id: Option<String>,
    /// Export endpoint slugs a `read` token may read; all when absent (and always absent in
    /// records written before read tokens had it).
    #[serde(default)]
    pub endpoints: Option<Vec<String>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
}

/// Protocols a source accepts: the configuration's, which nodes enforce.
pub use sluice_config::snapshot::Protocol;

/// An ingest point of a workspace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Source {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub slug: String,
    pub name: String,
    pub protocols: Vec<Protocol>,
    /// JSON Schema (draft 2020-12) of the payload, when the source has one.
    pub schema: Option<serde_json::Value>,
    /// What nodes do with events the schema refuses. Records written before sources had it
    /// read as the default, `reject`.
    #[serde(default)]
    pub on_invalid: OnInvalid,
    /// Whether the `payload` column is written beside the typed columns; true in records
    /// written before sources had it.
    #[serde(default = "keep_payload_by_default")]
    pub keep_payload: bool,
    pub created_at: DateTime<Utc>,
}

fn keep_payload_by_default() -> bool {
    true
}

/// A filtered, projected view of one source's events (`sluice_config::data_out`), as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Output {
    pub id: Uuid,
    pub workspace_id: Uuid,
    /// Unique in the workspace; fixed once created (endpoints name it).
    pub slug: String,
    pub name: String,
    /// The slug of the source it reads; that source cannot be deleted while this output
    /// names it.
    pub source: String,
    pub filter: Filter,
    pub fields: Vec<Field>,
    pub created_at: DateTime<Utc>,
}

impl Output {
    /// The output as nodes receive it.
    pub fn config(&self) -> OutputConfig {
        OutputConfig {
            id: self.id,
            slug: self.slug.clone(),
            name: self.name.clone(),
            source: self.source.clone(),
            filter: self.filter.clone(),
            fields: self.fields.clone(),
        }
    }
}

/// An output made readable by end-users with `read` tokens, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportEndpoint {
    pub id: Uuid,
    pub workspace_id: Uuid,
    /// Unique in the workspace; fixed once created (its URL and tokens name it).
    pub slug: String,
    pub name: String,
    /// The slug of the output it serves.
    pub output: String,
    pub created_at: DateTime<Utc>,
}

impl ExportEndpoint {
    /// The endpoint as nodes receive it.
    pub fn config(&self) -> ExportEndpointConfig {
        ExportEndpointConfig {
            id: self.id,
            slug: self.slug.clone(),
            name: self.name.clone(),
            output: self.output.clone(),
        }
    }
}

/// An output delivered to a URL in signed batches by every data-plane node, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Webhook {
    pub id: Uuid,
    pub workspace_id: Uuid,
    /// Unique in the workspace; fixed once created.
    pub slug: String,
    pub name: String,
    /// The slug of the output it delivers; that output cannot be deleted while this names it.
    pub output: String,
    pub url: String,
    /// False when a member or the automatic disabling (`disabled`) turned it off.
    pub enabled: bool,
    pub batch_events_max: usize,
    pub batch_bytes_max: usize,
    pub batch_interval_ms: u64,
    /// Failing without a delivery for this long disables it (control plane only).
    pub disable_after_s: u64,
    /// The signing secret (`whsec_...`), sealed with the control plane's secret key (see
    /// `secrets`, context: the webhook's id); never returned by the API after creation.
    pub secret_sealed: String,
    /// The same secret sealed with the cluster secret (`sluice_config::sealed`), as nodes get
    /// it; kept so that every snapshot carries the same bytes (a fresh seal would change the
    /// content hash at every version). Sealed again at start when the cluster secret changed;
    /// absent while the control plane has no cluster secret.
    #[serde(default)]
    pub secret_for_nodes: Option<String>,
    /// Why and when it was turned off; absent while enabled.
    #[serde(default)]
    pub disabled: Option<WebhookDisabled>,
    pub created_at: DateTime<Utc>,
}

/// Why a webhook is disabled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookDisabled {
    pub at: DateTime<Utc>,
    pub reason: String,
}

impl Webhook {
    /// The subscription as nodes receive it; `allow_private` is the operator's
    /// `smtp_allow_private_hosts`.
    pub fn config(&self, allow_private: bool) -> WebhookConfig {
        WebhookConfig {
            id: self.id,
            slug: self.slug.clone(),
            name: self.name.clone(),
            output: self.output.clone(),
            url: self.url.clone(),
            enabled: self.enabled,
            batch_events_max: self.batch_events_max,
            batch_bytes_max: self.batch_bytes_max,
            batch_interval_ms: self.batch_interval_ms,
            secret_sealed: self.secret_for_nodes.clone().unwrap_or_default(),
            allow_private,
        }
    }
}

/// What the control plane judges a webhook's health by, from the nodes' reports: kept apart
/// from [`Webhook`] because it changes with every report and nodes never see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookHealth {
    pub webhook_id: Uuid,
    pub workspace_id: Uuid,
    /// The first attempt that did not deliver after the last one that did; absent while
    /// healthy.
    pub failing_since: Option<DateTime<Utc>>,
    pub last_delivered_at: Option<DateTime<Utc>>,
    /// The latest attempt that did not deliver, and its error.
    pub last_failure_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// Attempts before this (the last re-enabling; the beginning of time for a new webhook)
    /// do not count: reports still on their way must not disable it again at once.
    #[serde(default)]
    pub counted_from: Option<DateTime<Utc>>,
}

impl WebhookHealth {
    pub fn new(webhook: &Webhook, counted_from: Option<DateTime<Utc>>) -> Self {
        WebhookHealth {
            webhook_id: webhook.id,
            workspace_id: webhook.workspace_id,
            failing_since: None,
            last_delivered_at: None,
            last_failure_at: None,
            last_error: None,
            counted_from,
        }
    }
}

/// One attempt to deliver a batch to a webhook, in its delivery log (and, when `failed`, its
/// failure log).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookAttemptRecord {
    /// UUIDv7 made from `at`, so that the logs sort by the attempts' times.
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub workspace_id: Uuid,
    /// The node that made it; `control-plane` for a test delivery.
    pub node: String,
    pub at: DateTime<Utc>,
    pub outcome: WebhookOutcome,
    pub status: Option<u16>,
    pub events: u64,
    pub first_event_id: Option<Uuid>,
    pub last_event_id: Option<Uuid>,
    pub duration_ms: u64,
    pub error: Option<String>,
    pub webhook_message_id: String,
    /// A test delivery the control plane made (`POST .../test`); tests do not count for the
    /// webhook's health.
    #[serde(default)]
    pub test: bool,
}

/// A workspace's tag rules, in the order they apply: one record per workspace, so that a
/// reorder is one write and the order cannot be half-changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TagRules {
    pub workspace_id: Uuid,
    pub rules: Vec<TagRule>,
}

/// How the connection to an SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    /// Plain text (only on a trusted network).
    None,
    /// Plain connection upgraded with STARTTLS, which must succeed (usually port 587).
    Starttls,
    /// TLS from the first byte (usually port 465).
    Tls,
}

/// A workspace's own SMTP server, used for its mail instead of the platform's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceSmtp {
    pub workspace_id: Uuid,
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    /// Sealed with the node's secret key (see `secrets`); never returned by the API.
    pub password_sealed: Option<String>,
    pub from_address: String,
    pub from_name: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// Why a mail was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MailPurpose {
    EmailVerification,
    PasswordReset,
    Invitation,
    /// A test of the workspace SMTP settings.
    SmtpTest,
    /// A webhook was disabled after failing too long; sent to the workspace's Admins.
    WebhookDisabled,
}

/// Which server a mail went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MailTransport {
    WorkspaceSmtp,
    PlatformSmtp,
}

/// One attempt to send a workspace's mail.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub at: DateTime<Utc>,
    pub recipient: String,
    pub purpose: MailPurpose,
    pub transport: MailTransport,
    /// True when the server accepted the mail.
    pub delivered: bool,
    /// The SMTP error, when it failed.
    pub error: Option<String>,
}

/// A deleted workspace whose objects in the lake are still to be removed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Purge {
    pub workspace_id: Uuid,
    /// When the next deletion pass runs.
    pub due_at: DateTime<Utc>,
    /// Passes still to run: a later pass removes what data-plane nodes uploaded from their
    /// WALs after the first.
    pub passes_left: u32,
}

/// Shows the first and last characters of a secret, e.g. `sluice_…a1B2`.
pub fn secret_hint(secret: &str, prefix: &str) -> String {
    let tail: String = secret
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{prefix}…{tail}")
}
