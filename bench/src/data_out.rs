//! `sluice-bench data-out`: how fast data leaves Sluice.
//!
//! - **Webhook delivery**: NDJSON at `--rate` events/s into one source whose output a webhook
//!   delivers to a local receiver answering 200; the latency from each request's `202` to the
//!   receipt of its events.
//! - **Export stream lag**: the same events read live (SSE) from the output's export endpoint;
//!   the latency from `202` to the event arriving on the stream.
//!
//!   Both run once per `--batch-ages` value (the node's `batch.max_age_ms`: the delay before a
//!   file is in the lake, which bounds both).
//! - **Replay**: every event written, read back from the beginning as NDJSON pages, against a
//!   baseline measured in the same run: the same Parquet files decoded by the storage crate with
//!   nothing else done (the reader's ceiling).
//!
//! Every process shares this machine: the load sender, the node, the receiver and the reader.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::sluice::{check_binary, default_binary, free_port};

#[derive(Args, Clone)]
pub struct DataOutArgs {
    /// Events per second sent into the source.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    rate: u64,
    /// Events per NDJSON request.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=20_000))]
    batch_events: u64,
    /// Seconds of load per batch age.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration_secs: u64,
    /// The node's `batch.max_age_ms` values to measure at (the default age is 60000).
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 60000])]
    batch_ages: Vec<u64>,
    /// Events per webhook batch (`batch_events_max`).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    webhook_batch_events: u64,
    /// Threads sending the load.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    sender_threads: u64,
    /// The `sluice` binary [default: `sluice` next to this executable].
    #[arg(long)]
    sluice_bin: Option<PathBuf>,
}

const CLUSTER_SECRET: &str = "sluice-bench-cluster-secret-0123456789";
const INGEST: &str = "bench-ingest";
const READ: &str = "bench-read";

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Latencies in µs, per event.
struct Latencies {
    ack_us: Arc<Vec<AtomicI64>>,
    histogram: Mutex<Histogram<u64>>,
    seen: AtomicU64,
}

impl Latencies {
    fn new(ack_us: Arc<Vec<AtomicI64>>) -> Arc<Latencies> {
        Arc::new(Latencies {
            ack_us,
            histogram: Mutex::new(Histogram::new(3).expect("a histogram")),
            seen: AtomicU64::new(0),
        })
    }

    /// Records the events of request `r` arriving now.
    fn record(&self, r: usize, events: u64) {
        let Some(ack) = self.ack_us.get(r).map(|a| a.load(Ordering::Acquire)) else {
            return;
        };
        if ack == 0 {
            return;
        }
        let latency = (now_us() - ack).max(0) as u64;
        if let Ok(mut h) = self.histogram.lock() {
            let _ = h.record_n(latency, events);
        }
        self.seen.fetch_add(events, Ordering::Relaxed);
    }

    fn line(&self, what: &str, expected: u64) -> String {
        let h = match self.histogram.lock() {
            Ok(h) => h.clone(),
            Err(_) => return format!("{what}: no figures"),
        };
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        format!(
            "{what:<18} {:>9} of {expected} events  p50 {:>8.1} ms  p90 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms",
            self.seen.load(Ordering::Relaxed),
            ms(0.5),
            ms(0.9),
            ms(0.99),
            h.max() as f64 / 1000.0
        )
    }
}

/// A webhook receiver answering 200 to every request; counts events per request id `r`.
fn start_receiver(latencies: Arc<Latencies>) -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the receiver")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let latencies = latencies.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    if let Ok(Value::Array(events)) = serde_json::from_slice::<Value>(&body) {
                        count_by_request(&latencies, events.iter());
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if reader.get_mut().write_all(ok).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

fn count_by_request<'a>(latencies: &Latencies, events: impl Iterator<Item = &'a Value>) {
    let mut last: Option<(usize, u64)> = None;
    for event in events {
        let Some(r) = event["r"].as_u64() else {
            continue;
        };
        match &mut last {
            Some((prev, n)) if *prev == r as usize => *n += 1,
            _ => {
                if let Some((prev, n)) = last.take() {
                    latencies.record(prev, n);
                }
                last = Some((r as usize, 1));
            }
        }
    }
    if let Some((prev, n)) = last {
        latencies.record(prev, n);
    }
}

