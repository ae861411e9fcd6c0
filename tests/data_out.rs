//! Export endpoints as end-users see them: two data-plane nodes sharing an S3-compatible lake
//! (s3s-fs), events sent over HTTP and MQTT to both, read from one node's endpoint by the
//! Python consumer of docs/data-out.md (run as documented), resumed after the reader
//! disconnects and after a node's kill -9, with none lost; outputs' filters and projections
//! giving exactly the documented fields; and tokens reading only what they may.
//!
//! The configuration comes from a snapshot file (`--config-snapshot`), as the control plane
//! would push it.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::mqtt::paho;
use common::s3::S3Server;
use common::{agent, free_port, post, wait_for, Answer, Proc};
use serde_json::{json, Value};
use sluice_config::token::hash_hex;

const WS: &str = "0190f3a0-0000-7000-8000-0000000000d0";
const INGEST: &str = "tok-ingest";
const READ_ALL: &str = "tok-read-all";
const READ_HOT: &str = "tok-read-hot";
const OTHER_WS_READ: &str = "tok-other-read";

fn snapshot() -> Value {
    let token = |n: u8, secret: &str, scopes: Value, endpoints: Option<Value>| {
        let mut t = json!({
            "id": format!("0190f3a0-0000-7000-8000-0000000001{n:02x}"),
            "sha256": hash_hex(secret),
            "scopes": scopes,
        });
        if let Some(e) = endpoints {
            t["endpoints"] = e;
        }
        t
    };
    json!({
        "version": 1,
        "workspaces": [{
            "id": WS,
            "slug": "fleet",
            "sources": [{"id": "0190f3a0-0000-7000-8000-0000000002d0", "slug": "telemetry"}],
            "tokens": [
                token(1, INGEST, json!(["ingest"]), None),
                token(2, READ_ALL, json!(["read"]), None),
                token(3, READ_HOT, json!(["read"]), Some(json!(["hot"]))),
            ],
            "tag_rules": [{
                "id": "0190f3a0-0000-7000-8000-0000000003d0",
                "name": "site from header",
                "extract": {"from": "header", "name": "x-site", "tag": "site"}
            }],
            "outputs": [
                {"id": "0190f3a0-0000-7000-8000-0000000004d0", "slug": "all",
                 "source": "telemetry", "fields": [{"from": "/n"}, {"from": "device_id"}]},
                {"id": "0190f3a0-0000-7000-8000-0000000004d1", "slug": "hot",
                 "source": "telemetry",
                 "filter": {
                     "device_ids": ["dev-1", "dev-2"],
                     "tags": {"site": "plant-7"},
                     "conditions": [{"pointer": "/temp_c", "op": "gte", "value": 30},
                                    {"pointer": "/error", "op": "absent"}]
                 },
                 "fields": [{"from": "event_id"}, {"from": "received_at"},
                            {"from": "device_id", "name": "device"},
                            {"from": "/temp_c", "name": "temp"}, {"from": "/meta/site"},
                            {"from": "tags"}]},
                {"id": "0190f3a0-0000-7000-8000-0000000004d2", "slug": "raw",
                 "source": "telemetry"}
            ],
            "export_endpoints": [
                {"id": "0190f3a0-0000-7000-8000-0000000005d0", "slug": "everything", "output": "all"},
                {"id": "0190f3a0-0000-7000-8000-0000000005d1", "slug": "hot", "output": "hot"},
                {"id": "0190f3a0-0000-7000-8000-0000000005d2", "slug": "raw", "output": "raw"}
            ]
        }, {
            "id": "0190f3a0-0000-7000-8000-0000000000d1",
            "slug": "other",
            "sources": [{"id": "0190f3a0-0000-7000-8000-0000000002d1", "slug": "telemetry"}],
            "tokens": [token(4, OTHER_WS_READ, json!(["read"]), None)]
        }]
    })
}

/// A data-plane node of the test's cluster.
struct Node {
    proc: Proc,
    http: u16,
    mqtt: u16,
}

impl Node {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }
}

fn start_node(
    dir: &Path,
    name: &str,
    snapshot: &Path,
    lake: &str,
    env: Vec<(String, String)>,
) -> Node {
    let config = [
        "--config-snapshot".to_owned(),
        snapshot.display().to_string(),
    ];
    start_node_with(dir, name, &config, lake, env)
}

