//! Export endpoints: the URLs at which end-users read an output with a `read` token,
//! `/v1/stream/{workspace}/{endpoint}` on the data plane.
//!
//! An endpoint names its output by slug; its own slug is fixed once created, since its URL and
//! tokens name it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sluice_config::data_out::{self, ENDPOINTS_MAX};
use utoipa::ToSchema;
use uuid::Uuid;

use super::outputs::{optional_name_schema, valid_name};
use super::validate::valid_slug;
use super::{authorize, require_enabled_in, ApiJson, ApiPath, ApiQuery, Page, PageQuery};
use crate::app::App;
use crate::auth::Caller;
use crate::model::{ExportEndpoint, Workspace};
use crate::problem::{ApiError, ApiResult, ProblemType};
use crate::references;
use crate::roles::Action;
use crate::store::{Change, State as Data};

/// An export endpoint as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportEndpointView {
    /// UUIDv7.
    pub id: Uuid,
    /// Unique in the workspace; in its URL and in `read` tokens' `endpoints`. Fixed once
    /// created.
    pub slug: String,
    pub name: String,
    /// The slug of the output it serves.
    pub output: String,
    /// Where the data plane serves it, relative to a node's address:
    /// `/v1/stream/{workspace-slug}/{endpoint-slug}`.
    pub url: String,
    pub created_at: DateTime<Utc>,
}

impl ExportEndpointView {
    fn new(ws: &Workspace, e: &ExportEndpoint) -> Self {
        ExportEndpointView {
            id: e.id,
            slug: e.slug.clone(),
            name: e.name.clone(),
            output: e.output.clone(),
            url: format!("/v1/stream/{}/{}", ws.slug, e.slug),
            created_at: e.created_at,
        }
    }
}

/// A new export endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewExportEndpoint {
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
}

/// Changes to an export endpoint; absent fields stay as they are. The slug cannot change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportEndpointUpdate {
    #[schema(schema_with = optional_name_schema)]
    pub name: Option<String>,
    /// Another output of the workspace to serve, from the next configuration version on.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = r"^[a-z0-9][a-z0-9-]{0,62}$"
    )]
    pub output: Option<String>,
}

fn find<'s>(s: &'s Data, ws: &Workspace, slug: &str) -> ApiResult<&'s ExportEndpoint> {
    s.export_endpoints_of(ws.id)
        .find(|e| e.slug == slug)
        .ok_or_else(|| {
            ApiError::new(
                ProblemType::UnknownExportEndpoint,
                format!("no export endpoint {slug:?} in workspace {:?}", ws.slug),
            )
        })
}

/// Checks `endpoint` as nodes will, and that its output exists; `endpoint` replaces any stored
/// endpoint of the same id.
fn valid_endpoint(s: &Data, ws: &Workspace, endpoint: &ExportEndpoint) -> ApiResult<()> {
    let invalid = |e: data_out::DataOutError| {
        ApiError::new(ProblemType::InvalidExportEndpoint, e.to_string())
    };
    let config = endpoint.config();
    config.check().map_err(invalid)?;
    if !s.outputs_of(ws.id).any(|o| o.slug == endpoint.output) {
        return Err(ApiError::new(
            ProblemType::UnknownNamedOutput,
            format!(
                "export endpoint {:?} serves output {:?}, which workspace {:?} does not have",
                endpoint.slug, endpoint.output, ws.slug
            ),
        ));
    }
    let mut all = references::DataOut::of(s, ws.id);
    all.endpoints.retain(|e| e.id != endpoint.id);
    all.endpoints.push(config);
    all.check().map_err(invalid)
}

/// Export endpoints of a workspace. Any member.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}/export-endpoints", tag = "export-endpoints",
    params(("workspace" = String, Path, description = "Workspace id or slug"), PageQuery),
    responses((status = 200, body = Page<ExportEndpointView>), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn list_export_endpoints(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<ExportEndpointView>>> {
    let items = app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::View)?;
        Ok::<_, ApiError>(
            s.export_endpoints_of(ws.id)
                .map(|e| (e.id.to_string(), ExportEndpointView::new(ws, e)))
                .collect::<Vec<_>>(),
        )
    })?;
    page.page(&app, items).map(Json)
}

