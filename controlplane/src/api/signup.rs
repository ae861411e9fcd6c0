//! The sign-up form, for someone who follows an invitation link without an account: create the
//! account, enter the code mailed to the address, then sign in and return to the link. Each
//! step keeps `next` (the link), and a refusal shows the step again with what was wrong.
//!
//! The steps run the API's own sign-up and verification (`users.rs`), limits included.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

use super::codes::CODE_TTL_MINUTES;
use super::identities::provider_buttons;
use super::links::{login_url, safe_next, LoginQuery};
use super::users::{register, verify, EmailCode, SignUp};
use super::{html, ApiForm, ApiQuery};
use crate::app::App;
use crate::problem::ApiError;

/// Where the sign-up form lives.
pub const SIGNUP_PATH: &str = "/signup";
/// Where the sign-up form sends the mailed code.
const VERIFY_PATH: &str = "/signup/verify";

/// The sign-up form's fields.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SignUpForm {
    #[schema(format = Email, max_length = 254)]
    pub email: String,
    /// 10 to 128 characters, not the e-mail address, not one repeated character.
    #[schema(min_length = 10, max_length = 128)]
    pub password: String,
    #[schema(schema_with = super::validate::person_name_schema)]
    pub first_name: String,
    #[schema(schema_with = super::validate::person_name_schema)]
    pub last_name: String,
    /// Where to go after signing in (see `/login`).
    pub next: Option<String>,
}

/// The code form's fields.
#[derive(Debug, Deserialize, ToSchema)]
pub struct VerifyForm {
    pub email: String,
    /// The six-digit code from the mail.
    pub code: String,
    pub next: Option<String>,
}

/// What the sign-up form shows again after a refusal (never the password).
#[derive(Default)]
struct Typed<'a> {
    email: &'a str,
    first_name: &'a str,
    last_name: &'a str,
}

/// `providers`: the buttons to sign up with a provider instead (HTML, already escaped).
fn signup_form_page(
    next: Option<&str>,
    typed: Typed<'_>,
    refusal: Option<&ApiError>,
    providers: &str,
) -> Response {
    let next = safe_next(next);
    let login = html::escape(&login_url(Some(next)));
    html::form_page(
        "Create a Sluice account",
        refusal,
        &format!(
            "<form method=\"post\" action=\"{SIGNUP_PATH}\">\
<p><label>E-mail <input name=\"email\" type=\"email\" value=\"{email}\" required></label></p>\
<p><label>Password (10 to 128 characters) <input name=\"password\" type=\"password\" minlength=\"10\" maxlength=\"128\" required></label></p>\
<p><label>First name <input name=\"first_name\" value=\"{first}\" required></label></p>\
<p><label>Last name <input name=\"last_name\" value=\"{last}\" required></label></p>\
<input type=\"hidden\" name=\"next\" value=\"{next}\"><p><button>Create account</button></p></form>\
<p>We mail a six-digit code to the address to confirm it. Invited? Use the address the invitation was sent to.</p>\
{providers}\
<p>Have an account? <a href=\"{login}\">Sign in</a>.</p>",
            email = html::escape(typed.email),
            first = html::escape(typed.first_name),
            last = html::escape(typed.last_name),
            next = html::escape(next),
        ),
    )
}

fn code_form_page(next: Option<&str>, email: &str, refusal: Option<&ApiError>) -> Response {
    let next = safe_next(next);
    html::form_page(
        "Confirm your e-mail address",
        refusal,
        &format!(
            "<p>We mailed a six-digit code to <strong>{email}</strong>. It works for \
{CODE_TTL_MINUTES} minutes; without a mail server the control plane writes mail to \
<code>&lt;data-dir&gt;/outbox/</code>.</p>\
<form method=\"post\" action=\"{VERIFY_PATH}\">\
<input type=\"hidden\" name=\"email\" value=\"{email}\">\
<p><label>Code <input name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required></label></p>\
<input type=\"hidden\" name=\"next\" value=\"{next}\"><p><button>Confirm</button></p></form>\
<p>No mail? <code>POST /api/v1/email-verification/code</code> with <code>{{\"email\": \"…\"}}</code> sends a new code.</p>",
            email = html::escape(email),
            next = html::escape(next),
        ),
    )
}

