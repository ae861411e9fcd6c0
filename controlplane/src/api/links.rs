//! The pages behind links in mails: the invitation link and the sign-in form it redirects to
//! when nobody is signed in (which links to the sign-up form, `signup.rs`, for newcomers).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use super::signup::SIGNUP_PATH;
use super::workspaces::WorkspaceView;
use super::{html, ApiForm, ApiQuery};
use crate::api::invitations::accept;
use crate::api::sessions::{open_session, session_cookie};
use crate::app::App;
use crate::auth::{presented_secret, Caller};
use crate::problem::{ApiError, ApiResult};

/// Where the sign-in form lives.
pub const LOGIN_PATH: &str = "/login";

/// The token of an invitation link.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LinkQuery {
    pub token: String,
}

/// Where to go after signing in.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LoginQuery {
    /// A path on this server.
    pub next: Option<String>,
}

/// The sign-in form's fields.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LoginForm {
    pub email: String,
    pub password: String,
    pub next: Option<String>,
}

/// The caller if a valid session or token came with the request.
pub struct MaybeCaller(Option<Caller>);

impl FromRequestParts<App> for MaybeCaller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        Ok(MaybeCaller(
            presented_secret(parts).and_then(|secret| Caller::from_secret(app, &secret)),
        ))
    }
}

/// Where the form may send people afterwards: the invitation link, a console page or an API
/// path of this server, written in plain visible ASCII (browsers drop tabs and newlines from URLs, which
/// would turn `/\t/evil.example` into `//evil.example`). Anything else goes to `/api/v1/me`.
pub(crate) fn safe_next(next: Option<&str>) -> &str {
    let allowed = |n: &str| {
        (n.starts_with("/invitations/accept?")
            || n == crate::console::APP_PATH
            || n.starts_with(crate::console::APP_PATH_SLASH)
            || n.starts_with("/api/v1/")
            || n.starts_with(crate::oauth::authorize::AUTHORIZE_PATH_QUERY))
            && n.bytes().all(|b| b.is_ascii_graphic())
            && !n.contains("//")
            && !n.contains('\\')
    };
    match next {
        Some(n) if allowed(n) => n,
        _ => "/api/v1/me",
    }
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn sign_in_only_returns_to_this_servers_invitation_link_or_api() {
        let token = "/invitations/accept?token=0190f3a0-0000-7000-8000-000000000001";
        assert_eq!(safe_next(Some(token)), token);
        let authorize = "/oauth/authorize?client_id=x&resource=http%3A%2F%2Fh%2Fmcp%2Fw";
        assert_eq!(safe_next(Some(authorize)), authorize);
        assert_eq!(safe_next(Some("/api/v1/workspaces")), "/api/v1/workspaces");
        assert_eq!(safe_next(Some("/app")), "/app");
        assert_eq!(
            safe_next(Some("/app/w/fleet/access")),
            "/app/w/fleet/access"
        );
        for evil in [
            "//evil.example",
            "/\t/evil.example",
            "/%09/evil.example/api/v1/",
            "https://evil.example",
            "/\\evil.example",
            "/login",
            "/api/v1//evil.example",
            "/app//evil.example",
            "/apps",
        ] {
            assert_eq!(safe_next(Some(evil)), "/api/v1/me", "{evil:?}");
        }
        assert_eq!(safe_next(None), "/api/v1/me");
    }
}

/// The link in an invitation mail: accepts the invitation for the signed-in user, or sends
/// them to sign in first and back here afterwards.
#[utoipa::path(get, path = "/invitations/accept", tag = "invitations", params(LinkQuery),
    security((), ("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = WorkspaceView), (status = 303, description = "not signed in: to the sign-in form"),
        (status = 403, body = crate::problem::ProblemBody), (status = 404, body = crate::problem::ProblemBody),
        (status = 410, body = crate::problem::ProblemBody)))]
