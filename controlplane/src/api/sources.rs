//! Sources: the HTTP and MQTT ingest points of a workspace.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use sluice_config::shaping::{self, Column, OnInvalid};
use utoipa::ToSchema;
use uuid::Uuid;

use super::validate::{valid_display_name, valid_slug};
use super::{authorize, require_enabled_in, ApiJson, ApiPath, ApiQuery, Page, PageQuery};
use crate::app::App;
use crate::auth::Caller;
use crate::model::{Protocol, Source, Workspace};
use crate::problem::{ApiError, ApiResult, ProblemType};
use crate::references;
use crate::roles::Action;
use crate::store::{Change, State as Data};

/// A source as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SourceView {
    pub id: Uuid,
    /// Used in ingest URLs (`/v1/ingest/{workspace}/{source}`) and MQTT topics
    /// (`ingest/{source}/...`).
    pub slug: String,
    pub name: String,
    pub protocols: Vec<Protocol>,
    /// JSON Schema (draft 2020-12) every event must meet; absent when the source takes any
    /// JSON object.
    #[schema(value_type = Option<Object>)]
    pub schema: Option<serde_json::Value>,
    /// The schema's version (16 hex digits of its SHA-256), written into every row stored
    /// under it; absent without a schema.
    #[schema(min_length = 16, max_length = 16, pattern = "^[0-9a-f]{16}$")]
    pub schema_version: Option<String>,
    /// The typed Parquet columns the schema gives, in name order: one per top-level property
    /// of a single type. Empty without a schema.
    pub columns: Vec<Column>,
    /// What nodes do with events the schema refuses.
    pub on_invalid: OnInvalid,
    /// Whether the `payload` column (each event's JSON text) is written beside the typed
    /// columns.
    pub keep_payload: bool,
    pub created_at: DateTime<Utc>,
}

impl From<&Source> for SourceView {
    fn from(s: &Source) -> Self {
        SourceView {
            id: s.id,
            slug: s.slug.clone(),
            name: s.name.clone(),
            protocols: s.protocols.clone(),
            schema: s.schema.clone(),
            schema_version: s.schema.as_ref().map(shaping::schema_version),
            columns: s.schema.as_ref().map(shaping::columns).unwrap_or_default(),
            on_invalid: s.on_invalid,
            keep_payload: s.keep_payload,
            created_at: s.created_at,
        }
    }
}

/// A new source.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSource {
    /// `a-z`, `0-9` and `-`, at most 63 characters, not an id.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"
    )]
    pub slug: String,
    /// Display name; the slug when absent.
    #[schema(schema_with = super::validate::optional_display_name_schema)]
    pub name: Option<String>,
    /// Both when absent; at least one.
    #[schema(min_items = 1)]
    pub protocols: Option<Vec<Protocol>>,
    /// JSON Schema (draft 2020-12) of the payload, at most 64 KiB; references only inside
    /// the document. Any JSON object is accepted when absent.
    #[schema(value_type = Option<Object>)]
    pub schema: Option<serde_json::Value>,
    /// What nodes do with events the schema refuses; `reject` when absent.
    pub on_invalid: Option<OnInvalid>,
    /// Whether the `payload` column is written beside the typed columns; true when absent.
    /// `false` needs a schema that gives typed columns.
    pub keep_payload: Option<bool>,
}

/// Changes to a source; absent fields stay as they are, `"schema": null` removes the schema.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceUpdate {
    #[schema(schema_with = super::validate::optional_display_name_schema)]
    pub name: Option<String>,
    /// At least one.
    #[schema(min_items = 1)]
    pub protocols: Option<Vec<Protocol>>,
    /// A new JSON Schema; `null` removes it. Applies to events from the next configuration
    /// version on; files already written keep the schema they were written under.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Option<serde_json::Value>>,
    /// What nodes do with events the schema refuses, from the next configuration version on.
    pub on_invalid: Option<OnInvalid>,
    /// Whether the `payload` column is written beside the typed columns; `false` needs a
    /// schema that gives typed columns.
    pub keep_payload: Option<bool>,
}