/// The sign-up form.
#[utoipa::path(get, path = "/signup", tag = "users", security(()), params(LoginQuery),
    responses((status = 200, description = "an HTML sign-up form", content_type = "text/html")))]
pub async fn signup_page(
    State(app): State<App>,
    ApiQuery(query): ApiQuery<LoginQuery>,
) -> Response {
    let providers = provider_buttons(&app, safe_next(query.next.as_deref()), "Sign up");
    signup_form_page(query.next.as_deref(), Typed::default(), None, &providers)
}

/// Submits the sign-up form: creates the account as `POST /api/v1/users` does and shows the
/// form for the mailed code. A refusal shows the sign-up form again with what was wrong.
#[utoipa::path(post, path = "/signup", tag = "users", security(()),
    request_body(content = SignUpForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "the form for the mailed code", content_type = "text/html"),
        (status = 400, description = "the form again, saying what was wrong", content_type = "text/html"),
        (status = 409, description = "the form again: the address is registered", content_type = "text/html"),
        (status = 429, description = "the form again, saying when to retry", content_type = "text/html")))]
pub async fn signup_form(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiForm(form): ApiForm<SignUpForm>,
) -> Response {
    let next = form.next.clone();
    let sign_up = SignUp {
        email: form.email.clone(),
        password: form.password,
        first_name: form.first_name.clone(),
        last_name: form.last_name.clone(),
    };
    match register(&app, peer, sign_up).await {
        Ok(user) => code_form_page(next.as_deref(), &user.email, None),
        Err(refusal) => {
            let typed = Typed {
                email: &form.email,
                first_name: &form.first_name,
                last_name: &form.last_name,
            };
            let providers = provider_buttons(&app, safe_next(next.as_deref()), "Sign up");
            signup_form_page(next.as_deref(), typed, Some(&refusal), &providers)
        }
    }
}

/// Submits the mailed code: verifies the address as `POST /api/v1/email-verification` does
/// and goes on to sign in, keeping `next`. A wrong code shows the code form again.
#[utoipa::path(post, path = "/signup/verify", tag = "users", security(()),
    request_body(content = VerifyForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "verified: to `/login?next=…`"),
        (status = 400, description = "the code form again, saying what was wrong", content_type = "text/html"),
        (status = 429, description = "the code form again, saying when to retry", content_type = "text/html")))]
pub async fn verify_form(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiForm(form): ApiForm<VerifyForm>,
) -> Response {
    let next = form.next.clone();
    let email = form.email.clone();
    let check = EmailCode {
        email: form.email,
        code: form.code,
    };
    match verify(&app, peer, check).await {
        Ok(_) => to_login(next.as_deref()),
        Err(refusal) => code_form_page(next.as_deref(), &email, Some(&refusal)),
    }
}

/// A redirect to the sign-in form, keeping `next`.
fn to_login(next: Option<&str>) -> Response {
    let to = login_url(next);
    let location = HeaderValue::from_str(&to).unwrap_or(HeaderValue::from_static("/login"));
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

#[cfg(test)]
mod tests {
    use super::super::links::with_next;
    use super::*;
    use crate::problem::ProblemType;

    #[tokio::test]
    async fn every_step_keeps_a_safe_next_and_escapes_what_was_typed() {
        let next = "/invitations/accept?token=0190f3a0-0000-7000-8000-000000000001";
        assert_eq!(
            with_next(SIGNUP_PATH, Some(next)),
            "/signup?next=%2Finvitations%2Faccept%3Ftoken%3D0190f3a0-0000-7000-8000-000000000001"
        );
        assert_eq!(
            login_url(Some("//evil.example")),
            "/login?next=%2Fapi%2Fv1%2Fme"
        );
        let typed = Typed {
            email: "\"><script>",
            ..Typed::default()
        };
        let refusal = ApiError::new(ProblemType::WeakPassword, "<too short>");
        let response = signup_form_page(Some(next), typed, Some(&refusal), "");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let html = String::from_utf8(body.to_vec()).expect("utf-8");
        assert!(
            html.contains("value=\"&quot;&gt;&lt;script&gt;\""),
            "{html}"
        );
        assert!(html.contains("&lt;too short&gt;"), "{html}");
        assert!(
            !html.contains("<script>") && !html.contains("<too"),
            "{html}"
        );
        assert!(
            html.contains(&format!("name=\"next\" value=\"{next}\"")),
            "{html}"
        );
    }
}
