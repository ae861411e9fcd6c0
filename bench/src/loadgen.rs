//! The closed-loop HTTP/1.1 load generator shared by every scenario.
//!
//! `connections` keep-alive connections (hyper's `client::conn::http1` over a tokio
//! `TcpStream`), one task each, send POSTs back to back: the next request leaves as soon as
//! the previous response has been read in full. Everything runs for `warmup + duration`; only
//! responses that complete inside the measurement window count, so throughput is
//! `responses in window ÷ duration` and connection set-up and warm-up stay out of it.
//!
//! Latency is the time from asking the connection to send until the whole response body has
//! arrived, recorded in microseconds in an HDR histogram. Because the loop is closed, these are
//! latencies at the throughput reached, not under a fixed arrival rate.
//!
//! Each task drives its own connection future inside the same task (a `select!` with the
//! exchange) instead of spawning it, so one request costs one task wake-up on each side.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::{header, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Name of the load generator's runtime threads; the CPU probe finds them by it.
pub const THREAD_NAME: &str = "bench-loadgen";

/// Longest wait for a TCP connect; a local server that does not accept in this time is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before reconnecting after a failure, so a dead server is not hammered in a spin.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);
/// Histogram range: 1 µs to 60 s at 3 significant digits.
const LATENCY_MAX_US: u64 = 60_000_000;

/// Where and what to send.
pub struct Target {
    pub addr: SocketAddr,
    /// Request paths, e.g. `/v1/ingest/default/telemetry`, taken in turn (each connection
    /// starts at a different one).
    pub paths: Vec<String>,
    /// Full `Authorization` header value, if any.
    pub authorization: Option<String>,
    pub content_type: &'static str,
    /// Pre-built bodies, sent round-robin (each connection starts at a different one).
    pub bodies: Arc<Vec<Bytes>>,
    /// Events in each body.
    pub events_per_body: usize,
    /// Check that a 2xx answer is `{"accepted": events_per_body}` (Sluice), rather than
    /// counting any 2xx as all events taken (the baseline's empty 204).
    pub expect_accepted: bool,
}

/// How long and how hard.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// A request that has no complete answer after this long is an error and its connection
    /// is dropped.
    pub request_timeout: Duration,
}

/// What one scenario measured.
pub struct Outcome {
    /// Connections the generator kept busy.
    pub connections: usize,
    /// Successful (2xx and, for Sluice, the right `accepted`) responses in the window.
    pub requests: u64,
    pub events: u64,
    pub body_bytes: u64,
    /// Failed requests in the window, by kind ("HTTP 503", "timeout", ...).
    pub errors: BTreeMap<String, u64>,
    /// First response body or error text seen for each error kind.
    pub error_samples: BTreeMap<String, String>,
    /// Errors during warm-up or after the window closed (not in `errors`).
    pub errors_outside_window: u64,
    /// Latency of successful requests in the window, µs.
    pub latency_us: Histogram<u64>,
    /// Successful requests completed in each second of the window, to spot stalls.
    pub per_second: Vec<u64>,
    pub window: Duration,
    pub cpu: CpuUse,
}

impl Outcome {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Adds another window of the same scenario to this one (interleaved rounds).
    pub fn absorb(&mut self, other: Outcome) {
        let (mine, theirs) = (self.window.as_secs_f64(), other.window.as_secs_f64());
        self.requests += other.requests;
        self.events += other.events;
        self.body_bytes += other.body_bytes;
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
        for (kind, sample) in other.error_samples {
            self.error_samples.entry(kind).or_insert(sample);
        }
        self.errors_outside_window += other.errors_outside_window;
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        self.per_second.extend(other.per_second);
        let mix = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if mine + theirs > 0.0 => {
                Some((a * mine + b * theirs) / (mine + theirs))
            }
            _ => None,
        };
        let roles: BTreeSet<&String> = self
            .cpu
            .server_threads
            .keys()
            .chain(other.cpu.server_threads.keys())
            .collect();
        let server_threads = roles
            .into_iter()
            .filter_map(|role| {
                let share =
                    |cpu: &CpuUse| Some(cpu.server_threads.get(role).copied().unwrap_or(0.0));
                Some((role.clone(), mix(share(&self.cpu), share(&other.cpu))?))
            })
            .collect();
        self.cpu = CpuUse {
            server_cores: mix(self.cpu.server_cores, other.cpu.server_cores),
            loadgen_cores: mix(self.cpu.loadgen_cores, other.cpu.loadgen_cores),
            other_cores: mix(self.cpu.other_cores, other.cpu.other_cores),
            server_threads,
        };
        self.window += other.window;
    }
}

