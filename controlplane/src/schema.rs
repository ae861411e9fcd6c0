//! Checks a source's JSON Schema when it is saved, so that no data-plane node ever meets one it
//! cannot compile: a node refuses such a configuration (NACK) and keeps its last good one,
//! which would leave the source on its old schema without the user knowing why.
//!
//! The schema is checked against the draft 2020-12 meta-schema, then compiled with the same
//! validator the nodes use (`jsonschema`). References are resolved inside the document only:
//! fetching a URL from the control plane would let a schema make it call anywhere (and a node
//! could not fetch it anyway), so a `$ref` to anything outside the document is refused here
//! rather than attempted.

use serde_json::Value;
use sluice_config::shaping::{self, ShapingError};

pub use crate::problem::FieldError as SchemaProblem;

/// The only dialect a source's schema may declare in `$schema` (with or without the empty
/// fragment); the nodes validate events by this draft.
pub const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// At most this many problems are reported for one schema: enough to fix several at once, and
/// a bound on the answer's size.
const ERRORS_MAX: usize = 20;

/// Refuses to fetch anything: the only resources a schema may use are in the document itself
/// (and the meta-schemas `jsonschema` carries).
struct NoRemoteReferences;

impl jsonschema::Retrieve for NoRemoteReferences {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!("{uri} is outside the schema").into())
    }
}

/// Checks `schema` as a source's schema; `Err` lists what is wrong, with pointers.
pub fn check(schema: &Value) -> Result<(), Vec<SchemaProblem>> {
    if let Err(e) = shaping::check_schema(schema) {
        let message = match e {
            ShapingError::SchemaNotAnObject => {
                "a schema is a JSON object (a JSON Schema, draft 2020-12)".to_owned()
            }
            other => other.to_string(),
        };
        return Err(vec![SchemaProblem::at("", message)]);
    }
    if let Some(dialect) = schema.get("$schema") {
        if dialect.as_str().map(|d| d.trim_end_matches('#')) != Some(DIALECT) {
            return Err(vec![SchemaProblem::at(
                "/$schema",
                format!("sources use JSON Schema draft 2020-12: leave $schema out or set it to {DIALECT:?}"),
            )]);
        }
    }
    let remote = remote_references(schema);
    if !remote.is_empty() {
        return Err(remote);
    }
    let meta = jsonschema::draft202012::meta::validator();
    let problems: Vec<SchemaProblem> = meta
        .iter_errors(schema)
        .take(ERRORS_MAX)
        .map(|e| SchemaProblem::at(e.instance_path().as_str(), e.to_string()))
        .collect();
    if !problems.is_empty() {
        return Err(problems);
    }
    // Compiling finds what the meta-schema cannot: references to nothing, patterns that are
    // not regular expressions.
    jsonschema::draft202012::options()
        .with_retriever(NoRemoteReferences)
        .build(schema)
        .map(drop)
        .map_err(|e| vec![SchemaProblem::at(e.instance_path().as_str(), e.to_string())])
}

/// Every `$ref` and `$dynamicRef` that points outside the document, with its pointer.
///
/// A reference inside the document starts with `#`; anything else names another resource,
/// unless it names a subschema of this document by its `$id`, which is allowed.
fn remote_references(schema: &Value) -> Vec<SchemaProblem> {
    let mut ids = Vec::new();
    collect_ids(schema, &mut ids);
    let mut found = Vec::new();
    walk_references(schema, &mut String::new(), &ids, &mut found);
    found
}

fn collect_ids<'v>(value: &'v Value, ids: &mut Vec<&'v str>) {
    match value {
        Value::Object(fields) => {
            if let Some(id) = fields.get("$id").and_then(Value::as_str) {
                ids.push(id.trim_end_matches('#'));
            }
            fields.values().for_each(|v| collect_ids(v, ids));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_ids(v, ids)),
        _ => {}
    }
}

/// Keywords whose values are JSON data rather than subschemas.
const DATA_KEYWORDS: [&str; 4] = ["const", "enum", "default", "examples"];

