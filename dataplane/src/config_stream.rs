//! The node's end of the configuration stream from the control plane.
//!
//! The node connects (it initiates, so it can sit behind NAT), says which version it holds and
//! that version's content hash, and applies what comes: a full snapshot, or deltas. Each
//! version is validated, swapped in atomically, written to the redb cache and acknowledged; a
//! version that cannot be applied is refused with the reason (NACK) and the node keeps serving
//! the last good one. A gap or a hash that differs (a delta's result, or a heartbeat for the
//! version held) makes it reconnect asking for a full snapshot. A silent connection (no
//! heartbeat for [`IDLE_TIMEOUT`]) or any error makes it reconnect with backoff and jitter.
//! While the control plane is away the node serves from its last-known-good configuration,
//! also across restarts (the cache), and says so in `/readyz` and metrics.
//!
//! It runs on a thread of its own with a small tokio runtime; it never touches the request
//! path beyond the atomic swap in [`Access::apply`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use rand::Rng;
use sluice_config::delta::DeltaError;
use sluice_config::snapshot::ConfigSnapshot;
use sluice_config::state::{ConfigChange, ConfigState};
use sluice_config::stream::{Ack, StreamMessage, ACKS_PATH, STREAM_PATH};
use sluice_storage::cache::{CacheError, ConfigCache};
use sluice_storage::shutdown::Shutdown;
use tokio::net::TcpStream;
use tracing::{error, info, warn};

use crate::access::Access;
use crate::metrics::NodeMetrics;

/// A connection with no line for this long is taken for dead (heartbeats come every 5 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest line (a full snapshot of 100,000 tokens is about 25 MB).
const LINE_BYTES_MAX: usize = 256 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Where the control plane is and how to prove who we are.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// `http://host:port` of the control-plane API.
    pub url: String,
    pub secret: String,
    pub node_id: String,
    /// This node's HTTP ingest address, for the operator's node list.
    pub http_addr: String,
}

/// How the stream is doing, for `/readyz`.
#[derive(Debug, Default)]
pub struct StreamStatus {
    pub connected: AtomicBool,
    pub last_error: Mutex<Option<String>>,
}

/// Why a session ended.
enum End {
    /// Reconnect, asking for what the node holds.
    Retry(StreamError),
    /// Reconnect asking for a full snapshot (gap or drift).
    Resync(StreamError),
    Stopped,
}

