//! `sluice up` is one process: the control-plane API, HTTP and MQTT ingest, the WAL and the
//! uploads share its file descriptors. No listener may take them all (issue 16): the API caps
//! its connections and closes idle ones, every listener's cap fits under the process's limit
//! with a reserve for files, and ingest goes on while any listener is flooded.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::mqtt::{publish_qos1, raw_connect, read_packet};
use common::{agent, duckdb, free_port, post, wait_for, Sluice};
use serde_json::{json, Value};

/// A sluice.toml with `controlplane` as its `[controlplane]` table.
fn config_file(dir: &Path, controlplane: &str) -> String {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, format!("[controlplane]\n{controlplane}")).expect("config");
    path.to_str().expect("path").to_owned()
}

/// The test process opens thousands of sockets of its own: it gets its soft limit raised like
/// sluice does, so that the test does not fail for want of descriptors itself.
fn raise_own_descriptor_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            },
        );
    }
}

/// `count` connections to `addr` that send nothing; those that cannot connect within a second
/// (a listener that stopped accepting, its backlog full) are left out.
fn idle_connections(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    // 5 s: with the listen backlog full for a moment (the accept loop is answering refusals
    // while other tests load the machine), a SYN is retransmitted after 1 s.
    (0..count)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok())
        .collect()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// What a connection has received so far without waiting: `None` while it is open and silent,
/// else its bytes (empty once closed without an answer).
fn received(stream: &mut TcpStream) -> Option<Vec<u8>> {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let answer = loop {
        match stream.read(&mut buf) {
            Ok(0) => break Some(bytes),
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                break (!bytes.is_empty()).then_some(bytes)
            }
            Err(_) => break Some(bytes),
        }
    };
    stream.set_nonblocking(false).expect("blocking");
    answer
}

/// Waits until `refusals` of the idle API connections have been answered (or 5 s passed),
/// then splits them into those still open and silent and those answered `503`; panics on any
/// other answer.
fn open_and_refused(streams: &mut [TcpStream], refusals: usize) -> (Vec<usize>, Vec<usize>) {
    let mut answers: Vec<Option<Vec<u8>>> = vec![None; streams.len()];
    wait_for(Duration::from_secs(5), || {
        for (stream, answer) in streams.iter_mut().zip(&mut answers) {
            if answer.is_none() {
                *answer = received(stream);
            }
        }
        answers.iter().flatten().count() >= refusals
    });
    let (mut open, mut refused) = (Vec::new(), Vec::new());
    for (i, answer) in answers.into_iter().enumerate() {
        let Some(bytes) = answer else {
            open.push(i);
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.starts_with("HTTP/1.1 503 ")
                && text.contains("retry-after: 1")
                && text.contains("urn:sluice:problem:overloaded"),
            "a connection over the cap is told why: {text:?}"
        );
        refused.push(i);
    }
    (open, refused)
}

/// One HTTP/1.1 exchange on a kept-alive connection: the status and the body.
fn exchange(stream: &mut TcpStream, request: &[u8]) -> (u16, String) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request).expect("request written");
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut buf).expect("response read");
        assert!(n > 0, "connection closed before the response");
        bytes.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while bytes.len() < head_end + length {
        let n = stream.read(&mut buf).expect("body read");
        assert!(n > 0, "connection closed within the body");
        bytes.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&bytes[head_end..head_end + length]).into_owned();
    (status, body)
}

fn ingest_request(bootstrap: &Value, device: &str, event: &Value) -> Vec<u8> {
    let body = event.to_string();
    format!(
        "POST /v1/ingest/{}/{} HTTP/1.1\r\nHost: sluice\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nX-Device-Id: {device}\r\nContent-Length: {}\r\n\r\n{body}",
        bootstrap["workspace"].as_str().expect("workspace"),
        bootstrap["source"].as_str().expect("source"),
        bootstrap["token"].as_str().expect("token"),
        body.len()
    )
    .into_bytes()
}

/// An MQTT 3.1.1 connection of the bootstrap workspace (CONNACK checked).
fn mqtt_connection(port: u16, bootstrap: &Value, device: &str) -> TcpStream {
    let (stream, connack) = raw_connect(
        port,
        device,
        bootstrap["workspace"].as_str().expect("workspace"),
        bootstrap["token"].as_str().expect("token"),
    );
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
    stream
}

/// Publishes one event at QoS 1 and waits for its PUBACK.
fn publish(stream: &mut TcpStream, bootstrap: &Value, event: &Value) {
    let topic = format!("ingest/{}", bootstrap["source"].as_str().expect("source"));
    stream
        .write_all(&publish_qos1(&topic, 1, event.to_string().as_bytes()))
        .expect("PUBLISH written");
    let (first, body) = read_packet(stream).expect("PUBACK");
    assert_eq!((first, body), (0x40, vec![0, 1]), "PUBACK of packet 1");
}

