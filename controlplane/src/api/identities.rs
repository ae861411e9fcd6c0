//! Sign-in with OpenID Connect and OAuth 2 providers, and the identities it links:
//! `/auth/{provider}/start` sends the browser to the provider, `/auth/{provider}/callback`
//! finishes there and signs in, `/auth/verify` confirms an address the provider does not vouch
//! for by mailed code; `/api/v1/auth/providers` lists the providers and
//! `/api/v1/me/identities` lists and unlinks the caller's.
//!
//! Who an account signs in as, most secure rule first:
//! 1. an identity already linked (provider, subject) signs in as its user, whatever address
//!    the provider now gives;
//! 2. otherwise an address the provider asserts as verified, or one confirmed by mailed code,
//!    links the identity to the user with that address, or creates that user (a trial and a
//!    first workspace, as sign-up and verification give);
//! 3. an address nobody vouches for links nothing: the code comes first.
//!
//! Linking to an account whose address was never verified drops its password and sessions:
//! whoever set that password never proved the address, and could be someone who signed up
//! with another person's address to wait for them.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use openidconnect::{CsrfToken, Nonce, PkceCodeChallenge};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::codes::{code_mail, invalid_code, limit_code_attempts, limited, CODE_ATTEMPTS};
use super::links::{safe_next, LoginQuery};
use super::sessions::{session_cookie, start_session};
use super::validate::{valid_email, valid_name};
use super::workspaces::first_workspace;
use super::{html, ApiForm, ApiPath, ApiQuery, Page, PageQuery};
use crate::app::App;
use crate::auth::{self, Caller};
use crate::model::{CodePurpose, Identity, Plan, User};
use crate::problem::{ApiError, ApiResult, ProblemType};
use crate::rate_limit::client_key;
use crate::sign_in::config::ProviderKind;
use crate::sign_in::pending::MailedCode;
use crate::sign_in::{Account, SignInError};
use crate::store::Change;

/// The cookie that binds a sign-in in progress to the browser that started it.
pub const SIGN_IN_COOKIE: &str = "sluice_sign_in";
/// Where the form for the mailed code is sent.
const VERIFY_PATH: &str = "/auth/verify";

/// A configured sign-in provider.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderView {
    /// In the paths `/auth/{id}/start` and `/auth/{id}/callback`.
    pub id: String,
    /// The button's label.
    pub name: String,
    pub kind: ProviderKind,
    /// Where a browser starts signing in (add `?next=` to come back somewhere).
    pub start_url: String,
}

/// The configured sign-in providers.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderList {
    pub items: Vec<ProviderView>,
}

/// A provider account linked to the caller.
#[derive(Debug, Serialize, ToSchema)]
pub struct IdentityView {
    pub id: Uuid,
    /// The provider's id (`GET /api/v1/auth/providers`).
    pub provider: String,
    /// The address the provider gave when it was linked, if any.
    pub email: Option<String>,
    pub linked_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
}

impl From<&Identity> for IdentityView {
    fn from(i: &Identity) -> Self {
        IdentityView {
            id: i.id,
            provider: i.provider.clone(),
            email: i.email.clone(),
            linked_at: i.linked_at,
            last_used_at: i.last_used_at,
        }
    }
}

/// What the provider sends back to the callback.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    /// The provider's refusal (e.g. `access_denied`), instead of a code.
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// The form that confirms an address by mailed code.
#[derive(Debug, Deserialize, ToSchema)]
pub struct VerifyIdentityForm {
    /// The address to mail a code to (when the provider gave none, or to use another).
    #[schema(format = Email, max_length = 254)]
    pub email: Option<String>,
    /// The six-digit code from the mail.
    pub code: Option<String>,
}

/// The configured sign-in providers, in the order `/login` shows them.
#[utoipa::path(get, path = "/api/v1/auth/providers", tag = "users", security(()),
    responses((status = 200, body = ProviderList)))]
pub async fn list_providers(State(app): State<App>) -> Json<ProviderList> {
    let base = app.config.public_url();
    Json(ProviderList {
        items: app
            .sign_in
            .providers()
            .map(|p| ProviderView {
                id: p.id.clone(),
                name: p.name.clone(),
                kind: p.kind,
                start_url: format!("{base}/auth/{}/start", p.id),
            })
            .collect(),
    })
}

