//! `sluice-bench`: reproducible Sluice benchmarks that print figures next to a ceiling
//! measured in the same run, on the same machine, with the same load generator.
//!
//! ```text
//! cargo build --release -p sluice -p sluice-bench
//! target/release/sluice-bench http                    # table
//! target/release/sluice-bench http --json             # machine-readable
//! target/release/sluice-bench http --connections 32 --duration-secs 20
//! ```
//!
//! `http` runs three scenarios, one after the other:
//!
//! 1. `baseline-204`: a bare hyper server in this process that reads each body and answers
//!    204 (the ceiling for HTTP/1.1 on this machine), with single-event JSON bodies;
//! 2. `sluice-json-1`: a `sluice up` node (child process, fresh temp data dir) with the same
//!    single-event JSON bodies, each answered 202 only once fsynced in the WAL;
//! 3. `sluice-ndjson-N`: a fresh node with N-event NDJSON bodies (`--batch-events`).
//!
//! and prints requests/s, events/s, latency percentiles, errors, the server's peak RSS and CPU
//! use, and the ratio of Sluice's single-event requests/s to the ceiling. docs/benchmarks.md
//! has measured figures and what they mean. Everything talks to 127.0.0.1 only and is bounded
//! in time: each scenario lasts warm-up + duration, plus start and stop.

mod baseline;
mod loadgen;
mod mqtt;
mod payload;
mod propagation;
mod report;
mod sluice;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::loadgen::{Plan, ServerProcess, Target};
use crate::report::{Report, ScenarioResult};

#[derive(Parser)]
#[command(
    name = "sluice-bench",
    about = "Sluice benchmarks with a baseline measured in the same run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// HTTP ingest: a bare 204 server (ceiling), then Sluice with single-event and NDJSON
    /// POSTs, all driven by the same closed-loop load generator.
    Http(HttpArgs),
    /// MQTT ingest: Sluice at QoS 0 and 1 against the mosquitto broker in the same run, and
    /// the memory of idle connections.
    Mqtt(mqtt::MqttArgs),
    /// Configuration push: revocation latency from the control-plane API to every node, and
    /// the cost of a large snapshot.
    Propagation(propagation::PropagationArgs),
}

#[derive(Args, Clone)]
pub struct HttpArgs {
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    connections: u64,
    /// Measured seconds per scenario.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration_secs: u64,
    /// Seconds of load before measuring starts (connections up, caches and WAL warm).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=600))]
    warmup_secs: u64,
    /// Events per NDJSON request in the batch scenario (Sluice takes up to 8 MiB per body,
    /// about 38,000 of these events).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=20_000))]
    batch_events: u64,
    /// Worker threads of the load generator's tokio runtime.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    client_threads: u64,
    /// Threads of the server under test: the baseline's tokio workers and Sluice's
    /// `--http-threads`. 1 leaves the second core of a 2-core machine to the load generator.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    server_threads: u64,
    /// Seconds before an unanswered request counts as an error.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=120))]
    request_timeout_secs: u64,
    /// The `sluice` binary [default: `sluice` next to this executable].
    #[arg(long)]
    sluice_bin: Option<PathBuf>,
    /// Scenarios to run [default: all three].
    #[arg(long, value_enum, value_delimiter = ',')]
    scenario: Vec<Scenario>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// The bare 204 server with single-event JSON bodies.
    Baseline,
    /// The bare 204 server on Sluice's io_uring transport (tokio-uring), single-event bodies.
    BaselineUring,
    /// Sluice with single-event JSON bodies.
    SluiceJson,
    /// Sluice with `--batch-events` NDJSON bodies.
    SluiceNdjson,
}

/// Distinct bodies pre-generated per scenario (sent round-robin).
const SINGLE_BODIES: usize = 4096;
const NDJSON_BODIES: usize = 32;

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Http(args) => http(args),
        Command::Propagation(args) => propagation::run(args),
        Command::Mqtt(args) => mqtt::run(args),
    }
}

