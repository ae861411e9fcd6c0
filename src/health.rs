//! `sluice health <url>`: the container's health check. The image is distroless (no shell, no
//! curl), so the binary checks itself: one plain-HTTP GET with a short timeout, exit status 0
//! on a 2xx answer, 1 otherwise with a one-line reason on stderr.
//!
//! It speaks just enough HTTP/1.0 to read a status line, on purpose: it runs every few seconds
//! in every container and must never hang, so it carries no HTTP client, no TLS and no
//! redirects. It is meant for the node's own port on loopback.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// The most of the answer read: the status line is in the first bytes.
const HEAD_BYTES_MAX: usize = 1024;

/// Checks `url` once; `Ok` with the status line on a 2xx answer, else why not.
pub fn check(url: &str, timeout: Duration) -> Result<String> {
    let started = Instant::now();
    let (authority, path) = split_url(url)?;
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .ok_or_else(|| anyhow!("{authority} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    // One deadline for the whole check, not one per read.
    let left = |started: Instant| {
        timeout
            .checked_sub(started.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow!("no answer from {addr} within {} ms", timeout.as_millis()))
    };
    stream.set_write_timeout(Some(left(started)?))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: sluice-health\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("sending the request to {addr}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < HEAD_BYTES_MAX {
        stream.set_read_timeout(Some(left(started)?))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!("no answer from {addr} within {} ms", timeout.as_millis());
            }
            Err(e) => {
                return Err(e).with_context(|| format!("reading the answer from {addr}"));
            }
        }
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line).trim().to_owned();
    // "HTTP/1.1 200 OK"
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("{addr} did not answer HTTP (first line: {line:?})"))?;
    if (200..300).contains(&status) {
        Ok(line)
    } else {
        bail!("{url} answered {line}")
    }
}

/// `http://host:port/path` → (`host:port`, `/path`).
fn split_url(url: &str) -> Result<(String, &str)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{url}: give an http:// URL (the check speaks plain HTTP only)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        bail!("{url}: no host");
    }
    // Default port 80, as a URL means.
    let authority = if authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_path() {
        let (a, p) = split_url("http://127.0.0.1:8081/readyz").expect("valid");
        assert_eq!((a.as_str(), p), ("127.0.0.1:8081", "/readyz"));
        let (a, p) = split_url("http://localhost").expect("valid");
        assert_eq!((a.as_str(), p), ("localhost:80", "/"));
        assert!(split_url("https://127.0.0.1/healthz").is_err());
        assert!(split_url("http:///healthz").is_err());
    }
}