/// A button per configured provider, each a form that starts `/auth/{id}/start` keeping
/// `next` (already safe); `verb` says what it does ("Sign in", "Sign up").
pub(super) fn provider_buttons(app: &App, next: &str, verb: &str) -> String {
    app.sign_in
        .providers()
        .map(|p| {
            format!(
                "<form method=\"get\" action=\"/auth/{id}/start\">\
<input type=\"hidden\" name=\"next\" value=\"{next}\"><button>{verb} with {name}</button></form>",
                id = html::escape(&p.id),
                name = html::escape(&p.name),
                next = html::escape(next),
                verb = html::escape(verb),
            )
        })
        .collect()
}

fn unknown_provider(id: &str) -> ApiError {
    ApiError::new(
        ProblemType::UnknownProvider,
        format!("no sign-in provider {id:?}; GET /api/v1/auth/providers lists them"),
    )
}

fn redirect_uri(app: &App, provider: &str) -> String {
    format!("{}/auth/{provider}/callback", app.config.public_url())
}

/// `Set-Cookie` for the sign-in cookie: `secret`, or removed.
fn sign_in_cookie(app: &App, secret: Option<&str>) -> HeaderValue {
    let secure = if app.config.public_url().starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let value = match secret {
        Some(secret) => format!(
            "{SIGN_IN_COOKIE}={secret}; HttpOnly; SameSite=Lax; Path=/auth; Max-Age={}{secure}",
            app.sign_in.pending.ttl().as_secs()
        ),
        None => format!("{SIGN_IN_COOKIE}=; HttpOnly; SameSite=Lax; Path=/auth; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn browser_secret(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == SIGN_IN_COOKIE && !value.is_empty())
        .map(|(_, value)| value.to_owned())
}

fn refusal(e: SignInError) -> ApiError {
    match e {
        SignInError::Unavailable(detail) => {
            tracing::warn!(%detail, "a sign-in provider failed");
            ApiError::new(
                ProblemType::ProviderUnavailable,
                format!(
                    "the sign-in provider failed: {detail}; retry later or sign in another way"
                ),
            )
        }
        SignInError::Refused(detail) => ApiError::new(
            ProblemType::SignInFailed,
            format!("{detail}; start signing in again"),
        ),
        SignInError::IdToken(detail) => ApiError::new(ProblemType::IdTokenInvalid, detail),
    }
}

/// A refusal of `/auth/{provider}/start` or `/callback` as the client asks for it: a page
/// with the reason and a way back to `/login` for a browser (`Accept: text/html`),
/// problem+json otherwise.
fn refused(headers: &HeaderMap, e: ApiError) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if wants_html {
        html::form_page(
            "Signing in did not work",
            Some(&e),
            "<p><a href=\"/login\">Back to signing in</a></p>",
        )
    } else {
        e.into_response()
    }
}

/// A 303 to `to`, with cookies.
fn see_other(to: &str, cookies: &[HeaderValue]) -> Response {
    let mut response = (
        StatusCode::SEE_OTHER,
        [(
            header::LOCATION,
            HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/api/v1/me")),
        )],
    )
        .into_response();
    for cookie in cookies {
        response
            .headers_mut()
            .append(header::SET_COOKIE, cookie.clone());
    }
    response
}

/// Start signing in with a provider: sends the browser to it (authorization code with PKCE
/// S256, `state` and `nonce`), bound to this browser by the `sluice_sign_in` cookie.
#[utoipa::path(get, path = "/auth/{provider}/start", tag = "users", security(()),
    params(("provider" = String, Path, description = "Provider id"), LoginQuery),
    responses((status = 303, description = "to the provider's authorization page, with the `sluice_sign_in` cookie"),
        (status = 404, description = "`unknown-provider` (a page for `Accept: text/html`)", content((crate::problem::ProblemBody = "application/problem+json"), (String = "text/html"))),
        (status = 429, description = "too many sign-ins from this address (a page for `Accept: text/html`)", content((crate::problem::ProblemBody = "application/problem+json"), (String = "text/html"))),
        (status = 502, description = "`provider-unavailable`: discovery failed (a page for `Accept: text/html`)", content((crate::problem::ProblemBody = "application/problem+json"), (String = "text/html")))))]
