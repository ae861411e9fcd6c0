//! `sluice-bench mqtt --connect-rate` and `--idle-connections`: what new and idle MQTT
//! connections cost a broker, Sluice and mosquitto measured the same way in the same run.
//!
//! - **Connect rate**: new connections opened on a fixed schedule (`rate` a second for
//!   `secs`), each sending a CONNECT, waiting for its CONNACK, then DISCONNECT. Counted: the
//!   CONNACKs (accepted or refused), and every connection closed before its CONNACK, whose
//!   TCP connect failed, or that got no answer; the rate achieved is the accepted CONNACKs
//!   over the time from the first connect to the last CONNACK.
//! - **Idle connections**: N connections opened and held without traffic (keep-alive
//!   3,600 s, so no PINGREQ falls into the measurement), and the server's RSS growth per
//!   connection while all are open.
//!
//! Both spread their connections over several loopback source addresses (127.0.0.2, ...):
//! one address has about 28,000 ephemeral ports. The bench raises its own descriptor limit
//! (the hard one too when it runs as root, up to `fs.nr_open`); the servers it starts inherit
//! it. Every connection is bounded in time; everything talks to 127.0.0.x only.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::BytesMut;
use sluice_loadtest::mqtt::codec::{self, Incoming, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::sluice::status_kib;

/// Bound on a TCP connect (a full listen backlog retransmits a SYN after 1 s, 3 s, ...).
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on the wait for a CONNACK: longer than a broker's own connect timeout (Sluice's
/// `mqtt.connect_timeout_secs`, 10 s, for a place among the connecting, and as much again
/// for the CONNECT), so that a broker's answer is never mistaken for silence.
const CONNACK_TIMEOUT: Duration = Duration::from_secs(25);
/// Bound on the wait for the broker to close after DISCONNECT.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections per loopback source address at most (of about 28,000 ephemeral ports, with
/// room for those still in TIME_WAIT from an earlier run).
const CONNECTIONS_PER_SOURCE: usize = 4_000;
/// Keep-alive asked by idle connections: long enough that none sends a PINGREQ while
/// measured (Sluice and the bench's mosquitto allow up to 3,600 s).
const IDLE_KEEP_ALIVE_SECS: u16 = 3600;

/// The credentials and protocol of the connections.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub version: Version,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// What one connection got for its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accepted,
    /// A CONNACK with a non-zero code.
    Refused(u8),
    /// The broker closed or reset the connection before a CONNACK.
    ClosedBeforeConnAck,
    TcpFailed,
    NoAnswer,
}

/// Opens one connection from `source`, sends CONNECT, and reads the answer.
async fn open(
    client: &Client,
    source: Ipv4Addr,
    client_id: &str,
    keep_alive: u16,
) -> (Outcome, Option<TcpStream>, Option<String>) {
    match tcp_connect(client.addr, source).await {
        Ok(stream) => handshake(client, stream, client_id, keep_alive).await,
        Err(e) => (Outcome::TcpFailed, None, Some(e)),
    }
}

/// A TCP connection from `source` (any free port; a port whose earlier connection is in
/// TIME_WAIT may be taken again, as several runs in a row would otherwise run out).
async fn tcp_connect(addr: SocketAddr, source: Ipv4Addr) -> Result<TcpStream, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket.set_reuseaddr(true).ok();
    socket
        .bind(SocketAddr::from((source, 0)))
        .map_err(|e| format!("bind {source}: {e}"))?;
    match tokio::time::timeout(TCP_CONNECT_TIMEOUT, socket.connect(addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err("connect timed out".into()),
    }
}

/// Sends CONNECT on `stream` and reads the answer.
async fn handshake(
    client: &Client,
    mut stream: TcpStream,
    client_id: &str,
    keep_alive: u16,
) -> (Outcome, Option<TcpStream>, Option<String>) {
    stream.set_nodelay(true).ok();
    let mut out = BytesMut::with_capacity(128);
    codec::connect(
        &mut out,
        client.version,
        client_id,
        client.username.as_deref(),
        client.password.as_deref(),
        keep_alive,
    );
    if let Err(e) = stream.write_all(&out).await {
        return (
            Outcome::ClosedBeforeConnAck,
            None,
            Some(format!("sending CONNECT: {e}")),
        );
    }
    let mut inbuf = BytesMut::with_capacity(64);
    let answer = tokio::time::timeout(CONNACK_TIMEOUT, async {
        loop {
            match codec::decode(&mut inbuf) {
                Ok(Some(Incoming::ConnAck { code: 0 })) => return (Outcome::Accepted, None),
                Ok(Some(Incoming::ConnAck { code })) => return (Outcome::Refused(code), None),
                Ok(Some(other)) => {
                    return (
                        Outcome::ClosedBeforeConnAck,
                        Some(format!("expected CONNACK, got {other:?}")),
                    )
                }
                Ok(None) => {}
                Err(e) => return (Outcome::ClosedBeforeConnAck, Some(e.to_string())),
            }
            match stream.read_buf(&mut inbuf).await {
                Ok(0) => {
                    return (
                        Outcome::ClosedBeforeConnAck,
                        Some("closed before CONNACK".into()),
                    )
                }
                Ok(_) => {}
                Err(e) => {
                    return (
                        Outcome::ClosedBeforeConnAck,
                        Some(format!("before CONNACK: {e}")),
                    )
                }
            }
        }
    })
    .await;
    match answer {
        Ok((outcome, error)) => (outcome, Some(stream), error),
        Err(_) => (Outcome::NoAnswer, None, Some("no CONNACK".into())),
    }
}

