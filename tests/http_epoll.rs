//! HTTP ingest without io_uring. Under a seccomp filter that refuses the io_uring system
//! calls with EPERM, as Docker 25+ and containerd 2's default profiles do (installed without
//! privileges by `tests/no_io_uring.py`, then exec'd), `http.io_driver = "auto"` starts on
//! epoll with one warning and takes events into Parquet (and so it does where the calls
//! answer ENOSYS, as on a kernel without io_uring), while `io_uring` refuses to start and
//! says what to do. On epoll, keep-alive connections serve request after request. (The
//! limits, the drain, CORS, the body rate and every refusal run on both drivers in
//! limits.rs, drain.rs, cors.rs, memory.rs and http_ingest.rs.)

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{agent, duckdb, free_port, post, python, wait_for, Sluice};
use serde_json::{json, Value};

/// How the io_uring system calls are refused.
#[derive(Clone, Copy)]
enum Refusal {
    /// EPERM, as Docker 25+ and containerd 2's default seccomp profiles answer.
    Seccomp,
    /// ENOSYS, as a kernel built without io_uring answers.
    NoIoUring,
}

/// `sluice dataplane` in `dir` with the io_uring system calls refused; logs to `dir/node.log`.
fn dataplane_without_io_uring(dir: &Path, http: u16, refusal: Refusal, args: &[&str]) -> Child {
    let log = std::fs::File::create(dir.join("node.log")).expect("log file");
    let mut cmd = Command::new(python());
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/no_io_uring.py"));
    if let Refusal::NoIoUring = refusal {
        cmd.arg("--enosys");
    }
    cmd.arg(env!("CARGO_BIN_EXE_sluice"))
        .args(["dataplane", "--data-dir"])
        .arg(dir.join("data"))
        .args([
            "--http-addr",
            &format!("127.0.0.1:{http}"),
            "--mqtt-addr",
            "off",
        ])
        .args(args)
        .env("SLUICE_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn sluice under the seccomp filter")
}

fn log_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("node.log")).unwrap_or_default()
}

/// Kills the node if a test fails before stopping it.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_filter_really_refuses_io_uring() {
    let out = Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/no_io_uring.py"))
        .arg("--check")
        .output()
        .expect("run no_io_uring.py");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Operation not permitted"), "{text}");
}

#[test]
fn auto_falls_back_to_epoll_with_one_warning_where_seccomp_refuses_io_uring_and_ingest_works() {
    falls_back_to_epoll(Refusal::Seccomp, "Operation not permitted");
}

#[test]
fn auto_falls_back_to_epoll_on_a_kernel_without_io_uring() {
    falls_back_to_epoll(Refusal::NoIoUring, "Function not implemented");
}

