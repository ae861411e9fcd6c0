//! Reads each request body whole, within `body_read_timeout_ms`, `body_bytes_per_second_min`
//! and `body_bytes_max`, before the request counts against `concurrent_requests_max`.
//!
//! A body is read before the in-flight limit so that clients sending slowly (or not at all,
//! after their headers) take no room from requests that are ready: without it, a few hundred
//! unauthenticated trickling requests held every place and real sign-ins were answered
//! `503 overloaded`. This layer must never wait on anything but the client, and never hold
//! more than `body_bytes_max` for one request.

use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use crate::app::App;
use crate::problem::{ApiError, ProblemType};

/// How long a body may arrive slower than `body_bytes_per_second_min`: a request starting on a
/// slow link gets going in that time (the data plane's grace too).
const BODY_RATE_GRACE: Duration = Duration::from_secs(5);

/// Middleware: hands the request on with its body read, or refuses it (`408 body-timeout`,
/// `413 body-too-large`, `400 invalid-body` for a broken body).
pub async fn read_whole(State(app): State<App>, request: Request, next: Next) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    // An AsyncAPI document describes a whole workspace (up to 1,000 sources with their
    // schemas): it may be larger than any other body, up to its own bound.
    let asyncapi_import =
        parts.method == axum::http::Method::PUT && parts.uri.path().ends_with("/asyncapi");
    // The console's import form carries the same document (a file or pasted), with its fields.
    let console_import = parts.method == axum::http::Method::POST
        && parts.uri.path().starts_with(crate::console::APP_PATH_SLASH)
        && parts.uri.path().ends_with("/asyncapi");
    let bytes_max = if asyncapi_import {
        app.config
            .body_bytes_max
            .max(crate::asyncapi::import::DOCUMENT_BYTES_MAX)
    } else if console_import {
        app.config
            .body_bytes_max
            .max(crate::console::UPLOAD_BYTES_MAX)
    } else {
        app.config.body_bytes_max
    };
    let limits = BodyLimits {
        bytes_max,
        timeout: Duration::from_millis(app.config.body_read_timeout_ms),
        bytes_per_second_min: app.config.body_bytes_per_second_min.max(1),
        rate_grace: BODY_RATE_GRACE,
    };
    match read(body, &limits).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(refusal) => refusal.into_response(),
    }
}

/// What a body must keep to.
struct BodyLimits {
    bytes_max: usize,
    timeout: Duration,
    bytes_per_second_min: usize,
    /// How long the body may arrive slower than `bytes_per_second_min`.
    rate_grace: Duration,
}

async fn read(body: Body, limits: &BodyLimits) -> Result<Vec<u8>, ApiError> {
    let started = tokio::time::Instant::now();
    let deadline = started + limits.timeout;
    let declared = body.size_hint().exact().unwrap_or(0) as usize;
    let mut bytes = Vec::with_capacity(declared.min(limits.bytes_max));
    let mut stream = body.into_data_stream();
    loop {
        // The next bytes are due by the overall deadline and by the minimum rate's.
        let by_rate = started
            + limits.rate_grace
            + Duration::from_secs_f64(
                (bytes.len() + 1) as f64 / limits.bytes_per_second_min as f64,
            );
        let due = by_rate.min(deadline);
        let chunk = match tokio::time::timeout_at(due, stream.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(None) => return Ok(bytes),
            Ok(Some(Err(e))) => {
                return Err(ApiError::new(
                    ProblemType::InvalidBody,
                    format!("the request body could not be read: {e}"),
                ))
            }
            Err(_) if due < deadline => {
                return Err(ApiError::new(
                    ProblemType::BodyTimeout,
                    format!(
                        "the body arrived slower than {} bytes/s; send it in one go",
                        limits.bytes_per_second_min
                    ),
                ))
            }
            Err(_) => {
                return Err(ApiError::new(
                    ProblemType::BodyTimeout,
                    format!(
                        "the body did not arrive within {} s; send it in one go",
                        limits.timeout.as_secs_f64()
                    ),
                ))
            }
        };
        if bytes.len() + chunk.len() > limits.bytes_max {
            return Err(ApiError::new(
                ProblemType::BodyTooLarge,
                format!(
                    "the request body is larger than the API accepts ({} bytes)",
                    limits.bytes_max
                ),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> BodyLimits {
        BodyLimits {
            bytes_max: 8,
            timeout: Duration::from_secs(60),
            bytes_per_second_min: 10,
            rate_grace: Duration::from_millis(100),
        }
    }

    fn trickle(chunks: &'static [&'static [u8]], pause: Duration) -> Body {
        Body::from_stream(
            futures::stream::iter(chunks.iter()).then(move |c| async move {
                tokio::time::sleep(pause).await;
                Ok::<_, std::io::Error>(axum::body::Bytes::from_static(c))
            }),
        )
    }

    #[tokio::test]
    async fn a_body_arriving_in_time_is_read_whole() {
        let body = trickle(&[b"{\"a\"", b":1}"], Duration::from_millis(50));
        assert_eq!(read(body, &limits()).await.expect("read"), b"{\"a\":1}");
    }

    #[tokio::test]
    async fn a_body_too_slow_or_too_large_is_refused() {
        let slow = trickle(&[b"{", b"}"], Duration::from_millis(400));
        let refusal = read(slow, &limits()).await.expect_err("too slow");
        assert_eq!(refusal.kind, ProblemType::BodyTimeout);
        assert!(
            refusal.detail.contains("slower than 10 bytes/s"),
            "{refusal:?}"
        );
        let late = BodyLimits {
            timeout: Duration::from_millis(150),
            rate_grace: Duration::from_secs(1),
            ..limits()
        };
        let refusal = read(trickle(&[b"{}"], Duration::from_millis(300)), &late)
            .await
            .expect_err("late");
        assert_eq!(refusal.kind, ProblemType::BodyTimeout);
        assert!(refusal.detail.contains("within 0.15 s"), "{refusal:?}");
        let large = trickle(&[b"12345", b"6789"], Duration::ZERO);
        let refusal = read(large, &limits()).await.expect_err("too large");
        assert_eq!(refusal.kind, ProblemType::BodyTooLarge);
    }
}
