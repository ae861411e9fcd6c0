//! Refusals as RFC 9457 `application/problem+json` responses.
//!
//! Every refusal has a stable `type` (`urn:sluice:problem:<slug>`) that clients can match on;
//! `title` is the same for every instance of a type, `detail` says what was wrong with this
//! request and what to do. The list of types is part of the API (docs/http-ingest.md, and
//! docs/data-out.md for export endpoints).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::shape::EventFailure;

/// Prefix of every problem type URI.
pub const TYPE_PREFIX: &str = "urn:sluice:problem:";

/// Every problem type the ingest API answers with: its slug, status and title. The table in
/// `docs/http-ingest.md` lists the same (a test checks it), so a typo cannot silently change
/// the public API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemType {
    MethodNotAllowed,
    NotFound,
    NotConfigured,
    MissingToken,
    InvalidDeviceId,
    InvalidToken,
    TokenExpired,
    UnknownWorkspace,
    WrongWorkspace,
    WorkspaceDisabled,
    MissingScope,
    UnknownSource,
    SourceNotAllowed,
    ProtocolNotAllowed,
    DeviceNotAllowed,
    UnsupportedMediaType,
    UnsupportedEncoding,
    InvalidContentLength,
    BodyTooLarge,
    StorageUnavailable,
    StorageFull,
    Overloaded,
    BodyTimeout,
    InvalidBody,
    InvalidEncoding,
    MalformedJson,
    InvalidEvent,
    TooManyEvents,
    InvalidEvents,
    RateLimited,
    UnknownEndpoint,
    EndpointNotAllowed,
    InvalidCursor,
    InvalidParameter,
}

impl ProblemType {
    /// All of them, in the order of the documentation's table.
    #[cfg(test)]
    pub const ALL: [ProblemType; 34] = [
        ProblemType::MethodNotAllowed,
        ProblemType::NotFound,
        ProblemType::NotConfigured,
        ProblemType::MissingToken,
        ProblemType::InvalidDeviceId,
        ProblemType::InvalidToken,
        ProblemType::TokenExpired,
        ProblemType::UnknownWorkspace,
        ProblemType::WrongWorkspace,
        ProblemType::WorkspaceDisabled,
        ProblemType::MissingScope,
        ProblemType::UnknownSource,
        ProblemType::SourceNotAllowed,
        ProblemType::ProtocolNotAllowed,
        ProblemType::DeviceNotAllowed,
        ProblemType::UnsupportedMediaType,
        ProblemType::UnsupportedEncoding,
        ProblemType::InvalidContentLength,
        ProblemType::BodyTooLarge,
        ProblemType::StorageUnavailable,
        ProblemType::StorageFull,
        ProblemType::Overloaded,
        ProblemType::BodyTimeout,
        ProblemType::InvalidBody,
        ProblemType::InvalidEncoding,
        ProblemType::MalformedJson,
        ProblemType::InvalidEvent,
        ProblemType::TooManyEvents,
        ProblemType::InvalidEvents,
        ProblemType::RateLimited,
        ProblemType::UnknownEndpoint,
        ProblemType::EndpointNotAllowed,
        ProblemType::InvalidCursor,
        ProblemType::InvalidParameter,
    ];

