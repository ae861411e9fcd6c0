//! Outputs: named, filtered and projected views of one source's events, which export
//! endpoints serve to end-users.
//!
//! An output is checked here exactly as nodes check it (`sluice_config::data_out`), and
//! against its source's schema where the source has one, so that a saved output never makes a
//! node refuse the configuration nor silently matches nothing because of a misspelt pointer.
//! Its slug is fixed once created: endpoints name it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_config::data_out::{
    self, Field, Filter, CONDITIONS_MAX, FIELDS_MAX, FILTER_DEVICES_MAX, FILTER_TAGS_MAX,
    NAME_LEN_MAX, OUTPUTS_MAX,
};
use sluice_config::shaping::{PATH_LEN_MAX, TAG_NAME_LEN_MAX, TAG_VALUE_LEN_MAX};
use sluice_config::snapshot::DEVICE_ID_LEN_MAX;
use utoipa::ToSchema;
use uuid::Uuid;

use super::validate::{valid_slug, valid_text};
use super::{authorize, require_enabled_in, ApiJson, ApiPath, ApiQuery, Page, PageQuery};
use crate::app::App;
use crate::auth::Caller;
use crate::model::{Output, Workspace};
use crate::problem::{ApiError, ApiResult, ProblemType};
use crate::references;
use crate::roles::Action;
use crate::store::{Change, State as Data};

/// An output as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutputView {
    /// UUIDv7.
    pub id: Uuid,
    /// Unique in the workspace; export endpoints name it. Fixed once created.
    pub slug: String,
    pub name: String,
    /// The slug of the source whose events it reads.
    pub source: String,
    /// Which events it keeps; all of them when empty.
    #[schema(schema_with = filter_schema)]
    pub filter: Filter,
    /// What each event becomes, in order; the default projection (`event_id`, `received_at`,
    /// `device_id`, `tags`, `payload`) when empty.
    #[schema(schema_with = fields_schema)]
    pub fields: Vec<Field>,
    /// JSON Schema (draft 2020-12) of what the output produces, from the projection and the
    /// source's schema.
    #[schema(value_type = Object)]
    pub schema: Value,
    pub created_at: DateTime<Utc>,
}

impl OutputView {
    fn new(s: &Data, output: &Output) -> Self {
        let source_schema = s
            .sources_of(output.workspace_id)
            .find(|x| x.slug == output.source)
            .and_then(|x| x.schema.as_ref());
        OutputView {
            id: output.id,
            slug: output.slug.clone(),
            name: output.name.clone(),
            source: output.source.clone(),
            filter: output.filter.clone(),
            fields: output.fields.clone(),
            schema: output.config().produced_schema(source_schema),
            created_at: output.created_at,
        }
    }
}

/// A new output.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOutput {
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
    /// The slug of one of the workspace's sources.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"
    )]
    pub source: String,
    /// Which events it keeps; all of them when absent.
    #[serde(default)]
    #[schema(schema_with = filter_schema)]
    pub filter: Filter,
    /// What each event becomes; the default projection when absent or empty.
    #[serde(default)]
    #[schema(schema_with = fields_schema)]
    pub fields: Vec<Field>,
}

/// Changes to an output; absent fields stay as they are. The slug cannot change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputUpdate {
    #[schema(schema_with = optional_name_schema)]
    pub name: Option<String>,
    /// Another source of the workspace to read.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"
    )]
    pub source: Option<String>,
    /// Replaces the whole filter; `{}` keeps every event.
    #[schema(schema_with = optional_filter_schema)]
    pub filter: Option<Filter>,
    /// Replaces the whole projection; `[]` is the default projection.
    #[schema(schema_with = optional_fields_schema)]
    pub fields: Option<Vec<Field>>,
}

/// `name` of an output or endpoint in the OpenAPI document.
pub(super) fn optional_name_schema() -> utoipa::openapi::schema::Object {
    super::validate::optional_text_schema(NAME_LEN_MAX)
}

/// A JSON pointer into the payload, as `sluice_config::shaping::check_pointer` takes it.
fn pointer_schema(description: &str) -> utoipa::openapi::schema::ObjectBuilder {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(PATH_LEN_MAX))
        .pattern(Some("^(/([^~]|~[01])*)+$"))
        .description(Some(description.to_owned()))
}

/// `filter` in the OpenAPI document.
fn filter_schema() -> utoipa::openapi::schema::Object {
    filter_builder().build()
}

/// `filter` of a change, where `null` (as absent) keeps the filter.
fn optional_filter_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{SchemaType, Type};
    let nullable: SchemaType = [Type::Object, Type::Null].into_iter().collect();
    filter_builder().schema_type(nullable).build()
}

/// `fields` in the OpenAPI document.
fn fields_schema() -> utoipa::openapi::schema::Array {
    fields_builder().build()
}

/// `fields` of a change, where `null` (as absent) keeps the projection.
fn optional_fields_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{SchemaType, Type};
    let nullable: SchemaType = [Type::Array, Type::Null].into_iter().collect();
    fields_builder().schema_type(nullable).build()
}

