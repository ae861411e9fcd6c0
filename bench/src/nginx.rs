//! The reference users compare an ingest server with: Debian's nginx (`nginx-light`) in one
//! process answering `return 204` to every request, started from a configuration written into
//! a temporary directory.
//!
//! nginx reads (and discards) each body before answering, as the bare hyper baseline does.
//! `master_process off` makes the one process that serves also the one the CPU probe and the
//! RSS reading see: the same as "one worker", without a master beside it.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Where Debian installs it.
const DEBIAN_PATH: &str = "/usr/sbin/nginx";
/// How long nginx may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// `explicit`, or Debian's nginx, or the first `nginx` on `PATH`; `None` when there is none.
pub fn find(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_owned());
    }
    let debian = Path::new(DEBIAN_PATH);
    if debian.is_file() {
        return Some(debian.to_owned());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nginx"))
            .find(|candidate| candidate.is_file())
    })
}

/// A running nginx on a loopback port of its own.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    /// Holds the configuration, pid file, logs and temp paths until nginx has stopped.
    dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start(bin: &Path) -> Result<Nginx> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-bench-nginx-")
            .tempdir()
            .context("creating nginx's directory")?;
        // A port the kernel just handed out and took back: nothing else of this run binds
        // ports by number, and nginx fails loudly (and the bench with it) if it is taken.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port for nginx")?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let root = dir.path().display().to_string();
        let config = format!(
            "daemon off;\n\
             master_process off;\n\
             worker_processes 1;\n\
             pid {root}/nginx.pid;\n\
             error_log {root}/error.log warn;\n\
             events {{ worker_connections 16384; }}\n\
             http {{\n\
             \x20 access_log off;\n\
             \x20 client_body_temp_path {root}/body;\n\
             \x20 proxy_temp_path {root}/proxy;\n\
             \x20 fastcgi_temp_path {root}/fastcgi;\n\
             \x20 uwsgi_temp_path {root}/uwsgi;\n\
             \x20 scgi_temp_path {root}/scgi;\n\
             \x20 keepalive_requests 100000000;\n\
             \x20 keepalive_timeout 300s;\n\
             \x20 client_max_body_size 1m;\n\
             \x20 server {{\n\
             \x20   listen {addr} backlog=4096;\n\
             \x20   location / {{ return 204; }}\n\
             \x20 }}\n\
             }}\n"
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::File::create(&conf)
            .and_then(|mut f| f.write_all(config.as_bytes()))
            .with_context(|| format!("writing {}", conf.display()))?;
        let mut child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect(addr).is_ok() {
                break;
            }
            if let Some(status) = child.try_wait().context("waiting for nginx")? {
                let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
                bail!("nginx exited at start ({status}): {}", log.trim());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("nginx did not answer on {addr} within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Nginx { child, addr, dir })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak RSS of the serving process, while it runs.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        crate::sluice::vm_hwm_kib(&format!("/proc/{}/status", self.pid()))
    }

    /// Stops nginx (SIGQUIT: finish what is in flight) and waits, SIGKILL after 5 s.
    pub fn stop(mut self) {
        // The child is ours and not yet waited for; `kill` sends the signal without libc.
        let _ = Command::new("kill")
            .arg("-QUIT")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                drop(self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(self.dir);
    }
}
