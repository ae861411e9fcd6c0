//! The workspace's AsyncAPI document (`crate::asyncapi`), in JSON or YAML.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use super::{authorize, ApiPath};
use crate::app::App;
use crate::auth::Caller;
use crate::problem::{ApiError, ApiResult};
use crate::roles::Action;

/// Media type of the YAML form.
const YAML: &str = "application/yaml";

/// Whether the request asks for YAML: an `Accept` naming a YAML type (before or without JSON).
fn wants_yaml(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    accept
        .split(',')
        .map(|t| t.split(';').next().unwrap_or_default().trim())
        .find(|t| {
            matches!(
                *t,
                "application/json" | "application/yaml" | "application/x-yaml" | "text/yaml"
            )
        })
        .is_some_and(|t| t != "application/json")
}

/// The document as the answer asks for it.
pub fn render(document: &serde_json::Value, yaml: bool) -> ApiResult<Response> {
    if yaml {
        let text = serde_yaml_ng::to_string(document)
            .map_err(|e| ApiError::internal(format!("writing the document as YAML: {e}")))?;
        return Ok(([(header::CONTENT_TYPE, YAML)], text).into_response());
    }
    let text = serde_json::to_string_pretty(document)
        .map_err(|e| ApiError::internal(format!("writing the document as JSON: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response())
}

/// The workspace as an AsyncAPI 3.0.0 document: its sources as channels, their schemas as
/// message payloads, its tag rules, with the ids that identify them (docs/asyncapi.md). JSON,
/// or YAML with `Accept: application/yaml`. Any member.
#[utoipa::path(get, path = "/api/v1/workspaces/{workspace}/asyncapi", tag = "asyncapi",
    params(("workspace" = String, Path, description = "Workspace id or slug")),
    responses(
        (status = 200, description = "The AsyncAPI 3.0.0 document",
            content((Object = "application/json"), (String = "application/yaml"))),
        (status = 404, body = crate::problem::ProblemBody)))]
pub async fn export_asyncapi(
    State(app): State<App>,
    caller: Caller,
    ApiPath(workspace): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let urls = app.config.device_urls();
    let document = app.store.read(|s| {
        let (ws, _) = authorize(s, &caller, &workspace, Action::View)?;
        Ok::<_, ApiError>(crate::asyncapi::export(s, ws, &urls))
    })?;
    render(&document, wants_yaml(&headers))
}

#[cfg(test)]
mod tests {
    use super::wants_yaml;
    use axum::http::{header, HeaderMap, HeaderValue};

    fn accept(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn yaml_is_given_when_asked_for_before_json() {
        assert!(!wants_yaml(&HeaderMap::new()));
        assert!(!wants_yaml(&accept("*/*")));
        assert!(wants_yaml(&accept("application/yaml")));
        assert!(wants_yaml(&accept(
            "text/yaml;q=0.9, application/json;q=0.5"
        )));
        assert!(!wants_yaml(&accept("application/json, application/yaml")));
    }
}
