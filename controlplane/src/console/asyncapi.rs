//! The AsyncAPI import page: a document pasted in or chosen as a file, previewed (what it would
//! create, change and delete), then imported, through the API's own import (`PUT …/asyncapi`,
//! with `dry_run` for the preview). The page carries the configuration version it previewed
//! and imports with `If-Match` on it, so a change made in between (by anyone) refuses the
//! import with the API's `412` detail instead of being overwritten. A webhook the import
//! creates shows its signing secret here, once.

use super::csrf::hidden_field;
use super::frame::{self, Notice, Tab};
use super::upload::CheckedUpload;
use super::visitor::Visitor;
use super::workspace_url;
use super::workspaces::load;
use crate::api::asyncapi::{import_asyncapi, ImportAnswer, ImportQuery};
use crate::api::html::escape;
use crate::api::{ApiPath, ApiQuery};
use crate::app::App;
use crate::asyncapi::import::{PlannedEntity, DOCUMENT_BYTES_MAX};
use crate::roles::Action;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use axum::Json;

/// The import page.
pub async fn page(State(app): State<App>, visitor: Visitor, Path(key): Path<String>) -> Response {
    render(&app, &visitor, &key, "", None, None).await
}

/// The field that carries the configuration version a preview was made at.
const PREVIEWED_FIELD: &str = "previewed_version";

/// The planned entities of one kind of change, as a list.
fn entities(title: &str, planned: &[PlannedEntity]) -> String {
    if planned.is_empty() {
        return String::new();
    }
    let items: String = planned
        .iter()
        .map(|e| {
            let secret = e.secret.as_ref().map_or(String::new(), |s| {
                format!(
                    ": signing secret <code id=\"secret-{id}\">{s}</code> \
<button type=\"button\" data-copy=\"secret-{id}\">Copy</button> (shown once)",
                    id = e.id,
                    s = escape(s)
                )
            });
            format!(
                "<li>{} <strong>{}</strong>{secret}</li>",
                e.kind.replace('_', " "),
                escape(&e.name)
            )
        })
        .collect();
    format!("<h3>{title}</h3><ul>{items}</ul>")
}

async fn render(
    app: &App,
    visitor: &Visitor,
    key: &str,
    document: &str,
    answer: Option<ImportAnswer>,
    notice: Option<Notice>,
) -> Response {
    let ws = match load(app, visitor, key).await {
        Ok(ws) => ws,
        Err(page) => return page,
    };
    let mut main = String::new();
    if let Some(answer) = &answer {
        let plan = &answer.plan;
        let changes = format!(
            "{}{}{}",
            entities("Created", &plan.created),
            entities("Changed", &plan.updated),
            entities("Deleted", &plan.deleted)
        );
        let changes = if changes.is_empty() {
            "<p>No changes: the workspace already is as the document says.</p>".to_owned()
        } else {
            changes
        };
        let title = if answer.dry_run {
            "Preview: the import would make these changes"
        } else {
            "Imported"
        };
        main.push_str(&format!(
            "<section aria-labelledby=\"plan\"><h2 id=\"plan\">{title}</h2>{changes}</section>"
        ));
    }
    if Action::ManageSources.allows(ws.role) {
        main.push_str(&format!(
            "<section aria-labelledby=\"import\"><h2 id=\"import\">Import a document</h2>\
<p>An AsyncAPI 3.0 document as the export gives it (JSON or YAML). Entities are matched by \
id: those without one are created, those absent from the document are deleted. Preview first: \
Import then applies the document only if the workspace has not changed since the preview.</p>\
<form method=\"post\" action=\"{base}/asyncapi\" enctype=\"multipart/form-data\">{csrf}{previewed}\
<p><label>A file (at most {max_mib} MiB; it replaces the text below) \
<input type=\"file\" name=\"document_file\" accept=\".json,.yaml,.yml,application/json,application/yaml\"></label></p>\
<p><label for=\"document\">Or the document pasted</label></p>\
<p><textarea id=\"document\" name=\"document\" rows=\"16\" cols=\"90\">{document}</textarea></p>\
<p><button name=\"step\" value=\"preview\">Preview</button> \
<button name=\"step\" value=\"import\" class=\"danger\">Import</button></p></form></section>",
            base = escape(&workspace_url(&ws.slug)),
            csrf = hidden_field(&visitor.csrf),
            previewed = answer
                .as_ref()
                .filter(|a| a.dry_run)
                .map_or(String::new(), |a| format!(
                    "<input type=\"hidden\" name=\"{PREVIEWED_FIELD}\" value=\"{}\">",
                    a.config_version
                )),
            max_mib = DOCUMENT_BYTES_MAX >> 20,
            document = escape(document),
        ));
    } else {
        main.push_str("<p>Importing needs the Admin or Editor role.</p>");
    }
    let title = format!("{} · AsyncAPI import", ws.name);
    frame::page(
        app,
        visitor,
        Some((&ws, Tab::Overview)),
        &title,
        notice,
        &main,
    )
    .await
}

/// Previews or imports the document as `PUT /api/v1/workspaces/{workspace}/asyncapi` does.
pub async fn import(
    State(app): State<App>,
    Path(key): Path<String>,
    posted: CheckedUpload,
) -> Response {
    // A chosen file replaces the text area; after a preview the text area holds what was
    // previewed, so Import sends that.
    let from_file = posted.text("document_file");
    let document = if from_file.trim().is_empty() {
        posted.text("document")
    } else {
        from_file
    };
    let dry_run = posted.text("step") != "import";
    let previewed = posted.text(PREVIEWED_FIELD);
    let visitor = posted.visitor;
    let mut headers = HeaderMap::new();
    let if_match = previewed
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|version| HeaderValue::from_str(&format!("\"{version}\"")).ok());
    if let Some(version) = if_match.filter(|_| !dry_run) {
        headers.insert(header::IF_MATCH, version);
    }
    let yaml = !document.trim_start().starts_with('{');
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if yaml {
            "application/yaml"
        } else {
            "application/json"
        }),
    );
    let result = import_asyncapi(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath(key.clone()),
        ApiQuery(ImportQuery { dry_run }),
        headers,
        Body::from(document.clone()),
    )
    .await;
    match result {
        Ok(Json(answer)) => render(&app, &visitor, &key, &document, Some(answer), None).await,
        Err(refusal) => {
            render(
                &app,
                &visitor,
                &key,
                &document,
                None,
                Some(Notice::Refused(refusal)),
            )
            .await
        }
    }
}
