//! A quick, allocation-free check for the common shape of telemetry schemas: a flat object of
//! scalar properties with simple constraints. It answers only "surely valid": an event it
//! passes is one the full validator (`jsonschema`) accepts, and anything else (an event it
//! cannot vouch for, a schema with a keyword it does not know) goes to the full validator,
//! which decides and explains.
//!
//! Why: the full validator needs each event as a `serde_json::Value`, and building one costs
//! about 1.7 µs for a 200-byte event (two dozen allocations), five times the validation
//! itself; this walks the event's text once instead (measured in `shape::cost`).

use std::borrow::Cow;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

/// Longest number text checked here: beyond 15 significant digits an `f64` may not compare
/// as the full validator compares, so such a number goes to it.
const NUMBER_TEXT_MAX: usize = 15;
/// Most properties handled (each event's keys are looked up among them).
const PROPERTIES_MAX: usize = 64;

/// What one property allows.
#[derive(Debug, Default)]
struct Property {
    /// Allowed JSON types, by [`Kind`] bit.
    kinds: u8,
    date_time: bool,
    minimum: Option<f64>,
    maximum: Option<f64>,
    exclusive_minimum: Option<f64>,
    exclusive_maximum: Option<f64>,
    /// String values allowed (`enum` of strings only).
    one_of: Option<Vec<String>>,
    min_length: Option<usize>,
    max_length: Option<usize>,
    /// Its bit in the required set, when required.
    required_bit: Option<u8>,
}

#[derive(Clone, Copy)]
enum Kind {
    Null = 1,
    Boolean = 2,
    Integer = 4,
    Number = 8,
    String = 16,
    Object = 32,
    Array = 64,
}

/// A schema this module can check, compiled.
#[derive(Debug)]
pub struct FlatSchema {
    /// Looked up by a linear scan: for the dozen properties of a telemetry schema, comparing
    /// names beats hashing each key of each event.
    properties: Vec<(String, Property)>,
    /// Required names no property describes (any value will do).
    required_unlisted: Vec<(String, u8)>,
    /// Count of required names.
    required: u32,
    additional: bool,
}

/// Keywords that only annotate, anywhere.
const ANNOTATIONS: [&str; 10] = [
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
];

impl FlatSchema {
    /// The quick check for `schema`, or `None` when it has anything this module does not
    /// handle exactly (then every event goes to the full validator).
    pub fn of(schema: &Value) -> Option<FlatSchema> {
        let root = schema.as_object()?;
        if root.get("type")?.as_str()? != "object" {
            return None;
        }
        let mut flat = FlatSchema {
            properties: Vec::new(),
            required_unlisted: Vec::new(),
            required: 0,
            additional: true,
        };
        let mut required: Vec<&str> = Vec::new();
        for (keyword, value) in root {
            match keyword.as_str() {
                "type" => {}
                "properties" => {
                    let properties = value.as_object()?;
                    if properties.len() > PROPERTIES_MAX {
                        return None;
                    }
                    for (name, property) in properties {
                        flat.properties
                            .push((name.clone(), Property::of(property)?));
                    }
                }
                "required" => {
                    for name in value.as_array()? {
                        let name = name.as_str()?;
                        if !required.contains(&name) {
                            required.push(name);
                        }
                    }
                }
                "additionalProperties" => flat.additional = value.as_bool()?,
                k if ANNOTATIONS.contains(&k) => {}
                _ => return None,
            }
        }
        if required.len() > 64 {
            return None;
        }
        flat.required = required.len() as u32;
        for (bit, name) in required.into_iter().enumerate() {
            match flat.properties.iter_mut().find(|(n, _)| n == name) {
                Some((_, property)) => property.required_bit = Some(bit as u8),
                None => flat.required_unlisted.push((name.to_owned(), bit as u8)),
            }
        }
        Some(flat)
    }