/// CPU time used in the measurement window, in cores (1.0 = one core busy all the time).
#[derive(Debug, Clone, Default)]
pub struct CpuUse {
    pub server_cores: Option<f64>,
    pub loadgen_cores: Option<f64>,
    /// Everything else on the machine (other processes, interrupts): a benchmark is only
    /// meaningful when this stays near zero.
    pub other_cores: Option<f64>,
    /// The server child's share by thread role (see [`thread_role`]); empty for the
    /// in-process baseline.
    pub server_threads: BTreeMap<String, f64>,
}

/// Whose CPU time counts as the server's.
#[derive(Debug, Clone, Copy)]
pub enum ServerProcess {
    /// Threads of this process named [`crate::baseline::THREAD_NAME`].
    InProcess,
    /// Another process.
    Child(u32),
}

#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.start && t <= self.end
    }
}

struct ConnStats {
    requests: u64,
    events: u64,
    body_bytes: u64,
    errors: BTreeMap<String, u64>,
    error_samples: BTreeMap<String, String>,
    errors_outside_window: u64,
    latency_us: Histogram<u64>,
    per_second: Vec<u64>,
}

impl ConnStats {
    fn new(seconds: usize) -> Result<ConnStats> {
        Ok(ConnStats {
            requests: 0,
            events: 0,
            body_bytes: 0,
            errors: BTreeMap::new(),
            error_samples: BTreeMap::new(),
            errors_outside_window: 0,
            latency_us: new_histogram()?,
            per_second: vec![0; seconds],
        })
    }

    fn error(&mut self, in_window: bool, kind: String, sample: impl FnOnce() -> String) {
        if !in_window {
            self.errors_outside_window += 1;
            return;
        }
        self.error_samples
            .entry(kind.clone())
            .or_insert_with(sample);
        *self.errors.entry(kind).or_default() += 1;
    }
}

/// Whole seconds in the window (a partial last second would look like a stall).
fn window_seconds(duration: Duration) -> usize {
    (duration.as_secs() as usize).max(1)
}

fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).context("creating a latency histogram")
}

/// Runs one scenario: `plan.connections` connections against `target`, bounded by
/// `warmup + duration + request_timeout` plus a small margin.
pub async fn run(target: Arc<Target>, plan: Plan, server: ServerProcess) -> Result<Outcome> {
    anyhow::ensure!(!target.bodies.is_empty(), "no request bodies to send");
    let begin = Instant::now();
    let window = Window {
        start: begin + plan.warmup,
        end: begin + plan.warmup + plan.duration,
    };
    let mut tasks = JoinSet::new();
    for id in 0..plan.connections {
        tasks.spawn(connection(id, target.clone(), window, plan.request_timeout));
    }

    // CPU use over exactly the window, sampled from /proc.
    tokio::time::sleep_until(window.start).await;
    let before = cpu_sample(server);
    tokio::time::sleep_until(window.end).await;
    let after = cpu_sample(server);
    let secs = plan.duration.as_secs_f64();
    let cpu = match (before, after) {
        (Ok(b), Ok(a)) => {
            let cores =
                |after: u64, before: u64| ticks_to_secs(after.saturating_sub(before)) / secs;
            let machine = cores(a.machine, b.machine);
            let ours = cores(a.bench_process + a.child, b.bench_process + b.child);
            let server_threads = a
                .child_threads
                .iter()
                .map(|(role, &after)| {
                    let before = b.child_threads.get(role).copied().unwrap_or(0);
                    (role.clone(), cores(after, before))
                })
                .collect();
            CpuUse {
                server_cores: Some(cores(a.server, b.server)),
                loadgen_cores: Some(cores(a.loadgen, b.loadgen)),
                other_cores: Some((machine - ours).max(0.0)),
                server_threads,
            }
        }
        _ => CpuUse::default(),
    };

    // Every task stops issuing at `window.end`; one in flight ends within the timeout.
    let seconds = window_seconds(plan.duration);
    let mut total = ConnStats::new(seconds)?;
    let collect = async {
        while let Some(joined) = tasks.join_next().await {
            let stats = joined.context("a connection task panicked")??;
            total.requests += stats.requests;
            total.events += stats.events;
            total.body_bytes += stats.body_bytes;
            total.errors_outside_window += stats.errors_outside_window;
            for (sum, n) in total.per_second.iter_mut().zip(&stats.per_second) {
                *sum += n;
            }
            for (kind, n) in stats.errors {
                *total.errors.entry(kind).or_default() += n;
            }
            for (kind, sample) in stats.error_samples {
                total.error_samples.entry(kind).or_insert(sample);
            }
            total
                .latency_us
                .add(&stats.latency_us)
                .context("merging latency histograms")?;
        }
        anyhow::Ok(())
    };
    let limit = plan.request_timeout + Duration::from_secs(5);
    match tokio::time::timeout(limit, collect).await {
        Ok(result) => result?,
        Err(_) => {
            tasks.abort_all();
            anyhow::bail!("connections still busy {limit:?} after the run ended");
        }
    }
    Ok(Outcome {
        connections: plan.connections,
        requests: total.requests,
        events: total.events,
        body_bytes: total.body_bytes,
        errors: total.errors,
        error_samples: total.error_samples,
        errors_outside_window: total.errors_outside_window,
        latency_us: total.latency_us,
        per_second: total.per_second,
        window: plan.duration,
        cpu,
    })
}

