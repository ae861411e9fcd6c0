//! How a workspace shapes its events: a source's JSON Schema and what becomes of the events it
//! refuses, the typed Parquet columns the schema gives, and the workspace's tag rules.
//!
//! Data and checks only. Validating events against a schema needs a JSON Schema validator,
//! which the data plane carries and this crate does not; the control plane runs the same
//! checks as the data plane when a schema or a rule is saved, so that a node never meets one
//! it cannot apply (and if it does, it refuses that configuration and keeps its last good one).
//!
//! Everything here is part of the configuration's content hash: a change must reach every
//! node as a new configuration version.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::snapshot::is_valid_slug;

/// Largest JSON Schema a source may have, serialised.
pub const SCHEMA_BYTES_MAX: usize = 64 << 10;
/// Tag rules one workspace may have.
pub const TAG_RULES_MAX: usize = 100;
/// Longest tag name (and topic pattern capture name).
pub const TAG_NAME_LEN_MAX: usize = 64;
/// Longest rule name.
pub const RULE_NAME_LEN_MAX: usize = 100;
/// Longest header or query parameter name a rule may read.
pub const FIELD_NAME_LEN_MAX: usize = 128;
/// Longest JSON pointer or topic pattern.
pub const PATH_LEN_MAX: usize = 512;
/// Most segments in a topic pattern (MQTT topics of devices rarely have more than a handful).
pub const PATTERN_SEGMENTS_MAX: usize = 16;
/// Longest tag value kept: a longer value does not match (tags are labels, not payloads).
pub const TAG_VALUE_LEN_MAX: usize = 256;
/// Longest property name lifted into a typed column.
pub const COLUMN_NAME_LEN_MAX: usize = 128;

/// The columns every Parquet file has, whatever the source's schema: a top-level schema
/// property of one of these names is not lifted (it stays in `payload`).
pub const FIXED_COLUMNS: [&str; 11] = [
    "event_id",
    "received_at",
    "workspace_id",
    "source",
    "device_id",
    "protocol",
    "topic",
    "payload",
    "tags",
    "schema_version",
    "quarantine_error",
];

/// What a source does with an event its schema refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnInvalid {
    /// The whole request (HTTP) or message (MQTT) is refused and nothing is written.
    #[default]
    Reject,
    /// Valid events are written as usual; invalid ones are acknowledged too and written to the
    /// source's quarantine dataset with the validation error.
    Quarantine,
}

impl OnInvalid {
    pub fn is_reject(&self) -> bool {
        *self == OnInvalid::Reject
    }
}

/// The Parquet type of a typed column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// `"type": "string"`.
    String,
    /// `"type": "string", "format": "date-time"`: timestamp, microseconds, UTC.
    Timestamp,
    /// `"type": "integer"`.
    Int64,
    /// `"type": "number"`.
    Float64,
    /// `"type": "boolean"`.
    Boolean,
    /// `"type": "object"` or `"array"`: the value as JSON text.
    Json,
}

/// A column lifted from a top-level property of a source's schema.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Column {
    /// The property's name, which is also the column's.
    pub name: String,
    #[serde(rename = "type")]
    pub column_type: ColumnType,
}

/// The typed columns a schema gives: one per top-level property (`properties`) whose type is
/// one of [`ColumnType`]'s, in name order. A property is left in `payload` only when its type
/// is absent or ambiguous (`["string", "number"]`), its name is a [`FIXED_COLUMNS`] name, or
/// longer than [`COLUMN_NAME_LEN_MAX`]. `"null"` beside one type is allowed: every typed column
/// is nullable, since an event may leave a property out.
pub fn columns(schema: &Value) -> Vec<Column> {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    // serde_json's maps are ordered by key: the columns come out in name order.
    properties
        .iter()
        .filter(|(name, _)| {
            !name.is_empty()
                && name.len() <= COLUMN_NAME_LEN_MAX
                && !FIXED_COLUMNS.contains(&name.as_str())
        })
        .filter_map(|(name, property)| {
            Some(Column {
                name: name.clone(),
                column_type: column_type(property)?,
            })
        })
        .collect()
}

