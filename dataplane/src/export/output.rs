//! An output, compiled once per configuration version: its filter decides which stored events
//! it keeps, its projection what each kept event becomes (one JSON object, written as text).
//!
//! The payload is parsed only when a condition or a field needs a value inside it; the
//! default projection copies the stored JSON text as it is.

use std::collections::HashSet;
use std::io::Write as _;

use serde_json::Value;
use sluice_config::data_out::{CompareOp, Envelope, FieldSource, OutputConfig, DEFAULT_FIELDS};
use sluice_storage::stored::{rfc3339_us, StoredRows};

/// An output ready to evaluate.
#[derive(Debug)]
pub struct CompiledOutput {
    /// The source whose events it reads.
    pub source: String,
    devices: Option<HashSet<String>>,
    tags: Vec<(String, String)>,
    conditions: Vec<(String, CompareOp, Option<Value>)>,
    /// Each field: its name as JSON text (quoted, escaped) and what it reads.
    fields: Vec<(String, FieldKind)>,
    /// Whether any condition or field reads inside the payload.
    parses_payload: bool,
}

#[derive(Debug)]
enum FieldKind {
    Envelope(Envelope),
    Pointer(String),
}

impl CompiledOutput {
    pub fn new(output: &OutputConfig) -> Self {
        let fields: Vec<(String, FieldKind)> = if output.fields.is_empty() {
            DEFAULT_FIELDS
                .iter()
                .map(|e| (json_string(e.name()), FieldKind::Envelope(*e)))
                .collect()
        } else {
            output
                .fields
                .iter()
                .filter_map(|f| {
                    let kind = match f.source()? {
                        FieldSource::Envelope(e) => FieldKind::Envelope(e),
                        FieldSource::Pointer(p) => FieldKind::Pointer(p.to_owned()),
                    };
                    Some((json_string(&f.output_name()), kind))
                })
                .collect()
        };
        let filter = &output.filter;
        let parses_payload = !filter.conditions.is_empty()
            || fields
                .iter()
                .any(|(_, k)| matches!(k, FieldKind::Pointer(_)));
        CompiledOutput {
            source: output.source.clone(),
            devices: (!filter.device_ids.is_empty())
                .then(|| filter.device_ids.iter().cloned().collect()),
            tags: filter
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            conditions: filter
                .conditions
                .iter()
                .map(|c| (c.pointer.clone(), c.op, c.value.clone()))
                .collect(),
            fields,
            parses_payload,
        }
    }

