//! Test harness: runs the real `sluice` binary on loopback, talks to it with a real HTTP
//! client (ureq), and reads the Parquet it writes with DuckDB (the Python package, installed
//! by `scripts/test.sh` into `.venv`).

#![allow(dead_code)]

pub mod controlplane;
pub mod mqtt;
pub mod s3;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A free loopback port (bound and released; the node binds it right after, and again on a
/// restart).
///
/// Picked below Linux's ephemeral range (32768-60999), never by binding port 0: a port from
/// that range, released while the node restarts, can be taken meanwhile as the source port of
/// any outgoing connection of the tests running in parallel, and the restart then fails with
/// "Address already in use".
pub fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(20_000..32_768);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in 20000-32767")
}

/// One running `sluice up` process.
pub struct Sluice {
    pub child: Child,
    pub data_dir: PathBuf,
    pub port: u16,
    /// Control-plane API port.
    pub api_port: u16,
    /// MQTT port (unless the test's args set `--mqtt-addr` themselves).
    pub mqtt_port: u16,
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
}

impl Sluice {
    /// Starts `sluice up` in `data_dir` with `args` and waits until it answers `/healthz`.
    pub fn start(data_dir: &Path, args: &[&str]) -> Sluice {
        Self::start_with_env(data_dir, args, &[])
    }

    pub fn start_with_env(data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Sluice {
        let mut sluice = Sluice {
            child: spawn_dummy(),
            data_dir: data_dir.to_path_buf(),
            port: free_port(),
            api_port: free_port(),
            mqtt_port: free_port(),
            args: args.iter().map(|s| s.to_string()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let _ = sluice.child.kill();
        let _ = sluice.child.wait();
        sluice.child = sluice.spawn();
        sluice.wait_healthy();
        sluice
    }

    fn spawn(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("up")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--api-addr")
            .arg(format!("127.0.0.1:{}", self.api_port));
        if !self.args.iter().any(|a| a == "--mqtt-addr") {
            cmd.arg("--mqtt-addr")
                .arg(format!("127.0.0.1:{}", self.mqtt_port));
        }
        cmd.args(&self.args)
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd.spawn().expect("spawn sluice")
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The control-plane API's base URL.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    pub fn ingest_url(&self, workspace: &str, source: &str) -> String {
        format!("{}/v1/ingest/{workspace}/{source}", self.base_url())
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let agent = agent();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sluice exited during start ({status}); log: {}", self.log());
            }
            let healthy = |url: String| {
                agent
                    .get(format!("{url}/healthz"))
                    .call()
                    .is_ok_and(|r| r.status() == 200)
            };
            if healthy(self.base_url()) && healthy(self.api_url()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sluice did not become healthy; log: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: the node uploads what it buffered before exiting.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        panic!("sluice did not stop on SIGTERM within 30 s");
    }

    /// Starts the same node again (same data dir, port and flags).
    pub fn restart(&mut self) {
        self.child = self.spawn();
        self.wait_healthy();
    }

    /// `bootstrap.json` of the data dir.
    pub fn bootstrap(&self) -> Value {
        read_bootstrap(&self.data_dir)
    }

    pub fn readyz(&self) -> Value {
        let mut resp = agent()
            .get(format!("{}/readyz", self.base_url()))
            .call()
            .expect("readyz");
        serde_json::from_str(&resp.body_mut().read_to_string().expect("body")).expect("json")
    }

    pub fn metrics(&self) -> String {
        agent()
            .get(format!("{}/metrics", self.base_url()))
            .call()
            .expect("metrics")
            .body_mut()
            .read_to_string()
            .expect("body")
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_dummy() -> Child {
    Command::new("true").spawn().expect("spawn true")
}

/// An HTTP client that returns error statuses as responses.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// The answer to one request.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub retry_after: Option<String>,
    pub body: String,
    pub headers: ureq::http::HeaderMap,
}

impl Answer {
    /// Reads status, the headers tests look at, and the body.
    pub fn of(mut resp: ureq::http::Response<ureq::Body>) -> Answer {
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header("content-type").unwrap_or_default();
        let retry_after = header("retry-after");
        Answer {
            status: resp.status().as_u16(),
            content_type,
            retry_after,
            headers: resp.headers().clone(),
            body: resp.body_mut().read_to_string().unwrap_or_default(),
        }
    }

    /// A response header, when present and text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The problem `type` without its URN prefix.
    pub fn problem(&self) -> String {
        self.json()["type"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("urn:sluice:problem:")
            .to_owned()
    }
}

/// POSTs `body` with `headers`.
pub fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut req = agent().post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Answer::of(req.send(body).expect("request sent"))
}

/// The Python interpreter with duckdb (set by scripts/test.sh, else the repo's .venv).
pub fn python() -> PathBuf {
    match std::env::var_os("SLUICE_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
    }
}

/// Runs `sql` in DuckDB with `{lake}` replaced by the files glob; returns rows as JSON arrays.
pub fn duckdb(lake: &Path, sql: &str) -> Vec<Vec<Value>> {
    let glob = format!("{}/**/*.parquet", lake.display());
    let sql = sql.replace(
        "{lake}",
        &format!("read_parquet('{glob}', hive_partitioning = true)"),
    );
    let script = r#"
import duckdb, json, sys
rows = duckdb.sql(sys.argv[1]).fetchall()
print(json.dumps([[v if isinstance(v, (int, float, str, bool, type(None))) else str(v) for v in r] for r in rows]))
"#;
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(&sql)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {} failed ({e}); run the tests through scripts/test.sh, which installs duckdb",
                python().display()
            )
        });
    assert!(
        out.status.success(),
        "duckdb query failed: {sql}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("duckdb output is JSON")
}

/// Number of Parquet files under `dir`.
pub fn parquet_files(dir: &Path) -> usize {
    fn walk(dir: &Path, n: &mut usize) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, n);
                } else if path.extension().is_some_and(|e| e == "parquet") {
                    *n += 1;
                }
            }
        }
    }
    let mut n = 0;
    walk(dir, &mut n);
    n
}

