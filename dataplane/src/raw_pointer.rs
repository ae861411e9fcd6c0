//! A JSON pointer's value found in an event's text without building the event.
//!
//! Payload pointer tag rules run on every event of their sources. Building a
//! `serde_json::Value` for each (a map, a string per key and value) was most of their cost;
//! walking the text with serde and keeping only the slice under the pointer is not.

use std::borrow::Cow;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::flat_schema::Key;

/// The tag value (`sluice_config::shaping::tag_value`) under `pointer` in `event`, a JSON
/// text: the same answer as `Value::pointer` on the parsed event, the last value where a key
/// repeats.
pub fn tag_value(event: &str, pointer: &str) -> Option<String> {
    let mut raw = event;
    if !pointer.is_empty() {
        for token in pointer.strip_prefix('/')?.split('/') {
            let token = if token.contains('~') {
                Cow::Owned(token.replace("~1", "/").replace("~0", "~"))
            } else {
                Cow::Borrowed(token)
            };
            raw = child(raw, &token)?;
        }
    }
    match raw.trim_start().as_bytes().first()? {
        // Objects and arrays are never tag values: no need to read them.
        b'{' | b'[' => None,
        _ => sluice_config::shaping::tag_value(&serde_json::from_str::<Value>(raw).ok()?),
    }
}

/// The text of the member `token` of the object or array whose text is `raw`.
fn child<'a>(raw: &'a str, token: &str) -> Option<&'a str> {
    let mut de = serde_json::Deserializer::from_str(raw);
    match raw.trim_start().as_bytes().first()? {
        b'{' => de.deserialize_map(Member { key: token }).ok()?,
        b'[' => de
            .deserialize_seq(Element {
                index: array_index(token)?,
            })
            .ok()?,
        _ => None,
    }
}

/// A pointer token as an array index: decimal digits, no leading zero (RFC 6901).
fn array_index(token: &str) -> Option<usize> {
    if token.is_empty()
        || !token.bytes().all(|b| b.is_ascii_digit())
        || (token.len() > 1 && token.starts_with('0'))
    {
        return None;
    }
    token.parse().ok()
}

struct Member<'k> {
    key: &'k str,
}

impl<'de> Visitor<'de> for Member<'_> {
    type Value = Option<&'de str>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let raw: &'de RawValue = map.next_value()?;
            // The last one, as a parser building the object keeps.
            if key == self.key {
                found = Some(raw.get());
            }
        }
        Ok(found)
    }
}

struct Element {
    index: usize,
}

impl<'de> Visitor<'de> for Element {
    type Value = Option<&'de str>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        let mut at = 0;
        loop {
            if at == self.index {
                let Some(raw) = seq.next_element::<&'de RawValue>()? else {
                    break;
                };
                found = Some(raw.get());
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            at += 1;
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_what_value_pointer_finds() {
        let event = br#"{"meta":{"site":"lyon","a/b":1,"m~n":true},"serial":42,"x":[10,{"y":"z"}],"e":"caf\u00e9","d":1,"d":2,"f":21.50}"#;
        for (pointer, expected) in [
            ("/meta/site", Some("lyon")),
            ("/meta/a~1b", Some("1")),
            ("/meta/m~0n", Some("true")),
            ("/serial", Some("42")),
            ("/x/0", Some("10")),
            ("/x/1/y", Some("z")),
            ("/x/01", None),
            ("/x/2", None),
            ("/e", Some("café")),
            ("/d", Some("2")),
            ("/f", Some("21.5")),
            ("/meta", None),
            ("/nope", None),
            ("", None),
            ("serial", None),
        ] {
            assert_eq!(
                tag_value(std::str::from_utf8(event).expect("utf-8"), pointer).as_deref(),
                expected,
                "{pointer}"
            );
        }
    }

    /// Over generated documents and pointers, the same answer as parsing the event.
    #[test]
    fn fuzz_agrees_with_value_pointer() {
        let leaves = [
            json!(null),
            json!(true),
            json!(0),
            json!(-1.25e3),
            json!(12345678901234567890u64),
            json!(""),
            json!("a\"b\\c/é"),
            json!("x".repeat(300)),
        ];
        let keys = ["a", "b", "a/b", "~", "0", "1", ""];
        fn build(
            u: &mut arbtest::arbitrary::Unstructured<'_>,
            depth: u32,
            leaves: &[Value],
            keys: &[&str],
        ) -> arbtest::arbitrary::Result<Value> {
            Ok(
                match if depth == 0 {
                    0
                } else {
                    u.int_in_range(0..=2)?
                } {
                    0 => leaves[u.choose_index(leaves.len())?].clone(),
                    1 => {
                        let mut map = serde_json::Map::new();
                        for _ in 0..u.int_in_range(0..=3)? {
                            let key = keys[u.choose_index(keys.len())?];
                            map.insert(key.to_owned(), build(u, depth - 1, leaves, keys)?);
                        }
                        Value::Object(map)
                    }
                    _ => {
                        let mut items = Vec::new();
                        for _ in 0..u.int_in_range(0..=3)? {
                            items.push(build(u, depth - 1, leaves, keys)?);
                        }
                        Value::Array(items)
                    }
                },
            )
        }
        arbtest::arbtest(|u| {
            let document = build(u, 3, &leaves, &keys)?;
            let text = document.to_string();
            let mut pointer = String::new();
            for _ in 0..u.int_in_range(0..=3)? {
                let token = keys[u.choose_index(keys.len())?];
                pointer.push('/');
                pointer.push_str(&token.replace('~', "~0").replace('/', "~1"));
            }
            let expected = document
                .pointer(&pointer)
                .and_then(sluice_config::shaping::tag_value);
            assert_eq!(tag_value(&text, &pointer), expected, "{text} {pointer}");
            Ok(())
        })
        .budget_ms(sluice_config::test_fixtures::fuzz_budget_ms());
    }
}
