//! A source's page: what it takes (protocols, schema and the typed columns it gives, what
//! happens to refused events) and, for Admins and Editors, the form that changes it through
//! `PATCH /api/v1/workspaces/{workspace}/sources/{source}`.

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use sluice_config::shaping::OnInvalid;
use sluice_config::snapshot::Protocol;

use super::csrf::{hidden_field, CheckedForm};
use super::frame::{self, Notice, Tab};
use super::visitor::Visitor;
use super::workspace_url;
use super::workspaces::load;
use crate::api::html::escape;
use crate::api::sources::{get_source, update_source, SourceUpdate};
use crate::api::{ApiJson, ApiPath};
use crate::app::App;
use crate::problem::{ApiError, ProblemType};
use crate::roles::Action;

/// The source's page.
pub async fn page(
    State(app): State<App>,
    visitor: Visitor,
    Path((key, source)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    render(
        &app,
        &visitor,
        &key,
        &source,
        Notice::from_query(query.as_deref()),
        None,
    )
    .await
}

/// `typed_schema`: the schema text the visitor sent, shown again after a refusal.
async fn render(
    app: &App,
    visitor: &Visitor,
    key: &str,
    slug: &str,
    notice: Option<Notice>,
    typed_schema: Option<&str>,
) -> Response {
    let ws = match load(app, visitor, key).await {
        Ok(ws) => ws,
        Err(page) => return page,
    };
    let source = match get_source(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath((ws.slug.clone(), slug.to_owned())),
    )
    .await
    {
        Ok(Json(source)) => source,
        Err(e) => return frame::message_page(e.status(), "No such source", &e.detail),
    };
    let columns: String = source
        .columns
        .iter()
        .map(|c| {
            format!(
                "<li><code>{}</code> {}</li>",
                escape(&c.name),
                escape(
                    &serde_json::to_value(c.column_type)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                )
            )
        })
        .collect();
    let schema_text = match (typed_schema, &source.schema) {
        (Some(typed), _) => typed.to_owned(),
        (None, Some(schema)) => serde_json::to_string_pretty(schema).unwrap_or_default(),
        (None, None) => String::new(),
    };
    let mut main = format!(
        "<section aria-labelledby=\"what\"><h2 id=\"what\">What it takes</h2><dl>\
<dt>Ingest URL path</dt><dd><code>/v1/ingest/{ws_slug}/{slug}</code>; MQTT topic <code>ingest/{slug}/…</code></dd>\
<dt>Schema version</dt><dd>{version}</dd><dt>Typed columns</dt><dd>{columns}</dd></dl></section>",
        ws_slug = escape(&ws.slug),
        slug = escape(&source.slug),
        version = source
            .schema_version
            .as_deref()
            .map_or("no schema: any JSON object".to_owned(), escape),
        columns = if columns.is_empty() {
            "none (events are kept as JSON in <code>payload</code>)".to_owned()
        } else {
            format!("<ul>{columns}</ul>")
        },
    );
    if Action::ManageSources.allows(ws.role) {
        let checked = |on: bool| if on { " checked" } else { "" };
        let selected = |on: bool| if on { " selected" } else { "" };
        main.push_str(&format!(
            "<section aria-labelledby=\"change\"><h2 id=\"change\">Change</h2>\
<form method=\"post\" action=\"{base}/sources/{slug}\">{csrf}\
<p><label>Name <input name=\"name\" value=\"{name}\" required maxlength=\"100\"></label></p>\
<fieldset><legend>Protocols</legend>\
<label><input type=\"checkbox\" name=\"http\" value=\"on\"{http}> HTTP</label>\
<label><input type=\"checkbox\" name=\"mqtt\" value=\"on\"{mqtt}> MQTT</label></fieldset>\
<p><label for=\"schema\">JSON Schema (empty: any JSON object)</label></p>\
<p><textarea id=\"schema\" name=\"schema\" rows=\"10\" cols=\"80\">{schema}</textarea></p>\
<p><label>Events the schema refuses <select name=\"on_invalid\">\
<option value=\"reject\"{reject}>reject the request</option>\
<option value=\"quarantine\"{quarantine}>quarantine them</option></select></label></p>\
<p><label><input type=\"checkbox\" name=\"keep_payload\" value=\"on\"{keep}> Keep each event's JSON in \
<code>payload</code> beside the typed columns</label></p>\
<p><button>Save source</button></p></form></section>",
            base = escape(&workspace_url(&ws.slug)),
            slug = escape(&source.slug),
            csrf = hidden_field(&visitor.csrf),
            name = escape(&source.name),
            http = checked(source.protocols.contains(&Protocol::Http)),
            mqtt = checked(source.protocols.contains(&Protocol::Mqtt)),
            schema = escape(&schema_text),
            reject = selected(source.on_invalid == OnInvalid::Reject),
            quarantine = selected(source.on_invalid == OnInvalid::Quarantine),
            keep = checked(source.keep_payload),
        ));
    }
    let title = format!("{} · source {}", ws.name, source.slug);
    frame::page(
        app,
        visitor,
        Some((&ws, Tab::Access)),
        &title,
        notice,
        &main,
    )
    .await
}

/// The source form; unticked boxes are absent.
#[derive(Debug, Deserialize)]
pub struct SourceForm {
    name: String,
    http: Option<String>,
    mqtt: Option<String>,
    #[serde(default)]
    schema: String,
    on_invalid: OnInvalid,
    keep_payload: Option<String>,
}

impl SourceForm {
    /// The API's change: every field given, the schema parsed (empty: none).
    fn update(&self) -> Result<SourceUpdate, ApiError> {
        let schema = if self.schema.trim().is_empty() {
            None
        } else {
            Some(serde_json::from_str(&self.schema).map_err(|e| {
                ApiError::new(
                    ProblemType::InvalidBody,
                    format!("the schema is not JSON: {e}"),
                )
            })?)
        };
        let mut protocols = Vec::new();
        if self.http.is_some() {
            protocols.push(Protocol::Http);
        }
        if self.mqtt.is_some() {
            protocols.push(Protocol::Mqtt);
        }
        Ok(SourceUpdate {
            name: Some(self.name.clone()),
            protocols: Some(protocols),
            schema: Some(schema),
            on_invalid: Some(self.on_invalid),
            keep_payload: Some(self.keep_payload.is_some()),
        })
    }
}

/// Changes the source as `PATCH …/sources/{source}` does.
pub async fn save(
    State(app): State<App>,
    Path((key, slug)): Path<(String, String)>,
    posted: CheckedForm<SourceForm>,
) -> Response {
    let CheckedForm { visitor, form } = posted;
    let result = match form.update() {
        Ok(update) => update_source(
            State(app.clone()),
            visitor.caller.clone(),
            ApiPath((key.clone(), slug.clone())),
            ApiJson(update),
        )
        .await
        .map(|_| ()),
        Err(refusal) => Err(refusal),
    };
    match result {
        Ok(()) => frame::see_other(&format!(
            "{}/sources/{}?done=source-saved",
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
                Some(&form.schema),
            )
            .await
        }
    }
}
