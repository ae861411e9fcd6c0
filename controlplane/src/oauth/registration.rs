//! Dynamic Client Registration (RFC 7591) for public clients: no secret, PKCE instead. A
//! registration is anonymous, so it is bounded: per client address per hour, in the number of
//! clients kept, in every field's size; and a client unused for `oauth_client_unused_days` is
//! forgotten (`housekeeping.rs`).

use std::net::SocketAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use super::records::{OAuthChange, OAuthClient};
use super::scope::Scopes;
use super::{no_store, oauth_error, CLIENT_ID_PREFIX};
use crate::app::App;
use crate::rate_limit::client_key;
use crate::store::Change;

/// Redirect URIs one client may register at most.
pub const REDIRECT_URIS_MAX: usize = 10;
/// Longest redirect URI accepted.
pub const REDIRECT_URI_BYTES_MAX: usize = 2048;
/// Longest client name kept (characters); longer names are cut.
pub const CLIENT_NAME_CHARS_MAX: usize = 100;
/// Registered clients kept at most; past it registration is refused until unused ones expire.
pub const CLIENTS_MAX: usize = 100_000;

/// The fields of a registration request this server reads; others are ignored (RFC 7591 §2).
#[derive(Debug, Deserialize)]
pub struct RegistrationRequest {
    #[serde(default)]
    redirect_uris: Vec<String>,
    client_name: Option<String>,
    token_endpoint_auth_method: Option<String>,
    grant_types: Option<Vec<String>>,
    response_types: Option<Vec<String>>,
    scope: Option<String>,
}

/// Whether `uri` may be a redirect URI: `https`, `http` to a loopback address (RFC 8252 §7.3;
/// any port then matches), or a private-use scheme with a dot in it (RFC 8252 §7.1); never
/// with a fragment.
pub fn redirect_uri_allowed(uri: &str) -> Result<(), String> {
    if uri.len() > REDIRECT_URI_BYTES_MAX {
        return Err(format!(
            "a redirect URI has at most {REDIRECT_URI_BYTES_MAX} bytes"
        ));
    }
    let url = url::Url::parse(uri).map_err(|e| format!("{uri:?} is not a URL: {e}"))?;
    if url.fragment().is_some() {
        return Err(format!("{uri:?} has a fragment"));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&url) => Ok(()),
        "http" => Err(format!(
            "{uri:?}: http redirect URIs must be loopback (127.0.0.1, [::1] or localhost)"
        )),
        scheme if scheme.contains('.') => Ok(()),
        scheme => Err(format!(
            "{uri:?}: the scheme {scheme:?} is neither https, loopback http nor a private-use scheme (reverse domain name)"
        )),
    }
}

/// An `http` URL to this machine, whose port a client picks when it starts.
pub fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Whether `presented` is one of `registered`: exactly, or for loopback `http` URIs the same
/// but for the port (RFC 8252 §7.3).
pub fn redirect_uri_matches(registered: &[String], presented: &str) -> bool {
    if registered.iter().any(|r| r == presented) {
        return true;
    }
    let Ok(presented) = url::Url::parse(presented) else {
        return false;
    };
    if presented.scheme() != "http" || !is_loopback(&presented) {
        return false;
    }
    registered.iter().any(|r| {
        url::Url::parse(r).is_ok_and(|mut r| {
            r.scheme() == "http"
                && is_loopback(&r)
                && r.set_port(presented.port()).is_ok()
                && r == presented
        })
    })
}

/// A client name as kept: control characters dropped, cut to [`CLIENT_NAME_CHARS_MAX`].
pub fn clean_name(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_control())
        .take(CLIENT_NAME_CHARS_MAX)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Checks a registration request; the client to keep, or the `invalid_*` error.