    /// Whether `event` (a JSON object's text, already checked as JSON) surely matches the
    /// schema; `false` means "ask the full validator", not "invalid".
    pub fn surely_valid(&self, event: &[u8]) -> bool {
        let mut de = serde_json::Deserializer::from_slice(event);
        let mut seen = 0u64;
        let ok = de
            .deserialize_map(Walk {
                schema: self,
                seen: &mut seen,
            })
            .unwrap_or(false);
        ok && seen.count_ones() == self.required
    }
}

impl Property {
    fn of(schema: &Value) -> Option<Property> {
        let schema = schema.as_object()?;
        let mut p = Property::default();
        let number = |v: &Value| v.as_f64().filter(|f| f.is_finite());
        for (keyword, value) in schema {
            match keyword.as_str() {
                "type" => {
                    let names: Vec<&str> = match value {
                        Value::String(t) => vec![t.as_str()],
                        Value::Array(ts) => ts.iter().map(Value::as_str).collect::<Option<_>>()?,
                        _ => return None,
                    };
                    for name in names {
                        p.kinds |= match name {
                            "null" => Kind::Null,
                            "boolean" => Kind::Boolean,
                            "integer" => Kind::Integer,
                            "number" => Kind::Number,
                            "string" => Kind::String,
                            "object" => Kind::Object,
                            "array" => Kind::Array,
                            _ => return None,
                        } as u8;
                    }
                }
                "format" if value.as_str() == Some("date-time") => p.date_time = true,
                "minimum" => p.minimum = Some(number(value)?),
                "maximum" => p.maximum = Some(number(value)?),
                "exclusiveMinimum" => p.exclusive_minimum = Some(number(value)?),
                "exclusiveMaximum" => p.exclusive_maximum = Some(number(value)?),
                "minLength" => p.min_length = Some(usize::try_from(value.as_u64()?).ok()?),
                "maxLength" => p.max_length = Some(usize::try_from(value.as_u64()?).ok()?),
                "enum" => {
                    let strings = value
                        .as_array()?
                        .iter()
                        .map(|v| v.as_str().map(str::to_owned))
                        .collect::<Option<Vec<_>>>()?;
                    p.one_of = Some(strings);
                }
                k if ANNOTATIONS.contains(&k) => {}
                _ => return None,
            }
        }
        // A property without a type takes anything: only the full validator knows its other
        // constraints' meaning then.
        (p.kinds != 0).then_some(p)
    }

    /// Whether `raw` surely meets this property's rules.
    fn surely_valid(&self, raw: &RawValue) -> bool {
        let text = raw.get();
        let allows = |kind: Kind| self.kinds & kind as u8 != 0;
        match text.as_bytes().first() {
            Some(b'"') => {
                if !allows(Kind::String) {
                    return false;
                }
                // Most strings have no escapes: their text between the quotes is the value.
                let inner = &text[1..text.len().saturating_sub(1).max(1)];
                let s: Cow<'_, str> = if inner.contains('\\') {
                    match serde_json::from_str(text) {
                        Ok(s) => s,
                        Err(_) => return false,
                    }
                } else {
                    Cow::Borrowed(inner)
                };
                // Lengths count code points, as JSON Schema does.
                let chars = || s.chars().count();
                self.min_length.is_none_or(|m| chars() >= m)
                    && self.max_length.is_none_or(|m| chars() <= m)
                    && self
                        .one_of
                        .as_ref()
                        .is_none_or(|all| all.iter().any(|a| *a == *s))
                    && (!self.date_time || plain_date_time(&s))
            }
            Some(b't' | b'f') => allows(Kind::Boolean) && self.no_value_constraints(),
            Some(b'n') => allows(Kind::Null) && self.no_value_constraints(),
            Some(b'{') => allows(Kind::Object) && self.no_value_constraints(),
            Some(b'[') => allows(Kind::Array) && self.no_value_constraints(),
            Some(b'-' | b'0'..=b'9') => {
                let digits = text.bytes().filter(u8::is_ascii_digit).count();
                if digits > NUMBER_TEXT_MAX || self.one_of.is_some() {
                    return false;
                }
                // Without bounds only the kind matters, and the text tells it: no need to
                // parse every reading (it showed in the NDJSON benchmark's profile).
                let bounded = self.minimum.is_some()
                    || self.maximum.is_some()
                    || self.exclusive_minimum.is_some()
                    || self.exclusive_maximum.is_some();
                if !bounded && !text.bytes().any(|b| b == b'e' || b == b'E') {
                    let integral = !text.contains('.');
                    if allows(Kind::Number) || (allows(Kind::Integer) && integral) {
                        return true;
                    }
                }
                let Ok(n) = text.parse::<f64>() else {
                    return false;
                };
                let kind_ok = allows(Kind::Number) || (allows(Kind::Integer) && n.fract() == 0.0);
                kind_ok
                    && self.minimum.is_none_or(|m| n >= m)
                    && self.maximum.is_none_or(|m| n <= m)
                    && self.exclusive_minimum.is_none_or(|m| n > m)
                    && self.exclusive_maximum.is_none_or(|m| n < m)
            }
            _ => false,
        }
    }

    /// `enum` applies to every type; only string enums are handled, so a non-string value
    /// under one is left to the full validator.
    fn no_value_constraints(&self) -> bool {
        self.one_of.is_none()
    }
}