/// `filter` with the bounds `OutputConfig::check` enforces.
fn filter_builder() -> utoipa::openapi::schema::ObjectBuilder {
    use utoipa::openapi::schema::{
        AdditionalProperties, ArrayBuilder, ObjectBuilder, SchemaType, Type,
    };
    let scalar: SchemaType = [Type::String, Type::Number, Type::Boolean, Type::Null]
        .into_iter()
        .collect();
    let condition = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "A comparison of the payload value at `pointer` with `value`; a value of another \
             JSON type than `value` never matches",
        ))
        .property(
            "pointer",
            pointer_schema("JSON pointer (RFC 6901) into the payload, e.g. `/temp_c`"),
        )
        .required("pointer")
        .property(
            "op",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some([
                    "eq", "ne", "lt", "lte", "gt", "gte", "exists", "absent",
                ]))
                .description(Some(
                    "`exists` and `absent` take no value; `eq` and `ne` a scalar; `lt`, `lte`, \
                     `gt` and `gte` a number or a string",
                )),
        )
        .required("op")
        .property(
            "value",
            ObjectBuilder::new()
                .schema_type(scalar)
                .description(Some("A JSON scalar; absent for `exists` and `absent`")),
        )
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "Which events the output keeps: all of its parts must hold; every event when empty",
        ))
        .property(
            "device_ids",
            ArrayBuilder::new()
                .items(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .min_length(Some(1))
                        .max_length(Some(DEVICE_ID_LEN_MAX))
                        .pattern(Some(r"^[!-~]{1,128}$")),
                )
                .max_items(Some(FILTER_DEVICES_MAX))
                .description(Some(
                    "The event's `device_id` is one of these (when not empty)",
                )),
        )
        .property(
            "tags",
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .max_properties(Some(FILTER_TAGS_MAX))
                .property_names(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .max_length(Some(TAG_NAME_LEN_MAX))
                        .pattern(Some("^[a-z][a-z0-9_]{0,63}$")),
                ))
                .additional_properties(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .max_length(Some(TAG_VALUE_LEN_MAX)),
                ))
                .description(Some(
                    "The event has each of these tags with this value (a value of at most 256 \
                     bytes)",
                )),
        )
        .property(
            "conditions",
            ArrayBuilder::new()
                .items(condition)
                .max_items(Some(CONDITIONS_MAX))
                .description(Some("Comparisons on payload fields")),
        )
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
}

/// `fields` with the bounds `OutputConfig::check` enforces.
fn fields_builder() -> utoipa::openapi::schema::ArrayBuilder {
    use utoipa::openapi::schema::{
        AdditionalProperties, ArrayBuilder, ObjectBuilder, SchemaType, Type,
    };
    let envelope = data_out::Envelope::ALL
        .map(data_out::Envelope::name)
        .join("|");
    let optional_string: SchemaType = [Type::String, Type::Null].into_iter().collect();
    let field = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some("One field of what the output produces"))
        .property(
            "from",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(PATH_LEN_MAX))
                .pattern(Some(format!("^({envelope}|(/([^~]|~[01])*)+)$")))
                .description(Some(format!(
                    "An envelope field ({}) or a JSON pointer into the payload, e.g. `/meta/site`",
                    envelope.replace('|', ", ")
                ))),
        )
        .required("from")
        .property(
            "name",
            ObjectBuilder::new()
                .schema_type(optional_string)
                .min_length(Some(1))
                .max_length(Some(NAME_LEN_MAX))
                .description(Some(
                    "The field's name in what the output produces; by default the envelope \
                     field's name or the pointer's last segment. Names are unique",
                )),
        )
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    ArrayBuilder::new()
        .items(field)
        .max_items(Some(FIELDS_MAX))
        .description(Some(
            "What each event becomes, in order; the default projection (`event_id`, \
             `received_at`, `device_id`, `tags`, `payload`) when empty",
        ))
}

fn find<'s>(s: &'s Data, ws: &Workspace, slug: &str) -> ApiResult<&'s Output> {
    s.outputs_of(ws.id).find(|o| o.slug == slug).ok_or_else(|| {
        ApiError::new(
            ProblemType::UnknownOutput,
            format!("no output {slug:?} in workspace {:?}", ws.slug),
        )
    })
}

/// Checks a name of an output or endpoint; returns it trimmed.
pub(super) fn valid_name(name: &str) -> ApiResult<String> {
    valid_text("the name", name, NAME_LEN_MAX)
}

/// Checks `output` as nodes will, then against the workspace: its source exists and, where
/// the source has a schema, the output's pointers fit it. `output` replaces any stored output
/// of the same id.
fn valid_output(s: &Data, ws: &Workspace, output: &Output) -> ApiResult<()> {
    let invalid =
        |e: data_out::DataOutError| ApiError::new(ProblemType::InvalidOutput, e.to_string());
    let config = output.config();
    config.check().map_err(invalid)?;
    let source = s
        .sources_of(ws.id)
        .find(|x| x.slug == output.source)
        .ok_or_else(|| {
            ApiError::new(
                ProblemType::UnknownNamedSource,
                format!(
                    "output {:?} reads source {:?}, which workspace {:?} does not have",
                    output.slug, output.source, ws.slug
                ),
            )
        })?;
    if let Some(schema) = &source.schema {
        config.check_against_schema(schema).map_err(invalid)?;
    }
    let mut all = references::DataOut::of(s, ws.id);
    all.outputs.retain(|o| o.id != output.id);
    all.outputs.push(config);
    all.check().map_err(invalid)
}