/// Create an export endpoint. Admin or Editor.
#[utoipa::path(post, path = "/api/v1/workspaces/{workspace}/export-endpoints", tag = "export-endpoints",
    params(("workspace" = String, Path, description = "Workspace id or slug")),
    request_body = NewExportEndpoint,
    responses((status = 201, body = ExportEndpointView), (status = 400, body = crate::problem::ProblemBody),
        (status = 403, body = crate::problem::ProblemBody), (status = 404, body = crate::problem::ProblemBody),
        (status = 409, body = crate::problem::ProblemBody)))]
pub async fn create_export_endpoint(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    ApiJson(form): ApiJson<NewExportEndpoint>,
) -> ApiResult<(StatusCode, Json<ExportEndpointView>)> {
    let slug = valid_slug(&form.slug)?;
    let name = match &form.name {
        Some(name) => valid_name(name)?,
        None => slug.clone(),
    };
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageOutputs)?;
        require_enabled_in(s, ws)?;
        ApiError::at_most(
            s.export_endpoints_of(ws.id).count(),
            ENDPOINTS_MAX,
            "export endpoints per workspace",
        )?;
        if s.export_endpoints_of(ws.id).any(|e| e.slug == slug) {
            return Err(ApiError::new(
                ProblemType::ExportEndpointExists,
                format!(
                    "workspace {:?} already has an export endpoint {slug:?}",
                    ws.slug
                ),
            ));
        }
        let endpoint = ExportEndpoint {
            id: Uuid::now_v7(),
            workspace_id: ws.id,
            slug,
            name,
            output: form.output,
            created_at: Utc::now(),
        };
        valid_endpoint(s, ws, &endpoint)?;
        let view = ExportEndpointView::new(ws, &endpoint);
        Ok((
            vec![Change::PutExportEndpoint(endpoint)],
            (StatusCode::CREATED, Json(view)),
        ))
    })
    .await
}

/// One export endpoint. Any member.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}/export-endpoints/{endpoint}", tag = "export-endpoints",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("endpoint" = String, Path, description = "Export endpoint slug")),
    responses((status = 200, body = ExportEndpointView), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn get_export_endpoint(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, endpoint)): ApiPath<(String, String)>,
) -> ApiResult<Json<ExportEndpointView>> {
    app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::View)?;
        find(s, ws, &endpoint).map(|e| Json(ExportEndpointView::new(ws, e)))
    })
}

/// Change an export endpoint's name or the output it serves. Admin or Editor.
#[utoipa::path(patch, path = "/api/v1/workspaces/{workspace}/export-endpoints/{endpoint}", tag = "export-endpoints",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("endpoint" = String, Path, description = "Export endpoint slug")),
    request_body = ExportEndpointUpdate,
    responses((status = 200, body = ExportEndpointView), (status = 400, body = crate::problem::ProblemBody),
        (status = 403, body = crate::problem::ProblemBody), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn update_export_endpoint(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, endpoint)): ApiPath<(String, String)>,
    ApiJson(form): ApiJson<ExportEndpointUpdate>,
) -> ApiResult<Json<ExportEndpointView>> {
    let name = form.name.as_deref().map(valid_name).transpose()?;
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageOutputs)?;
        require_enabled_in(s, ws)?;
        let mut updated = find(s, ws, &endpoint)?.clone();
        if let Some(name) = name {
            updated.name = name;
        }
        if let Some(output) = form.output {
            updated.output = output;
        }
        valid_endpoint(s, ws, &updated)?;
        let view = ExportEndpointView::new(ws, &updated);
        Ok((vec![Change::PutExportEndpoint(updated)], Json(view)))
    })
    .await
}

/// Delete an export endpoint; refused (`409 in-use`) while access tokens name it. Nodes stop
/// serving it from the next configuration version on. Admin or Editor.
#[utoipa::path(delete, path = "/api/v1/workspaces/{workspace}/export-endpoints/{endpoint}", tag = "export-endpoints",
    params(("workspace" = String, Path, description = "Workspace id or slug"),
        ("endpoint" = String, Path, description = "Export endpoint slug")),
    responses((status = 204), (status = 403, body = crate::problem::ProblemBody),
        (status = 404, body = crate::problem::ProblemBody), (status = 409, body = crate::problem::ProblemBody)))]
pub async fn delete_export_endpoint(
    State(app): State<App>,
    caller: Caller,
    ApiPath((workspace, endpoint)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageOutputs)?;
        require_enabled_in(s, ws)?;
        let found = find(s, ws, &endpoint)?;
        references::refuse_endpoint_in_use(s, ws, &found.slug)?;
        Ok((
            vec![Change::DeleteExportEndpoint(found.id)],
            StatusCode::NO_CONTENT,
        ))
    })
    .await
}
