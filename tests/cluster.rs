//! A cluster on loopback, as deploy/ runs it but with real processes instead of containers: a
//! control plane, three data-plane nodes following it, s3s-fs as the shared S3 lake, and
//! HAProxy (`mode tcp`, round robin, health checks on `/readyz`) in front of HTTP and MQTT.
//! Under a bounded load over HTTP and MQTT 5 QoS 1 through the balancer, one node is killed
//! with -9 and restarted on its data dir, and another is drained with SIGTERM and never comes
//! back. DuckDB over the lake then finds every acknowledged event exactly once.
//!
//! Every event carries an id of its own and is sent once: a request without an answer is not
//! sent again. So any event found twice is a duplicate of Sluice's making, and an
//! acknowledged event that is missing was lost: by the killed node (its WAL, shipped after
//! the restart) or by the drained node (which must ship all of its WAL before it exits).

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::controlplane::{verified_user, Api};
use common::mqtt::{connect_raw, publish_raw, read_packet};
use common::{agent, duckdb, free_port, wait_for, Proc};
use serde_json::json;

const SECRET: &str = "cluster-test-secret";
const S3_KEY: &str = "sluice-test";
const S3_SECRET: &str = "sluice-test-secret";

fn s3s_fs() -> PathBuf {
    match std::env::var_os("SLUICE_TEST_S3S_FS") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME").expect("HOME");
            Path::new(&home).join(".cache/sluice/tools/bin/s3s-fs")
        }
    }
}

/// A child process killed (by its PID, through `Child`) when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `sluice dataplane` with the S3 lake's credentials in its environment.
struct Node {
    child: Option<Child>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    http: u16,
    mqtt: u16,
}

