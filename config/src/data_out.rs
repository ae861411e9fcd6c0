//! How data leaves Sluice other than as Parquet: outputs (a filtered, projected view of one
//! source's events) and the export endpoints that let end-users read an output.
//!
//! Data and checks only; the data plane evaluates outputs over the files in the lake
//! (`sluice_storage::export`). Everything here is part of the configuration's content hash.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::shaping::{check_pointer, check_tag_name, TAG_VALUE_LEN_MAX};
use crate::snapshot::{is_valid_device_id, is_valid_slug};

/// Outputs one workspace may have.
pub const OUTPUTS_MAX: usize = 100;
/// Export endpoints one workspace may have.
pub const ENDPOINTS_MAX: usize = 100;
/// Largest output, serialised: its filter and projection are evaluated for every event read.
pub const OUTPUT_BYTES_MAX: usize = 16 << 10;
/// Conditions on payload fields in one filter.
pub const CONDITIONS_MAX: usize = 32;
/// Tags one filter may require.
pub const FILTER_TAGS_MAX: usize = 32;
/// Device ids one filter may list.
pub const FILTER_DEVICES_MAX: usize = 256;
/// Fields one projection may have.
pub const FIELDS_MAX: usize = 100;
/// Longest output or endpoint name, and longest field name.
pub const NAME_LEN_MAX: usize = 100;

/// A named view of one source's events: the events its filter keeps, with the fields its
/// projection names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// UUIDv7.
    pub id: Uuid,
    pub slug: String,
    #[serde(default)]
    pub name: String,
    /// The slug of the source whose events it reads.
    pub source: String,
    /// Which events it keeps; all of them when empty.
    #[serde(default, skip_serializing_if = "Filter::is_empty")]
    pub filter: Filter,
    /// What each event becomes; [`DEFAULT_FIELDS`] when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<Field>,
}

/// Which events an output keeps: all of its parts must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// The event's `device_id` is one of these (when not empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_ids: Vec<String>,
    /// The event has each of these tags with this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Comparisons on payload fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.device_ids.is_empty() && self.tags.is_empty() && self.conditions.is_empty()
    }
}

/// A comparison of the payload value at `pointer` with `value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// JSON pointer (RFC 6901) into the payload, such as `/temp_c`.
    pub pointer: String,
    pub op: CompareOp,
    /// A JSON scalar; absent for `exists` and `absent`. `lt`, `lte`, `gt` and `gte` take a
    /// number (compared with numbers) or a string (compared with strings, by code point).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub value: Option<Value>,
}

/// How a [`Condition`] compares. A value of another JSON type than the condition's never
/// matches (`ne` included: `{"temp": "hot"}` is not `ne 20`, it is not comparable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Lte,
    Gt,
    Gte,
    /// The pointer names a value (`null` included).
    Exists,
    /// The pointer names nothing.
    Absent,
}

/// One field of an output's projection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// An envelope field (`event_id`, `received_at`, `device_id`, `tags`, `source`,
    /// `protocol`, `topic`, `payload`) or a JSON pointer into the payload (`/meta/site`).
    pub from: String,
    /// The field's name in what the output produces; by default the envelope field's name or
    /// the pointer's last segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The envelope fields an output can project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Envelope {
    EventId,
    ReceivedAt,
    DeviceId,
    Tags,
    Source,
    Protocol,
    Topic,
    Payload,
}

