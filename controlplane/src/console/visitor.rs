//! Who is looking at a console page: the signed-in caller (session cookie or bearer token) and
//! the CSRF token of that session. Anyone else is sent to sign in and back.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, Method};
use axum::response::{IntoResponse, Redirect, Response};

use super::csrf::{self, CheckedForm, NoFields};
use super::frame;
use super::APP_PATH;
use crate::api::links::login_url;
use crate::api::sessions;
use crate::app::App;
use crate::auth::{presented_secret, Caller};

/// A signed-in visitor of the console.
pub struct Visitor {
    pub caller: Caller,
    /// The token every state-changing form of this session carries (`csrf.rs`).
    pub csrf: String,
}

impl FromRequestParts<App> for Visitor {
    /// Not signed in: a redirect to the sign-in form, back to this page afterwards.
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Response> {
        let signed_in = presented_secret(parts)
            .and_then(|secret| Caller::from_secret(app, &secret).map(|c| (c, secret)));
        match signed_in {
            Some((caller, secret)) => Ok(Visitor {
                caller,
                csrf: csrf::token_for(&secret),
            }),
            None => {
                // A form posted after the session ended cannot be replayed: back to the home.
                let back = match parts.method {
                    Method::GET => parts.uri.path_and_query().map_or(APP_PATH, |p| p.as_str()),
                    _ => APP_PATH,
                };
                Err(Redirect::to(&login_url(Some(back))).into_response())
            }
        }
    }
}

/// Signs out: ends the session as `DELETE /api/v1/sessions/current` does, clears the cookie
/// and shows the sign-in form.
pub async fn sign_out(State(app): State<App>, posted: CheckedForm<NoFields>) -> Response {
    let visitor = posted.visitor;
    match sessions::sign_out(State(app.clone()), visitor.caller.clone()).await {
        Ok(ended) => {
            let mut response = Redirect::to(&login_url(Some(APP_PATH))).into_response();
            if let Some(cookie) = ended.headers().get(header::SET_COOKIE) {
                response
                    .headers_mut()
                    .insert(header::SET_COOKIE, cookie.clone());
            }
            response
        }
        Err(refusal) => frame::message_page(refusal.status(), "Not signed out", &refusal.detail),
    }
}
