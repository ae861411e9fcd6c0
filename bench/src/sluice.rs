//! A Sluice node run as a child process for one scenario: started from the `sluice` binary
//! next to this executable in a fresh temporary data dir, waited for on `/healthz`, asked for
//! its token through `bootstrap.json`, measured through `/proc/<pid>` and `/metrics`, and
//! stopped with SIGTERM. The temporary dir (WAL, lake, logs) goes away with the value.
//!
//! A fresh node per scenario keeps scenarios independent: peak RSS (VmHWM) is per scenario
//! and one scenario's WAL and shipper backlog do not slow the next one.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

/// How long a node may take to answer `/healthz` and write its bootstrap URL.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Sluice's shutdown grace (uploading what the WAL holds); kept short so runs stay bounded.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long after SIGTERM before the node is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Event rate limit per workspace for benchmark nodes: far above anything one machine
/// reaches, so the limiter is exercised but never refuses.
const EVENTS_PER_SECOND: u64 = 100_000_000;

/// The `sluice` binary next to this executable (both are built into the same target dir).
pub fn default_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let dir = exe
        .parent()
        .context("the bench executable has no parent directory")?;
    Ok(dir.join("sluice"))
}

/// Fails with a hint when `bin` is missing.
pub fn check_binary(bin: &Path) -> Result<()> {
    if !bin.is_file() {
        bail!(
            "Sluice binary not found at {}; run `cargo build --release -p sluice -p sluice-bench` \
             first (or pass --sluice-bin)",
            bin.display()
        );
    }
    Ok(())
}

/// A running node.
pub struct Node {
    child: Child,
    dir: TempDir,
    pub addr: SocketAddr,
    /// Ingest paths: from bootstrap.json (e.g. `/v1/ingest/default/telemetry`), or one per
    /// source of a [`Shaping`] snapshot.
    pub paths: Vec<String>,
    pub token: String,
    /// The MQTT listener, when started with one.
    pub mqtt_addr: Option<SocketAddr>,
}

/// What stopping found.
pub struct Stopped {
    pub exit: String,
    pub took: Duration,
    /// WARN and ERROR lines of the node's log.
    pub problems: Vec<String>,
}

/// What shapes the benchmark source's events (issue 17): its JSON Schema and the workspace's
/// tag rules, given to the node in a configuration snapshot file.
pub struct Shaping {
    pub schema: Option<serde_json::Value>,
    pub tag_rules: Vec<serde_json::Value>,
    /// Sources of the workspace, all alike (at least one).
    pub sources: usize,
}

/// The workspace and token of a node started with [`Shaping`].
const SHAPED_PATH_PREFIX: &str = "/v1/ingest/bench/";
const SHAPED_TOKEN: &str = "bench-shaping-token";

/// The slug of a [`Shaping`] node's `i`th source: `telemetry`, then `s1`, `s2`, ...
fn shaped_source(i: usize) -> String {
    if i == 0 {
        "telemetry".to_owned()
    } else {
        format!("s{i}")
    }
}

impl Node {
    /// Starts `bin dataplane` with `http_threads` HTTP threads on `http_io_driver`
    /// (`io_uring`, `epoll` or `auto`; MQTT off) and waits until it serves.
    pub fn start(bin: &Path, http_threads: usize, http_io_driver: &str) -> Result<Node> {
        Self::start_with(bin, (http_threads, http_io_driver), None, None, &[])
    }

    /// Like [`start`](Self::start), with a configuration snapshot whose sources have
    /// `shaping`; requests go to `path_suffix` appended to each source's ingest path (a query).
    pub fn start_shaped(
        bin: &Path,
        http: (usize, &str),
        shaping: &Shaping,
        path_suffix: &str,
    ) -> Result<Node> {
        let mut node = Self::start_with(bin, http, None, Some(shaping), &[])?;
        for path in &mut node.paths {
            path.push_str(path_suffix);
        }
        Ok(node)
    }

    /// Like [`start`](Self::start), with MQTT on a free port served by `mqtt_workers` threads.
    pub fn start_mqtt(bin: &Path, http_threads: usize, mqtt_workers: usize) -> Result<Node> {
        Self::start_mqtt_with(bin, http_threads, mqtt_workers, &[])
    }

    /// An MQTT node with more `sluice dataplane` flags (`--mqtt-connections-max`, ...).
    pub fn start_mqtt_with(
        bin: &Path,
        http_threads: usize,
        mqtt_workers: usize,
        extra_args: &[String],
    ) -> Result<Node> {
        Self::start_with(
            bin,
            (http_threads, "auto"),
            Some(mqtt_workers),
            None,
            extra_args,
        )
    }

