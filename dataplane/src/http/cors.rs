//! Cross-origin requests to the ingest API: web pages on the origins a workspace allows (set in
//! the control plane, carried by the configuration) may send events with `fetch`.
//!
//! A preflight (`OPTIONS` with `Origin`) from an allowed origin gets the headers that let the
//! browser go on; every response to an allowed origin, refusals included, carries
//! `Access-Control-Allow-Origin` so that the page can read the problem+json. Anyone else gets
//! no CORS header at all, and the browser keeps the response from the page. Nothing here is
//! authentication: the token is checked as for any request.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::access::ConfigView;

/// How long a browser may cache a preflight's answer, in seconds.
pub const MAX_AGE_SECS: u32 = 600;
/// The request headers a page may send.
const ALLOW_HEADERS: &str = "Authorization, Content-Type, Content-Encoding, X-Device-Id";
/// The response headers a page may read besides the CORS-safelisted ones.
const EXPOSE_HEADERS: &str = "Retry-After";

/// The request's `Origin` when the workspace of `path` allows it.
pub fn allowed_origin(view: &ConfigView, path: &str, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let workspace = path
        .strip_prefix("/v1/ingest/")?
        .split('/')
        .next()
        .filter(|w| !w.is_empty())?;
    view.cors_allows(workspace, origin.to_str().ok()?)
        .then(|| origin.clone())
}

/// The answer to an `OPTIONS` request on an ingest URL.
pub fn preflight(origin: Option<HeaderValue>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"));
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(MAX_AGE_SECS),
        );
    }
    response
}

/// Lets a page on `origin` read `response`.
pub fn allow(response: &mut Response<Full<Bytes>>, origin: HeaderValue) {
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
}
