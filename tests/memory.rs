//! Request bodies hold the node's memory budget (`http.inflight_bytes_max`) only as they
//! arrive and inflate: slow senders cannot spend it for everyone else, and small compressed
//! bodies cannot inflate past it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{post, Sluice};

/// The node's peak resident memory so far, in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

fn start(dir: &std::path::Path, toml: &str) -> (Sluice, String) {
    let config = dir.join("sluice.toml");
    std::fs::write(&config, toml).expect("config");
    let sluice = Sluice::start(
        &dir.join("data"),
        &["--config", config.to_str().expect("utf8")],
    );
    let token = sluice.bootstrap()["token"]
        .as_str()
        .expect("token")
        .to_owned();
    (sluice, token)
}

/// Eight requests declare 8 MiB each (the whole 64 MiB budget) and send a byte: under an
/// up-front reservation every other request got `503 overloaded`. Now they hold a byte each,
/// others go through, and the trickling ones are cut off for their rate.
#[test]
fn slow_bodies_cannot_spend_the_budget_of_everyone_else() {
    slow_bodies_are_cut_off_by_their_rate("auto");
}

/// The same minimum body rate on the epoll driver.
#[test]
fn slow_bodies_cannot_spend_the_budget_of_everyone_else_on_epoll() {
    slow_bodies_are_cut_off_by_their_rate("epoll");
}

fn slow_bodies_are_cut_off_by_their_rate(io_driver: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sluice, token) = start(
        dir.path(),
        &format!("[http]\nio_driver = \"{io_driver}\"\ninflight_bytes_max = 67108864\n"),
    );
    let addr = format!("127.0.0.1:{}", sluice.port);
    let mut slow: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).expect("connect");
            write!(
                s,
                "POST /v1/ingest/default/telemetry HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/x-ndjson\r\nContent-Length: 8388608\r\n\r\n{{"
            )
            .expect("send head");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let url = sluice.ingest_url("default", "telemetry");
    let auth = format!("Bearer {token}");
    for i in 0..20 {
        let a = post(
            &url,
            &[("authorization", &auth)],
            format!(r#"{{"i":{i}}}"#).as_bytes(),
        );
        assert_eq!(
            a.status, 202,
            "request {i} while slow bodies trickle: {}",
            a.body
        );
    }
    // Below the minimum rate (1 KiB/s after 5 s) a body is refused with 408 and its bytes
    // given back.
    let started = Instant::now();
    for conn in &mut slow {
        conn.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        let mut answer = vec![0u8; 512];
        let n = conn.read(&mut answer).expect("an answer");
        let head = String::from_utf8_lossy(&answer[..n]).into_owned();
        assert!(head.starts_with("HTTP/1.1 408"), "{head}");
        assert!(head.contains("body-timeout"), "{head}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "cut off by the rate, not the 30 s body timeout: {:?}",
        started.elapsed()
    );
}

/// Twelve 16 KiB gzip bodies that each inflate to 16 MiB, all at once, against a 48 MiB
/// budget: some are refused with `503 overloaded`, the rest taken, and the node's memory
/// grows by about the budget, not by 12 × 16 MiB.
#[test]
fn compressed_bodies_inflate_only_within_the_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sluice, token) = start(
        dir.path(),
        "[http]\ninflight_bytes_max = 50331648\ndecoded_body_bytes_max = 16777216\n",
    );
    let bomb = {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![b' '; 16 << 20]).expect("gzip");
        gz.finish().expect("gzip")
    };
    let pid = sluice.child.id();
    let before = peak_rss(pid);
    let url = sluice.ingest_url("default", "telemetry");
    let auth = format!("Bearer {token}");
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let sends: Vec<_> = (0..12)
            .map(|_| {
                scope.spawn(|| {
                    post(
                        &url,
                        &[("authorization", &auth), ("content-encoding", "gzip")],
                        &bomb,
                    )
                    .status
                })
            })
            .collect();
        sends
            .into_iter()
            .map(|s| s.join().expect("sender"))
            .collect()
    });
    assert!(
        statuses.iter().all(|s| *s == 202 || *s == 503),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&503),
        "the budget refused some: {statuses:?}"
    );
    assert!(statuses.contains(&202), "and took others: {statuses:?}");
    let grown = peak_rss(pid).saturating_sub(before);
    assert!(
        grown < (48 + 40) << 20,
        "peak memory grew by {} MiB for a 48 MiB budget",
        grown >> 20
    );
}
