//! Users: sign-up, e-mail verification, sessions, password reset and personal access tokens.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::workspaces::first_workspace;
use super::{ApiJson, ApiPath, ApiQuery, Page, PageQuery};
use crate::app::App;
use crate::auth::{self, Caller};
use crate::mail::Mail;
use crate::model::{CodePurpose, Credential, CredentialKind, OneTimeCode, Plan, User};
use crate::problem::{ApiError, ApiResult};
use crate::rate_limit::client_key;
use crate::store::Change;

/// How long a code sent by e-mail works.
const CODE_TTL_MINUTES: i64 = 15;
/// Wrong guesses a code allows before it is void.
const CODE_ATTEMPTS: u32 = 5;
/// Longest first or last name.
const NAME_CHARS_MAX: usize = 100;

/// A user as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    /// Object id.
    pub id: Uuid,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub email_verified: bool,
    pub created_at: DateTime<Utc>,
    pub trial_ends_at: DateTime<Utc>,
    pub plan: Plan,
    pub operator: bool,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        UserView {
            id: u.id,
            email: u.email.clone(),
            first_name: u.first_name.clone(),
            last_name: u.last_name.clone(),
            email_verified: u.email_verified,
            created_at: u.created_at,
            trial_ends_at: u.trial_ends_at,
            plan: u.plan,
            operator: u.operator,
        }
    }
}

/// Sign-up form.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignUp {
    pub email: String,
    /// 10 to 128 characters.
    pub password: String,
    pub first_name: String,
    pub last_name: String,
}

/// Checks an e-mail address; returns it trimmed.
pub fn valid_email(email: &str) -> ApiResult<String> {
    let email = email.trim();
    if email.len() > 254 || email.parse::<lettre::Address>().is_err() {
        return Err(ApiError::bad_request(
            "invalid-email",
            format!("{email:?} is not an e-mail address"),
        ));
    }
    Ok(email.to_owned())
}

fn valid_name(field: &str, name: &str) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty()
        || name.chars().count() > NAME_CHARS_MAX
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(
            "invalid-name",
            format!("{field} must have 1 to {NAME_CHARS_MAX} printable characters"),
        ));
    }
    Ok(name.to_owned())
}

fn limited(result: Result<(), u64>, what: &str) -> ApiResult<()> {
    result.map_err(|wait| ApiError::rate_limited(what, wait))
}

/// Asking for and guessing codes from one client address is limited across accounts too.
fn limit_code_attempts(app: &App, peer: SocketAddr) -> ApiResult<()> {
    limited(
        app.limits
            .code_attempts_per_address
            .hit(&client_key(peer.ip())),
        "code attempts from this address",
    )
}

/// Issues a new one-time code for `user`, returns the updated user and the code in clear.
fn with_new_code(user: &User, purpose: CodePurpose) -> (User, String) {
    let code = auth::new_code();
    let mut user = user.clone();
    user.code = Some(OneTimeCode {
        purpose,
        sha256: auth::code_hash(user.id, &code),
        expires_at: Utc::now() + Duration::minutes(CODE_TTL_MINUTES),
        attempts_left: CODE_ATTEMPTS,
    });
    (user, code)
}

fn code_mail(to: &str, purpose: CodePurpose, code: &str) -> Mail {
    let (subject, what) = match purpose {
        CodePurpose::VerifyEmail => (
            "Your Sluice verification code",
            "verify your e-mail address",
        ),
        CodePurpose::ResetPassword => ("Your Sluice password reset code", "reset your password"),
    };
    Mail {
        to: to.to_owned(),
        subject: subject.to_owned(),
        body: format!(
            "Your code to {what} is: {code}\n\nIt works for {CODE_TTL_MINUTES} minutes. If you did not ask for it, ignore this mail.\n"
        ),
    }
}

