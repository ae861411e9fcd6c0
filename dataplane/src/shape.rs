//! Shaping at admission: a source's JSON Schema checked on every event, and the workspace's tag
//! rules applied, once per batch for both protocols ([`crate::admit`]).
//!
//! Schemas are compiled once per configuration version (by [`SchemaCache`], keyed by the
//! schema's version, so an unchanged schema is never compiled twice), off the request path.
//! A source with neither a schema nor tag rules has no [`SourceShape`] and pays nothing here.
//!
//! Validation needs each event as a `serde_json::Value` (what `jsonschema` validates), except
//! where the quick check of a flat schema ([`crate::flat_schema`]) vouches for it on its text;
//! payload pointer rules then read their values from the text too ([`crate::raw_pointer`]).
//! What the shipper needs later is recorded in the batch's [`Shaping`], so that a
//! replay after a restart writes the same rows whatever the configuration is by then.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use sluice_config::shaping::{self, Column, Extract, OnInvalid, TagRule, TopicPattern};
use sluice_config::snapshot::{SourceConfig, WorkspaceConfig};
use sluice_storage::event::{EventShaping, Quarantined, Shaping, QUARANTINE_ERROR_LEN_MAX};

use crate::flat_schema::FlatSchema;
use crate::raw_pointer;

/// Failures listed in a refusal at most: enough to fix a batch, bounded for the answer's size.
pub const FAILURES_LISTED_MAX: usize = 100;

/// A source's schema, compiled.
pub struct CompiledSchema {
    validator: jsonschema::Validator,
    /// The quick check, for schemas of the shape it handles: events it passes need no
    /// `Value` (see [`crate::flat_schema`]).
    flat: Option<FlatSchema>,
    /// `sluice_config::shaping::schema_version` of the schema.
    pub version: String,
    /// Its typed columns, shared by every batch's [`Shaping`].
    pub columns: Arc<[Column]>,
}

impl std::fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledSchema")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Why a source's schema cannot be applied: the node refuses the configuration.
#[derive(Debug, Clone, thiserror::Error)]
#[error("source {source_slug:?} of workspace {workspace:?}: the schema does not compile at {pointer:?}: {message}")]
pub struct SchemaError {
    pub workspace: String,
    pub source_slug: String,
    pub pointer: String,
    pub message: String,
}

/// Compiled schemas by version, shared by the views built from one another.
#[derive(Default)]
pub struct SchemaCache {
    compiled: Mutex<HashMap<String, Arc<CompiledSchema>>>,
}

impl SchemaCache {
    /// The compiled form of `schema`, compiling it only if no view has it yet.
    pub fn get(&self, schema: &Value) -> Result<Arc<CompiledSchema>, (String, String)> {
        let version = shaping::schema_version(schema);
        if let Some(found) = self.lock().get(&version) {
            return Ok(found.clone());
        }
        // Compiled outside the lock: a large schema takes milliseconds.
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            // `date-time` columns must hold timestamps: check formats, not just annotate.
            .should_validate_formats(true)
            .build(schema)
            .map_err(|e| (e.schema_path().as_str().to_owned(), e.to_string()))?;
        let compiled = Arc::new(CompiledSchema {
            validator,
            flat: FlatSchema::of(schema),
            columns: shaping::columns(schema).into(),
            version: version.clone(),
        });
        self.lock().insert(version, compiled.clone());
        Ok(compiled)
    }