/// A node of the test's cluster, configured by `config` (a snapshot file, or a control
/// plane to follow).
fn start_node_with(
    dir: &Path,
    name: &str,
    config: &[String],
    lake: &str,
    env: Vec<(String, String)>,
) -> Node {
    let (http, mqtt) = (free_port(), free_port());
    let mut args: Vec<String> = [
        "dataplane",
        "--data-dir",
        &dir.join(name).display().to_string(),
        "--node-id",
        name,
        "--object-store",
        lake,
        "--http-addr",
        &format!("127.0.0.1:{http}"),
        "--mqtt-addr",
        &format!("127.0.0.1:{mqtt}"),
        "--batch-max-age-ms",
        "200",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(config.iter().cloned());
    let proc = Proc::start_with_env(
        &args,
        dir.join(format!("{name}.log")),
        format!("http://127.0.0.1:{http}/healthz"),
        env,
    );
    Node { proc, http, mqtt }
}

/// Sends `ns` over HTTP to `node`, one request each (device `dev-h`).
fn send_http(node: &Node, ns: impl Iterator<Item = String>) -> Vec<String> {
    send_http_as(node, INGEST, ns)
}

fn send_http_as(node: &Node, token: &str, ns: impl Iterator<Item = String>) -> Vec<String> {
    let url = node.url("/v1/ingest/fleet/telemetry");
    let auth = format!("Bearer {token}");
    let mut sent = Vec::new();
    for n in ns {
        let body = json!({"n": n, "temp_c": 20}).to_string();
        let answer = post(
            &url,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
                ("x-device-id", "dev-h"),
            ],
            body.as_bytes(),
        );
        assert_eq!(answer.status, 202, "{}", answer.body);
        sent.push(n);
    }
    sent
}

/// Publishes `count` events over MQTT 5 QoS 1 to `node`; returns the acknowledged ones.
fn send_mqtt(node: &Node, prefix: &str, count: usize) -> Vec<String> {
    send_mqtt_as(node, INGEST, prefix, count)
}

fn send_mqtt_as(node: &Node, token: &str, prefix: &str, count: usize) -> Vec<String> {
    let payload = format!("{{\"n\": \"{prefix}-{{i}}\", \"temp_c\": 20}}");
    let lines = paho(
        node.mqtt,
        &[
            "publish",
            "--version",
            "5",
            "--qos",
            "1",
            "--count",
            &count.to_string(),
            "--topic",
            "ingest/telemetry",
            "--payload",
            &payload,
            "--client-id",
            "dev-m",
            "--username",
            "fleet",
            "--password",
            token,
        ],
    );
    let acked = lines
        .iter()
        .find(|l| l["event"] == "published")
        .and_then(|l| l["acked"].as_array())
        .expect("a published line")
        .iter()
        .map(|i| format!("{prefix}-{}", i.as_u64().unwrap_or_default()))
        .collect::<Vec<_>>();
    assert_eq!(
        acked.len(),
        count,
        "every QoS 1 publish acknowledged: {lines:?}"
    );
    acked
}