pub async fn start(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiPath(provider_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<LoginQuery>,
) -> Response {
    start_flow(app, peer, provider_id, query)
        .await
        .unwrap_or_else(|e| refused(&headers, e))
}

async fn start_flow(
    app: App,
    peer: SocketAddr,
    provider_id: String,
    query: LoginQuery,
) -> ApiResult<Response> {
    let entry = app
        .sign_in
        .provider(&provider_id)
        .ok_or_else(|| unknown_provider(&provider_id))?;
    limited(
        app.limits.sign_in_per_address.hit(&client_key(peer.ip())),
        "sign-in attempts from this address",
    )?;
    let state = CsrfToken::new_random().secret().clone();
    let nonce = Nonce::new_random().secret().clone();
    let browser = auth::new_secret("");
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let url = entry
        .authorization_url(
            &app.sign_in,
            &redirect_uri(&app, &provider_id),
            &state,
            &nonce,
            challenge,
        )
        .await
        .map_err(refusal)?;
    app.sign_in.pending.start(
        &state,
        &browser,
        &provider_id,
        verifier.secret().clone(),
        nonce,
        safe_next(query.next.as_deref()).to_owned(),
    );
    Ok(see_other(&url, &[sign_in_cookie(&app, Some(&browser))]))
}

/// The provider's redirect back: checks `state` (this browser's, unused, in time), exchanges
/// the code with the PKCE verifier, checks the ID token (signature, issuer, audience, expiry,
/// nonce), then signs in and goes on to `next` with the same session cookie as `/login`. An
/// address the provider does not vouch for gets the page for a mailed code instead.
#[utoipa::path(get, path = "/auth/{provider}/callback", tag = "users", security(()),
    params(("provider" = String, Path, description = "Provider id"), CallbackQuery),
    responses((status = 303, description = "signed in: to `next`, with the session cookie"),
        (status = 400, description = "`sign-in-state-invalid`, `sign-in-failed` or `id-token-invalid` (a page for `Accept: text/html`)", content((crate::problem::ProblemBody = "application/problem+json"), (String = "text/html"))),
        (status = 403, description = "`identity-unverified-email`: a page that mails a code to the address and asks for it", content_type = "text/html"),
        (status = 404, description = "`unknown-provider` (a page for `Accept: text/html`)", content((crate::problem::ProblemBody = "application/problem+json"), (String = "text/html"))),
        (status = 429, description = "too many sign-ins or sign-ups from this address, or codes for the address (a page for `Accept: text/html`)", content((crate::problem::ProblemBody = "application/problem+json"), (String = "text/html"))),
        (status = 502, description = "`provider-unavailable` (a page for `Accept: text/html`)", content((crate::problem::ProblemBody = "application/problem+json"), (String = "text/html")))))]
