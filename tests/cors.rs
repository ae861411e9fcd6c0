//! Browser apps sending events: a real headless Chromium posts with `fetch` from pages on an
//! origin the workspace allows and on one it does not, and plain requests show the CORS
//! headers the data plane answers with.

mod common;

use std::process::Command;

use common::controlplane::Api;
use common::{duckdb, post, python, Sluice};
use serde_json::{json, Value};

/// Whether Debian's Chromium and Playwright are installed (`scripts/test.sh` installs both).
fn browser_available() -> bool {
    std::path::Path::new("/usr/bin/chromium").exists()
        && Command::new(python())
            .args(["-c", "import playwright"])
            .status()
            .is_ok_and(|s| s.success())
}

#[test]
fn pages_on_allowed_origins_send_events_and_others_are_blocked() {
    cors_answers("auto");
}

/// The same answers with HTTP on the epoll driver.
#[test]
fn pages_on_allowed_origins_send_events_and_others_are_blocked_on_epoll() {
    cors_answers("epoll");
}

fn cors_answers(io_driver: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sluice = Sluice::start(
        &dir.path().join("data"),
        &["--batch-max-age-ms", "300", "--http-io-driver", io_driver],
    );
    let api = Api::new(sluice.api_url());
    let operator = api.operator_session(&sluice.data_dir);
    let token = sluice.bootstrap()["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let url = sluice.ingest_url("default", "telemetry");
    let page_port = common::free_port();
    let allowed = format!("http://127.0.0.1:{page_port}");
    let a = api.put(
        "/api/v1/workspaces/default/cors",
        &operator,
        json!({"allowed_origins": [allowed]}),
    );
    assert_eq!(a.status, 200, "{}", a.body);

    // The node follows the configuration: a preflight from the allowed origin is answered.
    let preflight = |origin: &str| {
        let request = ureq::http::Request::builder()
            .method("OPTIONS")
            .uri(&url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .body(())
            .expect("request");
        common::agent().run(request).expect("preflight")
    };
    assert!(
        common::wait_for(std::time::Duration::from_secs(10), || preflight(&allowed)
            .headers()
            .get("access-control-allow-origin")
            .is_some()),
        "the node takes the workspace's origins from the configuration"
    );
    let answer = preflight(&allowed);
    assert_eq!(answer.status().as_u16(), 204);
    let header = |name: &str| {
        answer
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("access-control-allow-origin"), allowed);
    assert_eq!(header("vary"), "Origin");
    assert_eq!(header("access-control-allow-methods"), "POST");
    for h in [
        "Authorization",
        "Content-Type",
        "Content-Encoding",
        "X-Device-Id",
    ] {
        assert!(header("access-control-allow-headers").contains(h), "{h}");
    }
    assert_eq!(header("access-control-max-age"), "600");
    let other = preflight("http://evil.example");
    assert_eq!(other.status().as_u16(), 204);
    assert!(other
        .headers()
        .keys()
        .all(|k| !k.as_str().starts_with("access-control-")));

    // Actual requests: an allowed origin can read answers, refusals included; others get no
    // CORS header.
    let auth = format!("Bearer {token}");
    let a = post(
        &url,
        &[("authorization", "Bearer wrong"), ("origin", &allowed)],
        br#"{"from": "curl"}"#,
    );
    assert_eq!(a.status, 401);
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some(allowed.clone())
    );
    let a = post(
        &url,
        &[("authorization", &auth), ("origin", "http://evil.example")],
        br#"{"from": "server-side"}"#,
    );
    assert_eq!(
        a.status, 202,
        "CORS is no authentication: the token decides"
    );
    assert_eq!(a.header("access-control-allow-origin"), None);

    // scripts/test.sh installs the browser; SLUICE_TEST_SKIP_BROWSER=1 runs the rest without.
    if std::env::var_os("SLUICE_TEST_SKIP_BROWSER").is_some() {
        return;
    }
    assert!(
        browser_available(),
        "/usr/bin/chromium or playwright is missing: run ./scripts/test.sh, or set SLUICE_TEST_SKIP_BROWSER=1"
    );
    let out = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/cors_browser.py"
        ))
        .args([&page_port.to_string(), &url, &token])
        .output()
        .expect("cors_browser.py runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let result = |origin: &str, token: &str| {
        results
            .iter()
            .find(|r| {
                r["origin"].as_str().is_some_and(|o| o.starts_with(origin)) && r["token"] == token
            })
            .cloned()
            .unwrap_or_else(|| panic!("no result for {origin} {token}: {stdout}"))
    };
    let ok = result("http://127.0.0.1", "valid");
    assert_eq!(ok["status"], 202, "{ok}");
    assert_eq!(ok["body"], r#"{"accepted":1}"#);
    let refused = result("http://127.0.0.1", "wrong");
    assert_eq!(refused["status"], 401, "{refused}");
    assert!(
        refused["body"]
            .as_str()
            .is_some_and(|b| b.contains("urn:sluice:problem:invalid-token")),
        "the page reads the problem: {refused}"
    );
    for token in ["valid", "wrong"] {
        let blocked = result("http://localhost", token);
        assert!(
            blocked["error"].is_string(),
            "blocked by the browser: {blocked}"
        );
    }

    // What the browsers sent: the allowed page's event and the server-side one; the
    // preflight-blocked page's POSTs never reached the node.
    sluice.stop();
    let rows = duckdb(
        &sluice.data_dir.join("lake"),
        "SELECT payload->>'from', device_id FROM {lake} ORDER BY 1",
    );
    assert_eq!(
        rows,
        vec![
            vec![json!(allowed), json!("browser-1")],
            vec![json!("server-side"), Value::Null],
        ]
    );
}
