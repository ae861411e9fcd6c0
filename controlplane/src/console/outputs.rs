//! Outputs on the Data out tab and an output's own page: the list, the form for a new one,
//! and the page that shows what it produces and changes or deletes it, through the API's
//! output handlers (`…/outputs`, `…/outputs/{output}`).
//!
//! The filter is typed as the API's JSON (`{"conditions": [...]}`), the projection one field
//! per line (`/temp_c as temperature`), which reads better than JSON for a short list.

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use sluice_config::data_out::{Field, Filter};

use super::csrf::{hidden_field, CheckedForm, NoFields};
use super::data_out;
use super::frame::{self, Notice, Tab};
use super::paging::{every, Paging};
use super::visitor::Visitor;
use super::workspace_url;
use super::workspaces::load;
use crate::api::html::escape;
use crate::api::outputs::{
    create_output, delete_output, get_output, list_outputs, update_output, NewOutput, OutputUpdate,
    OutputView,
};
use crate::api::sources::SourceView;
use crate::api::workspaces::WorkspaceView;
use crate::api::{ApiJson, ApiPath};
use crate::app::App;
use crate::problem::{ApiError, ProblemType};
use crate::roles::Action;

/// The query parameter of the outputs list's cursor.
pub const PAGE_PARAM: &str = "outputs_after";

/// The output form (new or changed; the slug only for a new one).
#[derive(Debug, Default, Deserialize)]
pub struct OutputForm {
    #[serde(default)]
    slug: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    source: String,
    /// The filter as JSON; empty: every event.
    #[serde(default)]
    filter: String,
    /// One field per line: `from` or `from as name`; empty: the default projection.
    #[serde(default)]
    fields: String,
}

impl OutputForm {
    fn filter(&self) -> Result<Filter, ApiError> {
        if self.filter.trim().is_empty() {
            return Ok(Filter::default());
        }
        serde_json::from_str(&self.filter).map_err(|e| {
            ApiError::new(
                ProblemType::InvalidOutput,
                format!("the filter is not a filter in JSON: {e}"),
            )
        })
    }

    fn fields(&self) -> Vec<Field> {
        parse_fields(&self.fields)
    }
}

/// The projection typed one field per line (`from` or `from as name`); blank lines skipped.
fn parse_fields(text: &str) -> Vec<Field> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| match line.split_once(" as ") {
            Some((from, name)) => Field {
                from: from.trim().to_owned(),
                name: Some(name.trim().to_owned()),
            },
            None => Field {
                from: line.to_owned(),
                name: None,
            },
        })
        .collect()
}

