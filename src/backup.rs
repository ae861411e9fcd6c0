//! `sluice controlplane backup <path or URL>` and `restore <path or URL>`.
//!
//! The running control plane holds its redb file locked, so a backup is asked of it over its
//! API (`GET /api/v1/operator/backup`, an operator's token), which copies the store as of one
//! read transaction; this saves the answer to a file or to an object in object storage
//! (`s3://bucket/key`, `gs://`, `az://`, reached with the same environment variables as the
//! lake). A restore needs the control plane stopped and works on its data directory
//! (`sluice_controlplane::backup::restore`), from a file or an object fetched first.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use sluice_storage::lake::Lake;

/// The most a backup may weigh: far above any control plane's store, low enough that a wrong
/// URL answering forever cannot fill the disk.
const BACKUP_BYTES_MAX: u64 = 4 << 30;

/// Where a backup is written or read: a local file, or an object in object storage.
pub enum Location {
    File(PathBuf),
    /// `store` is the URL of the object's directory (opened like the lake), `name` its last
    /// path segment.
    Object {
        url: String,
        store: String,
        name: String,
    },
}

impl Location {
    /// `s3://`, `gs://`, `az://` (and `abfs[s]://`, `s3a://`) URLs are objects; anything else,
    /// `file://` included, a local path.
    pub fn parse(arg: &str) -> Result<Location> {
        let remote = ["s3://", "s3a://", "gs://", "az://", "abfs://", "abfss://"];
        if !remote.iter().any(|scheme| arg.starts_with(scheme)) {
            let path = arg.strip_prefix("file://").unwrap_or(arg);
            return Ok(Location::File(PathBuf::from(path)));
        }
        let (scheme, rest) = arg.split_once("://").unwrap_or_default();
        match rest.rsplit_once('/') {
            Some((dir, name)) if !dir.is_empty() && !name.is_empty() => Ok(Location::Object {
                url: arg.to_owned(),
                store: format!("{scheme}://{dir}"),
                name: name.to_owned(),
            }),
            _ => bail!("{arg}: give the object's whole name, e.g. s3://bucket/backups/cp.redb"),
        }
    }

    fn describe(&self) -> String {
        match self {
            Location::File(path) => path.display().to_string(),
            Location::Object { url, .. } => url.clone(),
        }
    }
}

/// Asks the control plane at `api_url` for a backup and writes it to `to` (never over an
/// existing file or object). Returns the configuration version it holds and its size.
pub fn save(api_url: &str, token: &str, to: &Location, timeout: Duration) -> Result<(u64, u64)> {
    match to {
        Location::File(path) if path.exists() => {
            bail!("{} exists; give a new file name", path.display())
        }
        Location::Object { .. } if exists(to)? => {
            bail!("{} exists; give a new object name", to.describe())
        }
        _ => {}
    }
    let (version, body) = fetch(api_url, token, timeout)?;
    match to {
        Location::File(path) => write_file(path, &body)?,
        Location::Object { .. } => put_object(to, body.clone())?,
    }
    Ok((version, body.len() as u64))
}

/// The local file a restore reads: `from` itself, or the object fetched into `scratch`.
pub fn local_copy(from: &Location, scratch: &Path) -> Result<PathBuf> {
    match from {
        Location::File(path) => Ok(path.clone()),
        Location::Object { name, .. } => {
            let body = get_object(from)?;
            let path = scratch.join(name);
            write_file(&path, &body)?;
            Ok(path)
        }
    }
}

/// One object-store call on a runtime of its own (the commands around it are synchronous).
fn on_store<T>(
    location: &Location,
    call: impl AsyncFnOnce(&dyn ObjectStore, ObjectPath) -> object_store::Result<T>,
) -> Result<T> {
    let Location::Object { store, name, .. } = location else {
        bail!("not an object: {}", location.describe());
    };
    let lake = Lake::open(store).with_context(|| format!("opening {store}"))?;
    let path: ObjectPath = lake.prefix().clone().join(name.as_str());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for object storage")?;
    runtime
        .block_on(call(lake.store().as_ref(), path))
        .with_context(|| location.describe())
}

fn exists(location: &Location) -> Result<bool> {
    on_store(location, async |store, path| {
        match store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    })
}

fn put_object(location: &Location, body: Vec<u8>) -> Result<()> {
    on_store(location, async |store, path| {
        let payload = PutPayload::from(body);
        // Create-only where the store supports it (S3 If-None-Match, GCS, Azure); `exists`
        // above already looked for stores that do not.
        let create = PutOptions::from(PutMode::Create);
        match store.put_opts(&path, payload.clone(), create).await {
            Err(object_store::Error::NotImplemented { .. }) => {
                store.put(&path, payload).await.map(|_| ())
            }
            other => other.map(|_| ()),
        }
    })
    .context("uploading the backup")
}

fn get_object(location: &Location) -> Result<Vec<u8>> {
    on_store(location, async |store, path| {
        let found = store.get(&path).await?;
        if found.meta.size > BACKUP_BYTES_MAX {
            return Err(object_store::Error::Generic {
                store: "backup",
                source: format!("{} bytes is more than a backup can be", found.meta.size).into(),
            });
        }
        Ok(found.bytes().await?.to_vec())
    })
    .context("downloading the backup")
}

/// GETs the backup from the control plane: its configuration version and its bytes.
fn fetch(api_url: &str, token: &str, timeout: Duration) -> Result<(u64, Vec<u8>)> {
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
    answer.drain(..head_end + 4);
    Ok((version, answer))
}

/// Writes `body` to `path`, whole and synced under another name first: a crash never leaves
/// half a backup under the name asked for.
fn write_file(path: &Path, body: &[u8]) -> Result<()> {
    let partial = PathBuf::from(format!("{}.partial", path.display()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    file.write_all(body)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("naming {}", path.display()))
}
