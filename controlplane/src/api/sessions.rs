//! Sessions: sign-in (API and form), sign-out, and the list of a user's sessions.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::codes::limited;
use super::users::UserView;
use super::{ApiJson, ApiPath, ApiQuery, Page, PageQuery};
use crate::app::App;
use crate::auth::{self, Caller};
use crate::model::{Credential, CredentialKind, User};
use crate::problem::{ApiError, ApiResult, ProblemType};
use crate::rate_limit::{client_key, SignInRefused};
use crate::store::Change;

/// Sign-in form.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    pub email: String,
    pub password: String,
}

/// A new session.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// Send as `Authorization: Bearer <token>`; also set as the `sluice_session` cookie.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub user: UserView,
}

/// Checks credentials and opens a session; used by the API and the login form.
pub async fn open_session(
    app: &App,
    peer: SocketAddr,
    email: &str,
    password: String,
) -> ApiResult<SessionView> {
    let account = email.trim().to_lowercase();
    let client = client_key(peer.ip());
    limited(
        app.limits.sign_in_per_address.hit(&client),
        "sign-in attempts from this address",
    )?;
    // Counted as a failure before the password is checked, so that guesses sent in parallel
    // get no more checks than the limit; given back below when the password is right.
    app.limits
        .sign_in
        .begin(&account, &client)
        .map_err(|refused| match refused {
            SignInRefused::FromThisAddress(wait) => {
                ApiError::rate_limited("failed sign-ins for this account from this address", wait)
            }
            SignInRefused::AllAddresses(wait) => {
                ApiError::rate_limited("failed sign-ins for this account", wait)
            }
        })?;
    let user = app.store.read(|s| s.user_by_email(&account).cloned());
    let hash = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| auth::dummy_password_hash().to_owned());
    let matches = app
        .password_work(move || auth::verify_password(&password, &hash))
        .await?;
    let user = match user {
        Some(user) if matches => user,
        _ => return Err(ApiError::unauthenticated("wrong e-mail or password")),
    };
    app.limits.sign_in.succeeded(&account, &client);
    start_session(app, &user).await
}

/// Opens a session for `user`, who has proven who they are (password, provider); past
/// `sessions_per_user_max` the oldest sessions end.
pub async fn start_session(app: &App, user: &User) -> ApiResult<SessionView> {
    let secret = auth::new_secret(auth::SESSION_PREFIX);
    let now = Utc::now();
    let expires_at = now + Duration::seconds(app.config.session_ttl_secs as i64);
    let credential = Credential {
        id: Uuid::now_v7(),
        sha256: auth::sha256_hex(&secret),
        kind: CredentialKind::Session,
        user_id: user.id,
        name: "session".into(),
        hint: crate::model::secret_hint(&secret, auth::SESSION_PREFIX),
        created_at: now,
        expires_at: Some(expires_at),
    };
    let sessions_max = app.config.sessions_per_user_max;
    app.write(move |s| {
        // Past the bound, the oldest sessions end so that the new one fits.
        let mut sessions: Vec<&Credential> = s
            .credentials
            .values()
            .filter(|c| c.user_id == credential.user_id && c.kind == CredentialKind::Session)
            .collect();
        sessions.sort_by_key(|c| c.created_at);
        let surplus = (sessions.len() + 1).saturating_sub(sessions_max);
        let mut changes: Vec<Change> = sessions[..surplus.min(sessions.len())]
            .iter()
            .map(|c| Change::DeleteCredential(c.sha256.clone()))
            .collect();
        changes.push(Change::PutCredential(credential));
        Ok((changes, ()))
    })
    .await?;
    Ok(SessionView {
        token: secret,
        expires_at,
        user: UserView::from(user),
    })
}

