//! The MQTT fleet simulator: N devices, each its own connection, publishing at a QoS and rate
//! for a duration, with a summary of sent and acknowledged messages per second and the
//! publish-to-ack latency.
//!
//! The measured window starts after the warm-up. QoS 1 and 2 count acknowledgements inside
//! the window. QoS 0 has none: every 64th message goes at QoS 1 as a marker, with at most two
//! outstanding per device, which keeps what is queued in socket buffers small; and each device
//! ends with one QoS 1 "fence" message. A broker handles a connection's packets in order, so
//! the fence's PUBACK means everything sent before it was taken; QoS 0 throughput is messages
//! sent in the window over the window plus the time the fences took.

pub mod codec;
mod device;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use serde::Serialize;

pub use codec::Version;

/// What the messages contain.
#[derive(Debug, Clone)]
pub enum Payload {
    /// `{"device": "...", "seq": N, "pad": "xxx"}`, padded to about `payload_bytes`.
    Generated,
    /// A template with `{device}`, `{seq}` and `{ts}` (Unix ms) filled in.
    Template(String),
}

impl Payload {
    fn render(&self, out: &mut Vec<u8>, device: &str, seq: u64, bytes: usize) {
        use std::io::Write;
        out.clear();
        match self {
            Payload::Generated => {
                let _ = write!(
                    out,
                    r#"{{"device":"{device}","seq":{seq},"temp_c":21.5,"pad":""#
                );
                let pad = bytes.saturating_sub(out.len() + 2);
                out.resize(out.len() + pad, b'x');
                out.extend_from_slice(b"\"}");
            }
            Payload::Template(t) => {
                let ts = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0);
                let text = t
                    .replace("{device}", device)
                    .replace("{seq}", &seq.to_string())
                    .replace("{ts}", &ts.to_string());
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
}

/// One simulation.
#[derive(Debug)]
pub struct Plan {
    pub addr: SocketAddr,
    pub version: Version,
    pub devices: usize,
    pub qos: u8,
    /// Messages per second per device; 0 publishes as fast as the window allows.
    pub rate_per_device: f64,
    /// Unacknowledged QoS 1/2 messages per device at most.
    pub inflight: usize,
    pub topic: String,
    pub payload: Payload,
    pub payload_bytes: usize,
    pub username: Option<String>,
    pub password: Option<String>,
    pub client_id_prefix: String,
    pub keep_alive_secs: u16,
    /// New connections per second at most while the fleet comes up.
    pub connect_rate: f64,
    pub warmup: Duration,
    pub duration: Duration,
    /// Connect and only keep the connections alive (for memory per connection).
    pub idle: bool,
    pub progress: bool,
    measuring: AtomicBool,
    stop: AtomicBool,
}

impl Plan {
    #[allow(clippy::too_many_arguments)]
    pub fn new(addr: SocketAddr, version: Version, devices: usize, qos: u8) -> Plan {
        Plan {
            addr,
            version,
            devices,
            qos,
            rate_per_device: 0.0,
            inflight: 32,
            topic: "ingest/telemetry".into(),
            payload: Payload::Generated,
            payload_bytes: 200,
            username: None,
            password: None,
            client_id_prefix: "sim".into(),
            keep_alive_secs: 60,
            connect_rate: 2000.0,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(10),
            idle: false,
            progress: false,
            measuring: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    connected: AtomicU64,
    failed: AtomicU64,
    sent: AtomicU64,
    sent_total: AtomicU64,
    acked: AtomicU64,
    acked_total: AtomicU64,
    refused: AtomicU64,
    drain_us_max: AtomicU64,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub devices: usize,
    pub connected: u64,
    pub failed: u64,
    pub qos: u8,
    pub protocol: &'static str,
    pub window_secs: f64,
    /// Messages sent inside the window.
    pub sent: u64,
    /// Acknowledged inside the window (QoS 1 and 2).
    pub acked: u64,
    /// Refused with a reason code of 0x80 or more (whole run).
    pub refused: u64,
    pub sent_per_sec: f64,
    pub acked_per_sec: f64,
    /// Messages the broker took per second: acked/s for QoS 1 and 2, for QoS 0 sent over the
    /// window plus the fence time.
    pub taken_per_sec: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    pub latency_ms_max: f64,
    pub first_error: Option<String>,
}

impl Summary {
    pub fn one_line(&self) -> String {
        format!(
            "{} devices ({} connected, {} failed), {} QoS {}: {:.0} msg/s taken, {:.0} sent/s, {:.0} acked/s, ack p50 {:.2} ms p99 {:.2} ms p999 {:.2} ms, {} refused{}",
            self.devices,
            self.connected,
            self.failed,
            self.protocol,
            self.qos,
            self.taken_per_sec,
            self.sent_per_sec,
            self.acked_per_sec,
            self.latency_ms_p50,
            self.latency_ms_p99,
            self.latency_ms_p999,
            self.refused,
            self.first_error
                .as_ref()
                .map(|e| format!(", first error: {e}"))
                .unwrap_or_default()
        )
    }
}

/// Runs `plan` on the current tokio runtime.
pub async fn run(plan: Plan) -> Result<Summary> {
    let plan = Arc::new(plan);
    let counters = Arc::new(Counters::default());
    let mut tasks = Vec::with_capacity(plan.devices);
    let connect_gap = Duration::from_secs_f64(1.0 / plan.connect_rate.max(1.0));
    let started = Instant::now();
    let progress = plan.progress.then(|| progress_bar(&plan));
    for index in 0..plan.devices {
        let plan_c = plan.clone();
        let counters_c = counters.clone();
        tasks.push(tokio::spawn(async move {
            let result = device::run(index, plan_c, counters_c.clone()).await;
            if result.is_err() {
                counters_c.failed.fetch_add(1, Ordering::Relaxed);
            }
            result
        }));
        let due = started + connect_gap * (index as u32 + 1);
        if let Some(bar) = &progress {
            bar.set_message(format!("connecting {}/{}", index + 1, plan.devices));
        }
        tokio::time::sleep_until(due.into()).await;
    }
    // Everyone connected (or failed): warm up, then measure.
    let connected_at = Instant::now();
    while counters.connected.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed)
        < plan.devices as u64
        && connected_at.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tick(&progress, &counters, &plan, "warm-up", plan.warmup).await;
    plan.measuring.store(true, Ordering::Relaxed);
    let window_start = Instant::now();
    tick(&progress, &counters, &plan, "measuring", plan.duration).await;
    plan.measuring.store(false, Ordering::Relaxed);
    let window = window_start.elapsed();
    plan.stop.store(true, Ordering::Relaxed);
    if let Some(bar) = &progress {
        bar.set_message("draining");
    }

    let mut histogram = Histogram::<u64>::new(3)?;
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(h)) => {
                histogram.add(h).ok();
            }
            Ok(Err(e)) => {
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(e) => {
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let window_secs = window.as_secs_f64();
    let sent = counters.sent.load(Ordering::Relaxed);
    let acked = counters.acked.load(Ordering::Relaxed);
    let drain = Duration::from_micros(counters.drain_us_max.load(Ordering::Relaxed));
    let taken_per_sec = if plan.qos == 0 {
        sent as f64 / (window + drain).as_secs_f64()
    } else {
        acked as f64 / window_secs
    };
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(Summary {
        devices: plan.devices,
        connected: counters.connected.load(Ordering::Relaxed),
        failed: counters.failed.load(Ordering::Relaxed),
        qos: plan.qos,
        protocol: match plan.version {
            Version::V311 => "MQTT 3.1.1",
            Version::V5 => "MQTT 5",
        },
        window_secs,
        sent,
        acked,
        refused: counters.refused.load(Ordering::Relaxed),
        sent_per_sec: sent as f64 / window_secs,
        acked_per_sec: acked as f64 / window_secs,
        taken_per_sec,
        latency_ms_p50: ms(0.5),
        latency_ms_p99: ms(0.99),
        latency_ms_p999: ms(0.999),
        latency_ms_max: histogram.max() as f64 / 1000.0,
        first_error,
    })
}

fn progress_bar(plan: &Plan) -> indicatif::ProgressBar {
    let total = (plan.warmup + plan.duration).as_millis() as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// Waits `span`, updating the progress bar with live rates.
async fn tick(
    bar: &Option<indicatif::ProgressBar>,
    counters: &Counters,
    plan: &Plan,
    phase: &str,
    span: Duration,
) {
    let end = Instant::now() + span;
    let mut last = (
        Instant::now(),
        counters.sent_total.load(Ordering::Relaxed),
        counters.acked_total.load(Ordering::Relaxed),
    );
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(250).min(end - Instant::now())).await;
        if let Some(bar) = bar {
            let now = Instant::now();
            let sent = counters.sent_total.load(Ordering::Relaxed);
            let acked = counters.acked_total.load(Ordering::Relaxed);
            let secs = now.duration_since(last.0).as_secs_f64().max(1e-3);
            bar.inc(now.duration_since(last.0).as_millis() as u64);
            bar.set_message(format!(
                "{phase}: {} connected, {:.0} sent/s, {:.0} acked/s{}",
                counters.connected.load(Ordering::Relaxed),
                (sent - last.1) as f64 / secs,
                (acked - last.2) as f64 / secs,
                if plan.idle { " (idle)" } else { "" },
            ));
            last = (now, sent, acked);
        }
    }
}
