//! Turning a request body into event payloads without building JSON values.
//!
//! Accepted forms: one JSON object, a JSON array of objects, or NDJSON (one object per line,
//! blank lines ignored). Each event is validated as JSON and kept as the exact text sent; only
//! the spans are recorded, so no `serde_json::Value` is ever built on the hot path.
//!
//! An event must also be JSON every reader takes (I-JSON, RFC 7493, as far as a reader can
//! notice; see [`check_event`]): an event DuckDB cannot read would break every query over the
//! files it lands in.

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
    #[error("event {index} (line {line}) is JSON that readers refuse: {reason}")]
    Unreadable {
        index: usize,
        line: usize,
        reason: &'static str,
    },
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
            readable(raw.get().as_bytes(), 1, 1)?;
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
                readable(raw.get().as_bytes(), index + 1, 1)?;
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
    for (index, line) in lines(body).enumerate() {
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
        readable(raw.get().as_bytes(), events.ends.len() + 1, line_no)?;
        events.push(raw.get().as_bytes())?;
    }
    Ok(events)
}

/// The lines of `body` as `body.split(|&b| b == b'\n')` gives them (an empty one after a
/// final newline), found with `memchr`: the split's byte-by-byte search made `parse` ~14 % of
/// the HTTP thread on NDJSON bodies, where `memchr` takes ~3 %.
fn lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = Some(0);
    std::iter::from_fn(move || {
        let from = start?;
        let rest = &body[from..];
        match memchr::memchr(b'\n', rest) {
            Some(at) => {
                start = Some(from + at + 1);
                Some(&rest[..at])
            }
            None => {
                start = None;
                Some(rest)
            }
        }
    })
}

/// Deepest nesting of objects and arrays in an event: what serde_json and most readers take.
pub const DEPTH_MAX: usize = 128;

fn readable(text: &[u8], index: usize, line: usize) -> Result<(), ParseError> {
    check_event(text).map_err(|reason| ParseError::Unreadable {
        index,
        line,
        reason,
    })
}

/// Refuses what valid JSON may hold but readers refuse: nesting deeper than [`DEPTH_MAX`], a
/// lone UTF-16 surrogate escape (`"\ud800"`: not Unicode, and DuckDB's JSON functions fail on
/// every row of the file), `\u0000` (cuts strings short in C readers), and numbers beyond a
/// double (`1e99999`). `text` is one event that already parsed as JSON. Duplicate member names,
/// which I-JSON also forbids, are kept as sent (readers take one of them).
pub fn check_event(text: &[u8]) -> Result<(), &'static str> {
    if plainly_readable(text) {
        return Ok(());
    }
    check_event_tokens(text)
}

/// Whether `text` (valid JSON) cannot hold anything [`check_event`] refuses, from counts taken
/// in one pass the compiler vectorises: no escape at all, at most [`DEPTH_MAX`] opening
/// brackets, fewer digits than a double's largest integer has, and no exponent (a digit
/// followed by `e` or `E`; one inside a string only sends the event to the full check). Most
/// telemetry passes; the token-by-token check alone was a fifth of the HTTP thread on NDJSON.
fn plainly_readable(text: &[u8]) -> bool {
    /// 10^308 has 309 digits: a number with fewer, and no exponent, is a finite double.
    const DIGITS_MAX: usize = 308;
    /// Bytes counted in `u8` lanes before the counts are added up.
    const BLOCK: usize = 128;
    let Some((&last, _)) = text.split_last() else {
        return true;
    };
    // Each byte with the one after it; the last byte has none and is counted on its own.
    let (mut openers, mut digits, mut doubtful) = (0usize, 0usize, 0u8);
    for (block, next) in text.chunks(BLOCK).zip(text[1..].chunks(BLOCK)) {
        let (mut o, mut d, mut x) = (0u8, 0u8, 0u8);
        for (&b, &n) in block.iter().zip(next) {
            let digit = b.wrapping_sub(b'0') < 10;
            o += u8::from((b == b'{') | (b == b'['));
            d += u8::from(digit);
            x |= u8::from(b == b'\\') | u8::from(digit & ((n | 0x20) == b'e'));
        }
        openers += usize::from(o);
        digits += usize::from(d);
        doubtful |= x;
    }
    openers += usize::from((last == b'{') | (last == b'['));
    digits += usize::from(last.is_ascii_digit());
    doubtful |= u8::from(last == b'\\');
    doubtful == 0 && openers <= DEPTH_MAX && digits <= DIGITS_MAX
}