fn column_type(property: &Value) -> Option<ColumnType> {
    let single = match property.get("type")? {
        Value::String(t) => t.as_str(),
        Value::Array(types) => {
            let mut named = types
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null");
            let only = named.next()?;
            if named.next().is_some() || types.len() > 2 {
                return None;
            }
            only
        }
        _ => return None,
    };
    Some(match single {
        "string" if property.get("format").and_then(Value::as_str) == Some("date-time") => {
            ColumnType::Timestamp
        }
        "string" => ColumnType::String,
        "integer" => ColumnType::Int64,
        "number" => ColumnType::Float64,
        "boolean" => ColumnType::Boolean,
        "object" | "array" => ColumnType::Json,
        _ => return None,
    })
}

/// A schema's version: the first 16 hex digits of the SHA-256 of its JSON text (keys in
/// order, so equal schemas have equal versions on every node). It goes into every row written
/// under the schema, and a Parquet file holds rows of one version only.
pub fn schema_version(schema: &Value) -> String {
    let mut hasher = Sha256::new();
    // Serialising a JSON value cannot fail.
    hasher.update(serde_json::to_vec(schema).unwrap_or_default());
    hex::encode(&hasher.finalize()[..8])
}

/// Why a schema or a tag rule cannot be saved or applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapingError {
    #[error("the schema must be a JSON object (a JSON Schema, draft 2020-12)")]
    SchemaNotAnObject,
    #[error("the schema is {bytes} bytes; at most {SCHEMA_BYTES_MAX} are allowed")]
    SchemaTooLarge { bytes: usize },
    #[error("a workspace has at most {TAG_RULES_MAX} tag rules")]
    TooManyRules,
    #[error("tag rule {0} appears twice")]
    DuplicateRule(Uuid),
    #[error("tag rule {rule:?}: {problem}")]
    Rule { rule: String, problem: String },
}

/// Checks what the data plane relies on in a source's schema (beyond the JSON Schema
/// meta-schema, which needs a validator): an object of bounded size.
pub fn check_schema(schema: &Value) -> Result<(), ShapingError> {
    if !schema.is_object() {
        return Err(ShapingError::SchemaNotAnObject);
    }
    let bytes = serde_json::to_vec(schema).map_or(usize::MAX, |b| b.len());
    if bytes > SCHEMA_BYTES_MAX {
        return Err(ShapingError::SchemaTooLarge { bytes });
    }
    Ok(())
}

/// One of a workspace's tag rules: it lifts a value from where devices put it into the `tags`
/// column (and, where it says so, into `device_id`). Rules apply in the workspace's order; a
/// later rule's value for a tag replaces an earlier one's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TagRule {
    /// UUIDv7.
    pub id: Uuid,
    pub name: String,
    /// Source slugs the rule applies to; every source of the workspace when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// Where the value comes from, and when the rule matches.
    pub extract: Extract,
}

/// Where a tag rule takes its values. A rule that does not match an event (a topic of
/// another shape, a missing header, parameter or pointer, a value that is not a scalar or is
/// longer than [`TAG_VALUE_LEN_MAX`]) adds nothing to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "from", rename_all = "snake_case", deny_unknown_fields)]
pub enum Extract {
    /// MQTT topic segments. `pattern` has `/`-separated segments: `{name}` captures one
    /// segment as the tag `name`, `+` matches any one segment, `#` (last only) any rest, and
    /// any other segment must be equal. Example: `ingest/{source}/{site}/{device}`.
    Topic {
        pattern: String,
        /// A capture whose value also becomes the event's `device_id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_id: Option<String>,
    },
    /// An HTTP request header (names are case-insensitive).
    Header {
        name: String,
        tag: String,
        /// The value also becomes the event's `device_id`.
        #[serde(default, skip_serializing_if = "is_false")]
        device_id: bool,
    },
    /// An HTTP query parameter of the ingest URL.
    Query {
        name: String,
        tag: String,
        #[serde(default, skip_serializing_if = "is_false")]
        device_id: bool,
    },
    /// A JSON pointer (RFC 6901) into each event's payload, e.g. `/meta/site`; strings are
    /// taken as they are, numbers and booleans as their JSON text.
    Pointer {
        pointer: String,
        tag: String,
        #[serde(default, skip_serializing_if = "is_false")]
        device_id: bool,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One segment of a compiled topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Capture(String),
    AnyOne,
    AnyRest,
}

/// A topic pattern, checked and split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    segments: Vec<Segment>,
}