/// The Python consumer of docs/data-out.md, written out as documented.
fn consumer_script(dir: &Path) -> PathBuf {
    let doc = include_str!("../docs/data-out.md");
    let block = doc
        .split("### A Python consumer")
        .nth(1)
        .and_then(|s| s.split("```python").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("docs/data-out.md has the Python consumer");
    let path = dir.join("consume.py");
    std::fs::write(&path, block).expect("write consume.py");
    path
}

/// The documented consumer, running; its printed events arrive on a channel.
struct Consumer {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Consumer {
    fn start(script: &Path, url: &str, state: &Path) -> Consumer {
        Self::start_with(script, url, READ_ALL, state)
    }

    fn start_with(script: &Path, url: &str, token: &str, state: &Path) -> Consumer {
        let mut child = Command::new(common::python())
            .arg(script)
            .args([url, token, &state.display().to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run the Python consumer");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).expect("the consumer prints JSON");
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Consumer { child, lines }
    }

    /// Collects `n` values of events until every one of `want` is seen (or 30 s pass).
    fn collect_until(&self, seen: &mut Vec<String>, want: &[String]) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let have: HashSet<&String> = seen.iter().collect();
            let missing: Vec<&String> = want.iter().filter(|w| !have.contains(w)).collect();
            if missing.is_empty() {
                return;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "never read: {missing:?}");
            if let Ok(event) = self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                seen.push(event["n"].as_str().expect("n").to_owned());
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn two_nodes_events_are_all_read_from_one_node_resumed_after_disconnect_and_kill9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(&dir.path().join("s3"), free_port());
    std::fs::create_dir_all(s3.root.join("lake")).expect("bucket");
    let snapshot_path = dir.path().join("snapshot.json");
    std::fs::write(&snapshot_path, snapshot().to_string()).expect("snapshot");
    let lake = "s3://lake/sluice";
    let a = start_node(dir.path(), "node-a", &snapshot_path, lake, s3.env());
    let mut b = start_node(dir.path(), "node-b", &snapshot_path, lake, s3.env());
    let script = consumer_script(dir.path());
    let state = dir.path().join("last-event-id");

    // Before any reader: read from the beginning.
    let mut sent = send_http(&a, (0..20).map(|i| format!("a1-{i}")));
    sent.extend(send_mqtt(&b, "b1", 30));
    let everything = |node: &Node| node.url("/v1/stream/fleet/everything?from=beginning");
    let mut consumer = Consumer::start(&script, &everything(&a), &state);
    let mut seen = Vec::new();
    consumer.collect_until(&mut seen, &sent);

    // The reader goes away; events keep coming; it comes back to the other node and resumes
    // from its last id.
    consumer.kill();
    sent.extend(send_http(&b, (0..20).map(|i| format!("b2-{i}"))));
    sent.extend(send_mqtt(&a, "a2", 30));
    let mut consumer = Consumer::start(&script, &everything(&b), &state);
    consumer.collect_until(&mut seen, &sent);

    // The reader's node dies (kill -9): its stream ends; the reader resumes on the other node
    // while the dead one is down, and the dead one's acknowledged events are all there once it
    // is back on its data.
    let b_acked = send_mqtt(&b, "b3", 40);
    b.proc.kill9();
    sent.extend(b_acked);
    assert!(
        wait_for(Duration::from_secs(10), || matches!(
            consumer.child.try_wait(),
            Ok(Some(_))
        )),
        "the stream of a killed node ends"
    );
    drop(consumer);
    let consumer = Consumer::start(&script, &everything(&a), &state);
    sent.extend(send_http(&a, (0..20).map(|i| format!("a3-{i}"))));
    b.proc.restart();
    sent.extend(send_http(&b, (0..20).map(|i| format!("b4-{i}"))));
    let consumer2 = Consumer::start(&script, &everything(&b), &dir.path().join("fresh"));
    consumer.collect_until(&mut seen, &sent);
    drop(consumer);

    let unique: HashSet<&String> = seen.iter().collect();
    let expected: HashSet<&String> = sent.iter().collect();
    assert_eq!(unique, expected, "every accepted event read, nothing else");
    eprintln!(
        "{} events accepted, {} read ({} again after resumes)",
        expected.len(),
        seen.len(),
        seen.len() - unique.len()
    );
    // A new reader on the other node from the beginning sees the same, once each.
    let mut again = Vec::new();
    consumer2.collect_until(&mut again, &sent);
    let again_unique: HashSet<&String> = again.iter().collect();
    assert_eq!(again_unique, expected);
}

fn page(node: &Node, endpoint: &str, token: &str, query: &str) -> Answer {
    let response = agent()
        .get(node.url(&format!("/v1/stream/fleet/{endpoint}{query}")))
        .header("authorization", &format!("Bearer {token}"))
        .header("accept", "application/x-ndjson")
        .call()
        .expect("GET page");
    Answer::of(response)
}

fn lines(answer: &Answer) -> Vec<Value> {
    answer
        .body
        .lines()
        .map(|l| serde_json::from_str(l).expect("an NDJSON line"))
        .collect()
}

#[test]
fn filters_and_projections_give_exactly_the_documented_fields_and_tokens_read_what_they_may() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snapshot_path = dir.path().join("snapshot.json");
    std::fs::write(&snapshot_path, snapshot().to_string()).expect("snapshot");
    let lake = dir.path().join("lake").display().to_string();
    let node = start_node(dir.path(), "node-a", &snapshot_path, &lake, Vec::new());
    let url = node.url("/v1/ingest/fleet/telemetry");
    let auth = format!("Bearer {INGEST}");
    let send = |device: &str, site: &str, body: Value| {
        let body = body.to_string();
        let answer = post(
            &url,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
                ("x-device-id", device),
                ("x-site", site),
            ],
            body.as_bytes(),
        );
        assert_eq!(answer.status, 202, "{}", answer.body);
    };
    // Only the first passes every part of `hot`'s filter.
    send(
        "dev-1",
        "plant-7",
        json!({"n": "keep", "temp_c": 31.5, "meta": {"site": "north"}}),
    );
    send(
        "dev-3",
        "plant-7",
        json!({"n": "other-device", "temp_c": 40}),
    );
    send("dev-2", "plant-8", json!({"n": "other-site", "temp_c": 40}));
    send("dev-2", "plant-7", json!({"n": "too-cold", "temp_c": 29.9}));
    send(
        "dev-2",
        "plant-7",
        json!({"n": "not-a-number", "temp_c": "hot"}),
    );
    send(
        "dev-2",
        "plant-7",
        json!({"n": "has-error", "temp_c": 35, "error": null}),
    );
    send("dev-2", "plant-7", json!({"n": "no-meta", "temp_c": 30}));

    let hot = |token: &str| page(&node, "hot", token, "");
    assert!(wait_for(Duration::from_secs(20), || lines(&hot(READ_HOT))
        .len()
        == 2));
    let got = lines(&hot(READ_HOT));
    let first = got[0].as_object().expect("object");
    let keys: Vec<&str> = first.keys().map(String::as_str).collect();
    let mut want = vec!["event_id", "received_at", "device", "temp", "site", "tags"];
    want.sort();
    let mut keys_sorted = keys.clone();
    keys_sorted.sort();
    assert_eq!(keys_sorted, want, "{first:?}");
    assert_eq!(first["device"], "dev-1");
    assert_eq!(first["temp"], 31.5);
    assert_eq!(first["site"], "north");
    assert_eq!(first["tags"], json!({"site": "plant-7"}));
    assert_eq!(first["event_id"].as_str().map(str::len), Some(36));
    assert!(first["received_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    // The pointer /meta/site names nothing in the last event: the field is left out.
    assert_eq!(got[1]["temp"], 30);
    assert!(got[1].get("site").is_none(), "{:?}", got[1]);

    // Without fields: the default projection, payload as sent.
    let raw = lines(&page(&node, "raw", READ_ALL, "?limit=1"));
    assert_eq!(raw.len(), 1);
    let raw_keys: HashSet<&str> = raw[0]
        .as_object()
        .expect("obj")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        raw_keys,
        HashSet::from(["event_id", "received_at", "device_id", "tags", "payload"])
    );
    assert_eq!(
        raw[0]["payload"],
        json!({"n": "keep", "temp_c": 31.5, "meta": {"site": "north"}})
    );

    // Pages: limit and cursor walk the 7 events without repeats.
    let mut cursor = String::new();
    let mut walked = Vec::new();
    for _ in 0..5 {
        let query = if cursor.is_empty() {
            "?limit=3".to_owned()
        } else {
            format!("?limit=3&after={cursor}")
        };
        let answer = page(&node, "everything", READ_ALL, &query);
        assert_eq!(answer.status, 200);
        walked.extend(lines(&answer).into_iter().map(|l| l["n"].clone()));
        cursor = answer.header("sluice-cursor").expect("a cursor");
        assert!(answer
            .header("link")
            .is_some_and(|l| l.contains("rel=\"next\"")));
    }
    assert_eq!(walked.len(), 7, "{walked:?}");
    let distinct: HashSet<String> = walked.iter().map(Value::to_string).collect();
    assert_eq!(distinct.len(), 7);
    // `since` after everything: an empty page.
    let later = page(&node, "everything", READ_ALL, "?since=2100-01-01T00:00:00Z");
    assert_eq!((later.status, later.body.as_str()), (200, ""));

    // Tokens.
    let problem = |answer: Answer| (answer.status, answer.problem());
    assert_eq!(
        problem(hot(READ_ALL)).0,
        200,
        "a read token without a list reads every endpoint"
    );
    assert_eq!(
        problem(page(&node, "everything", READ_HOT, "")),
        (403, "endpoint-not-allowed".into())
    );
    assert_eq!(problem(hot(INGEST)), (403, "missing-scope".into()));
    assert_eq!(problem(hot(OTHER_WS_READ)), (403, "wrong-workspace".into()));
    assert_eq!(problem(hot("nope")), (401, "invalid-token".into()));
    assert_eq!(
        problem(page(&node, "cold", READ_ALL, "")),
        (404, "unknown-endpoint".into())
    );
    assert_eq!(
        problem(page(&node, "hot", READ_ALL, "?after=bm90LWEtY3Vyc29y")),
        (400, "invalid-cursor".into())
    );
    assert_eq!(
        problem(page(&node, "hot", READ_ALL, "?since=yesterday")),
        (400, "invalid-parameter".into())
    );
    let read_ingests = post(
        &url,
        &[
            ("authorization", &format!("Bearer {READ_ALL}")),
            ("content-type", "application/json"),
        ],
        b"{\"n\": 1}",
    );
    assert_eq!(
        (read_ingests.status, read_ingests.problem()),
        (403, "missing-scope".into())
    );
    // Nothing else was written by the refused requests.
    assert_eq!(lines(&page(&node, "everything", READ_ALL, "")).len(), 7);
}

/// A live stream stays open across quiet spells longer than the HTTP idle timeout (the node
/// writes keep-alives; a connection it writes to is not idle), streams and pages stop at their
/// limits, and the stream ends when the token is revoked.
#[test]
fn a_live_stream_outlives_the_idle_timeout_and_ends_when_its_token_goes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snapshot_path = dir.path().join("snapshot.json");
    std::fs::write(&snapshot_path, snapshot().to_string()).expect("snapshot");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[http]\nidle_timeout_ms = 1000\n[export]\nheartbeat_ms = 300\npoll_ms = 100\nstreams_max = 1\npages_max = 0\n",
    )
    .expect("config");
    let lake = dir.path().join("lake").display().to_string();
    let (http, mqtt) = (free_port(), free_port());
    let args: Vec<String> = [
        "dataplane",
        "--config",
        &config.display().to_string(),
        "--data-dir",
        &dir.path().join("n").display().to_string(),
        "--object-store",
        &lake,
        "--http-addr",
        &format!("127.0.0.1:{http}"),
        "--mqtt-addr",
        &format!("127.0.0.1:{mqtt}"),
        "--config-snapshot",
        &snapshot_path.display().to_string(),
        "--batch-max-age-ms",
        "100",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let node = Node {
        proc: Proc::start(
            &args,
            dir.path().join("n.log"),
            format!("http://127.0.0.1:{http}/healthz"),
        ),
        http,
        mqtt,
    };
    let script = consumer_script(dir.path());
    let url = node.url("/v1/stream/fleet/everything");
    let mut consumer = Consumer::start(&script, &url, &dir.path().join("state"));
    // Quiet for three idle timeouts, then an event: the stream is still there to carry it.
    std::thread::sleep(Duration::from_secs(3));
    let sent = send_http(&node, std::iter::once("after-quiet".to_owned()));
    let mut seen = Vec::new();
    consumer.collect_until(&mut seen, &sent);
    assert_eq!(
        consumer.child.try_wait().ok().flatten(),
        None,
        "still reading"
    );

    // Past the limits: a second live stream and any page are refused, with Retry-After.
    let second = agent()
        .get(&url)
        .header("authorization", &format!("Bearer {READ_ALL}"))
        .call()
        .expect("GET");
    let second = Answer::of(second);
    assert_eq!(
        (second.status, second.problem()),
        (503, "overloaded".into())
    );
    assert_eq!(second.header("retry-after").as_deref(), Some("5"));
    let paged = page(&node, "everything", READ_ALL, "");
    assert_eq!((paged.status, paged.problem()), (503, "overloaded".into()));
    assert_eq!(paged.header("retry-after").as_deref(), Some("1"));

    // Revoke the read token (a new configuration version without it): the stream ends.
    let mut revoked = snapshot();
    revoked["version"] = json!(2);
    if let Some(tokens) = revoked["workspaces"][0]["tokens"].as_array_mut() {
        tokens.retain(|t| t["sha256"] != hash_hex(READ_ALL));
    }
    std::fs::write(&snapshot_path, revoked.to_string()).expect("snapshot");
    let ended = wait_for(Duration::from_secs(15), || {
        matches!(consumer.child.try_wait(), Ok(Some(_)))
    });
    assert!(ended, "the stream of a revoked token ended");
    let answer = page(&node, "everything", READ_ALL, "");
    assert_eq!(
        (answer.status, answer.problem()),
        (401, "invalid-token".into())
    );
}

/// A webhook receiver: a real HTTP/1.1 server on loopback that checks every request's
/// Standard Webhooks signature with the subscription's secret, records the events of the
/// requests it takes, and refuses (503) every request until `healthy` is set.
struct Receiver {
    port: u16,
    events: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    bad_signatures: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    healthy: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Receiver {
    fn start(secret: &str, healthy: bool) -> Receiver {
        Self::start_on(0, secret, healthy)
    }

    fn start_on(port: u16, secret: &str, healthy: bool) -> Receiver {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind receiver");
        let port = listener.local_addr().expect("addr").port();
        let signer = sluice_config::webhook_signature::Signer::new(secret).expect("secret");
        let receiver = Receiver {
            port,
            events: Arc::new(Mutex::new(Vec::new())),
            requests: Arc::new(AtomicUsize::new(0)),
            bad_signatures: Arc::new(AtomicUsize::new(0)),
            healthy: Arc::new(AtomicBool::new(healthy)),
        };
        let (events, requests, bad, ok) = (
            receiver.events.clone(),
            receiver.requests.clone(),
            receiver.bad_signatures.clone(),
            receiver.healthy.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (signer, events, requests, bad, ok) = (
                    signer.clone(),
                    events.clone(),
                    requests.clone(),
                    bad.clone(),
                    ok.clone(),
                );
                std::thread::spawn(move || loop {
                    // One request: the head, then Content-Length bytes.
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let header = |name: &str| {
                        head.lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.trim()
                                    .eq_ignore_ascii_case(name)
                                    .then(|| v.trim().to_owned())
                            })
                            .unwrap_or_default()
                    };
                    let len: usize = header("content-length").parse().unwrap_or(0);
                    let mut body = vec![0u8; len];
                    if stream.read_exact(&mut body).is_err() {
                        return;
                    }
                    requests.fetch_add(1, Ordering::SeqCst);
                    let timestamp: i64 = header("webhook-timestamp").parse().unwrap_or(0);
                    let expected = signer.sign(&header("webhook-id"), timestamp, &body);
                    let signed = header("webhook-signature")
                        .split(' ')
                        .any(|s| s == expected);
                    let status = if !signed {
                        bad.fetch_add(1, Ordering::SeqCst);
                        "401 Unauthorized"
                    } else if !ok.load(Ordering::SeqCst) {
                        "503 Service Unavailable"
                    } else {
                        let batch: Vec<Value> =
                            serde_json::from_slice(&body).expect("a JSON array of events");
                        events.lock().expect("events").extend(batch);
                        "200 OK"
                    };
                    let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                    if stream.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                });
            }
        });
        receiver
    }

    fn received(&self) -> HashSet<String> {
        self.events
            .lock()
            .expect("events")
            .iter()
            .filter_map(|e| e["n"].as_str().map(str::to_owned))
            .collect()
    }
}

