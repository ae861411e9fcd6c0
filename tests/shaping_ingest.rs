//! Shaping at ingest as devices and analysts see it: a source's JSON Schema enforced over HTTP
//! and MQTT (3.1.1 and 5), typed Parquet columns read back by DuckDB with their types, the
//! quarantine dataset beside the events, tag rules from a topic, a header, a query parameter
//! and a payload pointer, and configuration changes taking effect on a running node. The
//! configuration comes from a snapshot file (`--config-snapshot`), rewritten to change it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::mqtt::{event, paho};
use common::{duckdb, post, wait_for, Sluice};
use serde_json::{json, Value};
use sluice_config::token::hash_hex;

const WS: &str = "0190f3a0-0000-7000-8000-00000000005a";
const TOKEN: &str = "tok-plant";
const AUTH: (&str, &str) = ("authorization", "Bearer tok-plant");
const NDJSON: (&str, &str) = ("content-type", "application/x-ndjson");

fn schema(temp_type: &str) -> Value {
    json!({
        "type": "object",
        "properties": {
            "temp_c": {"type": temp_type},
            "at": {"type": "string", "format": "date-time"},
            "n": {"type": "integer"},
            "ok": {"type": "boolean"},
            "site": {"type": "string"},
            "meta": {"type": "object"}
        },
        "required": ["temp_c"]
    })
}

fn source(id: u8, slug: &str, extra: Value) -> Value {
    let mut s =
        json!({ "id": format!("0190f3a0-0000-7000-8000-0000000002{id:02x}"), "slug": slug });
    if let (Some(s), Some(extra)) = (s.as_object_mut(), extra.as_object()) {
        s.extend(extra.clone());
    }
    s
}

fn rule(id: u8, sources: &[&str], extract: Value) -> Value {
    json!({
        "id": format!("0190f3a0-0000-7000-8000-0000000003{id:02x}"),
        "name": format!("rule {id}"),
        "sources": sources,
        "extract": extract,
    })
}

/// Workspace `plant`: `typed` (schema, reject), `lean` (schema, no payload column),
/// `lenient` (schema, quarantine), `plain` (nothing), and tag rules on `typed`.
fn snapshot(version: u64, typed_schema: Value, header_tag: &str) -> Value {
    json!({
        "version": version,
        "workspaces": [{
            "id": WS, "slug": "plant",
            "sources": [
                source(1, "typed", json!({"schema": typed_schema})),
                source(2, "lean", json!({"schema": schema("number"), "keep_payload": false})),
                source(3, "lenient", json!({"schema": schema("number"), "on_invalid": "quarantine"})),
                source(4, "plain", json!({})),
            ],
            "tokens": [{
                "id": "0190f3a0-0000-7000-8000-000000000101",
                "sha256": hash_hex(TOKEN),
                "scopes": ["ingest"],
            }],
            "tag_rules": [
                rule(1, &["typed"], json!({"from": "topic", "pattern": "ingest/{source}/{site}/{device}", "device_id": "device"})),
                rule(2, &["typed"], json!({"from": "header", "name": "X-Site", "tag": header_tag})),
                rule(3, &["typed"], json!({"from": "query", "name": "line", "tag": "line"})),
                rule(4, &["typed"], json!({"from": "pointer", "pointer": "/meta/serial", "tag": "serial", "device_id": true})),
            ],
        }]
    })
}

fn write_snapshot(path: &Path, snapshot: &Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(snapshot).expect("json")).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

struct Fixture {
    _dir: tempfile::TempDir,
    sluice: Sluice,
    snapshot_path: std::path::PathBuf,
    lake: std::path::PathBuf,
}

fn start() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let snapshot_path = dir.path().join("snapshot.json");
    write_snapshot(&snapshot_path, &snapshot(1, schema("number"), "site"));
    let data = dir.path().join("data");
    let sluice = Sluice::start(
        &data,
        &[
            "--config-snapshot",
            snapshot_path.to_str().expect("utf8 path"),
            "--batch-max-age-ms",
            "200",
        ],
    );
    Fixture {
        lake: data.join("lake"),
        _dir: dir,
        sluice,
        snapshot_path,
    }
}