/// Whether `s` is a date-time every RFC 3339 reader takes: `YYYY-MM-DDTHH:MM:SS`, an optional
/// fraction, and `Z` or `±HH:MM`, with fields in range and no leap second (those, and every
/// other spelling, go to the full validator).
fn plain_date_time(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 20 {
        return false;
    }
    let num = |at: usize, len: usize| -> Option<u32> {
        let part = b.get(at..at + len)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = (
        num(0, 4),
        num(5, 2),
        num(8, 2),
        num(11, 2),
        num(14, 2),
        num(17, 2),
    ) else {
        return false;
    };
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return false;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    if year == 0 || day == 0 || day > days || hour > 23 || minute > 59 || second > 59 {
        return false;
    }
    let mut rest = &b[19..];
    if rest.first() == Some(&b'.') {
        let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return false;
        }
        rest = &rest[1 + digits..];
    }
    match rest {
        [b'Z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            let two = |a: u8, c: u8| {
                (a.is_ascii_digit() && c.is_ascii_digit())
                    .then(|| u32::from(a - b'0') * 10 + u32::from(c - b'0'))
            };
            matches!((two(*h1, *h2), two(*m1, *m2)), (Some(h), Some(m)) if h <= 23 && m <= 59)
        }
        _ => false,
    }
}

/// Walks an event's top-level entries, checking each against its property.
struct Walk<'s> {
    schema: &'s FlatSchema,
    /// Bit `i` set once `required[i]` was seen.
    seen: &'s mut u64,
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut ok = true;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            if !ok {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let raw: &RawValue = map.next_value()?;
            let key = key.as_ref();
            match self
                .schema
                .properties
                .iter()
                .find(|(n, _)| same_key(n, key))
            {
                Some((_, property)) => {
                    ok = property.surely_valid(raw);
                    if let Some(bit) = property.required_bit {
                        *self.seen |= 1 << bit;
                    }
                }
                None => {
                    ok = self.schema.additional;
                    if let Some((_, bit)) = self
                        .schema
                        .required_unlisted
                        .iter()
                        .find(|(n, _)| same_key(n, key))
                    {
                        *self.seen |= 1 << bit;
                    }
                }
            }
        }
        Ok(ok)
    }
}

/// `a == b`, with the first bytes compared before calling `memcmp`: most properties differ
/// there, and a `memcmp` call per property showed in the NDJSON benchmark's profile.
fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.as_bytes().first() == b.as_bytes().first() && a == b
}