pub async fn callback(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiPath(provider_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<CallbackQuery>,
) -> Response {
    finish_flow(app, peer, &headers, provider_id, query)
        .await
        .unwrap_or_else(|e| refused(&headers, e))
}

async fn finish_flow(
    app: App,
    peer: SocketAddr,
    headers: &HeaderMap,
    provider_id: String,
    query: CallbackQuery,
) -> ApiResult<Response> {
    let entry = app
        .sign_in
        .provider(&provider_id)
        .ok_or_else(|| unknown_provider(&provider_id))?;
    limited(
        app.limits.sign_in_per_address.hit(&client_key(peer.ip())),
        "sign-in attempts from this address",
    )?;
    let browser = browser_secret(headers);
    let flow = app
        .sign_in
        .pending
        .take(
            query.state.as_deref().unwrap_or_default(),
            browser.as_deref(),
            &provider_id,
        )
        .map_err(|_| {
            ApiError::new(
                ProblemType::SignInStateInvalid,
                "this sign-in is unknown, used already, expired or was started in another browser; \
                 start signing in again",
            )
        })?;
    if let Some(error) = query.error {
        let described = query
            .error_description
            .map(|d| format!(" ({})", d.chars().take(200).collect::<String>()))
            .unwrap_or_default();
        return Err(refusal(SignInError::Refused(format!(
            "the provider refused to sign you in: {}{described}",
            error.chars().take(100).collect::<String>()
        ))));
    }
    let code = query.code.ok_or_else(|| {
        refusal(SignInError::Refused(
            "the provider sent neither a code nor an error".into(),
        ))
    })?;
    let account = entry
        .finish(
            &app.sign_in,
            &redirect_uri(&app, &provider_id),
            &code,
            &flow.pkce_verifier,
            &flow.nonce,
        )
        .await
        .map_err(refusal)?;
    let linked = app
        .store
        .read(|s| s.identity(&provider_id, &account.subject).is_some());
    let vouched = account
        .email
        .as_deref()
        .filter(|_| account.email_verified)
        .and_then(|e| valid_email(e).ok());
    if linked || vouched.is_some() {
        let user = sign_in_as(&app, peer, &provider_id, &account, vouched).await?;
        return signed_in(&app, &user, &flow.next).await;
    }
    // Nobody vouches for the address: hold the account until a mailed code confirms one.
    let browser = auth::new_secret("");
    app.sign_in.pending.hold(
        &browser,
        &provider_id,
        account.subject.clone(),
        account.email.clone(),
        account.first_name.clone(),
        account.last_name.clone(),
        flow.next.clone(),
    );
    let cookie = sign_in_cookie(&app, Some(&browser));
    let provider_name = entry.provider.name.clone();
    let mut page = match account.email.as_deref().map(valid_email) {
        Some(Ok(email)) => match mail_code(&app, &browser, &email).await {
            Ok(()) => code_page(&provider_name, &email, None),
            Err(e) => email_page(&provider_name, Some(&e)),
        },
        _ => email_page(&provider_name, None),
    };
    page.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(page)
}

/// Signs `user` in: the session cookie, the sign-in cookie removed, on to `next`.
async fn signed_in(app: &App, user: &User, next: &str) -> ApiResult<Response> {
    let session = start_session(app, user).await?;
    Ok(see_other(
        safe_next(Some(next)),
        &[
            session_cookie(app, Some(&session)),
            sign_in_cookie(app, None),
        ],
    ))
}

/// Mails a new code to `email` for the account held in this browser.
async fn mail_code(app: &App, browser: &str, email: &str) -> ApiResult<()> {
    limited(
        app.limits.codes_per_account.hit(&email.to_lowercase()),
        "codes for this address",
    )?;
    let slot = app.mailer.reserve()?;
    let code = auth::new_code();
    app.sign_in.pending.update(
        browser,
        Some(MailedCode {
            email: email.to_owned(),
            sha256: code_hash(browser, &code),
            attempts_left: CODE_ATTEMPTS,
        }),
    );
    slot.send(code_mail(email, CodePurpose::VerifyEmail, &code));
    Ok(())
}

/// A held code's hash, salted with the browser's secret.
fn code_hash(browser: &str, code: &str) -> String {
    auth::sha256_hex(&format!("{browser}:{}", code.trim()))
}

fn unverified(provider: &str, what: &str) -> ApiError {
    ApiError::new(
        ProblemType::IdentityUnverifiedEmail,
        format!("{provider} {what}, so nothing is linked until you confirm an address with a code we mail to it"),
    )
}

/// The page asking for an address to mail a code to.
fn email_page(provider: &str, refusal: Option<&ApiError>) -> Response {
    let fallback = unverified(provider, "did not give a verified e-mail address");
    html::form_page(
        "Confirm your e-mail address",
        Some(refusal.unwrap_or(&fallback)),
        &format!(
            "<form method=\"post\" action=\"{VERIFY_PATH}\">\
<p><label>E-mail <input name=\"email\" type=\"email\" required></label></p>\
<p><button>Mail me a code</button></p></form>"
        ),
    )
}

/// The page asking for the code mailed to `email`.
fn code_page(provider: &str, email: &str, refusal: Option<&ApiError>) -> Response {
    let fallback = unverified(provider, "does not confirm that this address is yours");
    let email = html::escape(email);
    html::form_page(
        "Confirm your e-mail address",
        Some(refusal.unwrap_or(&fallback)),
        &format!(
            "<p>We mailed a six-digit code to <strong>{email}</strong>.</p>\
<form method=\"post\" action=\"{VERIFY_PATH}\">\
<p><label>Code <input name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required></label></p>\
<p><button>Confirm</button></p></form>\
<form method=\"post\" action=\"{VERIFY_PATH}\">\
<p><label>Another address <input name=\"email\" type=\"email\" required></label> <button>Mail a code there</button></p></form>"
        ),
    )
}

fn page_with_status(mut page: Response, status: StatusCode) -> Response {
    *page.status_mut() = status;
    page
}

/// Confirms the address of an account held by the callback: `email` mails a code to that
/// address, `code` checks it; a right code links the identity (or creates the user) as for an
/// address the provider vouches for, signs in and goes on to `next`.
#[utoipa::path(post, path = "/auth/verify", tag = "users", security(()),
    request_body(content = VerifyIdentityForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "the page for the code just mailed", content_type = "text/html"),
        (status = 303, description = "confirmed and signed in: to `next`, with the session cookie"),
        (status = 400, description = "the page again: `invalid-code`, `invalid-email`, neither field given, or `sign-in-state-invalid` (nothing held in this browser: start again)", content_type = "text/html"),
        (status = 429, description = "the page again, saying when to retry", content_type = "text/html")))]
