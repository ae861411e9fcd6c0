//! The refusals operations share, written into the OpenAPI document from what each operation
//! declares (a body, query or path parameters, a caller), so that no annotation has to repeat
//! them and none can forget one.
//!
//! Before a handler runs, the extractors and layers it sits behind may refuse the request:
//! - a body (`ApiJson`, `ApiForm`): 400 `malformed-json` or `invalid-body`, 413
//!   `body-too-large` (the router's `DefaultBodyLimit`), 415 `unsupported-media-type`;
//! - query parameters (`ApiQuery`): 400 `invalid-query`;
//! - path parameters (`ApiPath`): 404 `not-found` (a malformed id names nothing);
//! - a required caller (`Caller`): 401 `unauthenticated`;
//! - the limits around the whole router (load shedding, timeout) and a failing store: 503
//!   `overloaded`, `timeout` or `storage-unavailable`, with `Retry-After`.
//!
//! Every refusal is `application/problem+json` with a `ProblemBody`; annotations name the body
//! and this module gives error responses that media type. It only ever adds to what an
//! annotation says (a handler's HTML refusal keeps its `text/html`), so an annotation stays
//! the place for what one handler refuses.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Response};

/// The media type of every refusal (RFC 9457).
const PROBLEM_JSON: &str = "application/problem+json";

/// Gives every error response the problem+json media type and adds the refusals each
/// operation can meet before its handler runs.
pub fn document_refusals(mut document: OpenApi) -> OpenApi {
    for item in document.paths.paths.values_mut() {
        for operation in operations_mut(item) {
            for (status, response) in operation.responses.responses.iter_mut() {
                if is_error(status) {
                    if let RefOr::T(response) = response {
                        as_problem_json(response);
                    }
                }
            }
            for (status, description) in shared_refusals(operation) {
                add_refusal(operation, status, description);
            }
            for (status, response) in operation.responses.responses.iter_mut() {
                if let (true, RefOr::T(response)) = (status == "429" || status == "503", response) {
                    with_retry_after(response);
                }
            }
        }
    }
    document
}

/// Every operation of a path.
pub fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

fn is_error(status: &str) -> bool {
    status.parse::<u16>().is_ok_and(|s| s >= 400)
        || status.starts_with('4')
        || status.starts_with('5')
}

/// The refusals `operation` can meet outside its handler, with what they mean.
fn shared_refusals(operation: &Operation) -> Vec<(&'static str, &'static str)> {
    let mut refusals = Vec::new();
    let parameters = operation.parameters.as_deref().unwrap_or_default();
    let has = |place: ParameterIn| {
        parameters
            .iter()
            .any(|p| matches!(p, RefOr::T(p) if p.parameter_in == place))
    };
    if operation.request_body.is_some() {
        refusals.extend([
            (
                "400",
                "The body is not what the operation takes (`malformed-json`, `invalid-body`), \
                 a parameter is invalid, or a value breaks a rule of the operation",
            ),
            (
                "413",
                "`body-too-large`: the body is larger than the control plane's `body_bytes_max`",
            ),
            (
                "415",
                "`unsupported-media-type`: the body is not sent with the media type the \
                 operation takes",
            ),
        ]);
    }
    if has(ParameterIn::Query) {
        refusals.push((
            "400",
            "`invalid-query`: a query parameter is malformed or out of its range, or a value \
             breaks a rule of the operation",
        ));
    }
    if has(ParameterIn::Path) {
        refusals.push((
            "404",
            "Nothing by that name here (`not-found` for a malformed id, or the `unknown-…` type \
             of what is missing)",
        ));
    }
    if requires_caller(operation) {
        refusals.push((
            "401",
            "`unauthenticated`: no session or personal token, or an unknown, revoked or \
             expired one",
        ));
    }
    refusals.push((
        "503",
        "`overloaded`, `timeout` or `storage-unavailable`: retry after `Retry-After` seconds",
    ));
    refusals
}