/// The events of the lake (`*.parquet`), every source's columns side by side.
fn events(lake: &Path) -> String {
    format!(
        "read_parquet('{}/**/*.parquet', hive_partitioning = true, union_by_name = true)",
        lake.display()
    )
}

/// The quarantine dataset (`*.quarantine`).
fn quarantine(lake: &Path) -> String {
    format!(
        "read_parquet('{}/**/*.quarantine', hive_partitioning = true, union_by_name = true)",
        lake.display()
    )
}

fn ndjson(lines: &[Value]) -> Vec<u8> {
    lines
        .iter()
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .into_bytes()
}

#[test]
fn typed_columns_read_with_their_types_and_invalid_events_are_refused_or_quarantined_over_http() {
    let mut f = start();
    let typed = f.sluice.ingest_url("plant", "typed");
    let good = [
        json!({"temp_c": 21.5, "at": "2026-12-06T08:00:00Z", "n": 1, "ok": true, "site": "a", "meta": {"serial": "s-1"}}),
        json!({"temp_c": 19, "at": "2026-12-06T09:30:00+01:00", "n": 2}),
        json!({"temp_c": -3.25, "extra": "kept in payload"}),
    ];
    let a = post(
        &format!("{typed}?line=l%2F4"),
        &[AUTH, NDJSON, ("x-site", "lyon")],
        &ndjson(&good),
    );
    assert_eq!(
        (a.status, a.json()),
        (202, json!({"accepted": 3})),
        "{}",
        a.body
    );

    // One invalid event refuses the whole request, and says which and why.
    let bad = [
        json!({"temp_c": 1}),
        json!({"temp_c": "warm"}),
        json!({"at": "2026-12-06T08:00:00Z"}),
        json!({"temp_c": 2, "at": "yesterday"}),
    ];
    let a = post(&typed, &[AUTH, NDJSON], &ndjson(&bad));
    assert_eq!(
        (a.status, a.problem().as_str()),
        (422, "invalid-events"),
        "{}",
        a.body
    );
    let errors = a.json()["errors"].as_array().cloned().expect("errors");
    let listed: Vec<(u64, String)> = errors
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().expect("index"),
                e["pointer"].as_str().expect("pointer").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (1, "/temp_c".to_owned()),
            (2, String::new()),
            (3, "/at".to_owned())
        ],
        "{}",
        a.body
    );
    assert!(errors
        .iter()
        .all(|e| !e["message"].as_str().unwrap_or_default().is_empty()));
    assert!(a.json()["detail"]
        .as_str()
        .unwrap_or_default()
        .starts_with("3 event(s)"));

    // A hundred failures at most are listed; the detail counts them all.
    let many: Vec<Value> = (0..150)
        .map(|i| json!({"temp_c": format!("t{i}")}))
        .collect();
    let a = post(&typed, &[AUTH, NDJSON], &ndjson(&many));
    assert_eq!(a.status, 422);
    assert_eq!(a.json()["errors"].as_array().map(Vec::len), Some(100));
    assert!(a.json()["detail"]
        .as_str()
        .unwrap_or_default()
        .starts_with("150 event(s)"));

    let a = post(
        &f.sluice.ingest_url("plant", "lean"),
        &[AUTH, NDJSON],
        &ndjson(&good[..2]),
    );
    assert_eq!(a.status, 202, "{}", a.body);
    let a = post(
        &f.sluice.ingest_url("plant", "plain"),
        &[AUTH],
        br#"{"temp_c":"anything"}"#,
    );
    assert_eq!((a.status, a.json()), (202, json!({"accepted": 1})));

    // Quarantine: both kinds acknowledged, and counted apart.
    let lenient = f.sluice.ingest_url("plant", "lenient");
    let mixed = [
        json!({"temp_c": 1.5}),
        json!({"temp_c": "hot"}),
        json!({"temp_c": 2.5}),
    ];
    let a = post(&lenient, &[AUTH, NDJSON], &ndjson(&mixed));
    assert_eq!(
        (a.status, a.json()),
        (202, json!({"accepted": 2, "quarantined": 1})),
        "{}",
        a.body
    );
    let a = post(&lenient, &[AUTH], br#"{"temp_c": 3}"#);
    assert_eq!(a.json(), json!({"accepted": 1, "quarantined": 0}));

    f.sluice.stop();
    let ev = events(&f.lake);
    let rows = duckdb(
        &f.lake,
        &format!(
            "SELECT typeof(temp_c), typeof(\"at\"), typeof(n), typeof(ok), typeof(site), typeof(meta), typeof(tags) \
             FROM {ev} WHERE source = 'typed' LIMIT 1"
        ),
    );
    assert_eq!(
        rows,
        [[
            "DOUBLE",
            "TIMESTAMP WITH TIME ZONE",
            "BIGINT",
            "BOOLEAN",
            "VARCHAR",
            "VARCHAR",
            "MAP(VARCHAR, VARCHAR)"
        ]
        .map(Value::from)
        .to_vec()]
    );
    // Timestamps compare as timestamps (09:30+01:00 is 08:30Z), numbers as numbers; tags and
    // the device a pointer rule gave.
    let rows = duckdb(
        &f.lake,
        &format!(
            "SELECT temp_c, n, \"at\" > TIMESTAMPTZ '2026-12-06 08:15:00+00', tags['site'], tags['line'], \
             tags['serial'], device_id, schema_version IS NOT NULL, payload->>'extra' \
             FROM {ev} WHERE source = 'typed' ORDER BY event_id"
        ),
    );
    assert_eq!(
        rows,
        vec![
            vec![
                json!(21.5),
                json!(1),
                json!(false),
                json!("lyon"),
                json!("l/4"),
                json!("s-1"),
                json!("s-1"),
                json!(true),
                Value::Null
            ],
            vec![
                json!(19.0),
                json!(2),
                json!(true),
                json!("lyon"),
                json!("l/4"),
                Value::Null,
                Value::Null,
                json!(true),
                Value::Null
            ],
            vec![
                json!(-3.25),
                Value::Null,
                Value::Null,
                json!("lyon"),
                json!("l/4"),
                Value::Null,
                Value::Null,
                json!(true),
                json!("kept in payload")
            ],
        ]
    );
    // Nothing of the refused requests was written; `lean` has no payload column (NULL when
    // read beside the others); the documented glob reads accepted events only.
    let rows = duckdb(
        &f.lake,
        &format!(
            "SELECT source, count(*), count(payload), sum(temp_c) FILTER (WHERE source <> 'plain') \
             FROM {ev} GROUP BY source ORDER BY source"
        ),
    );
    assert_eq!(
        rows,
        vec![
            vec![json!("lean"), json!(2), json!(0), json!(40.5)],
            vec![json!("lenient"), json!(3), json!(3), json!(7.0)],
            vec![json!("plain"), json!(1), json!(1), Value::Null],
            vec![json!("typed"), json!(3), json!(3), json!(37.25)],
        ]
    );
    let q = quarantine(&f.lake);
    let rows = duckdb(
        &f.lake,
        &format!("SELECT source, payload, quarantine_error, schema_version IS NOT NULL FROM {q}"),
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0][0], "lenient");
    assert_eq!(rows[0][1], r#"{"temp_c":"hot"}"#);
    let error = rows[0][2].as_str().unwrap_or_default();
    assert!(
        error.starts_with("/temp_c: ") && error.contains("number"),
        "{error}"
    );
    assert_eq!(rows[0][3], true);
    // Side by side, the two datasets hold every event acknowledged, once.
    let rows = duckdb(
        &f.lake,
        &format!(
            "SELECT count(*), count(DISTINCT event_id) FROM (SELECT event_id FROM {ev} WHERE source = 'lenient' \
             UNION ALL SELECT event_id FROM {q})"
        ),
    );
    assert_eq!(rows, vec![vec![json!(4), json!(4)]]);
}

