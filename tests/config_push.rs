//! The configuration stream between the planes, as separate processes on loopback: a control
//! plane and three data-plane nodes converge, follow revocations (HTTP refusals and MQTT
//! sessions closed on every node) and disabled workspaces, keep
//! serving while the control plane is away (also after a restart), and catch up after it
//! returns; a node with the wrong secret gets nothing; a corrupt delta is refused (NACK) and a
//! gap forces a full snapshot (against a scripted control plane).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::controlplane::{verified_user, Api};
use common::mqtt::Background;
use common::{free_port, post, wait_for, Proc};
use serde_json::{json, Value};
use sluice_config::snapshot::ConfigSnapshot;
use sluice_config::token;

const SECRET: &str = "test-cluster-secret";

struct Cluster {
    control: Proc,
    api: Api,
    nodes: Vec<(Proc, u16)>,
    /// MQTT port of each node.
    mqtt_ports: Vec<u16>,
    dir: tempfile::TempDir,
    operator: String,
}

/// RFC 3339 time `secs` from now (the system clock, through `date`).
fn chrono_in_secs(secs: u64) -> String {
    let out = std::process::Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("+{secs} seconds"),
            "+%Y-%m-%dT%H:%M:%SZ",
        ])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

impl Cluster {
    fn start(nodes: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let api_port = free_port();
        let cp_dir = dir.path().join("cp");
        let control = Proc::start(
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
            format!("http://127.0.0.1:{api_port}/healthz"),
        );
        let api = Api::new(format!("http://127.0.0.1:{api_port}"));
        let operator = api.operator_session(&cp_dir);
        let mut cluster = Cluster {
            control,
            api,
            nodes: Vec::new(),
            mqtt_ports: Vec::new(),
            dir,
            operator,
        };
        for n in 0..nodes {
            cluster.add_node(n, SECRET);
        }
        cluster
    }

    fn add_node(&mut self, n: usize, secret: &str) {
        let port = free_port();
        let mqtt_port = free_port();
        let node_dir = self.dir.path().join(format!("node{n}"));
        let node = Proc::start(
            &strings(&[
                "dataplane",
                "--data-dir",
                node_dir.to_str().expect("path"),
                "--http-addr",
                &format!("127.0.0.1:{port}"),
                "--mqtt-addr",
                &format!("127.0.0.1:{mqtt_port}"),
                "--http-threads",
                "1",
                "--control-plane",
                &self.api.base,
                "--cluster-secret",
                secret,
                "--node-id",
                &format!("node-{n}"),
            ]),
            self.dir.path().join(format!("node{n}.log")),
            format!("http://127.0.0.1:{port}/healthz"),
        );
        self.nodes.push((node, port));
        self.mqtt_ports.push(mqtt_port);
    }

    /// Answer of one ingest request to node `n`.
    fn ingest(&self, n: usize, workspace: &str, token: &str) -> common::Answer {
        post(
            &format!(
                "http://127.0.0.1:{}/v1/ingest/{workspace}/telemetry",
                self.nodes[n].1
            ),
            &[
                ("authorization", &format!("Bearer {token}")),
                ("content-type", "application/json"),
            ],
            br#"{"t": 1}"#,
        )
    }

    /// Waits until every node in `nodes` answers `status` for `token`.
    fn all_answer(&self, nodes: &[usize], workspace: &str, token: &str, status: u16) -> bool {
        wait_for(Duration::from_secs(10), || {
            nodes
                .iter()
                .all(|n| self.ingest(*n, workspace, token).status == status)
        })
    }

    fn readyz(&self, n: usize) -> Value {
        let mut resp = common::agent()
            .get(format!("http://127.0.0.1:{}/readyz", self.nodes[n].1))
            .call()
            .expect("readyz");
        serde_json::from_str(&resp.body_mut().read_to_string().expect("body")).expect("json")
    }