impl TopicPattern {
    /// Checks and splits `pattern`; `Err` says what is wrong with it.
    pub fn parse(pattern: &str) -> Result<TopicPattern, String> {
        if pattern.is_empty() || pattern.len() > PATH_LEN_MAX {
            return Err(format!("a pattern has 1 to {PATH_LEN_MAX} characters"));
        }
        let parts: Vec<&str> = pattern.split('/').collect();
        if parts.len() > PATTERN_SEGMENTS_MAX {
            return Err(format!(
                "a pattern has at most {PATTERN_SEGMENTS_MAX} segments"
            ));
        }
        let mut names = HashSet::new();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let segment = match *part {
                "+" => Segment::AnyOne,
                "#" if i + 1 == parts.len() => Segment::AnyRest,
                "#" => return Err("`#` may only be the last segment".into()),
                "" => return Err("a pattern has no empty segments (`//`)".into()),
                p if p.starts_with('{') && p.ends_with('}') => {
                    let name = &p[1..p.len() - 1];
                    check_tag_name(name)?;
                    if !names.insert(name) {
                        return Err(format!("`{{{name}}}` appears twice"));
                    }
                    Segment::Capture(name.to_owned())
                }
                p if p.contains(['{', '}', '+', '#']) || p.chars().any(char::is_control) => {
                    return Err(format!(
                        "segment {p:?}: `{{name}}`, `+` and `#` stand alone in their segment"
                    ))
                }
                p => Segment::Literal(p.to_owned()),
            };
            segments.push(segment);
        }
        Ok(TopicPattern { segments })
    }

    /// The names the pattern captures.
    pub fn capture_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Capture(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// The captures of `topic` in pattern order, or `None` when it does not match.
    pub fn captures<'t>(&self, topic: &'t str) -> Option<Vec<(&str, &'t str)>> {
        let mut levels = topic.split('/');
        let mut captured = Vec::new();
        for segment in &self.segments {
            match segment {
                Segment::AnyRest => return Some(captured),
                Segment::AnyOne => {
                    levels.next()?;
                }
                Segment::Literal(literal) => {
                    if levels.next()? != literal {
                        return None;
                    }
                }
                Segment::Capture(name) => {
                    let value = levels.next()?;
                    if value.is_empty() || value.len() > TAG_VALUE_LEN_MAX {
                        return None;
                    }
                    captured.push((name.as_str(), value));
                }
            }
        }
        levels.next().is_none().then_some(captured)
    }
}

/// Tag names: 1 to 64 of `a-z`, `0-9`, `_`, starting with a letter; plain identifiers, so
/// that `tags['site']` and `tags.site`-style uses need no quoting.
pub fn check_tag_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= TAG_NAME_LEN_MAX
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag name {name:?}: 1 to {TAG_NAME_LEN_MAX} of a-z, 0-9 and _, starting with a letter"
        ))
    }
}

/// Whether `pointer` is a JSON pointer (RFC 6901) to something inside a payload: empty or
/// `/`-led, with `~` only in the escapes `~0` and `~1`.
pub fn check_pointer(pointer: &str) -> Result<(), String> {
    let escapes_ok = pointer
        .split('~')
        .skip(1)
        .all(|after| after.starts_with('0') || after.starts_with('1'));
    if !pointer.starts_with('/') || pointer.len() > PATH_LEN_MAX || !escapes_ok {
        return Err(format!(
            "pointer {pointer:?}: a JSON pointer (RFC 6901) such as /meta/site, at most \
             {PATH_LEN_MAX} characters, `~` only as ~0 or ~1"
        ));
    }
    Ok(())
}

fn check_field_name(kind: &str, name: &str) -> Result<(), String> {
    let token = !name.is_empty()
        && name.len() <= FIELD_NAME_LEN_MAX
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    if token {
        Ok(())
    } else {
        Err(format!(
            "{kind} name {name:?}: 1 to {FIELD_NAME_LEN_MAX} visible ASCII characters"
        ))
    }
}

