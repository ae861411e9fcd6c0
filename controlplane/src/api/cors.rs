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
    #[schema(schema_with = origins_schema)]
    pub allowed_origins: Vec<String>,
}

/// `allowed_origins` in the OpenAPI document: what [`valid_origin`] accepts, at most
/// [`ORIGINS_MAX`]. The pattern takes host names whose last label starts with a letter, IPv4
/// addresses and ports up to 65535; `valid_origin` also accepts bracketed IPv6 addresses.
fn origins_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    const IPV4_BYTE: &str = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
    const PORT: &str =
        "(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})";
    let pattern = format!(
        "^https?://(?:(?:[A-Za-z0-9-]+\\.)*[A-Za-z][A-Za-z0-9-]*|(?:{IPV4_BYTE}\\.){{3}}{IPV4_BYTE})(?::{PORT})?$"
    );
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(pattern)),
        )
        .max_items(Some(ORIGINS_MAX))
        .description(Some(
            "`http` or `https`, a host and an optional port, nothing else; at most 100",
        ))
        .build()
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
    // The URL standard lets `*`, `!` and the like into a host; no browser sends such an origin.
    let host = match url.host() {
        Some(url::Host::Domain(name)) => name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
        Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => true,
        None => false,
    };
    let plain = matches!(url.scheme(), "http" | "https")
        && host
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none()
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

#[cfg(test)]
mod tests {
    use super::valid_origin;

    #[test]
    fn an_origin_is_a_scheme_a_host_and_a_port_only() {
        for good in [
            "https://app.example.com",
            "http://127.0.0.1:3000",
            "http://[::1]:8080",
            "HTTPS://App.Example.COM:443",
        ] {
            assert!(valid_origin(good).is_ok(), "{good}");
        }
        for bad in [
            "http://255.40.0.250*",
            "http://a!b.example",
            "http://:secret@app.example.com",
            "http://user@app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://app.example.com:",
            "ftp://app.example.com",
            "app.example.com",
        ] {
            assert!(valid_origin(bad).is_err(), "{bad}");
        }
    }
}
