//! `/oauth/authorize`: the authorization code flow with PKCE (S256 only) for one MCP
//! resource. The page uses the existing sign-in: without a session cookie it sends the browser
//! to `/login` and back. Signed in, it shows a consent page naming the client, the workspace
//! and the scopes; its form (POST, carrying the id of this consent, which is bound to the
//! session that saw it, as CSRF token) issues the code.
//!
//! Errors before the client and its redirect URI are known show a page and never redirect
//! (RFC 6749 §4.1.2.1): a redirect to an unchecked URI would make this an open redirector.

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;

use super::client_metadata::is_document_url;
use super::records::{AuthCode, OAuthChange};
use super::registration::redirect_uri_matches;
use super::scope::Scopes;
use super::{issuer, resource_workspace, Consent, CODE_PREFIX, CODE_TTL};
use crate::api::authorize as authorize_member;
use crate::api::html;
use crate::app::App;
use crate::auth::{presented_secret_from_headers, sha256_hex, Caller};
use crate::roles::{Action, Role};
use crate::store::Change;

/// Where this flow lives, for the sign-in form's `next`.
pub const AUTHORIZE_PATH: &str = "/oauth/authorize";
/// How a return to this flow after signing in starts (the sign-in form's `next`).
pub const AUTHORIZE_PATH_QUERY: &str = "/oauth/authorize?";

/// The authorization request's parameters (RFC 6749 §4.1.1, RFC 7636, RFC 8707).
#[derive(Debug, Default, Deserialize)]
pub struct AuthorizeQuery {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    resource: Option<String>,
}

/// The consent form's fields.
#[derive(Debug, Deserialize)]
pub struct ConsentForm {
    consent: String,
    decision: String,
}

/// Who the client is, as the authorization server knows it.
struct Client {
    name: String,
    redirect_uris: Vec<String>,
}

async fn client(app: &App, client_id: &str) -> Result<Client, String> {
    if is_document_url(client_id) {
        let document = app
            .oauth
            .client_documents
            .get(client_id, app.config.smtp_allow_private_hosts)
            .await?;
        return Ok(Client {
            name: document.client_name,
            redirect_uris: document.redirect_uris,
        });
    }
    app.store
        .read(|s| {
            s.oauth.clients.get(client_id).map(|c| Client {
                name: c.client_name.clone(),
                redirect_uris: c.redirect_uris.clone(),
            })
        })
        .ok_or_else(|| {
            format!("the client {client_id:?} is not registered here (or expired unused): let your MCP client register again")
        })
}

/// A page that says what is wrong, for errors that must not redirect.
fn error_page(status: StatusCode, detail: &str) -> Response {
    let mut response = html::page(
        status,
        "Authorization failed",
        &format!("<p role=\"alert\">{}</p>", html::escape(detail)),
    );
    guard_page(&mut response);
    response
}

/// Pages of this flow are never framed (clickjacking) nor cached. No `form-action`: browsers
/// apply it to the redirect that follows the consent form too, which goes to the client's
/// registered `redirect_uri` (checked here), and Chromium would block it.
fn guard_page(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// `redirect_uri` with `pairs` added to its query, and `iss` (RFC 9207).
fn back_to_client(
    app: &App,
    redirect_uri: &str,
    pairs: &[(&str, &str)],
    state: Option<&str>,
) -> Response {
    let Ok(mut url) = url::Url::parse(redirect_uri) else {
        return error_page(StatusCode::BAD_REQUEST, "the redirect URI is not a URL");
    };
    {
        let mut query = url.query_pairs_mut();
        for (k, v) in pairs {
            query.append_pair(k, v);
        }
        if let Some(state) = state {
            query.append_pair("state", state);
        }
        query.append_pair("iss", &issuer(app));
    }
    let mut response = (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, url.as_str().to_owned())],
    )
        .into_response();
    guard_page(&mut response);
    response
}

fn refuse(
    app: &App,
    redirect_uri: &str,
    state: Option<&str>,
    error: &str,
    detail: &str,
) -> Response {
    back_to_client(
        app,
        redirect_uri,
        &[("error", error), ("error_description", detail)],
        state,
    )
}