    /// Appends what event `row` becomes to `out` (one JSON object, no newline) and returns
    /// true, or returns false and leaves `out` as it was when the filter drops the event.
    pub fn render(&self, rows: &StoredRows, row: usize, out: &mut Vec<u8>) -> bool {
        if let Some(devices) = &self.devices {
            if !rows.device_id(row).is_some_and(|d| devices.contains(d)) {
                return false;
            }
        }
        if !self.tags.is_empty() {
            let tags = rows.tags(row);
            let has = |(name, value): &(String, String)| {
                tags.iter().any(|(k, v)| k == name && v == value)
            };
            if !self.tags.iter().all(has) {
                return false;
            }
        }
        let payload = rows.payload(row);
        let parsed = if self.parses_payload {
            // A stored payload is always a JSON object; a file that says otherwise yields
            // `null`, which no condition matches and every pointer misses.
            serde_json::from_str::<Value>(&payload).unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        let keep = self
            .conditions
            .iter()
            .all(|(pointer, op, value)| compare(parsed.pointer(pointer), *op, value.as_ref()));
        if !keep {
            return false;
        }
        out.push(b'{');
        let mut first = true;
        for (name, kind) in &self.fields {
            let start = out.len();
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(name.as_bytes());
            out.push(b':');
            let written = match kind {
                FieldKind::Envelope(e) => {
                    write_envelope(*e, rows, row, &payload, out);
                    true
                }
                FieldKind::Pointer(p) => match parsed.pointer(p) {
                    Some(value) => serde_json::to_writer(&mut *out, value).is_ok(),
                    None => false,
                },
            };
            if written {
                first = false;
            } else {
                // A pointer that names nothing leaves the field out, as `null` would claim
                // the device sent one.
                out.truncate(start);
            }
        }
        out.push(b'}');
        true
    }
}

fn write_envelope(e: Envelope, rows: &StoredRows, row: usize, payload: &str, out: &mut Vec<u8>) {
    let string = |out: &mut Vec<u8>, s: Option<&str>| match s {
        Some(s) => out.extend_from_slice(json_string(s).as_bytes()),
        None => out.extend_from_slice(b"null"),
    };
    match e {
        Envelope::EventId => string(out, Some(rows.event_id(row))),
        Envelope::ReceivedAt => {
            let _ = write!(out, "\"{}\"", rfc3339_us(rows.received_at_us(row)));
        }
        Envelope::DeviceId => string(out, rows.device_id(row)),
        Envelope::Source => string(out, Some(rows.source(row))),
        Envelope::Protocol => string(out, Some(rows.protocol(row))),
        Envelope::Topic => string(out, rows.topic(row)),
        Envelope::Tags => {
            out.push(b'{');
            for (i, (k, v)) in rows.tags(row).into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(out, Some(k));
                out.push(b':');
                string(out, Some(v));
            }
            out.push(b'}');
        }
        Envelope::Payload => {
            // Stored as sent: a pretty-printed event has line breaks, but only between tokens
            // (inside JSON strings they are escaped), so spaces can stand in for them and
            // keep each exported event on one line (NDJSON, SSE `data:`).
            let start = out.len();
            out.extend_from_slice(payload.as_bytes());
            for b in &mut out[start..] {
                if *b == b'\n' || *b == b'\r' {
                    *b = b' ';
                }
            }
        }
    }
}

fn json_string(s: &str) -> String {
    // Serialising a string cannot fail.
    serde_json::to_string(s).unwrap_or_default()
}

/// Whether `found` (the value at a condition's pointer, if any) meets the condition. Values
/// of different JSON types never compare: not even `ne`.
fn compare(found: Option<&Value>, op: CompareOp, value: Option<&Value>) -> bool {
    use std::cmp::Ordering;
    match op {
        CompareOp::Exists => return found.is_some(),
        CompareOp::Absent => return found.is_none(),
        _ => {}
    }
    let (Some(found), Some(value)) = (found, value) else {
        return false;
    };
    let ordering = match (found, value) {
        (Value::Number(a), Value::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) => a.partial_cmp(&b),
            _ => None,
        },
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        _ => None,
    };
    let Some(ordering) = ordering else {
        return false;
    };
    match op {
        CompareOp::Eq => ordering == Ordering::Equal,
        CompareOp::Ne => ordering != Ordering::Equal,
        // Booleans and nulls only compare for (in)equality.
        _ if !matches!(found, Value::Number(_) | Value::String(_)) => false,
        CompareOp::Lt => ordering == Ordering::Less,
        CompareOp::Lte => ordering != Ordering::Greater,
        CompareOp::Gt => ordering == Ordering::Greater,
        CompareOp::Gte => ordering != Ordering::Less,
        CompareOp::Exists | CompareOp::Absent => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn comparisons_never_cross_json_types() {
        let t = |found: Value, op, value: Value| compare(Some(&found), op, Some(&value));
        assert!(t(json!(21.5), CompareOp::Gt, json!(20)));
        assert!(t(json!(20), CompareOp::Eq, json!(20.0)));
        assert!(!t(json!("21"), CompareOp::Gt, json!(20)));
        assert!(!t(json!("hot"), CompareOp::Ne, json!(20)));
        assert!(t(json!("b"), CompareOp::Gte, json!("a")));
        assert!(!t(json!(true), CompareOp::Gt, json!(false)));
        assert!(t(json!(true), CompareOp::Ne, json!(false)));
        assert!(!compare(None, CompareOp::Ne, Some(&json!(1))));
        assert!(compare(None, CompareOp::Absent, None));
        assert!(compare(Some(&Value::Null), CompareOp::Exists, None));
    }
}