fn mosquitto_pub(port: u16, version: &str, topic: &str, payload: &str) -> std::process::Output {
    Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-V",
            version,
            "-q",
            "1",
        ])
        .args([
            "-i", "mosq-1", "-u", "plant", "-P", TOKEN, "-t", topic, "-m", payload,
        ])
        .output()
        .expect("mosquitto_pub (scripts/test.sh installs it)")
}

#[test]
fn invalid_events_over_mqtt_are_refused_per_version_or_quarantined_and_topics_give_tags() {
    let mut f = start();
    let port = f.sluice.mqtt_port;
    let publish = |version: &str, topic: &str, payload: &str| -> Value {
        let lines = paho(
            port,
            &[
                "publish",
                "--version",
                version,
                "--qos",
                "1",
                "--topic",
                topic,
                "--payload",
                payload,
                "--username",
                "plant",
                "--password",
                TOKEN,
                "--client-id",
                "paho-1",
                "--timeout",
                "5",
            ],
        );
        event(&lines, "published").clone()
    };
    // MQTT 5: PUBACK 0x99 (payload format invalid), the connection stays.
    let p = publish("5", "ingest/typed/lyon/d-7", r#"{"temp_c":"warm"}"#);
    assert_eq!(p["refused"]["0"], 0x99, "{p}");
    assert_eq!(p["disconnected"], Value::Null, "{p}");
    // MQTT 3.1.1 has no refusal in PUBACK: the connection is closed, nothing acknowledged.
    let p = publish("3", "ingest/typed/lyon/d-7", r#"{"temp_c":"warm"}"#);
    assert_eq!(p["acked"], json!([]), "{p}");
    assert_ne!(p["disconnected"], Value::Null, "{p}");
    let out = mosquitto_pub(
        port,
        "mqttv311",
        "ingest/typed/lyon/d-8",
        r#"{"temp_c":"warm"}"#,
    );
    assert!(
        !out.status.success(),
        "mosquitto_pub 3.1.1 must see the connection closed: {out:?}"
    );
    let out = mosquitto_pub(
        port,
        "mqttv5",
        "ingest/typed/lyon/d-8",
        r#"{"temp_c":"warm"}"#,
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() || said.to_lowercase().contains("payload format invalid"),
        "mosquitto_pub 5 must see 0x99: {out:?}"
    );

    // Valid events: acknowledged, with the topic's tags and device.
    let p = publish(
        "5",
        "ingest/typed/lyon/d-7",
        r#"{"temp_c":20.5,"meta":{"serial":"s-9"}}"#,
    );
    assert_eq!(p["acked"], json!([0]), "{p}");
    let p = publish("3", "ingest/typed/paris/d-3", r#"{"temp_c":18}"#);
    assert_eq!(p["acked"], json!([0]), "{p}");
    let out = mosquitto_pub(
        port,
        "mqttv311",
        "ingest/typed/nice/d-4",
        r#"{"temp_c":17}"#,
    );
    assert!(out.status.success(), "{out:?}");
    // Quarantine: acknowledged on both versions, kept apart.
    for version in ["5", "3"] {
        let p = publish(version, "ingest/lenient", r#"{"temp_c":"hot"}"#);
        assert_eq!(p["acked"], json!([0]), "{p}");
    }

    f.sluice.stop();
    let ev = events(&f.lake);
    let rows = duckdb(
        &f.lake,
        &format!(
            "SELECT temp_c, tags['site'], tags['device'], tags['source'], device_id, topic \
             FROM {ev} ORDER BY temp_c DESC"
        ),
    );
    assert_eq!(
        rows,
        vec![
            // A pointer rule comes after the topic rule: its device wins.
            vec![
                json!(20.5),
                json!("lyon"),
                json!("d-7"),
                json!("typed"),
                json!("s-9"),
                json!("ingest/typed/lyon/d-7")
            ],
            vec![
                json!(18.0),
                json!("paris"),
                json!("d-3"),
                json!("typed"),
                json!("d-3"),
                json!("ingest/typed/paris/d-3")
            ],
            vec![
                json!(17.0),
                json!("nice"),
                json!("d-4"),
                json!("typed"),
                json!("d-4"),
                json!("ingest/typed/nice/d-4")
            ],
        ],
        "nothing refused was written"
    );
    let q = quarantine(&f.lake);
    let rows = duckdb(
        &f.lake,
        &format!(
            "SELECT count(*), count(*) FILTER (WHERE quarantine_error LIKE '/temp_c: %') FROM {q}"
        ),
    );
    assert_eq!(rows, vec![vec![json!(2), json!(2)]]);
}

#[test]
fn schema_and_rule_changes_apply_on_a_running_node_and_a_schema_that_does_not_compile_is_refused() {
    let mut f = start();
    let typed = f.sluice.ingest_url("plant", "typed");
    let send = |body: &str| post(&typed, &[AUTH, ("x-site", "lyon")], body.as_bytes());
    assert_eq!(send(r#"{"temp_c":1.5}"#).status, 202);
    assert_eq!(send(r#"{"temp_c":"x"}"#).status, 422);

    // Version 2: temp_c becomes a string, the header's tag is renamed; no restart.
    write_snapshot(&f.snapshot_path, &snapshot(2, schema("string"), "place"));
    assert!(
        wait_for(Duration::from_secs(10), || f.sluice.readyz()
            ["config_version"]
            == 2),
        "version 2 not applied: {}",
        f.sluice.log()
    );
    assert_eq!(send(r#"{"temp_c":"x"}"#).status, 202);
    assert_eq!(send(r#"{"temp_c":1.5}"#).status, 422);

    // Version 3 has a schema no validator compiles: refused, version 2 stays in force.
    let mut broken = schema("number");
    broken["properties"]["temp_c"]["type"] = json!("nope");
    write_snapshot(&f.snapshot_path, &snapshot(3, broken, "site"));
    assert!(
        wait_for(Duration::from_secs(10), || f
            .sluice
            .log()
            .contains("config snapshot change refused")),
        "the refusal is logged: {}",
        f.sluice.log()
    );
    assert_eq!(f.sluice.readyz()["config_version"], 2);
    assert_eq!(send(r#"{"temp_c":"y"}"#).status, 202);
    assert_eq!(send(r#"{"temp_c":2.5}"#).status, 422);

    f.sluice.stop();
    // One file per schema version; DuckDB reads both with union_by_name (temp_c as the wider
    // VARCHAR), each row tagged under the rule in force when it arrived.
    let ev = events(&f.lake);
    let rows = duckdb(
        &f.lake,
        &format!(
            "SELECT temp_c::VARCHAR, tags['site'], tags['place'], schema_version FROM {ev} ORDER BY event_id"
        ),
    );
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[0][..3], [json!("1.5"), json!("lyon"), Value::Null]);
    assert_eq!(rows[1][..3], [json!("x"), Value::Null, json!("lyon")]);
    assert_eq!(rows[2][..3], [json!("y"), Value::Null, json!("lyon")]);
    assert_ne!(rows[0][3], rows[1][3], "two schema versions");
    assert_eq!(rows[1][3], rows[2][3]);
    let files = duckdb(
        &f.lake,
        &format!(
            "SELECT count(DISTINCT filename), count(DISTINCT (filename, schema_version)) \
             FROM read_parquet('{}/**/*.parquet', hive_partitioning = true, union_by_name = true, filename = true) \
             WHERE source = 'typed'",
            f.lake.display()
        ),
    );
    assert_eq!(files[0][0], files[0][1], "a file holds one schema version");
}