/// One keep-alive connection sending back to back until the window closes; reconnects after
/// a transport error.
async fn connection(
    id: usize,
    target: Arc<Target>,
    window: Window,
    request_timeout: Duration,
) -> Result<ConnStats> {
    let mut stats = ConnStats::new(window_seconds(window.end - window.start))?;
    let mut next_body = id;
    'connect: while Instant::now() < window.end {
        let stream =
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    stats.error(window.contains(Instant::now()), "connect".into(), || {
                        err.to_string()
                    });
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
                Err(_) => {
                    stats.error(
                        window.contains(Instant::now()),
                        "connect timeout".into(),
                        String::new,
                    );
                    continue;
                }
            };
        // Small requests must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) =
            match http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await {
                Ok(pair) => pair,
                Err(err) => {
                    stats.error(window.contains(Instant::now()), "handshake".into(), || {
                        err.to_string()
                    });
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            };
        let mut conn = std::pin::pin!(conn);

        while Instant::now() < window.end {
            let body = target.bodies[next_body % target.bodies.len()].clone();
            next_body += 1;
            let body_len = body.len() as u64;
            let path = target
                .paths
                .get(next_body % target.paths.len().max(1))
                .map_or("/", String::as_str);
            let mut request = Request::post(path)
                .header(header::HOST, target.addr.to_string())
                .header(header::CONTENT_TYPE, target.content_type);
            if let Some(auth) = &target.authorization {
                request = request.header(header::AUTHORIZATION, auth.as_str());
            }
            let request = request
                .body(Full::new(body))
                .context("building a request")?;

            let started = Instant::now();
            let exchange = async {
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                Ok::<(StatusCode, Bytes), hyper::Error>((status, body))
            };
            let result = tokio::select! {
                result = tokio::time::timeout(request_timeout, exchange) => result,
                // The connection future only finishes when the connection is gone.
                ended = conn.as_mut() => {
                    let text = match ended {
                        Ok(()) => "closed by the server".to_owned(),
                        Err(err) => err.to_string(),
                    };
                    stats.error(window.contains(Instant::now()), "connection closed".into(), || text);
                    continue 'connect;
                }
            };
            let finished = Instant::now();
            let in_window = window.contains(finished);
            let (status, answer) = match result {
                Ok(Ok(pair)) => pair,
                Ok(Err(err)) => {
                    stats.error(in_window, "transport".into(), || err.to_string());
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue 'connect;
                }
                Err(_) => {
                    stats.error(in_window, "timeout".into(), || {
                        format!("no complete answer within {request_timeout:?}")
                    });
                    continue 'connect;
                }
            };
            if !status.is_success() {
                stats.error(in_window, format!("HTTP {}", status.as_u16()), || {
                    sample_text(&answer)
                });
                continue;
            }
            let events = if target.expect_accepted {
                match accepted(&answer) {
                    Some(n) if n == target.events_per_body as u64 => n,
                    _ => {
                        stats.error(in_window, "wrong accepted count".into(), || {
                            sample_text(&answer)
                        });
                        continue;
                    }
                }
            } else {
                target.events_per_body as u64
            };
            if in_window {
                stats.requests += 1;
                stats.events += events;
                stats.body_bytes += body_len;
                let micros =
                    u64::try_from(finished.duration_since(started).as_micros()).unwrap_or(u64::MAX);
                stats.latency_us.saturating_record(micros.max(1));
                let second = finished.duration_since(window.start).as_secs() as usize;
                if let Some(n) = stats.per_second.get_mut(second) {
                    *n += 1;
                }
            }
        }
        break;
    }
    Ok(stats)
}

/// `N` from a `{"accepted": N}` answer.
fn accepted(body: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("accepted")?.as_u64()
}

/// The start of a response body, for error reports.
fn sample_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
    text.trim().to_owned()
}

struct CpuTicks {
    server: u64,
    loadgen: u64,
    /// This whole process.
    bench_process: u64,
    /// The server child process, if any.
    child: u64,
    /// The child's threads, summed by role. A thread that ends inside the window takes its
    /// ticks with it, so the roles may add up to less than `child`.
    child_threads: BTreeMap<String, u64>,
    /// All CPUs of the machine, busy time only.
    machine: u64,
}