/// A node on a snapshot file, with the bench's workspace, output, endpoint and webhook.
struct Node {
    child: Child,
    _dir: tempfile::TempDir,
    http: u16,
    lake: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        // SIGKILL: the bench is done with it; only its figures matter.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node(bin: &Path, batch_age_ms: u64, receiver: u16, webhook_batch: u64) -> Result<Node> {
    let dir = tempfile::Builder::new()
        .prefix("sluice-bench-out-")
        .tempdir()?;
    let http = free_port()?;
    let snapshot = json!({
        "version": 1,
        "workspaces": [{
            "id": "0190f3a0-0000-7000-8000-0000000000e0",
            "slug": "bench",
            "sources": [{"id": "0190f3a0-0000-7000-8000-0000000002e0", "slug": "telemetry"}],
            "tokens": [
                {"id": "0190f3a0-0000-7000-8000-0000000001e0",
                 "sha256": sluice_config::token::hash_hex(INGEST), "scopes": ["ingest"]},
                {"id": "0190f3a0-0000-7000-8000-0000000001e1",
                 "sha256": sluice_config::token::hash_hex(READ), "scopes": ["read"]}
            ],
            "outputs": [{"id": "0190f3a0-0000-7000-8000-0000000004e0", "slug": "all",
                         "source": "telemetry", "fields": [{"from": "/r"}, {"from": "/i"}]}],
            "export_endpoints": [{"id": "0190f3a0-0000-7000-8000-0000000005e0",
                                  "slug": "live", "output": "all"}],
            "webhooks": [{
                "id": "0190f3a0-0000-7000-8000-0000000006e0", "slug": "receiver",
                "output": "all", "url": format!("http://127.0.0.1:{receiver}/hook"),
                "batch_events_max": webhook_batch, "batch_bytes_max": 8 << 20,
                "batch_interval_ms": 100,
                "secret_sealed": sluice_config::sealed::seal(
                    CLUSTER_SECRET, &sluice_config::webhook_signature::generate_secret())?,
                "allow_private": true
            }]
        }]
    });
    let snapshot_path = dir.path().join("snapshot.json");
    std::fs::write(&snapshot_path, snapshot.to_string())?;
    let config = dir.path().join("node.toml");
    // A caught-up stream looks for new files every 100 ms.
    std::fs::write(&config, "[export]\npoll_ms = 100\n")?;
    let lake = dir.path().join("lake");
    let log = std::fs::File::create(dir.path().join("sluice.log"))?;
    let child = Command::new(bin)
        .arg("dataplane")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--object-store")
        .arg(&lake)
        .arg("--http-addr")
        .arg(format!("127.0.0.1:{http}"))
        .arg("--mqtt-addr")
        .arg("off")
        .arg("--config-snapshot")
        .arg(&snapshot_path)
        .arg("--batch-max-age-ms")
        .arg(batch_age_ms.to_string())
        .arg("--workspace-events-per-second")
        .arg("100000000")
        .env("SLUICE_CLUSTER_SECRET", CLUSTER_SECRET)
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let node = Node {
        child,
        _dir: dir,
        http,
        lake,
    };
    let agent = agent(Some(Duration::from_secs(5)));
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent
        .get(format!("http://127.0.0.1:{http}/healthz"))
        .call()
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("the node did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(node)
}

fn agent(timeout: Option<Duration>) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(timeout)
        .build()
        .into()
}

/// Reads the live stream, counting events per request id, until `stop`.
fn read_stream(http: u16, latencies: Arc<Latencies>, stop: Arc<AtomicUsize>) -> Result<()> {
    let response = agent(None)
        .get(format!(
            "http://127.0.0.1:{http}/v1/stream/bench/live?from=now"
        ))
        .header("authorization", &format!("Bearer {READ}"))
        .call()
        .context("opening the live stream")?;
    let mut lines = BufReader::new(response.into_body().into_reader());
    let mut line = String::new();
    while stop.load(Ordering::Relaxed) == 0 {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            break;
        }
        if let Some(data) = line.strip_prefix("data: ") {
            if let Ok(event) = serde_json::from_str::<Value>(data) {
                count_by_request(&latencies, std::iter::once(&event));
            }
        }
    }
    Ok(())
}

/// Sends `requests` NDJSON requests of `events` each, paced to `rate` events/s over
/// `threads` threads, recording each request's `202` time.
fn send_load(
    http: u16,
    requests: usize,
    events: u64,
    rate: u64,
    threads: u64,
    ack_us: &Arc<Vec<AtomicI64>>,
) -> Result<Duration> {
    let started = Instant::now();
    let per_request = Duration::from_secs_f64(events as f64 / rate as f64);
    let next = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..threads {
        let (next, ack_us) = (next.clone(), ack_us.clone());
        handles.push(std::thread::spawn(move || -> Result<()> {
            let agent = agent(Some(Duration::from_secs(30)));
            let url = format!("http://127.0.0.1:{http}/v1/ingest/bench/telemetry");
            loop {
                let r = next.fetch_add(1, Ordering::Relaxed);
                if r >= requests {
                    return Ok(());
                }
                let due = started + per_request * r as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let body: String = (0..events)
                    .map(|i| format!("{{\"r\":{r},\"i\":{i}}}\n"))
                    .collect();
                let answer = agent
                    .post(&url)
                    .header("authorization", &format!("Bearer {INGEST}"))
                    .header("content-type", "application/x-ndjson")
                    .send(body.as_bytes())
                    .context("sending")?;
                if answer.status() != 202 {
                    bail!("ingest answered {}", answer.status());
                }
                ack_us[r].store(now_us(), Ordering::Release);
            }
        }));
    }
    for handle in handles {
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("a sender thread panicked"))??;
    }
    Ok(started.elapsed())
}