const CLUSTER_SECRET: &str = "a-cluster-secret-of-at-least-32-characters";

/// The snapshot with a webhook delivering output `all` to `url`.
fn snapshot_with_webhook(url: &str, secret: &str) -> Value {
    let mut snap = snapshot();
    snap["workspaces"][0]["webhooks"] = json!([{
        "id": "0190f3a0-0000-7000-8000-0000000006d0",
        "slug": "to-receiver",
        "output": "all",
        "url": url,
        "batch_events_max": 25,
        "batch_interval_ms": 100,
        "secret_sealed": sluice_config::sealed::seal(CLUSTER_SECRET, secret).expect("seal"),
        "allow_private": true,
    }]);
    snap
}

/// Each node delivers what it accepted, signed; a receiver that refuses for a while gets
/// everything once it recovers, and a node's kill -9 loses nothing it acknowledged.
#[test]
fn webhooks_deliver_every_event_of_both_nodes_signed_through_an_outage_and_a_kill9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = sluice_config::webhook_signature::generate_secret();
    let receiver = Receiver::start(&secret, false);
    let snapshot_path = dir.path().join("snapshot.json");
    let url = format!("http://127.0.0.1:{}/hook", receiver.port);
    std::fs::write(
        &snapshot_path,
        snapshot_with_webhook(&url, &secret).to_string(),
    )
    .expect("snapshot");
    let lake = dir.path().join("lake").display().to_string();
    let env = vec![(
        "SLUICE_CLUSTER_SECRET".to_owned(),
        CLUSTER_SECRET.to_owned(),
    )];
    let a = start_node(dir.path(), "node-a", &snapshot_path, &lake, env.clone());
    let mut b = start_node(dir.path(), "node-b", &snapshot_path, &lake, env);
    // Deliveries start with the files committed once they run: give them a moment.
    std::thread::sleep(Duration::from_millis(500));

    // The receiver refuses everything at first (503): nothing is lost, it is retried.
    let mut sent = send_http(&a, (0..30).map(|i| format!("wa-{i}")));
    sent.extend(send_mqtt(&b, "wb", 30));
    assert!(wait_for(Duration::from_secs(10), || {
        receiver.requests.load(std::sync::atomic::Ordering::SeqCst) >= 2
    }));
    assert!(receiver.received().is_empty());
    receiver
        .healthy
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let want: HashSet<String> = sent.iter().cloned().collect();
    assert!(
        wait_for(Duration::from_secs(30), || receiver.received() == want),
        "received {} of {}",
        receiver.received().len(),
        want.len()
    );

    // kill -9 with acknowledged events not yet delivered: they arrive after the restart.
    let acked = send_mqtt(&b, "wk", 40);
    b.proc.kill9();
    sent.extend(acked);
    b.proc.restart();
    sent.extend(send_http(&b, (0..10).map(|i| format!("wr-{i}"))));
    let want: HashSet<String> = sent.iter().cloned().collect();
    assert!(
        wait_for(Duration::from_secs(30), || receiver.received() == want),
        "missing after the kill -9: {:?}",
        want.difference(&receiver.received()).collect::<Vec<_>>()
    );
    assert_eq!(
        receiver
            .bad_signatures
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "every request signed with the subscription's secret"
    );
    // The node counts its attempts: refused ones first, then delivered ones.
    let metrics = agent()
        .get(a.url("/metrics"))
        .call()
        .expect("metrics")
        .into_body()
        .read_to_string()
        .expect("text");
    let count = |line_start: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        count("sluice_webhook_attempts_total{outcome=\"retrying\"}") > 0,
        "{metrics}"
    );
    assert!(
        count("sluice_webhook_attempts_total{outcome=\"delivered\"}") > 0,
        "{metrics}"
    );
    assert!(
        count("sluice_webhook_events_delivered_total") >= 30,
        "{metrics}"
    );
    let total = receiver.events.lock().expect("events").len();
    eprintln!(
        "{} events accepted, {total} delivered (at least once each)",
        want.len()
    );
}

