//! The official AsyncAPI 3.0.0 JSON Schema, which every imported document must meet before its
//! entities are read: `asyncapi-3.0.0.schema.json` beside this file is
//! `schemas/3.0.0-without-$id.json` of the npm package `@asyncapi/specs` 6.11.1 (Apache-2.0),
//! the copy with local references only, so that nothing is fetched. tests/asyncapi.rs checks
//! exports against the same file from npm.

use std::sync::OnceLock;

use serde_json::Value;

use crate::problem::FieldError;

const SCHEMA: &str = include_str!("asyncapi-3.0.0.schema.json");

/// Longest message kept of one schema error: the AsyncAPI schema's `oneOf`s make some errors
/// quote large parts of the document.
const MESSAGE_CHARS_MAX: usize = 300;

/// Compiled once, on the first import.
fn validator() -> Result<&'static jsonschema::Validator, String> {
    static VALIDATOR: OnceLock<Result<jsonschema::Validator, String>> = OnceLock::new();
    VALIDATOR
        .get_or_init(|| {
            let schema: Value = serde_json::from_str(SCHEMA)
                .map_err(|e| format!("the AsyncAPI schema does not read: {e}"))?;
            jsonschema::draft7::options()
                .build(&schema)
                .map_err(|e| format!("the AsyncAPI schema does not compile: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Where `document` fails the AsyncAPI 3.0.0 schema, at most `max` problems.
pub fn check(document: &Value, max: usize) -> Vec<FieldError> {
    let validator = match validator() {
        Ok(v) => v,
        // A build without a usable schema is a bug of ours, not of the document: say so
        // rather than refuse every import silently.
        Err(e) => return vec![FieldError::at("", e)],
    };
    validator
        .iter_errors(document)
        .take(max)
        .map(|e| {
            let mut message = e.to_string();
            if message.chars().count() > MESSAGE_CHARS_MAX {
                message = message.chars().take(MESSAGE_CHARS_MAX).collect::<String>() + "…";
            }
            FieldError::at(
                e.instance_path().as_str(),
                format!("not AsyncAPI 3.0.0: {message}"),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_schema_compiles_and_tells_a_valid_document_from_a_broken_one() {
        let valid = json!({"asyncapi": "3.0.0", "info": {"title": "x", "version": "1"}});
        assert_eq!(check(&valid, 10), vec![]);
        let broken = json!({"asyncapi": "3.0.0", "info": {"title": "x", "version": "1"},
            "channels": {"a": {"address": 7}}, "operations": {"o": {"action": "shout"}}});
        let problems = check(&broken, 10);
        assert!(!problems.is_empty());
        assert!(
            problems
                .iter()
                .any(|p| p.pointer.starts_with("/channels/a")
                    || p.pointer.starts_with("/operations/o")),
            "{problems:?}"
        );
    }
}