/// Sends DISCONNECT and waits (bounded) for the broker to close, so that the broker's side
/// holds the TIME_WAIT, not the bench's ports.
async fn disconnect(mut stream: TcpStream) {
    // DISCONNECT with remaining length 0: "normal disconnection" on 3.1.1 and 5 alike.
    if stream.write_all(&[0xE0, 0x00]).await.is_ok() {
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// Loopback source addresses for `connections`: 127.0.0.2 and up, one per
/// [`CONNECTIONS_PER_SOURCE`], at least `min`.
fn sources(connections: usize, min: usize) -> Vec<Ipv4Addr> {
    let count = connections
        .div_ceil(CONNECTIONS_PER_SOURCE)
        .max(min)
        .min(250);
    (0..count)
        .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i as u8))
        .collect()
}

/// Counts of a run's outcomes.
#[derive(Debug, Default, Clone)]
pub struct Outcomes {
    pub attempted: u64,
    pub accepted: u64,
    /// CONNACKs with a non-zero code (server busy and the like).
    pub refused: u64,
    pub closed_before_connack: u64,
    pub tcp_failed: u64,
    pub no_answer: u64,
    pub first_error: Option<String>,
}

impl Outcomes {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "attempted": self.attempted, "accepted": self.accepted, "refused": self.refused,
            "closed_before_connack": self.closed_before_connack,
            "tcp_failed": self.tcp_failed, "no_answer": self.no_answer,
            "first_error": self.first_error,
        })
    }

    fn count(&mut self, outcome: Outcome, error: Option<String>) {
        self.attempted += 1;
        match outcome {
            Outcome::Accepted => self.accepted += 1,
            Outcome::Refused(_) => self.refused += 1,
            Outcome::ClosedBeforeConnAck => self.closed_before_connack += 1,
            Outcome::TcpFailed => self.tcp_failed += 1,
            Outcome::NoAnswer => self.no_answer += 1,
        }
        if outcome != Outcome::Accepted && self.first_error.is_none() {
            self.first_error = error.or_else(|| Some(format!("{outcome:?}")));
        }
    }
}

/// What the connect-rate scenario measured.
#[derive(Debug, Clone)]
pub struct ConnectRate {
    pub outcomes: Outcomes,
    /// Accepted CONNACKs over the time from the first connect to the last CONNACK.
    pub accepted_per_sec: f64,
    /// From the start of the TCP connect to the CONNACK, accepted connections.
    pub connack_ms_p50: f64,
    pub connack_ms_p99: f64,
    pub connack_ms_max: f64,
}

/// Opens `rate × secs` connections on schedule, each CONNECT → CONNACK → DISCONNECT.
pub async fn connect_rate(client: Client, rate: f64, secs: u64) -> Result<ConnectRate> {
    let total = (rate * secs as f64).round().max(1.0) as usize;
    let sources = Arc::new(sources(total, 8));
    let client = Arc::new(client);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for index in 0..total {
        let due = started + Duration::from_secs_f64(index as f64 / rate);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let client = client.clone();
        let source = sources[index % sources.len()];
        tasks.push(tokio::spawn(async move {
            let begun = Instant::now();
            let (outcome, stream, error) =
                open(&client, source, &format!("rate-{index}"), 60).await;
            let answered = Instant::now();
            if let Some(stream) = stream {
                disconnect(stream).await;
            }
            (outcome, error, answered.duration_since(begun), answered)
        }));
    }
    collect_rate(tasks, started).await
}

type RateTask = tokio::task::JoinHandle<(Outcome, Option<String>, Duration, Instant)>;

/// Waits for every connection of a connect-rate or burst run and sums them up.
async fn collect_rate(tasks: Vec<RateTask>, started: Instant) -> Result<ConnectRate> {
    let mut outcomes = Outcomes::default();
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3).context("histogram")?;
    let mut last_connack = started;
    for task in tasks {
        let (outcome, error, took, at) = task.await.context("a connection task")?;
        if outcome == Outcome::Accepted {
            histogram.record(took.as_micros() as u64).ok();
            last_connack = last_connack.max(at);
        }
        outcomes.count(outcome, error);
    }
    let span = last_connack.duration_since(started).as_secs_f64();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(ConnectRate {
        accepted_per_sec: if span > 0.0 {
            outcomes.accepted as f64 / span
        } else {
            0.0
        },
        outcomes,
        connack_ms_p50: ms(0.5),
        connack_ms_p99: ms(0.99),
        connack_ms_max: histogram.max() as f64 / 1000.0,
    })
}