    fn new_token(&self, workspace: &str, token: &str) -> (String, String) {
        let a = self.api.post(
            &format!("/api/v1/workspaces/{workspace}/tokens"),
            Some(token),
            json!({"name": "device", "scopes": ["ingest"]}),
        );
        assert_eq!(a.status, 201, "{}", a.body);
        (
            a.json()["id"].as_str().expect("id").to_owned(),
            a.json()["secret"].as_str().expect("secret").to_owned(),
        )
    }
}

#[test]
fn three_nodes_converge_follow_changes_and_keep_serving_while_the_control_plane_is_away() {
    let mut cluster = Cluster::start(3);
    let all = [0, 1, 2];
    let outbox = cluster.dir.path().join("cp/outbox");
    let ada = verified_user(&cluster.api, &outbox, "ada@example.com");
    let a = cluster.api.post(
        "/api/v1/workspaces",
        Some(&ada.token),
        json!({"name": "Plant", "slug": "plant"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let a = cluster.api.post(
        "/api/v1/workspaces/plant/sources",
        Some(&ada.token),
        json!({"slug": "telemetry"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let (first_id, first) = cluster.new_token("plant", &ada.token);
    assert!(
        cluster.all_answer(&all, "plant", &first, 202),
        "every node accepts a new token"
    );

    // Every node acknowledged the current version.
    let converged = wait_for(Duration::from_secs(10), || {
        let view = cluster
            .api
            .get("/api/v1/operator/nodes", &cluster.operator)
            .json();
        let version = view["version"].as_u64();
        let nodes = view["nodes"].as_array().cloned().unwrap_or_default();
        nodes.len() == 3
            && nodes.iter().all(|n| {
                n["acked_version"].as_u64() == version && n["connected"] == true && n["lag"] == 0
            })
    });
    assert!(
        converged,
        "{}",
        cluster
            .api
            .get("/api/v1/operator/nodes", &cluster.operator)
            .body
    );
    let metrics = cluster.api.get("/metrics", SECRET);
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    for n in 0..3 {
        assert!(
            metrics.body.contains(&format!(
                "sluice_controlplane_node_lag{{node=\"node-{n}\"}} 0"
            )),
            "{}",
            metrics.body
        );
    }
    assert_eq!(cluster.api.get("/metrics", "wrong").status, 401);
    assert_eq!(
        cluster.readyz(0)["config_stream"]["connected"],
        true,
        "{}",
        cluster.readyz(0)
    );

    // Revocation reaches every node: HTTP requests are refused and live MQTT sessions of the
    // token are closed (0x87), on all three.
    let sessions: Vec<Background> = all
        .iter()
        .map(|&n| {
            let client = format!("plant-{n}");
            let session = Background::start(
                cluster.mqtt_ports[n],
                &[
                    "hold",
                    "--version",
                    "5",
                    "--client-id",
                    &client,
                    "--timeout",
                    "30",
                    "--username",
                    "plant",
                    "--password",
                    &first,
                ],
            );
            let connack = session.next(Duration::from_secs(10)).expect("CONNACK");
            assert_eq!(connack["rc"], 0, "node {n}: {connack}");
            session
        })
        .collect();
    let a = cluster.api.delete(
        &format!("/api/v1/workspaces/plant/tokens/{first_id}"),
        &ada.token,
    );
    assert_eq!(a.status, 204);
    assert!(
        cluster.all_answer(&all, "plant", &first, 401),
        "revoked everywhere"
    );
    for (n, session) in sessions.iter().enumerate() {
        let line = session
            .next(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("node {n} kept the revoked token's MQTT session"));
        assert_eq!(line["event"], "disconnected", "node {n}: {line}");
        assert_eq!(line["rc"], 0x87, "node {n}: {line}");
    }

    // A node killed and restarted catches up on what it missed.
    cluster.nodes[1].0.kill9();
    let (_, second) = cluster.new_token("plant", &ada.token);
    cluster.nodes[1].0.restart();
    assert!(cluster.all_answer(&all, "plant", &second, 202), "caught up");

    // Without the control plane, nodes keep accepting known tokens and refusing unknown ones,
    // also after a restart, and say so in /readyz.
    cluster.control.stop();
    cluster.nodes[2].0.stop();
    cluster.nodes[2].0.restart();
    for n in all {
        assert_eq!(cluster.ingest(n, "plant", &second).status, 202, "node {n}");
        assert_eq!(
            cluster
                .ingest(n, "plant", "sluice_unknownunknownunknownunknownunknown1")
                .status,
            401
        );
    }
    assert!(wait_for(Duration::from_secs(5), || {
        cluster.readyz(0)["config_stream"]["connected"] == false
    }));
    let ready = cluster.readyz(2);
    assert_eq!(ready["ready"], true, "{ready}");
    assert!(ready["config_stream"]["last_error"].is_string(), "{ready}");

    // Back again: everything converges on the next change, a disabled workspace included.
    cluster.control.restart();
    let (_, third) = cluster.new_token("plant", &ada.token);
    assert!(cluster.all_answer(&all, "plant", &third, 202));
    let a = cluster.api.put(
        &format!("/api/v1/operator/users/{}/trial", ada.id),
        &cluster.operator,
        json!({"trial_ends_at": "2020-01-01T00:00:00Z"}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        cluster.all_answer(&all, "plant", &third, 403),
        "a disabled workspace is refused on every node"
    );
    let refused = cluster.ingest(0, "plant", &third);
    assert_eq!(refused.problem(), "workspace-disabled");
    // The device owner learns what unblocks it, not to ask an admin who cannot.
    let detail = refused.json()["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        detail.contains("trial") && detail.contains("operator") && !detail.contains("admin"),
        "{detail}"
    );
    // It stays refused while the control plane is away, also by a node restarted offline.
    cluster.control.stop();
    cluster.nodes[0].0.stop();
    cluster.nodes[0].0.restart();
    for n in all {
        assert_eq!(
            cluster.ingest(n, "plant", &third).problem(),
            "workspace-disabled",
            "node {n}"
        );
    }
    cluster.control.restart();
    // The nodes come back on their own, after a jittered backoff of up to 10 s; the token
    // below lives 6 s, so it is made once they are all following again.
    assert!(
        wait_for(Duration::from_secs(20), || {
            all.iter()
                .all(|n| cluster.readyz(*n)["config_stream"]["connected"] == true)
        }),
        "every node reconnects to the restarted control plane"
    );

    // An expiring token, a deleted source and a deleted workspace are refused everywhere too.
    let bob = verified_user(&cluster.api, &outbox, "bob@example.com");
    let a = cluster.api.post(
        "/api/v1/workspaces",
        Some(&bob.token),
        json!({"name": "Mill", "slug": "mill"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let a = cluster.api.post(
        "/api/v1/workspaces/mill/sources",
        Some(&bob.token),
        json!({"slug": "telemetry"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let (_, lasting) = cluster.new_token("mill", &bob.token);
    let soon = chrono_in_secs(6);
    let a = cluster.api.post(
        "/api/v1/workspaces/mill/tokens",
        Some(&bob.token),
        json!({"name": "short-lived", "scopes": ["ingest"], "expires_at": soon}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let expiring = a.json()["secret"].as_str().expect("secret").to_owned();
    assert!(cluster.all_answer(&all, "mill", &expiring, 202));
    assert!(
        cluster.all_answer(&all, "mill", &expiring, 401),
        "an expired token is refused everywhere"
    );
    assert_eq!(
        cluster.ingest(0, "mill", &expiring).problem(),
        "token-expired"
    );
    let a = cluster
        .api
        .delete("/api/v1/workspaces/mill/sources/telemetry", &bob.token);
    assert_eq!(a.status, 204);
    assert!(
        cluster.all_answer(&all, "mill", &lasting, 404),
        "a deleted source is refused everywhere"
    );
    assert_eq!(
        cluster.ingest(1, "mill", &lasting).problem(),
        "unknown-source"
    );
    let a = cluster.api.post(
        "/api/v1/workspaces/mill/sources",
        Some(&bob.token),
        json!({"slug": "telemetry"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    assert!(cluster.all_answer(&all, "mill", &lasting, 202));
    // Bob's own first workspace stays, so this one can go.
    let a = cluster.api.delete("/api/v1/workspaces/mill", &bob.token);
    assert_eq!(a.status, 204, "{}", a.body);
    assert!(
        cluster.all_answer(&all, "mill", &lasting, 401),
        "a deleted workspace's tokens are refused everywhere"
    );

    // A node with the wrong secret gets nothing.
    cluster.add_node(3, "wrong-secret");
    assert!(wait_for(Duration::from_secs(5), || {
        cluster.readyz(3)["config_stream"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("401")
    }));
    // It knows no token at all, and says so rather than calling the token wrong.
    let a = cluster.ingest(3, "plant", &second);
    assert_eq!(
        (a.status, a.problem().as_str()),
        (503, "not-configured"),
        "{}",
        a.body
    );
    assert_eq!(cluster.readyz(3)["ready"], false);
}

/// A scripted control plane: answers each stream request with the next script's lines (and
/// keeps the connection open), records every request line and acknowledgement. A scripted
/// control plane, not the real one, because the real one never sends a corrupt delta or a gap.
struct FakeControlPlane {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    acks: Arc<Mutex<Vec<Value>>>,
}

fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut first = String::new();
    reader.read_line(&mut first).ok()?;
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        if header.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((first.trim().to_owned(), body))
}

impl FakeControlPlane {
    fn start(scripts: Vec<Vec<Value>>) -> FakeControlPlane {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let scripts = Arc::new(Mutex::new(scripts.into_iter()));
        let (r, a) = (requests.clone(), acks.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (r, a, scripts) = (r.clone(), a.clone(), scripts.clone());
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let Some((line, body)) = read_request(&mut stream) else {
                        return;
                    };
                    r.lock().expect("lock").push(line.clone());
                    if line.starts_with("POST /api/v1/cluster/acks") {
                        if let Ok(ack) = serde_json::from_slice(&body) {
                            a.lock().expect("lock").push(ack);
                        }
                        let _ = stream
                            .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
                        return;
                    }
                    let script = scripts.lock().expect("lock").next().unwrap_or_default();
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n",
                    );
                    for message in script {
                        // `null` in a script is a pause, for the test to look at the node.
                        if message.is_null() {
                            std::thread::sleep(Duration::from_secs(3));
                            continue;
                        }
                        let _ = stream.write_all(format!("{message}\n").as_bytes());
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    // Keep the stream open a while, as a real control plane would.
                    std::thread::sleep(Duration::from_secs(30));
                });
            }
        });
        FakeControlPlane {
            port,
            requests,
            acks,
        }
    }
}

/// A data-plane node following `fake`; returns its data dir (kept while it runs), the
/// process and its HTTP port.
fn node_following(fake: &FakeControlPlane) -> (tempfile::TempDir, Proc, u16) {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let node = Proc::start(
        &strings(&[
            "dataplane",
            "--data-dir",
            dir.path().join("node").to_str().expect("path"),
            "--http-addr",
            &format!("127.0.0.1:{port}"),
            "--mqtt-addr",
            "off",
            "--http-threads",
            "1",
            "--control-plane",
            &format!("http://127.0.0.1:{}", fake.port),
            "--cluster-secret",
            SECRET,
        ]),
        dir.path().join("node.log"),
        format!("http://127.0.0.1:{port}/healthz"),
    );
    (dir, node, port)
}

/// Status of one event sent to workspace `plant` on the node at `port`.
fn plant_status(port: u16, token: &str) -> u16 {
    post(
        &format!("http://127.0.0.1:{port}/v1/ingest/plant/telemetry"),
        &[
            ("authorization", &format!("Bearer {token}")),
            ("content-type", "application/json"),
        ],
        br#"{"t": 1}"#,
    )
    .status
}

fn workspace(slug: &str, token_hash: &str) -> Value {
    json!({
        "id": "0190f3a0-0000-7000-8000-000000000001", "slug": slug, "name": slug, "enabled": true,
        "sources": [{"id": "0190f3a0-0000-7000-8000-00000000aaaa", "slug": "telemetry"}],
        "tokens": [{"id": "0190f3a0-0000-7000-8000-00000000bbbb", "sha256": token_hash, "scopes": ["ingest"]}],
    })
}

fn snapshot_message(version: u64, workspaces: Vec<Value>) -> Value {
    let snapshot: ConfigSnapshot =
        serde_json::from_value(json!({"version": version, "workspaces": workspaces}))
            .expect("snapshot");
    json!({"type": "snapshot", "hash": snapshot.content_hash(), "snapshot": snapshot})
}

#[test]
fn a_corrupt_delta_is_refused_and_a_gap_forces_a_full_snapshot() {
    let first = format!("sluice_{}", "A".repeat(40));
    let second = format!("sluice_{}", "B".repeat(40));
    let corrupt = json!({"type": "delta", "delta": {
        "from": 1, "to": 2, "remove": [], "hash": "0".repeat(64),
        "upsert": [workspace("Not A Slug", &token::hash_hex(&second))],
    }});
    let gap = json!({"type": "delta", "delta": {
        "from": 5, "to": 6, "upsert": [], "remove": [], "hash": "0".repeat(64),
    }});
    let fake = FakeControlPlane::start(vec![
        vec![
            snapshot_message(1, vec![workspace("plant", &token::hash_hex(&first))]),
            corrupt,
            Value::Null,
            gap,
        ],
        vec![snapshot_message(
            7,
            vec![workspace("plant", &token::hash_hex(&second))],
        )],
    ]);
    let (_dir, _node, port) = node_following(&fake);
    let ingest = |token: &str| plant_status(port, token);
    let acks = || fake.acks.lock().expect("lock").clone();
    // The corrupt delta is refused and the node keeps serving version 1.
    assert!(
        wait_for(Duration::from_secs(10), || acks().len() >= 2),
        "acks: {:?}",
        acks()
    );
    assert_eq!(
        ingest(&first),
        202,
        "the last good configuration still serves"
    );
    assert_eq!(ingest(&second), 401);
    assert!(
        wait_for(Duration::from_secs(10), || acks().len() >= 3),
        "acks: {:?}",
        acks()
    );
    let seen = acks();
    assert_eq!(
        (seen[0]["version"].as_u64(), seen[0]["ok"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(
        (seen[1]["version"].as_u64(), seen[1]["ok"].as_bool()),
        (Some(2), Some(false))
    );
    assert!(
        seen[1]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("not a valid slug"),
        "{seen:?}"
    );
    assert_eq!(
        (seen[2]["version"].as_u64(), seen[2]["ok"].as_bool()),
        (Some(6), Some(false))
    );
    assert!(
        seen[2]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("does not follow"),
        "{seen:?}"
    );

    // The gap made the node ask again for a full snapshot (empty hash), which replaced v1.
    assert!(wait_for(Duration::from_secs(10), || ingest(&second) == 202));
    assert_eq!(ingest(&first), 401);
    let requests = fake.requests.lock().expect("lock").clone();
    let streams: Vec<&String> = requests
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/cluster/config-stream"))
        .collect();
    assert!(streams.len() >= 2, "{requests:?}");
    assert!(streams[1].contains("version=1&hash= "), "{requests:?}");
    // The ACK follows the install (it is sent after the node serves v7), so it is waited for.
    assert!(
        wait_for(Duration::from_secs(10), || acks()
            .iter()
            .any(|a| a["version"] == 7 && a["ok"] == true)),
        "acks: {:?}",
        acks()
    );
}

#[test]
fn a_node_that_missed_a_version_notices_from_the_heartbeats_and_catches_up() {
    let first = format!("sluice_{}", "C".repeat(40));
    let second = format!("sluice_{}", "D".repeat(40));
    let v1 = snapshot_message(1, vec![workspace("plant", &token::hash_hex(&first))]);
    let v1_hash = v1["hash"].as_str().expect("hash").to_owned();
    let ahead = json!({"type": "heartbeat", "version": 3, "hash": "0".repeat(64)});
    let fake = FakeControlPlane::start(vec![
        // Version 3 is never sent on this connection: only heartbeats announce it.
        vec![v1, ahead.clone(), ahead],
        vec![snapshot_message(
            3,
            vec![workspace("plant", &token::hash_hex(&second))],
        )],
    ]);
    let (_dir, _node, port) = node_following(&fake);
    let status = |token: &str| plant_status(port, token);
    assert!(wait_for(Duration::from_secs(10), || status(&second) == 202));
    assert_eq!(status(&first), 401);
    let requests = fake.requests.lock().expect("lock").clone();
    let streams: Vec<&String> = requests
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/cluster/config-stream"))
        .collect();
    assert!(
        streams.len() >= 2 && streams[1].contains(&format!("version=1&hash={v1_hash}")),
        "it reconnected from the version it held: {requests:?}"
    );
}

#[test]
fn a_control_plane_refuses_to_start_with_a_short_cluster_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["controlplane", "--data-dir"])
        .arg(dir.path())
        .args(["--api-addr", "127.0.0.1:0", "--cluster-secret", "short"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at least 16 characters"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until every node acknowledged the control plane's current version and none refused
/// one; returns that version.
/// Waits until the control plane's version is above `above` (a change just made may reach
/// the version a moment after its API answer) and every node acknowledged it; returns it.
fn acknowledged_everywhere(cluster: &Cluster, nodes: usize, above: u64, what: &str) -> u64 {
    let mut view = Value::Null;
    let converged = wait_for(Duration::from_secs(10), || {
        view = cluster
            .api
            .get("/api/v1/operator/nodes", &cluster.operator)
            .json();
        let version = view["version"].as_u64();
        let all = view["nodes"].as_array().cloned().unwrap_or_default();
        version.is_some_and(|v| v > above)
            && all.len() == nodes
            && all
                .iter()
                .all(|n| n["acked_version"].as_u64() == version && n["last_nack"].is_null())
    });
    assert!(converged, "{what}: {view}");
    view["version"].as_u64().expect("version")
}

/// The first line of the configuration stream to a new node (a full snapshot).
fn first_stream_line(base: &str, node: &str) -> Value {
    let mut resp = common::agent()
        .get(format!("{base}/api/v1/cluster/config-stream?node={node}"))
        .header("authorization", format!("Bearer {SECRET}"))
        .call()
        .expect("config stream");
    assert_eq!(resp.status(), 200);
    let mut line = String::new();
    BufReader::new(resp.body_mut().as_reader())
        .read_line(&mut line)
        .expect("a first line");
    serde_json::from_str(&line).expect("a JSON line")
}

#[test]
fn schema_and_tag_rule_changes_are_new_versions_every_node_acknowledges() {
    let cluster = Cluster::start(2);
    let outbox = cluster.dir.path().join("cp/outbox");
    let ada = verified_user(&cluster.api, &outbox, "ada@example.com");
    let a = cluster.api.post(
        "/api/v1/workspaces",
        Some(&ada.token),
        json!({"name": "Plant", "slug": "plant"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let a = cluster.api.post(
        "/api/v1/workspaces/plant/sources",
        Some(&ada.token),
        json!({"slug": "telemetry"}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let mut version = acknowledged_everywhere(&cluster, 2, 0, "the source");

    let schema = json!({"type": "object", "properties": {"temp_c": {"type": "number"}}});
    let a = cluster.api.patch(
        "/api/v1/workspaces/plant/sources/telemetry",
        &ada.token,
        json!({"schema": schema, "on_invalid": "quarantine"}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let next = acknowledged_everywhere(&cluster, 2, version, "the schema");
    assert!(next > version, "a schema change is a new version");
    version = next;

    let rules = "/api/v1/workspaces/plant/tag-rules";
    let mut ids = Vec::new();
    for body in [
        json!({"name": "site", "extract": {"from": "topic", "pattern": "ingest/{source}/{site}/#"}}),
        json!({"name": "line", "sources": ["telemetry"],
               "extract": {"from": "header", "name": "X-Line", "tag": "line", "device_id": true}}),
    ] {
        let a = cluster.api.post(rules, Some(&ada.token), body);
        assert_eq!(a.status, 201, "{}", a.body);
        ids.push(a.json()["id"].clone());
        let next = acknowledged_everywhere(&cluster, 2, version, "a new rule");
        assert!(next > version, "a new rule is a new version");
        version = next;
    }
    let mut listed: Vec<Value> = cluster.api.get(rules, &ada.token).json()["rules"]
        .as_array()
        .cloned()
        .expect("rules");
    listed.reverse();
    let a = cluster.api.put(rules, &ada.token, json!({"rules": listed}));
    assert_eq!(a.status, 200, "{}", a.body);
    let next = acknowledged_everywhere(&cluster, 2, version, "the reorder");
    assert!(next > version, "a reorder is a new version");

    // What the nodes acknowledged is what the stream carries: a node that connects now gets
    // it whole, with the rules in their new order.
    let first = first_stream_line(&cluster.api.base, "late-node");
    assert_eq!(first["type"], "snapshot", "{first}");
    let snapshot = first["snapshot"].clone();
    let plant = snapshot["workspaces"]
        .as_array()
        .and_then(|all| all.iter().find(|w| w["slug"] == "plant"))
        .cloned()
        .unwrap_or_else(|| panic!("plant in {snapshot}"));
    assert_eq!(plant["sources"][0]["schema"], schema);
    assert_eq!(plant["sources"][0]["on_invalid"], "quarantine");
    let pushed: Vec<Value> = plant["tag_rules"]
        .as_array()
        .map(|r| r.iter().map(|r| r["id"].clone()).collect())
        .unwrap_or_default();
    ids.reverse();
    assert_eq!(pushed, ids);
    for n in 0..2 {
        assert_eq!(
            cluster.readyz(n)["config_version"].as_u64(),
            Some(next),
            "node {n}"
        );
    }
}

/// A source schema the node cannot compile (the control plane refuses such schemas when they
/// are saved; a scripted one sends them anyway) is NACKed with the reason, in a delta and in a
/// snapshot alike, and the node keeps enforcing its last good schema.
#[test]
fn a_schema_that_does_not_compile_is_nacked_and_the_last_good_one_keeps_serving() {
    let secret = format!("sluice_{}", "C".repeat(40));
    let with_schema = |temp_type: &str| {
        let mut ws = workspace("plant", &token::hash_hex(&secret));
        ws["sources"][0]["schema"] = json!({
            "type": "object",
            "properties": {"t": {"type": temp_type}},
            "required": ["t"]
        });
        ws
    };
    let broken = json!({"type": "delta", "delta": {
        "from": 1, "to": 2, "remove": [], "hash": "0".repeat(64),
        "upsert": [with_schema("nope")],
    }});
    let fake = FakeControlPlane::start(vec![vec![
        snapshot_message(1, vec![with_schema("integer")]),
        broken,
        snapshot_message(3, vec![with_schema("nope")]),
    ]]);
    let (_dir, _node, port) = node_following(&fake);
    let acks = || fake.acks.lock().expect("lock").clone();
    assert!(
        wait_for(Duration::from_secs(15), || acks().len() >= 3),
        "acks: {:?}",
        acks()
    );
    let seen = acks();
    let outcome = |i: usize| (seen[i]["version"].as_u64(), seen[i]["ok"].as_bool());
    assert_eq!(outcome(0), (Some(1), Some(true)));
    assert_eq!(outcome(1), (Some(2), Some(false)));
    assert_eq!(outcome(2), (Some(3), Some(false)));
    for i in [1, 2] {
        let reason = seen[i]["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("does not compile") && reason.contains("telemetry"),
            "{seen:?}"
        );
    }
    // Version 1's schema still decides: {"t": 1} passes, {"t": "x"} is refused.
    assert_eq!(plant_status(port, &secret), 202);
    let refused = post(
        &format!("http://127.0.0.1:{port}/v1/ingest/plant/telemetry"),
        &[("authorization", &format!("Bearer {secret}"))],
        br#"{"t": "x"}"#,
    );
    assert_eq!(
        (refused.status, refused.problem().as_str()),
        (422, "invalid-events"),
        "{}",
        refused.body
    );
}
