//! Refusals of the control-plane API as RFC 9457 `application/problem+json`.
//!
//! Every refusal has a stable `type` (`urn:sluice:problem:<slug>`, the same prefix as the data
//! plane's) that scripts match on, a `title` that is the same for every refusal of that type,
//! and a `detail` that says what to do. [`ProblemType`] is the one list of types: call sites
//! name a variant, so a typo is a compile error rather than a silent change of the public API,
//! and a test keeps the table in docs/control-plane.md equal to it.

use axum::extract::rejection::{FormRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

/// Prefix of every problem type URI.
pub const TYPE_PREFIX: &str = "urn:sluice:problem:";

/// Declares [`ProblemType`] from one table, so that the enum, [`ProblemType::ALL`] and the
/// slug, status and title of each variant cannot disagree.
macro_rules! problem_types {
    ($($(#[$doc:meta])* $variant:ident => ($status:ident, $slug:literal, $title:literal),)+) => {
        /// Every problem type the control-plane API answers with.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ProblemType {
            $($(#[$doc])* $variant,)+
        }

        impl ProblemType {
            /// All of them, in the order of the table in docs/control-plane.md.
            pub const ALL: &'static [ProblemType] = &[$(ProblemType::$variant,)+];

            /// `(slug, status, title)`.
            const fn parts(self) -> (&'static str, StatusCode, &'static str) {
                match self {
                    $(ProblemType::$variant => ($slug, StatusCode::$status, $title),)+
                }
            }
        }
    };
}

problem_types! {
    MalformedJson => (BAD_REQUEST, "malformed-json", "Malformed JSON"),
    InvalidBody => (BAD_REQUEST, "invalid-body", "Invalid request body"),
    InvalidQuery => (BAD_REQUEST, "invalid-query", "Invalid query parameter"),
    InvalidEmail => (BAD_REQUEST, "invalid-email", "Invalid e-mail address"),
    InvalidName => (BAD_REQUEST, "invalid-name", "Invalid name"),
    WeakPassword => (BAD_REQUEST, "weak-password", "Password too weak"),
    InvalidSlug => (BAD_REQUEST, "invalid-slug", "Invalid slug"),
    InvalidScopes => (BAD_REQUEST, "invalid-scopes", "Invalid token scopes"),
    InvalidDeviceId => (BAD_REQUEST, "invalid-device-id", "Invalid device id"),
    InvalidExpiry => (BAD_REQUEST, "invalid-expiry", "Invalid expiry"),
    InvalidProtocols => (BAD_REQUEST, "invalid-protocols", "Invalid protocols"),
    /// A source's JSON Schema the nodes could not apply; `errors` lists each problem with its
    /// JSON pointer into the schema.
    InvalidSchema => (BAD_REQUEST, "invalid-schema", "Invalid schema"),
    InvalidTagRule => (BAD_REQUEST, "invalid-tag-rule", "Invalid tag rule"),
    InvalidOrigin => (BAD_REQUEST, "invalid-origin", "Invalid CORS origin"),
    /// An output the nodes could not evaluate, or whose pointers do not fit its source's
    /// schema.
    InvalidOutput => (BAD_REQUEST, "invalid-output", "Invalid output"),
    InvalidExportEndpoint => (BAD_REQUEST, "invalid-export-endpoint", "Invalid export endpoint"),
    /// A webhook field nodes would refuse, or a URL that is not `https://` or whose host does
    /// not resolve.
    InvalidWebhook => (BAD_REQUEST, "invalid-webhook", "Invalid webhook"),
    /// A webhook URL whose host resolves to a loopback, private, link-local or otherwise
    /// non-public address, while the operator allows none (`smtp_allow_private_hosts`).
    AddressNotAllowed => (BAD_REQUEST, "address-not-allowed", "Address not allowed"),
    /// A new token's `sources` names a source the workspace does not have; the same slug as
    /// [`ProblemType::UnknownSource`], with 400 because the path itself is fine.
    /// Likewise a tag rule's `sources` and an output's `source`.
    UnknownNamedSource => (BAD_REQUEST, "unknown-source", "Unknown source named in the body"),
    /// An export endpoint's `output` names an output the workspace does not have; the same
    /// slug as [`ProblemType::UnknownOutput`], with 400 because the path itself is fine.
    UnknownNamedOutput => (BAD_REQUEST, "unknown-output", "Unknown output named in the body"),
    /// A new token's `endpoints` names an export endpoint the workspace does not have; the
    /// same slug as [`ProblemType::UnknownExportEndpoint`].
    UnknownNamedEndpoint => (BAD_REQUEST, "unknown-export-endpoint", "Unknown export endpoint named in the body"),
    InvalidCode => (BAD_REQUEST, "invalid-code", "Invalid code"),
    InvalidSmtpSettings => (BAD_REQUEST, "invalid-smtp-settings", "Invalid SMTP settings"),
    NotASession => (BAD_REQUEST, "not-a-session", "Not a session"),
    InvalidNode => (BAD_REQUEST, "invalid-node", "Invalid node id"),
    /// A sign-in callback whose `state` is unknown, used, expired, for another provider or
    /// from another browser.
    SignInStateInvalid => (BAD_REQUEST, "sign-in-state-invalid", "Sign-in state invalid"),
    /// The provider refused: an error at the callback, a used or wrong code.
    SignInFailed => (BAD_REQUEST, "sign-in-failed", "Sign-in failed at the provider"),
    /// The provider's ID token failed a check (signature, issuer, audience, expiry, nonce).
    IdTokenInvalid => (BAD_REQUEST, "id-token-invalid", "ID token invalid"),
    Unauthenticated => (UNAUTHORIZED, "unauthenticated", "Not authenticated"),
    EmailNotVerified => (FORBIDDEN, "email-not-verified", "E-mail address not verified"),
    InsufficientRole => (FORBIDDEN, "insufficient-role", "Role does not allow this"),
    /// An OAuth access token whose grant's scopes do not cover the operation (the role may).
    InsufficientScope => (FORBIDDEN, "insufficient-scope", "Scope does not allow this"),
    OperatorOnly => (FORBIDDEN, "operator-only", "Operators only"),
    WorkspaceDisabled => (FORBIDDEN, "workspace-disabled", "Workspace disabled"),
    InvitationEmailMismatch => (FORBIDDEN, "invitation-email-mismatch", "Invitation for another address"),
    /// The provider does not assert the address is verified: a mailed code confirms it first.
    IdentityUnverifiedEmail => (FORBIDDEN, "identity-unverified-email", "E-mail address not verified by the provider"),
    SmtpNotConfigured => (NOT_FOUND, "smtp-not-configured", "No workspace SMTP server"),
    UnknownWorkspace => (NOT_FOUND, "unknown-workspace", "Unknown workspace"),
    UnknownMember => (NOT_FOUND, "unknown-member", "Unknown member"),
    UnknownSession => (NOT_FOUND, "unknown-session", "Unknown session"),
    UnknownInvitation => (NOT_FOUND, "unknown-invitation", "Unknown invitation"),
    UnknownToken => (NOT_FOUND, "unknown-token", "Unknown access token"),
    UnknownSource => (NOT_FOUND, "unknown-source", "Unknown source"),
    UnknownTagRule => (NOT_FOUND, "unknown-tag-rule", "Unknown tag rule"),
    UnknownOutput => (NOT_FOUND, "unknown-output", "Unknown output"),
    UnknownExportEndpoint => (NOT_FOUND, "unknown-export-endpoint", "Unknown export endpoint"),
    UnknownWebhook => (NOT_FOUND, "unknown-webhook", "Unknown webhook"),
    UnknownUser => (NOT_FOUND, "unknown-user", "Unknown user"),
    UnknownProvider => (NOT_FOUND, "unknown-provider", "Unknown sign-in provider"),
    UnknownIdentity => (NOT_FOUND, "unknown-identity", "Unknown identity"),
    UnknownGrant => (NOT_FOUND, "unknown-grant", "Unknown OAuth grant"),
    NotFound => (NOT_FOUND, "not-found", "Not found"),
    NoRoute => (NOT_FOUND, "no-route", "No such endpoint"),
    ClusterDisabled => (NOT_FOUND, "cluster-disabled", "Configuration stream disabled"),
    MethodNotAllowed => (METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed"),
    BodyTimeout => (REQUEST_TIMEOUT, "body-timeout", "Body too slow"),
    EmailTaken => (CONFLICT, "email-taken", "E-mail address taken"),
    SlugTaken => (CONFLICT, "slug-taken", "Slug taken"),
    SourceExists => (CONFLICT, "source-exists", "Source exists"),
    OutputExists => (CONFLICT, "output-exists", "Output exists"),
    ExportEndpointExists => (CONFLICT, "export-endpoint-exists", "Export endpoint exists"),
    WebhookExists => (CONFLICT, "webhook-exists", "Webhook exists"),
    /// The change would leave something pointing at nothing: a source read by an output, an
    /// output served by an endpoint or delivered by a webhook, an endpoint named by a token,
    /// or a source schema an output no longer fits. `detail` names them.
    InUse => (CONFLICT, "in-use", "In use"),
    AlreadyMember => (CONFLICT, "already-member", "Already a member"),
    LastAdmin => (CONFLICT, "last-admin", "Last Admin"),
    LastWorkspace => (CONFLICT, "last-workspace", "Last workspace"),
    LimitReached => (CONFLICT, "limit-reached", "Limit reached"),
    /// Unlinking the identity would leave the user no way to sign in.
    LastSignInMethod => (CONFLICT, "last-sign-in-method", "Last way to sign in"),
    InvitationExpired => (GONE, "invitation-expired", "Invitation expired"),
    /// An AsyncAPI import's `If-Match` names a configuration version that is no longer the
    /// current one.
    ConfigChanged => (PRECONDITION_FAILED, "config-changed", "Configuration changed"),
    BodyTooLarge => (PAYLOAD_TOO_LARGE, "body-too-large", "Request body too large"),
    UnsupportedMediaType => (UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type"),
    /// An AsyncAPI document that cannot be imported; `errors` lists every problem with its
    /// JSON pointer into the document.
    InvalidAsyncapi => (UNPROCESSABLE_ENTITY, "invalid-asyncapi", "Invalid AsyncAPI document"),
    RateLimited => (TOO_MANY_REQUESTS, "rate-limited", "Rate limit exceeded"),
    Internal => (INTERNAL_SERVER_ERROR, "internal", "Internal error"),
    /// A sign-in provider could not be reached or answered nonsense.
    ProviderUnavailable => (BAD_GATEWAY, "provider-unavailable", "Sign-in provider unavailable"),
    /// `sluice_call` could not forward events to the data plane's ingest URL (no connection,
    /// no answer in time).
    IngestUnavailable => (BAD_GATEWAY, "ingest-unavailable", "Ingest unavailable"),
    StorageUnavailable => (SERVICE_UNAVAILABLE, "storage-unavailable", "Storage unavailable"),
    MailUnavailable => (SERVICE_UNAVAILABLE, "mail-unavailable", "Mail unavailable"),
    Overloaded => (SERVICE_UNAVAILABLE, "overloaded", "Control plane overloaded"),
    Timeout => (SERVICE_UNAVAILABLE, "timeout", "Request timed out"),
}

impl ProblemType {
    /// The stable slug, e.g. `unknown-workspace`.
    pub const fn slug(self) -> &'static str {
        self.parts().0
    }

    pub const fn status(self) -> StatusCode {
        self.parts().1
    }

    /// The same for every refusal of this type.
    pub const fn title(self) -> &'static str {
        self.parts().2
    }

    /// `urn:sluice:problem:<slug>`.
    pub fn uri(self) -> String {
        format!("{TYPE_PREFIX}{}", self.slug())
    }
}

/// A refusal, before it becomes a response.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Gives the status, the `type` and the `title`.
    pub kind: ProblemType,
    /// What was wrong with this request and what to do.
    pub detail: String,
    /// Seconds for `Retry-After` (429 and 503).
    pub retry_after_s: Option<u64>,
    /// Each thing wrong in the body, where it is (`invalid-schema`).
    pub errors: Vec<FieldError>,
}

/// One thing wrong in a request body, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON pointer (RFC 6901) into the value the refusal is about (for `invalid-schema`, the
    /// submitted schema); empty for the whole value.
    pub pointer: String,
    /// What is wrong there.
    pub message: String,
}

impl FieldError {
    pub fn at(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemBody {
    /// `urn:sluice:problem:<slug>`; stable.
    #[serde(rename = "type")]
    #[schema(schema_with = problem_type_schema)]
    pub kind: String,
    /// The same for every refusal of this `type`.
    pub title: String,
    pub status: u16,
    /// What was wrong with this request and what to do.
    pub detail: String,
    /// An extension member of some types (`invalid-schema`): each thing wrong, with its JSON
    /// pointer. Absent otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    pub errors: Vec<FieldError>,
}

/// `type` in the OpenAPI document: a string, one of the URIs of [`ProblemType::ALL`].
fn problem_type_schema() -> utoipa::openapi::schema::Object {
    // `unknown-source`, `unknown-output` and `unknown-export-endpoint` are each one type with
    // two statuses: listed once.
    let mut uris: Vec<String> = Vec::with_capacity(ProblemType::ALL.len());
    for uri in ProblemType::ALL.iter().map(|k| k.uri()) {
        if !uris.contains(&uri) {
            uris.push(uri);
        }
    }
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some(
            "`urn:sluice:problem:<slug>`; stable. docs/control-plane.md lists when each is answered.",
        ))
        .enum_values(Some(uris))
        .build()
}

impl ApiError {
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        ApiError {
            kind,
            detail: detail.into(),
            retry_after_s: None,
            errors: Vec::new(),
        }
    }

    /// Adds the `errors` extension member: each thing wrong, with its pointer.
    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds.max(1));
        self
    }

    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        Self::new(ProblemType::Unauthenticated, detail)
    }

    /// Refuses to go past a configured bound on how many of something may exist.
    pub fn at_most(count: usize, max: usize, what: &str) -> Result<(), ApiError> {
        if count >= max {
            return Err(ApiError::new(
                ProblemType::LimitReached,
                format!("at most {max} {what}; delete some first"),
            ));
        }
        Ok(())
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(ProblemType::Internal, detail)
    }

    pub fn rate_limited(what: &str, retry_after_s: u64) -> Self {
        Self::new(
            ProblemType::RateLimited,
            format!("too many {what}; retry after {retry_after_s} s"),
        )
        .retry_after(retry_after_s)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "control-plane store failed");
        ApiError::new(
            ProblemType::StorageUnavailable,
            "the control plane could not save the change; retry later",
        )
        .retry_after(5)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                ProblemType::UnsupportedMediaType,
                "send the body as JSON with Content-Type: application/json",
            ),
            JsonRejection::JsonSyntaxError(e) => ApiError::new(
                ProblemType::MalformedJson,
                format!("the body is not JSON: {e}"),
            ),
            JsonRejection::JsonDataError(e) => ApiError::new(
                ProblemType::InvalidBody,
                format!("the body does not fit: {e}"),
            ),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(
                    ProblemType::BodyTooLarge,
                    "the request body is larger than the API accepts",
                )
            }
            other => ApiError::new(ProblemType::InvalidBody, other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::new(ProblemType::InvalidQuery, rejection.body_text())
    }
}

