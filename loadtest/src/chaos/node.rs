//! The `sluice up` process a chaos run owns: started with a crash point armed or not, killed
//! with SIGKILL, stopped with SIGTERM. Only this child is ever signalled, by its PID.

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long a start may take before the run gives up (a debug build on a busy machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The node's addresses, fixed for the whole run so that clients find it after each restart.
#[derive(Debug, Clone)]
pub struct Ports {
    pub http: u16,
    pub mqtt: u16,
    pub api: u16,
}

impl Ports {
    /// Three free loopback ports below Linux's ephemeral range (32768-60999): a port from that
    /// range, free while the node is down, can be taken meanwhile as the source port of one of
    /// the clients' own connections, and the restart would fail with "Address in use".
    pub fn pick(rng: &mut super::SplitMix) -> Result<Ports> {
        let mut ports = Vec::new();
        for _ in 0..10_000 {
            let port = 20_000 + (rng.next_u64() % 12_768) as u16;
            if !ports.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                ports.push(port);
                if ports.len() == 3 {
                    return Ok(Ports {
                        http: ports[0],
                        mqtt: ports[1],
                        api: ports[2],
                    });
                }
            }
        }
        bail!("no three free loopback ports in 20000-32767")
    }
}

/// How a node's life ended.
#[derive(Debug)]
pub enum End {
    /// It killed itself at a crash point: the line it wrote before the signal.
    CrashPoint(String),
    /// The driver killed it.
    Killed,
    /// It exited by itself in some other way (a failure; its status).
    Exited(ExitStatus),
}

/// One `sluice up` data dir and the process running on it, if any.
pub struct Node {
    binary: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    ports: Ports,
    extra_args: Vec<String>,
    child: Option<Child>,
    /// Length of the log when the current process started: its own lines come after.
    log_from: u64,
}

impl Node {
    pub fn new(binary: &Path, dir: &Path, ports: Ports, extra_args: Vec<String>) -> Node {
        Node {
            binary: binary.to_path_buf(),
            data_dir: dir.join("data"),
            log: dir.join("sluice.log"),
            ports,
            extra_args,
            child: None,
            log_from: 0,
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn http_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.http)
    }

    pub fn api_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.api)
    }

    /// Starts the node with `chaos` (`<point>:<n>`) armed, or none. Does not wait.
    pub fn spawn(&mut self, chaos: Option<&str>) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        self.log_from = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new(&self.binary);
        cmd.arg("up")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{}", self.ports.http))
            .arg("--mqtt-addr")
            .arg(format!("127.0.0.1:{}", self.ports.mqtt))
            .arg("--api-addr")
            .arg(format!("127.0.0.1:{}", self.ports.api))
            .args(&self.extra_args)
            // The node's own level unless the driver's environment names one.
            .env(
                "SLUICE_LOG",
                std::env::var("SLUICE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("SLUICE_CHAOS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(spec) = chaos {
            cmd.env("SLUICE_CHAOS", spec);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until both the ingest and the control-plane API answer `/healthz`. `Ok(Some(end))`
    /// when the process died first (a crash point can fire during start, while the shipper
    /// uploads what the last life left in the WAL).
    pub fn wait_healthy(&mut self) -> Result<Option<End>> {
        // Its own client, dropped on return: a keep-alive connection left open to the node
        // would be one more the node's graceful stop waits for.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        let deadline = Instant::now() + START_TIMEOUT;
        let healthy = |base: String| {
            agent
                .get(format!("{base}/healthz"))
                .call()
                .is_ok_and(|r| r.status() == 200)
        };
        loop {
            if let Some(end) = self.try_end()? {
                return Ok(Some(end));
            }
            if healthy(self.http_base()) && healthy(self.api_base()) {
                return Ok(None);
            }
            if Instant::now() > deadline {
                self.kill9();
                bail!(
                    "sluice did not become healthy within {START_TIMEOUT:?}; see {}",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for the process to end by itself.
    pub fn wait_end(&mut self, timeout: Duration) -> Result<Option<End>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.try_end()? {
                return Ok(Some(end));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn try_end(&mut self) -> Result<Option<End>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(Some(End::Killed));
        };
        let Some(status) = child.try_wait().context("waiting for sluice")? else {
            return Ok(None);
        };
        self.child = None;
        Ok(Some(match self.kill_line() {
            Some(line) => End::CrashPoint(line),
            None => End::Exited(status),
        }))
    }

    /// The crash point's line in this life's part of the log.
    fn kill_line(&self) -> Option<String> {
        let text = std::fs::read(&self.log).ok()?;
        let from = usize::try_from(self.log_from).ok()?.min(text.len());
        String::from_utf8_lossy(&text[from..])
            .lines()
            .find_map(|l| {
                l.split_once(super::KILL_LINE)
                    .map(|(_, rest)| rest.trim().to_owned())
            })
    }

    /// SIGKILL, as a crash would. A crash point that fired meanwhile wins.
    pub fn kill9(&mut self) -> End {
        let Some(mut child) = self.child.take() else {
            return End::Killed;
        };
        let _ = child.kill();
        let _ = child.wait();
        match self.kill_line() {
            Some(line) => End::CrashPoint(line),
            None => End::Killed,
        }
    }

    /// SIGTERM, then waits up to `timeout` for the node to upload what it holds and exit.
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("sluice is not running");
        };
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .context("sending SIGTERM to sluice")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().context("waiting for sluice")? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("sluice did not stop within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