/// What interrupted the stream; shown in `/readyz` as `config_stream.last_error`.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("building the request: {0}")]
    Request(#[source] http::Error),
    #[error("connecting to {authority} timed out")]
    ConnectTimeout { authority: String },
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake with {authority}: {source}")]
    Handshake {
        authority: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{authority} did not answer in time")]
    AnswerTimeout { authority: String },
    #[error("request to {authority}: {source}")]
    Send {
        authority: String,
        #[source]
        source: hyper::Error,
    },
    #[error("the control plane answered {status}: {body}")]
    Refused { status: StatusCode, body: String },
    #[error("no heartbeat from the control plane")]
    Silent,
    #[error("the control plane ended the stream")]
    Ended,
    #[error("reading the stream: {0}")]
    Read(#[source] hyper::Error),
    #[error("a line of the stream is over {LINE_BYTES_MAX} bytes")]
    LineTooLong,
    #[error("unreadable message: {0}")]
    Unreadable(#[source] serde_json::Error),
    #[error(transparent)]
    Delta(DeltaError),
    #[error("version {version} hashes differently here: this copy drifted")]
    Drift { version: u64 },
    #[error("the control plane is at version {theirs}, this node at {ours}")]
    Behind { theirs: u64, ours: u64 },
}

/// The running stream; it ends on the shutdown signal.
pub struct ConfigStream {
    thread: JoinHandle<()>,
}

/// What the session works on.
struct Local {
    settings: StreamSettings,
    /// host:port to connect to.
    authority: String,
    /// The configuration served now, indexed so that a delta costs what it touches.
    state: ConfigState,
    cache: Arc<ConfigCache>,
    access: Arc<Access>,
    metrics: Arc<NodeMetrics>,
    status: Arc<StreamStatus>,
    /// Whether the current session applied a version or stayed up long: only then does the
    /// backoff start over (a session that fails at once must not reconnect in a tight loop).
    session_was_useful: bool,
    /// Heartbeats in a row announcing a version newer than the one held.
    behind_heartbeats: u32,
}

/// A session up this long counts as healthy.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

impl ConfigStream {
    /// Starts following the control plane from `current` (what the node serves now).
    pub fn start(
        settings: StreamSettings,
        current: ConfigSnapshot,
        cache: Arc<ConfigCache>,
        access: Arc<Access>,
        metrics: Arc<NodeMetrics>,
        status: Arc<StreamStatus>,
        shutdown: Shutdown,
    ) -> std::io::Result<ConfigStream> {
        let authority = settings
            .url
            .strip_prefix("http://")
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "control-plane URL {:?} must start with http://",
                    settings.url
                ))
            })?
            .trim_end_matches('/')
            .to_owned();
        let version = current.version;
        let state = ConfigState::new(current).unwrap_or_else(|e| {
            // Cannot happen for a configuration that was validated before it was cached;
            // an empty state makes the control plane send a full snapshot.
            warn!(error = %e, version, "the configuration served at start does not index; asking for a full snapshot");
            ConfigState::empty()
        });
        let local = Local {
            settings,
            authority,
            state,
            cache,
            access,
            metrics,
            status,
            session_was_useful: false,
            behind_heartbeats: 0,
        };
        let thread = std::thread::Builder::new()
            .name("sluice-config-stream".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        warn!(error = %e, "the configuration stream cannot start its runtime");
                        return;
                    }
                };
                runtime.block_on(follow(local, shutdown));
            })?;
        Ok(ConfigStream { thread })
    }
}

impl ConfigStream {
    /// Waits for the stream's thread to end (after the shutdown signal).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Connects, follows, reconnects, until told to stop.
async fn follow(mut local: Local, mut shutdown: Shutdown) {
    let mut backoff = BACKOFF_MIN;
    let mut resync = false;
    loop {
        local.session_was_useful = false;
        local.behind_heartbeats = 0;
        let started = std::time::Instant::now();
        let end = tokio::select! {
            end = session(&mut local, resync) => end,
            _ = shutdown.requested() => End::Stopped,
        };
        local.status.connected.store(false, Ordering::Relaxed);
        local.metrics.config_stream_connected.set(0);
        if local.session_was_useful || started.elapsed() >= HEALTHY_SESSION {
            backoff = BACKOFF_MIN;
        }
        let reason = match end {
            End::Stopped => return,
            End::Retry(reason) => {
                resync = false;
                reason
            }
            End::Resync(reason) => {
                resync = true;
                reason
            }
        };
        warn!(%reason, version = local.state.version(), "configuration stream interrupted; serving the last good configuration");
        if let Ok(mut last) = local.status.last_error.lock() {
            *last = Some(reason.to_string());
        }
        // Full jitter: nodes that lost the control plane together do not return together.
        let wait = rand::rng().random_range(Duration::ZERO..=backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.requested() => return,
        }
    }
}

fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One connection: request the stream, apply what comes.
async fn session(local: &mut Local, resync: bool) -> End {
    let hash = if resync { "" } else { local.state.hash() };
    let path = format!(
        "{STREAM_PATH}?node={}&addr={}&version={}&hash={}",
        query_escape(&local.settings.node_id),
        query_escape(&local.settings.http_addr),
        local.state.version(),
        hash
    );
    let request = match Request::get(path)
        .header(header::HOST, &local.authority)
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", local.settings.secret),
        )
        .body(Empty::<Bytes>::new())
    {
        Ok(r) => r,
        Err(e) => return End::Retry(StreamError::Request(e)),
    };
    let response = match send(&local.authority, request).await {
        Ok(r) => r,
        Err(e) => return End::Retry(e),
    };
    if response.status() != StatusCode::OK {
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| {
                String::from_utf8_lossy(&b.to_bytes())
                    .chars()
                    .take(500)
                    .collect::<String>()
            })
            .unwrap_or_default();
        return End::Retry(StreamError::Refused { status, body });
    }
    local.status.connected.store(true, Ordering::Relaxed);
    local.metrics.config_stream_connected.set(1);
    if let Ok(mut last) = local.status.last_error.lock() {
        *last = None;
    }
    info!(url = %local.settings.url, version = local.state.version(), "configuration stream connected");
    let mut body = response.into_body();
    let mut buffer: Vec<u8> = Vec::new();
    // Bytes of `buffer` already known to hold no newline.
    let mut scanned = 0;
    loop {
        let frame = match tokio::time::timeout(IDLE_TIMEOUT, body.frame()).await {
            Err(_) => return End::Retry(StreamError::Silent),
            Ok(None) => return End::Retry(StreamError::Ended),
            Ok(Some(Err(e))) => return End::Retry(StreamError::Read(e)),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buffer.len() + data.len() > LINE_BYTES_MAX {
            return End::Retry(StreamError::LineTooLong);
        }
        buffer.extend_from_slice(&data);
        while let Some(offset) = buffer[scanned..].iter().position(|b| *b == b'\n') {
            let end = scanned + offset;
            let line: Vec<u8> = buffer.drain(..=end).collect();
            scanned = 0;
            if let Some(end) = handle(local, &line[..line.len() - 1]).await {
                return end;
            }
        }
        scanned = buffer.len();
    }
}

