//! The Tag rules tab: the workspace's rules in the order they apply, with a form for a new one,
//! an edit page per rule, Up and Down to reorder, and Delete, through the API's tag-rule
//! handlers (`…/tag-rules`, `…/tag-rules/{rule}`). A rule's form shows the fields of every
//! kind of rule (no script picks them); the handler takes the ones of the kind chosen and the
//! API checks them as nodes will.

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::Json;
use sluice_config::shaping::{Extract, TagRule};
use uuid::Uuid;

use super::csrf::{hidden_field, CheckedForm, NoFields};
use super::data_out::sources_of;
use super::fields::Fields;
use super::frame::{self, Notice, Tab};
use super::visitor::Visitor;
use super::workspace_url;
use super::workspaces::load;
use crate::api::html::escape;
use crate::api::sources::SourceView;
use crate::api::tag_rules::{
    create_tag_rule, delete_tag_rule, get_tag_rule, list_tag_rules, update_tag_rule, TagRuleForm,
};
use crate::api::{ApiJson, ApiPath};
use crate::app::App;
use crate::problem::{ApiError, ProblemType};
use crate::roles::Action;

/// The Tag rules tab.
pub async fn page(
    State(app): State<App>,
    visitor: Visitor,
    Path(key): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    render_list(
        &app,
        &visitor,
        &key,
        Notice::from_query(query.as_deref()),
        None,
    )
    .await
}

/// Where a rule's value comes from, in words.
fn described(extract: &Extract) -> String {
    let device = |on: bool| if on { "; also the device id" } else { "" };
    match extract {
        Extract::Topic { pattern, device_id } => format!(
            "MQTT topic <code>{}</code>{}",
            escape(pattern),
            device_id.as_deref().map_or(String::new(), |d| format!(
                "; capture <code>{}</code> is the device id",
                escape(d)
            ))
        ),
        Extract::Header {
            name,
            tag,
            device_id,
        } => format!(
            "header <code>{}</code> into tag <code>{}</code>{}",
            escape(name),
            escape(tag),
            device(*device_id)
        ),
        Extract::Query {
            name,
            tag,
            device_id,
        } => format!(
            "query parameter <code>{}</code> into tag <code>{}</code>{}",
            escape(name),
            escape(tag),
            device(*device_id)
        ),
        Extract::Pointer {
            pointer,
            tag,
            device_id,
        } => format!(
            "payload <code>{}</code> into tag <code>{}</code>{}",
            escape(pointer),
            escape(tag),
            device(*device_id)
        ),
    }
}

/// The fields of a rule's form, filled from `rule` (a new rule: empty, every source).
fn form_fields(rule: Option<&TagRule>, sources: &[SourceView]) -> String {
    let (kind, pattern, capture, name, pointer, tag, device) = match rule.map(|r| &r.extract) {
        Some(Extract::Topic { pattern, device_id }) => (
            "topic",
            pattern.as_str(),
            device_id.as_deref().unwrap_or_default(),
            "",
            "",
            "",
            false,
        ),
        Some(Extract::Header {
            name,
            tag,
            device_id,
        }) => (
            "header",
            "",
            "",
            name.as_str(),
            "",
            tag.as_str(),
            *device_id,
        ),
        Some(Extract::Query {
            name,
            tag,
            device_id,
        }) => ("query", "", "", name.as_str(), "", tag.as_str(), *device_id),
        Some(Extract::Pointer {
            pointer,
            tag,
            device_id,
        }) => (
            "pointer",
            "",
            "",
            "",
            pointer.as_str(),
            tag.as_str(),
            *device_id,
        ),
        None => ("pointer", "", "", "", "", "", false),
    };
    let chosen = rule.map(|r| r.sources.as_slice()).unwrap_or_default();
    let mut boxes: String = sources
        .iter()
        .map(|s| {
            let checked = if chosen.contains(&s.slug) {
                " checked"
            } else {
                ""
            };
            format!(
                "<label><input type=\"checkbox\" name=\"sources\" value=\"{slug}\"{checked}> {slug}</label>",
                slug = escape(&s.slug)
            )
        })
        .collect();
    // A source the rule names that is not listed (deleted since, or past the first page) is
    // kept as it is.
    for slug in chosen {
        if !sources.iter().any(|s| &s.slug == slug) {
            boxes.push_str(&format!(
                "<label><input type=\"checkbox\" name=\"sources\" value=\"{slug}\" checked> {slug} (not found)</label>",
                slug = escape(slug)
            ));
        }
    }
    let option = |value: &str, label: &str| {
        let selected = if value == kind { " selected" } else { "" };
        format!("<option value=\"{value}\"{selected}>{label}</option>")
    };
    format!(
        "<p><label>Name <input name=\"name\" value=\"{name_value}\" required maxlength=\"100\"></label></p>\
<fieldset><legend>Sources (none ticked: every source)</legend>{boxes}</fieldset>\
<p><label>Value from <select name=\"from\">{topic}{header}{query}{pointer_option}</select></label></p>\
<fieldset><legend>For an MQTT topic</legend>\
<label>Topic pattern <input name=\"pattern\" value=\"{pattern}\" maxlength=\"512\" placeholder=\"ingest/{{source}}/{{site}}/{{device}}\"></label>\
<label>Capture that is the device id (optional) <input name=\"capture\" value=\"{capture}\" maxlength=\"64\"></label></fieldset>\
<fieldset><legend>For a header, query parameter or payload pointer</legend>\
<label>Header or parameter name <input name=\"field\" value=\"{field}\" maxlength=\"128\"></label>\
<label>JSON pointer <input name=\"pointer\" value=\"{pointer}\" maxlength=\"512\" placeholder=\"/meta/site\"></label>\
<label>Tag <input name=\"tag\" value=\"{tag}\" maxlength=\"64\" pattern=\"[a-z][a-z0-9_]{{0,63}}\"></label>\
<label><input type=\"checkbox\" name=\"device_id\" value=\"on\"{device}> The value is also the device id</label></fieldset>",
        name_value = escape(rule.map_or("", |r| r.name.as_str())),
        boxes = if boxes.is_empty() {
            "<span class=\"muted\">No sources yet.</span>".to_owned()
        } else {
            boxes
        },
        topic = option("topic", "MQTT topic"),
        header = option("header", "HTTP header"),
        query = option("query", "query parameter"),
        pointer_option = option("pointer", "payload (JSON pointer)"),
        pattern = escape(pattern),
        capture = escape(capture),
        field = escape(name),
        pointer = escape(pointer),
        tag = escape(tag),
        device = if device { " checked" } else { "" },
    )
}

