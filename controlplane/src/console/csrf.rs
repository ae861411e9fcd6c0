//! Cross-site request forgery: a form that changes something is taken only with the token of
//! the session that was shown the form (a synchronizer token, derived from the session secret
//! so that nothing more is stored) and only from this site (`Origin`, `Sec-Fetch-Site`). The
//! session cookie is `SameSite=Lax` besides, so other sites' POSTs do not even carry it.

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::frame;
use super::visitor::Visitor;
use crate::app::App;
use crate::auth::sha256_hex;

/// The form field that carries the token.
pub const FIELD: &str = "csrf";

/// The CSRF token of the session whose secret is `secret`: not the secret, and not usable as one.
pub fn token_for(secret: &str) -> String {
    sha256_hex(&format!("sluice console csrf\n{secret}"))
}

/// The hidden field every state-changing form carries.
pub fn hidden_field(token: &str) -> String {
    format!("<input type=\"hidden\" name=\"{FIELD}\" value=\"{token}\">")
}

/// A form with no fields besides the token (revoke, cancel, remove, sign out).
#[derive(Debug, Deserialize)]
pub struct NoFields {}

/// A form posted from one of the console's own pages by a signed-in visitor.
pub struct CheckedForm<T> {
    pub visitor: Visitor,
    pub form: T,
}

impl<T: DeserializeOwned + Send> FromRequest<App> for CheckedForm<T> {
    /// A readable page saying why the form was refused (or the sign-in redirect).
    type Rejection = Response;

    async fn from_request(request: Request, app: &App) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let visitor = Visitor::from_request_parts(&mut parts, app).await?;
        if let Err(why) = same_site(&parts.headers) {
            return Err(refused(why));
        }
        let bytes = axum::body::to_bytes(body, app.config.body_bytes_max)
            .await
            .map_err(|_| refused("the form is larger than this server takes"))?;
        let sent = url::form_urlencoded::parse(&bytes)
            .find(|(name, _)| name == FIELD)
            .map(|(_, value)| value.into_owned());
        check_token(sent.as_deref(), &visitor).map_err(refused)?;
        let request = Request::from_parts(parts, Body::from(bytes));
        let Form(form) = Form::<T>::from_request(request, app).await.map_err(|e| {
            frame::message_page(
                StatusCode::BAD_REQUEST,
                "The form was not understood",
                &e.body_text(),
            )
        })?;
        Ok(CheckedForm { visitor, form })
    }
}

/// Passes when `sent` is the visitor's session's token, else says why not.
pub(super) fn check_token(sent: Option<&str>, visitor: &Visitor) -> Result<(), &'static str> {
    // Compared as hashes, so the time taken says nothing about the expected token.
    let matches = sent.is_some_and(|s| sha256_hex(s) == sha256_hex(&visitor.csrf));
    if !matches {
        return Err(
            "the form did not carry this session's security token: it was not sent from \
             this console, or you signed in again since it was shown",
        );
    }
    Ok(())
}

/// Refuses a request a browser says comes from another site: `Sec-Fetch-Site` other than
/// `same-origin` or `none`, or an `Origin` that is not this server's (`Host`). Clients that
/// send neither (not browsers) still need the token.
pub(super) fn same_site(headers: &HeaderMap) -> Result<(), &'static str> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site")) {
        if site != "same-origin" && site != "none" {
            return Err("the form was sent from another site");
        }
    }
    if let Some(origin) = text(header::ORIGIN) {
        let host = text(header::HOST).unwrap_or_default();
        let ours = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|authority| !host.is_empty() && authority == host);
        if !ours {
            return Err("the form was sent from another origin");
        }
    }
    Ok(())
}

pub(super) fn refused(why: &str) -> Response {
    frame::message_page(StatusCode::FORBIDDEN, "Request refused", why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn forms_from_this_site_pass_and_other_origins_are_refused() {
        assert!(same_site(&headers(&[])).is_ok());
        assert!(same_site(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
        ]))
        .is_ok());
        for evil in [
            &[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://evil.example"),
            ][..],
            &[("host", "127.0.0.1:8080"), ("origin", "null")],
            &[("origin", "http://127.0.0.1:8080")],
            &[("sec-fetch-site", "cross-site")],
            &[("sec-fetch-site", "same-site")],
        ] {
            assert!(same_site(&headers(evil)).is_err(), "{evil:?}");
        }
    }

    #[test]
    fn the_token_is_per_session_and_not_the_secret() {
        let a = token_for("sluice_ses_a");
        assert_ne!(a, token_for("sluice_ses_b"));
        assert!(!a.contains("sluice_ses_a"));
        assert_eq!(a, token_for("sluice_ses_a"));
    }
}