/// Applies one line; `Some` ends the session.
async fn handle(local: &mut Local, line: &[u8]) -> Option<End> {
    let message: StreamMessage = match serde_json::from_slice(line) {
        Ok(m) => m,
        Err(e) => {
            let error = StreamError::Unreadable(e);
            nack(local, local.state.version(), &error.to_string()).await;
            return Some(End::Resync(error));
        }
    };
    match message {
        StreamMessage::Snapshot { hash, snapshot } => {
            let version = snapshot.version;
            let checked = ConfigState::new(snapshot)
                .map_err(|e| e.to_string())
                .and_then(|state| {
                    if state.hash() == hash {
                        Ok(state)
                    } else {
                        Err(format!(
                            "snapshot hash {} differs from the announced {hash}",
                            state.hash()
                        ))
                    }
                });
            match checked {
                Ok(state) => install_snapshot(local, state).await,
                Err(reason) => nack(local, version, &reason).await,
            }
            None
        }
        StreamMessage::Delta { delta } => {
            if let Err(e) = local.access.check(delta.upsert.iter()) {
                // A schema this node cannot compile: refused like an invalid delta, the node
                // keeps its version (and the control plane, which checks schemas when they
                // are saved, hears why).
                nack(local, delta.to, &e.to_string()).await;
                return None;
            }
            match local.state.apply(&delta) {
                Ok(change) => {
                    install_change(local, change).await;
                    None
                }
                Err(e @ (DeltaError::Gap { .. } | DeltaError::Drift { .. })) => {
                    nack(local, delta.to, &e.to_string()).await;
                    Some(End::Resync(StreamError::Delta(e)))
                }
                Err(e) => {
                    // Refused; the node keeps its version, and a later delta from the refused
                    // one will be a gap, which asks for a fresh snapshot.
                    nack(local, delta.to, &e.to_string()).await;
                    None
                }
            }
        }
        StreamMessage::Heartbeat { version, hash } => {
            if version == local.state.version() && hash != local.state.hash() {
                return Some(End::Resync(StreamError::Drift { version }));
            }
            if version == local.state.version() {
                // In step with the control plane, also when it had nothing to send (a node
                // at version 0 following a control plane that has no configuration yet).
                local.access.mark_configured();
            }
            // Versions arrive before the heartbeat that announces them; two heartbeats ahead
            // of us mean something was missed: reconnect to catch up.
            if version > local.state.version() {
                local.behind_heartbeats += 1;
                if local.behind_heartbeats >= 2 {
                    return Some(End::Retry(StreamError::Behind {
                        theirs: version,
                        ours: local.state.version(),
                    }));
                }
            } else {
                local.behind_heartbeats = 0;
            }
            None
        }
    }
}