fn walk_references(
    value: &Value,
    pointer: &mut String,
    ids: &[&str],
    found: &mut Vec<SchemaProblem>,
) {
    if found.len() >= ERRORS_MAX {
        return;
    }
    let len = pointer.len();
    match value {
        Value::Object(fields) => {
            for (key, child) in fields {
                pointer.push('/');
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
                if DATA_KEYWORDS.contains(&key.as_str()) {
                    // Their values are instances, not schemas: a "$ref" there is data.
                } else if let ("$ref" | "$dynamicRef", Some(target)) =
                    (key.as_str(), child.as_str())
                {
                    if is_remote(target, ids) {
                        found.push(SchemaProblem::at(
                            pointer.clone(),
                            format!(
                                "{target:?} is outside the schema: references are not fetched; \
                                 put the referenced schema under $defs and refer to it as \
                                 \"#/$defs/<name>\""
                            ),
                        ));
                    }
                } else {
                    walk_references(child, pointer, ids, found);
                }
                pointer.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                pointer.push('/');
                pointer.push_str(&i.to_string());
                walk_references(child, pointer, ids, found);
                pointer.truncate(len);
            }
        }
        _ => {}
    }
}

/// Whether a reference names a resource other than this document and its `$id`s. The
/// meta-schema of draft 2020-12 (which `jsonschema` carries) counts as inside.
fn is_remote(target: &str, ids: &[&str]) -> bool {
    if target.starts_with('#') {
        return false;
    }
    let resource = target.split('#').next().unwrap_or_default();
    if resource.starts_with("https://json-schema.org/draft/2020-12/") {
        return false;
    }
    // An `$id` may be relative to its parent's; comparing the last path segments as well
    // accepts `{"$id": "item"}` referred to as `"item"`, which resolves within the document.
    !ids.iter().any(|id| {
        *id == resource || (!resource.contains(':') && id.ends_with(&format!("/{resource}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(schema: Value) -> Vec<SchemaProblem> {
        check(&schema).expect_err("refused")
    }

    #[test]
    fn a_draft_2020_12_schema_with_local_references_is_accepted() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "temp_c": {"type": "number"},
                "at": {"type": "string", "format": "date-time"},
                "site": {"$ref": "#/$defs/site"},
                "part": {"$ref": "https://example.com/part"}
            },
            "required": ["temp_c"],
            "$defs": {
                "site": {"type": "string", "pattern": "^[a-z]+$"},
                "part": {"$id": "https://example.com/part", "type": "integer"}
            }
        });
        assert_eq!(check(&schema), Ok(()));
        assert_eq!(check(&json!({})), Ok(()));
    }

    #[test]
    fn a_wrongly_typed_keyword_is_refused_with_its_pointer() {
        let found = problems(json!({"type": 12}));
        assert_eq!(found[0].pointer, "/type", "{found:?}");
        assert!(!found[0].message.is_empty());
        let found = problems(json!({"properties": {"a": {"minimum": "low"}}}));
        assert_eq!(found[0].pointer, "/properties/a/minimum", "{found:?}");
    }

    #[test]
    fn a_remote_reference_is_refused_not_fetched() {
        let found = problems(json!({
            "properties": {"a": {"$ref": "https://schemas.example.com/a.json"}}
        }));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pointer, "/properties/a/$ref");
        assert!(found[0].message.contains("not fetched"), "{found:?}");
        let found = problems(json!({"$ref": "other.json#/x"}));
        assert_eq!(found[0].pointer, "/$ref");
    }

    #[test]
    fn what_only_compiling_finds_is_refused_too() {
        let found = problems(json!({"$ref": "#/$defs/missing"}));
        assert!(!found[0].message.is_empty(), "{found:?}");
        let found = problems(json!({"type": "string", "pattern": "(unclosed"}));
        assert!(!found[0].message.is_empty(), "{found:?}");
    }

    #[test]
    fn other_dialects_non_objects_and_huge_schemas_are_refused() {
        assert_eq!(
            problems(json!({"$schema": "http://json-schema.org/draft-07/schema#"}))[0].pointer,
            "/$schema"
        );
        assert_eq!(problems(json!(true))[0].pointer, "");
        let big = json!({"description": "x".repeat(shaping::SCHEMA_BYTES_MAX)});
        assert!(problems(big)[0].message.contains("at most"));
    }
}