async fn render_list(
    app: &App,
    visitor: &Visitor,
    key: &str,
    notice: Option<Notice>,
    typed: Option<&Fields>,
) -> Response {
    let ws = match load(app, visitor, key).await {
        Ok(ws) => ws,
        Err(page) => return page,
    };
    let rules = list_tag_rules(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath(ws.slug.clone()),
    )
    .await
    .map(|Json(list)| list.rules)
    .unwrap_or_default();
    let manage = Action::ManageTagRules.allows(ws.role);
    let base = escape(&workspace_url(&ws.slug));
    let csrf = hidden_field(&visitor.csrf);
    let mut rows = String::new();
    for (i, rule) in rules.iter().enumerate() {
        let name = escape(&rule.name);
        let sources = if rule.sources.is_empty() {
            "all".to_owned()
        } else {
            escape(&rule.sources.join(", "))
        };
        let controls = if manage {
            let id = rule.id;
            let mover = |to: usize, label: &str, word: &str| {
                format!(
                    "<form class=\"inline\" method=\"post\" action=\"{base}/tag-rules/{id}/move\">{csrf}\
<input type=\"hidden\" name=\"position\" value=\"{to}\">\
<button class=\"secondary\" aria-label=\"Move {name} {word}\">{label}</button></form>"
                )
            };
            let up = if i > 0 {
                mover(i - 1, "↑ Up", "up")
            } else {
                String::new()
            };
            let down = if i + 1 < rules.len() {
                mover(i + 1, "↓ Down", "down")
            } else {
                String::new()
            };
            format!(
                "<td>{up}{down}</td><td><a href=\"{base}/tag-rules/{id}\" aria-label=\"Edit {name}\">Edit</a> \
<form class=\"inline\" method=\"post\" action=\"{base}/tag-rules/{id}/delete\">{csrf}\
<button class=\"danger\" aria-label=\"Delete {name}\">Delete</button></form></td>"
            )
        } else {
            String::new()
        };
        rows.push_str(&format!(
            "<tr><td>{n}</td><td>{name}</td><td>{sources}</td><td>{from}</td>{controls}</tr>",
            n = i + 1,
            from = described(&rule.extract),
        ));
    }
    let table = if rules.is_empty() {
        "<p class=\"muted\">No tag rules yet: events get no tags but those the device sends.</p>"
            .to_owned()
    } else {
        format!(
            "<table><thead><tr><th scope=\"col\">#</th><th scope=\"col\">Name</th>\
<th scope=\"col\">Sources</th><th scope=\"col\">Value from</th>{heads}</tr></thead><tbody>{rows}</tbody></table>",
            heads = if manage {
                "<th scope=\"col\">Order</th><th scope=\"col\">Change</th>"
            } else {
                ""
            },
        )
    };
    let mut main = format!(
        "<section aria-labelledby=\"rules\"><h2 id=\"rules\">Tag rules</h2>\
<p class=\"muted\">They apply in this order to every event of their sources; a later rule's \
value for a tag replaces an earlier one's.</p>{table}</section>"
    );
    if manage {
        let sources = sources_of(app, visitor, &ws).await;
        // After a refusal, the form shows what was typed.
        let typed_rule = typed.and_then(|f| rule_of(f).ok());
        main.push_str(&format!(
            "<section aria-labelledby=\"new-rule\"><h2 id=\"new-rule\">New tag rule</h2>\
<form method=\"post\" action=\"{base}/tag-rules\">{csrf}{fields}\
<p><label>Position (1 is first; empty: last) <input name=\"position\" type=\"number\" min=\"1\"></label></p>\
<p><button>Create tag rule</button></p></form></section>",
            fields = form_fields(typed_rule.as_ref(), &sources),
        ));
    }
    let title = format!("{} · Tag rules", ws.name);
    frame::page(
        app,
        visitor,
        Some((&ws, Tab::TagRules)),
        &title,
        notice,
        &main,
    )
    .await
}