/// Serves `state` from now on in place of what was served, keeps it in the cache, and
/// acknowledges it.
async fn install_snapshot(local: &mut Local, state: ConfigState) {
    if let Err(e) = local.access.apply_state(&state) {
        nack(local, state.version(), &e.to_string()).await;
        return;
    }
    local.state = state;
    // Served but not cached (nor acknowledged): a restart serves the cached older version.
    sluice_storage::chaos::point("config-swap");
    let cached = local.cache.store(&local.state.snapshot());
    installed(local, cached).await;
}

/// Serves the version `change` led `local.state` to, updating the access table and the cache
/// in proportion to the change (the whole of them only if they are not where it starts).
async fn install_change(local: &mut Local, change: ConfigChange) {
    if let Err(e) = local.access.apply_change(&change) {
        warn!(error = %e, "rebuilding the access table from the whole configuration");
        if let Err(e) = local.access.apply_state(&local.state) {
            // Checked before the delta was applied; cannot happen.
            error!(error = %e, "the configuration could not be installed");
        }
    }
    sluice_storage::chaos::point("config-swap");
    let cached = match local.cache.store_change(&change) {
        Err(e @ CacheError::NotAtBase { .. }) => {
            warn!(error = %e, "rewriting the whole configuration cache");
            local.cache.store(&local.state.snapshot())
        }
        other => other,
    };
    installed(local, cached).await;
}

/// Acknowledges the version now served once it is cached. A version that could not be cached
/// is still served (a revocation must not wait for a disk) but not acknowledged: after a
/// restart the node would fall back to an older copy, and the control plane's lag shows it.
async fn installed(local: &mut Local, cached: Result<(), CacheError>) {
    local.session_was_useful = true;
    let version = local.state.version();
    local.metrics.config_version.set(version as i64);
    match cached {
        Ok(()) => {
            info!(version, "configuration applied from the control plane");
            ack(local, version, true, None).await;
        }
        Err(e) => {
            warn!(error = %e, version, "caching the configuration failed; serving it without acknowledging");
            if let Ok(mut last) = local.status.last_error.lock() {
                *last = Some(format!("caching version {version} failed: {e}"));
            }
        }
    }
}

async fn nack(local: &Local, version: u64, reason: &str) {
    warn!(version, %reason, "configuration version refused; keeping the last good one");
    ack(local, version, false, Some(reason)).await;
}

/// Tells the control plane; failures are only logged (the next heartbeat or reconnect shows
/// the state anyway).
async fn ack(local: &Local, version: u64, ok: bool, reason: Option<&str>) {
    let body = Ack {
        node: local.settings.node_id.clone(),
        version,
        ok,
        reason: reason.map(str::to_owned),
    };
    let Ok(body) = serde_json::to_vec(&body) else {
        return;
    };
    let request = Request::post(ACKS_PATH)
        .header(header::HOST, &local.authority)
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", local.settings.secret),
        )
        .body(Full::new(Bytes::from(body)));
    let Ok(request) = request else {
        return;
    };
    match send(&local.authority, request).await {
        Ok(response) if response.status().is_success() => {}
        Ok(response) => {
            warn!(status = %response.status(), "the control plane refused an acknowledgement")
        }
        Err(e) => warn!(error = %e, "sending an acknowledgement failed"),
    }
}

/// Sends one request on a new connection.
async fn send<B>(
    authority: &str,
    request: Request<B>,
) -> Result<http::Response<hyper::body::Incoming>, StreamError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority))
        .await
        .map_err(|_| StreamError::ConnectTimeout {
            authority: authority.to_owned(),
        })?
        .map_err(|source| StreamError::Connect {
            authority: authority.to_owned(),
            source,
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| StreamError::Handshake {
            authority: authority.to_owned(),
            source,
        })?;
    tokio::spawn(connection);
    tokio::time::timeout(CONNECT_TIMEOUT, sender.send_request(request))
        .await
        .map_err(|_| StreamError::AnswerTimeout {
            authority: authority.to_owned(),
        })?
        .map_err(|source| StreamError::Send {
            authority: authority.to_owned(),
            source,
        })
}
