//! HTTP ingest as a device sees it: the real binary on loopback, a real HTTP client, and the
//! Parquet files read back with DuckDB.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{duckdb, parquet_files, post, wait_for, Sluice};
use serde_json::{json, Value};
use sluice_config::token::hash_hex;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

const WS_A: &str = "0190f3a0-0000-7000-8000-00000000000a";
const WS_B: &str = "0190f3a0-0000-7000-8000-00000000000b";
const WS_OFF: &str = "0190f3a0-0000-7000-8000-0000000000ff";

fn token(id: u8, secret: &str, extra: Value) -> Value {
    let mut t = json!({
        "id": format!("0190f3a0-0000-7000-8000-0000000001{id:02x}"),
        "sha256": hash_hex(secret),
        "scopes": ["ingest"],
    });
    if let (Some(t), Some(extra)) = (t.as_object_mut(), extra.as_object()) {
        t.extend(extra.clone());
    }
    t
}

fn source(id: u8, slug: &str) -> Value {
    json!({ "id": format!("0190f3a0-0000-7000-8000-0000000002{id:02x}"), "slug": slug })
}

/// Three workspaces: `alpha` (sources telemetry and logs; tokens of every kind), `beta`, and
/// the disabled `off`. `alpha` may ingest at most 50 events/s with `rate-limited` tokens.
fn snapshot(version: u64, alpha_tokens: Vec<Value>) -> Value {
    json!({
        "version": version,
        "workspaces": [
            {
                "id": WS_A, "slug": "alpha", "name": "Alpha",
                "sources": [source(1, "telemetry"), source(2, "logs")],
                "tokens": alpha_tokens,
            },
            {
                "id": WS_B, "slug": "beta",
                "sources": [source(3, "telemetry")],
                "tokens": [token(10, "tok-beta", json!({}))],
            },
            {
                "id": WS_OFF, "slug": "off", "enabled": false,
                "sources": [source(4, "telemetry")],
                "tokens": [token(11, "tok-off", json!({}))],
            },
            {
                "id": "0190f3a0-0000-7000-8000-0000000000cc", "slug": "slow",
                "events_per_second_max": 50,
                "sources": [source(5, "telemetry")],
                "tokens": [token(12, "tok-slow", json!({}))],
            }
        ]
    })
}

fn alpha_tokens() -> Vec<Value> {
    vec![
        token(1, "tok-alpha", json!({})),
        token(
            2,
            "tok-expired",
            json!({"expires_at": "2020-01-01T00:00:00Z"}),
        ),
        token(3, "tok-read-only", json!({"scopes": ["read"]})),
        token(4, "tok-logs-only", json!({"sources": ["logs"]})),
        token(5, "tok-device", json!({"device_id": "dev-42"})),
    ]
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

fn start_with_snapshot(extra: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let snapshot_path = dir.path().join("snapshot.json");
    write_snapshot(&snapshot_path, &snapshot(1, alpha_tokens()));
    let data = dir.path().join("data");
    let mut args = vec![
        "--config-snapshot",
        snapshot_path.to_str().expect("utf8 path"),
        "--batch-max-age-ms",
        "200",
    ];
    args.extend_from_slice(extra);
    let sluice = Sluice::start(&data, &args);
    Fixture {
        lake: data.join("lake"),
        _dir: dir,
        sluice,
        snapshot_path,
    }
}

const AUTH_ALPHA: (&str, &str) = ("authorization", "Bearer tok-alpha");

type Headers<'a> = Vec<(&'a str, &'a str)>;
/// (what, url, headers, body, expected status, expected problem type)
type RefusalCase<'a> = (&'a str, String, Headers<'a>, Vec<u8>, u16, &'a str);

#[test]
fn every_body_form_and_encoding_lands_in_parquet_intact() {
    body_forms_and_encodings_land_in_parquet(&[]);
}

/// The same requests on the epoll driver (`http.io_driver = "epoll"`).
#[test]
fn every_body_form_and_encoding_lands_in_parquet_intact_on_epoll() {
    body_forms_and_encodings_land_in_parquet(&["--http-io-driver", "epoll"]);
}

