//! The checks of what users type, shared by the handlers: e-mail addresses, names, slugs. Each
//! returns the value to store (trimmed) or the refusal that says what is wrong.

use sluice_config::snapshot::{is_valid_slug, SLUG_LEN_MAX};
use uuid::Uuid;

use crate::problem::{ApiError, ApiResult, ProblemType};

/// Longest first or last name, and token name.
const PERSON_NAME_CHARS_MAX: usize = 100;
/// Longest display name of a workspace or source.
const DISPLAY_NAME_CHARS_MAX: usize = 200;

/// Checks an e-mail address; returns it trimmed.
pub fn valid_email(email: &str) -> ApiResult<String> {
    let email = email.trim();
    if email.len() > 254 || email.parse::<lettre::Address>().is_err() {
        return Err(ApiError::new(
            ProblemType::InvalidEmail,
            format!("{email:?} is not an e-mail address"),
        ));
    }
    Ok(email.to_owned())
}

/// Checks a person's or a token's name.
pub fn valid_name(field: &str, name: &str) -> ApiResult<String> {
    valid_text(field, name, PERSON_NAME_CHARS_MAX)
}

/// Checks a free-text name (display names, first and last names, token names): trimmed, 1 to
/// `chars_max` characters, no control characters. `field` names it in the refusal.
pub fn valid_text(field: &str, text: &str, chars_max: usize) -> ApiResult<String> {
    let text = text.trim();
    if text.is_empty() || text.chars().count() > chars_max || text.chars().any(char::is_control) {
        return Err(ApiError::new(
            ProblemType::InvalidName,
            format!("{field} must have 1 to {chars_max} printable characters"),
        ));
    }
    Ok(text.to_owned())
}

/// Checks a workspace's, source's or token's display name.
pub fn valid_display_name(name: &str) -> ApiResult<String> {
    valid_text("the name", name, DISPLAY_NAME_CHARS_MAX)
}

/// The white space `str::trim` removes (Unicode `White_Space`) above Latin-1, as regex class
/// items; spelled out because `\s` means slightly different sets in ECMAScript, Python and Rust.
const WHITE_SPACE_ABOVE_LATIN1: &str = r"\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

/// The JSON Schema `pattern` of what [`valid_text`] accepts with `chars_max`: 1 to
/// `chars_max` characters between optional white space, none of them a control character.
/// No `maxLength` goes with it: the white space around the text does not count.
pub fn text_pattern(chars_max: usize) -> String {
    let other = WHITE_SPACE_ABOVE_LATIN1;
    // Trimmed: white space (the Latin-1 part is `\t`-`\r`, space, NEL and NBSP).
    let space = format!(r"[\t-\r \x85\xA0{other}]");
    // First and last character: neither white space nor a control character.
    let visible = format!(r"[^\x00-\x20\x7F-\xA0{other}]");
    // Any other: not a control character.
    let printable = r"[^\x00-\x1F\x7F-\x9F]";
    let inner = chars_max.saturating_sub(2);
    format!("^{space}*{visible}(?:{printable}{{0,{inner}}}{visible})?{space}*$")
}

/// The schema of a text field checked by [`valid_text`] with `chars_max`; `null` allowed when
/// `optional`.
fn text_schema(chars_max: usize, optional: bool) -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    let schema_type: SchemaType = if optional {
        [Type::String, Type::Null].into_iter().collect()
    } else {
        Type::String.into()
    };
    ObjectBuilder::new()
        .schema_type(schema_type)
        .min_length(Some(1))
        .pattern(Some(text_pattern(chars_max)))
        .description(Some(format!(
            "1 to {chars_max} characters, not counting white space around them; no control characters"
        )))
        .build()
}

/// Schema of a first or last name or a personal token's name ([`valid_name`]).
pub fn person_name_schema() -> utoipa::openapi::schema::Object {
    text_schema(PERSON_NAME_CHARS_MAX, false)
}

/// Schema of a display name ([`valid_display_name`]).
pub fn display_name_schema() -> utoipa::openapi::schema::Object {
    text_schema(DISPLAY_NAME_CHARS_MAX, false)
}

/// Schema of an optional display name ([`valid_display_name`]).
pub fn optional_display_name_schema() -> utoipa::openapi::schema::Object {
    text_schema(DISPLAY_NAME_CHARS_MAX, true)
}

/// Schema of an optional name checked by [`valid_text`] with `chars_max`.
pub fn optional_text_schema(chars_max: usize) -> utoipa::openapi::schema::Object {
    text_schema(chars_max, true)
}

/// Schema of an SMTP user name, which `smtp.rs` checks with [`valid_text`] and 254.
pub fn smtp_username_schema() -> utoipa::openapi::schema::Object {
    text_schema(254, true)
}

/// Schema of an SMTP sender name, which `smtp.rs` checks with [`valid_text`] and 100.
pub fn smtp_from_name_schema() -> utoipa::openapi::schema::Object {
    text_schema(100, true)
}

/// Checks a slug given by a user. A slug that reads as a UUID is refused: paths take ids or
/// slugs, and such a slug could never be reached.
pub fn valid_slug(slug: &str) -> ApiResult<String> {
    if Uuid::parse_str(slug).is_ok() {
        return Err(ApiError::new(
            ProblemType::InvalidSlug,
            format!("{slug:?} reads as an id; choose a slug with a word in it"),
        ));
    }
    if !is_valid_slug(slug) {
        return Err(ApiError::new(
            ProblemType::InvalidSlug,
            format!(
                "{slug:?} is not a valid slug: use 1 to {SLUG_LEN_MAX} characters of a-z, 0-9 and -, starting with a letter or digit"
            ),
        ));
    }
    Ok(slug.to_owned())
}