/// Waits until DuckDB reads `count` events from the lake; returns their devices, sorted.
fn lake_devices(lake: &Path, count: usize) -> Vec<Value> {
    let query = || {
        duckdb(lake, "SELECT device_id FROM {lake} ORDER BY device_id")
            .into_iter()
            .map(|mut row| row.remove(0))
            .collect::<Vec<_>>()
    };
    let mut devices = Vec::new();
    let landed = wait_for(Duration::from_secs(30), || {
        devices = if common::parquet_files(lake) > 0 {
            query()
        } else {
            Vec::new()
        };
        devices.len() >= count
    });
    assert!(landed, "{count} events in Parquet, found {devices:?}");
    devices
}

/// The log without its colours.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn a_full_api_refuses_more_connections_while_http_mqtt_and_uploads_go_on() {
    raise_own_descriptor_limit();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(
        dir.path(),
        "connections_max = 50\nidle_timeout_ms = 60000\n",
    );
    let sluice = Sluice::start(
        &dir.path().join("data"),
        &["--config", &config, "--batch-max-age-ms", "300"],
    );
    let bootstrap = sluice.bootstrap();
    // The health checks of the start have closed their connections.
    std::thread::sleep(Duration::from_millis(500));

    let mut api = idle_connections(addr(sluice.api_port), 150);
    assert_eq!(api.len(), 150, "every connection is accepted by the kernel");
    let (open, refused) = open_and_refused(&mut api, 100);
    assert_eq!(
        (open.len(), refused.len()),
        (50, 100),
        "the cap holds 50 open, the other 100 are answered 503 and closed"
    );

    // With the API full, the data plane works as before.
    let health = agent()
        .get(format!("{}/healthz", sluice.base_url()))
        .call()
        .expect("data-plane /healthz");
    assert_eq!(health.status(), 200);
    let token = format!("Bearer {}", bootstrap["token"].as_str().expect("token"));
    let answer = post(
        bootstrap["http_url"].as_str().expect("http_url"),
        &[
            ("Authorization", &token),
            ("Content-Type", "application/json"),
            ("X-Device-Id", "over-http"),
        ],
        br#"{"temp_c":21.5}"#,
    );
    assert_eq!(answer.status, 202, "HTTP ingest: {}", answer.body);
    let mut mqtt = mqtt_connection(sluice.mqtt_port, &bootstrap, "over-mqtt");
    publish(&mut mqtt, &bootstrap, &json!({"temp_c": 22.5}));
    assert_eq!(
        lake_devices(&sluice.data_dir.join("lake"), 2),
        vec![json!("over-http"), json!("over-mqtt")],
        "both events are uploaded and read back"
    );

    // The API was full all along: its 50 stayed open (the idle timeout is a minute) and one
    // more is still refused.
    for &i in &open {
        assert_eq!(received(&mut api[i]), None, "connection {i} is still open");
    }
    let mut one_more = idle_connections(addr(sluice.api_port), 1);
    assert_eq!(
        open_and_refused(&mut one_more, 1).1,
        vec![0],
        "one more is refused"
    );

    // Closing them gives the room back.
    drop(api);
    let api_health = format!("{}/healthz", sluice.api_url());
    assert!(
        wait_for(Duration::from_secs(5), || agent()
            .get(&api_health)
            .call()
            .is_ok_and(|r| r.status() == 200)),
        "the API answers once connections close"
    );
}

#[test]
fn idle_connections_and_slow_heads_are_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(dir.path(), "connections_max = 20\nidle_timeout_ms = 1000\n");
    let sluice = Sluice::start(&dir.path().join("data"), &["--config", &config]);
    std::thread::sleep(Duration::from_millis(500));
    let api = addr(sluice.api_port);
    let started = Instant::now();
    // Silent from the start.
    let mut streams = idle_connections(api, 8);
    // A head sent byte by byte, never finished.
    for _ in 0..6 {
        let mut s = TcpStream::connect(api).expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: sluice\r\nX-Slow: ")
            .expect("part of a head");
        streams.push(s);
    }
    // Idle after one request (keep-alive).
    for _ in 0..6 {
        let mut s = TcpStream::connect(api).expect("connect");
        let (status, _) = exchange(&mut s, b"GET /healthz HTTP/1.1\r\nHost: sluice\r\n\r\n");
        assert_eq!(status, 200);
        streams.push(s);
    }
    assert_eq!(streams.len(), 20);
    let mut over = idle_connections(api, 1);
    assert_eq!(
        open_and_refused(&mut over, 1).1,
        vec![0],
        "the 21st is refused while 20 are open"
    );

    // Trickle the slow heads; the timeout counts from the start of the head, not the last
    // byte.
    let trickle_until = started + Duration::from_millis(700);
    while Instant::now() < trickle_until {
        for s in &mut streams[8..14] {
            let _ = s.write_all(b"x");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, s) in streams.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut rest = Vec::new();
        // Whatever comes (an error answer to the slow head at most), then the close.
        let _ = s.read_to_end(&mut rest);
        let after = started.elapsed();
        assert!(
            after < Duration::from_secs(5),
            "connection {i} closed after {after:?}, the idle timeout is 1 s"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the timeout"
    );
    let answer = agent()
        .get(format!("{}/healthz", sluice.api_url()))
        .call()
        .expect("API /healthz");
    assert_eq!(
        answer.status(),
        200,
        "closed connections give their room back"
    );
}