/// The whole of it through the control plane: outputs, an export endpoint, tokens and two
/// webhooks made with its API; two nodes following it on an S3-compatible lake; events over
/// HTTP and MQTT to both, all read from one node's endpoint and all delivered, signed, to a
/// working receiver; and a receiver that never answers 2xx ends with its subscription
/// disabled and the workspace's Admin mailed (aiosmtpd).
#[test]
fn through_the_control_plane_every_event_is_streamed_and_delivered_and_a_dead_receiver_is_disabled()
{
    use common::controlplane::{verified_user, wait_mail, Api, SmtpServer};
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(&dir.path().join("s3"), free_port());
    std::fs::create_dir_all(s3.root.join("lake")).expect("bucket");
    let mail = SmtpServer::start(&dir.path().join("mail"));
    let api_port = free_port();
    let _control = Proc::start(
        &[
            "controlplane",
            "--data-dir",
            &dir.path().join("cp").display().to_string(),
            "--api-addr",
            &format!("127.0.0.1:{api_port}"),
            "--cluster-secret",
            CLUSTER_SECRET,
            "--smtp-url",
            &mail.url(),
            "--smtp-allow-private-hosts",
        ]
        .map(String::from),
        dir.path().join("cp.log"),
        format!("http://127.0.0.1:{api_port}/healthz"),
    );
    let api = Api::new(format!("http://127.0.0.1:{api_port}"));
    let ada = verified_user(&api, &mail.maildir, "ada@example.com");
    let create = |path: &str, body: Value| -> Value {
        let a = api.post(path, Some(&ada.token), body);
        assert_eq!(a.status, 201, "{path}: {}", a.body);
        a.json()
    };
    create(
        "/api/v1/workspaces",
        json!({"name": "Fleet", "slug": "fleet"}),
    );
    let ws = "/api/v1/workspaces/fleet";
    create(&format!("{ws}/sources"), json!({"slug": "telemetry"}));
    create(
        &format!("{ws}/outputs"),
        json!({"slug": "all", "source": "telemetry", "fields": [{"from": "/n"}]}),
    );
    create(
        &format!("{ws}/export-endpoints"),
        json!({"slug": "everything", "output": "all"}),
    );
    let ingest = create(
        &format!("{ws}/tokens"),
        json!({"name": "fleet", "scopes": ["ingest"]}),
    )["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let read = create(
        &format!("{ws}/tokens"),
        json!({"name": "reader", "scopes": ["read"], "endpoints": ["everything"]}),
    )["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    // Two receivers: one that works, one that answers 503 forever.
    let webhook = |slug: &str, port: u16, extra: Value| -> String {
        let mut body = json!({"slug": slug, "output": "all",
            "url": format!("http://127.0.0.1:{port}/hook"), "batch_interval_ms": 100});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        create(&format!("{ws}/webhooks"), body)["secret"]
            .as_str()
            .expect("the secret, shown once")
            .to_owned()
    };
    // The receiver must know the secret, which the creation makes: bind first, start after.
    let good_port = free_port();
    let dead_port = free_port();
    let good = {
        let secret = webhook("good", good_port, json!({}));
        Receiver::start_on(good_port, &secret, true)
    };
    let dead = {
        let secret = webhook("dead", dead_port, json!({"disable_after_s": 60}));
        Receiver::start_on(dead_port, &secret, false)
    };

    let lake = "s3://lake/sluice";
    let follow = [
        "--control-plane".to_owned(),
        format!("http://127.0.0.1:{api_port}"),
        "--cluster-secret".to_owned(),
        CLUSTER_SECRET.to_owned(),
    ];
    let a = start_node_with(dir.path(), "node-a", &follow, lake, s3.env());
    let b = start_node_with(dir.path(), "node-b", &follow, lake, s3.env());
    // Both nodes have the configuration (and so the webhooks) once they take the token.
    for node in [&a, &b] {
        let url = node.url("/v1/ingest/fleet/telemetry");
        assert!(wait_for(Duration::from_secs(20), || {
            post(&url, &[("authorization", &format!("Bearer {ingest}"))], b"").status != 503
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut sent = send_http_as(&a, &ingest, (0..30).map(|i| format!("ca-{i}")));
    sent.extend(send_mqtt_as(&b, &ingest, "cb", 30));
    sent.extend(send_http_as(
        &b,
        &ingest,
        (0..30).map(|i| format!("cc-{i}")),
    ));
    let want: HashSet<String> = sent.iter().cloned().collect();

    let script = consumer_script(dir.path());
    let url = a.url("/v1/stream/fleet/everything?from=beginning");
    let consumer = Consumer::start_with(&script, &url, &read, &dir.path().join("state"));
    let mut seen = Vec::new();
    consumer.collect_until(&mut seen, &sent);
    assert!(
        wait_for(Duration::from_secs(30), || good.received() == want),
        "the good receiver got {} of {}",
        good.received().len(),
        want.len()
    );
    assert_eq!(
        good.bad_signatures
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert!(
        dead.requests.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the dead receiver was tried"
    );

    // The deliveries the nodes reported (about a second after them) are in the control
    // plane's log.
    let reported = wait_for(Duration::from_secs(15), || {
        let log = api.get(&format!("{ws}/webhooks/good/deliveries"), &ada.token);
        log.status == 200 && log.body.contains("delivered")
    });
    assert!(
        reported,
        "{}",
        api.get(&format!("{ws}/webhooks/good/deliveries"), &ada.token)
            .body
    );

    // 60 s of nothing but 503: disabled, and the Admin is told.
    let disabled = wait_for(Duration::from_secs(120), || {
        api.get(&format!("{ws}/webhooks/dead"), &ada.token).json()["status"] == "disabled"
    });
    assert!(
        disabled,
        "{}",
        api.get(&format!("{ws}/webhooks/dead"), &ada.token).body
    );
    let told = wait_mail(
        &mail.maildir,
        "ada@example.com",
        "Webhook dead of Fleet disabled",
        0,
    );
    assert!(told.body.contains("\"enabled\": true"), "{}", told.body);
    // Once the nodes have the new version, the dead receiver hears nothing more.
    std::thread::sleep(Duration::from_secs(3));
    let tried = dead.requests.load(std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        dead.requests.load(std::sync::atomic::Ordering::SeqCst),
        tried
    );
}

/// The first ```sh block after `heading` in `doc`.
fn sh_block(doc: &str, heading: &str) -> String {
    doc.split(heading)
        .nth(1)
        .and_then(|s| s.split("```sh").nth(1))
        .and_then(|s| s.split("```").next())
        .unwrap_or_else(|| panic!("no sh block after {heading:?}"))
        .to_owned()
}

/// docs/data-out.md's quick start, run as written after the control plane's, against
/// `sluice up`: the page it reads holds the event it sent, with the output's three fields.
#[test]
fn the_documented_quick_start_reads_back_the_event_it_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = common::Sluice::start(&dir.path().join("data"), &["--batch-max-age-ms", "1000"]);
    let control = sh_block(
        include_str!("../docs/control-plane.md"),
        "## Quick start (with `sluice up`)",
    );
    let data_out = sh_block(include_str!("../docs/data-out.md"), "## Quick start");
    // The live stream at the end runs until stopped.
    let data_out = data_out
        .split("# The same, live")
        .next()
        .expect("the block");
    let script = format!("set -e\n{control}\n{data_out}")
        .replace("http://127.0.0.1:8080", &sluice.api_url())
        .replace("http://127.0.0.1:8081", &sluice.base_url())
        .replace(
            "data/outbox",
            &sluice.data_dir.join("outbox").display().to_string(),
        );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // curl's answers run together on one line; the page is the last of them.
    let page: Value = serde_json::Deserializer::from_str(&stdout)
        .into_iter::<Value>()
        .filter_map(Result::ok)
        .filter(|v| v.get("psi").is_some())
        .last()
        .unwrap_or_else(|| panic!("no event read back: {stdout}"));
    let keys: HashSet<&str> = page
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, HashSet::from(["event_id", "device_id", "psi"]));
    assert_eq!(page["device_id"], "press-1");
    assert_eq!(page["psi"], 101.3);
}
