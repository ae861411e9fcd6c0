//! One-time codes sent by e-mail (address verification, password reset): issuing, mailing,
//! checking, and the limits on asking for and guessing them.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use chrono::{Duration, Utc};
use serde::Deserialize;
use utoipa::ToSchema;

use super::validate::valid_email;
use super::ApiJson;
use crate::app::App;
use crate::auth::{self};
use crate::mail::Mail;
use crate::model::{CodePurpose, MailPurpose, OneTimeCode, User};
use crate::problem::{ApiError, ApiResult, ProblemType};
use crate::rate_limit::client_key;
use crate::store::Change;

/// How long a code sent by e-mail works.
pub(super) const CODE_TTL_MINUTES: i64 = 15;
/// Wrong guesses a code allows before it is void.
pub(super) const CODE_ATTEMPTS: u32 = 5;

pub(super) fn limited(result: Result<(), u64>, what: &str) -> ApiResult<()> {
    result.map_err(|wait| ApiError::rate_limited(what, wait))
}

/// Asking for and guessing codes from one client address is limited across accounts too.
pub(super) fn limit_code_attempts(app: &App, peer: SocketAddr) -> ApiResult<()> {
    limited(
        app.limits
            .code_attempts_per_address
            .hit(&client_key(peer.ip())),
        "code attempts from this address",
    )
}

/// Issues a new one-time code for `user`, returns the updated user and the code in clear.
pub(super) fn with_new_code(user: &User, purpose: CodePurpose) -> (User, String) {
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

pub(super) fn code_mail(to: &str, purpose: CodePurpose, code: &str) -> Mail {
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
        purpose: match purpose {
            CodePurpose::VerifyEmail => MailPurpose::EmailVerification,
            CodePurpose::ResetPassword => MailPurpose::PasswordReset,
        },
        workspace: None,
    }
}

/// The one refusal of a code, whatever was wrong: a wrong, expired or used-up code, an
/// address nobody registered, or one verified already. Telling these apart (or how many
/// guesses are left) would tell anyone who is registered and who is verified.
pub(super) fn invalid_code() -> ApiError {
    ApiError::new(
        ProblemType::InvalidCode,
        "the code is wrong, expired or used up; request a new one \
         (an address verified already can sign in)",
    )
}

/// Checks `code` against the user's pending code of `purpose`. Returns the user to store (with
/// the code consumed or its attempts counted) and whether it matched.
pub(super) fn check_code(user: &User, purpose: CodePurpose, code: &str) -> (User, ApiResult<()>) {
    let mut updated = user.clone();
    let Some(pending) = user.code.as_ref().filter(|c| c.purpose == purpose) else {
        return (updated, Err(invalid_code()));
    };
    if pending.expires_at <= Utc::now() {
        updated.code = None;
        return (updated, Err(invalid_code()));
    }
    if auth::code_hash(user.id, code) == pending.sha256 {
        updated.code = None;
        return (updated, Ok(()));
    }
    let left = pending.attempts_left.saturating_sub(1);
    if left == 0 {
        updated.code = None;
    } else if let Some(c) = updated.code.as_mut() {
        c.attempts_left = left;
    }
    (updated, Err(invalid_code()))
}

/// An e-mail address.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailOnly {
    #[schema(format = Email, max_length = 254)]
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
pub(super) async fn send_code(
    app: &App,
    email: &str,
    purpose: CodePurpose,
) -> ApiResult<StatusCode> {
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
