//! The OAuth 2.1 authorization server of the MCP endpoints, and what their resource server
//! side needs: metadata (RFC 8414, RFC 9728), client registration (RFC 7591 and Client ID
//! Metadata Documents), the authorization code flow with PKCE S256 over the existing sign-in
//! session and a consent page, the token endpoint with rotating refresh tokens, revocation
//! (RFC 7009), introspection (RFC 7662, `introspect.rs`), and the lookup of an access token for one MCP URL (`bearer.rs`).
//!
//! Tokens are opaque random strings stored as SHA-256 hashes (`records.rs`), never JWTs: a
//! revoked grant's tokens stop at once, with no key to manage. Every token is bound to one
//! resource, the MCP URL of one workspace, and its effective permission is the member's role
//! intersected with its scopes (`scope.rs`).
//!
//! Endpoints here are specified by their RFCs and answer OAuth errors
//! (`{"error": ..., "error_description": ...}`), not problem+json; they are outside the
//! OpenAPI document. The workspace-owned grants are API operations (`api/oauth_grants.rs`).

pub mod authorize;
pub mod bearer;
pub mod client_metadata;
pub mod introspect;
pub mod metadata;
pub mod records;
pub mod registration;
pub mod scope;
pub mod token;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::app::App;
use crate::config::ControlPlaneConfig;
use crate::rate_limit::RateLimit;
use scope::Scopes;

/// Prefix of access tokens (recognisable by secret scanners, and by the MCP endpoint).
pub const ACCESS_TOKEN_PREFIX: &str = "sluice_oat_";
/// Prefix of refresh tokens.
pub const REFRESH_TOKEN_PREFIX: &str = "sluice_ort_";
/// Prefix of authorization codes.
pub const CODE_PREFIX: &str = "sluice_oac_";
/// Prefix of dynamically registered client ids.
pub const CLIENT_ID_PREFIX: &str = "sluice_ocl_";

/// How long an authorization code may wait for its exchange.
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// How long a refresh token works unused; each use gives a new one.
pub const REFRESH_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long the consent page may stay open before its form is refused.
const CONSENT_TTL: Duration = Duration::from_secs(600);
/// Consent pages open at once at most (each a few hundred bytes in memory).
const CONSENTS_MAX: usize = 10_000;
/// How often a grant's `last_used_at` is written at most (a write is an fsync).
pub const LAST_USED_RESOLUTION: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// What an OAuth access token lets its bearer do: act as the grant's member in one workspace,
/// within the grant's scopes.
#[derive(Debug, Clone)]
pub struct Delegation {
    pub workspace_id: Uuid,
    pub scopes: Scopes,
}

/// A consent page shown and not yet answered: what its form will grant, bound to the session
/// that saw it (its id is the form's CSRF token).
#[derive(Debug, Clone)]
pub struct Consent {
    /// SHA-256 of the session that was shown the page; the form must come with it.
    pub session_sha256: String,
    pub user_id: Uuid,
    pub workspace_id: Uuid,
    pub client_id: String,
    pub client_name: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub scopes: Scopes,
    pub resource: String,
    pub state: Option<String>,
    pub shown_at: Instant,
}

/// The authorization server's memory besides the store: consent pages open, client metadata
/// documents fetched, and the registration limit.
pub struct OAuth {
    consents: Mutex<HashMap<String, Consent>>,
    pub client_documents: client_metadata::Cache,
    /// Dynamic registrations per client address per hour.
    pub registrations_per_address: RateLimit,
}

impl OAuth {
    pub fn new(config: &ControlPlaneConfig) -> OAuth {
        OAuth {
            consents: Mutex::new(HashMap::new()),
            client_documents: client_metadata::Cache::default(),
            registrations_per_address: RateLimit::new(
                config.oauth_registrations_per_address_per_hour,
                Duration::from_secs(3600),
            ),
        }
    }

    /// Keeps `consent` under a new random id (the form's CSRF token); `None` when too many
    /// pages are open.
    pub fn open_consent(&self, consent: Consent) -> Option<String> {
        let mut consents = self.consents.lock().unwrap_or_else(|e| e.into_inner());
        if consents.len() >= CONSENTS_MAX {
            consents.retain(|_, c| c.shown_at.elapsed() < CONSENT_TTL);
            if consents.len() >= CONSENTS_MAX {
                return None;
            }
        }
        let id = crate::auth::new_secret("");
        consents.insert(id.clone(), consent);
        Some(id)
    }