impl From<FormRejection> for ApiError {
    fn from(rejection: FormRejection) -> Self {
        match rejection {
            FormRejection::InvalidFormContentType(_) => ApiError::new(
                ProblemType::UnsupportedMediaType,
                "send the form as application/x-www-form-urlencoded",
            ),
            FormRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(
                    ProblemType::BodyTooLarge,
                    "the request body is larger than the API accepts",
                )
            }
            other => ApiError::new(ProblemType::InvalidBody, other.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::new(ProblemType::NotFound, rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ProblemBody {
            kind: self.kind.uri(),
            title: self.kind.title().to_owned(),
            status: status.as_u16(),
            detail: self.detail,
            errors: self.errors,
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (status, bytes).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The rows of the table under "## Problem types" in docs/control-plane.md:
    /// `(status, slug, title)`.
    fn documented() -> Vec<(u16, String, String)> {
        let doc = include_str!("../../docs/control-plane.md");
        let section = doc
            .split("\n## Problem types")
            .nth(1)
            .expect("docs/control-plane.md has a section \"## Problem types\"");
        let section = section.split("\n## ").next().unwrap_or_default();
        section
            .lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let status = cells.get(1)?.parse().ok()?;
                let slug = cells.get(2)?.strip_prefix('`')?.strip_suffix('`')?;
                Some((status, slug.to_owned(), (*cells.get(3)?).to_owned()))
            })
            .collect()
    }

    fn table() -> String {
        ProblemType::ALL
            .iter()
            .map(|k| {
                format!(
                    "| {} | `{}` | {} | ... |\n",
                    k.status().as_u16(),
                    k.slug(),
                    k.title()
                )
            })
            .collect()
    }

    /// Every type is documented with its status and title, and every documented type is one
    /// the control plane answers with.
    #[test]
    fn the_documented_problem_types_are_the_ones_answered() {
        let rows = documented();
        let expected: Vec<(u16, String, String)> = ProblemType::ALL
            .iter()
            .map(|k| {
                (
                    k.status().as_u16(),
                    k.slug().to_owned(),
                    k.title().to_owned(),
                )
            })
            .collect();
        for row in &expected {
            assert!(
                rows.contains(row),
                "{row:?} is not documented in docs/control-plane.md; the table should read:\n{}",
                table()
            );
        }
        for row in &rows {
            assert!(
                expected.contains(row),
                "documented {row:?} is not a problem type; the table should read:\n{}",
                table()
            );
        }
        assert_eq!(rows.len(), expected.len(), "a type is documented twice");
    }

    #[test]
    fn each_slug_and_status_names_one_type() {
        let mut seen = HashSet::new();
        for kind in ProblemType::ALL {
            let slug = kind.slug();
            assert!(
                !slug.is_empty()
                    && slug
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{kind:?}: {slug:?} is not a lowercase slug"
            );
            assert!(
                kind.status().is_client_error() || kind.status().is_server_error(),
                "{kind:?}"
            );
            assert!(!kind.title().is_empty(), "{kind:?}");
            assert!(
                seen.insert((slug, kind.status())),
                "{kind:?}: {slug} with {} twice",
                kind.status()
            );
        }
    }

    #[tokio::test]
    async fn a_refusal_carries_its_type_title_and_status() {
        let response = ApiError::new(ProblemType::UnknownWorkspace, "no workspace \"x\"")
            .retry_after(0)
            .into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            body,
            serde_json::json!({
                "type": "urn:sluice:problem:unknown-workspace",
                "title": "Unknown workspace",
                "status": 404,
                "detail": "no workspace \"x\"",
            })
        );
    }

    #[test]
    fn the_openapi_document_lists_every_problem_type() {
        let (_, document) = crate::api::router_and_document();
        let json: serde_json::Value =
            serde_json::from_str(&document.to_json().expect("document")).expect("json");
        let listed: HashSet<String> = json["components"]["schemas"]["ProblemBody"]["properties"]
            ["type"]["enum"]
            .as_array()
            .expect("an enum of type URIs")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        let expected: HashSet<String> = ProblemType::ALL.iter().map(|k| k.uri()).collect();
        assert_eq!(listed, expected);
    }
}