/// `GET /oauth/authorize`: checks the request, then signs in (via `/login`) and shows the
/// consent page.
pub async fn authorize_page(
    State(app): State<App>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    query: Result<Query<AuthorizeQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "the authorization request's parameters are malformed",
        );
    };
    let Some(client_id) = q.client_id.as_deref().filter(|c| !c.is_empty()) else {
        return error_page(StatusCode::BAD_REQUEST, "client_id is missing");
    };
    let client = match client(&app, client_id).await {
        Ok(client) => client,
        Err(detail) => return error_page(StatusCode::BAD_REQUEST, &detail),
    };
    let Some(redirect_uri) = q.redirect_uri.as_deref() else {
        return error_page(StatusCode::BAD_REQUEST, "redirect_uri is missing");
    };
    if !redirect_uri_matches(&client.redirect_uris, redirect_uri) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "redirect_uri is not one the client registered",
        );
    }
    let state = q.state.as_deref();
    let refuse = |error: &str, detail: &str| refuse(&app, redirect_uri, state, error, detail);
    if q.response_type.as_deref() != Some("code") {
        return refuse("unsupported_response_type", "response_type must be code");
    }
    match (
        q.code_challenge.as_deref(),
        q.code_challenge_method.as_deref(),
    ) {
        (Some(challenge), Some("S256"))
            if challenge.len() == 43
                && challenge
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') => {}
        (_, Some(method)) if method != "S256" => {
            return refuse(
                "invalid_request",
                "code_challenge_method must be S256; plain is refused",
            );
        }
        _ => {
            return refuse(
                "invalid_request",
                "PKCE is required: code_challenge (S256, 43 characters) and code_challenge_method=S256",
            );
        }
    }
    let Some(resource) = q.resource.as_deref() else {
        return refuse(
            "invalid_target",
            "resource is required: the MCP URL of a workspace, <public_url>/mcp/<workspace>",
        );
    };
    let Some(slug) = resource_workspace(&app, resource) else {
        return refuse(
            "invalid_target",
            "resource is not an MCP URL of this server (<public_url>/mcp/<workspace>)",
        );
    };
    let scopes = match Scopes::parse(q.scope.as_deref().unwrap_or("")) {
        Ok(scopes) if scopes.is_empty() => Scopes::default_grant(),
        Ok(scopes) => scopes,
        Err(e) => return refuse("invalid_scope", &e.to_string()),
    };
    let Some(secret) = presented_secret_from_headers(&headers) else {
        return to_sign_in(&uri);
    };
    let Some(caller) = Caller::from_secret(&app, &secret) else {
        return to_sign_in(&uri);
    };
    let member = app.store.read(|s| {
        authorize_member(s, &caller, slug, Action::View)
            .map(|(ws, role)| (ws.id, ws.slug.clone(), ws.name.clone(), role))
    });
    let (workspace_id, ws_slug, ws_name, role) = match member {
        Ok(member) => member,
        Err(_) => {
            return refuse(
                "access_denied",
                "you are not a member of the workspace this MCP URL names",
            );
        }
    };
    let consent = Consent {
        session_sha256: sha256_hex(&secret),
        user_id: caller.user.id,
        workspace_id,
        client_id: client_id.to_owned(),
        client_name: client.name.clone(),
        redirect_uri: redirect_uri.to_owned(),
        code_challenge: q.code_challenge.clone().unwrap_or_default(),
        scopes: scopes.clone(),
        resource: super::mcp_url(&app, &ws_slug),
        state: q.state.clone(),
        shown_at: std::time::Instant::now(),
    };
    let Some(consent_id) = app.oauth.open_consent(consent) else {
        return refuse(
            "temporarily_unavailable",
            "too many authorizations in progress; retry shortly",
        );
    };
    consent_page(
        &caller,
        &client.name,
        client_id,
        &ws_name,
        &ws_slug,
        role,
        &scopes,
        &consent_id,
    )
}

/// To the sign-in form, and back here afterwards.
fn to_sign_in(uri: &axum::http::Uri) -> Response {
    let back = format!("{AUTHORIZE_PATH}?{}", uri.query().unwrap_or(""));
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("next", &back)
        .finish();
    let mut response = (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, format!("/login?{query}"))],
    )
        .into_response();
    guard_page(&mut response);
    response
}