/// The projection as the form shows it.
fn fields_text(fields: &[Field]) -> String {
    fields
        .iter()
        .map(|f| match &f.name {
            Some(name) => format!("{} as {name}", f.from),
            None => f.from.clone(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The filter as the form shows it: empty for every event.
fn filter_text(filter: &Filter) -> String {
    if filter == &Filter::default() {
        return String::new();
    }
    serde_json::to_string_pretty(filter).unwrap_or_default()
}

/// `<option>`s of the workspace's sources, `chosen` selected.
fn source_options(sources: &[SourceView], chosen: &str) -> String {
    sources
        .iter()
        .map(|s| {
            format!(
                "<option value=\"{slug}\"{selected}>{slug}</option>",
                slug = escape(&s.slug),
                selected = if s.slug == chosen { " selected" } else { "" }
            )
        })
        .collect()
}

/// The filter and projection fields of the form, filled with `form`'s.
fn shaping_fields(form: &OutputForm) -> String {
    format!(
        "<p><label for=\"filter\">Filter (JSON; empty: every event), e.g. \
<code>{{\"conditions\": [{{\"pointer\": \"/temp_c\", \"op\": \"gt\", \"value\": 30}}]}}</code></label></p>\
<p><textarea id=\"filter\" name=\"filter\" rows=\"5\" cols=\"70\">{filter}</textarea></p>\
<p><label for=\"fields\">Fields, one per line: an envelope field or a JSON pointer, optionally \
<code>as</code> a name (empty: event_id, received_at, device_id, tags, payload)</label></p>\
<p><textarea id=\"fields\" name=\"fields\" rows=\"5\" cols=\"40\" placeholder=\"received_at&#10;device_id&#10;/temp_c as temperature\">{fields}</textarea></p>",
        filter = escape(&form.filter),
        fields = escape(&form.fields),
    )
}

/// Every output of `ws` (for a webhook's or endpoint's choice), or none if the API refuses.
pub async fn all_of(app: &App, visitor: &Visitor, ws: &WorkspaceView) -> Vec<OutputView> {
    every(app, |q| {
        list_outputs(
            State(app.clone()),
            visitor.caller.clone(),
            ApiPath(ws.slug.clone()),
            q,
        )
    })
    .await
    .unwrap_or_default()
}

/// The outputs of `ws`: their list and, for Admins and Editors, the form for a new one.
pub async fn section(
    app: &App,
    visitor: &Visitor,
    ws: &WorkspaceView,
    paging: &Paging,
    sources: &[SourceView],
    typed: Option<&OutputForm>,
) -> String {
    let page = list_outputs(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath(ws.slug.clone()),
        paging.query(app),
    )
    .await
    .map(|Json(p)| p);
    let (outputs, next) = match page {
        Ok(p) => (p.items, p.next_cursor),
        Err(_) => (Vec::new(), None),
    };
    let base = escape(&workspace_url(&ws.slug));
    let mut rows = String::new();
    for o in &outputs {
        let shown: Vec<String> = if o.fields.is_empty() {
            vec!["default".to_owned()]
        } else {
            o.fields
                .iter()
                .map(|f| escape(f.name.as_deref().unwrap_or(&f.from)))
                .collect()
        };
        rows.push_str(&format!(
            "<tr><td><a href=\"{base}/outputs/{slug}\"><code>{slug}</code></a></td><td>{name}</td>\
<td><code>{source}</code></td><td>{filter}</td><td>{fields}</td></tr>",
            slug = escape(&o.slug),
            name = escape(&o.name),
            source = escape(&o.source),
            filter = if o.filter == Filter::default() {
                "every event".to_owned()
            } else {
                format!(
                    "<code>{}</code>",
                    escape(&serde_json::to_string(&o.filter).unwrap_or_default())
                )
            },
            fields = shown.join(", "),
        ));
    }
    let table = if outputs.is_empty() {
        "<p class=\"muted\">No outputs yet.</p>".to_owned()
    } else {
        format!(
            "<table><thead><tr><th scope=\"col\">Slug</th><th scope=\"col\">Name</th>\
<th scope=\"col\">Source</th><th scope=\"col\">Filter</th><th scope=\"col\">Fields</th></tr></thead>\
<tbody>{rows}</tbody></table>{pages}",
            pages = paging.links(
                &format!("{}/data-out", workspace_url(&ws.slug)),
                "outputs",
                next.as_deref()
            ),
        )
    };
    let form = if Action::ManageOutputs.allows(ws.role) {
        let empty = OutputForm::default();
        let typed = typed.unwrap_or(&empty);
        if sources.is_empty() {
            "<p class=\"muted\">An output reads a source: create one on the Access tab first.</p>"
                .to_owned()
        } else {
            format!(
                "<h3>New output</h3><form method=\"post\" action=\"{base}/outputs\">{csrf}\
<p><label>Slug <input name=\"slug\" value=\"{slug}\" required pattern=\"[a-z0-9][a-z0-9\\-]{{0,62}}\"></label>\
<label>Name (optional) <input name=\"name\" value=\"{name}\" maxlength=\"100\"></label>\
<label>Source <select name=\"source\">{options}</select></label></p>{shaping}\
<p><button>Create output</button></p></form>",
                csrf = hidden_field(&visitor.csrf),
                slug = escape(&typed.slug),
                name = escape(&typed.name),
                options = source_options(sources, &typed.source),
                shaping = shaping_fields(typed),
            )
        }
    } else {
        String::new()
    };
    format!(
        "<section aria-labelledby=\"outputs\"><h2 id=\"outputs\">Outputs</h2>\
<p class=\"muted\">An output is a filtered, projected view of one source's events; export \
endpoints and webhooks deliver it.</p>{table}{form}</section>"
    )
}

/// Creates an output as `POST …/outputs` does.
pub async fn create(
    State(app): State<App>,
    Path(key): Path<String>,
    posted: CheckedForm<OutputForm>,
) -> Response {
    let CheckedForm { visitor, form } = posted;
    let made = match form.filter() {
        Ok(filter) => create_output(
            State(app.clone()),
            visitor.caller.clone(),
            ApiPath(key.clone()),
            ApiJson(NewOutput {
                slug: form.slug.trim().to_owned(),
                name: Some(form.name.trim().to_owned()).filter(|n| !n.is_empty()),
                source: form.source.clone(),
                filter,
                fields: form.fields(),
            }),
        )
        .await
        .map(|_| ()),
        Err(refusal) => Err(refusal),
    };
    match made {
        Ok(()) => frame::see_other(&format!("{}/data-out?done=output", workspace_url(&key))),
        Err(refusal) => {
            let typed = data_out::Typed {
                output: Some(form),
                ..Default::default()
            };
            data_out::render(&app, &visitor, &key, Some(Notice::Refused(refusal)), typed).await
        }
    }
}

/// An output's page.
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
        None,
    )
    .await
}

async fn render(
    app: &App,
    visitor: &Visitor,
    key: &str,
    slug: &str,
    notice: Option<Notice>,
    typed: Option<&OutputForm>,
) -> Response {
    let ws = match load(app, visitor, key).await {
        Ok(ws) => ws,
        Err(page) => return page,
    };
    let output = match get_output(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath((ws.slug.clone(), slug.to_owned())),
    )
    .await
    {
        Ok(Json(output)) => output,
        Err(e) => return frame::message_page(e.status(), "No such output", &e.detail),
    };
    let base = escape(&workspace_url(&ws.slug));
    let mut main = format!(
        "<section aria-labelledby=\"what\"><h2 id=\"what\">What it produces</h2><dl>\
<dt>Source</dt><dd><code>{source}</code></dd><dt>Filter</dt><dd>{filter}</dd>\
<dt>Fields</dt><dd>{fields}</dd><dt>Schema of each item</dt><dd><pre>{schema}</pre></dd></dl></section>",
        source = escape(&output.source),
        filter = if output.filter == Filter::default() {
            "every event".to_owned()
        } else {
            format!("<pre>{}</pre>", escape(&filter_text(&output.filter)))
        },
        fields = if output.fields.is_empty() {
            "the default projection".to_owned()
        } else {
            format!("<pre>{}</pre>", escape(&fields_text(&output.fields)))
        },
        schema = escape(&serde_json::to_string_pretty(&output.schema).unwrap_or_default()),
    );
    if Action::ManageOutputs.allows(ws.role) {
        let sources = data_out::sources_of(app, visitor, &ws).await;
        let stored = OutputForm {
            slug: output.slug.clone(),
            name: output.name.clone(),
            source: output.source.clone(),
            filter: filter_text(&output.filter),
            fields: fields_text(&output.fields),
        };
        let shown = typed.unwrap_or(&stored);
        let csrf = hidden_field(&visitor.csrf);
        main.push_str(&format!(
            "<section aria-labelledby=\"change\"><h2 id=\"change\">Change</h2>\
<form method=\"post\" action=\"{base}/outputs/{slug}\">{csrf}\
<p><label>Name <input name=\"name\" value=\"{name}\" required maxlength=\"100\"></label>\
<label>Source <select name=\"source\">{options}</select></label></p>{shaping}\
<p><button>Save output</button></p></form>\
<form method=\"post\" action=\"{base}/outputs/{slug}/delete\">{csrf}\
<button class=\"danger\">Delete output</button></form></section>",
            slug = escape(&output.slug),
            name = escape(&shown.name),
            options = source_options(&sources, &shown.source),
            shaping = shaping_fields(shown),
        ));
    }
    let title = format!("{} · output {}", ws.name, output.slug);
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

/// Changes an output as `PATCH …/outputs/{output}` does (every field given).
pub async fn save(
    State(app): State<App>,
    Path((key, slug)): Path<(String, String)>,
    posted: CheckedForm<OutputForm>,
) -> Response {
    let CheckedForm { visitor, form } = posted;
    let saved = match form.filter() {
        Ok(filter) => update_output(
            State(app.clone()),
            visitor.caller.clone(),
            ApiPath((key.clone(), slug.clone())),
            ApiJson(OutputUpdate {
                name: Some(form.name.clone()),
                source: Some(form.source.clone()),
                filter: Some(filter),
                fields: Some(form.fields()),
            }),
        )
        .await
        .map(|_| ()),
        Err(refusal) => Err(refusal),
    };
    match saved {
        Ok(()) => frame::see_other(&format!(
            "{}/outputs/{}?done=output-saved",
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
                Some(&form),
            )
            .await
        }
    }
}

/// Deletes an output as `DELETE …/outputs/{output}` does (refused while endpoints serve it).
pub async fn delete(
    State(app): State<App>,
    Path((key, slug)): Path<(String, String)>,
    posted: CheckedForm<NoFields>,
) -> Response {
    let visitor = posted.visitor;
    match delete_output(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath((key.clone(), slug.clone())),
    )
    .await
    {
        Ok(_) => frame::see_other(&format!(
            "{}/data-out?done=output-deleted",
            workspace_url(&key)
        )),
        Err(refusal) => {
            render(
                &app,
                &visitor,
                &key,
                &slug,
                Some(Notice::Refused(refusal)),
                None,
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_projection_is_typed_one_field_per_line() {
        let fields = parse_fields("received_at\n\n /temp_c as temperature \n");
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[0].from, "received_at");
        assert_eq!(fields[0].name, None);
        assert_eq!(fields[1].from, "/temp_c");
        assert_eq!(fields[1].name.as_deref(), Some("temperature"));
        assert_eq!(fields_text(&fields), "received_at\n/temp_c as temperature");
    }
}
