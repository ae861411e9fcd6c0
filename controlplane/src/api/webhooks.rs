//! Webhook subscriptions: an output delivered to a URL in signed batches (Standard Webhooks)
//! by every data-plane node, each node the events it accepted.
//!
//! The signing secret is made here, shown once (in the answer to the creation or to a
//! rotation), stored sealed with the control plane's secret key, and travels to nodes sealed
//! with the cluster secret. A URL is checked when saved against the outbound address policy
//! (`webhook_client`); nodes check it again at every connection. The delivery and failure
//! logs and the automatic disabling are `webhook_health`'s.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sluice_config::data_out::{
    self, check_webhook_url, default_batch_bytes, default_batch_events, default_batch_interval,
    WEBHOOKS_MAX,
};
use sluice_config::stream::WebhookOutcome;
use sluice_config::webhook_signature::{generate_secret, Signer};
use utoipa::ToSchema;
use uuid::Uuid;

use super::outputs::{optional_name_schema, valid_name};
use super::validate::valid_slug;
use super::{authorize, require_enabled_in, ApiJson, ApiPath, ApiQuery, Page, PageQuery};
use crate::app::App;
use crate::auth::Caller;
use crate::model::{Webhook, WebhookAttemptRecord, WebhookDisabled, WebhookHealth, Workspace};
use crate::problem::{ApiError, ApiResult, ProblemType};
use crate::references;
use crate::roles::Action;
use crate::store::{Change, State as Data};
use crate::webhook_client::{self, AddressError};
use crate::webhook_health::{self, ATTEMPTS_KEPT};

/// Shortest `disable_after_s`: a receiver down for a minute is not yet a reason to stop.
pub const DISABLE_AFTER_S_MIN: u64 = 60;
/// Longest `disable_after_s`: 30 days.
pub const DISABLE_AFTER_S_MAX: u64 = 30 * 24 * 3600;
/// Default `disable_after_s`: a day.
pub const DISABLE_AFTER_S_DEFAULT: u64 = 24 * 3600;

/// Whether a webhook sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookStatus {
    Active,
    /// Turned off by a member (`enabled: false`) or after failing for `disable_after_s`.
    Disabled,
}

/// A webhook as the API shows it (never its secret, except in the answers that make one).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    /// UUIDv7; receivers see it nowhere, reports from nodes name it.
    pub id: Uuid,
    /// Unique in the workspace; fixed once created.
    pub slug: String,
    pub name: String,
    /// The slug of the output it delivers.
    pub output: String,
    pub url: String,
    pub enabled: bool,
    pub status: WebhookStatus,
    /// Why it is disabled; absent while active.
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    /// The first delivery attempt that failed after the last one that delivered, on any node;
    /// absent while deliveries succeed.
    pub failing_since: Option<DateTime<Utc>>,
    pub batch_events_max: usize,
    pub batch_bytes_max: usize,
    pub batch_interval_ms: u64,
    pub disable_after_s: u64,
    pub created_at: DateTime<Utc>,
    /// Only in the answer to the creation and to `rotate-secret`: the signing secret
    /// (`whsec_...`). Store it now, it is never shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl WebhookView {
    fn new(s: &Data, w: &Webhook) -> Self {
        WebhookView {
            id: w.id,
            slug: w.slug.clone(),
            name: w.name.clone(),
            output: w.output.clone(),
            url: w.url.clone(),
            enabled: w.enabled,
            status: if w.enabled {
                WebhookStatus::Active
            } else {
                WebhookStatus::Disabled
            },
            disabled_reason: w.disabled.as_ref().map(|d| d.reason.clone()),
            disabled_at: w.disabled.as_ref().map(|d| d.at),
            failing_since: s
                .webhook_health
                .get(&w.id)
                .and_then(|h| h.failing_since)
                .filter(|_| w.enabled),
            batch_events_max: w.batch_events_max,
            batch_bytes_max: w.batch_bytes_max,
            batch_interval_ms: w.batch_interval_ms,
            disable_after_s: w.disable_after_s,
            created_at: w.created_at,
            secret: None,
        }
    }
}