#[allow(clippy::too_many_arguments)]
fn consent_page(
    caller: &Caller,
    client_name: &str,
    client_id: &str,
    ws_name: &str,
    ws_slug: &str,
    role: Role,
    scopes: &Scopes,
    consent_id: &str,
) -> Response {
    let items: String = scopes
        .0
        .iter()
        .map(|s| {
            format!(
                "<li><code>{}</code>: {}</li>",
                s.as_str(),
                html::escape(s.description())
            )
        })
        .collect();
    let role_note = match role {
        Role::Viewer => {
            "Your role there is Viewer: whatever the scopes say, the client can only read."
        }
        Role::Editor => {
            "Your role there is Editor: the client can do what an Editor can, within these scopes."
        }
        Role::Admin => {
            "Your role there is Admin: the client can do what an Admin can, within these scopes."
        }
    };
    let body = format!(
        "<p><strong>{client}</strong> (<code>{client_id}</code>) asks to act as you, {email}, \
in the workspace <strong>{ws_name}</strong> (<code>{ws_slug}</code>) through its MCP endpoint, with these scopes:</p>\
<ul>{items}</ul><p>{role_note}</p>\
<p>Its access lasts until you or an Admin revoke it (the workspace's OAuth grants).</p>\
<form method=\"post\" action=\"{AUTHORIZE_PATH}\">\
<input type=\"hidden\" name=\"consent\" value=\"{consent}\">\
<p><button name=\"decision\" value=\"allow\">Allow</button> \
<button name=\"decision\" value=\"deny\">Deny</button></p></form>",
        client = html::escape(client_name),
        client_id = html::escape(client_id),
        email = html::escape(&caller.user.email),
        ws_name = html::escape(ws_name),
        ws_slug = html::escape(ws_slug),
        consent = html::escape(consent_id),
    );
    let mut response = html::page(StatusCode::OK, "Allow access to Sluice?", &body);
    guard_page(&mut response);
    response
}

/// `POST /oauth/authorize`: the consent form. Allow issues a code to the client's redirect
/// URI; Deny sends `access_denied` there.
pub async fn consent_form(
    State(app): State<App>,
    headers: HeaderMap,
    form: Result<Form<ConsentForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return error_page(StatusCode::BAD_REQUEST, "the consent form is malformed");
    };
    let secret = presented_secret_from_headers(&headers).unwrap_or_default();
    let Some(consent) = app.oauth.take_consent(&form.consent, &sha256_hex(&secret)) else {
        return error_page(
            StatusCode::FORBIDDEN,
            "this consent page expired, was answered already or was shown to another session; start again from your MCP client",
        );
    };
    let caller = Caller::from_secret(&app, &secret);
    let Some(caller) = caller.filter(|c| c.user.id == consent.user_id) else {
        return error_page(
            StatusCode::FORBIDDEN,
            "your session ended; sign in and start again from your MCP client",
        );
    };
    let state = consent.state.as_deref();
    if form.decision != "allow" {
        return refuse(
            &app,
            &consent.redirect_uri,
            state,
            "access_denied",
            "the user denied access",
        );
    }
    let code = crate::auth::new_secret(CODE_PREFIX);
    let record = AuthCode {
        sha256: sha256_hex(&code),
        client_id: consent.client_id.clone(),
        client_name: consent.client_name.clone(),
        redirect_uri: consent.redirect_uri.clone(),
        code_challenge: consent.code_challenge.clone(),
        user_id: caller.user.id,
        workspace_id: consent.workspace_id,
        scopes: consent.scopes.clone(),
        resource: consent.resource.clone(),
        expires_at: Utc::now() + CODE_TTL,
        redeemed: None,
    };
    let workspace = consent.workspace_id.to_string();
    let stored = app
        .write(move |s| {
            // Still a member now, not only when the page was shown.
            authorize_member(s, &caller, &workspace, Action::View)?;
            let mut changes = vec![Change::OAuth(OAuthChange::PutCode(record))];
            if let Some(mut client) = s.oauth.clients.get(&consent.client_id).cloned() {
                client.last_used_at = Utc::now();
                changes.push(Change::OAuth(OAuthChange::PutClient(client)));
            }
            Ok((changes, ()))
        })
        .await;
    if let Err(e) = stored {
        return refuse(
            &app,
            &consent.redirect_uri,
            state,
            "access_denied",
            &e.detail,
        );
    }
    back_to_client(&app, &consent.redirect_uri, &[("code", &code)], state)
}