impl TagRule {
    /// Checks the rule: a name, valid source slugs, and a pattern, header or parameter name or
    /// pointer that can match, with valid tag names.
    pub fn check(&self) -> Result<(), ShapingError> {
        let invalid = |problem: String| ShapingError::Rule {
            rule: self.name.clone(),
            problem,
        };
        if self.name.trim().is_empty() || self.name.chars().count() > RULE_NAME_LEN_MAX {
            return Err(invalid(format!(
                "a rule has a name of 1 to {RULE_NAME_LEN_MAX} characters"
            )));
        }
        if let Some(slug) = self.sources.iter().find(|s| !is_valid_slug(s)) {
            return Err(invalid(format!("{slug:?} is not a source slug")));
        }
        match &self.extract {
            Extract::Topic { pattern, device_id } => {
                let pattern = TopicPattern::parse(pattern).map_err(invalid)?;
                if pattern.capture_names().next().is_none() {
                    return Err(invalid("the pattern captures nothing (`{name}`)".into()));
                }
                if let Some(capture) = device_id {
                    if !pattern.capture_names().any(|n| n == capture) {
                        return Err(invalid(format!(
                            "device_id names {capture:?}, which the pattern does not capture"
                        )));
                    }
                }
            }
            Extract::Header { name, tag, .. } => {
                check_field_name("header", name).map_err(invalid)?;
                check_tag_name(tag).map_err(invalid)?;
            }
            Extract::Query { name, tag, .. } => {
                check_field_name("query parameter", name).map_err(invalid)?;
                check_tag_name(tag).map_err(invalid)?;
            }
            Extract::Pointer { pointer, tag, .. } => {
                check_pointer(pointer).map_err(invalid)?;
                check_tag_name(tag).map_err(invalid)?;
            }
        }
        Ok(())
    }

    /// Whether the rule applies to events of `source`.
    pub fn applies_to(&self, source: &str) -> bool {
        self.sources.is_empty() || self.sources.iter().any(|s| s == source)
    }
}

/// Checks a workspace's rules: each valid, at most [`TAG_RULES_MAX`], ids unique.
pub fn check_rules(rules: &[TagRule]) -> Result<(), ShapingError> {
    if rules.len() > TAG_RULES_MAX {
        return Err(ShapingError::TooManyRules);
    }
    let mut ids = HashSet::new();
    for rule in rules {
        rule.check()?;
        if !ids.insert(rule.id) {
            return Err(ShapingError::DuplicateRule(rule.id));
        }
    }
    Ok(())
}

