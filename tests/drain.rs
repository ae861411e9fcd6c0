//! A node's life at the edges of a cluster, with real processes and clients on loopback:
//! started before its control plane it refuses traffic as "not configured" (503, CONNACK
//! 0x88) instead of calling every token wrong, and is not ready until the control plane
//! answers; on SIGTERM it drains: `/readyz` answers 503 while it still serves, then its
//! listeners close, HTTP keep-alives end after their request (`Connection: close`), MQTT 5
//! sessions get DISCONNECT 0x8B and 3.1.1 ones are closed, and everything acknowledged is in
//! the lake when it exits.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::controlplane::{verified_user, Api};
use common::mqtt::{connect_raw, publish_raw, raw_connect, read_packet};
use common::{agent, duckdb, free_port, post, wait_for, Proc};
use serde_json::{json, Value};

const SECRET: &str = "drain-test-secret";

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// `/readyz`'s status and body.
fn readyz(port: u16) -> (u16, Value) {
    let mut resp = agent()
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .call()
        .expect("readyz");
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().expect("body");
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn ingest(port: u16, workspace: &str, token: &str, body: &str) -> common::Answer {
    post(
        &format!("http://127.0.0.1:{port}/v1/ingest/{workspace}/telemetry"),
        &[
            ("authorization", &format!("Bearer {token}")),
            ("content-type", "application/json"),
        ],
        body.as_bytes(),
    )
}

/// An MQTT 5 CONNECT on a raw socket; returns the socket and the CONNACK's reason code.
fn connect_v5(port: u16, client: &str, workspace: &str, token: &str) -> (TcpStream, u8) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    s.write_all(&connect_raw(5, client, workspace, token, 30))
        .expect("CONNECT");
    let (first, body) = read_packet(&mut s).expect("CONNACK");
    assert_eq!(first, 0x20, "CONNACK");
    (s, body[1])
}

