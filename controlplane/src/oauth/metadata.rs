//! The two discovery documents: the authorization server's (RFC 8414, also served as the
//! OpenID discovery alias, which clients try first or second) and each workspace MCP URL's
//! protected-resource metadata (RFC 9728), which a `401` from `/mcp/{workspace}` points to.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::scope::Scope;
use super::{issuer, mcp_url};
use crate::app::App;

/// `GET /.well-known/oauth-authorization-server` (and `/.well-known/openid-configuration`).
pub async fn authorization_server(State(app): State<App>) -> Response {
    let issuer = issuer(&app);
    let scopes: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/oauth/authorize"),
        "token_endpoint": format!("{issuer}/oauth/token"),
        "registration_endpoint": format!("{issuer}/oauth/register"),
        "revocation_endpoint": format!("{issuer}/oauth/revoke"),
        "scopes_supported": scopes,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "introspection_endpoint": format!("{issuer}/oauth/introspect"),
        "code_challenge_methods_supported": ["S256"],
        "client_id_metadata_document_supported": true,
        "authorization_response_iss_parameter_supported": true,
        "service_documentation": format!("{issuer}/api/v1/openapi.json"),
    }))
    .into_response()
}

/// `GET /.well-known/oauth-protected-resource/mcp/{workspace}` (and under the MCP URL).
/// Served for any slug, so that it tells nobody which workspaces exist.
pub async fn protected_resource(State(app): State<App>, Path(workspace): Path<String>) -> Response {
    let scopes: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
    Json(json!({
        "resource": mcp_url(&app, &workspace),
        "authorization_servers": [issuer(&app)],
        "scopes_supported": scopes,
        "bearer_methods_supported": ["header"],
        "resource_name": format!("Sluice workspace {workspace}"),
    }))
    .into_response()
}
