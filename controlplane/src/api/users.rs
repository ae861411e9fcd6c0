//! Users: sign-up, e-mail verification, and who is signed in.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::codes::{
    check_code, code_mail, invalid_code, limit_code_attempts, limited, with_new_code,
};
use super::validate::{valid_email, valid_name};
use super::workspaces::first_workspace;
use super::ApiJson;
use crate::app::App;
use crate::auth::{self, Caller};
use crate::model::{CodePurpose, Plan, User};
use crate::problem::{ApiError, ApiResult, ProblemType};
use crate::rate_limit::client_key;
use crate::store::Change;

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
    #[schema(format = Email, max_length = 254)]
    pub email: String,
    /// 10 to 128 characters, not the e-mail address, not one repeated character.
    #[schema(min_length = 10, max_length = 128)]
    pub password: String,
    #[schema(schema_with = super::validate::person_name_schema)]
    pub first_name: String,
    #[schema(schema_with = super::validate::person_name_schema)]
    pub last_name: String,
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
    let view = register(&app, peer, form).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Creates the account and mails its verification code; used by the API and the sign-up form.
pub(super) async fn register(app: &App, peer: SocketAddr, form: SignUp) -> ApiResult<UserView> {
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
    Ok(view)
}

fn taken(email: &str) -> ApiError {
    ApiError::new(
        ProblemType::EmailTaken,
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
    responses((status = 200, body = UserView),
        (status = 400, description = "`invalid-code`: a wrong, expired or used-up code, an unknown address or one verified already, all alike", body = crate::problem::ProblemBody),
        (status = 429, body = crate::problem::ProblemBody)))]
pub async fn verify_email(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(form): ApiJson<EmailCode>,
) -> ApiResult<Json<UserView>> {
    verify(&app, peer, form).await.map(Json)
}

/// Checks the code and marks the address verified; used by the API and the sign-up form.
pub(super) async fn verify(app: &App, peer: SocketAddr, form: EmailCode) -> ApiResult<UserView> {
    limit_code_attempts(app, peer)?;
    let email = form.email;
    let code = form.code;
    app.write(move |s| {
        // An unknown or verified address is refused as a wrong code is (`invalid_code`).
        let user = s
            .user_by_email(&email)
            .filter(|u| !u.email_verified)
            .ok_or_else(invalid_code)?;
        let (mut updated, matched) = check_code(user, CodePurpose::VerifyEmail, code.trim());
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
}

/// The signed-in user.
#[utoipa::path(get, path = "/api/v1/me", tag = "users",
    responses((status = 200, body = UserView), (status = 401, body = crate::problem::ProblemBody)))]
pub async fn me(caller: Caller) -> Json<UserView> {
    Json(UserView::from(&caller.user))
}