impl Envelope {
    pub const ALL: [Envelope; 8] = [
        Envelope::EventId,
        Envelope::ReceivedAt,
        Envelope::DeviceId,
        Envelope::Tags,
        Envelope::Source,
        Envelope::Protocol,
        Envelope::Topic,
        Envelope::Payload,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Envelope::EventId => "event_id",
            Envelope::ReceivedAt => "received_at",
            Envelope::DeviceId => "device_id",
            Envelope::Tags => "tags",
            Envelope::Source => "source",
            Envelope::Protocol => "protocol",
            Envelope::Topic => "topic",
            Envelope::Payload => "payload",
        }
    }

    pub fn parse(name: &str) -> Option<Envelope> {
        Envelope::ALL.into_iter().find(|e| e.name() == name)
    }

    /// The JSON Schema of the field's value.
    fn schema(self, payload: Option<&Value>) -> Value {
        match self {
            Envelope::EventId => json!({"type": "string", "format": "uuid"}),
            Envelope::ReceivedAt => json!({"type": "string", "format": "date-time"}),
            Envelope::DeviceId | Envelope::Topic => json!({"type": ["string", "null"]}),
            Envelope::Source => json!({"type": "string"}),
            Envelope::Protocol => json!({"type": "string", "enum": ["http", "mqtt"]}),
            Envelope::Tags => {
                json!({"type": "object", "additionalProperties": {"type": "string"}})
            }
            Envelope::Payload => payload
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"})),
        }
    }
}

/// What a projection field reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldSource<'a> {
    Envelope(Envelope),
    Pointer(&'a str),
}

/// The projection of an output without fields.
pub const DEFAULT_FIELDS: [Envelope; 5] = [
    Envelope::EventId,
    Envelope::ReceivedAt,
    Envelope::DeviceId,
    Envelope::Tags,
    Envelope::Payload,
];

impl Field {
    /// What the field reads; `None` when `from` is neither an envelope name nor a pointer.
    pub fn source(&self) -> Option<FieldSource<'_>> {
        if self.from.starts_with('/') {
            Some(FieldSource::Pointer(&self.from))
        } else {
            Envelope::parse(&self.from).map(FieldSource::Envelope)
        }
    }

    /// The field's name in the output.
    pub fn output_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        match self.source() {
            Some(FieldSource::Pointer(p)) => {
                let last = p.rsplit('/').next().unwrap_or_default();
                last.replace("~1", "/").replace("~0", "~")
            }
            _ => self.from.clone(),
        }
    }
}

/// An output made readable by end-users at `/v1/stream/{workspace}/{endpoint}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExportEndpointConfig {
    /// UUIDv7.
    pub id: Uuid,
    pub slug: String,
    #[serde(default)]
    pub name: String,
    /// The slug of the output it serves.
    pub output: String,
}

/// Webhook subscriptions one workspace may have.
pub const WEBHOOKS_MAX: usize = 50;
/// Longest webhook URL.
pub const WEBHOOK_URL_LEN_MAX: usize = 2048;
/// Bounds of a webhook's batches.
pub const WEBHOOK_BATCH_EVENTS_MAX: usize = 10_000;
pub const WEBHOOK_BATCH_BYTES_MAX: usize = 8 << 20;

/// An output delivered to a URL, in signed batches (Standard Webhooks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// UUIDv7; the `subscriptionId`.
    pub id: Uuid,
    pub slug: String,
    #[serde(default)]
    pub name: String,
    /// The slug of the output it delivers.
    pub output: String,
    /// `https://...` (`http://` only where the operator allows private hosts).
    pub url: String,
    /// A disabled subscription delivers nothing; where it stopped is kept.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A batch holds at most this many events ...
    #[serde(default = "default_batch_events")]
    pub batch_events_max: usize,
    /// ... and at most this many bytes of JSON.
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes_max: usize,
    /// Events waiting are sent at least this often.
    #[serde(default = "default_batch_interval")]
    pub batch_interval_ms: u64,
    /// The signing secret (`whsec_...`), sealed with the cluster secret
    /// ([`crate::sealed`]).
    pub secret_sealed: String,
    /// Whether the receiver may be on a private address (the operator's
    /// `smtp_allow_private_hosts`, which covers every outbound connection).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_private: bool,
}

fn yes() -> bool {
    true
}

pub fn default_batch_events() -> usize {
    500
}

pub fn default_batch_bytes() -> usize {
    1 << 20
}

pub fn default_batch_interval() -> u64 {
    1000
}

