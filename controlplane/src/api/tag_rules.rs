//! Tag rules: a workspace's ordered list of rules that lift values from MQTT topics, HTTP
//! headers, query parameters or payload pointers into the `tags` column (and `device_id`).
//!
//! The list is stored whole (one record per workspace), so every change, a reorder included,
//! is one write and one new configuration version: nodes never see half a reorder. Rules are
//! checked here exactly as nodes check them (`sluice_config::shaping`), so that a saved rule
//! never makes a node refuse the configuration.

use std::collections::HashSet;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use sluice_config::shaping::{self, Extract, TagRule, TAG_RULES_MAX};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{authorize, require_enabled_in, ApiJson, ApiPath};
use crate::app::App;
use crate::auth::Caller;
use crate::model::{TagRules, Workspace};
use crate::problem::{ApiError, ApiResult, FieldError, ProblemType};
use crate::roles::Action;
use crate::store::{Change, State as Data};

/// A workspace's tag rules, in the order they apply (a later rule's value for a tag replaces
/// an earlier one's).
#[derive(Debug, Serialize, ToSchema)]
pub struct TagRuleList {
    /// At most 100.
    pub rules: Vec<TagRule>,
}

/// A new tag rule, or the new content of one; the server gives the id.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagRuleForm {
    /// 1 to 100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// Slugs of sources of the workspace the rule applies to; every source when empty or
    /// absent.
    #[serde(default)]
    #[schema(schema_with = sources_schema)]
    pub sources: Vec<String>,
    /// Where the value comes from.
    #[schema(schema_with = extract_schema)]
    pub extract: Extract,
    /// Where the rule goes in the list, counted from 0; past the end means last. When
    /// absent a new rule goes last and a changed one keeps its place.
    #[schema(minimum = 0)]
    pub position: Option<usize>,
}

/// One rule of a list that replaces the workspace's: an existing rule by its `id`, or a new
/// one without.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListedTagRule {
    /// The id of one of the workspace's rules; absent for a new rule, which gets one.
    pub id: Option<Uuid>,
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    #[serde(default)]
    #[schema(schema_with = sources_schema)]
    pub sources: Vec<String>,
    #[schema(schema_with = extract_schema)]
    pub extract: Extract,
}

/// The workspace's new list of tag rules, in the order they are to apply.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagRuleListForm {
    /// Rules left out are deleted; at most 100.
    pub rules: Vec<ListedTagRule>,
}

/// `sources` of a rule in the OpenAPI document: source slugs.
fn sources_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^[a-z0-9][a-z0-9-]{0,62}$")),
        )
        .description(Some(
            "Slugs of sources of the workspace the rule applies to; every source when empty",
        ))
        .build()
}

/// `extract` of a rule in the OpenAPI document, stated as the checks of
/// `sluice_config::shaping` make it (unknown fields refused, tag names, header and parameter
/// names and pointers by their patterns), which the derived schema of [`Extract`] cannot say.
fn extract_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Type};
    let text = |pattern: Option<&str>, max: usize, description: &str| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(max))
            .pattern(pattern.map(str::to_owned))
            .description(Some(description.to_owned()))
    };
    let tag = || {
        text(
            Some("^[a-z][a-z0-9_]{0,63}$"),
            64,
            "The tag the value goes into: a-z, 0-9 and _, starting with a letter",
        )
    };
    let field = |what: &str| {
        text(
            Some("^[!-9;-~]{1,128}$"),
            128,
            &format!("The {what} name: visible ASCII, no colon"),
        )
    };
    let device_flag = || {
        ObjectBuilder::new()
            .schema_type(Type::Boolean)
            .description(Some("The value also becomes the event's `device_id`"))
    };
    let variant = |from: &str, description: &str, fields: Vec<(&str, ObjectBuilder, bool)>| {
        let mut object = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(description.to_owned()))
            .property(
                "from",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some([from])),
            )
            .required("from")
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        for (name, schema, required) in fields {
            object = object.property(name, schema);
            if required {
                object = object.required(name);
            }
        }
        object
    };
    OneOfBuilder::new()
        .item(variant(
            "topic",
            "MQTT topic segments: `{name}` captures a segment as tag `name` (at least one), `+` \
             matches any one, `#` (last) any rest, others must be equal; e.g. \
             `ingest/{source}/{site}/{device}`",
            vec![
                ("pattern", text(None, 512, "The topic pattern"), true),
                (
                    "device_id",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .description(Some(
                            "A capture whose value also becomes the event's `device_id`",
                        )),
                    false,
                ),
            ],
        ))
        .item(variant(
            "header",
            "An HTTP request header (case-insensitive)",
            vec![
                ("name", field("header"), true),
                ("tag", tag(), true),
                ("device_id", device_flag(), false),
            ],
        ))
        .item(variant(
            "query",
            "A query parameter of the ingest URL",
            vec![
                ("name", field("query parameter"), true),
                ("tag", tag(), true),
                ("device_id", device_flag(), false),
            ],
        ))
        .item(variant(
            "pointer",
            "A JSON pointer (RFC 6901) into the payload; strings as they are, numbers and \
             booleans as their JSON text",
            vec![
                (
                    "pointer",
                    text(
                        Some("^(/([^~]|~[01])*)+$"),
                        512,
                        "E.g. `/meta/site`; `~` only as `~0` or `~1`",
                    ),
                    true,
                ),
                ("tag", tag(), true),
                ("device_id", device_flag(), false),
            ],
        ))
        .description(Some("Where the value comes from; `from` says which kind"))
        .build()
        .into()
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::new(ProblemType::InvalidTagRule, detail)
}