pub async fn verify_identity(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiForm(form): ApiForm<VerifyIdentityForm>,
) -> Response {
    let browser = browser_secret(&headers);
    let Some((browser, held)) = browser.and_then(|b| {
        let held = app.sign_in.pending.held(Some(&b))?;
        Some((b, held))
    }) else {
        let gone = ApiError::new(
            ProblemType::SignInStateInvalid,
            "this sign-in is unknown or expired; start signing in again from /login",
        );
        return html::form_page("Confirm your e-mail address", Some(&gone), "");
    };
    let provider = app
        .sign_in
        .provider(&held.provider)
        .map(|p| p.provider.name.clone())
        .unwrap_or_else(|| held.provider.clone());
    let code = form
        .code
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty());
    if let Some(code) = code {
        let Some(mailed) = held.code.clone() else {
            return email_page(&provider, Some(&invalid_code()));
        };
        if let Err(e) = limit_code_attempts(&app, peer) {
            return code_page(&provider, &mailed.email, Some(&e));
        }
        if code_hash(&browser, code) != mailed.sha256 {
            let left = mailed.attempts_left.saturating_sub(1);
            let still = (left > 0).then(|| MailedCode {
                attempts_left: left,
                ..mailed.clone()
            });
            app.sign_in.pending.update(&browser, still);
            return code_page(&provider, &mailed.email, Some(&invalid_code()));
        }
        app.sign_in.pending.release(&browser);
        let account = Account {
            subject: held.subject.clone(),
            email: held.provider_email.clone(),
            email_verified: false,
            first_name: held.first_name.clone(),
            last_name: held.last_name.clone(),
        };
        let done = match sign_in_as(&app, peer, &held.provider, &account, Some(mailed.email)).await
        {
            Ok(user) => signed_in(&app, &user, &held.next).await,
            Err(e) => Err(e),
        };
        return done
            .unwrap_or_else(|e| html::form_page("Confirm your e-mail address", Some(&e), ""));
    }
    let email = match form.email.as_deref().map(valid_email) {
        Some(Ok(email)) => email,
        Some(Err(e)) => return page_with_status(email_page(&provider, Some(&e)), e.status()),
        // Neither field: the same page, as a refusal of the form.
        None => return page_with_status(email_page(&provider, None), StatusCode::BAD_REQUEST),
    };
    match mail_code(&app, &browser, &email).await {
        Ok(()) => page_with_status(code_page(&provider, &email, None), StatusCode::OK),
        Err(e) => email_page(&provider, Some(&e)),
    }
}