/// A new webhook.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// `a-z`, `0-9` and `-`, at most 63 characters, not an id.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"
    )]
    pub slug: String,
    /// Display name; the slug when absent.
    #[schema(schema_with = optional_name_schema)]
    pub name: Option<String>,
    /// The slug of one of the workspace's outputs.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"
    )]
    pub output: String,
    /// `https://host[:port]/path?query`; `http://` only where the operator allows private
    /// hosts. The host must resolve, to public addresses only unless the operator allows
    /// private ones.
    #[schema(max_length = 2048, pattern = r"^https?://[^\s@#/?]+([/?][^\s#]*)?$")]
    pub url: String,
    /// Absent: true.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Events per batch at most (default 500).
    #[schema(minimum = 1, maximum = 10000)]
    pub batch_events_max: Option<usize>,
    /// Bytes of JSON per batch at most (default 1 MiB).
    #[schema(minimum = 1024, maximum = 8388608)]
    pub batch_bytes_max: Option<usize>,
    /// Events waiting are sent at least this often (default 1000).
    #[schema(minimum = 10, maximum = 3600000)]
    pub batch_interval_ms: Option<u64>,
    /// Failing without a delivery this long disables it (default 86400, a day).
    #[schema(minimum = 60, maximum = 2592000)]
    pub disable_after_s: Option<u64>,
}

/// Changes to a webhook; absent fields stay as they are. The slug cannot change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookUpdate {
    #[schema(schema_with = optional_name_schema)]
    pub name: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"
    )]
    pub output: Option<String>,
    #[schema(max_length = 2048, pattern = r"^https?://[^\s@#/?]+([/?][^\s#]*)?$")]
    pub url: Option<String>,
    /// `true` enables it again (and forgets the failures so far); `false` stops it.
    pub enabled: Option<bool>,
    #[schema(minimum = 1, maximum = 10000)]
    pub batch_events_max: Option<usize>,
    #[schema(minimum = 1024, maximum = 8388608)]
    pub batch_bytes_max: Option<usize>,
    #[schema(minimum = 10, maximum = 3600000)]
    pub batch_interval_ms: Option<u64>,
    #[schema(minimum = 60, maximum = 2592000)]
    pub disable_after_s: Option<u64>,
}

/// The outcome of a test delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookTestView {
    /// The receiver's HTTP status; absent when it did not answer.
    pub status: Option<u16>,
    /// True for a 2xx answer.
    pub ok: bool,
    /// `delivered`, `retrying` (no answer, 408, 429, 5xx) or `failed` (another 4xx, a
    /// redirect), as nodes would take it.
    pub outcome: WebhookOutcome,
    pub duration_ms: u64,
    /// What went wrong: the connection error, or the status and the start of the answer.
    pub error: Option<String>,
    /// The `webhook-id` header sent.
    pub webhook_message_id: String,
}

/// One delivery attempt, in a webhook's delivery or failure log.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAttemptView {
    pub id: Uuid,
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
    /// True for a test delivery (`POST …/test`), which does not count for the health.
    pub test: bool,
}

impl From<&WebhookAttemptRecord> for WebhookAttemptView {
    fn from(a: &WebhookAttemptRecord) -> Self {
        WebhookAttemptView {
            id: a.id,
            node: a.node.clone(),
            at: a.at,
            outcome: a.outcome,
            status: a.status,
            events: a.events,
            first_event_id: a.first_event_id,
            last_event_id: a.last_event_id,
            duration_ms: a.duration_ms,
            error: a.error.clone(),
            webhook_message_id: a.webhook_message_id.clone(),
            test: a.test,
        }
    }
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::new(ProblemType::InvalidWebhook, detail)
}

fn find<'s>(s: &'s Data, ws: &Workspace, slug: &str) -> ApiResult<&'s Webhook> {
    s.webhooks_of(ws.id)
        .find(|w| w.slug == slug)
        .ok_or_else(|| {
            ApiError::new(
                ProblemType::UnknownWebhook,
                format!("no webhook {slug:?} in workspace {:?}", ws.slug),
            )
        })
}