impl WebhookConfig {
    pub fn check(&self) -> Result<(), DataOutError> {
        let invalid = |problem: String| DataOutError::Webhook {
            webhook: self.slug.clone(),
            problem,
        };
        if !is_valid_slug(&self.slug) {
            return Err(invalid("the slug is 1 to 63 of a-z, 0-9 and -".into()));
        }
        check_name("webhook", &self.name).map_err(invalid)?;
        if !is_valid_slug(&self.output) {
            return Err(invalid(format!("{:?} is not an output slug", self.output)));
        }
        check_webhook_url(&self.url, self.allow_private).map_err(invalid)?;
        if !(1..=WEBHOOK_BATCH_EVENTS_MAX).contains(&self.batch_events_max) {
            return Err(invalid(format!(
                "batch_events_max is 1 to {WEBHOOK_BATCH_EVENTS_MAX}"
            )));
        }
        if !(1024..=WEBHOOK_BATCH_BYTES_MAX).contains(&self.batch_bytes_max) {
            return Err(invalid(format!(
                "batch_bytes_max is 1024 to {WEBHOOK_BATCH_BYTES_MAX}"
            )));
        }
        if !(10..=3_600_000).contains(&self.batch_interval_ms) {
            return Err(invalid("batch_interval_ms is 10 to 3600000".into()));
        }
        Ok(())
    }
}

/// Checks a webhook URL's form (not where it resolves): `https://host[:port]/path`, or
/// `http://` when private hosts are allowed; no credentials, no fragment.
pub fn check_webhook_url(url: &str, allow_private: bool) -> Result<(), String> {
    if url.len() > WEBHOOK_URL_LEN_MAX {
        return Err(format!(
            "a webhook URL has at most {WEBHOOK_URL_LEN_MAX} characters"
        ));
    }
    let rest = if let Some(rest) = url.strip_prefix("https://") {
        rest
    } else if let Some(rest) = url.strip_prefix("http://").filter(|_| allow_private) {
        rest
    } else {
        return Err(
            "a webhook URL starts with https:// (http:// only where the operator allows private hosts)"
                .into(),
        );
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let visible = url.bytes().all(|b| b.is_ascii_graphic());
    if authority.is_empty() || authority.contains('@') || url.contains('#') || !visible {
        return Err("a webhook URL names a host, with no user:password@ and no #fragment".into());
    }
    Ok(())
}

/// Why an output or endpoint cannot be saved or applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataOutError {
    #[error("a workspace has at most {OUTPUTS_MAX} outputs")]
    TooManyOutputs,
    #[error("a workspace has at most {ENDPOINTS_MAX} export endpoints")]
    TooManyEndpoints,
    #[error("output {output:?}: {problem}")]
    Output { output: String, problem: String },
    #[error("export endpoint {endpoint:?}: {problem}")]
    Endpoint { endpoint: String, problem: String },
    #[error("a workspace has at most {WEBHOOKS_MAX} webhooks")]
    TooManyWebhooks,
    #[error("webhook {webhook:?}: {problem}")]
    Webhook { webhook: String, problem: String },
}

fn check_name(kind: &str, name: &str) -> Result<(), String> {
    if name.chars().count() > NAME_LEN_MAX || name.chars().any(char::is_control) {
        return Err(format!(
            "a {kind} name has at most {NAME_LEN_MAX} characters and no control characters"
        ));
    }
    Ok(())
}

