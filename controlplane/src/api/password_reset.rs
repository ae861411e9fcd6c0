//! Password reset by a code sent by e-mail.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;

use super::codes::{check_code, invalid_code, limit_code_attempts, send_code, EmailOnly};
use super::workspaces::first_workspace;
use super::ApiJson;
use crate::app::App;
use crate::auth::{self};
use crate::model::CodePurpose;
use crate::problem::ApiResult;
use crate::store::Change;

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
    /// 10 to 128 characters, not the e-mail address, not one repeated character.
    #[schema(min_length = 10, max_length = 128)]
    pub password: String,
}

/// Set a new password with the code sent by e-mail; ends every session and revokes every
/// personal access token of the user.
#[utoipa::path(post, path = "/api/v1/password-reset", tag = "users", security(()),
    request_body = PasswordReset,
    responses((status = 204), (status = 400, body = crate::problem::ProblemBody),
        (status = 429, body = crate::problem::ProblemBody)))]
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
        let user = s.user_by_email(&email).ok_or_else(invalid_code)?;
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