fn body_forms_and_encodings_land_in_parquet(driver: &[&str]) {
    let mut f = start_with_snapshot(driver);
    let url = f.sluice.ingest_url("alpha", "telemetry");
    let json_ct = ("content-type", "application/json");
    let nd_ct = ("content-type", "application/x-ndjson");

    let cases: Vec<(Headers, Vec<u8>, usize)> = vec![
        (vec![AUTH_ALPHA, json_ct], br#"{"n":1,"form":"object"}"#.to_vec(), 1),
        (
            vec![AUTH_ALPHA, json_ct, ("x-device-id", "sensor-7")],
            br#"[{"n":2,"form":"array"},{"n":3,"form":"array","nested":{"a":[1,2]}}]"#.to_vec(),
            2,
        ),
        (
            vec![AUTH_ALPHA, nd_ct],
            b"{\"n\":4,\"form\":\"ndjson\"}\n\n{\"n\":5,\"form\":\"ndjson\",\"s\":\"\xc3\xa9t\xc3\xa9\"}\n"
                .to_vec(),
            2,
        ),
        (
            vec![AUTH_ALPHA, nd_ct, ("content-encoding", "gzip")],
            gzip(b"{\"n\":6,\"form\":\"gzip\"}\n{\"n\":7,\"form\":\"gzip\"}\n"),
            2,
        ),
        (
            vec![AUTH_ALPHA, json_ct, ("content-encoding", "zstd")],
            zstd::encode_all(&br#"[{"n":8,"form":"zstd"}]"#[..], 3).expect("zstd"),
            1,
        ),
        // The token bound to a device sends as that device without a header.
        (
            vec![("authorization", "Bearer tok-device"), json_ct],
            br#"{"n":9,"form":"bound"}"#.to_vec(),
            1,
        ),
    ];
    for (headers, body, n) in &cases {
        let answer = post(&url, headers, body);
        assert_eq!(answer.status, 202, "{answer:?}");
        assert_eq!(answer.json(), json!({ "accepted": n }));
    }
    f.sluice.stop();

    let rows = duckdb(
        &f.lake,
        "SELECT (payload->>'n')::INT AS n, payload->>'form', device_id, protocol, workspace_id, source, workspace, length(event_id) \
         FROM {lake} ORDER BY n",
    );
    assert_eq!(rows.len(), 9, "{rows:?}");
    let ns: Vec<i64> = rows.iter().map(|r| r[0].as_i64().unwrap_or(-1)).collect();
    assert_eq!(ns, (1..=9).collect::<Vec<_>>());
    assert_eq!(rows[1][2], json!("sensor-7"));
    assert_eq!(rows[0][2], Value::Null);
    assert_eq!(rows[8][2], json!("dev-42"));
    for row in &rows {
        assert_eq!(row[3], json!("http"));
        assert_eq!(row[4], json!(WS_A));
        assert_eq!(row[5], json!("telemetry"));
        assert_eq!(row[6], json!(WS_A), "hive partition column");
        assert_eq!(row[7], json!(36));
    }
    // Payloads are stored exactly as sent, non-ASCII included.
    let exact = duckdb(
        &f.lake,
        "SELECT payload FROM {lake} WHERE (payload->>'n')::INT IN (3, 5) ORDER BY 1",
    );
    assert_eq!(
        exact[0][0],
        json!(r#"{"n":3,"form":"array","nested":{"a":[1,2]}}"#)
    );
    assert_eq!(
        exact[1][0],
        json!("{\"n\":5,\"form\":\"ndjson\",\"s\":\"été\"}")
    );
    // Event ids are unique.
    let ids = duckdb(&f.lake, "SELECT count(DISTINCT event_id) FROM {lake}");
    assert_eq!(ids[0][0], json!(9));
}

#[test]
fn refusals_are_problem_json_with_stable_types_and_write_nothing() {
    refusals_are_problem_json(&[]);
}

/// The same refusals on the epoll driver.
#[test]
fn refusals_are_problem_json_with_stable_types_and_write_nothing_on_epoll() {
    refusals_are_problem_json(&["--http-io-driver", "epoll"]);
}

fn refusals_are_problem_json(driver: &[&str]) {
    let mut args = vec!["--http-body-bytes-max", "262144"];
    args.extend_from_slice(driver);
    let f = start_with_snapshot(&args);
    let s = &f.sluice;
    let tele = s.ingest_url("alpha", "telemetry");
    let ok_body: &[u8] = br#"{"x":1}"#;
    let bearer = |t: &'static str| ("authorization", t);
    let json_ct = ("content-type", "application/json");
    let mut bomb_src = b"[".to_vec();
    bomb_src.extend(std::iter::repeat_n(b' ', 80 << 20));
    let bomb = gzip(&bomb_src);
    assert!(bomb.len() < 262_144, "the bomb is small on the wire");

    let cases: Vec<RefusalCase> = vec![
        (
            "no token",
            tele.clone(),
            vec![json_ct],
            ok_body.to_vec(),
            401,
            "missing-token",
        ),
        (
            "basic auth",
            tele.clone(),
            vec![bearer("Basic dXNlcjpwYXNz")],
            ok_body.to_vec(),
            401,
            "missing-token",
        ),
        (
            "unknown token",
            tele.clone(),
            vec![bearer("Bearer nope")],
            ok_body.to_vec(),
            401,
            "invalid-token",
        ),
        (
            "expired token",
            tele.clone(),
            vec![bearer("Bearer tok-expired")],
            ok_body.to_vec(),
            401,
            "token-expired",
        ),
        (
            "other workspace's token",
            tele.clone(),
            vec![bearer("Bearer tok-beta")],
            ok_body.to_vec(),
            403,
            "wrong-workspace",
        ),
        (
            "disabled workspace",
            s.ingest_url("off", "telemetry"),
            vec![bearer("Bearer tok-off")],
            ok_body.to_vec(),
            403,
            "workspace-disabled",
        ),
        (
            "read-only token",
            tele.clone(),
            vec![bearer("Bearer tok-read-only")],
            ok_body.to_vec(),
            403,
            "missing-scope",
        ),
        (
            "source not allowed",
            tele.clone(),
            vec![bearer("Bearer tok-logs-only")],
            ok_body.to_vec(),
            403,
            "source-not-allowed",
        ),
        (
            "wrong device",
            tele.clone(),
            vec![bearer("Bearer tok-device"), ("x-device-id", "dev-1")],
            ok_body.to_vec(),
            403,
            "device-not-allowed",
        ),
        (
            "unknown workspace",
            s.ingest_url("nowhere", "telemetry"),
            vec![AUTH_ALPHA],
            ok_body.to_vec(),
            404,
            "unknown-workspace",
        ),
        (
            "unknown source",
            s.ingest_url("alpha", "nosuch"),
            vec![AUTH_ALPHA],
            ok_body.to_vec(),
            404,
            "unknown-source",
        ),
        (
            "path trick",
            format!("{}/v1/ingest/alpha/..%2f..%2fetc", s.base_url()),
            vec![AUTH_ALPHA],
            ok_body.to_vec(),
            404,
            "not-found",
        ),
        (
            "upper-case slug",
            s.ingest_url("Alpha", "telemetry"),
            vec![AUTH_ALPHA],
            ok_body.to_vec(),
            404,
            "not-found",
        ),
        (
            "extra path segment",
            format!("{tele}/x"),
            vec![AUTH_ALPHA],
            ok_body.to_vec(),
            404,
            "not-found",
        ),
        (
            "malformed JSON",
            tele.clone(),
            vec![AUTH_ALPHA, json_ct],
            br#"{"x":"#.to_vec(),
            400,
            "malformed-json",
        ),
        (
            "malformed NDJSON line",
            tele.clone(),
            vec![AUTH_ALPHA, ("content-type", "application/x-ndjson")],
            b"{\"a\":1}\n{\"a\":}\n".to_vec(),
            400,
            "malformed-json",
        ),
        (
            "scalar",
            tele.clone(),
            vec![AUTH_ALPHA, json_ct],
            b"42".to_vec(),
            400,
            "invalid-event",
        ),
        (
            "array with a non-object",
            tele.clone(),
            vec![AUTH_ALPHA, json_ct],
            br#"[{"a":1},"no"]"#.to_vec(),
            400,
            "invalid-event",
        ),
        (
            "bad device id",
            tele.clone(),
            vec![AUTH_ALPHA, ("x-device-id", "a b")],
            ok_body.to_vec(),
            400,
            "invalid-device-id",
        ),
        (
            "corrupt gzip",
            tele.clone(),
            vec![AUTH_ALPHA, ("content-encoding", "gzip")],
            b"not gzip".to_vec(),
            400,
            "invalid-encoding",
        ),
        (
            "decompression bomb",
            tele.clone(),
            vec![AUTH_ALPHA, json_ct, ("content-encoding", "gzip")],
            bomb,
            413,
            "body-too-large",
        ),
        (
            "text/plain",
            tele.clone(),
            vec![AUTH_ALPHA, ("content-type", "text/plain")],
            ok_body.to_vec(),
            415,
            "unsupported-media-type",
        ),
        (
            "brotli",
            tele.clone(),
            vec![AUTH_ALPHA, ("content-encoding", "br")],
            ok_body.to_vec(),
            415,
            "unsupported-encoding",
        ),
    ];
    for (what, url, headers, body, status, kind) in &cases {
        let answer = post(url, headers, body);
        assert_eq!(answer.status, *status, "{what}: {answer:?}");
        assert_eq!(answer.content_type, "application/problem+json", "{what}");
        assert_eq!(answer.problem(), *kind, "{what}: {answer:?}");
        let problem = answer.json();
        assert_eq!(problem["status"], json!(status), "{what}");
        assert!(
            problem["detail"].as_str().is_some_and(|d| d.len() > 10),
            "{what}: a detail a user can act on"
        );
    }
    // A declared length over the limit is refused from the head alone, before any body byte.
    {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
        write!(
            conn,
            "POST /v1/ingest/alpha/telemetry HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-alpha\r\nContent-Length: 300000\r\n\r\n"
        )
        .expect("head");
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut response = Vec::new();
        let _ = conn.read_to_end(&mut response);
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 413"), "{response}");
        assert!(
            response.contains("urn:sluice:problem:body-too-large"),
            "{response}"
        );
    }

    // The malformed NDJSON error says which line.
    let answer = post(
        &tele,
        &[AUTH_ALPHA, ("content-type", "application/x-ndjson")],
        b"{\"a\":1}\n{\"a\":1}\n{\"a\":}\n",
    );
    assert!(
        answer.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("line 3"),
        "{answer:?}"
    );

    // Nothing above reached the WAL or the lake.
    assert_eq!(
        s.readyz()["wal"]["bytes"],
        json!(0),
        "refusals wrote to the WAL"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(parquet_files(&f.lake), 0);
    let metrics = s.metrics();
    assert!(
        metrics.contains("sluice_http_requests_total{outcome=\"invalid-token\"} 1"),
        "{metrics}"
    );
    // The accepted series exists from the start, at zero.
    assert!(
        metrics.contains("sluice_http_requests_total{outcome=\"accepted\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_events_total{outcome=\"accepted\"} 0"),
        "{metrics}"
    );
}

#[test]
fn rate_limit_answers_429_with_retry_after_and_refuses_the_whole_batch() {
    let f = start_with_snapshot(&[]);
    let url = f.sluice.ingest_url("slow", "telemetry");
    let auth = ("authorization", "Bearer tok-slow");
    let nd = ("content-type", "application/x-ndjson");
    let forty: Vec<u8> = (0..40)
        .flat_map(|i| format!("{{\"i\":{i}}}\n").into_bytes())
        .collect();
    assert_eq!(post(&url, &[auth, nd], &forty).status, 202);
    let answer = post(&url, &[auth, nd], &forty);
    assert_eq!(answer.status, 429, "{answer:?}");
    assert_eq!(answer.problem(), "rate-limited");
    assert!(answer
        .retry_after
        .is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s >= 1)));
    std::thread::sleep(Duration::from_millis(600));
    // Only the accepted batch is in the lake: refused batches are refused whole.
    assert!(wait_for(Duration::from_secs(5), || parquet_files(&f.lake) > 0));
    let rows = duckdb(
        &f.lake,
        "SELECT count(*) FROM {lake} WHERE workspace = '0190f3a0-0000-7000-8000-0000000000cc'",
    );
    assert_eq!(rows[0][0], json!(40));
}

#[test]
fn snapshot_change_revokes_tokens_and_disables_workspaces_without_restart() {
    let f = start_with_snapshot(&[]);
    let url = f.sluice.ingest_url("alpha", "telemetry");
    assert_eq!(post(&url, &[AUTH_ALPHA], b"{}").status, 202);
    let beta = f.sluice.ingest_url("beta", "telemetry");
    assert_eq!(
        post(&beta, &[("authorization", "Bearer tok-beta")], b"{}").status,
        202
    );

    // Version 2: alpha's token revoked, beta disabled.
    let mut next = snapshot(
        2,
        vec![token(5, "tok-device", json!({"device_id": "dev-42"}))],
    );
    next["workspaces"][1]["enabled"] = json!(false);
    write_snapshot(&f.snapshot_path, &next);
    assert!(
        wait_for(Duration::from_secs(5), || post(&url, &[AUTH_ALPHA], b"{}")
            .status
            == 401),
        "revoked token still accepted"
    );
    let answer = post(&beta, &[("authorization", "Bearer tok-beta")], b"{}");
    assert_eq!(
        (answer.status, answer.problem().as_str()),
        (403, "workspace-disabled")
    );

    // An invalid snapshot is ignored: the node keeps version 2.
    std::fs::write(&f.snapshot_path, b"{ not json").expect("write");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(f.sluice.readyz()["config_version"], json!(2));
    assert_eq!(post(&url, &[AUTH_ALPHA], b"{}").status, 401);
}

#[test]
fn bootstrap_gives_a_working_token_that_survives_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut sluice = Sluice::start(&data, &["--batch-max-age-ms", "200"]);
    let boot = sluice.bootstrap();
    assert_eq!(boot["workspace"], json!("default"));
    assert_eq!(boot["source"], json!("telemetry"));
    let url = boot["http_url"].as_str().expect("http_url").to_owned();
    assert_eq!(url, sluice.ingest_url("default", "telemetry"));
    let auth = format!("Bearer {}", boot["token"].as_str().expect("token"));
    assert!(auth.starts_with("Bearer sluice_"));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("bootstrap.json"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "bootstrap.json holds a secret");
    }
    assert_eq!(
        post(&url, &[("authorization", &auth)], b"{\"k\":1}").status,
        202
    );
    sluice.stop();
    sluice.restart();
    assert_eq!(
        sluice.bootstrap()["token"],
        boot["token"],
        "later starts keep the token"
    );
    assert_eq!(
        post(&url, &[("authorization", &auth)], b"{\"k\":2}").status,
        202
    );
    sluice.stop();
    let rows = duckdb(&data.join("lake"), "SELECT count(*) FROM {lake}");
    assert_eq!(rows[0][0], json!(2));
}

#[test]
fn graceful_stop_writes_buffered_events_to_parquet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // Batches would wait ten minutes: only the SIGTERM drain can produce the file.
    let mut sluice = Sluice::start(&data, &["--batch-max-age-ms", "600000"]);
    let boot = sluice.bootstrap();
    let url = boot["http_url"].as_str().expect("url").to_owned();
    let auth = format!("Bearer {}", boot["token"].as_str().expect("token"));
    let body: Vec<u8> = (0..25)
        .flat_map(|i| format!("{{\"i\":{i}}}\n").into_bytes())
        .collect();
    let answer = post(
        &url,
        &[
            ("authorization", &auth),
            ("content-type", "application/x-ndjson"),
        ],
        &body,
    );
    assert_eq!(answer.status, 202, "{answer:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        parquet_files(&data.join("lake")),
        0,
        "the batch was cut before its age"
    );
    sluice.stop();
    let rows = duckdb(
        &data.join("lake"),
        "SELECT count(*), count(DISTINCT payload->>'i') FROM {lake}",
    );
    assert_eq!(rows[0], vec![json!(25), json!(25)]);
}