fn checked(
    request: RegistrationRequest,
) -> Result<(Vec<String>, String, Scopes), (&'static str, String)> {
    let invalid = |error: &'static str, detail: String| (error, detail);
    if request.redirect_uris.is_empty() || request.redirect_uris.len() > REDIRECT_URIS_MAX {
        return Err(invalid(
            "invalid_redirect_uri",
            format!("give 1 to {REDIRECT_URIS_MAX} redirect_uris"),
        ));
    }
    for uri in &request.redirect_uris {
        redirect_uri_allowed(uri).map_err(|e| invalid("invalid_redirect_uri", e))?;
    }
    if let Some(method) = request
        .token_endpoint_auth_method
        .as_deref()
        .filter(|m| *m != "none")
    {
        return Err(invalid(
            "invalid_client_metadata",
            format!(
                "token_endpoint_auth_method {method:?}: only public clients (\"none\") are registered; they prove themselves with PKCE"
            ),
        ));
    }
    let grants_ok = request
        .grant_types
        .iter()
        .flatten()
        .all(|g| g == "authorization_code" || g == "refresh_token");
    let responses_ok = request.response_types.iter().flatten().all(|r| r == "code");
    if !grants_ok || !responses_ok {
        return Err(invalid(
            "invalid_client_metadata",
            "grant_types are authorization_code and refresh_token, response_types code".into(),
        ));
    }
    let scopes = Scopes::parse(request.scope.as_deref().unwrap_or(""))
        .map_err(|e| invalid("invalid_client_metadata", e.to_string()))?;
    let name = clean_name(request.client_name.as_deref().unwrap_or(""));
    let name = if name.is_empty() {
        "an unnamed client".to_owned()
    } else {
        name
    };
    Ok((request.redirect_uris, name, scopes))
}

/// `POST /oauth/register`.
pub async fn register(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<RegistrationRequest>, JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(body) => body,
        Err(e) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_client_metadata",
                format!("the body is not a registration request: {}", e.body_text()),
            );
        }
    };
    let (redirect_uris, client_name, scopes) = match checked(request) {
        Ok(client) => client,
        Err((error, detail)) => return oauth_error(StatusCode::BAD_REQUEST, error, detail),
    };
    if let Err(retry_after) = app
        .oauth
        .registrations_per_address
        .hit(&client_key(peer.ip()))
    {
        let mut response = oauth_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!(
                "too many registrations from your address; retry in {retry_after} s, or reuse the client you registered"
            ),
        );
        if let Ok(value) = HeaderValue::from_str(&retry_after.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let now = Utc::now();
    let client = OAuthClient {
        client_id: crate::auth::new_secret(CLIENT_ID_PREFIX),
        client_name,
        redirect_uris,
        created_at: now,
        last_used_at: now,
    };
    let kept = client.clone();
    let stored = app
        .write(move |s| {
            if s.oauth.clients.len() >= CLIENTS_MAX {
                return Err(crate::problem::ApiError::new(
                    crate::problem::ProblemType::LimitReached,
                    "too many registered clients; retry later",
                ));
            }
            Ok((vec![Change::OAuth(OAuthChange::PutClient(kept))], ()))
        })
        .await;
    if let Err(e) = stored {
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            e.detail,
        );
    }
    tracing::info!(client = %client.client_id, name = %client.client_name, "OAuth client registered");
    let mut answer = json!({
        "client_id": client.client_id,
        "client_id_issued_at": now.timestamp(),
        "client_name": client.client_name,
        "redirect_uris": client.redirect_uris,
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    });
    if !scopes.is_empty() {
        answer["scope"] = scopes.to_string().into();
    }
    let mut response = (StatusCode::CREATED, Json(answer)).into_response();
    no_store(&mut response);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_are_https_loopback_or_private_use_and_loopback_ports_are_free() {
        assert!(redirect_uri_allowed("https://app.example/cb").is_ok());
        assert!(redirect_uri_allowed("http://127.0.0.1:3000/cb").is_ok());
        assert!(redirect_uri_allowed("http://localhost/cb").is_ok());
        assert!(redirect_uri_allowed("com.example.app:/cb").is_ok());
        assert!(redirect_uri_allowed("http://evil.example/cb").is_err());
        assert!(redirect_uri_allowed("javascript:alert(1)").is_err());
        assert!(redirect_uri_allowed("https://app.example/cb#x").is_err());
        let registered = vec!["http://127.0.0.1:3000/cb".to_owned()];
        assert!(redirect_uri_matches(
            &registered,
            "http://127.0.0.1:49152/cb"
        ));
        assert!(!redirect_uri_matches(
            &registered,
            "http://127.0.0.1:49152/other"
        ));
        assert!(!redirect_uri_matches(
            &registered,
            "http://localhost:3000/cb"
        ));
        let https = vec!["https://app.example/cb".to_owned()];
        assert!(redirect_uri_matches(&https, "https://app.example/cb"));
        assert!(!redirect_uri_matches(&https, "https://app.example:8443/cb"));
    }
}