impl OutputConfig {
    /// Checks the output on its own: slug, name, bounded filter and projection, valid
    /// pointers, tag names and values, comparable condition values, unique field names.
    /// Whether its source exists is the workspace's check; whether its pointers fit the
    /// source's schema is [`OutputConfig::check_against_schema`].
    pub fn check(&self) -> Result<(), DataOutError> {
        let invalid = |problem: String| DataOutError::Output {
            output: self.slug.clone(),
            problem,
        };
        let bytes = serde_json::to_vec(self).map_or(usize::MAX, |b| b.len());
        if bytes > OUTPUT_BYTES_MAX {
            return Err(invalid(format!(
                "the output is {bytes} bytes as JSON; at most {OUTPUT_BYTES_MAX} are allowed"
            )));
        }
        if !is_valid_slug(&self.slug) {
            return Err(invalid("the slug is 1 to 63 of a-z, 0-9 and -".into()));
        }
        check_name("output", &self.name).map_err(invalid)?;
        if !is_valid_slug(&self.source) {
            return Err(invalid(format!("{:?} is not a source slug", self.source)));
        }
        let filter = &self.filter;
        if filter.device_ids.len() > FILTER_DEVICES_MAX {
            return Err(invalid(format!(
                "a filter lists at most {FILTER_DEVICES_MAX} device ids"
            )));
        }
        if let Some(bad) = filter.device_ids.iter().find(|d| !is_valid_device_id(d)) {
            return Err(invalid(format!("{bad:?} is not a device id")));
        }
        if filter.tags.len() > FILTER_TAGS_MAX {
            return Err(invalid(format!(
                "a filter requires at most {FILTER_TAGS_MAX} tags"
            )));
        }
        for (tag, value) in &filter.tags {
            check_tag_name(tag).map_err(invalid)?;
            if value.len() > TAG_VALUE_LEN_MAX {
                return Err(invalid(format!(
                    "tag {tag:?}: a tag value has at most {TAG_VALUE_LEN_MAX} bytes"
                )));
            }
        }
        if filter.conditions.len() > CONDITIONS_MAX {
            return Err(invalid(format!(
                "a filter has at most {CONDITIONS_MAX} conditions"
            )));
        }
        for condition in &filter.conditions {
            check_pointer(&condition.pointer).map_err(invalid)?;
            condition.check_value().map_err(invalid)?;
        }
        if self.fields.len() > FIELDS_MAX {
            return Err(invalid(format!(
                "a projection has at most {FIELDS_MAX} fields"
            )));
        }
        let mut names = HashSet::new();
        for field in &self.fields {
            match field.source() {
                Some(FieldSource::Pointer(p)) => check_pointer(p).map_err(invalid)?,
                Some(FieldSource::Envelope(_)) => {}
                None => {
                    return Err(invalid(format!(
                        "field from {:?}: an envelope field ({}) or a JSON pointer such as /temp_c",
                        field.from,
                        Envelope::ALL.map(Envelope::name).join(", ")
                    )))
                }
            }
            let name = field.output_name();
            if name.is_empty() || name.chars().count() > NAME_LEN_MAX {
                return Err(invalid(format!(
                    "field from {:?}: a field name has 1 to {NAME_LEN_MAX} characters",
                    field.from
                )));
            }
            if !names.insert(name.clone()) {
                return Err(invalid(format!("two fields are named {name:?}")));
            }
        }
        Ok(())
    }

    /// Checks the output's pointers against its source's schema: where the schema lists an
    /// object's `properties`, a pointer must name one of them (a typo would otherwise filter
    /// out everything, or project nothing, without a word), and an ordering comparison must
    /// meet a property of a type it can compare.
    pub fn check_against_schema(&self, schema: &Value) -> Result<(), DataOutError> {
        let invalid = |problem: String| DataOutError::Output {
            output: self.slug.clone(),
            problem,
        };
        let pointers = self
            .filter
            .conditions
            .iter()
            .map(|c| (c.pointer.as_str(), Some(c)))
            .chain(self.fields.iter().filter_map(|f| match f.source() {
                Some(FieldSource::Pointer(p)) => Some((p, None)),
                _ => None,
            }));
        for (pointer, condition) in pointers {
            let Some(sub) = subschema(schema, pointer) else {
                return Err(invalid(format!(
                    "{pointer:?} names no property of the source's schema"
                )));
            };
            let ordering = condition.is_some_and(|c| {
                matches!(
                    c.op,
                    CompareOp::Lt | CompareOp::Lte | CompareOp::Gt | CompareOp::Gte
                )
            });
            if ordering {
                let types = schema_types(sub);
                let comparable = types.is_empty()
                    || types
                        .iter()
                        .any(|t| matches!(t.as_str(), "number" | "integer" | "string"));
                if !comparable {
                    return Err(invalid(format!(
                        "{pointer:?} is of type {} in the source's schema, which lt/lte/gt/gte cannot compare",
                        types.join(" or ")
                    )));
                }
            }
        }
        Ok(())
    }