    /// Takes the consent `id` (once), if it is still open and was shown to the session whose
    /// hash is `session_sha256`; a form from any other session leaves it open.
    pub fn take_consent(&self, id: &str, session_sha256: &str) -> Option<Consent> {
        let mut consents = self.consents.lock().unwrap_or_else(|e| e.into_inner());
        if consents.get(id)?.session_sha256 != session_sha256 {
            return None;
        }
        consents
            .remove(id)
            .filter(|c| c.shown_at.elapsed() < CONSENT_TTL)
    }
}

/// The issuer: the control plane's public URL (no trailing slash).
pub fn issuer(app: &App) -> String {
    app.config.public_url()
}

/// The MCP URL of a workspace, the resource its tokens are bound to.
pub fn mcp_url(app: &App, slug: &str) -> String {
    format!("{}/mcp/{slug}", issuer(app))
}

/// Where the protected-resource metadata of a workspace's MCP URL is (RFC 9728 §3.1).
pub fn resource_metadata_url(app: &App, slug: &str) -> String {
    format!(
        "{}/.well-known/oauth-protected-resource/mcp/{slug}",
        issuer(app)
    )
}

/// The workspace slug of an MCP URL of this server, e.g. `<public_url>/mcp/plant`; `None`
/// for any other URL. A query (`?mode=lean`) is allowed and ignored: the token is for the
/// workspace, whichever catalogue the client reads.
pub fn resource_workspace<'r>(app: &App, resource: &'r str) -> Option<&'r str> {
    let issuer = issuer(app);
    let rest = resource
        .strip_prefix(issuer.as_str())?
        .strip_prefix("/mcp/")?;
    let slug = rest.split(['?', '#']).next()?.trim_end_matches('/');
    (!slug.is_empty() && !slug.contains('/')).then_some(slug)
}

/// Whether `verifier` is the PKCE S256 verifier of `challenge` (RFC 7636 §4.6), with the
/// verifier's syntax checked (43 to 128 unreserved characters).
pub fn pkce_s256_matches(verifier: &str, challenge: &str) -> bool {
    let syntax = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    syntax
        && base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.as_bytes()))
            == challenge
}

/// An OAuth error answer (RFC 6749 §5.2), never cached.
pub fn oauth_error(status: StatusCode, error: &str, description: impl Into<String>) -> Response {
    let mut response = (
        status,
        Json(json!({"error": error, "error_description": description.into()})),
    )
        .into_response();
    no_store(&mut response);
    response
}

/// Marks an answer carrying secrets as not to be stored by caches (RFC 6749 §5.1).
pub fn no_store(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// The authorization server's endpoints and the metadata documents.
pub fn routes() -> Router<App> {
    Router::new()
        .route(
            "/.well-known/oauth-authorization-server",
            get(metadata::authorization_server),
        )
        .route(
            "/.well-known/openid-configuration",
            get(metadata::authorization_server),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp/{workspace}",
            get(metadata::protected_resource),
        )
        .route(
            "/mcp/{workspace}/.well-known/oauth-protected-resource",
            get(metadata::protected_resource),
        )
        .route("/oauth/register", post(registration::register))
        .route(
            "/oauth/authorize",
            get(authorize::authorize_page).post(authorize::consent_form),
        )
        .route("/oauth/token", post(token::token))
        .route("/oauth/revoke", post(token::revoke))
        .route("/oauth/introspect", post(introspect::introspect))
}

/// The OAuth records to forget at `now`: codes and tokens past their expiry, registered
/// clients last used before `unused_before`, and grants whose workspace or membership is gone
/// (with their tokens).
pub fn expired(
    s: &crate::store::State,
    now: chrono::DateTime<chrono::Utc>,
    unused_before: chrono::DateTime<chrono::Utc>,
) -> Vec<records::OAuthChange> {
    use records::OAuthChange;
    let mut changes: Vec<OAuthChange> = s
        .oauth
        .codes
        .values()
        .filter(|c| c.expires_at <= now)
        .map(|c| OAuthChange::DeleteCode(c.sha256.clone()))
        .collect();
    changes.extend(
        s.oauth
            .tokens
            .values()
            .filter(|t| t.expires_at <= now)
            .map(|t| OAuthChange::DeleteToken(t.sha256.clone())),
    );
    changes.extend(
        s.oauth
            .clients
            .values()
            .filter(|c| c.last_used_at < unused_before)
            .map(|c| OAuthChange::DeleteClient(c.client_id.clone())),
    );
    for grant in s.oauth.grants.values() {
        if !s.members.contains_key(&(grant.workspace_id, grant.user_id)) {
            changes.extend(s.oauth.grant_revocation(grant.id));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_matches_the_rfc_7636_example_and_refuses_bad_verifiers() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_s256_matches(verifier, challenge));
        assert!(!pkce_s256_matches(challenge, challenge));
        assert!(!pkce_s256_matches("short", challenge));
    }
}