pub async fn accept_link(
    State(app): State<App>,
    MaybeCaller(caller): MaybeCaller,
    headers: axum::http::HeaderMap,
    ApiQuery(query): ApiQuery<LinkQuery>,
) -> ApiResult<Response> {
    // A browser lands in the console's workspace; any other client gets the JSON.
    let browser = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    match caller {
        Some(caller) if browser => Ok(match accept(&app, caller, &query.token).await {
            Ok(joined) => Redirect::to(&crate::console::joined_url(&joined.slug)).into_response(),
            Err(refusal) => html::form_page("The invitation was not accepted", Some(&refusal), ""),
        }),
        Some(caller) => Ok(Json(accept(&app, caller, &query.token).await?).into_response()),
        None => {
            let back = format!("/invitations/accept?token={}", query.token);
            let to = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("next", &back)
                .finish();
            Ok(Redirect::to(&format!("{LOGIN_PATH}?{to}")).into_response())
        }
    }
}

/// `/login?next=…` for `next` (made safe).
pub(crate) fn login_url(next: Option<&str>) -> String {
    with_next(LOGIN_PATH, next)
}

/// `path?next=…` for `next` (made safe).
pub(super) fn with_next(path: &str, next: Option<&str>) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("next", safe_next(next))
        .finish();
    format!("{path}?{query}")
}

/// The sign-in form, with `refusal` above it and `email` filled in when it was sent before.
fn login_form_page(
    app: &App,
    next: Option<&str>,
    email: &str,
    refusal: Option<&ApiError>,
) -> Response {
    let next = safe_next(next);
    let signup = html::escape(&with_next(SIGNUP_PATH, Some(next)));
    let reset = html::escape(&with_next(crate::console::PASSWORD_RESET_PATH, Some(next)));
    let providers = super::identities::provider_buttons(app, next, "Sign in");
    html::form_page(
        "Sign in to Sluice",
        refusal,
        &format!(
            "<form method=\"post\" action=\"{LOGIN_PATH}\">\
<p><label>E-mail <input name=\"email\" type=\"email\" value=\"{email}\" required></label></p>\
<p><label>Password <input name=\"password\" type=\"password\" required></label></p>\
<input type=\"hidden\" name=\"next\" value=\"{next}\"><p><button>Sign in</button></p></form>\
<p><a href=\"{reset}\">Forgot your password?</a></p>\
{providers}<p>New to Sluice? <a href=\"{signup}\">Create an account</a> with the address you were invited at.</p>",
            email = html::escape(email),
            next = html::escape(next),
        ),
    )
}

/// The sign-in form.
#[utoipa::path(get, path = "/login", tag = "users", security(()), params(LoginQuery),
    responses((status = 200, description = "an HTML sign-in form with a link to sign up", content_type = "text/html")))]
pub async fn login_page(State(app): State<App>, ApiQuery(query): ApiQuery<LoginQuery>) -> Response {
    login_form_page(&app, query.next.as_deref(), "", None)
}

/// Submits the sign-in form: sets the session cookie and goes on to `next`. A refusal (wrong
/// e-mail or password, too many attempts) shows the form again with what was wrong.
#[utoipa::path(post, path = "/login", tag = "users", security(()),
    request_body(content = LoginForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "signed in: to `next`, with the session cookie"),
        (status = 401, description = "the form again, saying the e-mail or password is wrong", content_type = "text/html"),
        (status = 429, description = "the form again, saying when to retry", content_type = "text/html")))]
pub async fn login_form(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiForm(form): ApiForm<LoginForm>,
) -> Response {
    let session = match open_session(&app, peer, &form.email, form.password).await {
        Ok(session) => session,
        Err(refusal) => {
            return login_form_page(&app, form.next.as_deref(), &form.email, Some(&refusal))
        }
    };
    let next = safe_next(form.next.as_deref());
    let mut response = (
        StatusCode::SEE_OTHER,
        [(
            header::LOCATION,
            HeaderValue::from_str(next).unwrap_or(HeaderValue::from_static("/api/v1/me")),
        )],
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&app, Some(&session)));
    response
}