/// Opens `count` TCP connections at once, and only when all are open (or failed) sends every
/// CONNECT: what a fleet reconnecting together looks like over a network whose round trip
/// puts the CONNECTs behind the handshakes (tests/mqtt_connect_burst.rs does the same).
/// Each accepted connection then DISCONNECTs.
pub async fn connect_burst(client: Client, count: usize) -> Result<ConnectRate> {
    let sources = Arc::new(sources(count, 4));
    let client = Arc::new(client);
    let opened = Arc::new(tokio::sync::Barrier::new(count));
    let started = Instant::now();
    let tasks: Vec<_> = (0..count)
        .map(|index| {
            let client = client.clone();
            let opened = opened.clone();
            let source = sources[index % sources.len()];
            tokio::spawn(async move {
                let begun = Instant::now();
                let stream = tcp_connect(client.addr, source).await;
                opened.wait().await;
                let (outcome, stream, error) = match stream {
                    Ok(stream) => handshake(&client, stream, &format!("burst-{index}"), 60).await,
                    Err(e) => (Outcome::TcpFailed, None, Some(e)),
                };
                let answered = Instant::now();
                if let Some(stream) = stream {
                    disconnect(stream).await;
                }
                (outcome, error, answered.duration_since(begun), answered)
            })
        })
        .collect();
    collect_rate(tasks, started).await
}

/// What the idle-connection scenario measured.
#[derive(Debug, Clone)]
pub struct IdleMemory {
    pub outcomes: Outcomes,
    pub sources: usize,
    pub connect_secs: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
}

impl IdleMemory {
    /// Server RSS growth per connection held, in bytes.
    pub fn per_connection_bytes(&self) -> Option<u64> {
        (self.outcomes.accepted > 0).then(|| {
            self.rss_after_kib.saturating_sub(self.rss_before_kib) * 1024 / self.outcomes.accepted
        })
    }
}

/// Opens `connections` idle connections to the server `pid` at `rate` a second, holds them
/// `settle` after the last, samples the server's RSS, and closes them.
pub async fn idle(
    client: Client,
    pid: u32,
    connections: usize,
    rate: f64,
    settle: Duration,
) -> Result<IdleMemory> {
    let status = format!("/proc/{pid}/status");
    let rss_before_kib = status_kib(&status, "VmRSS:")?;
    let sources = Arc::new(sources(connections, 4));
    let client = Arc::new(client);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for index in 0..connections {
        let due = started + Duration::from_secs_f64(index as f64 / rate.max(1.0));
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let client = client.clone();
        let source = sources[index % sources.len()];
        tasks.push(tokio::spawn(async move {
            open(
                &client,
                source,
                &format!("idle-{index}"),
                IDLE_KEEP_ALIVE_SECS,
            )
            .await
        }));
    }
    let mut outcomes = Outcomes::default();
    let mut held = Vec::with_capacity(connections);
    for task in tasks {
        let (outcome, stream, error) = task.await.context("a connection task")?;
        outcomes.count(outcome, error);
        if let (Outcome::Accepted, Some(stream)) = (outcome, stream) {
            held.push(stream);
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let rss_after_kib = status_kib(&status, "VmRSS:")?;
    // DISCONNECT, so that the server closes first and keeps the TIME_WAITs, not the bench's
    // source ports.
    let closing: Vec<_> = held
        .into_iter()
        .map(|stream| tokio::spawn(disconnect(stream)))
        .collect();
    for task in closing {
        let _ = task.await;
    }
    Ok(IdleMemory {
        outcomes,
        sources: sources.len(),
        connect_secs,
        rss_before_kib,
        rss_after_kib,
    })
}

/// Raises this process's descriptor limit to at least `wanted` where it can: the soft limit
/// to the hard one, and, as root, the hard limit too (up to `fs.nr_open`). The servers the
/// bench starts inherit it. Returns the soft limit obtained.
pub fn raise_descriptor_limit(wanted: u64) -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let before = getrlimit(Resource::Nofile);
    let hard = before.maximum.unwrap_or(u64::MAX);
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    let target = wanted.min(nr_open).max(hard.min(wanted));
    if target > hard {
        // Only root may raise the hard limit; otherwise fall through to the soft one.
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: Some(target),
            },
        );
    }
    let now = getrlimit(Resource::Nofile);
    let hard = now.maximum.unwrap_or(u64::MAX);
    if now.current.unwrap_or(u64::MAX) < hard {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}
