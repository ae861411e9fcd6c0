//! Password reset in the browser: the address, then the mailed code with the new password,
//! then the sign-in form. The steps run the API's own operations (`POST
//! /api/v1/password-reset/code`, `POST /api/v1/password-reset`), limits included; nobody is
//! signed in, so there is no session token to check, only that the form comes from this site.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use serde::Deserialize;

use super::csrf::same_site;
use super::frame;
use crate::api::codes::EmailOnly;
use crate::api::html::escape;
use crate::api::links::{login_url, safe_next, LoginQuery};
use crate::api::password_reset::{request_password_reset, reset_password, PasswordReset};
use crate::api::{ApiJson, ApiQuery};
use crate::app::App;
use crate::problem::ApiError;

/// Where the first step lives.
pub const PASSWORD_RESET_PATH: &str = "/password-reset";
/// Where the code and the new password go.
const CONFIRM_PATH: &str = "/password-reset/confirm";

/// The form asking for the address.
fn address_page(next: Option<&str>, refusal: Option<&ApiError>) -> Response {
    let next = escape(safe_next(next));
    frame::public_page(
        "Reset your password",
        refusal,
        &format!(
            "<form method=\"post\" action=\"{PASSWORD_RESET_PATH}\">\
<p><label>E-mail <input name=\"email\" type=\"email\" required maxlength=\"254\"></label></p>\
<input type=\"hidden\" name=\"next\" value=\"{next}\"><p><button>Send a code</button></p></form>\
<p>We mail a six-digit code to the address if it has an account.</p>"
        ),
    )
}

/// The form asking for the code and the new password.
fn code_page(email: &str, next: Option<&str>, refusal: Option<&ApiError>) -> Response {
    let next = escape(safe_next(next));
    frame::public_page(
        "Choose a new password",
        refusal,
        &format!(
            "<p>If <strong>{email}</strong> has an account, a six-digit code is on its way.</p>\
<form method=\"post\" action=\"{CONFIRM_PATH}\"><input type=\"hidden\" name=\"email\" value=\"{email}\">\
<p><label>Code <input name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required></label></p>\
<p><label>New password (10 to 128 characters) <input name=\"password\" type=\"password\" \
autocomplete=\"new-password\" minlength=\"10\" maxlength=\"128\" required></label></p>\
<input type=\"hidden\" name=\"next\" value=\"{next}\"><p><button>Set the password</button></p></form>\
<p>Setting it signs out every session and revokes your personal access tokens.</p>",
            email = escape(email),
        ),
    )
}

/// The first step.
pub async fn page(ApiQuery(query): ApiQuery<LoginQuery>) -> Response {
    address_page(query.next.as_deref(), None)
}

/// The address form.
#[derive(Debug, Deserialize)]
pub struct AddressForm {
    email: String,
    next: Option<String>,
}

/// Sends the code as `POST /api/v1/password-reset/code` does.
pub async fn send_code(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<AddressForm>,
) -> Response {
    if let Err(why) = same_site(&headers) {
        return frame::message_page(StatusCode::FORBIDDEN, "Request refused", why);
    }
    let asked = EmailOnly {
        email: form.email.clone(),
    };
    match request_password_reset(State(app), ConnectInfo(peer), ApiJson(asked)).await {
        Ok(_) => code_page(&form.email, form.next.as_deref(), None),
        Err(refusal) => address_page(form.next.as_deref(), Some(&refusal)),
    }
}

/// The code form.
#[derive(Debug, Deserialize)]
pub struct CodeForm {
    email: String,
    code: String,
    password: String,
    next: Option<String>,
}

/// Sets the password as `POST /api/v1/password-reset` does, then on to sign in.
pub async fn confirm(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<CodeForm>,
) -> Response {
    if let Err(why) = same_site(&headers) {
        return frame::message_page(StatusCode::FORBIDDEN, "Request refused", why);
    }
    let reset = PasswordReset {
        email: form.email.clone(),
        code: form.code,
        password: form.password,
    };
    match reset_password(State(app), ConnectInfo(peer), ApiJson(reset)).await {
        Ok(_) => frame::see_other(&login_url(form.next.as_deref())),
        Err(refusal) => code_page(&form.email, form.next.as_deref(), Some(&refusal)),
    }
}