/// `Set-Cookie` value carrying a session.
pub fn session_cookie(app: &App, session: Option<&SessionView>) -> HeaderValue {
    let secure = if app.config.public_url().starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let value = match session {
        Some(s) => format!(
            "{}={}; HttpOnly; SameSite=Lax; Path=/; Max-Age={}{secure}",
            auth::SESSION_COOKIE,
            s.token,
            app.config.session_ttl_secs
        ),
        None => format!(
            "{}=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0{secure}",
            auth::SESSION_COOKIE
        ),
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Sign in: returns a session token and sets it as an HttpOnly cookie.
#[utoipa::path(post, path = "/api/v1/sessions", tag = "users", security(()),
    request_body = SignIn,
    responses((status = 201, body = SessionView), (status = 401, body = crate::problem::ProblemBody),
        (status = 429, body = crate::problem::ProblemBody)))]
pub async fn sign_in(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(form): ApiJson<SignIn>,
) -> ApiResult<Response> {
    let session = open_session(&app, peer, &form.email, form.password).await?;
    let cookie = session_cookie(&app, Some(&session));
    let mut response = (StatusCode::CREATED, Json(session)).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

/// Sign out: ends the session used for this request.
#[utoipa::path(delete, path = "/api/v1/sessions/current", tag = "users",
    responses((status = 204),
        (status = 400, description = "`not-a-session`: the request used a personal access token", body = crate::problem::ProblemBody),
        (status = 401, body = crate::problem::ProblemBody)))]
pub async fn sign_out(State(app): State<App>, caller: Caller) -> ApiResult<Response> {
    if caller.credential.kind != CredentialKind::Session {
        return Err(ApiError::new(
            ProblemType::NotASession,
            "this request used a personal access token; revoke it with DELETE /api/v1/me/tokens/{id}",
        ));
    }
    let hash = caller.credential.sha256;
    app.write(move |_| Ok((vec![Change::DeleteCredential(hash)], ())))
        .await?;
    let mut headers = HeaderMap::new();
    headers.insert(header::SET_COOKIE, session_cookie(&app, None));
    Ok((StatusCode::NO_CONTENT, headers).into_response())
}

/// One of the caller's sessions (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionInfo {
    pub id: Uuid,
    /// Prefix and last characters of the token.
    pub hint: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Whether this request came with it.
    pub current: bool,
}

/// The signed-in user's sessions, e.g. to end one left open elsewhere.
#[utoipa::path(get, path = "/api/v1/me/sessions", tag = "users", params(PageQuery),
    responses((status = 200, body = Page<SessionInfo>), (status = 401, body = crate::problem::ProblemBody)))]
pub async fn list_sessions(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<SessionInfo>>> {
    let items = app.store.read(|s| {
        s.credentials
            .values()
            .filter(|c| c.user_id == caller.user.id && c.kind == CredentialKind::Session)
            .map(|c| {
                let info = SessionInfo {
                    id: c.id,
                    hint: c.hint.clone(),
                    created_at: c.created_at,
                    expires_at: c.expires_at,
                    current: c.id == caller.credential.id,
                };
                (c.id.to_string(), info)
            })
            .collect::<Vec<_>>()
    });
    page.page(&app, items).map(Json)
}

/// End one of the signed-in user's sessions.
#[utoipa::path(delete, path = "/api/v1/me/sessions/{session_id}", tag = "users",
    params(("session_id" = Uuid, Path, description = "Session id")),
    responses((status = 204), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn end_session(
    State(app): State<App>,
    caller: Caller,
    ApiPath(session_id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    let user = caller.user.id;
    app.write(move |s| {
        let session = s
            .credentials
            .values()
            .find(|c| c.id == session_id && c.user_id == user && c.kind == CredentialKind::Session)
            .ok_or_else(|| {
                ApiError::new(ProblemType::UnknownSession, "no such session of yours")
            })?;
        Ok((
            vec![Change::DeleteCredential(session.sha256.clone())],
            StatusCode::NO_CONTENT,
        ))
    })
    .await
}