/// `sluice up` under a descriptor limit set by the shell that starts it: hard 700, soft 400.
struct Limited {
    child: Child,
    data_dir: PathBuf,
    log: PathBuf,
    http_port: u16,
    api_port: u16,
    mqtt_port: u16,
}

impl Limited {
    fn start(dir: &Path) -> Limited {
        let data_dir = dir.join("data");
        let log = dir.join("sluice.log");
        let (http_port, api_port, mqtt_port) = (free_port(), free_port(), free_port());
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"ulimit -Sn 400 && ulimit -Hn 700 && exec "$0" "$@""#)
            .arg(env!("CARGO_BIN_EXE_sluice"))
            .args(["up", "--data-dir"])
            .arg(&data_dir)
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{http_port}"))
            .arg("--api-addr")
            .arg(format!("127.0.0.1:{api_port}"))
            .arg("--mqtt-addr")
            .arg(format!("127.0.0.1:{mqtt_port}"))
            .args(["--batch-max-age-ms", "300"])
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn sluice under sh");
        let mut limited = Limited {
            child,
            data_dir,
            log,
            http_port,
            api_port,
            mqtt_port,
        };
        let healthy = wait_for(Duration::from_secs(30), || {
            if let Ok(Some(status)) = limited.child.try_wait() {
                panic!("sluice exited during start ({status}): {}", limited.log());
            }
            [http_port, api_port].iter().all(|port| {
                agent()
                    .get(format!("http://127.0.0.1:{port}/healthz"))
                    .call()
                    .is_ok_and(|r| r.status() == 200)
            })
        });
        assert!(healthy, "not healthy: {}", limited.log());
        limited
    }

    fn log(&self) -> String {
        plain(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn under_a_low_descriptor_limit_flooded_listeners_leave_ingest_and_uploads_working() {
    raise_own_descriptor_limit();
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Limited::start(dir.path());
    let log = sluice.log();
    assert!(
        log.contains("raised the soft limit to the hard limit limit=700 was=400 hard=700"),
        "the start logs the limit it obtained: {log}"
    );
    assert!(
        log.contains("lowered controlplane.connections_max 2048 -> "),
        "the default caps do not fit 700 descriptors and are lowered, with a warning: {log}"
    );
    let bootstrap: Value = common::read_bootstrap(&sluice.data_dir);

    // A client of each protocol connected before the floods.
    let mut http = TcpStream::connect(addr(sluice.http_port)).expect("HTTP connection");
    let (status, _) = exchange(&mut http, b"GET /healthz HTTP/1.1\r\nHost: sluice\r\n\r\n");
    assert_eq!(status, 200);
    let mut mqtt = mqtt_connection(sluice.mqtt_port, &bootstrap, "before-flood");

    // Each flood alone is more connections than the process may open (the API's), or more
    // than its listener's share of them.
    let api_flood = idle_connections(addr(sluice.api_port), 900);
    let http_flood = idle_connections(addr(sluice.http_port), 900);
    let mqtt_flood = idle_connections(addr(sluice.mqtt_port), 300);
    assert!(api_flood.len() >= 800 && http_flood.len() >= 800 && mqtt_flood.len() >= 250);

    let (status, _) = exchange(&mut http, b"GET /healthz HTTP/1.1\r\nHost: sluice\r\n\r\n");
    assert_eq!(status, 200, "data-plane /healthz during the floods");
    let (status, body) = exchange(
        &mut http,
        &ingest_request(&bootstrap, "over-http", &json!({"temp_c": 21.5})),
    );
    assert_eq!(status, 202, "HTTP ingest during the floods: {body}");
    publish(&mut mqtt, &bootstrap, &json!({"temp_c": 22.5}));
    assert_eq!(
        lake_devices(&sluice.data_dir.join("lake"), 2),
        vec![json!("before-flood"), json!("over-http")],
        "the WAL took both events and the lake got their Parquet file"
    );
    let log = sluice.log();
    assert!(
        !log.contains("Too many open files"),
        "nothing ran out of descriptors: {log}"
    );
    drop((api_flood, http_flood, mqtt_flood));
}
