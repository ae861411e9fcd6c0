//! Events every reader can read, or none at all: JSON that parses but that DuckDB (or any
//! reader of the Parquet files) refuses is turned away per event, over HTTP and MQTT alike,
//! and everything stored stays queryable with DuckDB's JSON functions.

mod common;

use common::controlplane::Api;
use common::mqtt::{event, paho};
use common::{duckdb, post, Sluice};
use serde_json::{json, Value};

/// Valid JSON that readers refuse, and why.
fn refused_shapes() -> Vec<(String, &'static str)> {
    vec![
        (r#"{"a":"\ud800"}"#.to_owned(), "a lone high surrogate"),
        (r#"{"a":"x\udfff"}"#.to_owned(), "a lone low surrogate"),
        (r#"{"a":"\u0000"}"#.to_owned(), "NUL"),
        (r#"{"a":1e99999}"#.to_owned(), "a number beyond a double"),
        (
            format!(r#"{{"a":{}1{}}}"#, "[".repeat(50_000), "]".repeat(50_000)),
            "nesting 50,000 deep (one command-line argument holds no more)",
        ),
        (
            format!(r#"{{"a":{}1{}}}"#, "[".repeat(128), "]".repeat(128)),
            "nesting 129 deep",
        ),
    ]
}

/// Unusual but readable events: they are stored as sent.
fn readable_shapes() -> Vec<String> {
    vec![
        r#"{"a":"\ud83d\ude00 and 😀"}"#.to_owned(),
        r#"{"a":1e308}"#.to_owned(),
        r#"{"a":"\\u0000 as text"}"#.to_owned(),
        format!(r#"{{"a":{}1{}}}"#, "[".repeat(127), "]".repeat(127)),
    ]
}

#[test]
fn json_that_readers_refuse_is_refused_over_http_and_mqtt_and_the_lake_stays_queryable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sluice = Sluice::start(&dir.path().join("data"), &["--batch-max-age-ms", "300"]);
    let _api = Api::new(sluice.api_url());
    let token = sluice.bootstrap()["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let url = sluice.ingest_url("default", "telemetry");
    let auth = format!("Bearer {token}");
    let port = sluice.mqtt_port;
    let publish = |payload: &str| -> Value {
        let lines = paho(
            port,
            &[
                "publish",
                "--version",
                "5",
                "--qos",
                "1",
                "--payload",
                payload,
                "--username",
                "default",
                "--password",
                &token,
                "--timeout",
                "5",
            ],
        );
        event(&lines, "published").clone()
    };

    for (text, why) in refused_shapes() {
        let a = post(&url, &[("authorization", &auth)], text.as_bytes());
        assert_eq!(
            (a.status, a.problem().as_str()),
            (400, "invalid-event"),
            "{why}: {}",
            a.body
        );
        // In a batch, the whole request is refused and says which event.
        let batch = format!("{{\"ok\":1}}\n{text}\n");
        let a = post(
            &url,
            &[
                ("authorization", &auth),
                ("content-type", "application/x-ndjson"),
            ],
            batch.as_bytes(),
        );
        assert_eq!(a.status, 400, "{why}");
        assert!(a.body.contains("event 2 (line 2)"), "{why}: {}", a.body);
        let p = publish(&text);
        assert_eq!(p["refused"]["0"], 0x99, "{why}: {p}");
    }
    for text in readable_shapes() {
        let a = post(&url, &[("authorization", &auth)], text.as_bytes());
        assert_eq!(a.status, 202, "{text}: {}", a.body);
        let p = publish(&text);
        assert_eq!(p["acked"], json!([0]), "{text}: {p}");
    }

    // Every stored payload reads with DuckDB's JSON functions; nothing refused got in.
    sluice.stop();
    let rows = duckdb(
        &sluice.data_dir.join("lake"),
        "SELECT count(*), count(json_extract(payload, '$.a')), count(*) FILTER (WHERE payload->>'ok' IS NOT NULL) FROM {lake}",
    );
    let stored = readable_shapes().len() as u64 * 2;
    assert_eq!(rows, vec![vec![json!(stored), json!(stored), json!(0)]]);
}