/// Checks a URL's form, then where its host resolves, as the operator's policy allows.
async fn valid_url(app: &App, url: &str) -> ApiResult<String> {
    let allow_private = app.config.smtp_allow_private_hosts;
    let url = url.trim().to_owned();
    check_webhook_url(&url, allow_private).map_err(invalid)?;
    match webhook_client::checked_addresses(&url, allow_private).await {
        Ok(_) => Ok(url),
        Err(e @ AddressError::NotAllowed { .. }) => Err(ApiError::new(
            ProblemType::AddressNotAllowed,
            format!("webhook URL {url:?}: {e}"),
        )),
        Err(e) => Err(invalid(format!("webhook URL {url:?}: {e}"))),
    }
}

fn valid_disable_after(seconds: u64) -> ApiResult<u64> {
    if !(DISABLE_AFTER_S_MIN..=DISABLE_AFTER_S_MAX).contains(&seconds) {
        return Err(invalid(format!(
            "disable_after_s is {DISABLE_AFTER_S_MIN} to {DISABLE_AFTER_S_MAX}"
        )));
    }
    Ok(seconds)
}

/// Checks `webhook` as nodes will, and that its output exists; `webhook` replaces any stored
/// webhook of the same id.
fn valid_webhook(app: &App, s: &Data, ws: &Workspace, webhook: &Webhook) -> ApiResult<()> {
    let allow_private = app.config.smtp_allow_private_hosts;
    let to_invalid = |e: data_out::DataOutError| invalid(e.to_string());
    let config = webhook.config(allow_private);
    config.check().map_err(to_invalid)?;
    if !s.outputs_of(ws.id).any(|o| o.slug == webhook.output) {
        return Err(ApiError::new(
            ProblemType::UnknownNamedOutput,
            format!(
                "webhook {:?} delivers output {:?}, which workspace {:?} does not have",
                webhook.slug, webhook.output, ws.slug
            ),
        ));
    }
    let mut all = references::DataOut::of(s, ws.id);
    all.webhooks.retain(|w| w.id != webhook.id);
    all.webhooks.push(config);
    all.check().map_err(to_invalid)
}

/// A new secret, sealed for the store and for nodes.
pub(super) fn new_secret(app: &App, webhook: &mut Webhook) -> ApiResult<String> {
    let secret = generate_secret();
    webhook.secret_sealed = app
        .secrets
        .seal(&secret, &webhook.id.to_string())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    webhook.secret_for_nodes = match &app.config.cluster_secret {
        Some(cluster) => Some(
            sluice_config::sealed::seal(cluster, &secret)
                .map_err(|e| ApiError::internal(e.to_string()))?,
        ),
        None => None,
    };
    Ok(secret)
}

/// Webhooks of a workspace. Any member.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}/webhooks", tag = "webhooks",
    params(("workspace" = String, Path, description = "Workspace id or slug"), PageQuery),
    responses((status = 200, body = Page<WebhookView>), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn list_webhooks(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<WebhookView>>> {
    let items = app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::View)?;
        Ok::<_, ApiError>(
            s.webhooks_of(ws.id)
                .map(|w| (w.id.to_string(), WebhookView::new(s, w)))
                .collect::<Vec<_>>(),
        )
    })?;
    page.page(&app, items).map(Json)
}

/// Create a webhook; its signing secret is in this answer only. Admin or Editor.
#[utoipa::path(post, path = "/api/v1/workspaces/{workspace}/webhooks", tag = "webhooks",
    params(("workspace" = String, Path, description = "Workspace id or slug")),
    request_body = NewWebhook,
    responses((status = 201, body = WebhookView), (status = 400, body = crate::problem::ProblemBody),
        (status = 403, body = crate::problem::ProblemBody), (status = 404, body = crate::problem::ProblemBody),
        (status = 409, body = crate::problem::ProblemBody)))]