/// Checks `code` against the user's pending code of `purpose`. Returns the user to store (with
/// the code consumed or its attempts counted) and whether it matched.
fn check_code(user: &User, purpose: CodePurpose, code: &str) -> (User, ApiResult<()>) {
    let mut updated = user.clone();
    let invalid = |detail: &str| ApiError::bad_request("invalid-code", detail.to_owned());
    let Some(pending) = user.code.as_ref().filter(|c| c.purpose == purpose) else {
        return (
            updated,
            Err(invalid(
                "the code is wrong or was never sent; request a new one",
            )),
        );
    };
    if pending.expires_at <= Utc::now() {
        updated.code = None;
        return (
            updated,
            Err(invalid("the code has expired; request a new one")),
        );
    }
    if auth::code_hash(user.id, code) == pending.sha256 {
        updated.code = None;
        return (updated, Ok(()));
    }
    let left = pending.attempts_left.saturating_sub(1);
    if left == 0 {
        updated.code = None;
        return (
            updated,
            Err(invalid("too many wrong codes; request a new one")),
        );
    }
    if let Some(c) = updated.code.as_mut() {
        c.attempts_left = left;
    }
    (
        updated,
        Err(invalid(&format!("the code is wrong; {left} attempts left"))),
    )
}

/// Sign up with e-mail and password; a verification code is sent by e-mail.
#[utoipa::path(post, path = "/api/v1/users", tag = "users", security(()),
    request_body = SignUp,
    responses((status = 201, body = UserView), (status = 400, body = crate::problem::ProblemBody),
        (status = 409, description = "e-mail already registered", body = crate::problem::ProblemBody),
        (status = 429, body = crate::problem::ProblemBody)))]
pub async fn sign_up(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(form): ApiJson<SignUp>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    let email = valid_email(&form.email)?;
    let first_name = valid_name("first_name", &form.first_name)?;
    let last_name = valid_name("last_name", &form.last_name)?;
    auth::check_password_rules(&form.password, &email)?;
    limited(
        app.limits.sign_ups_per_address.hit(&client_key(peer.ip())),
        "sign-ups from this address",
    )?;
    if app.store.read(|s| s.user_by_email(&email).is_some()) {
        return Err(taken(&email));
    }
    let password = form.password;
    let password_hash = app
        .password_work(move || auth::hash_password(&password))
        .await??;
    let now = Utc::now();
    let user = User {
        id: Uuid::now_v7(),
        email: email.clone(),
        first_name,
        last_name,
        password_hash,
        email_verified: false,
        created_at: now,
        trial_ends_at: now + Duration::seconds(app.config.trial_duration_secs as i64),
        plan: Plan::Trial,
        operator: false,
        code: None,
    };
    let (user, code) = with_new_code(&user, CodePurpose::VerifyEmail);
    let view = UserView::from(&user);
    let slot = app.mailer.reserve()?;
    app.write(move |s| {
        if s.user_by_email(&user.email).is_some() {
            return Err(taken(&user.email));
        }
        Ok((vec![Change::PutUser(user)], ()))
    })
    .await?;
    slot.send(code_mail(&email, CodePurpose::VerifyEmail, &code));
    Ok((StatusCode::CREATED, Json(view)))
}

fn taken(email: &str) -> ApiError {
    ApiError::conflict(
        "email-taken",
        format!("{email:?} is already registered; sign in or reset the password"),
    )
}

/// An e-mail address and the code sent to it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailCode {
    pub email: String,
    pub code: String,
}

/// Verify the e-mail address with the code sent to it. A user who belongs to no workspace yet
/// gets one of their own, as Admin.
#[utoipa::path(post, path = "/api/v1/email-verification", tag = "users", security(()),
    request_body = EmailCode,
    responses((status = 200, body = UserView), (status = 400, body = crate::problem::ProblemBody)))]
pub async fn verify_email(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(form): ApiJson<EmailCode>,
) -> ApiResult<Json<UserView>> {
    limit_code_attempts(&app, peer)?;
    let email = form.email;
    let code = form.code;
    app.write(move |s| {
        let invalid = || {
            ApiError::bad_request(
                "invalid-code",
                "the code is wrong or was never sent; request a new one",
            )
        };
        let user = s.user_by_email(&email).ok_or_else(invalid)?;
        if user.email_verified {
            return Err(ApiError::conflict(
                "already-verified",
                "this e-mail address is already verified",
            ));
        }
        let (mut updated, matched) = check_code(user, CodePurpose::VerifyEmail, &code);
        let mut changes = Vec::new();
        if matched.is_ok() {
            updated.email_verified = true;
            changes = first_workspace(s, &updated);
        }
        let view = UserView::from(&updated);
        changes.push(Change::PutUser(updated));
        Ok((changes, matched.map(|()| view)))
    })
    .await?
    .map(Json)
}

/// An e-mail address.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailOnly {
    pub email: String,
}

