//! Turning a request body into event payloads without building JSON values.
//!
//! Accepted forms: one JSON object, a JSON array of objects, or NDJSON (one object per line,
//! blank lines ignored). Each event is validated as JSON and kept as the exact text sent; only
//! the spans are recorded, so no `serde_json::Value` is ever built on the hot path.

use serde_json::value::RawValue;

/// How the body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/json`: an object or an array of objects.
    Json,
    /// `application/x-ndjson`: one object per line.
    Ndjson,
}

/// Payloads back to back, and the end offset of each.
#[derive(Debug, Default)]
pub struct Events {
    pub payloads: Vec<u8>,
    pub ends: Vec<u32>,
}

/// What is wrong with a body. Positions are 1-based, as editors show them.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("malformed JSON at line {line}, column {column}: {message}")]
    Malformed {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("event {index} (line {line}) is not a JSON object; every event must be an object")]
    NotAnObject { index: usize, line: usize },
    #[error("the body is a JSON {found}; send an object, an array of objects, or NDJSON")]
    WrongTopLevel { found: &'static str },
    #[error("more than {max} events in one request; split the batch")]
    TooManyEvents { max: usize },
    #[error("the body is larger than 4 GiB")]
    TooLarge,
}

fn malformed(err: &serde_json::Error, line_offset: usize) -> ParseError {
    let message = err.to_string();
    // serde_json appends " at line X column Y"; the position is reported separately.
    let message = match message.rfind(" at line ") {
        Some(cut) => message[..cut].to_owned(),
        None => message,
    };
    ParseError::Malformed {
        line: err.line() + line_offset,
        column: err.column(),
        message,
    }
}

fn first_non_space(bytes: &[u8]) -> Option<u8> {
    bytes.iter().copied().find(|b| !b.is_ascii_whitespace())
}

impl Events {
    fn push(&mut self, text: &[u8]) -> Result<(), ParseError> {
        self.payloads.extend_from_slice(text);
        let end = u32::try_from(self.payloads.len()).map_err(|_| ParseError::TooLarge)?;
        self.ends.push(end);
        Ok(())
    }
}

/// Splits and validates `body`.
pub fn parse(body: &[u8], format: BodyFormat, events_max: usize) -> Result<Events, ParseError> {
    match format {
        BodyFormat::Json => parse_json(body, events_max),
        BodyFormat::Ndjson => parse_ndjson(body, events_max),
    }
}

fn parse_json(body: &[u8], events_max: usize) -> Result<Events, ParseError> {
    let mut events = Events::default();
    match first_non_space(body) {
        None => Ok(events),
        Some(b'{') => {
            let raw: &RawValue = serde_json::from_slice(body).map_err(|e| malformed(&e, 0))?;
            events.payloads.reserve(raw.get().len());
            events.push(raw.get().as_bytes())?;
            Ok(events)
        }
        Some(b'[') => {
            let items: Vec<&RawValue> =
                serde_json::from_slice(body).map_err(|e| malformed(&e, 0))?;
            if items.len() > events_max {
                return Err(ParseError::TooManyEvents { max: events_max });
            }
            events.payloads.reserve(body.len());
            events.ends.reserve(items.len());
            for (index, raw) in items.iter().enumerate() {
                if !raw.get().starts_with('{') {
                    return Err(ParseError::NotAnObject {
                        index: index + 1,
                        line: 1,
                    });
                }
                events.push(raw.get().as_bytes())?;
            }
            Ok(events)
        }
        Some(other) => {
            // Valid or not, a scalar is never an event; say which kind it is when valid.
            let found = match other {
                b'"' => "string",
                b't' | b'f' => "boolean",
                b'n' => "null",
                _ => "number",
            };
            serde_json::from_slice::<&RawValue>(body).map_err(|e| malformed(&e, 0))?;
            Err(ParseError::WrongTopLevel { found })
        }
    }
}

fn parse_ndjson(body: &[u8], events_max: usize) -> Result<Events, ParseError> {
    let mut events = Events::default();
    events.payloads.reserve(body.len());
    for (index, line) in body.split(|&b| b == b'\n').enumerate() {
        let line_no = index + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match first_non_space(line) {
            None => continue,
            Some(b'{') => {}
            Some(_) => {
                return Err(ParseError::NotAnObject {
                    index: events.ends.len() + 1,
                    line: line_no,
                })
            }
        }
        if events.ends.len() == events_max {
            return Err(ParseError::TooManyEvents { max: events_max });
        }
        let raw: &RawValue = serde_json::from_slice(line).map_err(|e| malformed(&e, index))?;
        events.push(raw.get().as_bytes())?;
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(events: &Events) -> Vec<String> {
        let mut start = 0;
        events
            .ends
            .iter()
            .map(|&end| {
                let s =
                    String::from_utf8(events.payloads[start..end as usize].to_vec()).expect("utf8");
                start = end as usize;
                s
            })
            .collect()
    }

    #[test]
    fn object_array_and_ndjson_give_the_exact_event_texts() {
        let one = parse(br#" {"a": 1} "#, BodyFormat::Json, 10).expect("object");
        assert_eq!(texts(&one), vec![r#"{"a": 1}"#]);
        let many = parse(br#"[{"a":1}, {"b":[2]}]"#, BodyFormat::Json, 10).expect("array");
        assert_eq!(texts(&many), vec![r#"{"a":1}"#, r#"{"b":[2]}"#]);
        let nd = parse(b"{\"a\":1}\r\n\n{\"b\":2}\n", BodyFormat::Ndjson, 10).expect("ndjson");
        assert_eq!(texts(&nd), vec![r#"{"a":1}"#, r#"{"b":2}"#]);
    }

    #[test]
    fn errors_say_where() {
        let err = parse(b"{\"a\":1}\n{\"b\":}\n", BodyFormat::Ndjson, 10).expect_err("bad");
        assert!(
            matches!(err, ParseError::Malformed { line: 2, .. }),
            "{err:?}"
        );
        let err = parse(b"{\"a\":1}\n[1]\n", BodyFormat::Ndjson, 10).expect_err("bad");
        assert_eq!(err, ParseError::NotAnObject { index: 2, line: 2 });
        let err = parse(br#"[{"a":1}, 3]"#, BodyFormat::Json, 10).expect_err("bad");
        assert_eq!(err, ParseError::NotAnObject { index: 2, line: 1 });
        let err = parse(b"42", BodyFormat::Json, 10).expect_err("bad");
        assert_eq!(err, ParseError::WrongTopLevel { found: "number" });
        let err = parse(b"{\"a\":1}{", BodyFormat::Json, 10).expect_err("bad");
        assert!(matches!(err, ParseError::Malformed { .. }));
    }

    #[test]
    fn event_count_is_bounded() {
        let err = parse(b"{}\n{}\n{}\n", BodyFormat::Ndjson, 2).expect_err("too many");
        assert_eq!(err, ParseError::TooManyEvents { max: 2 });
        let err = parse(b"[{},{},{}]", BodyFormat::Json, 2).expect_err("too many");
        assert_eq!(err, ParseError::TooManyEvents { max: 2 });
    }
}
