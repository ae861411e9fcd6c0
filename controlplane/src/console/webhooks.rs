//! Webhooks on the Data out tab and a webhook's own page: the list with each one's state, the
//! form for a new one (whose signing secret the answer shows once, with Copy), and the page
//! with its health and delivery log, Enable/Disable, Send test, Rotate secret, Delete and the
//! form that changes it (name, output, URL, batch and disabling bounds), through the API's
//! webhook handlers (`…/webhooks`, `…/webhooks/{webhook}`).

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;

use super::csrf::{hidden_field, CheckedForm, NoFields};
use super::data_out::{self, NewSecret};
use super::endpoints::output_options;
use super::frame::{self, Notice, Tab};
use super::outputs;
use super::paging::Paging;
use super::visitor::Visitor;
use super::workspace_url;
use super::workspaces::load;
use crate::api::html::escape;
use crate::api::outputs::OutputView;
use crate::api::webhooks::{
    create_webhook, delete_webhook, get_webhook, list_webhook_deliveries, list_webhooks,
    rotate_webhook_secret, test_webhook, update_webhook, NewWebhook, WebhookStatus, WebhookUpdate,
    WebhookView,
};
use crate::api::workspaces::WorkspaceView;
use crate::api::{ApiJson, ApiPath};
use crate::app::App;
use crate::problem::{ApiError, ProblemType};
use crate::roles::Action;

/// The query parameter of the webhooks list's cursor.
pub const PAGE_PARAM: &str = "webhooks_after";
/// The query parameter of the delivery log's cursor.
const DELIVERIES_PARAM: &str = "deliveries_after";

const TIME: &str = "%Y-%m-%d %H:%M:%S UTC";

/// The new-webhook form.
#[derive(Debug, Default, Deserialize)]
pub struct WebhookForm {
    #[serde(default)]
    slug: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    output: String,
    #[serde(default)]
    url: String,
}

/// A webhook's state in words: active, failing since, or disabled and why.
fn state(w: &WebhookView) -> String {
    match (w.status, w.failing_since) {
        (WebhookStatus::Active, None) => "active".to_owned(),
        (WebhookStatus::Active, Some(since)) => format!(
            "active, failing since {} (disabled after {} s of failures)",
            since.format(TIME),
            w.disable_after_s
        ),
        (WebhookStatus::Disabled, _) => format!(
            "disabled{}{}",
            w.disabled_at
                .map_or(String::new(), |at| format!(" since {}", at.format(TIME))),
            w.disabled_reason
                .as_deref()
                .map_or(String::new(), |why| format!(": {}", escape(why)))
        ),
    }
}