impl Node {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sluice dataplane");
        self.child = Some(child);
        let url = format!("http://127.0.0.1:{}/healthz", self.http);
        assert!(
            wait_for(Duration::from_secs(30), || agent()
                .get(&url)
                .call()
                .is_ok_and(|r| r.status() == 200)),
            "node not up: {}",
            self.log_text()
        );
    }

    fn ready(&self) -> bool {
        agent()
            .get(format!("http://127.0.0.1:{}/readyz", self.http))
            .call()
            .is_ok_and(|r| r.status() == 200)
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM; returns the exit status and how long the node took.
    fn terminate(&mut self, within: Duration) -> (std::process::ExitStatus, Duration) {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return (status, started.elapsed());
            }
            if started.elapsed() > within {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no exit within {within:?}: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// HAProxy's configuration: both front ends round robin over the nodes, a node taken out
/// after one failed `/readyz` check (every 500 ms), a refused connection retried on another.
fn haproxy_cfg(http: u16, mqtt: u16, nodes: &[(u16, u16)]) -> String {
    let mut cfg = format!(
        "global\n    maxconn 4096\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n    retries 2\n    option redispatch 1\n\
         frontend http_ingest\n    bind 127.0.0.1:{http}\n    default_backend nodes_http\n\
         frontend mqtt\n    bind 127.0.0.1:{mqtt}\n    default_backend nodes_mqtt\n"
    );
    for (name, mqtt_side) in [("nodes_http", false), ("nodes_mqtt", true)] {
        cfg.push_str(&format!(
            "backend {name}\n    balance roundrobin\n    option httpchk GET /readyz\n    http-check expect status 200\n"
        ));
        for (i, (h, m)) in nodes.iter().enumerate() {
            let port = if mqtt_side { *m } else { *h };
            cfg.push_str(&format!(
                "    server n{i} 127.0.0.1:{port} check port {h} inter 500ms fall 1 rise 1\n"
            ));
        }
    }
    cfg
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    /// Ids of the events acknowledged (202, PUBACK 0x00).
    acked: Mutex<HashSet<String>>,
    sent: AtomicU64,
    /// MQTT 5 DISCONNECTs with 0x8B (server shutting down) received.
    shutting_down: AtomicU64,
}

/// One HTTP client sending single events through the balancer until `stop`.
fn http_load(url: String, token: String, thread: usize, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let auth = format!("Bearer {token}");
    let agent = agent();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let id = format!("h{thread}-{seq}");
        tally.sent.fetch_add(1, Ordering::Relaxed);
        let answer = agent
            .post(&url)
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .send(format!(r#"{{"id":"{id}"}}"#).as_bytes());
        match answer {
            Ok(resp) if resp.status() == 202 => {
                tally.acked.lock().expect("tally").insert(id);
            }
            // Refused, or cut by a node's end: not acknowledged, not sent again.
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// One MQTT 5 client publishing QoS 1 events one at a time (each waits for its PUBACK)
/// through the balancer until `stop`, reconnecting when its connection ends.
fn mqtt_load(
    port: u16,
    workspace: String,
    token: String,
    thread: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let mut seq = 0u64;
    let mut connection = 0;
    while !stop.load(Ordering::Relaxed) {
        connection += 1;
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let client = format!("m{thread}-c{connection}");
        if s.write_all(&connect_raw(5, &client, &workspace, &token, 30))
            .is_err()
        {
            continue;
        }
        match read_packet(&mut s) {
            Ok((0x20, body)) if body.get(1) == Some(&0) => {}
            _ => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        }
        while !stop.load(Ordering::Relaxed) {
            seq += 1;
            let id = format!("m{thread}-{seq}");
            let packet_id = (seq % 60_000 + 1) as u16;
            tally.sent.fetch_add(1, Ordering::Relaxed);
            let publish = publish_raw(
                0x32,
                "ingest/telemetry",
                Some(packet_id),
                Some(&[]),
                format!(r#"{{"id":"{id}"}}"#).as_bytes(),
            );
            if s.write_all(&publish).is_err() {
                break;
            }
            match read_packet(&mut s) {
                // PUBACK: packet id, then (absent or 0) the reason code.
                Ok((0x40, body))
                    if body.get(..2) == Some(&packet_id.to_be_bytes()[..])
                        && body.get(2).copied().unwrap_or(0) == 0 =>
                {
                    tally.acked.lock().expect("tally").insert(id);
                }
                Ok((0xE0, body)) => {
                    if body.first() == Some(&0x8B) {
                        tally.shutting_down.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                _ => break,
            }
        }
    }
}

#[test]
fn a_three_node_cluster_behind_haproxy_keeps_every_acknowledged_event_through_a_kill_and_a_drain() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");

    // The lake: s3s-fs keeps each object as a file under its root, which DuckDB reads.
    let root = dir.path().join("s3");
    std::fs::create_dir_all(root.join("lake-bucket")).expect("bucket dir");
    let s3_port = free_port();
    let _s3 = Guard(
        Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &s3_port.to_string()])
            .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs (scripts/test.sh installs it)"),
    );
    assert!(wait_for(Duration::from_secs(10), || TcpStream::connect((
        "127.0.0.1",
        s3_port
    ))
    .is_ok()));

    // The control plane, with a workspace, a source and a token.
    let api_port = free_port();
    let cp_dir = dir.path().join("cp");
    let _control = Proc::start(
        &[
            "controlplane",
            "--data-dir",
            cp_dir.to_str().expect("path"),
            "--api-addr",
            &format!("127.0.0.1:{api_port}"),
            "--cluster-secret",
            SECRET,
        ]
        .map(String::from),
        dir.path().join("cp.log"),
        format!("http://127.0.0.1:{api_port}/healthz"),
    );
    let api = Api::new(format!("http://127.0.0.1:{api_port}"));
    let ada = verified_user(&api, &cp_dir.join("outbox"), "ada@example.com");
    for (path, body) in [
        (
            "/api/v1/workspaces",
            json!({"name": "Plant", "slug": "plant"}),
        ),
        (
            "/api/v1/workspaces/plant/sources",
            json!({"slug": "telemetry"}),
        ),
    ] {
        let a = api.post(path, Some(&ada.token), body);
        assert_eq!(a.status, 201, "{}", a.body);
    }
    let a = api.post(
        "/api/v1/workspaces/plant/tokens",
        Some(&ada.token),
        json!({"name": "fleet", "scopes": ["ingest"]}),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let token = a.json()["secret"].as_str().expect("secret").to_owned();

    // Three nodes, each with its own data dir, all writing to the one lake.
    let env: Vec<(String, String)> = [
        ("AWS_ENDPOINT", format!("http://127.0.0.1:{s3_port}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", S3_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET.into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let grace = Duration::from_secs(15);
    let mut nodes: Vec<Node> = (0..3)
        .map(|n| {
            let (http, mqtt) = (free_port(), free_port());
            let args = [
                "dataplane",
                "--data-dir",
                dir.path().join(format!("node{n}")).to_str().expect("path"),
                "--http-addr",
                &format!("127.0.0.1:{http}"),
                "--mqtt-addr",
                &format!("127.0.0.1:{mqtt}"),
                "--http-threads",
                "1",
                "--mqtt-workers",
                "1",
                "--control-plane",
                &api.base,
                "--cluster-secret",
                SECRET,
                "--object-store",
                "s3://lake-bucket/lake",
                "--batch-max-age-ms",
                "1000",
                // Twice HAProxy's check interval: it sees the node unready before it closes.
                "--shutdown-drain-ms",
                "1000",
                "--shutdown-grace-ms",
                &grace.as_millis().to_string(),
            ]
            .map(String::from)
            .to_vec();
            let mut node = Node {
                child: None,
                args,
                env: env.clone(),
                log: dir.path().join(format!("node{n}.log")),
                http,
                mqtt,
            };
            node.start();
            node
        })
        .collect();
    assert!(
        wait_for(Duration::from_secs(15), || nodes.iter().all(Node::ready)),
        "every node configured and ready"
    );

    // HAProxy in front of both protocols.
    let (lb_http, lb_mqtt) = (free_port(), free_port());
    let ports: Vec<(u16, u16)> = nodes.iter().map(|n| (n.http, n.mqtt)).collect();
    let cfg_path = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg_path, haproxy_cfg(lb_http, lb_mqtt, &ports)).expect("haproxy.cfg");
    let _haproxy = Guard(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("haproxy.log")).expect("haproxy log"))
            .spawn()
            .expect("haproxy (scripts/test.sh installs it)"),
    );
    let url = format!("http://127.0.0.1:{lb_http}/v1/ingest/plant/telemetry");
    assert!(
        wait_for(Duration::from_secs(10), || agent()
            .post(&url)
            .header("authorization", &format!("Bearer {token}"))
            .header("content-type", "application/json")
            .send(br#"{"id":"probe"}"#)
            .is_ok_and(|r| r.status() == 202)),
        "the balancer passes ingest through: {}",
        std::fs::read_to_string(dir.path().join("haproxy.log")).unwrap_or_default()
    );

    // The load: three HTTP clients and three MQTT 5 clients.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut load = Vec::new();
    for thread in 0..3 {
        let (u, t, st, ta) = (url.clone(), token.clone(), stop.clone(), tally.clone());
        load.push(std::thread::spawn(move || http_load(u, t, thread, st, ta)));
        let (t, st, ta) = (token.clone(), stop.clone(), tally.clone());
        load.push(std::thread::spawn(move || {
            mqtt_load(lb_mqtt, "plant".into(), t, thread, st, ta)
        }));
    }
    let acked = |tally: &Tally| tally.acked.lock().expect("tally").len();
    std::thread::sleep(Duration::from_secs(2));
    let before_kill = acked(&tally);

    // (a) Node 0 is lost under load, and comes back on its data dir.
    nodes[0].kill9();
    std::thread::sleep(Duration::from_millis(1500));
    nodes[0].start();
    assert!(wait_for(Duration::from_secs(10), || nodes[0].ready()));
    std::thread::sleep(Duration::from_secs(2));
    let before_drain = acked(&tally);

    // (b) Node 2 is drained under load and never comes back: whatever it acknowledged must
    // be in the lake by the time it exits.
    let (status, took) = nodes[2].terminate(grace + Duration::from_secs(5));
    assert!(status.success(), "{status}: {}", nodes[2].log_text());
    assert!(took < grace, "drained in {took:?}");
    let drain_log = nodes[2].log_text();
    let tail = (drain_log.len().saturating_sub(3000)..)
        .find(|i| drain_log.is_char_boundary(*i))
        .unwrap_or(0);
    let drain_log = &drain_log[tail..];
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for thread in load {
        thread.join().expect("load thread");
    }
    let acked_ids = tally.acked.lock().expect("tally").clone();
    let sent = tally.sent.load(Ordering::Relaxed);

    // The two nodes left ship what they hold on SIGTERM.
    for n in [0, 1] {
        let (status, _) = nodes[n].terminate(grace + Duration::from_secs(5));
        assert!(status.success(), "node {n}: {}", nodes[n].log_text());
    }

    // DuckDB over the lake's files, as s3s-fs stores them.
    let lake = root.join("lake-bucket/lake");
    let rows = duckdb(
        &lake,
        "SELECT payload->>'id' AS id, count(*) FROM {lake} GROUP BY 1",
    );
    let mut found: HashMap<String, u64> = HashMap::new();
    for row in rows {
        found.insert(
            row[0].as_str().unwrap_or_default().to_owned(),
            row[1].as_u64().unwrap_or_default(),
        );
    }
    let twice: Vec<_> = found.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(twice.is_empty(), "events stored more than once: {twice:?}");
    let missing: Vec<_> = acked_ids
        .iter()
        .filter(|id| !found.contains_key(*id))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged events missing from the lake ({} of {}): {missing:?}\ndrained node's log: {drain_log}",
        acked_ids.iter().filter(|id| !found.contains_key(*id)).count(),
        acked_ids.len()
    );
    let unacked_stored = found.len().saturating_sub(acked_ids.len() + 1); // less the probe
    println!(
        "cluster: sent {sent}, acknowledged {} ({before_kill} before the kill, {before_drain} before the drain), \
         stored and not acknowledged {unacked_stored}, MQTT 5 DISCONNECT 0x8B received {}, node 2 drained in {took:?}, \
         whole test {:?}",
        acked_ids.len(),
        tally.shutting_down.load(Ordering::Relaxed),
        started.elapsed()
    );
    assert!(acked_ids.len() > 500, "the load ran: {}", acked_ids.len());
    // Round robin put one of the three MQTT clients on node 2 at the start.
    assert!(
        tally.shutting_down.load(Ordering::Relaxed) >= 1,
        "the drained node's MQTT 5 client was told 0x8B"
    );
}