/// Tells a field given as `null` (Some(None)) from an absent one (None).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn valid_protocols(protocols: Option<Vec<Protocol>>) -> ApiResult<Vec<Protocol>> {
    let protocols = protocols.unwrap_or_else(|| vec![Protocol::Http, Protocol::Mqtt]);
    if protocols.is_empty() {
        return Err(ApiError::new(
            ProblemType::InvalidProtocols,
            "give the source at least one protocol: http or mqtt",
        ));
    }
    let mut unique = Vec::new();
    for p in protocols {
        if !unique.contains(&p) {
            unique.push(p);
        }
    }
    Ok(unique)
}

/// Checks a schema as the nodes will apply it, and gives it back; the refusal lists each
/// problem with its JSON pointer in `errors`, and names the first in `detail`.
async fn valid_schema(schema: serde_json::Value) -> ApiResult<serde_json::Value> {
    // Checking against the meta-schema and compiling (regular expressions included) take
    // milliseconds of CPU for a large schema: off the async threads.
    let (checked, schema) =
        tokio::task::spawn_blocking(move || (crate::schema::check(&schema), schema))
            .await
            .map_err(|e| ApiError::internal(format!("checking the schema failed: {e}")))?;
    checked.map_err(|errors| {
        let first = errors
            .first()
            .map(|e| {
                let at = if e.pointer.is_empty() {
                    "the schema".to_owned()
                } else {
                    format!("{:?}", e.pointer)
                };
                format!("at {at}: {}", e.message)
            })
            .unwrap_or_default();
        ApiError::new(
            ProblemType::InvalidSchema,
            format!(
                "the schema is not one the nodes can apply ({} problem(s); `errors` lists them \
                 with JSON pointers into the schema); {first}",
                errors.len()
            ),
        )
        .with_errors(errors)
    })?;
    Ok(schema)
}

/// Refuses dropping `payload` where nothing else would keep the events' content.
fn valid_payload_choice(keep_payload: bool, schema: Option<&serde_json::Value>) -> ApiResult<()> {
    let typed = schema.is_some_and(|s| !shaping::columns(s).is_empty());
    if keep_payload || typed {
        return Ok(());
    }
    Err(ApiError::new(
        ProblemType::InvalidBody,
        "keep_payload false needs a schema whose properties give typed columns: without them \
         nothing of the events would be stored. Give the source such a schema first",
    ))
}

fn find<'s>(s: &'s Data, ws: &Workspace, slug: &str) -> ApiResult<&'s Source> {
    s.sources_of(ws.id).find(|x| x.slug == slug).ok_or_else(|| {
        ApiError::new(
            ProblemType::UnknownSource,
            format!("no source {slug:?} in workspace {:?}", ws.slug),
        )
    })
}

/// Sources of a workspace. Any member.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}/sources", tag = "sources",
    params(("workspace" = String, Path, description = "Workspace id or slug"), PageQuery),
    responses((status = 200, body = Page<SourceView>), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn list_sources(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<SourceView>>> {
    let items = app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::View)?;
        Ok::<_, ApiError>(
            s.sources_of(ws.id)
                .map(|x| (x.id.to_string(), SourceView::from(x)))
                .collect::<Vec<_>>(),
        )
    })?;
    page.page(&app, items).map(Json)
}

/// Create a source. Admin or Editor.
#[utoipa::path(post, path = "/api/v1/workspaces/{workspace}/sources", tag = "sources",
    params(("workspace" = String, Path, description = "Workspace id or slug")),
    request_body = NewSource,
    responses((status = 201, body = SourceView), (status = 400, body = crate::problem::ProblemBody),
        (status = 403, body = crate::problem::ProblemBody), (status = 404, body = crate::problem::ProblemBody),
        (status = 409, body = crate::problem::ProblemBody)))]