pub async fn create_webhook(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    ApiJson(form): ApiJson<NewWebhook>,
) -> ApiResult<(StatusCode, Json<WebhookView>)> {
    let slug = valid_slug(&form.slug)?;
    let name = match &form.name {
        Some(name) => valid_name(name)?,
        None => slug.clone(),
    };
    let disable_after_s =
        valid_disable_after(form.disable_after_s.unwrap_or(DISABLE_AFTER_S_DEFAULT))?;
    // Who may create one is checked before the URL is resolved: others learn nothing.
    app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageOutputs)?;
        require_enabled_in(s, ws)
    })?;
    let url = valid_url(&app, &form.url).await?;
    let now = Utc::now();
    let mut webhook = Webhook {
        id: Uuid::now_v7(),
        workspace_id: Uuid::nil(),
        slug,
        name,
        output: form.output,
        url,
        enabled: form.enabled.unwrap_or(true),
        batch_events_max: form.batch_events_max.unwrap_or_else(default_batch_events),
        batch_bytes_max: form.batch_bytes_max.unwrap_or_else(default_batch_bytes),
        batch_interval_ms: form
            .batch_interval_ms
            .unwrap_or_else(default_batch_interval),
        disable_after_s,
        secret_sealed: String::new(),
        secret_for_nodes: None,
        disabled: None,
        created_at: now,
    };
    let secret = new_secret(&app, &mut webhook)?;
    let worker = app.clone();
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageOutputs)?;
        require_enabled_in(s, ws)?;
        ApiError::at_most(
            s.webhooks_of(ws.id).count(),
            WEBHOOKS_MAX,
            "webhooks per workspace",
        )?;
        if s.webhooks_of(ws.id).any(|w| w.slug == webhook.slug) {
            return Err(ApiError::new(
                ProblemType::WebhookExists,
                format!(
                    "workspace {:?} already has a webhook {:?}",
                    ws.slug, webhook.slug
                ),
            ));
        }
        webhook.workspace_id = ws.id;
        if !webhook.enabled {
            webhook.disabled = Some(WebhookDisabled {
                at: now,
                reason: format!("created disabled by {}", caller.user.email),
            });
        }
        valid_webhook(&worker, s, ws, &webhook)?;
        let mut view = WebhookView::new(s, &webhook);
        view.secret = Some(secret);
        Ok((
            vec![
                // Every attempt counts: none can be older than the webhook but for a node's
                // clock.
                Change::PutWebhookHealth(WebhookHealth::new(&webhook, None)),
                Change::PutWebhook(webhook),
            ],
            (StatusCode::CREATED, Json(view)),
        ))
    })
    .await
}

/// One webhook (without its secret). Any member.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}/webhooks/{webhook}", tag = "webhooks",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("webhook" = String, Path, description = "Webhook slug")),
    responses((status = 200, body = WebhookView), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn get_webhook(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, webhook)): ApiPath<(String, String)>,
) -> ApiResult<Json<WebhookView>> {
    app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::View)?;
        find(s, ws, &webhook).map(|w| Json(WebhookView::new(s, w)))
    })
}

/// Change a webhook; `enabled: true` enables a disabled one again. Admin or Editor.
#[utoipa::path(patch, path = "/api/v1/workspaces/{workspace}/webhooks/{webhook}", tag = "webhooks",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("webhook" = String, Path, description = "Webhook slug")),
    request_body = WebhookUpdate,
    responses((status = 200, body = WebhookView), (status = 400, body = crate::problem::ProblemBody),
        (status = 403, body = crate::problem::ProblemBody), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn update_webhook(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, webhook)): ApiPath<(String, String)>,
    ApiJson(form): ApiJson<WebhookUpdate>,
) -> ApiResult<Json<WebhookView>> {
    let name = form.name.as_deref().map(valid_name).transpose()?;
    let disable_after_s = form.disable_after_s.map(valid_disable_after).transpose()?;
    app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageOutputs)?;
        require_enabled_in(s, ws)?;
        find(s, ws, &webhook).map(|_| ())
    })?;
    let url = match &form.url {
        Some(url) => Some(valid_url(&app, url).await?),
        None => None,
    };
    let worker = app.clone();
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageOutputs)?;
        require_enabled_in(s, ws)?;
        let stored = find(s, ws, &webhook)?;
        let mut updated = stored.clone();
        let mut changes = Vec::new();
        let now = Utc::now();
        if let Some(name) = name {
            updated.name = name;
        }
        if let Some(output) = form.output {
            updated.output = output;
        }
        if let Some(url) = url {
            updated.url = url;
        }
        if let Some(n) = form.batch_events_max {
            updated.batch_events_max = n;
        }
        if let Some(n) = form.batch_bytes_max {
            updated.batch_bytes_max = n;
        }
        if let Some(n) = form.batch_interval_ms {
            updated.batch_interval_ms = n;
        }
        if let Some(n) = disable_after_s {
            updated.disable_after_s = n;
        }
        match form.enabled {
            Some(true) if !stored.enabled => {
                updated.enabled = true;
                updated.disabled = None;
                // Failures so far are forgiven, and reports of attempts made before now (still
                // on their way) do not count.
                changes.push(Change::PutWebhookHealth(WebhookHealth::new(
                    &updated,
                    Some(now),
                )));
            }
            Some(false) if stored.enabled => {
                updated.enabled = false;
                updated.disabled = Some(WebhookDisabled {
                    at: now,
                    reason: format!("disabled by {}", caller.user.email),
                });
            }
            _ => {}
        }
        valid_webhook(&worker, s, ws, &updated)?;
        let view = WebhookView::new(s, &updated);
        let mut view = view;
        if changes
            .iter()
            .any(|c| matches!(c, Change::PutWebhookHealth(_)))
        {
            view.failing_since = None;
        }
        changes.push(Change::PutWebhook(updated));
        Ok((changes, Json(view)))
    })
    .await
}

