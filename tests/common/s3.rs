//! A real S3-compatible server for tests: s3s-fs (installed by scripts/test.sh), which keeps
//! each object as a file under its root, so tests can also read what was written.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait_for;

/// The test credentials s3s-fs is started with.
pub const ACCESS_KEY: &str = "sluice-test";
pub const SECRET_KEY: &str = "sluice-test-secret";

/// The s3s-fs binary: `SLUICE_TEST_S3S_FS`, else where scripts/test.sh installs it.
pub fn s3s_fs() -> PathBuf {
    match std::env::var_os("SLUICE_TEST_S3S_FS") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME").expect("HOME");
            Path::new(&home).join(".cache/sluice/tools/bin/s3s-fs")
        }
    }
}

/// One s3s-fs process on a loopback port; killed (by its PID, through `Child`) when dropped.
pub struct S3Server {
    child: Child,
    pub port: u16,
    pub root: PathBuf,
}

impl S3Server {
    /// Starts s3s-fs serving `root` (a bucket is a directory in it) on `port`.
    pub fn start(root: &Path, port: u16) -> S3Server {
        std::fs::create_dir_all(root).expect("s3 root");
        let child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}); scripts/test.sh installs it",
                    s3s_fs().display()
                )
            });
        let up = wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "s3s-fs did not start");
        S3Server {
            child,
            port,
            root: root.to_path_buf(),
        }
    }

    /// The environment with which Sluice's object_store reaches this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