/// The webhooks of `ws` and the form for a new one.
pub async fn section(
    app: &App,
    visitor: &Visitor,
    ws: &WorkspaceView,
    paging: &Paging,
    outputs: &[OutputView],
    typed: Option<&WebhookForm>,
) -> String {
    let page = list_webhooks(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath(ws.slug.clone()),
        paging.query(app),
    )
    .await;
    let (webhooks, next) = match page {
        Ok(Json(p)) => (p.items, p.next_cursor),
        Err(_) => (Vec::new(), None),
    };
    let base = escape(&workspace_url(&ws.slug));
    let mut rows = String::new();
    for w in &webhooks {
        rows.push_str(&format!(
            "<tr><td><a href=\"{base}/webhooks/{slug}\"><code>{slug}</code></a></td><td>{name}</td>\
<td><code>{output}</code></td><td><code>{url}</code></td><td>{state}</td></tr>",
            slug = escape(&w.slug),
            name = escape(&w.name),
            output = escape(&w.output),
            url = escape(&w.url),
            state = state(w),
        ));
    }
    let table = if webhooks.is_empty() {
        "<p class=\"muted\">No webhooks yet.</p>".to_owned()
    } else {
        format!(
            "<table><thead><tr><th scope=\"col\">Slug</th><th scope=\"col\">Name</th>\
<th scope=\"col\">Output</th><th scope=\"col\">URL</th><th scope=\"col\">State</th></tr></thead>\
<tbody>{rows}</tbody></table>{pages}",
            pages = paging.links(
                &format!("{}/data-out", workspace_url(&ws.slug)),
                "webhooks",
                next.as_deref()
            ),
        )
    };
    let form = if !Action::ManageOutputs.allows(ws.role) {
        String::new()
    } else if outputs.is_empty() {
        "<p class=\"muted\">A webhook delivers an output: create one above first.</p>".to_owned()
    } else {
        let empty = WebhookForm::default();
        let typed = typed.unwrap_or(&empty);
        format!(
            "<h3>New webhook</h3><form method=\"post\" action=\"{base}/webhooks\">{csrf}\
<p><label>Slug <input name=\"slug\" value=\"{slug}\" required pattern=\"[a-z0-9][a-z0-9\\-]{{0,62}}\"></label>\
<label>Name (optional) <input name=\"name\" value=\"{name}\" maxlength=\"100\"></label>\
<label>Output <select name=\"output\">{options}</select></label></p>\
<p><label>URL <input name=\"url\" value=\"{url}\" type=\"url\" required maxlength=\"2048\" size=\"50\" placeholder=\"https://example.com/hooks/sluice\"></label></p>\
<p><button>Create webhook</button></p></form>",
            csrf = hidden_field(&visitor.csrf),
            slug = escape(&typed.slug),
            name = escape(&typed.name),
            options = output_options(outputs, &typed.output),
            url = escape(&typed.url),
        )
    };
    format!(
        "<section aria-labelledby=\"webhooks\"><h2 id=\"webhooks\">Webhooks</h2>\
<p class=\"muted\">A webhook delivers an output to a URL in signed batches (Standard Webhooks); \
receivers check the signature with the secret shown once at creation.</p>{table}{form}</section>"
    )
}

/// Creates a webhook as `POST …/webhooks` does; the answer (no redirect: the secret must not
/// travel in a URL) shows its signing secret once.
pub async fn create(
    State(app): State<App>,
    Path(key): Path<String>,
    posted: CheckedForm<WebhookForm>,
) -> Response {
    let CheckedForm { visitor, form } = posted;
    let made = create_webhook(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath(key.clone()),
        ApiJson(NewWebhook {
            slug: form.slug.trim().to_owned(),
            name: Some(form.name.trim().to_owned()).filter(|n| !n.is_empty()),
            output: form.output.clone(),
            url: form.url.clone(),
            enabled: None,
            batch_events_max: None,
            batch_bytes_max: None,
            batch_interval_ms: None,
            disable_after_s: None,
        }),
    )
    .await;
    match made {
        Ok((_, Json(made))) => {
            let typed = data_out::Typed {
                new_secret: made.secret.map(|secret| NewSecret {
                    name: made.slug,
                    secret,
                }),
                ..Default::default()
            };
            data_out::render(
                &app,
                &visitor,
                &key,
                Some(Notice::Done("The webhook is created.")),
                typed,
            )
            .await
        }
        Err(refusal) => {
            let typed = data_out::Typed {
                webhook: Some(form),
                ..Default::default()
            };
            data_out::render(&app, &visitor, &key, Some(Notice::Refused(refusal)), typed).await
        }
    }
}

