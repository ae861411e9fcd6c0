//! CORS: the browser origins allowed to call a workspace's ingest endpoints.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{authorize, require_enabled_in, ApiJson, ApiPath};
use crate::app::App;
use crate::auth::Caller;
use crate::problem::{ApiError, ApiResult, ProblemType};
use crate::roles::Action;
use crate::store::Change;

/// CORS origins per workspace at most.
const ORIGINS_MAX: usize = 100;

/// The browser origins allowed to call the workspace's ingest endpoints.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Origins such as `https://app.example.com`.
    pub allowed_origins: Vec<String>,
}

/// The workspace's CORS origins. Any member.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}/cors", tag = "sources",
    params(("workspace" = String, Path, description = "Workspace id or slug")),
    responses((status = 200, body = Cors), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn get_cors(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
) -> ApiResult<Json<Cors>> {
    app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::View)?;
        Ok(Json(Cors {
            allowed_origins: ws.cors_allowed_origins.clone(),
        }))
    })
}

/// Checks an origin: `http` or `https`, a host, an optional port, nothing else.
fn valid_origin(origin: &str) -> ApiResult<String> {
    let bad = || {
        ApiError::new(
            ProblemType::InvalidOrigin,
            format!("{origin:?} is not an origin like https://app.example.com"),
        )
    };
    let url = url::Url::parse(origin).map_err(|_| bad())?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && !origin.trim_end_matches('/').ends_with(':');
    if !plain || origin.ends_with('/') {
        return Err(bad());
    }
    Ok(url.origin().ascii_serialization())
}

/// Replace the workspace's CORS origins. Admin only.
#[utoipa::path(put, path = "/api/v1/workspaces/{workspace}/cors", tag = "sources",
    params(("workspace" = String, Path, description = "Workspace id or slug")),
    request_body = Cors,
    responses((status = 200, body = Cors), (status = 400, body = crate::problem::ProblemBody),
        (status = 403, body = crate::problem::ProblemBody), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn set_cors(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    ApiJson(form): ApiJson<Cors>,
) -> ApiResult<Json<Cors>> {
    if form.allowed_origins.len() > ORIGINS_MAX {
        return Err(ApiError::new(
            ProblemType::InvalidOrigin,
            format!("at most {ORIGINS_MAX} origins"),
        ));
    }
    let mut origins = Vec::new();
    for origin in &form.allowed_origins {
        let origin = valid_origin(origin)?;
        if !origins.contains(&origin) {
            origins.push(origin);
        }
    }
    app.write(move |s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::ManageCors)?;
        require_enabled_in(s, ws)?;
        let mut ws = ws.clone();
        ws.cors_allowed_origins = origins.clone();
        Ok((
            vec![Change::PutWorkspace(ws)],
            Json(Cors {
                allowed_origins: origins,
            }),
        ))
    })
    .await
}
