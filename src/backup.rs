//! `sluice controlplane backup <path>` and `restore <path>`.
//!
//! The running control plane holds its redb file locked, so a backup is asked of it over its
//! API (`GET /api/v1/operator/backup`, an operator's token), which copies the store as of one
//! read transaction; this saves the answer. A restore needs the control plane stopped and works
//! on its data directory (`sluice_controlplane::backup::restore`).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

/// The most a backup may weigh: far above any control plane's store, low enough that a wrong
/// URL answering forever cannot fill the disk.
const BACKUP_BYTES_MAX: u64 = 4 << 30;

/// Asks the control plane at `api_url` for a backup and writes it to `path` (not over an
/// existing file). Returns the configuration version it holds and its size.
pub fn save(api_url: &str, token: &str, path: &Path, timeout: Duration) -> Result<(u64, u64)> {
    if path.exists() {
        bail!("{} exists; give a new file name", path.display());
    }
    let rest = api_url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{api_url}: give the API's http:// URL"))?
        .trim_end_matches('/');
    let authority = if rest.contains(':') {
        rest.to_owned()
    } else {
        format!("{rest}:80")
    };
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .ok_or_else(|| anyhow!("{authority} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to the control plane at {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // HTTP/1.0: the answer ends when the connection does, with no chunked encoding to undo.
    write!(
        stream,
        "GET /api/v1/operator/backup HTTP/1.0\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\nUser-Agent: sluice-backup\r\n\r\n"
    )
    .context("sending the backup request")?;
    let mut answer = Vec::new();
    stream
        .take(BACKUP_BYTES_MAX + 64 * 1024)
        .read_to_end(&mut answer)
        .context("reading the backup")?;
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("the control plane's answer has no end of head"))?;
    let head = String::from_utf8_lossy(&answer[..head_end]).into_owned();
    let body = &answer[head_end + 4..];
    let status_line = head.lines().next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP answer: {status_line:?}"))?;
    if status != 200 {
        let detail = String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned();
        bail!("the control plane answered {status_line}: {detail}");
    }
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    if let Some(length) = header("content-length").and_then(|l| l.parse::<usize>().ok()) {
        if length != body.len() {
            bail!(
                "the backup was cut: {} of {length} bytes arrived",
                body.len()
            );
        }
    }
    let version = header("x-sluice-config-version")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Written whole and synced under another name first: a crash never leaves half a backup
    // under the name asked for.
    let partial = PathBuf::from(format!("{}.partial", path.display()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    file.write_all(body)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("naming {}", path.display()))?;
    Ok((version, body.len() as u64))
}