    /// `(slug, status, title)`.
    fn parts(self) -> (&'static str, StatusCode, &'static str) {
        use ProblemType as P;
        use StatusCode as S;
        match self {
            P::MethodNotAllowed => (
                "method-not-allowed",
                S::METHOD_NOT_ALLOWED,
                "Method not allowed",
            ),
            P::NotFound => ("not-found", S::NOT_FOUND, "Not found"),
            P::NotConfigured => (
                "not-configured",
                S::SERVICE_UNAVAILABLE,
                "Node not configured yet",
            ),
            P::MissingToken => ("missing-token", S::UNAUTHORIZED, "Missing access token"),
            P::InvalidDeviceId => ("invalid-device-id", S::BAD_REQUEST, "Invalid device id"),
            P::InvalidToken => ("invalid-token", S::UNAUTHORIZED, "Invalid access token"),
            P::TokenExpired => ("token-expired", S::UNAUTHORIZED, "Access token expired"),
            P::UnknownWorkspace => ("unknown-workspace", S::NOT_FOUND, "Unknown workspace"),
            P::WrongWorkspace => (
                "wrong-workspace",
                S::FORBIDDEN,
                "Token of another workspace",
            ),
            P::WorkspaceDisabled => ("workspace-disabled", S::FORBIDDEN, "Workspace disabled"),
            P::MissingScope => (
                "missing-scope",
                S::FORBIDDEN,
                "Token lacks the scope this needs",
            ),
            P::UnknownSource => ("unknown-source", S::NOT_FOUND, "Unknown source"),
            P::SourceNotAllowed => (
                "source-not-allowed",
                S::FORBIDDEN,
                "Source not allowed for this token",
            ),
            P::ProtocolNotAllowed => (
                "protocol-not-allowed",
                S::FORBIDDEN,
                "Protocol not allowed for this source",
            ),
            P::DeviceNotAllowed => (
                "device-not-allowed",
                S::FORBIDDEN,
                "Device not allowed for this token",
            ),
            P::UnsupportedMediaType => (
                "unsupported-media-type",
                S::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported media type",
            ),
            P::UnsupportedEncoding => (
                "unsupported-encoding",
                S::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported content encoding",
            ),
            P::InvalidContentLength => (
                "invalid-content-length",
                S::BAD_REQUEST,
                "Invalid Content-Length",
            ),
            P::BodyTooLarge => (
                "body-too-large",
                S::PAYLOAD_TOO_LARGE,
                "Request body too large",
            ),
            P::StorageUnavailable => (
                "storage-unavailable",
                S::SERVICE_UNAVAILABLE,
                "Node storage unavailable",
            ),
            P::StorageFull => ("storage-full", S::SERVICE_UNAVAILABLE, "Node storage full"),
            P::Overloaded => ("overloaded", S::SERVICE_UNAVAILABLE, "Node overloaded"),
            P::BodyTimeout => ("body-timeout", S::REQUEST_TIMEOUT, "Body too slow"),
            P::InvalidBody => ("invalid-body", S::BAD_REQUEST, "Unreadable body"),
            P::InvalidEncoding => (
                "invalid-encoding",
                S::BAD_REQUEST,
                "Body does not decompress",
            ),
            P::MalformedJson => ("malformed-json", S::BAD_REQUEST, "Malformed JSON"),
            P::InvalidEvent => (
                "invalid-event",
                S::BAD_REQUEST,
                "Event is not a JSON object",
            ),
            P::TooManyEvents => ("too-many-events", S::PAYLOAD_TOO_LARGE, "Too many events"),
            P::InvalidEvents => (
                "invalid-events",
                S::UNPROCESSABLE_ENTITY,
                "Events do not match the source's schema",
            ),
            P::RateLimited => ("rate-limited", S::TOO_MANY_REQUESTS, "Rate limit exceeded"),
            P::UnknownEndpoint => ("unknown-endpoint", S::NOT_FOUND, "Unknown export endpoint"),
            P::EndpointNotAllowed => (
                "endpoint-not-allowed",
                S::FORBIDDEN,
                "Export endpoint not allowed for this token",
            ),
            P::InvalidCursor => ("invalid-cursor", S::BAD_REQUEST, "Invalid cursor"),
            P::InvalidParameter => (
                "invalid-parameter",
                S::BAD_REQUEST,
                "Invalid query parameter",
            ),
        }
    }

    /// The stable slug, e.g. `invalid-token`; also the `outcome` label in metrics.
    pub fn slug(self) -> &'static str {
        self.parts().0
    }

    pub fn status(self) -> StatusCode {
        self.parts().1
    }

    /// The same for every instance of the type.
    pub fn title(self) -> &'static str {
        self.parts().2
    }
}

/// A refusal, before it becomes a response.
#[derive(Debug, Clone)]
pub struct Problem {
    pub kind: ProblemType,
    /// What was wrong with this request and what to do.
    pub detail: String,
    /// Seconds for `Retry-After` (429 and 503).
    pub retry_after_s: Option<u64>,
    /// `invalid-events`: the events the schema refused (at most 100), as `errors`.
    pub errors: Option<Vec<EventFailure>>,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [EventFailure]>,
}

impl Problem {
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Problem {
            kind,
            detail: detail.into(),
            retry_after_s: None,
            errors: None,
        }
    }

    /// With the list of events a schema refused.
    pub fn with_errors(mut self, errors: Vec<EventFailure>) -> Self {
        self.errors = Some(errors);
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let status = self.kind.status();
        let body = Body {
            kind: format!("{TYPE_PREFIX}{}", self.kind.slug()),
            title: self.kind.title(),
            status: status.as_u16(),
            detail: &self.detail,
            errors: self.errors.as_deref(),
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = Response::new(Full::new(Bytes::from(json)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sluice\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented table of problem types (docs/http-ingest.md) and this enum agree: every
    /// type is documented with its status, and every documented type exists.
    #[test]
    fn the_documented_problem_types_are_the_ones_answered() {
        // Ingest's table and the export endpoints' one.
        let doc = concat!(
            include_str!("../../../docs/http-ingest.md"),
            include_str!("../../../docs/data-out.md")
        );
        let rows: Vec<(u16, String)> = doc
            .lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let status = cells.get(2)?.parse().ok()?;
                let slug = cells.get(3)?.strip_prefix('`')?.strip_suffix('`')?;
                Some((status, slug.to_owned()))
            })
            .collect();
        assert!(rows.len() >= ProblemType::ALL.len(), "table not found");
        for kind in ProblemType::ALL {
            assert!(
                rows.contains(&(kind.status().as_u16(), kind.slug().to_owned())),
                "{kind:?} is not documented as {} `{}`",
                kind.status().as_u16(),
                kind.slug()
            );
        }
        for (status, slug) in &rows {
            assert!(
                ProblemType::ALL
                    .iter()
                    .any(|k| k.slug() == slug && k.status().as_u16() == *status),
                "documented {status} `{slug}` is not a problem type"
            );
        }
    }
}