/// A rule as the form describes it (the id is the API's to give or keep).
fn rule_of(fields: &Fields) -> Result<TagRule, ApiError> {
    let tag = fields.one("tag").to_owned();
    let device_id = fields.ticked("device_id");
    let extract = match fields.one("from") {
        "topic" => Extract::Topic {
            pattern: fields.one("pattern").to_owned(),
            device_id: fields.optional("capture"),
        },
        "header" => Extract::Header {
            name: fields.one("field").to_owned(),
            tag,
            device_id,
        },
        "query" => Extract::Query {
            name: fields.one("field").to_owned(),
            tag,
            device_id,
        },
        "pointer" => Extract::Pointer {
            pointer: fields.one("pointer").to_owned(),
            tag,
            device_id,
        },
        other => {
            return Err(ApiError::new(
                ProblemType::InvalidTagRule,
                format!("{other:?} is not where a value comes from: choose topic, header, query parameter or payload"),
            ))
        }
    };
    Ok(TagRule {
        id: Uuid::nil(),
        name: fields.one("name").to_owned(),
        sources: fields.all("sources"),
        extract,
    })
}

/// The API's form for `fields`, at `position` (counted from 0).
fn api_form(fields: &Fields, position: Option<usize>) -> Result<TagRuleForm, ApiError> {
    let rule = rule_of(fields)?;
    Ok(TagRuleForm {
        name: rule.name,
        sources: rule.sources,
        extract: rule.extract,
        position,
    })
}

/// The position typed (1 is first), as the API counts (from 0).
fn typed_position(fields: &Fields) -> Result<Option<usize>, ApiError> {
    match fields.optional("position") {
        None => Ok(None),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|&n| n >= 1)
            .map(|n| Some(n - 1))
            .ok_or_else(|| {
                ApiError::new(
                    ProblemType::InvalidTagRule,
                    format!("position {text:?} is not a number from 1"),
                )
            }),
    }
}

/// Creates a rule as `POST …/tag-rules` does.
pub async fn create(
    State(app): State<App>,
    Path(key): Path<String>,
    posted: CheckedForm<Fields>,
) -> Response {
    let CheckedForm { visitor, form } = posted;
    let made = match typed_position(&form).and_then(|at| api_form(&form, at)) {
        Ok(rule) => create_tag_rule(
            State(app.clone()),
            visitor.caller.clone(),
            ApiPath(key.clone()),
            ApiJson(rule),
        )
        .await
        .map(|_| ()),
        Err(refusal) => Err(refusal),
    };
    match made {
        Ok(()) => frame::see_other(&format!("{}/tag-rules?done=tag-rule", workspace_url(&key))),
        Err(refusal) => {
            render_list(
                &app,
                &visitor,
                &key,
                Some(Notice::Refused(refusal)),
                Some(&form),
            )
            .await
        }
    }
}

/// One rule's edit page.
pub async fn edit_page(
    State(app): State<App>,
    visitor: Visitor,
    Path((key, id)): Path<(String, Uuid)>,
) -> Response {
    render_edit(&app, &visitor, &key, id, None, None).await
}

