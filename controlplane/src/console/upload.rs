//! A form that may carry a file (`enctype="multipart/form-data"`), with the same checks as
//! every other form (`csrf.rs`: this site only, this session's token) and a bound of its own:
//! a whole AsyncAPI document, which may be larger than other bodies. A form sent without a
//! file input (URL-encoded) is taken too.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, StatusCode};
use axum::response::Response;

use super::csrf::{self, FIELD};
use super::frame;
use super::multipart::{self, Part};
use super::visitor::Visitor;
use crate::app::App;
use crate::asyncapi::import::DOCUMENT_BYTES_MAX;

/// The largest form with a file: a document at the API's bound, and room for the other fields
/// (the same document pasted in the text area as well is refused, not cut).
pub const UPLOAD_BYTES_MAX: usize = DOCUMENT_BYTES_MAX + 64 * 1024;

/// A form with a file, posted from one of the console's own pages by a signed-in visitor.
pub struct CheckedUpload {
    pub visitor: Visitor,
    pub parts: Vec<Part>,
}

impl CheckedUpload {
    /// The first field named `name` as text (lossy: a file that is not UTF-8 shows as such in
    /// the API's refusal); empty when absent.
    pub fn text(&self, name: &str) -> String {
        self.parts
            .iter()
            .find(|p| p.name == name)
            .map(|p| String::from_utf8_lossy(&p.data).into_owned())
            .unwrap_or_default()
    }
}

impl FromRequest<App> for CheckedUpload {
    /// A readable page saying why the form was refused (or the sign-in redirect).
    type Rejection = Response;

    async fn from_request(request: Request, app: &App) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let visitor = Visitor::from_request_parts(&mut parts, app).await?;
        csrf::same_site(&parts.headers).map_err(csrf::refused)?;
        let bytes = axum::body::to_bytes(body, UPLOAD_BYTES_MAX)
            .await
            .map_err(|_| {
                frame::message_page(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The form is too large",
                    &format!(
                        "the form is larger than {UPLOAD_BYTES_MAX} bytes; a document is at \
                         most {DOCUMENT_BYTES_MAX}"
                    ),
                )
            })?;
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let fields = if content_type.starts_with("application/x-www-form-urlencoded") {
            url::form_urlencoded::parse(&bytes)
                .take(multipart::PARTS_MAX)
                .map(|(name, value)| Part {
                    name: name.into_owned(),
                    filename: None,
                    data: value.into_owned().into_bytes(),
                })
                .collect()
        } else {
            multipart::boundary(content_type)
                .and_then(|boundary| multipart::parse(&bytes, &boundary))
                .map_err(|e| {
                    frame::message_page(
                        StatusCode::BAD_REQUEST,
                        "The form was not understood",
                        &e.to_string(),
                    )
                })?
        };
        let upload = CheckedUpload {
            visitor,
            parts: fields,
        };
        csrf::check_token(Some(&upload.text(FIELD)), &upload.visitor).map_err(csrf::refused)?;
        Ok(upload)
    }
}
