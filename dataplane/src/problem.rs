//! Refusals as RFC 9457 `application/problem+json` responses.
//!
//! Every refusal has a stable `type` (`urn:sluice:problem:<slug>`) that clients can match on;
//! `title` is the same for every instance of a type, `detail` says what was wrong with this
//! request and what to do. The list of types is part of the API (docs/http-ingest.md).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

/// Prefix of every problem type URI.
pub const TYPE_PREFIX: &str = "urn:sluice:problem:";

/// A refusal, before it becomes a response.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    /// Stable slug, e.g. `invalid-token`; also the `outcome` label in metrics.
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// Seconds for `Retry-After` (429 and 503).
    pub retry_after_s: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            status,
            kind,
            title,
            detail: detail.into(),
            retry_after_s: None,
        }
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = Body {
            kind: format!("{TYPE_PREFIX}{}", self.kind),
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = Response::new(Full::new(Bytes::from(json)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sluice\""),
            );
        }
        response
    }
}