fn http(args: HttpArgs) -> Result<()> {
    let scenarios = if args.scenario.is_empty() {
        vec![
            Scenario::Baseline,
            Scenario::SluiceJson,
            Scenario::SluiceNdjson,
        ]
    } else {
        args.scenario.clone()
    };
    let needs_sluice = scenarios
        .iter()
        .any(|s| matches!(s, Scenario::SluiceJson | Scenario::SluiceNdjson));
    let bin = match &args.sluice_bin {
        Some(bin) => bin.clone(),
        None => sluice::default_binary()?,
    };
    if needs_sluice {
        sluice::check_binary(&bin)?;
    }

    let plan = Plan {
        connections: args.connections as usize,
        warmup: Duration::from_secs(args.warmup_secs),
        duration: Duration::from_secs(args.duration_secs),
        request_timeout: Duration::from_secs(args.request_timeout_secs),
    };
    let server_threads = args.server_threads as usize;
    let batch = args.batch_events as usize;
    let single = Arc::new(payload::single_event_bodies(SINGLE_BODIES));
    let ndjson = Arc::new(payload::ndjson_bodies(NDJSON_BODIES, batch));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads as usize)
        .thread_name(loadgen::THREAD_NAME)
        .enable_all()
        .build()
        .context("building the load generator runtime")?;

    let mut results = Vec::new();
    for scenario in scenarios {
        let result = match scenario {
            Scenario::Baseline => run_baseline(&runtime, plan, server_threads, false, &single)?,
            Scenario::BaselineUring => run_baseline(&runtime, plan, server_threads, true, &single)?,
            Scenario::SluiceJson => run_sluice(
                &runtime,
                &bin,
                server_threads,
                plan,
                "sluice-json-1".into(),
                "application/json",
                1,
                &single,
            )?,
            Scenario::SluiceNdjson => run_sluice(
                &runtime,
                &bin,
                server_threads,
                plan,
                format!("sluice-ndjson-{batch}"),
                "application/x-ndjson",
                batch,
                &ndjson,
            )?,
        };
        progress(&result.one_line());
        results.push(result);
    }

    let report = Report::new(&args, results);
    if args.json {
        let text = serde_json::to_string_pretty(&report.to_json()).context("encoding JSON")?;
        println!("{text}");
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// The ceiling: a bare 204 server in this process, on tokio's epoll runtime or (`uring`) on
/// Sluice's io_uring transport.
fn run_baseline(
    runtime: &tokio::runtime::Runtime,
    plan: Plan,
    server_threads: usize,
    uring: bool,
    single: &Arc<Vec<bytes::Bytes>>,
) -> Result<ScenarioResult> {
    let name = if uring {
        "baseline-uring-204"
    } else {
        "baseline-204"
    };
    progress(&format!(
        "{name}: bare hyper server, {server_threads} thread(s), {} single-event requests in \
         flight",
        plan.connections
    ));
    let hwm_before = sluice::vm_hwm_kib("/proc/self/status")?;
    let server = if uring {
        baseline::Server::Uring(baseline::UringBaseline::start(server_threads)?)
    } else {
        baseline::Server::Tokio(baseline::Baseline::start(server_threads)?)
    };
    let target = Target {
        addr: server.addr(),
        path: "/v1/ingest/default/telemetry".into(),
        // The same request bytes as Sluice gets: a token of the same form, which the bare
        // server ignores.
        authorization: Some(format!("Bearer {}", sluice_storage::token::generate())),
        content_type: "application/json",
        bodies: single.clone(),
        events_per_body: 1,
        expect_accepted: false,
    };
    let outcome = runtime.block_on(loadgen::run(
        Arc::new(target),
        plan,
        ServerProcess::InProcess,
    ));
    server.stop();
    let outcome = outcome.with_context(|| format!("{name} scenario"))?;
    let hwm_after = sluice::vm_hwm_kib("/proc/self/status")?;
    let mut result = ScenarioResult::new(name, "application/json", 1, single, &outcome);
    result.bench_vmhwm_growth_kib = Some(hwm_after.saturating_sub(hwm_before));
    Ok(result)
}

/// One scenario against a fresh Sluice node.
#[allow(clippy::too_many_arguments)]
fn run_sluice(
    runtime: &tokio::runtime::Runtime,
    bin: &std::path::Path,
    server_threads: usize,
    plan: Plan,
    name: String,
    content_type: &'static str,
    events_per_body: usize,
    bodies: &Arc<Vec<bytes::Bytes>>,
) -> Result<ScenarioResult> {
    progress(&format!(
        "{name}: starting {} (--http-threads {server_threads})",
        bin.display()
    ));
    let node = sluice::Node::start(bin, server_threads)?;
    progress(&format!(
        "{name}: node pid {} on {}; {} connections, {} event(s) per {content_type} request",
        node.pid(),
        node.addr,
        plan.connections,
        events_per_body
    ));
    let target = Target {
        addr: node.addr,
        path: node.path.clone(),
        authorization: Some(format!("Bearer {}", node.token)),
        content_type,
        bodies: bodies.clone(),
        events_per_body,
        expect_accepted: true,
    };
    let outcome = runtime
        .block_on(loadgen::run(
            Arc::new(target),
            plan,
            ServerProcess::Child(node.pid()),
        ))
        .with_context(|| format!("{name} scenario"))?;
    // Measured before the stop: once it exits, /proc no longer has it.
    let peak_rss = node.peak_rss_kib().context("reading Sluice's peak RSS")?;
    let wal = node.wal_stats().ok();
    let stopped = node.stop().context("stopping Sluice")?;
    progress(&format!(
        "{name}: Sluice stopped in {:.1} s ({})",
        stopped.took.as_secs_f64(),
        stopped.exit
    ));
    for line in stopped.problems.iter().take(10) {
        progress(&format!("{name}: sluice log: {line}"));
    }
    let mut result = ScenarioResult::new(&name, content_type, events_per_body, bodies, &outcome);
    result.server_peak_rss_kib = Some(peak_rss);
    result.wal = wal;
    result.sluice_log_problems = stopped.problems;
    result.sluice_stop_secs = Some(stopped.took.as_secs_f64());
    Ok(result)
}

/// Progress goes to stderr so that stdout holds only the table or the JSON.
fn progress(message: &str) {
    eprintln!("[sluice-bench] {message}");
}