/// A scalar JSON value as a tag value: strings as they are, numbers and booleans as their
/// JSON text; `None` for anything else or a value over [`TAG_VALUE_LEN_MAX`] bytes.
pub fn tag_value(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (!text.is_empty() && text.len() <= TAG_VALUE_LEN_MAX).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalar_properties_become_typed_columns_in_name_order() {
        let schema = json!({
            "type": "object",
            "properties": {
                "temp_c": {"type": "number"},
                "at": {"type": "string", "format": "date-time"},
                "count": {"type": ["integer", "null"]},
                "ok": {"type": "boolean"},
                "site": {"type": "string"},
                "meta": {"type": "object"},
                "readings": {"type": "array"},
                "either": {"type": ["string", "number"]},
                "untyped": {},
                "source": {"type": "string"},
            }
        });
        let got: Vec<(String, ColumnType)> = columns(&schema)
            .into_iter()
            .map(|c| (c.name, c.column_type))
            .collect();
        let want = [
            ("at", ColumnType::Timestamp),
            ("count", ColumnType::Int64),
            ("meta", ColumnType::Json),
            ("ok", ColumnType::Boolean),
            ("readings", ColumnType::Json),
            ("site", ColumnType::String),
            ("temp_c", ColumnType::Float64),
        ];
        assert_eq!(
            got,
            want.map(|(n, t)| (n.to_owned(), t)).to_vec(),
            "ambiguous, untyped and fixed-column names stay in payload"
        );
        assert!(columns(&json!({"type": "object"})).is_empty());
    }

    #[test]
    fn equal_schemas_have_equal_versions_whatever_their_key_order() {
        let a: Value =
            serde_json::from_str(r#"{"type":"object","properties":{"a":{}}}"#).expect("json");
        let b: Value =
            serde_json::from_str(r#"{"properties":{"a":{}},"type":"object"}"#).expect("json");
        assert_eq!(schema_version(&a), schema_version(&b));
        assert_eq!(schema_version(&a).len(), 16);
        assert_ne!(
            schema_version(&a),
            schema_version(&json!({"type": "object"}))
        );
    }

    #[test]
    fn topic_patterns_capture_segments_and_refuse_what_cannot_match() {
        let p = TopicPattern::parse("ingest/{source}/{site}/{device}").expect("pattern");
        assert_eq!(
            p.captures("ingest/telemetry/lyon/d-7"),
            Some(vec![
                ("source", "telemetry"),
                ("site", "lyon"),
                ("device", "d-7")
            ])
        );
        assert_eq!(p.captures("ingest/telemetry/lyon"), None, "too short");
        assert_eq!(p.captures("ingest/telemetry/lyon/d/x"), None, "too long");
        assert_eq!(
            p.captures("other/telemetry/lyon/d"),
            None,
            "literal differs"
        );
        assert_eq!(p.captures("ingest/telemetry//d"), None, "empty capture");
        let rest = TopicPattern::parse("ingest/+/{site}/#").expect("pattern");
        assert_eq!(
            rest.captures("ingest/x/paris/a/b/c"),
            Some(vec![("site", "paris")])
        );
        for bad in [
            "",
            "a//b",
            "a/#/b",
            "a/{Site}",
            "a/{x}/{x}",
            "a/b{x}",
            "a/{}",
        ] {
            assert!(TopicPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rules_are_checked_as_the_control_plane_saves_them() {
        let rule = |extract: Extract| TagRule {
            id: Uuid::nil(),
            name: "site".into(),
            sources: vec!["telemetry".into()],
            extract,
        };
        let good = [
            rule(Extract::Topic {
                pattern: "ingest/{source}/{site}/{device}".into(),
                device_id: Some("device".into()),
            }),
            rule(Extract::Header {
                name: "X-Site".into(),
                tag: "site".into(),
                device_id: false,
            }),
            rule(Extract::Query {
                name: "site".into(),
                tag: "site".into(),
                device_id: false,
            }),
            rule(Extract::Pointer {
                pointer: "/meta/a~1b".into(),
                tag: "site".into(),
                device_id: true,
            }),
        ];
        for r in &good {
            assert_eq!(r.check(), Ok(()), "{r:?}");
        }
        let bad = [
            rule(Extract::Topic {
                pattern: "ingest/+/#".into(),
                device_id: None,
            }),
            rule(Extract::Topic {
                pattern: "ingest/{site}".into(),
                device_id: Some("device".into()),
            }),
            rule(Extract::Header {
                name: "X Site".into(),
                tag: "site".into(),
                device_id: false,
            }),
            rule(Extract::Pointer {
                pointer: "meta/site".into(),
                tag: "site".into(),
                device_id: false,
            }),
            rule(Extract::Pointer {
                pointer: "/a~2".into(),
                tag: "site".into(),
                device_id: false,
            }),
            rule(Extract::Query {
                name: "site".into(),
                tag: "Site".into(),
                device_id: false,
            }),
        ];
        for r in &bad {
            assert!(r.check().is_err(), "{r:?}");
        }
        let mut twice = vec![good[0].clone(), good[1].clone()];
        assert_eq!(
            check_rules(&twice),
            Err(ShapingError::DuplicateRule(Uuid::nil()))
        );
        twice[1].id = Uuid::max();
        assert_eq!(check_rules(&twice), Ok(()));
    }

    #[test]
    fn rules_read_as_documented_json() {
        let rule: TagRule = serde_json::from_value(json!({
            "id": "01938d2e-7f00-7000-8000-000000000001",
            "name": "site and device from the topic",
            "extract": {"from": "topic", "pattern": "ingest/{source}/{site}/{device}",
                        "device_id": "device"}
        }))
        .expect("rule");
        assert!(rule.applies_to("anything"));
        assert!(serde_json::from_value::<TagRule>(json!({
            "id": "01938d2e-7f00-7000-8000-000000000001", "name": "x",
            "extract": {"from": "cookie", "name": "a", "tag": "a"}
        }))
        .is_err());
        assert_eq!(tag_value(&json!(21.5)).as_deref(), Some("21.5"));
        assert_eq!(tag_value(&json!({"a": 1})), None);
        assert_eq!(tag_value(&json!("x".repeat(TAG_VALUE_LEN_MAX + 1))), None);
    }
}
