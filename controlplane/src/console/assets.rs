//! The console's style sheet and its one small script, compiled into the binary so that the
//! console needs no files beside it and no build step.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

pub const CSS_PATH: &str = "/app/static/console.css";
pub const JS_PATH: &str = "/app/static/console.js";

const CSS: &str = include_str!("static/console.css");
/// Copy buttons and Escape to cancel an edit; every page works without it.
const JS: &str = include_str!("static/console.js");

pub async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

pub async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}