/// Send a new verification code (answers 202 whether or not the address is registered).
#[utoipa::path(post, path = "/api/v1/email-verification/code", tag = "users", security(()),
    request_body = EmailOnly,
    responses((status = 202), (status = 429, body = crate::problem::ProblemBody)))]
pub async fn resend_verification_code(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(form): ApiJson<EmailOnly>,
) -> ApiResult<StatusCode> {
    limit_code_attempts(&app, peer)?;
    send_code(&app, &form.email, CodePurpose::VerifyEmail).await
}

/// Issues and mails a new code when the account exists (and, for verification, is not yet
/// verified). Limited per address typed, existing or not, so the answer tells nothing.
async fn send_code(app: &App, email: &str, purpose: CodePurpose) -> ApiResult<StatusCode> {
    let email = valid_email(email)?;
    limited(
        app.limits.codes_per_account.hit(&email.to_lowercase()),
        "codes for this address",
    )?;
    let slot = app.mailer.reserve()?;
    let sent = app
        .write(move |s| {
            let Some(user) = s.user_by_email(&email) else {
                return Ok((vec![], None));
            };
            if purpose == CodePurpose::VerifyEmail && user.email_verified {
                return Ok((vec![], None));
            }
            let (user, code) = with_new_code(user, purpose);
            let to = user.email.clone();
            Ok((vec![Change::PutUser(user)], Some((to, code))))
        })
        .await?;
    if let Some((to, code)) = sent {
        slot.send(code_mail(&to, purpose, &code));
    }
    Ok(StatusCode::ACCEPTED)
}

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
    limited(
        app.limits.sign_in_per_address.hit(&client_key(peer.ip())),
        "sign-in attempts from this address",
    )?;
    limited(
        app.limits.sign_in_per_account.check_only(&account),
        "failed sign-ins for this account",
    )?;
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
        _ => {
            let _ = app.limits.sign_in_per_account.hit(&account);
            return Err(ApiError::unauthenticated("wrong e-mail or password"));
        }
    };
    app.limits.sign_in_per_account.reset(&account);
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
        user: UserView::from(&user),
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
    responses((status = 204), (status = 401, body = crate::problem::ProblemBody)))]
pub async fn sign_out(State(app): State<App>, caller: Caller) -> ApiResult<Response> {
    if caller.credential.kind != CredentialKind::Session {
        return Err(ApiError::bad_request(
            "not-a-session",
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

/// The signed-in user.
#[utoipa::path(get, path = "/api/v1/me", tag = "users",
    responses((status = 200, body = UserView), (status = 401, body = crate::problem::ProblemBody)))]
pub async fn me(caller: Caller) -> Json<UserView> {
    Json(UserView::from(&caller.user))
}

/// Send a password reset code (answers 202 whether or not the address is registered).
#[utoipa::path(post, path = "/api/v1/password-reset/code", tag = "users", security(()),
    request_body = EmailOnly,
    responses((status = 202), (status = 429, body = crate::problem::ProblemBody)))]
pub async fn request_password_reset(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(form): ApiJson<EmailOnly>,
) -> ApiResult<StatusCode> {
    limit_code_attempts(&app, peer)?;
    send_code(&app, &form.email, CodePurpose::ResetPassword).await
}

/// A new password with the code that allows it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordReset {
    pub email: String,
    pub code: String,
    pub password: String,
}

/// Set a new password with the code sent by e-mail; ends every session and revokes every
/// personal access token of the user.
#[utoipa::path(post, path = "/api/v1/password-reset", tag = "users", security(()),
    request_body = PasswordReset,
    responses((status = 204), (status = 400, body = crate::problem::ProblemBody)))]
pub async fn reset_password(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(form): ApiJson<PasswordReset>,
) -> ApiResult<StatusCode> {
    limit_code_attempts(&app, peer)?;
    auth::check_password_rules(&form.password, &form.email)?;
    let password = form.password;
    let password_hash = app
        .password_work(move || auth::hash_password(&password))
        .await??;
    let email = form.email;
    let code = form.code;
    app.write(move |s| {
        let user = s.user_by_email(&email).ok_or_else(|| {
            ApiError::bad_request(
                "invalid-code",
                "the code is wrong or was never sent; request a new one",
            )
        })?;
        let (mut updated, matched) = check_code(user, CodePurpose::ResetPassword, &code);
        let mut changes = Vec::new();
        if matched.is_ok() {
            updated.password_hash = password_hash;
            // The code arrived by mail, which proves the address too.
            if !updated.email_verified {
                updated.email_verified = true;
                changes.extend(first_workspace(s, &updated));
            }
            // Whoever held the account before (a squatter who signed up with this address, or
            // an attacker) loses every way in: sessions and personal access tokens alike.
            changes.extend(
                s.credentials
                    .values()
                    .filter(|c| c.user_id == user.id)
                    .map(|c| Change::DeleteCredential(c.sha256.clone())),
            );
        }
        changes.push(Change::PutUser(updated));
        Ok((changes, matched))
    })
    .await??;
    Ok(StatusCode::NO_CONTENT)
}