    /// The JSON Schema of what the output produces, given its source's schema (if any).
    pub fn produced_schema(&self, source_schema: Option<&Value>) -> Value {
        let mut properties = Map::new();
        let mut fields: Vec<(String, Value)> = Vec::new();
        if self.fields.is_empty() {
            for envelope in DEFAULT_FIELDS {
                fields.push((envelope.name().to_owned(), envelope.schema(source_schema)));
            }
        } else {
            for field in &self.fields {
                let schema = match field.source() {
                    Some(FieldSource::Envelope(e)) => e.schema(source_schema),
                    Some(FieldSource::Pointer(p)) => source_schema
                        .and_then(|s| subschema(s, p))
                        .cloned()
                        .unwrap_or_else(|| json!({})),
                    None => json!({}),
                };
                fields.push((field.output_name(), schema));
            }
        }
        for (name, schema) in fields {
            properties.insert(name, schema);
        }
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": properties,
        })
    }
}

impl Condition {
    fn check_value(&self) -> Result<(), String> {
        let pointer = &self.pointer;
        match (self.op, &self.value) {
            (CompareOp::Exists | CompareOp::Absent, None) => Ok(()),
            (CompareOp::Exists | CompareOp::Absent, Some(_)) => Err(format!(
                "condition on {pointer:?}: exists and absent take no value"
            )),
            (_, None) => Err(format!("condition on {pointer:?}: a value is needed")),
            (CompareOp::Eq | CompareOp::Ne, Some(v)) if is_scalar(v) => Ok(()),
            (CompareOp::Eq | CompareOp::Ne, Some(_)) => Err(format!(
                "condition on {pointer:?}: eq and ne compare with a string, number, boolean or null"
            )),
            (_, Some(Value::Number(_) | Value::String(_))) => Ok(()),
            (_, Some(_)) => Err(format!(
                "condition on {pointer:?}: lt, lte, gt and gte compare with a number or a string"
            )),
        }
    }
}

fn is_scalar(value: &Value) -> bool {
    !matches!(value, Value::Array(_) | Value::Object(_))
}

/// The schema of the value at `pointer` in documents of `schema`, following `properties`
/// (and `items` for array indexes). `None` whenever a level lists `properties` without the
/// segment's name, even if it allows other properties: that catches typos. A level that
/// describes no properties at all vouches for anything below it.
fn subschema<'s>(schema: &'s Value, pointer: &str) -> Option<&'s Value> {
    static ANY: Value = Value::Bool(true);
    let mut current = schema;
    for raw in pointer.split('/').skip(1) {
        let segment = raw.replace("~1", "/").replace("~0", "~");
        if let Some(properties) = current.get("properties").and_then(Value::as_object) {
            current = properties.get(&segment)?;
        } else if let Some(items) = current.get("items") {
            segment.parse::<usize>().ok()?;
            current = items;
        } else {
            return Some(&ANY);
        }
    }
    Some(current)
}

fn schema_types(schema: &Value) -> Vec<String> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

impl ExportEndpointConfig {
    pub fn check(&self) -> Result<(), DataOutError> {
        let invalid = |problem: String| DataOutError::Endpoint {
            endpoint: self.slug.clone(),
            problem,
        };
        if !is_valid_slug(&self.slug) {
            return Err(invalid("the slug is 1 to 63 of a-z, 0-9 and -".into()));
        }
        check_name("endpoint", &self.name).map_err(invalid)?;
        if !is_valid_slug(&self.output) {
            return Err(invalid(format!("{:?} is not an output slug", self.output)));
        }
        Ok(())
    }
}