/// A key borrowed from the event's text when it has no escapes (serde's `Cow` always copies).
pub(crate) struct Key<'de>(pub(crate) Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "ts": {"type": "string", "format": "date-time"},
                "site": {"type": "string", "minLength": 1, "maxLength": 8},
                "temp_c": {"type": "number", "minimum": -50, "exclusiveMaximum": 80},
                "n": {"type": ["integer", "null"], "minimum": 0},
                "ok": {"type": "boolean"},
                "status": {"type": "string", "enum": ["ok", "degraded"]},
                "meta": {"type": "object"},
                "level": {"type": "number"},
                "count": {"type": "integer"}
            },
            "required": ["ts", "temp_c"],
            "additionalProperties": false
        })
    }

    #[test]
    fn schemas_with_keywords_it_does_not_know_are_left_to_the_full_validator() {
        assert!(FlatSchema::of(&schema()).is_some());
        for other in [
            json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}}),
            json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}}),
            json!({"type": "object", "allOf": []}),
            json!({"properties": {}}),
            json!({"type": "object", "properties": {"a": {}}}),
            json!({"type": "object", "properties": {"a": {"type": "string", "format": "email"}}}),
        ] {
            assert!(FlatSchema::of(&other).is_none(), "{other}");
        }
    }

    /// Fuzz: whatever the event, "surely valid" is never said of one the full validator
    /// refuses (`SLUICE_FUZZ_MS` sets the run).
    #[test]
    fn fuzz_surely_valid_events_are_valid_for_the_full_validator() {
        let schema = schema();
        let flat = FlatSchema::of(&schema).expect("flat");
        let full = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&schema)
            .expect("compiles");
        let good = json!({"ts": "2026-12-06T08:00:00.123+01:00", "site": "lyon", "temp_c": 21.5,
                          "n": 3, "ok": true, "status": "ok", "meta": {"a": [1]}});
        assert!(flat.surely_valid(good.to_string().as_bytes()));
        let values = [
            json!(null),
            json!(true),
            json!(0),
            json!(-1),
            json!(3.0),
            json!(3.5),
            json!(80),
            json!(79.99),
            json!(-50),
            json!(-50.5),
            json!(1e300),
            json!(12345678901234567890u64),
            json!(-0.0),
            json!(1e-7),
            json!(-1e21),
            json!(""),
            json!("lyon"),
            json!("é日本語xx"),
            json!("toolongsite"),
            json!("ok"),
            json!("degraded"),
            json!("failed"),
            json!("2026-12-06T08:00:00Z"),
            json!("2026-02-29T08:00:00Z"),
            json!("2024-02-29T23:59:60Z"),
            json!("2026-12-06t08:00:00z"),
            json!("2026-13-06T08:00:00Z"),
            json!("2026-12-06T08:00:00+24:00"),
            json!("2026-12-06 08:00:00Z"),
            json!("2026-12-06T08:00:00.Z"),
            json!({}),
            json!([]),
        ];
        let keys = [
            "ts", "site", "temp_c", "n", "ok", "status", "meta", "level", "count", "other",
        ];
        arbtest::arbtest(|u| {
            let mut event = serde_json::Map::new();
            for _ in 0..u.int_in_range(0..=8)? {
                let key = keys[u.choose_index(keys.len())?];
                let value = values[u.choose_index(values.len())?].clone();
                event.insert(key.to_owned(), value);
            }
            let mut text = Value::Object(event.clone()).to_string();
            // Sometimes a key twice (the last one counts for the full validator).
            if u.arbitrary()? && !event.is_empty() {
                let (k, _) = event.iter().next().expect("one");
                let extra = values[u.choose_index(values.len())?].clone();
                text = format!("{{\"{k}\":{extra},{}", &text[1..]);
            }
            let Ok(parsed) = serde_json::from_str::<Value>(&text) else {
                return Ok(());
            };
            if flat.surely_valid(text.as_bytes()) {
                assert!(full.is_valid(&parsed), "{text}");
            }
            Ok(())
        })
        .budget_ms(sluice_config::test_fixtures::fuzz_budget_ms());
    }
}
