//! Export endpoints on the Data out tab and an endpoint's own page: the URLs at which
//! end-users read an output with a `read` token (`GET /v1/stream/{workspace}/{endpoint}` on a
//! node), shown whole with a Copy button, created, changed (name, output) and deleted through
//! the API's handlers (`…/export-endpoints`, `…/export-endpoints/{endpoint}`).

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;

use super::csrf::{hidden_field, CheckedForm, NoFields};
use super::data_out;
use super::frame::{self, Notice, Tab};
use super::outputs;
use super::paging::{every, Paging};
use super::visitor::Visitor;
use super::workspace_url;
use super::workspaces::load;
use crate::api::export_endpoints::{
    create_export_endpoint, delete_export_endpoint, get_export_endpoint, list_export_endpoints,
    update_export_endpoint, ExportEndpointUpdate, ExportEndpointView, NewExportEndpoint,
};
use crate::api::html::escape;
use crate::api::outputs::OutputView;
use crate::api::workspaces::WorkspaceView;
use crate::api::{ApiJson, ApiPath};
use crate::app::App;
use crate::roles::Action;

/// The query parameter of the endpoints list's cursor.
pub const PAGE_PARAM: &str = "endpoints_after";

/// The new-endpoint form.
#[derive(Debug, Default, Deserialize)]
pub struct EndpointForm {
    #[serde(default)]
    slug: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    output: String,
}

/// `<option>`s of the workspace's outputs, `chosen` selected.
pub fn output_options(outputs: &[OutputView], chosen: &str) -> String {
    outputs
        .iter()
        .map(|o| {
            format!(
                "<option value=\"{slug}\"{selected}>{slug}</option>",
                slug = escape(&o.slug),
                selected = if o.slug == chosen { " selected" } else { "" }
            )
        })
        .collect()
}

/// Every endpoint of `ws` (for the read-token form's boxes), or none if the API refuses.
pub async fn all_of(app: &App, visitor: &Visitor, ws: &WorkspaceView) -> Vec<ExportEndpointView> {
    every(app, |q| {
        list_export_endpoints(
            State(app.clone()),
            visitor.caller.clone(),
            ApiPath(ws.slug.clone()),
            q,
        )
    })
    .await
    .unwrap_or_default()
}

/// The export endpoints of `ws`, with their whole URLs, and the form for a new one.
pub async fn section(
    app: &App,
    visitor: &Visitor,
    ws: &WorkspaceView,
    paging: &Paging,
    outputs: &[OutputView],
    typed: Option<&EndpointForm>,
) -> String {
    let page = list_export_endpoints(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath(ws.slug.clone()),
        paging.query(app),
    )
    .await;
    let (endpoints, next) = match page {
        Ok(Json(p)) => (p.items, p.next_cursor),
        Err(_) => (Vec::new(), None),
    };
    let manage = Action::ManageOutputs.allows(ws.role);
    let base = escape(&workspace_url(&ws.slug));
    let csrf = hidden_field(&visitor.csrf);
    let node = app.config.device_urls().ingest;
    let mut rows = String::new();
    for e in &endpoints {
        let slug = escape(&e.slug);
        let delete = if manage {
            format!(
                "<td><form class=\"inline\" method=\"post\" action=\"{base}/export-endpoints/{slug}/delete\">{csrf}\
<button class=\"danger\" aria-label=\"Delete the export endpoint {slug}\">Delete</button></form></td>"
            )
        } else {
            String::new()
        };
        rows.push_str(&format!(
            "<tr><td><a href=\"{base}/export-endpoints/{slug}\"><code>{slug}</code></a></td><td>{name}</td><td><code>{output}</code></td>\
<td><code id=\"endpoint-url-{slug}\">{url}</code> \
<button type=\"button\" class=\"secondary\" data-copy=\"endpoint-url-{slug}\" aria-label=\"Copy the URL of {slug}\">Copy</button></td>{delete}</tr>",
            name = escape(&e.name),
            output = escape(&e.output),
            url = escape(&format!("{node}{}", e.url)),
        ));
    }
    let table = if endpoints.is_empty() {
        "<p class=\"muted\">No export endpoints yet.</p>".to_owned()
    } else {
        format!(
            "<table><thead><tr><th scope=\"col\">Slug</th><th scope=\"col\">Name</th>\
<th scope=\"col\">Output</th><th scope=\"col\">URL for end-users</th>{delete_head}</tr></thead>\
<tbody>{rows}</tbody></table>{pages}",
            delete_head = if manage {
                "<th scope=\"col\">Delete</th>"
            } else {
                ""
            },
            pages = paging.links(
                &format!("{}/data-out", workspace_url(&ws.slug)),
                "endpoints",
                next.as_deref()
            ),
        )
    };
    let form = if !manage {
        String::new()
    } else if outputs.is_empty() {
        "<p class=\"muted\">An endpoint serves an output: create one above first.</p>".to_owned()
    } else {
        let empty = EndpointForm::default();
        let typed = typed.unwrap_or(&empty);
        format!(
            "<h3>New export endpoint</h3><form method=\"post\" action=\"{base}/export-endpoints\">{csrf}\
<label>Slug <input name=\"slug\" value=\"{slug}\" required pattern=\"[a-z0-9][a-z0-9\\-]{{0,62}}\"></label>\
<label>Name (optional) <input name=\"name\" value=\"{name}\" maxlength=\"100\"></label>\
<label>Output <select name=\"output\">{options}</select></label>\
<button>Create endpoint</button></form>",
            slug = escape(&typed.slug),
            name = escape(&typed.name),
            options = output_options(outputs, &typed.output),
        )
    };
    format!(
        "<section aria-labelledby=\"endpoints\"><h2 id=\"endpoints\">Export endpoints</h2>\
<p class=\"muted\">End-users read an endpoint with a <code>read</code> token (made on the Access \
tab): <code>GET</code> with <code>Accept: text/event-stream</code> for a live stream, or NDJSON \
pages.</p>{table}{form}</section>"
    )
}