async fn render_edit(
    app: &App,
    visitor: &Visitor,
    key: &str,
    id: Uuid,
    notice: Option<Notice>,
    typed: Option<&Fields>,
) -> Response {
    let ws = match load(app, visitor, key).await {
        Ok(ws) => ws,
        Err(page) => return page,
    };
    let stored = match get_tag_rule(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath((ws.slug.clone(), id)),
    )
    .await
    {
        Ok(Json(rule)) => rule,
        Err(e) => return frame::message_page(e.status(), "No such tag rule", &e.detail),
    };
    let base = escape(&workspace_url(&ws.slug));
    let mut main = format!(
        "<section aria-labelledby=\"now\"><h2 id=\"now\">Now</h2><dl><dt>Sources</dt><dd>{sources}</dd>\
<dt>Value from</dt><dd>{from}</dd></dl></section>",
        sources = if stored.sources.is_empty() {
            "all".to_owned()
        } else {
            escape(&stored.sources.join(", "))
        },
        from = described(&stored.extract),
    );
    if Action::ManageTagRules.allows(ws.role) {
        let sources = sources_of(app, visitor, &ws).await;
        let shown = typed
            .and_then(|f| rule_of(f).ok())
            .unwrap_or(stored.clone());
        main.push_str(&format!(
            "<section aria-labelledby=\"change\"><h2 id=\"change\">Change</h2>\
<form method=\"post\" action=\"{base}/tag-rules/{id}\">{csrf}{fields}\
<p><button>Save tag rule</button> <a href=\"{base}/tag-rules\">Cancel</a></p></form></section>",
            csrf = hidden_field(&visitor.csrf),
            fields = form_fields(Some(&shown), &sources),
        ));
    }
    let title = format!("{} · tag rule {}", ws.name, stored.name);
    frame::page(
        app,
        visitor,
        Some((&ws, Tab::TagRules)),
        &title,
        notice,
        &main,
    )
    .await
}

/// Saves a rule as `PUT …/tag-rules/{rule}` does; it keeps its place.
pub async fn save(
    State(app): State<App>,
    Path((key, id)): Path<(String, Uuid)>,
    posted: CheckedForm<Fields>,
) -> Response {
    let CheckedForm { visitor, form } = posted;
    let saved = match api_form(&form, None) {
        Ok(rule) => update_tag_rule(
            State(app.clone()),
            visitor.caller.clone(),
            ApiPath((key.clone(), id)),
            ApiJson(rule),
        )
        .await
        .map(|_| ()),
        Err(refusal) => Err(refusal),
    };
    match saved {
        Ok(()) => frame::see_other(&format!(
            "{}/tag-rules?done=tag-rule-saved",
            workspace_url(&key)
        )),
        Err(refusal) => {
            render_edit(
                &app,
                &visitor,
                &key,
                id,
                Some(Notice::Refused(refusal)),
                Some(&form),
            )
            .await
        }
    }
}

/// Moves a rule to `position` (from 0) with `PUT …/tag-rules/{rule}`, its content unchanged.
pub async fn move_rule(
    State(app): State<App>,
    Path((key, id)): Path<(String, Uuid)>,
    posted: CheckedForm<Fields>,
) -> Response {
    let CheckedForm { visitor, form } = posted;
    let moved = async {
        let position = form.one("position").parse::<usize>().map_err(|_| {
            ApiError::new(
                ProblemType::InvalidTagRule,
                "the form did not say where to move the rule",
            )
        })?;
        let Json(rule) = get_tag_rule(
            State(app.clone()),
            visitor.caller.clone(),
            ApiPath((key.clone(), id)),
        )
        .await?;
        update_tag_rule(
            State(app.clone()),
            visitor.caller.clone(),
            ApiPath((key.clone(), id)),
            ApiJson(TagRuleForm {
                name: rule.name,
                sources: rule.sources,
                extract: rule.extract,
                position: Some(position),
            }),
        )
        .await
        .map(|_| ())
    }
    .await;
    match moved {
        Ok(()) => frame::see_other(&format!(
            "{}/tag-rules?done=tag-rule-moved",
            workspace_url(&key)
        )),
        Err(refusal) => {
            render_list(&app, &visitor, &key, Some(Notice::Refused(refusal)), None).await
        }
    }
}

/// Deletes a rule as `DELETE …/tag-rules/{rule}` does.
pub async fn delete(
    State(app): State<App>,
    Path((key, id)): Path<(String, Uuid)>,
    posted: CheckedForm<NoFields>,
) -> Response {
    let visitor = posted.visitor;
    match delete_tag_rule(
        State(app.clone()),
        visitor.caller.clone(),
        ApiPath((key.clone(), id)),
    )
    .await
    {
        Ok(_) => frame::see_other(&format!(
            "{}/tag-rules?done=tag-rule-deleted",
            workspace_url(&key)
        )),
        Err(refusal) => {
            render_list(&app, &visitor, &key, Some(Notice::Refused(refusal)), None).await
        }
    }
}
