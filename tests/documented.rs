//! What the documentation tells a new user to type works as written: the README's quick start
//! (curl and mosquitto_pub, then DuckDB) and the defaults `sluice up --help` prints, which must
//! be the ones docs/configuration.md lists.

mod common;

use std::process::Command;

use common::{duckdb, Sluice};
use serde_json::json;

/// The shell block of the README's "Send events" step, pointed at this node.
fn quick_start_commands(sluice: &Sluice) -> String {
    let readme = include_str!("../README.md");
    let step = readme
        .split("2. **Send events**")
        .nth(1)
        .expect("the README has a 'Send events' step");
    let mut blocks = step.split("```sh").skip(1).map(|b| {
        b.split("```")
            .next()
            .expect("a closed code block")
            .to_owned()
    });
    let http = blocks.next().expect("the curl block");
    let mqtt = blocks.next().expect("the mosquitto_pub block");
    let base = sluice.base_url();
    format!("set -e\n{http}\n{mqtt}")
        .replace(
            "data/bootstrap.json",
            &sluice.data_dir.join("bootstrap.json").display().to_string(),
        )
        .replace("http://127.0.0.1:8081", &base)
        .replace("-p 1883", &format!("-p {}", sluice.mqtt_port))
}

#[test]
fn the_readme_quick_start_lands_events_with_their_device_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sluice = Sluice::start(&dir.path().join("data"), &["--batch-max-age-ms", "300"]);
    let script = quick_start_commands(&sluice);
    if !script.contains("mosquitto_pub") || which("mosquitto_pub").is_none() {
        panic!("mosquitto_pub is needed (scripts/test.sh installs it): {script}");
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches(r#"{"accepted":"#).count(), 2, "{stdout}");
    sluice.stop();
    let rows = duckdb(
        &sluice.data_dir.join("lake"),
        "SELECT device_id, count(*) FROM {lake} GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(
        rows,
        vec![
            vec![json!("probe-1"), json!(1)],
            vec![json!("probe-2"), json!(2)],
            vec![json!("probe-3"), json!(1)],
        ],
        "every documented event lands with the device id the README shows"
    );
}

fn which(tool: &str) -> Option<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn every_default_that_help_prints_is_the_documented_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["up", "--help"])
        .output()
        .expect("sluice up --help");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let doc = include_str!("../docs/configuration.md");
    let mut checked = 0;
    let mut wrong = Vec::new();
    let mut flag: Option<String> = None;
    for line in help.lines() {
        let line = line.trim();
        if line.starts_with("--") {
            flag = line.split_whitespace().next().map(str::to_owned);
        }
        let (Some(f), Some(start)) = (&flag, line.find("[default: ")) else {
            continue;
        };
        let default = &line[start + 10..];
        let default = &default[..default.find(']').expect("closing bracket")];
        // The flag's row in a settings table names the same default, in backticks.
        let cell = format!("| `{f}` |");
        match doc
            .lines()
            .find(|l| l.starts_with('|') && l.contains(&cell))
        {
            Some(row) if documents(row, default) => {}
            Some(row) => wrong.push(format!("{f}: --help [default: {default}], docs: {row}")),
            None => wrong.push(format!("{f}: not in a table of docs/configuration.md")),
        }
        checked += 1;
        flag = None;
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(checked >= 10, "only {checked} defaults found in:\n{help}");
}

/// Whether a settings row's default column names `default`: the same value (`0`, `./data`), or
/// for a described default (`<data-dir>/lake`, "generated, kept in the data dir") the same
/// first word, with the doc's `data_dir` spelt as the flag's `data-dir`.
fn documents(row: &str, default: &str) -> bool {
    let cell = row.split('|').nth(4).unwrap_or_default();
    let normal = |s: &str| s.replace('`', "").replace('_', "-").to_lowercase();
    let cell = normal(cell);
    let first = normal(default)
        .split([',', ' '])
        .next()
        .unwrap_or_default()
        .to_owned();
    cell.split([' ', '(', ')', ',']).any(|word| word == first)
}

/// The container's `HEALTHCHECK` (deploy/container/Containerfile) and Compose's health checks
/// run `sluice health <url>`: exit 0 on a 2xx answer, 1 with one line saying why otherwise,
/// and never hang on a port that does not answer.
#[test]
fn sluice_health_exits_0_on_2xx_and_1_with_a_reason_otherwise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let health = |url: &str| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["health", url, "--timeout-ms", "1000"])
            .output()
            .expect("sluice health runs")
    };
    let containerfile = include_str!("../deploy/container/Containerfile");
    assert!(
        containerfile.contains(r#"/sluice", "health", "http://127.0.0.1:8081/healthz""#),
        "the Containerfile's HEALTHCHECK is the command tested here"
    );
    for path in ["/healthz", "/readyz"] {
        let out = health(&format!("{}{path}", sluice.base_url()));
        assert!(out.status.success(), "{path}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("200"));
    }
    let out = health(&format!("{}/no-such-page", sluice.base_url()));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("404"), "{stderr}");

    // Nothing listening: refused at once.
    let out = health(&format!("http://127.0.0.1:{}/healthz", common::free_port()));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // A listener that never answers: the timeout, not a hang.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let started = std::time::Instant::now();
    let out = health(&format!(
        "http://{}/healthz",
        silent.local_addr().expect("addr")
    ));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("within 1000 ms"),
        "{out:?}"
    );
}