fn unknown_rule(ws: &Workspace, id: Uuid) -> ApiError {
    ApiError::new(
        ProblemType::UnknownTagRule,
        format!("no tag rule {id} in workspace {:?}", ws.slug),
    )
}

/// Checks `rule` as nodes will, and that the sources it names exist in the workspace. A slug
/// the stored rule of the same id already names may stay after its source was deleted (it
/// applies again if a source of that slug is made), so that unrelated edits of the list do not
/// fail on it.
fn valid_rule(s: &Data, ws: &Workspace, mut rule: TagRule) -> ApiResult<TagRule> {
    let mut seen = HashSet::new();
    rule.sources.retain(|slug| seen.insert(slug.clone()));
    rule.check().map_err(|e| invalid(e.to_string()))?;
    let stored = s.tag_rules_of(ws.id).iter().find(|r| r.id == rule.id);
    for slug in &rule.sources {
        let exists = s.sources_of(ws.id).any(|x| &x.slug == slug);
        let kept = stored.is_some_and(|r| r.sources.contains(slug));
        if !exists && !kept {
            return Err(ApiError::new(
                ProblemType::UnknownNamedSource,
                format!(
                    "tag rule {:?} names source {slug:?}, which workspace {:?} does not have",
                    rule.name, ws.slug
                ),
            ));
        }
    }
    Ok(rule)
}

/// The change that stores `rules` as the workspace's list, after the checks of the whole list.
fn save(ws: &Workspace, rules: Vec<TagRule>) -> ApiResult<Change> {
    if rules.len() > TAG_RULES_MAX {
        return Err(ApiError::new(
            ProblemType::LimitReached,
            format!("a workspace has at most {TAG_RULES_MAX} tag rules; delete some first"),
        ));
    }
    shaping::check_rules(&rules).map_err(|e| invalid(e.to_string()))?;
    Ok(Change::PutTagRules(TagRules {
        workspace_id: ws.id,
        rules,
    }))
}

/// The workspace's tag rules, in order. Any member.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}/tag-rules", tag = "tag-rules",
    params(("workspace" = String, Path, description = "Workspace id or slug")),
    responses((status = 200, body = TagRuleList), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn list_tag_rules(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
) -> ApiResult<Json<TagRuleList>> {
    app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::View)?;
        Ok(Json(TagRuleList {
            rules: s.tag_rules_of(ws.id).to_vec(),
        }))
    })
}

/// Replace the workspace's tag rules with a new ordered list: how rules are reordered, and
/// several changed at once. Rules listed with their `id` keep it; rules without get one;
/// rules left out are deleted. Admin or Editor.
#[utoipa::path(put, path = "/api/v1/workspaces/{workspace}/tag-rules", tag = "tag-rules",
    params(("workspace" = String, Path, description = "Workspace id or slug")),
    request_body = TagRuleListForm,
    responses((status = 200, body = TagRuleList), (status = 400, body = crate::problem::ProblemBody),
        (status = 403, body = crate::problem::ProblemBody), (status = 404, body = crate::problem::ProblemBody),
        (status = 409, body = crate::problem::ProblemBody)))]
pub async fn replace_tag_rules(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    ApiJson(form): ApiJson<TagRuleListForm>,
) -> ApiResult<Json<TagRuleList>> {
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageTagRules)?;
        require_enabled_in(s, ws)?;
        if form.rules.len() > TAG_RULES_MAX {
            return Err(ApiError::new(
                ProblemType::LimitReached,
                format!("a workspace has at most {TAG_RULES_MAX} tag rules; list fewer"),
            ));
        }
        let mut rules = Vec::with_capacity(form.rules.len());
        for (i, listed) in form.rules.into_iter().enumerate() {
            let at = |e: ApiError| {
                let message = e.detail.clone();
                e.with_errors(vec![FieldError::at(format!("/rules/{i}"), message)])
            };
            let id = match listed.id {
                None => Uuid::now_v7(),
                Some(id) if s.tag_rules_of(ws.id).iter().any(|r| r.id == id) => id,
                Some(id) => {
                    return Err(at(invalid(format!(
                        "rules[{i}] has id {id}, which is none of workspace {:?}'s rules: ids \
                         are given by the server, leave id out for a new rule",
                        ws.slug
                    ))))
                }
            };
            let rule = TagRule {
                id,
                name: listed.name,
                sources: listed.sources,
                extract: listed.extract,
            };
            rules.push(valid_rule(s, ws, rule).map_err(at)?);
        }
        let change = save(ws, rules.clone())?;
        Ok((vec![change], Json(TagRuleList { rules })))
    })
    .await
}