/// Delete a webhook with its logs; nodes stop delivering it from the next configuration
/// version on. Admin or Editor.
#[utoipa::path(delete, path = "/api/v1/workspaces/{workspace}/webhooks/{webhook}", tag = "webhooks",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("webhook" = String, Path, description = "Webhook slug")),
    responses((status = 204), (status = 403, body = crate::problem::ProblemBody),
        (status = 404, body = crate::problem::ProblemBody)))]
pub async fn delete_webhook(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, webhook)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageOutputs)?;
        require_enabled_in(s, ws)?;
        let found = find(s, ws, &webhook)?;
        Ok((s.webhook_deletion(found.id), StatusCode::NO_CONTENT))
    })
    .await
}

/// Replace a webhook's signing secret; the new one is in this answer only. Nodes sign with it
/// from the next configuration version on (the old one stops working then). Admin or Editor.
#[utoipa::path(post, path = "/api/v1/workspaces/{workspace}/webhooks/{webhook}/rotate-secret", tag = "webhooks",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("webhook" = String, Path, description = "Webhook slug")),
    responses((status = 200, body = WebhookView), (status = 403, body = crate::problem::ProblemBody),
        (status = 404, body = crate::problem::ProblemBody)))]
pub async fn rotate_webhook_secret(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, webhook)): ApiPath<(String, String)>,
) -> ApiResult<Json<WebhookView>> {
    let worker = app.clone();
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageOutputs)?;
        require_enabled_in(s, ws)?;
        let mut updated = find(s, ws, &webhook)?.clone();
        let secret = new_secret(&worker, &mut updated)?;
        let mut view = WebhookView::new(s, &updated);
        view.secret = Some(secret);
        Ok((vec![Change::PutWebhook(updated)], Json(view)))
    })
    .await
}

/// Send one signed test batch, `[{"test": true, "webhook": "<slug>", "sent_at": ...}]`, to the
/// webhook's URL from the control plane and report how it went (also in the delivery log).
/// Waits at most 10 s. Admin or Editor.
#[utoipa::path(post, path = "/api/v1/workspaces/{workspace}/webhooks/{webhook}/test", tag = "webhooks",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("webhook" = String, Path, description = "Webhook slug")),
    responses((status = 200, body = WebhookTestView), (status = 403, body = crate::problem::ProblemBody),
        (status = 404, body = crate::problem::ProblemBody), (status = 429, body = crate::problem::ProblemBody)))]