    fn start_with(
        bin: &Path,
        (http_threads, http_io_driver): (usize, &str),
        mqtt: Option<usize>,
        shaping: Option<&Shaping>,
        extra_args: &[String],
    ) -> Result<Node> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-bench-")
            .tempdir()
            .context("creating a temporary data dir")?;
        let data_dir = dir.path().join("data");
        let port = free_port()?;
        let log_path = dir.path().join("sluice.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let log_err = log.try_clone().context("duplicating the log file handle")?;
        let mqtt_addr = match mqtt {
            Some(_) => Some(SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?))),
            None => None,
        };
        let mqtt_workers = mqtt.unwrap_or(1);
        let mut snapshot_args: Vec<std::ffi::OsString> = Vec::new();
        if let Some(shaping) = shaping {
            let snapshot = dir.path().join("snapshot.json");
            let sources: Vec<serde_json::Value> = (0..shaping.sources.max(1))
                .map(|i| {
                    let mut source = serde_json::json!({
                        "id": format!("0190f3a0-0000-7000-8000-{:012x}", 0x2b0 + (i << 12)),
                        "slug": shaped_source(i),
                    });
                    if let Some(schema) = &shaping.schema {
                        source["schema"] = schema.clone();
                    }
                    source
                })
                .collect();
            let config = serde_json::json!({
                "version": 1,
                "workspaces": [{
                    "id": "0190f3a0-0000-7000-8000-0000000000b0",
                    "slug": "bench",
                    "sources": sources,
                    "tokens": [{
                        "id": "0190f3a0-0000-7000-8000-0000000001b0",
                        "sha256": sluice_config::token::hash_hex(SHAPED_TOKEN),
                        "scopes": ["ingest"],
                    }],
                    "tag_rules": shaping.tag_rules,
                }]
            });
            std::fs::write(&snapshot, serde_json::to_vec(&config)?)
                .with_context(|| format!("writing {}", snapshot.display()))?;
            snapshot_args = vec!["--config-snapshot".into(), snapshot.into_os_string()];
        }
        let child = Command::new(bin)
            .arg("dataplane")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--mqtt-addr")
            .arg(mqtt_addr.map_or("off".to_owned(), |a| a.to_string()))
            .arg("--mqtt-workers")
            .arg(mqtt_workers.to_string())
            .arg("--http-threads")
            .arg(http_threads.to_string())
            .arg("--http-io-driver")
            .arg(http_io_driver)
            .arg("--workspace-events-per-second")
            .arg(EVENTS_PER_SECOND.to_string())
            .arg("--shutdown-grace-ms")
            .arg(SHUTDOWN_GRACE.as_millis().to_string())
            .args(&snapshot_args)
            .args(extra_args)
            .env("SLUICE_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut node = Node {
            child,
            dir,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            paths: Vec::new(),
            token: String::new(),
            mqtt_addr,
        };
        if let Some(shaping) = shaping {
            node.paths = (0..shaping.sources.max(1))
                .map(|i| format!("{SHAPED_PATH_PREFIX}{}", shaped_source(i)))
                .collect();
            node.token = SHAPED_TOKEN.to_owned();
        }
        node.wait_ready(&data_dir)
            .with_context(|| format!("Sluice did not start; its log:\n{}", node.log_tail()))?;
        Ok(node)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_ready(&mut self, data_dir: &Path) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .context("polling the Sluice process")?
            {
                bail!("Sluice exited during start-up ({status})");
            }
            // bootstrap.json gets its URL right after the HTTP listeners are up, so both
            // conditions are needed.
            let healthy = matches!(http_get(self.addr, "/healthz"), Ok((200, _)));
            if healthy && !self.token.is_empty() {
                // Configured from a snapshot: no bootstrap token to wait for.
                return Ok(());
            }
            if healthy {
                if let Some((addr, path, token)) = read_bootstrap(data_dir)? {
                    if addr != self.addr {
                        bail!(
                            "bootstrap.json names {addr}, but the node was started on {}",
                            self.addr
                        );
                    }
                    self.paths = vec![path];
                    self.token = token;
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("no healthy answer and bootstrap URL within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Peak resident set size (VmHWM) so far, in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        vm_hwm_kib(&format!("/proc/{}/status", self.pid()))
    }

    /// Sluice's own view of its WAL, from `/metrics`.
    pub fn wal_stats(&self) -> Result<WalStats> {
        let (status, body) = http_get(self.addr, "/metrics")?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        Ok(WalStats::parse(&body))
    }

    /// SIGTERM, then waits for the graceful stop (SIGKILL after [`STOP_TIMEOUT`]).
    pub fn stop(mut self) -> Result<Stopped> {
        let started = Instant::now();
        // The child is ours; `kill` is the portable way to send it SIGTERM without libc.
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .context("running kill -TERM")?;
        if !sent.success() {
            bail!("kill -TERM {} failed ({sent})", self.pid());
        }
        let exit = loop {
            if let Some(status) = self.child.try_wait().context("waiting for Sluice")? {
                break status.to_string();
            }
            if started.elapsed() >= STOP_TIMEOUT {
                self.child.kill().context("killing Sluice")?;
                let status = self.child.wait().context("reaping Sluice")?;
                break format!("killed after {STOP_TIMEOUT:?} ({status})");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = started.elapsed();
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let problems = log
            .lines()
            .map(strip_ansi)
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        Ok(Stopped {
            exit,
            took,
            problems,
        })
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("sluice.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // On an error path the node may still run; never leave it behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// WAL counters from Sluice's `/metrics` (totals since start, warm-up included).
#[derive(Debug, Default, Clone, Copy)]
pub struct WalStats {
    pub fsyncs: f64,
    pub fsync_seconds: f64,
    pub records: f64,
}

impl WalStats {
    fn parse(text: &str) -> WalStats {
        let mut stats = WalStats::default();
        for line in text.lines() {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            if name.ends_with("wal_fsync_seconds_count") {
                stats.fsyncs = value;
            } else if name.ends_with("wal_fsync_seconds_sum") {
                stats.fsync_seconds = value;
            } else if name.ends_with("wal_group_commit_records_sum") {
                stats.records = value;
            }
        }
        stats
    }

    pub fn mean_fsync_ms(&self) -> Option<f64> {
        (self.fsyncs > 0.0).then(|| self.fsync_seconds / self.fsyncs * 1000.0)
    }

    pub fn records_per_fsync(&self) -> Option<f64> {
        (self.fsyncs > 0.0).then(|| self.records / self.fsyncs)
    }
}

/// VmHWM of the process whose status file is `path`, in KiB.
pub fn vm_hwm_kib(path: &str) -> Result<u64> {
    status_kib(path, "VmHWM:")
}

/// A `kB` field (`VmRSS:`, `VmHWM:`) of the process status file `path`.
pub fn status_kib(path: &str, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// A port that was free a moment ago. Another process could take it before Sluice binds it;
/// on a benchmark machine that race is not worth more machinery (start-up would fail loudly).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("finding a free port for Sluice")?;
    Ok(listener.local_addr().context("reading a free port")?.port())
}

/// `(address, path, token)` from bootstrap.json once it has its URL.
fn read_bootstrap(data_dir: &Path) -> Result<Option<(SocketAddr, String, String)>> {
    let path = data_dir.join("bootstrap.json");
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(None);
    };
    // Written atomically (rename), so a readable file is a complete one.
    let json: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let field = |name: &str| json.get(name).and_then(|v| v.as_str()).unwrap_or_default();
    let (url, token) = (field("http_url"), field("token"));
    if url.is_empty() || token.is_empty() {
        return Ok(None);
    }
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("bootstrap URL {url:?} is not http://"))?;
    let (authority, path) = rest
        .split_once('/')
        .with_context(|| format!("bootstrap URL {url:?} has no path"))?;
    let addr: SocketAddr = authority
        .parse()
        .with_context(|| format!("bootstrap URL {url:?} does not name an IP:port"))?;
    // The benchmark talks to this machine only.
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "bootstrap URL {url:?} is not on loopback"
    );
    Ok(Some((addr, format!("/{path}"), token.to_owned())))
}

/// A one-shot `GET` over a fresh connection: status and body. For health checks and
/// `/metrics` only, never under load.
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .context("setting a read timeout")?;
    stream
        .set_write_timeout(Some(timeout))
        .context("setting a write timeout")?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("sending GET {path}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .with_context(|| format!("reading the answer to GET {path}"))?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status in the answer to GET {path}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Log lines without terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip `ESC [ ... letter`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_stats_come_from_openmetrics_lines() {
        let text = "# TYPE x histogram\nsluice_wal_fsync_seconds_sum 0.5\n\
                    sluice_wal_fsync_seconds_count 100\nsluice_wal_group_commit_records_sum 4000\n";
        let stats = WalStats::parse(text);
        assert_eq!(stats.mean_fsync_ms(), Some(5.0));
        assert_eq!(stats.records_per_fsync(), Some(40.0));
    }

    #[test]
    fn ansi_codes_are_removed() {
        assert_eq!(strip_ansi("\u{1b}[33m WARN\u{1b}[0m x"), " WARN x");
    }
}