/// Checks a workspace's outputs and endpoints together: each valid, bounded in number,
/// unique ids and slugs, every output on one of `sources` and every endpoint on one of the
/// outputs.
pub fn check_workspace(
    sources: &[&str],
    outputs: &[OutputConfig],
    endpoints: &[ExportEndpointConfig],
    webhooks: &[WebhookConfig],
) -> Result<(), DataOutError> {
    if outputs.len() > OUTPUTS_MAX {
        return Err(DataOutError::TooManyOutputs);
    }
    if endpoints.len() > ENDPOINTS_MAX {
        return Err(DataOutError::TooManyEndpoints);
    }
    let (mut ids, mut slugs) = (HashSet::new(), HashSet::new());
    for output in outputs {
        output.check()?;
        let problem = if !ids.insert(output.id) {
            "its id appears twice"
        } else if !slugs.insert(output.slug.as_str()) {
            "its slug appears twice"
        } else if !sources.contains(&output.source.as_str()) {
            "its source does not exist"
        } else {
            continue;
        };
        return Err(DataOutError::Output {
            output: output.slug.clone(),
            problem: problem.into(),
        });
    }
    let (mut ids, mut endpoint_slugs) = (HashSet::new(), HashSet::new());
    for endpoint in endpoints {
        endpoint.check()?;
        let problem = if !ids.insert(endpoint.id) {
            "its id appears twice"
        } else if !endpoint_slugs.insert(endpoint.slug.as_str()) {
            "its slug appears twice"
        } else if !slugs.contains(endpoint.output.as_str()) {
            "its output does not exist"
        } else {
            continue;
        };
        return Err(DataOutError::Endpoint {
            endpoint: endpoint.slug.clone(),
            problem: problem.into(),
        });
    }
    if webhooks.len() > WEBHOOKS_MAX {
        return Err(DataOutError::TooManyWebhooks);
    }
    let (mut ids, mut webhook_slugs) = (HashSet::new(), HashSet::new());
    for webhook in webhooks {
        webhook.check()?;
        let problem = if !ids.insert(webhook.id) {
            "its id appears twice"
        } else if !webhook_slugs.insert(webhook.slug.as_str()) {
            "its slug appears twice"
        } else if !slugs.contains(webhook.output.as_str()) {
            "its output does not exist"
        } else {
            continue;
        };
        return Err(DataOutError::Webhook {
            webhook: webhook.slug.clone(),
            problem: problem.into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(value: Value) -> OutputConfig {
        let mut base = json!({"id": Uuid::nil(), "slug": "hot", "source": "telemetry"});
        if let (Some(base), Some(extra)) = (base.as_object_mut(), value.as_object()) {
            base.extend(extra.clone());
        }
        serde_json::from_value(base).expect("an output")
    }

    #[test]
    fn checks_refuse_what_cannot_be_evaluated() {
        let bad = [
            json!({"filter": {"conditions": [{"pointer": "temp", "op": "eq", "value": 1}]}}),
            json!({"filter": {"conditions": [{"pointer": "/t", "op": "gt", "value": true}]}}),
            json!({"filter": {"conditions": [{"pointer": "/t", "op": "eq", "value": [1]}]}}),
            json!({"filter": {"conditions": [{"pointer": "/t", "op": "exists", "value": 1}]}}),
            json!({"filter": {"conditions": [{"pointer": "/t", "op": "lt"}]}}),
            json!({"filter": {"tags": {"Site": "x"}}}),
            json!({"filter": {"device_ids": ["a b"]}}),
            json!({"fields": [{"from": "nope"}]}),
            json!({"fields": [{"from": "/a/t"}, {"from": "/b/t"}]}),
            json!({"fields": [{"from": "/t", "name": ""}]}),
            json!({"source": "../x"}),
        ];
        for value in bad {
            assert!(output(value.clone()).check().is_err(), "{value} passed");
        }
        let good = output(json!({
            "filter": {"device_ids": ["d-1"], "tags": {"site": "x"},
                       "conditions": [{"pointer": "/t", "op": "gte", "value": 20},
                                      {"pointer": "/m~1s", "op": "absent"}]},
            "fields": [{"from": "event_id"}, {"from": "/a/t", "name": "t_a"}, {"from": "/b/t"}]
        }));
        assert_eq!(good.check(), Ok(()));
        assert_eq!(good.fields[2].output_name(), "t");
    }

    #[test]
    fn an_oversized_filter_is_refused() {
        let conditions: Vec<Value> = (0..CONDITIONS_MAX + 1)
            .map(|i| json!({"pointer": format!("/f{i}"), "op": "exists"}))
            .collect();
        let err = output(json!({"filter": {"conditions": conditions}})).check();
        assert!(err.is_err());
        let devices: Vec<String> = (0..FILTER_DEVICES_MAX)
            .map(|i| format!("{i:0>128}"))
            .collect();
        let err = output(json!({"filter": {"device_ids": devices}}))
            .check()
            .expect_err("over 16 KiB");
        assert!(err.to_string().contains("bytes as JSON"), "{err}");
    }

    #[test]
    fn pointers_must_fit_the_source_schema() {
        let schema = json!({"type": "object", "properties": {
            "temp_c": {"type": "number"}, "ok": {"type": "boolean"},
            "meta": {"type": "object", "properties": {"site": {"type": "string"}}},
            "free": {"type": "object"}}});
        let check = |v: Value| output(v).check_against_schema(&schema);
        assert!(check(json!({"fields": [{"from": "/temp"}]})).is_err());
        assert!(check(json!({"fields": [{"from": "/meta/sit"}]})).is_err());
        assert!(check(
            json!({"filter": {"conditions": [{"pointer": "/ok", "op": "gt", "value": 1}]}})
        )
        .is_err());
        assert!(check(
            json!({"fields": [{"from": "/meta/site"}, {"from": "/free/any/thing"}],
            "filter": {"conditions": [{"pointer": "/temp_c", "op": "gt", "value": 1}]}})
        )
        .is_ok());
        let produced =
            output(json!({"fields": [{"from": "/temp_c", "name": "t"}, {"from": "device_id"}]}))
                .produced_schema(Some(&schema));
        assert_eq!(produced["properties"]["t"], json!({"type": "number"}));
        assert_eq!(
            produced["properties"]["device_id"]["type"],
            json!(["string", "null"])
        );
    }

    #[test]
    fn webhook_urls_are_https_unless_private_hosts_are_allowed() {
        assert!(check_webhook_url("https://hooks.example.com/in?x=1", false).is_ok());
        assert!(check_webhook_url("http://127.0.0.1:9000/in", true).is_ok());
        for bad in [
            "http://hooks.example.com/in",
            "ftp://x/",
            "https://",
            "https://user:pw@example.com/",
            "https://example.com/#frag",
            "https://exa mple.com/",
        ] {
            assert!(check_webhook_url(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_need_an_output_and_outputs_a_source() {
        let out = output(json!({}));
        let endpoint = |output: &str| ExportEndpointConfig {
            id: Uuid::now_v7(),
            slug: "live".into(),
            name: String::new(),
            output: output.into(),
        };
        assert!(check_workspace(
            &["telemetry"],
            std::slice::from_ref(&out),
            &[endpoint("hot")],
            &[]
        )
        .is_ok());
        assert!(check_workspace(
            &["telemetry"],
            std::slice::from_ref(&out),
            &[endpoint("cold")],
            &[]
        )
        .is_err());
        assert!(check_workspace(&["other"], &[out], &[], &[]).is_err());
    }
}