pub async fn test_webhook(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, webhook)): ApiPath<(String, String)>,
) -> ApiResult<Json<WebhookTestView>> {
    let (ws, found) = app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageOutputs)?;
        require_enabled_in(s, ws)?;
        let found = find(s, ws, &webhook)?.clone();
        Ok::<_, ApiError>((ws.clone(), found))
    })?;
    app.limits
        .webhook_tests_per_workspace
        .hit(&ws.id.to_string())
        .map_err(|wait| ApiError::rate_limited("webhook tests for this workspace", wait))?;
    let secret = app
        .secrets
        .open(&found.secret_sealed, &found.id.to_string())
        .map_err(|e| ApiError::internal(format!("the webhook's secret cannot be read: {e}")))?;
    let signer = Signer::new(&secret)
        .map_err(|e| ApiError::internal(format!("the webhook's secret cannot sign: {e}")))?;
    let sent = webhook_client::send_test(
        &found.url,
        &found.slug,
        &signer,
        app.config.smtp_allow_private_hosts,
    )
    .await;
    let record = WebhookAttemptRecord {
        id: webhook_health::attempt_id(sent.at),
        webhook_id: found.id,
        workspace_id: ws.id,
        node: webhook_client::TEST_NODE.to_owned(),
        at: sent.at,
        outcome: sent.outcome,
        status: sent.status,
        events: 1,
        first_event_id: None,
        last_event_id: None,
        duration_ms: sent.duration_ms,
        error: sent.error.clone(),
        webhook_message_id: sent.message_id.clone(),
        test: true,
    };
    app.write(move |s| Ok((webhook_health::log_changes(s, &[record]), ())))
        .await?;
    Ok(Json(WebhookTestView {
        status: sent.status,
        ok: sent.outcome == WebhookOutcome::Delivered,
        outcome: sent.outcome,
        duration_ms: sent.duration_ms,
        error: sent.error,
        webhook_message_id: sent.message_id,
    }))
}

/// The most recent delivery attempts of a webhook, every node's and the tests' (the newest 50
/// are kept), newest first, a page at a time. Any member.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}/webhooks/{webhook}/deliveries", tag = "webhooks",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("webhook" = String, Path, description = "Webhook slug"), PageQuery),
    responses((status = 200, body = Page<WebhookAttemptView>), (status = 400, body = crate::problem::ProblemBody),
        (status = 404, body = crate::problem::ProblemBody)))]
pub async fn list_webhook_deliveries(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, webhook)): ApiPath<(String, String)>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<WebhookAttemptView>>> {
    let items = app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::View)?;
        let found = find(s, ws, &webhook)?;
        // Ids are UUIDv7 of the attempts' times: in time order, as their text is.
        Ok::<_, ApiError>(
            s.webhook_deliveries_of(found.id)
                .rev()
                .take(ATTEMPTS_KEPT)
                .map(|a| (a.id.to_string(), WebhookAttemptView::from(a)))
                .collect::<Vec<_>>(),
        )
    })?;
    page.page_newest_first(&app, items).map(Json)
}

/// The most recent batches nodes gave up for a webhook (`failed`: the receiver answered a 4xx
/// other than 408 and 429, or a redirect; the newest 50 are kept), newest first, a page at a time. Any member.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}/webhooks/{webhook}/failures", tag = "webhooks",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("webhook" = String, Path, description = "Webhook slug"), PageQuery),
    responses((status = 200, body = Page<WebhookAttemptView>), (status = 400, body = crate::problem::ProblemBody),
        (status = 404, body = crate::problem::ProblemBody)))]
pub async fn list_webhook_failures(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, webhook)): ApiPath<(String, String)>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<WebhookAttemptView>>> {
    let items = app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::View)?;
        let found = find(s, ws, &webhook)?;
        Ok::<_, ApiError>(
            s.webhook_failures_of(found.id)
                .rev()
                .take(ATTEMPTS_KEPT)
                .map(|a| (a.id.to_string(), WebhookAttemptView::from(a)))
                .collect::<Vec<_>>(),
        )
    })?;
    page.page_newest_first(&app, items).map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_config::data_out::{
        WEBHOOK_BATCH_BYTES_MAX, WEBHOOK_BATCH_EVENTS_MAX, WEBHOOK_URL_LEN_MAX,
    };

    #[test]
    fn the_documented_bounds_are_the_config_crates() {
        assert_eq!(WEBHOOK_BATCH_EVENTS_MAX, 10_000);
        assert_eq!(WEBHOOK_BATCH_BYTES_MAX, 8_388_608);
        assert_eq!(WEBHOOK_URL_LEN_MAX, 2048);
        assert_eq!(DISABLE_AFTER_S_MAX, 2_592_000);
    }
}