/// Linux reports CPU times in /proc in units of USER_HZ, which is 100 on every architecture
/// Linux supports today (it is part of the ABI, independent of the kernel's HZ).
const USER_HZ: f64 = 100.0;

pub(crate) fn ticks_to_secs(ticks: u64) -> f64 {
    ticks as f64 / USER_HZ
}

fn cpu_sample(server: ServerProcess) -> Result<CpuTicks> {
    let mut server_ticks = 0;
    let mut loadgen_ticks = 0;
    let tasks = std::fs::read_dir("/proc/self/task").context("listing /proc/self/task")?;
    for task in tasks {
        let dir = task.context("reading /proc/self/task")?.path();
        // A thread may exit between listing and reading; skip it.
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let ticks = stat_cpu_ticks(&stat).context("parsing a thread's stat")?;
        let comm = comm.trim();
        if comm.starts_with(THREAD_NAME) {
            loadgen_ticks += ticks;
        } else if comm.starts_with(crate::baseline::THREAD_NAME) {
            server_ticks += ticks;
        }
    }
    let mut child = 0;
    let mut child_threads = BTreeMap::new();
    if let ServerProcess::Child(pid) = server {
        child = process_cpu_ticks(&format!("/proc/{pid}/stat"))?;
        server_ticks = child;
        child_threads = thread_ticks_by_role(pid)?;
    }
    Ok(CpuTicks {
        server: server_ticks,
        loadgen: loadgen_ticks,
        bench_process: process_cpu_ticks("/proc/self/stat")?,
        child,
        child_threads,
        machine: machine_busy_ticks()?,
    })
}

/// CPU ticks of each thread of process `pid`, summed by [`thread_role`].
pub(crate) fn thread_ticks_by_role(pid: u32) -> Result<BTreeMap<String, u64>> {
    let mut roles = BTreeMap::new();
    let dir = format!("/proc/{pid}/task");
    for task in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let dir = task.with_context(|| format!("reading {dir}"))?.path();
        // A thread may exit between listing and reading; skip it.
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue;
        };
        let ticks = stat_cpu_ticks(&stat).context("parsing a thread's stat")?;
        *roles.entry(thread_role(comm.trim())).or_default() += ticks;
    }
    Ok(roles)
}

/// `role cores, role cores` for the roles that used at least 0.01 of a core; empty when none
/// did.
pub(crate) fn busy_threads_text(threads: &BTreeMap<String, f64>) -> String {
    threads
        .iter()
        .filter(|(_, cores)| **cores >= 0.005)
        .map(|(role, cores)| format!("{role} {cores:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A thread's role from its name: numbered siblings (`sluice-http-0`, `sluice-http-1`) and
/// the names the kernel cut at 15 bytes (`sluice-shipper-`) count together.
fn thread_role(comm: &str) -> String {
    comm.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == ':')
        .to_owned()
}

pub(crate) fn process_cpu_ticks(path: &str) -> Result<u64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    stat_cpu_ticks(&stat).with_context(|| format!("parsing {path}"))
}

/// Busy time of all CPUs from the `cpu` line of /proc/stat: user, nice, system, irq,
/// softirq and steal (idle and iowait are not busy; guest time is already in user).
fn machine_busy_ticks() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().context("/proc/stat field is not a number"))
        .collect::<Result<_>>()?;
    let get = |i: usize| fields.get(i).copied().unwrap_or(0);
    Ok(get(0) + get(1) + get(2) + get(5) + get(6) + get(7))
}

/// `utime + stime` from a `/proc/.../stat` line. The command name (field 2) may hold spaces
/// and parentheses, so fields are counted from after its closing parenthesis.
fn stat_cpu_ticks(stat: &str) -> Result<u64> {
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("no command name in stat")?;
    // After the name: field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .context("stat line too short")?
            .parse::<u64>()
            .context("stat field is not a number")
    };
    Ok(field(11)? + field(12)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_and_cut_thread_names_share_a_role() {
        assert_eq!(thread_role("sluice-http-0"), "sluice-http");
        assert_eq!(thread_role("sluice-http-12"), "sluice-http");
        assert_eq!(thread_role("sluice-shipper-"), "sluice-shipper");
        assert_eq!(thread_role("sluice-wal"), "sluice-wal");
        assert_eq!(thread_role("sluice-mqtt:wor"), "sluice-mqtt:wor");
    }

    #[test]
    fn stat_cpu_ticks_reads_utime_and_stime_past_odd_names() {
        let line = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0";
        assert_eq!(stat_cpu_ticks(line).expect("parse"), 300);
    }

    #[test]
    fn accepted_reads_the_count() {
        assert_eq!(accepted(br#"{"accepted":1000}"#), Some(1000));
        assert_eq!(accepted(b"nope"), None);
    }
}
