//! The few pages a browser reaches from a mail (sign-in, sign-up): one frame, HTML escaping,
//! and refusals shown on the page instead of as problem+json.
//!
//! The pages are plain server-rendered forms without scripts or outside resources; everything
//! that comes from a request is escaped.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use crate::problem::ApiError;

/// `text` safe in HTML text and in double-quoted attribute values.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A whole page: `title` as its title and heading, then `body` (HTML, already escaped).
pub fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let title = escape(title);
    (
        status,
        Html(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
<body><h1>{title}</h1>{body}</body></html>"
        )),
    )
        .into_response()
}

/// A form page that shows `refusal` above the form, with the refusal's status (and its
/// `Retry-After`), or 200 without one.
pub fn form_page(title: &str, refusal: Option<&ApiError>, form: &str) -> Response {
    let (status, alert) = match refusal {
        Some(e) => (
            e.status(),
            format!(
                "<p role=\"alert\"><strong>{}</strong></p>",
                escape(&e.detail)
            ),
        ),
        None => (StatusCode::OK, String::new()),
    };
    let mut response = page(status, title, &format!("{alert}{form}"));
    if let Some(seconds) = refusal.and_then(|e| e.retry_after_s) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn markup_and_quotes_are_escaped() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