fn falls_back_to_epoll(refusal: Refusal, error: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let http = free_port();
    let mut node = Killed(dataplane_without_io_uring(
        dir.path(),
        http,
        refusal,
        &["--http-threads", "2", "--batch-max-age-ms", "200"],
    ));
    let healthy = wait_for(Duration::from_secs(30), || {
        if let Ok(Some(status)) = node.0.try_wait() {
            panic!("exited during start ({status}): {}", log_text(dir.path()));
        }
        agent()
            .get(format!("http://127.0.0.1:{http}/healthz"))
            .call()
            .is_ok_and(|r| r.status() == 200)
    });
    assert!(healthy, "{}", log_text(dir.path()));

    let boot: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("data/bootstrap.json")).expect("bootstrap"),
    )
    .expect("json");
    let auth = format!("Bearer {}", boot["token"].as_str().expect("token"));
    let url = boot["http_url"].as_str().expect("url");
    for i in 0..5 {
        let a = post(
            url,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            format!(r#"{{"i":{i}}}"#).as_bytes(),
        );
        assert_eq!(a.status, 202, "{}", a.body);
    }
    let a = post(url, &[("authorization", "Bearer wrong")], b"{}");
    assert_eq!(a.status, 401, "refusals as on io_uring: {}", a.body);
    assert_eq!(a.problem(), "invalid-token", "{}", a.body);
    let metrics = agent()
        .get(format!("http://127.0.0.1:{http}/metrics"))
        .call()
        .expect("metrics")
        .body_mut()
        .read_to_string()
        .expect("body");
    assert!(
        metrics.contains(r#"sluice_http_threads{io_driver="epoll"} 2"#)
            && !metrics.contains(r#"io_driver="io_uring""#),
        "both threads counted on epoll: {metrics}"
    );

    let _ = Command::new("kill")
        .args(["-TERM", &node.0.id().to_string()])
        .status();
    assert!(wait_for(Duration::from_secs(20), || matches!(
        node.0.try_wait(),
        Ok(Some(_))
    )));
    let log = log_text(dir.path());
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warnings.len(), 1, "one warning: {log}");
    let warning = warnings[0];
    for says in [
        "io_uring is unavailable",
        "epoll",
        error,
        "seccomp",
        "kernel.io_uring_disabled",
    ] {
        assert!(
            warning.contains(says),
            "the warning says {says:?}: {warning}"
        );
    }
    assert!(
        log.contains(r#"threads=2 io_driver="epoll""#),
        "both threads on epoll: {log}"
    );
    let rows = duckdb(
        &dir.path().join("data/lake"),
        "SELECT count(*), sum((payload->>'i')::INT) FROM {lake}",
    );
    assert_eq!(rows, vec![vec![json!(5), json!(10)]]);
}

#[test]
fn io_uring_setting_refuses_to_start_where_seccomp_refuses_io_uring_and_says_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = Killed(dataplane_without_io_uring(
        dir.path(),
        free_port(),
        Refusal::Seccomp,
        &["--http-io-driver", "io_uring"],
    ));
    assert!(
        wait_for(Duration::from_secs(20), || matches!(
            node.0.try_wait(),
            Ok(Some(_))
        )),
        "a node that cannot have io_uring does not start: {}",
        log_text(dir.path())
    );
    let status = node.0.try_wait().expect("wait").expect("exited");
    assert!(!status.success());
    let log = log_text(dir.path());
    for says in [
        "io_uring is unavailable (Operation not permitted",
        "io_uring_setup, io_uring_enter and io_uring_register",
        "kernel.io_uring_disabled",
        "http.io_driver to auto or epoll",
    ] {
        assert!(log.contains(says), "the error says {says:?}: {log}");
    }
}

/// Reads one HTTP/1.1 response with a `Content-Length` body; returns its head and body.
fn read_response(reader: &mut BufReader<TcpStream>) -> (String, String) {
    let mut head = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("response line");
        assert!(!line.is_empty(), "connection closed mid-response: {head}");
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().expect("content-length");
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).expect("body");
    (head, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn epoll_serves_request_after_request_on_one_keep_alive_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start_with_env(
        &dir.path().join("data"),
        &["--http-io-driver", "epoll", "--http-threads", "1"],
        &[("NO_COLOR", "1")],
    );
    assert!(
        sluice.log().contains(r#"io_driver="epoll""#),
        "{}",
        sluice.log()
    );
    let token = sluice.bootstrap()["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let stream = TcpStream::connect(("127.0.0.1", sluice.port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    for i in 0..20 {
        let body = format!(r#"{{"i":{i}}}"#);
        write!(
            writer,
            "POST /v1/ingest/default/telemetry HTTP/1.1\r\nHost: n\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("request");
        let (head, body) = read_response(&mut reader);
        assert!(
            head.starts_with("HTTP/1.1 202"),
            "request {i}: {head}{body}"
        );
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
    }
    // A refusal keeps the connection too.
    write!(
        writer,
        "POST /v1/ingest/default/telemetry HTTP/1.1\r\nHost: n\r\nAuthorization: Bearer wrong\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
    )
    .expect("request");
    let (head, body) = read_response(&mut reader);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}{body}");
    assert!(body.contains("invalid-token"), "{body}");
    // Counted as open, as on io_uring: this connection and the metrics request's at least.
    let metrics = sluice.metrics();
    let open: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_http_connections "))
        .and_then(|v| v.trim().parse().ok())
        .expect("sluice_http_connections");
    assert!(open >= 2, "{metrics}");
    assert!(
        metrics.contains(r#"sluice_http_threads{io_driver="epoll"} 1"#),
        "{metrics}"
    );
}