/// Outputs of a workspace. Any member.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}/outputs", tag = "outputs",
    params(("workspace" = String, Path, description = "Workspace id or slug"), PageQuery),
    responses((status = 200, body = Page<OutputView>), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn list_outputs(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<OutputView>>> {
    let items = app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::View)?;
        Ok::<_, ApiError>(
            s.outputs_of(ws.id)
                .map(|o| (o.id.to_string(), OutputView::new(s, o)))
                .collect::<Vec<_>>(),
        )
    })?;
    page.page(&app, items).map(Json)
}

/// Create an output. Admin or Editor.
#[utoipa::path(post, path = "/api/v1/workspaces/{workspace}/outputs", tag = "outputs",
    params(("workspace" = String, Path, description = "Workspace id or slug")),
    request_body = NewOutput,
    responses((status = 201, body = OutputView), (status = 400, body = crate::problem::ProblemBody),
        (status = 403, body = crate::problem::ProblemBody), (status = 404, body = crate::problem::ProblemBody),
        (status = 409, body = crate::problem::ProblemBody)))]
pub async fn create_output(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    ApiJson(form): ApiJson<NewOutput>,
) -> ApiResult<(StatusCode, Json<OutputView>)> {
    let slug = valid_slug(&form.slug)?;
    let name = match &form.name {
        Some(name) => valid_name(name)?,
        None => slug.clone(),
    };
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageOutputs)?;
        require_enabled_in(s, ws)?;
        ApiError::at_most(
            s.outputs_of(ws.id).count(),
            OUTPUTS_MAX,
            "outputs per workspace",
        )?;
        if s.outputs_of(ws.id).any(|o| o.slug == slug) {
            return Err(ApiError::new(
                ProblemType::OutputExists,
                format!("workspace {:?} already has an output {slug:?}", ws.slug),
            ));
        }
        let output = Output {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            slug,
            name,
            source: form.source,
            filter: form.filter,
            fields: form.fields,
            created_at: Utc::now(),
        };
        valid_output(s, ws, &output)?;
        let view = OutputView::new(s, &output);
        Ok((
            vec![Change::PutOutput(output)],
            (StatusCode::CREATED, Json(view)),
        ))
    })
    .await
}

/// One output, with the schema of what it produces. Any member.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}/outputs/{output}", tag = "outputs",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("output" = String, Path, description = "Output slug")),
    responses((status = 200, body = OutputView), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn get_output(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, output)): ApiPath<(String, String)>,
) -> ApiResult<Json<OutputView>> {
    app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::View)?;
        find(s, ws, &output).map(|o| Json(OutputView::new(s, o)))
    })
}

/// Change an output's name, source, filter or fields; nodes apply it from the next
/// configuration version on. Admin or Editor.
#[utoipa::path(patch, path = "/api/v1/workspaces/{workspace}/outputs/{output}", tag = "outputs",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("output" = String, Path, description = "Output slug")),
    request_body = OutputUpdate,
    responses((status = 200, body = OutputView), (status = 400, body = crate::problem::ProblemBody),
        (status = 403, body = crate::problem::ProblemBody), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn update_output(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, output)): ApiPath<(String, String)>,
    ApiJson(form): ApiJson<OutputUpdate>,
) -> ApiResult<Json<OutputView>> {
    let name = form.name.as_deref().map(valid_name).transpose()?;
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageOutputs)?;
        require_enabled_in(s, ws)?;
        let mut updated = find(s, ws, &output)?.clone();
        if let Some(name) = name {
            updated.name = name;
        }
        if let Some(source) = form.source {
            updated.source = source;
        }
        if let Some(filter) = form.filter {
            updated.filter = filter;
        }
        if let Some(fields) = form.fields {
            updated.fields = fields;
        }
        valid_output(s, ws, &updated)?;
        let view = OutputView::new(s, &updated);
        Ok((vec![Change::PutOutput(updated)], Json(view)))
    })
    .await
}

/// Delete an output; refused (`409 in-use`) while export endpoints serve it. Admin or Editor.
#[utoipa::path(delete, path = "/api/v1/workspaces/{workspace}/outputs/{output}", tag = "outputs",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("output" = String, Path, description = "Output slug")),
    responses((status = 204), (status = 403, body = crate::problem::ProblemBody),
        (status = 404, body = crate::problem::ProblemBody), (status = 409, body = crate::problem::ProblemBody)))]
pub async fn delete_output(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, output)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageOutputs)?;
        require_enabled_in(s, ws)?;
        let found = find(s, ws, &output)?;
        references::refuse_output_in_use(s, ws, &found.slug)?;
        Ok((vec![Change::DeleteOutput(found.id)], StatusCode::NO_CONTENT))
    })
    .await
}