/// [`check_event`] token by token.
fn check_event_tokens(text: &[u8]) -> Result<(), &'static str> {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&byte) = text.get(i) {
        match byte {
            b'"' => i = string_end(text, i + 1)?,
            b'{' | b'[' => {
                depth += 1;
                if depth > DEPTH_MAX {
                    return Err("objects and arrays nested deeper than 128 levels");
                }
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'-' | b'0'..=b'9' => i = number_end(text, i)?,
            _ => i += 1,
        }
    }
    Ok(())
}

/// The index after the string whose contents start at `i`, checking its escapes.
fn string_end(text: &[u8], mut i: usize) -> Result<usize, &'static str> {
    const LONE: &str = "a lone UTF-16 surrogate escape in a string";
    loop {
        match text.get(i) {
            None => return Ok(i),
            Some(b'"') => return Ok(i + 1),
            Some(b'\\') if text.get(i + 1) == Some(&b'u') => {
                let unit = hex4(text, i + 2);
                match unit {
                    Some(0) => return Err("\\u0000 (NUL) in a string"),
                    Some(0xD800..=0xDBFF) => {
                        // A high surrogate counts only with a low one right after it.
                        let low = (text.get(i + 6) == Some(&b'\\')
                            && text.get(i + 7) == Some(&b'u'))
                        .then(|| hex4(text, i + 8))
                        .flatten();
                        if !matches!(low, Some(0xDC00..=0xDFFF)) {
                            return Err(LONE);
                        }
                        i += 12;
                    }
                    Some(0xDC00..=0xDFFF) => return Err(LONE),
                    _ => i += 6,
                }
            }
            Some(b'\\') => i += 2,
            // Most of a string is neither a quote nor an escape: jump to the next one.
            Some(_) => match memchr::memchr2(b'"', b'\\', &text[i..]) {
                Some(skip) => i += skip,
                None => return Ok(text.len()),
            },
        }
    }
}

/// The four hex digits at `at` as a UTF-16 unit.
fn hex4(text: &[u8], at: usize) -> Option<u32> {
    let digits = std::str::from_utf8(text.get(at..at + 4)?).ok()?;
    u32::from_str_radix(digits, 16).ok()
}