/// Whether the operation takes only signed-in callers: it inherits the document's security
/// (a session or personal token) or names schemes of its own, none of them optional (`{}`).
fn requires_caller(operation: &Operation) -> bool {
    operation.security.as_ref().is_none_or(|alternatives| {
        !alternatives.is_empty()
            && alternatives
                .iter()
                .all(|requirement| *requirement != Default::default())
    })
}

/// Adds `status` with a problem+json body, or the problem+json body to the `status` the
/// annotation already has (which keeps its description and other media types).
fn add_refusal(operation: &mut Operation, status: &str, description: &str) {
    let responses = &mut operation.responses.responses;
    match responses.get_mut(status) {
        Some(RefOr::T(response)) => {
            if !response.content.contains_key(PROBLEM_JSON) {
                response
                    .content
                    .insert(PROBLEM_JSON.to_owned(), problem_content());
            }
        }
        Some(RefOr::Ref(_)) => {}
        None => {
            let mut response = Response::new(description);
            response
                .content
                .insert(PROBLEM_JSON.to_owned(), problem_content());
            responses.insert(status.to_owned(), RefOr::T(response));
        }
    }
}

/// Renames the `application/json` body of an error response (utoipa's default media type) to
/// `application/problem+json`, which is what every refusal is sent as.
fn as_problem_json(response: &mut Response) {
    if let Some(content) = response.content.shift_remove("application/json") {
        response
            .content
            .entry(PROBLEM_JSON.to_owned())
            .or_insert(content);
    }
}

fn problem_content() -> RefOr<Content> {
    RefOr::T(Content::new(Some(Ref::from_schema_name("ProblemBody"))))
}

fn with_retry_after(response: &mut Response) {
    response
        .headers
        .entry("Retry-After".to_owned())
        .or_insert_with(|| {
            RefOr::T(
                HeaderBuilder::new()
                    .schema(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(1)),
                    ))
                    .description(Some("Seconds to wait before trying again"))
                    .build(),
            )
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> serde_json::Value {
        let (_, document) = crate::api::router_and_document();
        serde_json::from_str(&document.to_json().expect("document")).expect("json")
    }

    /// Every error response of every operation is problem+json, but for the HTML forms'
    /// own answers, which show the form again.
    #[test]
    fn every_error_response_is_problem_json() {
        let document = document();
        for (path, item) in document["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("item") {
                for (status, response) in operation["responses"].as_object().expect("responses") {
                    if status.as_str() < "400" {
                        continue;
                    }
                    let content = response["content"].as_object().expect("content");
                    let html_only = content.keys().all(|media| media == "text/html");
                    if !html_only {
                        assert_eq!(
                            response["content"][PROBLEM_JSON]["schema"]["$ref"],
                            "#/components/schemas/ProblemBody",
                            "{method} {path} {status}: {response}"
                        );
                    }
                    assert!(
                        content
                            .keys()
                            .all(|media| media == PROBLEM_JSON || media == "text/html"),
                        "{method} {path} {status}: {response}"
                    );
                }
            }
        }
    }

    /// The refusals of the extractors and layers are where they can happen, and only there.
    #[test]
    fn shared_refusals_follow_what_an_operation_takes() {
        let document = document();
        let statuses = |path: &str, method: &str| -> Vec<String> {
            document["paths"][path][method]["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path}"))
                .keys()
                .cloned()
                .collect()
        };
        // A body, a path parameter, a caller.
        let put_cors = statuses("/api/v1/workspaces/{workspace}/cors", "put");
        for status in ["400", "401", "404", "413", "415", "503"] {
            assert!(
                put_cors.contains(&status.to_owned()),
                "{status}: {put_cors:?}"
            );
        }
        // Nothing but the limits.
        assert_eq!(statuses("/healthz", "get"), ["200", "503"]);
        // Signed in or not, the invitation link answers; it never asks for a caller.
        let link = statuses("/invitations/accept", "get");
        assert!(!link.contains(&"401".to_owned()), "{link:?}");
        assert!(link.contains(&"400".to_owned()), "{link:?}");
        let retry = &document["paths"]["/healthz"]["get"]["responses"]["503"]["headers"];
        assert!(retry.get("Retry-After").is_some(), "{retry}");
    }
}