/// Add a tag rule, last or at `position`. Admin or Editor.
#[utoipa::path(post, path = "/api/v1/workspaces/{workspace}/tag-rules", tag = "tag-rules",
    params(("workspace" = String, Path, description = "Workspace id or slug")),
    request_body = TagRuleForm,
    responses((status = 201, body = TagRule), (status = 400, body = crate::problem::ProblemBody),
        (status = 403, body = crate::problem::ProblemBody), (status = 404, body = crate::problem::ProblemBody),
        (status = 409, body = crate::problem::ProblemBody)))]
pub async fn create_tag_rule(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    ApiJson(form): ApiJson<TagRuleForm>,
) -> ApiResult<(StatusCode, Json<TagRule>)> {
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageTagRules)?;
        require_enabled_in(s, ws)?;
        let mut rules = s.tag_rules_of(ws.id).to_vec();
        ApiError::at_most(rules.len(), TAG_RULES_MAX, "tag rules per workspace")?;
        let rule = TagRule {
            id: Uuid::now_v7(),
            name: form.name,
            sources: form.sources,
            extract: form.extract,
        };
        let rule = valid_rule(s, ws, rule)?;
        let at = form.position.unwrap_or(rules.len()).min(rules.len());
        rules.insert(at, rule.clone());
        Ok((vec![save(ws, rules)?], (StatusCode::CREATED, Json(rule))))
    })
    .await
}

/// One tag rule. Any member.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}/tag-rules/{rule}", tag = "tag-rules",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("rule" = Uuid, Path, description = "Tag rule id")),
    responses((status = 200, body = TagRule), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn get_tag_rule(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, id)): ApiPath<(String, Uuid)>,
) -> ApiResult<Json<TagRule>> {
    app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::View)?;
        s.tag_rules_of(ws.id)
            .iter()
            .find(|r| r.id == id)
            .map(|r| Json(r.clone()))
            .ok_or_else(|| unknown_rule(ws, id))
    })
}

/// Replace a tag rule's name, sources and extraction, and move it if `position` is given; it
/// keeps its id. Admin or Editor.
#[utoipa::path(put, path = "/api/v1/workspaces/{workspace}/tag-rules/{rule}", tag = "tag-rules",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("rule" = Uuid, Path, description = "Tag rule id")),
    request_body = TagRuleForm,
    responses((status = 200, body = TagRule), (status = 400, body = crate::problem::ProblemBody),
        (status = 403, body = crate::problem::ProblemBody), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn update_tag_rule(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, id)): ApiPath<(String, Uuid)>,
    ApiJson(form): ApiJson<TagRuleForm>,
) -> ApiResult<Json<TagRule>> {
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageTagRules)?;
        require_enabled_in(s, ws)?;
        let mut rules = s.tag_rules_of(ws.id).to_vec();
        let Some(place) = rules.iter().position(|r| r.id == id) else {
            return Err(unknown_rule(ws, id));
        };
        let rule = TagRule {
            id,
            name: form.name,
            sources: form.sources,
            extract: form.extract,
        };
        let rule = valid_rule(s, ws, rule)?;
        rules.remove(place);
        let at = form.position.unwrap_or(place).min(rules.len());
        rules.insert(at, rule.clone());
        Ok((vec![save(ws, rules)?], Json(rule)))
    })
    .await
}

/// Delete a tag rule; nodes stop applying it from the next configuration version on. Tags
/// already written stay. Admin or Editor.
#[utoipa::path(delete, path = "/api/v1/workspaces/{workspace}/tag-rules/{rule}", tag = "tag-rules",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("rule" = Uuid, Path, description = "Tag rule id")),
    responses((status = 204), (status = 403, body = crate::problem::ProblemBody),
        (status = 404, body = crate::problem::ProblemBody)))]
pub async fn delete_tag_rule(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, id)): ApiPath<(String, Uuid)>,
) -> ApiResult<StatusCode> {
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageTagRules)?;
        require_enabled_in(s, ws)?;
        let mut rules = s.tag_rules_of(ws.id).to_vec();
        let before = rules.len();
        rules.retain(|r| r.id != id);
        if rules.len() == before {
            return Err(unknown_rule(ws, id));
        }
        Ok((vec![save(ws, rules)?], StatusCode::NO_CONTENT))
    })
    .await
}