pub async fn create_source(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    ApiJson(form): ApiJson<NewSource>,
) -> ApiResult<(StatusCode, Json<SourceView>)> {
    let slug = valid_slug(&form.slug)?;
    let name = match &form.name {
        Some(name) => valid_display_name(name)?,
        None => slug.clone(),
    };
    let protocols = valid_protocols(form.protocols)?;
    let schema = match form.schema {
        Some(schema) => Some(valid_schema(schema).await?),
        None => None,
    };
    let keep_payload = form.keep_payload.unwrap_or(true);
    valid_payload_choice(keep_payload, schema.as_ref())?;
    let on_invalid = form.on_invalid.unwrap_or_default();
    let max = app.config.sources_per_workspace_max;
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageSources)?;
        require_enabled_in(s, ws)?;
        ApiError::at_most(s.sources_of(ws.id).count(), max, "sources per workspace")?;
        if s.sources_of(ws.id).any(|x| x.slug == slug) {
            return Err(ApiError::new(
                ProblemType::SourceExists,
                format!("workspace {:?} already has a source {slug:?}", ws.slug),
            ));
        }
        let source = Source {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            slug,
            name,
            protocols,
            schema,
            on_invalid,
            keep_payload,
            created_at: Utc::now(),
        };
        let view = SourceView::from(&source);
        Ok((
            vec![Change::PutSource(source)],
            (StatusCode::CREATED, Json(view)),
        ))
    })
    .await
}

/// One source. Any member.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}/sources/{source}", tag = "sources",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("source" = String, Path, description = "Source slug")),
    responses((status = 200, body = SourceView), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn get_source(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, source)): ApiPath<(String, String)>,
) -> ApiResult<Json<SourceView>> {
    app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::View)?;
        find(s, ws, &source).map(|x| Json(SourceView::from(x)))
    })
}

/// Change a source's name, protocols, schema, `on_invalid` or `keep_payload`. A schema that an
/// output reading the source no longer fits is refused (`409 in-use`). Admin or Editor.
#[utoipa::path(patch, path = "/api/v1/workspaces/{workspace}/sources/{source}", tag = "sources",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("source" = String, Path, description = "Source slug")),
    request_body = SourceUpdate,
    responses((status = 200, body = SourceView), (status = 400, body = crate::problem::ProblemBody),
        (status = 403, body = crate::problem::ProblemBody), (status = 404, body = crate::problem::ProblemBody),
        (status = 409, body = crate::problem::ProblemBody)))]
pub async fn update_source(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, source)): ApiPath<(String, String)>,
    ApiJson(form): ApiJson<SourceUpdate>,
) -> ApiResult<Json<SourceView>> {
    let name = form.name.as_deref().map(valid_display_name).transpose()?;
    let protocols = form
        .protocols
        .map(|p| valid_protocols(Some(p)))
        .transpose()?;
    let schema = match form.schema {
        Some(Some(schema)) => Some(Some(valid_schema(schema).await?)),
        other => other,
    };
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageSources)?;
        require_enabled_in(s, ws)?;
        let mut updated = find(s, ws, &source)?.clone();
        if let Some(name) = name {
            updated.name = name;
        }
        if let Some(protocols) = protocols {
            updated.protocols = protocols;
        }
        if let Some(schema) = schema {
            updated.schema = schema;
        }
        if let Some(on_invalid) = form.on_invalid {
            updated.on_invalid = on_invalid;
        }
        if let Some(keep_payload) = form.keep_payload {
            updated.keep_payload = keep_payload;
        }
        valid_payload_choice(updated.keep_payload, updated.schema.as_ref())?;
        let view = SourceView::from(&updated);
        let changes = vec![Change::PutSource(updated)];
        references::refuse_broken_outputs(s, ws, &changes)?;
        Ok((changes, Json(view)))
    })
    .await
}

/// Delete a source; nodes refuse events for it from the next configuration version on. Its
/// data already in object storage stays. Refused (`409 in-use`) while outputs read it. Admin
/// or Editor.
#[utoipa::path(delete, path = "/api/v1/workspaces/{workspace}/sources/{source}", tag = "sources",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("source" = String, Path, description = "Source slug")),
    responses((status = 204), (status = 403, body = crate::problem::ProblemBody), (status = 404, body = crate::problem::ProblemBody),
        (status = 409, body = crate::problem::ProblemBody)))]
pub async fn delete_source(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, source)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageSources)?;
        require_enabled_in(s, ws)?;
        let changes = vec![Change::DeleteSource(find(s, ws, &source)?.id)];
        references::refuse_broken_outputs(s, ws, &changes)?;
        Ok((changes, StatusCode::NO_CONTENT))
    })
    .await
}