/// Polls `check` until it is true or `timeout` passes.
pub fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

/// A `sluice` process of any subcommand (`controlplane`, `dataplane`), restartable.
pub struct Proc {
    pub child: Child,
    pub args: Vec<String>,
    pub log: PathBuf,
    /// `/healthz` to wait for after each start.
    pub health: String,
    /// Environment added to each start.
    pub envs: Vec<(String, String)>,
}

impl Proc {
    pub fn start(args: &[String], log: PathBuf, health: String) -> Proc {
        Self::start_with_env(args, log, health, Vec::new())
    }

    pub fn start_with_env(
        args: &[String],
        log: PathBuf,
        health: String,
        envs: Vec<(String, String)>,
    ) -> Proc {
        let mut proc = Proc {
            child: spawn_dummy(),
            args: args.to_vec(),
            log,
            health,
            envs,
        };
        let _ = proc.child.kill();
        let _ = proc.child.wait();
        proc.restart();
        proc
    }

    /// Starts the process again with the same arguments and waits until it is healthy. The
    /// previous one must have exited (`stop` or `kill9`).
    pub fn restart(&mut self) {
        assert!(
            !matches!(self.child.try_wait(), Ok(None)),
            "restart while the process still runs"
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        self.child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sluice");
        let agent = agent();
        let healthy = wait_for(Duration::from_secs(30), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "sluice exited during start ({status}); log: {}",
                    self.log_text()
                );
            }
            agent
                .get(&self.health)
                .call()
                .is_ok_and(|r| r.status() == 200)
        });
        assert!(healthy, "not healthy; log: {}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        if !wait_for(Duration::from_secs(30), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        }) {
            self.kill9();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `bootstrap.json` of `data_dir`, waited for: `sluice up` writes it just after its listeners
/// answer `/healthz` (it names the bound HTTP address), so a test that saw `/healthz` can be a
/// moment early.
pub fn read_bootstrap(data_dir: &Path) -> Value {
    let path = data_dir.join("bootstrap.json");
    assert!(
        wait_for(Duration::from_secs(10), || path.is_file()),
        "no {} 10 s after the node answered /healthz",
        path.display()
    );
    let text = std::fs::read_to_string(&path).expect("bootstrap.json");
    serde_json::from_str(&text).expect("bootstrap.json is JSON")
}
