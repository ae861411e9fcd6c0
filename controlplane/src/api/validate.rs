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