/// The index after the number starting at `i`, refusing one a double cannot hold.
fn number_end(text: &[u8], i: usize) -> Result<usize, &'static str> {
    let len = text[i..]
        .iter()
        .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
        .unwrap_or(text.len() - i);
    let token = &text[i..i + len];
    // Fifteen digits without an exponent always fit; only longer or scaled ones are parsed.
    if len > 15 || token.iter().any(|b| matches!(b, b'e' | b'E')) {
        let finite = std::str::from_utf8(token)
            .ok()
            .and_then(|t| t.parse::<f64>().ok())
            .is_some_and(f64::is_finite);
        if !finite {
            return Err("a number beyond the range of a double");
        }
    }
    Ok(i + len)
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

    #[test]
    fn json_that_readers_refuse_is_refused_per_event() {
        let refused = |text: &str| {
            parse(text.as_bytes(), BodyFormat::Ndjson, 10)
                .map(|_| ())
                .expect_err(text)
        };
        for text in [
            r#"{"a":"\ud800"}"#,
            r#"{"a":"x\udc00y"}"#,
            r#"{"a":"\ud800\u0041"}"#,
            r#"{"a":"\u0000"}"#,
            r#"{"a":1e99999}"#,
            r#"{"a":-1E400}"#,
        ] {
            assert!(
                matches!(
                    refused(text),
                    ParseError::Unreadable {
                        index: 1,
                        line: 1,
                        ..
                    }
                ),
                "{text}"
            );
        }
        let deep = format!(r#"{{"a":{}1{}}}"#, "[".repeat(128), "]".repeat(128));
        assert!(matches!(refused(&deep), ParseError::Unreadable { .. }));
        // Which event, on which line.
        let err = parse(b"{}\n\n{\"a\":\"\\ud800\"}", BodyFormat::Ndjson, 10).expect_err("lone");
        assert!(
            matches!(
                err,
                ParseError::Unreadable {
                    index: 2,
                    line: 3,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = parse(br#"[{}, {"a":1e999}]"#, BodyFormat::Json, 10).expect_err("huge");
        assert!(
            matches!(
                err,
                ParseError::Unreadable {
                    index: 2,
                    line: 1,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn what_readers_take_stays_as_sent() {
        let deep = format!(r#"{{"a":{}1{}}}"#, "[".repeat(127), "]".repeat(127));
        for text in [
            r#"{"emoji":"\ud83d\ude00","raw":"😀"}"#,
            r#"{"a":1e308,"b":-1.5e-400,"c":123456789012345678901234567890}"#,
            r#"{"s":"\"[{not nesting}]\\","t":"\\u0000 is text here"}"#,
            r#"{"a":"\u0001\u00e9"}"#,
            deep.as_str(),
        ] {
            let events = parse(text.as_bytes(), BodyFormat::Json, 10).expect(text);
            assert_eq!(texts(&events), vec![text.to_owned()]);
        }
    }

    #[test]
    fn the_quick_check_sends_anything_doubtful_to_the_full_one() {
        let plain = br#"{"device":"d1","seq":12,"temp":-21.5,"ok":true,"tags":["a",[1,2]]}"#;
        assert!(plainly_readable(plain));
        let deep = |levels: usize| {
            let mut text = "[".repeat(levels);
            text.push_str(&"]".repeat(levels));
            text
        };
        assert!(plainly_readable(deep(DEPTH_MAX).as_bytes()));
        assert_eq!(check_event(deep(DEPTH_MAX).as_bytes()), Ok(()));
        assert!(!plainly_readable(deep(DEPTH_MAX + 1).as_bytes()));
        assert!(check_event(deep(DEPTH_MAX + 1).as_bytes()).is_err());
        for doubtful in [
            &br#"{"a":"\"quoted\""}"#[..],
            br#"{"a":"\u0041"}"#,
            br#"{"a":1e5}"#,
            br#"{"a":2E-3}"#,
            br#"{"a":"version 1e2"}"#,
        ] {
            assert!(!plainly_readable(doubtful), "{doubtful:?}");
            assert_eq!(check_event(doubtful), Ok(()), "{doubtful:?}");
        }
        let digits = format!(r#"{{"a":{}}}"#, "9".repeat(400));
        assert!(!plainly_readable(digits.as_bytes()));
        assert!(
            check_event(digits.as_bytes()).is_err(),
            "400 nines are no double"
        );
        assert!(lines(b"").eq([&b""[..]]));
        assert!(lines(b"a\n\nb\n").eq([&b"a"[..], b"", b"b", b""]));
    }

    /// Fuzz: bodies built from JSON's own characters (so that many are nearly valid) and raw
    /// bytes, as JSON and as NDJSON: every accepted event is a JSON object every reader takes;
    /// nothing panics (`SLUICE_FUZZ_MS` sets the run).
    #[test]
    fn fuzz_every_accepted_event_is_a_readable_object() {
        const PIECES: [&[u8]; 24] = [
            b"{",
            b"}",
            b"[",
            b"]",
            b"\"",
            b"\\",
            b"\\u",
            b"d800",
            b"dc00",
            b"0000",
            b"0041",
            b":",
            b",",
            b"1",
            b"-",
            b"e",
            b"9999",
            b".5",
            b" ",
            b"\n",
            b"\r\n",
            b"\"a\"",
            b"null",
            "é".as_bytes(),
        ];
        arbtest::arbtest(|u| {
            let body: Vec<u8> = if u.ratio(1, 4)? {
                u.arbitrary()?
            } else {
                let mut body = Vec::new();
                for _ in 0..u.int_in_range(0..=64u8)? {
                    body.extend_from_slice(u.choose(&PIECES)?);
                }
                body
            };
            // The quick check never passes what the full one refuses (for JSON, which is all
            // it is given), and the lines are the split's.
            if serde_json::from_slice::<serde_json::Value>(&body).is_ok() {
                assert!(
                    !plainly_readable(&body) || check_event_tokens(&body).is_ok(),
                    "{}",
                    String::from_utf8_lossy(&body)
                );
            }
            assert!(lines(&body).eq(body.split(|&b| b == b'\n')));
            let format = if u.arbitrary()? {
                BodyFormat::Json
            } else {
                BodyFormat::Ndjson
            };
            if let Ok(events) = parse(&body, format, 1000) {
                for text in texts(&events) {
                    let value: serde_json::Value =
                        serde_json::from_str(&text).expect("an accepted event is JSON");
                    assert!(value.is_object(), "{text}");
                    assert_eq!(check_event(text.as_bytes()), Ok(()), "{text}");
                }
            }
            Ok(())
        })
        .budget_ms(sluice_config::test_fixtures::fuzz_budget_ms());
    }
}