pub fn run(args: DataOutArgs) -> Result<()> {
    let bin = match &args.sluice_bin {
        Some(bin) => bin.clone(),
        None => default_binary()?,
    };
    check_binary(&bin)?;
    let requests = (args.rate * args.duration_secs / args.batch_events) as usize;
    let expected = requests as u64 * args.batch_events;
    println!(
        "data out: {} events/s for {} s ({} requests of {} events), webhook batches of up to {}",
        args.rate, args.duration_secs, requests, args.batch_events, args.webhook_batch_events
    );
    let mut last_node = None;
    for &age in &args.batch_ages {
        let ack_us: Arc<Vec<AtomicI64>> =
            Arc::new((0..requests).map(|_| AtomicI64::new(0)).collect());
        let webhook = Latencies::new(ack_us.clone());
        let stream = Latencies::new(ack_us.clone());
        let receiver = start_receiver(webhook.clone())?;
        let node = start_node(&bin, age, receiver, args.webhook_batch_events)?;
        let stop = Arc::new(AtomicUsize::new(0));
        let reader = {
            let (stream, stop, http) = (stream.clone(), stop.clone(), node.http);
            std::thread::spawn(move || read_stream(http, stream, stop))
        };
        // The stream starts at "now" and the webhook at its first look at the log.
        std::thread::sleep(Duration::from_millis(1500));
        let took = send_load(
            node.http,
            requests,
            args.batch_events,
            args.rate,
            args.sender_threads,
            &ack_us,
        )?;
        let deadline = Instant::now() + Duration::from_millis(age) + Duration::from_secs(30);
        while (webhook.seen.load(Ordering::Relaxed) < expected
            || stream.seen.load(Ordering::Relaxed) < expected)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(1, Ordering::Relaxed);
        println!(
            "\nbatch.max_age_ms = {age}: sent {expected} events in {:.1} s ({:.0} events/s)",
            took.as_secs_f64(),
            expected as f64 / took.as_secs_f64()
        );
        println!("{}", webhook.line("webhook 202→recv", expected));
        println!("{}", stream.line("SSE 202→recv", expected));
        drop(reader);
        last_node = Some(node);
    }
    if let Some(node) = last_node {
        replay(&node, expected)?;
    }
    Ok(())
}

/// Reads every event back as NDJSON pages, and decodes the same files directly, in one run.
fn replay(node: &Node, expected: u64) -> Result<()> {
    let agent = agent(Some(Duration::from_secs(120)));
    let started = Instant::now();
    let mut cursor: Option<String> = None;
    let mut read = 0u64;
    loop {
        let mut url = format!(
            "http://127.0.0.1:{}/v1/stream/bench/live?limit=10000",
            node.http
        );
        if let Some(c) = &cursor {
            url.push_str(&format!("&after={c}"));
        }
        let mut answer = agent
            .get(&url)
            .header("authorization", &format!("Bearer {READ}"))
            .header("accept", "application/x-ndjson")
            .call()?;
        let next = answer
            .headers()
            .get("sluice-cursor")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = answer.body_mut().read_to_vec()?;
        let lines = body.iter().filter(|b| **b == b'\n').count() as u64;
        read += lines;
        if lines == 0 {
            break;
        }
        cursor = next;
    }
    let pages = started.elapsed();

    let started = Instant::now();
    let mut decoded = 0u64;
    let mut files = Vec::new();
    collect_parquet(&node.lake, &mut files)?;
    for file in &files {
        let bytes = bytes::Bytes::from(std::fs::read(file)?);
        for rows in sluice_storage::stored::read_file(bytes)? {
            decoded += rows.len() as u64;
        }
    }
    let baseline = started.elapsed();
    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "\nreplay (NDJSON pages from the beginning): {read} of {expected} events in {:.2} s = {:.0} events/s",
        pages.as_secs_f64(),
        rate(read, pages)
    );
    println!(
        "baseline (the {} Parquet files decoded, nothing else): {decoded} events in {:.2} s = {:.0} events/s; ratio {:.2}",
        files.len(),
        baseline.as_secs_f64(),
        rate(decoded, baseline),
        rate(read, pages) / rate(decoded, baseline)
    );
    Ok(())
}

fn collect_parquet(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_parquet(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "parquet") {
            out.push(path);
        }
    }
    Ok(())
}
