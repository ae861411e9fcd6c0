//! Slow, silent and surplus clients cannot pin the node: the connection limit closes extra
//! connections at once, and silent or trickling clients are dropped after their timeouts. A
//! request with too many headers is refused.
//! Settings come from a TOML file, which also covers that configuration path.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{post, Sluice};

/// Seconds until the server closes `stream` (reads until EOF or reset).
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).expect("read timeout");
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(started.elapsed())
            }
            Err(_) => return None,
        }
    }
}

#[test]
fn connection_limit_and_timeouts_shed_idle_slow_and_surplus_clients() {
    shed_idle_slow_and_surplus_clients("auto");
}

/// The same limits on the epoll driver, which enforces the idle timeout in its own adapter.
#[test]
fn connection_limit_and_timeouts_shed_idle_slow_and_surplus_clients_on_epoll() {
    shed_idle_slow_and_surplus_clients("epoll");
}

fn shed_idle_slow_and_surplus_clients(io_driver: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!("[http]\nthreads = 1\nio_driver = \"{io_driver}\"\nconnections_max = 4\nheader_read_timeout_ms = 500\nidle_timeout_ms = 1000\n"),
    )
    .expect("config");
    let sluice = Sluice::start(
        &dir.path().join("data"),
        &["--config", config.to_str().expect("utf8")],
    );
    let addr = format!("127.0.0.1:{}", sluice.port);

    // Four silent connections fill the limit; a fifth is closed at once.
    let mut silent: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut surplus = TcpStream::connect(&addr).expect("the kernel accepts");
    let closed = closed_within(&mut surplus, Duration::from_millis(500));
    assert!(
        closed.is_some(),
        "a connection over the limit was kept open"
    );

    // Silent connections are dropped by the header-read or idle timeout, freeing the slots.
    for conn in &mut silent {
        let closed = closed_within(conn, Duration::from_secs(3));
        assert!(closed.is_some(), "a silent connection was kept open");
    }

    // A client trickling its request head is cut off too.
    let mut slow = TcpStream::connect(&addr).expect("connect");
    slow.write_all(b"POST /v1/ingest/default/telemetry HTTP/1.1\r\nHost: x\r\n")
        .expect("partial head");
    let closed = closed_within(&mut slow, Duration::from_secs(3));
    assert!(closed.is_some(), "a slowloris client was kept open");

    // The node still serves normal clients.
    let boot = sluice.bootstrap();
    let auth = format!("Bearer {}", boot["token"].as_str().expect("token"));
    let answer = post(
        boot["http_url"].as_str().expect("url"),
        &[("authorization", &auth)],
        b"{\"ok\":true}",
    );
    assert_eq!(answer.status, 202, "{answer:?}");

    // At most 100 headers a request (docs/http-ingest.md): 90 of our own plus the client's
    // few pass, 120 get 431 from hyper.
    let with_headers = |n: usize| {
        let names: Vec<(String, String)> = (0..n)
            .map(|i| (format!("x-extra-{i}"), "v".to_owned()))
            .collect();
        let mut headers: Vec<(&str, &str)> = names
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        headers.push(("authorization", &auth));
        post(
            boot["http_url"].as_str().expect("url"),
            &headers,
            b"{\"ok\":true}",
        )
    };
    assert_eq!(with_headers(90).status, 202);
    assert_eq!(with_headers(120).status, 431);
    let metrics = sluice.metrics();
    assert!(
        metrics.contains("sluice_http_connections_refused_total 1"),
        "{metrics}"
    );
    // The one thread, on the driver asked for (auto takes io_uring where the kernel allows it).
    let on = match io_driver {
        "epoll" => "epoll",
        _ if metrics.contains(r#"io_driver="epoll""#) => "epoll",
        _ => "io_uring",
    };
    assert!(
        metrics.contains(&format!("sluice_http_threads{{io_driver=\"{on}\"}} 1")),
        "{metrics}"
    );
}