/// A personal access token, without its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct PersonalTokenView {
    pub id: Uuid,
    pub name: String,
    /// Prefix and last characters of the secret.
    pub hint: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Only in the answer to its creation: store it now, it is never shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl From<&Credential> for PersonalTokenView {
    fn from(c: &Credential) -> Self {
        PersonalTokenView {
            id: c.id,
            name: c.name.clone(),
            hint: c.hint.clone(),
            created_at: c.created_at,
            expires_at: c.expires_at,
            secret: None,
        }
    }
}

/// A new personal access token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPersonalToken {
    pub name: String,
    /// When it stops working; never when absent.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Personal access tokens tokens of the signed-in user.
#[utoipa::path(get, path = "/api/v1/me/tokens", tag = "users", params(PageQuery),
    responses((status = 200, body = Page<PersonalTokenView>), (status = 401, body = crate::problem::ProblemBody)))]
pub async fn list_personal_tokens(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<PersonalTokenView>>> {
    let items = app.store.read(|s| {
        s.credentials
            .values()
            .filter(|c| c.user_id == caller.user.id && c.kind == CredentialKind::PersonalToken)
            .map(|c| (c.id.to_string(), PersonalTokenView::from(c)))
            .collect::<Vec<_>>()
    });
    page.page(&app, items).map(Json)
}

/// Create a personal access token for scripts; the secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/me/tokens", tag = "users", request_body = NewPersonalToken,
    responses((status = 201, body = PersonalTokenView), (status = 400, body = crate::problem::ProblemBody)))]
pub async fn create_personal_token(
    State(app): State<App>,
    caller: Caller,
    ApiJson(form): ApiJson<NewPersonalToken>,
) -> ApiResult<(StatusCode, Json<PersonalTokenView>)> {
    // A token outlives sessions; only the verified owner of the address may mint one.
    auth::require_verified(&caller)?;
    let name = valid_name("name", &form.name)?;
    if form.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(ApiError::bad_request(
            "invalid-expiry",
            "expires_at is in the past",
        ));
    }
    let secret = auth::new_secret(auth::PERSONAL_TOKEN_PREFIX);
    let credential = Credential {
        id: Uuid::now_v7(),
        sha256: auth::sha256_hex(&secret),
        kind: CredentialKind::PersonalToken,
        user_id: caller.user.id,
        name,
        hint: crate::model::secret_hint(&secret, auth::PERSONAL_TOKEN_PREFIX),
        created_at: Utc::now(),
        expires_at: form.expires_at,
    };
    let mut view = PersonalTokenView::from(&credential);
    view.secret = Some(secret);
    let max = app.config.personal_tokens_per_user_max;
    app.write(move |s| {
        let held = s
            .credentials
            .values()
            .filter(|c| c.user_id == credential.user_id && c.kind == CredentialKind::PersonalToken)
            .count();
        ApiError::at_most(held, max, "personal access tokens per user")?;
        Ok((vec![Change::PutCredential(credential)], ()))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Revoke one of the signed-in user's personal access tokens.
#[utoipa::path(delete, path = "/api/v1/me/tokens/{token_id}", tag = "users",
    params(("token_id" = Uuid, Path, description = "Token id")),
    responses((status = 204), (status = 404, body = crate::problem::ProblemBody)))]
pub async fn revoke_personal_token(
    State(app): State<App>,
    caller: Caller,
    ApiPath(token_id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    let user = caller.user.id;
    app.write(move |s| {
        let c = s
            .credentials
            .values()
            .find(|c| {
                c.id == token_id && c.user_id == user && c.kind == CredentialKind::PersonalToken
            })
            .ok_or_else(|| {
                ApiError::not_found("unknown-token", "no such personal access token of yours")
            })?;
        Ok((vec![Change::DeleteCredential(c.sha256.clone())], ()))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