/// A webhook's page.
pub async fn page(
    State(app): State<App>,
    visitor: Visitor,
    Path((key, slug)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let paging = Paging::from_query(query.as_deref(), DELIVERIES_PARAM);
    render(
        &app,
        &visitor,
        &key,
        &slug,
        Notice::from_query(query.as_deref()),
        &paging,
        Extra::Nothing,
    )
    .await
}

/// What a webhook's page shows besides the webhook: a secret just made, or a refused change
/// as it was typed.
enum Extra<'a> {
    Nothing,
    Secret(String),
    Typed(&'a ChangeForm),
}

async fn render(
    app: &App,
    visitor: &Visitor,
    key: &str,
    slug: &str,
    notice: Option<Notice>,
    paging: &Paging,
    extra: Extra<'_>,
) -> Response {
    let (new_secret, typed) = match extra {
        Extra::Nothing => (None, None),
        Extra::Secret(secret) => (Some(secret), None),
        Extra::Typed(form) => (None, Some(form)),
    };
    let ws = match load(app, visitor, key).await {
        Ok(ws) => ws,
        Err(page) => return page,
    };
    let path = || ApiPath((ws.slug.clone(), slug.to_owned()));
    let webhook = match get_webhook(State(app.clone()), visitor.caller.clone(), path()).await {
        Ok(Json(w)) => w,
        Err(e) => return frame::message_page(e.status(), "No such webhook", &e.detail),
    };
    let base = escape(&workspace_url(&ws.slug));
    let here = format!("{}/webhooks/{}", workspace_url(&ws.slug), webhook.slug);
    let mut main = String::new();
    if let Some(secret) = new_secret {
        main.push_str(&secret_section(&webhook.slug, &secret));
    }
    main.push_str(&format!(
        "<section aria-labelledby=\"what\"><h2 id=\"what\">Delivery</h2><dl>\
<dt>State</dt><dd id=\"webhook-state\">{state}</dd><dt>Output</dt><dd><code>{output}</code></dd>\
<dt>URL</dt><dd><code>{url}</code></dd>\
<dt>Batches</dt><dd>at most {events} events or {bytes} bytes, sent at least every {interval} ms</dd>\
<dt>Disabled after failing for</dt><dd>{after} s</dd><dt>Created</dt><dd>{created}</dd></dl>",
        state = state(&webhook),
        output = escape(&webhook.output),
        url = escape(&webhook.url),
        events = webhook.batch_events_max,
        bytes = webhook.batch_bytes_max,
        interval = webhook.batch_interval_ms,
        after = webhook.disable_after_s,
        created = webhook.created_at.format(TIME),
    ));
    if Action::ManageOutputs.allows(ws.role) {
        let csrf = hidden_field(&visitor.csrf);
        let slug = escape(&webhook.slug);
        let toggle = if webhook.enabled {
            format!(
                "<form class=\"inline\" method=\"post\" action=\"{base}/webhooks/{slug}/enabled\">{csrf}\
<input type=\"hidden\" name=\"enabled\" value=\"false\"><button class=\"secondary\">Disable</button></form>"
            )
        } else {
            format!(
                "<form class=\"inline\" method=\"post\" action=\"{base}/webhooks/{slug}/enabled\">{csrf}\
<input type=\"hidden\" name=\"enabled\" value=\"true\"><button>Enable</button></form>"
            )
        };
        main.push_str(&format!(
            "<div class=\"actions\">{toggle} \
<form class=\"inline\" method=\"post\" action=\"{base}/webhooks/{slug}/test\">{csrf}<button class=\"secondary\">Send test</button></form> \
<form class=\"inline\" method=\"post\" action=\"{base}/webhooks/{slug}/rotate-secret\">{csrf}<button class=\"secondary\">Rotate secret</button></form> \
<form class=\"inline\" method=\"post\" action=\"{base}/webhooks/{slug}/delete\">{csrf}<button class=\"danger\">Delete webhook</button></form></div>"
        ));
    }
    main.push_str("</section>");
    if Action::ManageOutputs.allows(ws.role) {
        main.push_str(&change_section(app, visitor, &ws, &webhook, typed).await);
    }

    let deliveries = list_webhook_deliveries(
        State(app.clone()),
        visitor.caller.clone(),
        path(),
        paging.query(app),
    )
    .await;
    let (attempts, next) = match deliveries {
        Ok(Json(p)) => (p.items, p.next_cursor),
        Err(_) => (Vec::new(), None),
    };
    let rows: String = attempts
        .iter()
        .map(|a| {
            format!(
                "<tr><td>{at}</td><td>{node}{test}</td><td>{outcome}</td><td>{status}</td>\
<td>{events}</td><td>{ms} ms</td><td>{error}</td></tr>",
                at = a.at.format(TIME),
                node = escape(&a.node),
                test = if a.test { " (test)" } else { "" },
                outcome = escape(
                    &serde_json::to_value(a.outcome)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                ),
                status = a.status.map_or("no answer".to_owned(), |s| s.to_string()),
                events = a.events,
                ms = a.duration_ms,
                error = escape(a.error.as_deref().unwrap_or_default()),
            )
        })
        .collect();
    let log = if attempts.is_empty() {
        "<p class=\"muted\">No delivery attempts yet.</p>".to_owned()
    } else {
        format!(
            "<table><thead><tr><th scope=\"col\">When</th><th scope=\"col\">From</th>\
<th scope=\"col\">Outcome</th><th scope=\"col\">Status</th><th scope=\"col\">Events</th>\
<th scope=\"col\">Took</th><th scope=\"col\">Error</th></tr></thead><tbody>{rows}</tbody></table>{pages}",
            pages = paging.links(&here, "deliveries", next.as_deref()),
        )
    };
    main.push_str(&format!(
        "<section aria-labelledby=\"deliveries\"><h2 id=\"deliveries\">Delivery attempts</h2>\
<p class=\"muted\">Newest first, from every node; <a href=\"{here}\">Refresh</a></p>{log}</section>",
        here = escape(&here),
    ));
    let title = format!("{} · webhook {}", ws.name, webhook.slug);
    frame::page(
        app,
        visitor,
        Some((&ws, Tab::DataOut)),
        &title,
        notice,
        &main,
    )
    .await
}

/// The form that changes a webhook: name, output, URL and its batch and disabling bounds.
async fn change_section(
    app: &App,
    visitor: &Visitor,
    ws: &WorkspaceView,
    webhook: &WebhookView,
    typed: Option<&ChangeForm>,
) -> String {
    let outputs = outputs::all_of(app, visitor, ws).await;
    let stored = ChangeForm {
        name: webhook.name.clone(),
        output: webhook.output.clone(),
        url: webhook.url.clone(),
        batch_events_max: webhook.batch_events_max.to_string(),
        batch_bytes_max: webhook.batch_bytes_max.to_string(),
        batch_interval_ms: webhook.batch_interval_ms.to_string(),
        disable_after_s: webhook.disable_after_s.to_string(),
    };
    // After a refusal, what was typed.
    let shown = typed.unwrap_or(&stored);
    format!(
        "<section aria-labelledby=\"change\"><h2 id=\"change\">Change</h2>\
<form method=\"post\" action=\"{base}/webhooks/{slug}\">{csrf}\
<p><label>Name <input name=\"name\" value=\"{name}\" required maxlength=\"100\"></label>\
<label>Output <select name=\"output\">{options}</select></label></p>\
<p><label>URL <input name=\"url\" value=\"{url}\" type=\"url\" required maxlength=\"2048\" size=\"50\"></label></p>\
<p><label>Events per batch at most <input name=\"batch_events_max\" type=\"number\" min=\"1\" max=\"10000\" value=\"{events}\"></label>\
<label>Bytes per batch at most <input name=\"batch_bytes_max\" type=\"number\" min=\"1024\" max=\"8388608\" value=\"{bytes}\"></label></p>\
<p><label>Send at least every (ms) <input name=\"batch_interval_ms\" type=\"number\" min=\"10\" max=\"3600000\" value=\"{interval}\"></label>\
<label>Disable after failing for (s) <input name=\"disable_after_s\" type=\"number\" min=\"60\" max=\"2592000\" value=\"{after}\"></label></p>\
<p><button>Save webhook</button></p></form></section>",
        base = escape(&workspace_url(&ws.slug)),
        slug = escape(&webhook.slug),
        csrf = hidden_field(&visitor.csrf),
        name = escape(&shown.name),
        options = output_options(&outputs, &shown.output),
        url = escape(&shown.url),
        events = escape(&shown.batch_events_max),
        bytes = escape(&shown.batch_bytes_max),
        interval = escape(&shown.batch_interval_ms),
        after = escape(&shown.disable_after_s),
    )
}

/// The change form of a webhook; numbers as typed.
#[derive(Debug, Deserialize)]
pub struct ChangeForm {
    name: String,
    output: String,
    url: String,
    batch_events_max: String,
    batch_bytes_max: String,
    batch_interval_ms: String,
    disable_after_s: String,
}

/// `text` as a number, or the API's kind of refusal naming `field`.
fn number<T: std::str::FromStr>(field: &str, text: &str) -> Result<T, ApiError> {
    text.trim().parse().map_err(|_| {
        ApiError::new(
            ProblemType::InvalidWebhook,
            format!("{field} is a whole number, not {text:?}"),
        )
    })
}

impl ChangeForm {
    /// The API's change: every field given.
    fn update(&self) -> Result<WebhookUpdate, ApiError> {
        Ok(WebhookUpdate {
            name: Some(self.name.clone()),
            output: Some(self.output.clone()),
            url: Some(self.url.clone()),
            enabled: None,
            batch_events_max: Some(number("batch_events_max", &self.batch_events_max)?),
            batch_bytes_max: Some(number("batch_bytes_max", &self.batch_bytes_max)?),
            batch_interval_ms: Some(number("batch_interval_ms", &self.batch_interval_ms)?),
            disable_after_s: Some(number("disable_after_s", &self.disable_after_s)?),
        })
    }
}

/// Changes a webhook as `PATCH …/webhooks/{webhook}` does (its URL checked again).
pub async fn save(
    State(app): State<App>,
    Path((key, slug)): Path<(String, String)>,
    posted: CheckedForm<ChangeForm>,
) -> Response {
    let CheckedForm { visitor, form } = posted;
    let saved = match form.update() {
        Ok(update) => update_webhook(
            State(app.clone()),
            visitor.caller.clone(),
            ApiPath((key.clone(), slug.clone())),
            ApiJson(update),
        )
        .await
        .map(|_| ()),
        Err(refusal) => Err(refusal),
    };
    match saved {
        Ok(()) => frame::see_other(&format!(
            "{}/webhooks/{}?done=webhook-saved",
            workspace_url(&key),
            super::url_segment(&slug)
        )),
        Err(refusal) => {
            render(
                &app,
                &visitor,
                &key,
                &slug,
                Some(Notice::Refused(refusal)),
                &Paging::first(DELIVERIES_PARAM),
                Extra::Typed(&form),
            )
            .await
        }
    }
}

/// The signing secret just made, shown this once with a Copy button.
pub fn secret_section(slug: &str, secret: &str) -> String {
    format!(
        "<section aria-labelledby=\"secret-title\"><h2 id=\"secret-title\">Signing secret of webhook {slug}</h2>\
<p>Copy it into the receiver now: it is shown this once and never again.</p>\
<p class=\"secret\"><code id=\"new-webhook-secret\">{secret}</code>\
<button type=\"button\" data-copy=\"new-webhook-secret\">Copy</button></p></section>",
        slug = escape(slug),
        secret = escape(secret),
    )
}

/// The Enable/Disable form.
#[derive(Debug, Deserialize)]
pub struct EnabledForm {
    enabled: bool,
}

/// Enables or disables as `PATCH …/webhooks/{webhook}` with `enabled` does.
pub async fn set_enabled(
    State(app): State<App>,
    Path((key, slug)): Path<(String, String)>,
    posted: CheckedForm<EnabledForm>,
) -> Response {
    let CheckedForm { visitor, form } = posted;
    let update = WebhookUpdate {
        name: None,
        output: None,
        url: None,
        enabled: Some(form.enabled),
        batch_events_max: None,
        batch_bytes_max: None,
        batch_interval_ms: None,
        disable_after_s: None,
    };
    let done = if form.enabled {
        "webhook-enabled"
    } else {
        "webhook-disabled"
    };
    match update_webhook(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath((key.clone(), slug.clone())),
        ApiJson(update),
    )
    .await
    {
        Ok(_) => frame::see_other(&format!(
            "{}/webhooks/{}?done={done}",
            workspace_url(&key),
            super::url_segment(&slug)
        )),
        Err(refusal) => refused(&app, &visitor, &key, &slug, refusal).await,
    }
}

async fn refused(
    app: &App,
    visitor: &Visitor,
    key: &str,
    slug: &str,
    refusal: ApiError,
) -> Response {
    render(
        app,
        visitor,
        key,
        slug,
        Some(Notice::Refused(refusal)),
        &Paging::first(DELIVERIES_PARAM),
        Extra::Nothing,
    )
    .await
}

/// Sends a test delivery as `POST …/webhooks/{webhook}/test` does; its outcome is on the page.
pub async fn test(
    State(app): State<App>,
    Path((key, slug)): Path<(String, String)>,
    posted: CheckedForm<NoFields>,
) -> Response {
    let visitor = posted.visitor;
    match test_webhook(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath((key.clone(), slug.clone())),
    )
    .await
    {
        Ok(Json(sent)) => {
            let notice = if sent.ok {
                Notice::Text(format!(
                    "The test was delivered: the receiver answered {} in {} ms.",
                    sent.status.unwrap_or_default(),
                    sent.duration_ms
                ))
            } else {
                Notice::Failed(format!(
                    "the test was not delivered: {}",
                    sent.error.unwrap_or_else(|| "no answer".to_owned())
                ))
            };
            render(
                &app,
                &visitor,
                &key,
                &slug,
                Some(notice),
                &Paging::first(DELIVERIES_PARAM),
                Extra::Nothing,
            )
            .await
        }
        Err(refusal) => refused(&app, &visitor, &key, &slug, refusal).await,
    }
}

/// Makes a new signing secret as `POST …/webhooks/{webhook}/rotate-secret` does and shows it
/// on this answer only.
pub async fn rotate_secret(
    State(app): State<App>,
    Path((key, slug)): Path<(String, String)>,
    posted: CheckedForm<NoFields>,
) -> Response {
    let visitor = posted.visitor;
    match rotate_webhook_secret(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath((key.clone(), slug.clone())),
    )
    .await
    {
        Ok(Json(rotated)) => {
            render(
                &app,
                &visitor,
                &key,
                &slug,
                Some(Notice::Done(
                    "The signing secret is replaced: nodes sign with the new one from the next configuration.",
                )),
                &Paging::first(DELIVERIES_PARAM),
                rotated.secret.map_or(Extra::Nothing, Extra::Secret),
            )
            .await
        }
        Err(refusal) => refused(&app, &visitor, &key, &slug, refusal).await,
    }
}

/// Deletes as `DELETE …/webhooks/{webhook}` does.
pub async fn delete(
    State(app): State<App>,
    Path((key, slug)): Path<(String, String)>,
    posted: CheckedForm<NoFields>,
) -> Response {
    let visitor = posted.visitor;
    match delete_webhook(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath((key.clone(), slug.clone())),
    )
    .await
    {
        Ok(_) => frame::see_other(&format!(
            "{}/data-out?done=webhook-deleted",
            workspace_url(&key)
        )),
        Err(refusal) => refused(&app, &visitor, &key, &slug, refusal).await,
    }
}