/// The user `account` signs in as (see the module's rules), after linking or creating as
/// needed. `email` is an address proven to be the account holder's (vouched for by the
/// provider, or confirmed by code); without one only a linked identity signs in.
async fn sign_in_as(
    app: &App,
    peer: SocketAddr,
    provider: &str,
    account: &Account,
    email: Option<String>,
) -> ApiResult<User> {
    let creates = app.store.read(|s| {
        s.identity(provider, &account.subject).is_none()
            && email
                .as_deref()
                .is_some_and(|e| s.user_by_email(e).is_none())
    });
    if creates {
        limited(
            app.limits.sign_ups_per_address.hit(&client_key(peer.ip())),
            "sign-ups from this address",
        )?;
    }
    let provider = provider.to_owned();
    let account = account.clone();
    let trial = Duration::seconds(app.config.trial_duration_secs as i64);
    app.write(move |s| {
        let now = Utc::now();
        if let Some(identity) = s.identity(&provider, &account.subject) {
            let user = s
                .users
                .get(&identity.user_id)
                .cloned()
                .ok_or_else(|| ApiError::internal("an identity's user is missing"))?;
            let mut identity = identity.clone();
            identity.last_used_at = now;
            return Ok((vec![Change::PutIdentity(identity)], user));
        }
        let email = email.ok_or_else(|| {
            ApiError::new(
                ProblemType::IdentityUnverifiedEmail,
                "the provider did not confirm an address; sign in again",
            )
        })?;
        let mut changes = Vec::new();
        let user = match s.user_by_email(&email) {
            Some(existing) => {
                let mut user = existing.clone();
                if !user.email_verified {
                    tracing::info!(user = %user.id, %provider, "an identity proved the address of an unverified account: its password and sessions end");
                    user.email_verified = true;
                    user.password_hash.clear();
                    user.code = None;
                    changes.extend(
                        s.credentials
                            .values()
                            .filter(|c| c.user_id == user.id)
                            .map(|c| Change::DeleteCredential(c.sha256.clone())),
                    );
                    changes.extend(first_workspace(s, &user));
                }
                user
            }
            None => {
                let local = email.split('@').next().unwrap_or("user").to_owned();
                let first_name = account
                    .first_name
                    .as_deref()
                    .and_then(|n| valid_name("first_name", n).ok())
                    .unwrap_or(local);
                let last_name = account
                    .last_name
                    .as_deref()
                    .and_then(|n| valid_name("last_name", n).ok())
                    .unwrap_or_default();
                let user = User {
                    id: Uuid::now_v7(),
                    email: email.clone(),
                    first_name,
                    last_name,
                    password_hash: String::new(),
                    email_verified: true,
                    created_at: now,
                    trial_ends_at: now + trial,
                    plan: Plan::Trial,
                    operator: false,
                    code: None,
                };
                tracing::info!(user = %user.id, %provider, "a new user signed up through a provider");
                changes.extend(first_workspace(s, &user));
                user
            }
        };
        changes.push(Change::PutUser(user.clone()));
        changes.push(Change::PutIdentity(Identity {
            id: Uuid::now_v7(),
            user_id: user.id,
            provider: provider.clone(),
            subject: account.subject.clone(),
            email: account.email.clone(),
            linked_at: now,
            last_used_at: now,
        }));
        Ok((changes, user))
    })
    .await
}

/// The caller's linked provider accounts.
#[utoipa::path(get, path = "/api/v1/me/identities", tag = "users", params(PageQuery),
    responses((status = 200, body = Page<IdentityView>), (status = 401, body = crate::problem::ProblemBody)))]
pub async fn list_identities(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<IdentityView>>> {
    let items = app.store.read(|s| {
        s.identities_of(caller.user.id)
            .map(|i| (i.id.to_string(), IdentityView::from(i)))
            .collect::<Vec<_>>()
    });
    page.page(&app, items).map(Json)
}

/// Unlink one of the caller's provider accounts; never the last way to sign in (set a password
/// first with the password reset, or keep another identity).
#[utoipa::path(delete, path = "/api/v1/me/identities/{identity_id}", tag = "users",
    params(("identity_id" = Uuid, Path, description = "Identity id")),
    responses((status = 204), (status = 401, body = crate::problem::ProblemBody),
        (status = 404, description = "`unknown-identity`", body = crate::problem::ProblemBody),
        (status = 409, description = "`last-sign-in-method`: no password and no other identity", body = crate::problem::ProblemBody)))]
pub async fn unlink_identity(
    State(app): State<App>,
    caller: Caller,
    ApiPath(identity_id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    let user_id = caller.user.id;
    app.write(move |s| {
        let identity = s
            .identities
            .get(&identity_id)
            .filter(|i| i.user_id == user_id)
            .ok_or_else(|| ApiError::new(ProblemType::UnknownIdentity, "no such identity of yours"))?;
        let user = s
            .users
            .get(&user_id)
            .ok_or_else(|| ApiError::internal("the caller is missing"))?;
        let others = s.identities_of(user_id).filter(|i| i.id != identity.id).count();
        if others == 0 && !user.has_password() {
            return Err(ApiError::new(
                ProblemType::LastSignInMethod,
                "this is your only way to sign in; set a password first (POST /api/v1/password-reset/code, then /api/v1/password-reset) or link another provider",
            ));
        }
        Ok((vec![Change::DeleteIdentity(identity_id)], StatusCode::NO_CONTENT))
    })
    .await
}