#[test]
fn a_node_started_before_its_control_plane_refuses_traffic_as_not_configured_until_it_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (api_port, http, mqtt) = (free_port(), free_port(), free_port());
    let api = Api::new(format!("http://127.0.0.1:{api_port}"));
    let _node = Proc::start(
        &strings(&[
            "dataplane",
            "--data-dir",
            dir.path().join("node").to_str().expect("path"),
            "--http-addr",
            &format!("127.0.0.1:{http}"),
            "--mqtt-addr",
            &format!("127.0.0.1:{mqtt}"),
            "--http-threads",
            "1",
            "--control-plane",
            &api.base,
            "--cluster-secret",
            SECRET,
        ]),
        dir.path().join("node.log"),
        format!("http://127.0.0.1:{http}/healthz"),
    );

    // No control plane yet, nothing cached: alive, not ready, and honest about why.
    let (status, body) = readyz(http);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["configured"], false, "{body}");
    let a = ingest(http, "plant", "any-token", r#"{"t":1}"#);
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.problem(), "not-configured", "{}", a.body);
    assert_eq!(a.retry_after.as_deref(), Some("5"));
    let (_s, reason) = connect_v5(mqtt, "dev-1", "plant", "any-token");
    assert_eq!(
        reason, 0x88,
        "MQTT 5: server unavailable, not bad credentials"
    );
    let (_s, connack) = raw_connect(mqtt, "dev-2", "plant", "any-token");
    assert_eq!(connack[3], 3, "MQTT 3.1.1: server unavailable");

    // The control plane comes up: the node is configured (even with nothing to send it) and
    // ready; an unknown token is now a wrong one.
    let cp_dir = dir.path().join("cp");
    let _control = Proc::start(
        &strings(&[
            "controlplane",
            "--data-dir",
            cp_dir.to_str().expect("path"),
            "--api-addr",
            &format!("127.0.0.1:{api_port}"),
            "--cluster-secret",
            SECRET,
        ]),
        dir.path().join("cp.log"),
        format!("{}/healthz", api.base),
    );
    assert!(
        wait_for(Duration::from_secs(20), || readyz(http).0 == 200),
        "ready once the control plane answers: {}",
        readyz(http).1
    );
    assert_eq!(ingest(http, "plant", "any-token", "{}").status, 401);

    let ada = verified_user(&api, &cp_dir.join("outbox"), "ada@example.com");
    let a = api.post(
        "/api/v1/workspaces",
        Some(&ada.token),
        json!({"name": "Plant", "slug": "plant"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let a = api.post(
        "/api/v1/workspaces/plant/sources",
        Some(&ada.token),
        json!({"slug": "telemetry"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let a = api.post(
        "/api/v1/workspaces/plant/tokens",
        Some(&ada.token),
        json!({"name": "device", "scopes": ["ingest"]}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let token = a.json()["secret"].as_str().expect("secret").to_owned();
    assert!(wait_for(Duration::from_secs(10), || {
        ingest(http, "plant", &token, r#"{"t":1}"#).status == 202
    }));
}

/// Reads an HTTP/1.1 response from `s` until the connection closes; returns it as text.
fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn sigterm_drains_readiness_first_then_connections_then_ships_what_was_acknowledged() {
    sigterm_drains("auto");
}

/// The same drain with HTTP on the epoll driver: listeners closed, the keep-alive request in
/// flight answered with `Connection: close`.
#[test]
fn sigterm_drains_readiness_first_then_connections_then_ships_what_was_acknowledged_on_epoll() {
    sigterm_drains("epoll");
}

fn sigterm_drains(io_driver: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let (http, mqtt) = (free_port(), free_port());
    let drain = Duration::from_millis(1500);
    let mut node = Proc::start(
        &strings(&[
            "dataplane",
            "--data-dir",
            data.to_str().expect("path"),
            "--http-addr",
            &format!("127.0.0.1:{http}"),
            "--mqtt-addr",
            &format!("127.0.0.1:{mqtt}"),
            "--http-threads",
            "1",
            "--http-io-driver",
            io_driver,
            "--shutdown-drain-ms",
            &drain.as_millis().to_string(),
            "--shutdown-grace-ms",
            "10000",
            // Nothing uploads before the shutdown: what is in the lake, the drain shipped.
            "--batch-max-age-ms",
            "600000",
        ]),
        dir.path().join("node.log"),
        format!("http://127.0.0.1:{http}/healthz"),
    );
    let boot: Value = common::read_bootstrap(&data);
    let (ws, token) = (
        boot["workspace"].as_str().expect("workspace").to_owned(),
        boot["token"].as_str().expect("token").to_owned(),
    );
    // A balancer checks readiness.
    assert_eq!(readyz(http).0, 200);

    // Live connections before the signal: MQTT 5 (with one acknowledged QoS 1 event), MQTT
    // 3.1.1, and an HTTP keep-alive connection whose request will be in flight.
    let (mut v5, reason) = connect_v5(mqtt, "dev-5", &ws, &token);
    assert_eq!(reason, 0);
    v5.write_all(&publish_raw(
        0x32,
        "ingest/telemetry",
        Some(1),
        Some(&[]),
        br#"{"via":"mqtt5"}"#,
    ))
    .expect("PUBLISH");
    let (first, body) = read_packet(&mut v5).expect("PUBACK");
    assert_eq!((first, &body[..2]), (0x40, &[0u8, 1][..]), "PUBACK of id 1");
    let (mut v3, connack) = raw_connect(mqtt, "dev-3", &ws, &token);
    assert_eq!(connack[3], 0);
    let mut keep_alive = TcpStream::connect(("127.0.0.1", http)).expect("connect");
    keep_alive
        .set_read_timeout(Some(Duration::from_secs(20)))
        .ok();
    let event = br#"{"via":"keep-alive"}"#;
    let head = format!(
        "POST /v1/ingest/{ws}/telemetry HTTP/1.1\r\nHost: n\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        event.len()
    );
    keep_alive.write_all(head.as_bytes()).expect("head");
    keep_alive.write_all(&event[..5]).expect("half the body");
    let mut accepted = 1; // the MQTT 5 event

    let signalled = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &node.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());

    // Readiness goes first; the node still serves meanwhile.
    assert!(
        wait_for(Duration::from_millis(1000), || readyz(http).0 == 503),
        "unready at once"
    );
    let (_, body) = readyz(http);
    assert_eq!(body["draining"], true, "{body}");
    let a = ingest(http, &ws, &token, r#"{"via":"during-drain"}"#);
    assert_eq!(a.status, 202, "still serving during the drain: {}", a.body);
    accepted += 1;

    // Then the listeners close (connections are refused, so a balancer retries elsewhere)...
    assert!(wait_for(Duration::from_secs(5), || TcpStream::connect((
        "127.0.0.1",
        http
    ))
    .is_err()));
    let closed_after = signalled.elapsed();
    assert!(
        closed_after >= drain - Duration::from_millis(100),
        "listeners closed after the drain delay, not before: {closed_after:?}"
    );
    // ...MQTT 5 sessions get DISCONNECT 0x8B (server shutting down)...
    let (first, body) = read_packet(&mut v5).expect("DISCONNECT");
    assert_eq!(first, 0xE0, "DISCONNECT");
    assert_eq!(body[0], 0x8B, "reason: server shutting down");
    // ...3.1.1 sessions are closed...
    let mut rest = Vec::new();
    let _ = v3.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "3.1.1 has no DISCONNECT from the server: {rest:?}"
    );
    // ...and the request in flight is answered, with the connection closed after it.
    keep_alive.write_all(&event[5..]).expect("rest of the body");
    let answer = read_to_close(&mut keep_alive);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    accepted += 1;

    // The node exits within its grace, having shipped everything it acknowledged.
    assert!(
        wait_for(Duration::from_secs(12), || matches!(
            node.child.try_wait(),
            Ok(Some(_))
        )),
        "exits within the grace"
    );
    let exit = node.child.try_wait().expect("wait").expect("exited");
    assert!(exit.success(), "{exit}; {}", node.log_text());
    assert!(signalled.elapsed() < Duration::from_secs(10));
    let rows = duckdb(
        &data.join("lake"),
        "SELECT payload->>'via' AS via, count(*) FROM {lake} GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(
        rows,
        vec![
            vec![json!("during-drain"), json!(1)],
            vec![json!("keep-alive"), json!(1)],
            vec![json!("mqtt5"), json!(1)],
        ],
        "every acknowledged event, once ({accepted} in all)"
    );
    let log = node.log_text();
    assert!(log.contains("draining"), "{log}");
}