/// Creates an endpoint as `POST …/export-endpoints` does.
pub async fn create(
    State(app): State<App>,
    Path(key): Path<String>,
    posted: CheckedForm<EndpointForm>,
) -> Response {
    let CheckedForm { visitor, form } = posted;
    let made = create_export_endpoint(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath(key.clone()),
        ApiJson(NewExportEndpoint {
            slug: form.slug.trim().to_owned(),
            name: Some(form.name.trim().to_owned()).filter(|n| !n.is_empty()),
            output: form.output.clone(),
        }),
    )
    .await;
    match made {
        Ok(_) => frame::see_other(&format!("{}/data-out?done=endpoint", workspace_url(&key))),
        Err(refusal) => {
            let typed = data_out::Typed {
                endpoint: Some(form),
                ..Default::default()
            };
            data_out::render(&app, &visitor, &key, Some(Notice::Refused(refusal)), typed).await
        }
    }
}

/// Deletes an endpoint as `DELETE …/export-endpoints/{endpoint}` does.
pub async fn delete(
    State(app): State<App>,
    Path((key, slug)): Path<(String, String)>,
    posted: CheckedForm<NoFields>,
) -> Response {
    let visitor = posted.visitor;
    match delete_export_endpoint(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath((key.clone(), slug)),
    )
    .await
    {
        Ok(_) => frame::see_other(&format!(
            "{}/data-out?done=endpoint-deleted",
            workspace_url(&key)
        )),
        Err(refusal) => {
            data_out::render(
                &app,
                &visitor,
                &key,
                Some(Notice::Refused(refusal)),
                data_out::Typed::default(),
            )
            .await
        }
    }
}

/// An endpoint's page: its URL with Copy, and for Admins and Editors its name and output.
pub async fn page(
    State(app): State<App>,
    visitor: Visitor,
    Path((key, slug)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    render(
        &app,
        &visitor,
        &key,
        &slug,
        Notice::from_query(query.as_deref()),
    )
    .await
}

async fn render(
    app: &App,
    visitor: &Visitor,
    key: &str,
    slug: &str,
    notice: Option<Notice>,
) -> Response {
    let ws = match load(app, visitor, key).await {
        Ok(ws) => ws,
        Err(page) => return page,
    };
    let endpoint = match get_export_endpoint(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath((ws.slug.clone(), slug.to_owned())),
    )
    .await
    {
        Ok(Json(e)) => e,
        Err(e) => return frame::message_page(e.status(), "No such export endpoint", &e.detail),
    };
    let base = escape(&workspace_url(&ws.slug));
    let url = format!("{}{}", app.config.device_urls().ingest, endpoint.url);
    let mut main = format!(
        "<section aria-labelledby=\"what\"><h2 id=\"what\">Where end-users read</h2>\
<p class=\"secret\"><code id=\"endpoint-url\">{url}</code>\
<button type=\"button\" data-copy=\"endpoint-url\">Copy</button></p>\
<dl><dt>Output</dt><dd><a href=\"{base}/outputs/{output}\"><code>{output}</code></a></dd>\
<dt>Created</dt><dd>{created}</dd></dl></section>",
        url = escape(&url),
        output = escape(&endpoint.output),
        created = endpoint.created_at.format("%Y-%m-%d %H:%M UTC"),
    );
    if Action::ManageOutputs.allows(ws.role) {
        let outputs = outputs::all_of(app, visitor, &ws).await;
        let csrf = hidden_field(&visitor.csrf);
        main.push_str(&format!(
            "<section aria-labelledby=\"change\"><h2 id=\"change\">Change</h2>\
<form method=\"post\" action=\"{base}/export-endpoints/{slug}\">{csrf}\
<label>Name <input name=\"name\" value=\"{name}\" required maxlength=\"100\"></label>\
<label>Output <select name=\"output\">{options}</select></label>\
<button>Save endpoint</button></form>\
<form method=\"post\" action=\"{base}/export-endpoints/{slug}/delete\">{csrf}\
<button class=\"danger\">Delete endpoint</button></form></section>",
            slug = escape(&endpoint.slug),
            name = escape(&endpoint.name),
            options = output_options(&outputs, &endpoint.output),
        ));
    }
    let title = format!("{} · export endpoint {}", ws.name, endpoint.slug);
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

/// The change form of an endpoint.
#[derive(Debug, Deserialize)]
pub struct ChangeForm {
    name: String,
    output: String,
}

/// Changes an endpoint as `PATCH …/export-endpoints/{endpoint}` does.
pub async fn save(
    State(app): State<App>,
    Path((key, slug)): Path<(String, String)>,
    posted: CheckedForm<ChangeForm>,
) -> Response {
    let CheckedForm { visitor, form } = posted;
    match update_export_endpoint(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath((key.clone(), slug.clone())),
        ApiJson(ExportEndpointUpdate {
            name: Some(form.name),
            output: Some(form.output),
        }),
    )
    .await
    {
        Ok(_) => frame::see_other(&format!(
            "{}/export-endpoints/{}?done=endpoint-saved",
            workspace_url(&key),
            super::url_segment(&slug)
        )),
        Err(refusal) => render(&app, &visitor, &key, &slug, Some(Notice::Refused(refusal))).await,
    }
}