    /// Checks that every schema of `workspaces` compiles (and keeps them compiled for the view
    /// about to be built): what a node does before it accepts a configuration.
    pub fn check<'a>(
        &self,
        workspaces: impl Iterator<Item = &'a WorkspaceConfig>,
    ) -> Result<(), SchemaError> {
        for ws in workspaces {
            for source in &ws.sources {
                if let Some(schema) = &source.schema {
                    self.get(schema).map_err(|(pointer, message)| SchemaError {
                        workspace: ws.slug.clone(),
                        source_slug: source.slug.clone(),
                        pointer,
                        message,
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Forgets schemas no view holds any more.
    pub fn prune(&self) {
        self.lock().retain(|_, c| Arc::strong_count(c) > 1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<CompiledSchema>>> {
        self.compiled.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A tag rule as admission applies it.
#[derive(Debug)]
enum Rule {
    Topic {
        pattern: TopicPattern,
        device: Option<String>,
    },
    Header {
        name: String,
        tag: String,
        device: bool,
    },
    Query {
        name: String,
        tag: String,
        device: bool,
    },
    Pointer {
        pointer: String,
        tag: String,
        device: bool,
    },
}

impl Rule {
    fn of(rule: &TagRule) -> Option<Rule> {
        Some(match &rule.extract {
            // Checked when the configuration was validated; a pattern that does not parse
            // (impossible then) matches nothing.
            Extract::Topic { pattern, device_id } => Rule::Topic {
                pattern: TopicPattern::parse(pattern).ok()?,
                device: device_id.clone(),
            },
            Extract::Header {
                name,
                tag,
                device_id,
            } => Rule::Header {
                name: name.to_ascii_lowercase(),
                tag: tag.clone(),
                device: *device_id,
            },
            Extract::Query {
                name,
                tag,
                device_id,
            } => Rule::Query {
                name: name.clone(),
                tag: tag.clone(),
                device: *device_id,
            },
            Extract::Pointer {
                pointer,
                tag,
                device_id,
            } => Rule::Pointer {
                pointer: pointer.clone(),
                tag: tag.clone(),
                device: *device_id,
            },
        })
    }
}

/// What a source's schema and its workspace's rules do to its events.
#[derive(Debug)]
pub struct SourceShape {
    pub schema: Option<Arc<CompiledSchema>>,
    pub on_invalid: OnInvalid,
    pub keep_payload: bool,
    /// The workspace's rules that apply to the source, in order.
    rules: Vec<Rule>,
    has_pointer_rules: bool,
}

impl SourceShape {
    /// The shape of `source`, or `None` when it has neither a schema nor tag rules (its events
    /// take the plain path). A schema that does not compile (which [`SchemaCache::check`] keeps
    /// from being installed; only a cached configuration could still have one) refuses every
    /// event rather than letting them through unchecked.
    pub fn of(
        ws: &WorkspaceConfig,
        source: &SourceConfig,
        schemas: &SchemaCache,
    ) -> Option<Arc<SourceShape>> {
        let rules: Vec<Rule> = ws
            .tag_rules
            .iter()
            .filter(|r| r.applies_to(&source.slug))
            .filter_map(Rule::of)
            .collect();
        if source.schema.is_none() && rules.is_empty() {
            return None;
        }
        let mut on_invalid = source.on_invalid;
        let schema = source.schema.as_ref().map(|schema| {
            schemas.get(schema).unwrap_or_else(|(pointer, message)| {
                tracing::error!(workspace = %ws.slug, source = %source.slug, pointer, message, "schema does not compile; its source refuses every event");
                on_invalid = OnInvalid::Reject;
                schemas
                    .get(&Value::Bool(false))
                    .unwrap_or_else(|_| unreachable!("the false schema compiles"))
            })
        });
        let has_pointer_rules = rules.iter().any(|r| matches!(r, Rule::Pointer { .. }));
        Some(Arc::new(SourceShape {
            schema,
            on_invalid,
            keep_payload: source.keep_payload,
            rules,
            has_pointer_rules,
        }))
    }
}

/// Where a batch came from, for the tag rules that read it.
#[derive(Default, Clone, Copy)]
pub struct Origin<'a> {
    /// MQTT topic.
    pub topic: Option<&'a str>,
    /// HTTP request headers.
    pub headers: Option<&'a http::HeaderMap>,
    /// HTTP query string (after `?`).
    pub query: Option<&'a str>,
}

/// One event the schema refused: its index in the batch, where in it, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EventFailure {
    pub index: usize,
    pub pointer: String,
    pub message: String,
}

/// What shaping made of a batch.
pub struct Shaped {
    pub shaping: Box<Shaping>,
    /// A rule's `device_id` for the whole batch (topic, header or query), replacing the
    /// request's device.
    pub device_id: Option<String>,
}

impl Shaped {
    /// Events accepted (not quarantined).
    pub fn accepted(&self, events: usize) -> usize {
        events - self.shaping.quarantined.len()
    }
}

impl SourceShape {
    /// One event's tags and device under the rules, its pointers' values found by `find`.
    fn event_shaping(
        &self,
        origin: Origin<'_>,
        device_bound: bool,
        find: impl Fn(&str) -> Option<String>,
    ) -> EventShaping {
        let mut tags = Vec::new();
        let mut device_id = None;
        for rule in &self.rules {
            match rule {
                Rule::Pointer {
                    pointer,
                    tag,
                    device,
                } => {
                    if let Some(found) = find(pointer) {
                        if *device {
                            device_id = Some(found.clone());
                        }
                        set_tag(&mut tags, tag, found);
                    }
                }
                other => batch_rule(other, origin, &mut tags, &mut device_id),
            }
        }
        EventShaping {
            tags,
            device_id: if device_bound { None } else { device_id },
        }
    }

    /// Validates and tags the events of a batch (`payloads`, ending at `ends`). With
    /// `on_invalid = reject`, any invalid event refuses the batch: `Err` lists the first
    /// [`FAILURES_LISTED_MAX`] failures and the count of them all. A device bound to the token
    /// (`device_bound`) is not replaced by a rule's.
    pub fn apply(
        &self,
        payloads: &[u8],
        ends: &[u32],
        origin: Origin<'_>,
        device_bound: bool,
    ) -> Result<Shaped, (Vec<EventFailure>, usize)> {
        let mut tags: Vec<(String, String)> = Vec::new();
        let mut device_id = None;
        for rule in &self.rules {
            batch_rule(rule, origin, &mut tags, &mut device_id);
        }
        let parse_each = self.schema.is_some() || self.has_pointer_rules;
        let mut failures = Vec::new();
        let mut failed = 0usize;
        let mut quarantined = Vec::new();
        let mut events = self
            .has_pointer_rules
            .then(|| Vec::with_capacity(ends.len()));
        if parse_each {
            let mut start = 0usize;
            for (index, &end) in ends.iter().enumerate() {
                let payload = &payloads[start..end as usize];
                start = end as usize;
                // Most events of a flat schema pass the quick check and are never built into
                // a `Value`; pointer rules then read their values from the text.
                let quick = match &self.schema {
                    None => true,
                    Some(schema) => schema
                        .flat
                        .as_ref()
                        .is_some_and(|flat| flat.surely_valid(payload)),
                };
                if quick {
                    if let Some(events) = &mut events {
                        // Parse checked the text; a failure here would be a bug, and the
                        // event then simply gets no pointer tags.
                        let text = std::str::from_utf8(payload).ok();
                        events.push(self.event_shaping(origin, device_bound, |pointer| {
                            text.and_then(|text| raw_pointer::tag_value(text, pointer))
                        }));
                    }
                    continue;
                }
                // Parse already checked it is a JSON object; a failure here would be a bug,
                // and the event is then refused rather than let through unchecked.
                let value: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
                if let Some(schema) = &self.schema {
                    if !schema.validator.is_valid(&value) {
                        let (pointer, message) = first_error(schema, &value);
                        match self.on_invalid {
                            OnInvalid::Reject => {
                                failed += 1;
                                if failures.len() < FAILURES_LISTED_MAX {
                                    failures.push(EventFailure {
                                        index,
                                        pointer,
                                        message,
                                    });
                                }
                                continue;
                            }
                            OnInvalid::Quarantine => quarantined.push(Quarantined {
                                index: index as u32,
                                error: bounded(if pointer.is_empty() {
                                    message
                                } else {
                                    format!("{pointer}: {message}")
                                }),
                            }),
                        }
                    }
                }
                if let Some(events) = &mut events {
                    events.push(self.event_shaping(origin, device_bound, |pointer| {
                        value.pointer(pointer).and_then(shaping::tag_value)
                    }));
                }
            }
        }
        if failed > 0 {
            return Err((failures, failed));
        }
        Ok(Shaped {
            shaping: Box::new(Shaping {
                schema_version: self.schema.as_ref().map(|s| s.version.clone()),
                columns: self
                    .schema
                    .as_ref()
                    .map_or_else(|| Arc::from(Vec::new()), |s| s.columns.clone()),
                keep_payload: self.keep_payload,
                tags: if events.is_some() { Vec::new() } else { tags },
                events,
                quarantined,
            }),
            device_id: if device_bound { None } else { device_id },
        })
    }
}

/// Applies a rule whose value is the same for every event of the batch.
fn batch_rule(
    rule: &Rule,
    origin: Origin<'_>,
    tags: &mut Vec<(String, String)>,
    device_id: &mut Option<String>,
) {
    match rule {
        Rule::Topic { pattern, device } => {
            let Some(captures) = origin.topic.and_then(|t| pattern.captures(t)) else {
                return;
            };
            for (name, value) in captures {
                if device.as_deref() == Some(name) {
                    *device_id = Some(value.to_owned());
                }
                set_tag(tags, name, value.to_owned());
            }
        }
        Rule::Header { name, tag, device } => {
            let value = origin
                .headers
                .and_then(|h| h.get(name.as_str()))
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.len() <= shaping::TAG_VALUE_LEN_MAX);
            if let Some(value) = value {
                if *device {
                    *device_id = Some(value.to_owned());
                }
                set_tag(tags, tag, value.to_owned());
            }
        }
        Rule::Query { name, tag, device } => {
            let value = origin
                .query
                .and_then(|q| query_param(q, name))
                .filter(|v| !v.is_empty() && v.len() <= shaping::TAG_VALUE_LEN_MAX);
            if let Some(value) = value {
                if *device {
                    *device_id = Some(value.clone());
                }
                set_tag(tags, tag, value);
            }
        }
        // Per event.
        Rule::Pointer { .. } => {}
    }
}

/// Sets `tag`: a later rule's value replaces an earlier one's, in the earlier one's place.
fn set_tag(tags: &mut Vec<(String, String)>, tag: &str, value: String) {
    match tags.iter_mut().find(|(k, _)| k == tag) {
        Some(slot) => slot.1 = value,
        None => tags.push((tag.to_owned(), value)),
    }
}

/// The first validation error of an event known to be invalid: its JSON pointer and message.
fn first_error(schema: &CompiledSchema, value: &Value) -> (String, String) {
    match schema.validator.iter_errors(value).next() {
        Some(error) => (
            error.instance_path().as_str().to_owned(),
            bounded(error.to_string()),
        ),
        None => (String::new(), "the event does not match the schema".into()),
    }
}

/// `text` cut to [`QUARANTINE_ERROR_LEN_MAX`] bytes at a character boundary: a message quotes
/// the offending value, which may be large.
fn bounded(mut text: String) -> String {
    if text.len() > QUARANTINE_ERROR_LEN_MAX {
        let mut cut = QUARANTINE_ERROR_LEN_MAX - 3;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// The value of query parameter `name` (form-urlencoded: `+` is a space, `%XX` a byte), the
/// first when it repeats; `None` when absent or not UTF-8 once decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key)? == name)
            .then(|| percent_decode(value))
            .flatten()
    })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_config::snapshot::Protocol;
    use uuid::Uuid;

    fn workspace(
        schema: Option<Value>,
        on_invalid: OnInvalid,
        rules: Vec<Extract>,
    ) -> WorkspaceConfig {
        WorkspaceConfig {
            id: Uuid::now_v7(),
            slug: "acme".into(),
            name: String::new(),
            enabled: true,
            events_per_second_max: None,
            cors_origins: Vec::new(),
            sources: vec![SourceConfig {
                id: Uuid::now_v7(),
                slug: "telemetry".into(),
                name: String::new(),
                protocols: Protocol::all(),
                schema,
                on_invalid,
                keep_payload: true,
            }],
            tokens: Vec::new(),
            tag_rules: rules
                .into_iter()
                .enumerate()
                .map(|(i, extract)| TagRule {
                    id: Uuid::from_u128(i as u128 + 1),
                    name: format!("rule {i}"),
                    sources: Vec::new(),
                    extract,
                })
                .collect(),
            outputs: Vec::new(),
            export_endpoints: Vec::new(),
            webhooks: Vec::new(),
        }
    }

    fn events(list: &[&str]) -> (Vec<u8>, Vec<u32>) {
        let mut payloads = Vec::new();
        let mut ends = Vec::new();
        for e in list {
            payloads.extend_from_slice(e.as_bytes());
            ends.push(payloads.len() as u32);
        }
        (payloads, ends)
    }

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "temp_c": {"type": "number"},
                "at": {"type": "string", "format": "date-time"}
            },
            "required": ["temp_c"]
        })
    }

    #[test]
    fn a_source_without_schema_or_rules_has_no_shape() {
        let ws = workspace(None, OnInvalid::Reject, Vec::new());
        assert!(SourceShape::of(&ws, &ws.sources[0], &SchemaCache::default()).is_none());
    }

    #[test]
    fn invalid_events_are_listed_with_index_pointer_and_message() {
        let ws = workspace(Some(schema()), OnInvalid::Reject, Vec::new());
        let shape = SourceShape::of(&ws, &ws.sources[0], &SchemaCache::default()).expect("shape");
        let (p, e) = events(&[
            r#"{"temp_c":21.5}"#,
            r#"{"temp_c":"warm"}"#,
            r#"{"at":"2026-12-06T08:00:00Z"}"#,
            r#"{"temp_c":1,"at":"yesterday"}"#,
        ]);
        let (failures, count) = shape
            .apply(&p, &e, Origin::default(), false)
            .err()
            .expect("refused");
        assert_eq!(count, 3);
        assert_eq!(
            failures.iter().map(|f| f.index).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(failures[0].pointer, "/temp_c");
        assert!(failures[0].message.contains("number"), "{failures:?}");
        assert_eq!(failures[2].pointer, "/at", "formats are checked");
        let (p, e) = events(&[r#"{"temp_c":21.5,"at":"2026-12-06T08:00:00Z"}"#]);
        let shaped = shape
            .apply(&p, &e, Origin::default(), false)
            .expect("valid");
        assert_eq!(shaped.shaping.columns.len(), 2);
        assert_eq!(
            shaped.shaping.schema_version,
            Some(shaping::schema_version(&schema()))
        );
    }

    #[test]
    fn quarantine_keeps_the_batch_and_names_the_refused_events() {
        let ws = workspace(Some(schema()), OnInvalid::Quarantine, Vec::new());
        let shape = SourceShape::of(&ws, &ws.sources[0], &SchemaCache::default()).expect("shape");
        let (p, e) = events(&[r#"{"temp_c":21.5}"#, r#"{"temp_c":"warm"}"#]);
        let shaped = shape.apply(&p, &e, Origin::default(), false).expect("kept");
        assert_eq!(shaped.accepted(2), 1);
        assert_eq!(shaped.shaping.quarantined.len(), 1);
        assert_eq!(shaped.shaping.quarantined[0].index, 1);
        assert!(shaped.shaping.quarantined[0].error.starts_with("/temp_c: "));
    }

    #[test]
    fn rules_apply_in_order_and_later_values_win() {
        let ws = workspace(
            None,
            OnInvalid::Reject,
            vec![
                Extract::Topic {
                    pattern: "ingest/{source}/{site}/{device}".into(),
                    device_id: Some("device".into()),
                },
                Extract::Header {
                    name: "X-Site".into(),
                    tag: "site".into(),
                    device_id: false,
                },
                Extract::Query {
                    name: "line".into(),
                    tag: "line".into(),
                    device_id: false,
                },
            ],
        );
        let shape = SourceShape::of(&ws, &ws.sources[0], &SchemaCache::default()).expect("shape");
        let mut headers = http::HeaderMap::new();
        headers.insert("x-site", http::HeaderValue::from_static("paris"));
        let (p, e) = events(&[r#"{"a":1}"#]);
        let shaped = shape
            .apply(
                &p,
                &e,
                Origin {
                    topic: Some("ingest/telemetry/lyon/d-7"),
                    headers: Some(&headers),
                    query: Some("x=1&line=a%2Fb+c"),
                },
                false,
            )
            .expect("shaped");
        let tags = &shaped.shaping.tags;
        assert_eq!(
            tags,
            &vec![
                ("source".to_owned(), "telemetry".to_owned()),
                ("site".to_owned(), "paris".to_owned()),
                ("device".to_owned(), "d-7".to_owned()),
                ("line".to_owned(), "a/b c".to_owned()),
            ]
        );
        assert_eq!(shaped.device_id.as_deref(), Some("d-7"));
        assert!(
            shaped.shaping.events.is_none(),
            "no per-event tags without pointer rules"
        );
        let bound = shape
            .apply(
                &p,
                &e,
                Origin {
                    topic: Some("ingest/telemetry/lyon/d-7"),
                    ..Origin::default()
                },
                true,
            )
            .expect("shaped");
        assert_eq!(bound.device_id, None, "a token's device binding wins");
    }

    #[test]
    fn pointer_rules_tag_each_event() {
        let ws = workspace(
            None,
            OnInvalid::Reject,
            vec![
                Extract::Header {
                    name: "X-Site".into(),
                    tag: "site".into(),
                    device_id: false,
                },
                Extract::Pointer {
                    pointer: "/meta/site".into(),
                    tag: "site".into(),
                    device_id: false,
                },
                Extract::Pointer {
                    pointer: "/serial".into(),
                    tag: "serial".into(),
                    device_id: true,
                },
            ],
        );
        let shape = SourceShape::of(&ws, &ws.sources[0], &SchemaCache::default()).expect("shape");
        let mut headers = http::HeaderMap::new();
        headers.insert("x-site", http::HeaderValue::from_static("paris"));
        let (p, e) = events(&[r#"{"meta":{"site":"lyon"},"serial":42}"#, r#"{"a":1}"#]);
        let origin = Origin {
            headers: Some(&headers),
            ..Origin::default()
        };
        let shaped = shape.apply(&p, &e, origin, false).expect("shaped");
        let s = &shaped.shaping;
        assert_eq!(
            s.tags_of(0),
            &[
                ("site".to_owned(), "lyon".to_owned()),
                ("serial".to_owned(), "42".to_owned())
            ]
        );
        assert_eq!(s.device_of(0), Some("42"));
        assert_eq!(s.tags_of(1), &[("site".to_owned(), "paris".to_owned())]);
        assert_eq!(s.device_of(1), None);
    }

    #[test]
    fn a_schema_that_does_not_compile_is_refused_with_its_place() {
        let bad = workspace(
            Some(json!({"type": "object", "properties": {"a": {"type": "nope"}}})),
            OnInvalid::Reject,
            Vec::new(),
        );
        let cache = SchemaCache::default();
        let err = cache.check(std::iter::once(&bad)).expect_err("refused");
        assert_eq!(err.source_slug, "telemetry");
        assert!(err.pointer.contains("properties"), "{err}");
        // Should one reach a view anyway, its source refuses everything.
        let shape = SourceShape::of(&bad, &bad.sources[0], &cache).expect("shape");
        let (p, e) = events(&[r#"{"a":1}"#]);
        assert!(shape.apply(&p, &e, Origin::default(), false).is_err());
    }
}

#[cfg(test)]
mod cost {
    use super::*;
    use serde_json::json;

    /// What a schema costs per event, by part (`cargo test --release -p sluice-dataplane
    /// shape::cost -- --ignored --nocapture`): the parse into a `Value`, the validation.
    #[test]
    #[ignore]
    fn per_event_cost_of_a_schema() {
        let schema = json!({
            "type": "object",
            "properties": {
                "ts": {"type": "string", "format": "date-time"},
                "device_id": {"type": "string"}, "site": {"type": "string"},
                "temp_c": {"type": "number"}, "humidity_pct": {"type": "number", "minimum": 0, "maximum": 100},
                "pressure_hpa": {"type": "number"}, "battery_v": {"type": "number"},
                "rssi_dbm": {"type": "integer"}, "status": {"type": "string", "enum": ["ok", "degraded", "failed"]},
                "fw": {"type": "string"}, "seq": {"type": "integer", "minimum": 0}
            },
            "required": ["ts", "device_id", "temp_c", "seq"]
        });
        let event = br#"{"ts":"2025-06-01T10:11:12.345Z","device_id":"probe-01234","site":"plant-north","temp_c":21.37,"humidity_pct":45.6,"pressure_hpa":1001.25,"battery_v":3.87,"rssi_dbm":-61,"status":"ok","fw":"2.4.1","seq":123456}"#;
        let cache = SchemaCache::default();
        let compiled = cache.get(&schema).expect("compiles");
        let n = 200_000;
        let started = std::time::Instant::now();
        let mut values = Vec::with_capacity(16);
        for _ in 0..n {
            let v: Value = serde_json::from_slice(event).expect("json");
            values.push(v);
            values.clear();
        }
        let parse = started.elapsed() / n;
        let v: Value = serde_json::from_slice(event).expect("json");
        let started = std::time::Instant::now();
        for _ in 0..n {
            assert!(compiled.validator.is_valid(&v));
        }
        let validate = started.elapsed() / n;
        let plain = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&schema)
            .expect("compiles");
        let started = std::time::Instant::now();
        for _ in 0..n {
            assert!(plain.is_valid(&v));
        }
        let without_formats = started.elapsed() / n;
        let started = std::time::Instant::now();
        for _ in 0..n {
            let _ = serde_json::from_slice::<serde::de::IgnoredAny>(event);
        }
        let scan = started.elapsed() / n;
        let flat = compiled.flat.as_ref().expect("a flat schema");
        let started = std::time::Instant::now();
        for _ in 0..n {
            assert!(flat.surely_valid(event));
        }
        let quick = started.elapsed() / n;
        println!("per event: parse to Value {parse:?}, validate {validate:?} (without formats {without_formats:?}), syntax scan only {scan:?}, quick check {quick:?}");
    }
}
