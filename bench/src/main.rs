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
//! `http` runs three scenarios, the first two at each of `--connections` (64, 128 and 256 by
//! default), the third at the first count:
//!
//! 1. `baseline-204`: a bare hyper server in this process that reads each body and answers
//!    204 (the ceiling for HTTP/1.1 on this machine), with single-event JSON bodies;
//! 2. `sluice-json-1`: a `sluice up` node (child process, fresh temp data dir) with the same
//!    single-event JSON bodies, each answered 202 only once fsynced in the WAL;
//! 3. `sluice-ndjson-N`: a fresh node with N-event NDJSON bodies (`--batch-events`).
//!
//! The Sluice scenarios run once per `--http-io-drivers` entry (io_uring by default; names on
//! epoll end in `-epoll`), so that `--http-io-drivers io_uring,epoll` sets both drivers
//! against the same baseline, alternating in the same rounds.
//!
//! and prints requests/s, events/s, latency percentiles, errors, the server's peak RSS and CPU
//! use, Sluice's single-event requests/s against the baseline's at each count, and the ratio
//! of Sluice's best count to the ceiling (the baseline's best count). docs/benchmarks.md
//! has measured figures and what they mean. Everything talks to 127.0.0.1 only and is bounded
//! in time: each scenario lasts warm-up + duration, plus start and stop.
#![forbid(unsafe_code)]

mod baseline;
mod cluster;
mod data_out;
mod loadgen;
mod mqtt;
mod mqtt_connections;
mod nginx;
mod payload;
mod propagation;
mod report;
mod sluice;

use std::collections::BTreeMap;
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
    /// A cluster behind HAProxy: HTTP throughput with 1, 2 and 3 nodes following one control
    /// plane, the CPU of each part, and the idle configuration stream's cost.
    Cluster(cluster::ClusterArgs),
    /// Data out: webhook delivery and export-stream latency from the ingest acknowledgement,
    /// at each batch age, and replay throughput against decoding the files alone.
    DataOut(data_out::DataOutArgs),
}

#[derive(Args, Clone)]
pub struct HttpArgs {
    /// Concurrent keep-alive connections, or a comma-separated list of counts: the baseline
    /// and the single-event scenario run at each (the ceiling is the baseline's best count, and
    /// a server that waits for a disk needs more requests in flight to reach its own best);
    /// the NDJSON scenario runs at the first.
    #[arg(
        long,
        value_delimiter = ',',
        default_values_t = [64, 128, 256],
        value_parser = clap::value_parser!(u64).range(1..=10_000)
    )]
    connections: Vec<u64>,
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
    /// Sources of the `sluice-ndjson-sources` scenario, which the NDJSON requests go to in
    /// turn (each an open batch on the node).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    sources: u64,
    /// Worker threads of the load generator's tokio runtime.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    client_threads: u64,
    /// Threads of the server under test: the baseline's tokio workers and Sluice's
    /// `--http-threads`. 1 leaves the second core of a 2-core machine to the load generator.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    server_threads: u64,
    /// Rounds the baseline and the single-event scenario are measured in, alternating
    /// (`--duration-secs` split between them, each round after its own warm-up). This VM's
    /// speed drifts within a minute; alternating puts the drift on both sides of the ratio.
    /// 1 measures each in one piece, one after the other.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    rounds: u64,
    /// Seconds before an unanswered request counts as an error.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=120))]
    request_timeout_secs: u64,
    /// The `sluice` binary [default: `sluice` next to this executable].
    #[arg(long)]
    sluice_bin: Option<PathBuf>,
    /// The `nginx` binary of the `nginx` scenario [default: /usr/sbin/nginx, else `nginx` on
    /// PATH].
    #[arg(long)]
    nginx_bin: Option<PathBuf>,
    /// Scenarios to run [default: baseline, nginx when installed, sluice-json, sluice-ndjson].
    #[arg(long, value_enum, value_delimiter = ',')]
    scenario: Vec<Scenario>,
    /// HTTP I/O drivers of the Sluice nodes (`sluice --http-io-driver`): each Sluice scenario
    /// runs on each, and `io_uring,epoll` measures both against the same baseline in the same
    /// alternating rounds. Scenario names on epoll end in `-epoll`, on auto in `-auto`.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "io_uring")]
    http_io_drivers: Vec<HttpDriver>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl HttpArgs {
    /// `--connections` with each count once, in the order given.
    pub fn connection_counts(&self) -> Vec<u64> {
        let mut counts = Vec::new();
        for &count in &self.connections {
            if !counts.contains(&count) {
                counts.push(count);
            }
        }
        counts
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// The bare 204 server with single-event JSON bodies.
    Baseline,
    /// The bare 204 server on Sluice's io_uring transport (tokio-uring), single-event bodies.
    BaselineUring,
    /// nginx (Debian's `nginx-light`, one process, `return 204`) with single-event JSON
    /// bodies: the reference users compare with. In the default set when nginx is installed.
    Nginx,
    /// Sluice with single-event JSON bodies.
    SluiceJson,
    /// Sluice with `--batch-events` NDJSON bodies.
    SluiceNdjson,
    /// Sluice with single-event JSON bodies, against a source with a 10-property JSON Schema.
    SluiceJsonSchema,
    /// Sluice with NDJSON bodies, against a source with a 10-property JSON Schema.
    SluiceNdjsonSchema,
    /// Sluice with NDJSON bodies, against a source without a schema and 3 tag rules (a query
    /// parameter and two payload pointers, one of them the device).
    SluiceNdjsonRules,
    /// Sluice with NDJSON bodies spread over `--sources` sources of one workspace: a node
    /// holding an open batch per source, against its memory budget.
    SluiceNdjsonSources,
}

/// The HTTP I/O driver a Sluice node runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum HttpDriver {
    #[value(name = "io_uring")]
    IoUring,
    Epoll,
    Auto,
}

impl HttpDriver {
    /// The value of `sluice --http-io-driver`.
    fn flag(self) -> &'static str {
        match self {
            HttpDriver::IoUring => "io_uring",
            HttpDriver::Epoll => "epoll",
            HttpDriver::Auto => "auto",
        }
    }

    /// A Sluice scenario's name on this driver: io_uring keeps the plain name that the
    /// figures in docs/benchmarks.md have always had.
    fn scenario(self, base: &str) -> String {
        match self {
            HttpDriver::IoUring => base.to_owned(),
            other => format!("{base}-{}", other.flag()),
        }
    }
}

/// The schema of the benchmark's events (`payload.rs`): 10 typed columns (`device_id` is a
/// fixed column and stays in `payload`).
fn bench_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "ts": {"type": "string", "format": "date-time"},
            "device_id": {"type": "string"},
            "site": {"type": "string"},
            "temp_c": {"type": "number"},
            "humidity_pct": {"type": "number", "minimum": 0, "maximum": 100},
            "pressure_hpa": {"type": "number"},
            "battery_v": {"type": "number"},
            "rssi_dbm": {"type": "integer"},
            "status": {"type": "string", "enum": ["ok", "degraded", "failed"]},
            "fw": {"type": "string"},
            "seq": {"type": "integer", "minimum": 0}
        },
        "required": ["ts", "device_id", "temp_c", "seq"]
    })
}

/// Three tag rules: the `line` query parameter, the site and the device from the payload.
fn bench_rules() -> Vec<serde_json::Value> {
    let rule = |n: u8, extract: serde_json::Value| {
        serde_json::json!({
            "id": format!("0190f3a0-0000-7000-8000-0000000003{n:02x}"),
            "name": format!("rule {n}"),
            "extract": extract,
        })
    };
    vec![
        rule(
            1,
            serde_json::json!({"from": "query", "name": "line", "tag": "line"}),
        ),
        rule(
            2,
            serde_json::json!({"from": "pointer", "pointer": "/site", "tag": "site"}),
        ),
        rule(
            3,
            serde_json::json!({"from": "pointer", "pointer": "/device_id", "tag": "device", "device_id": true}),
        ),
    ]
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
        Command::Cluster(args) => cluster::run(args),
        Command::DataOut(args) => data_out::run(args),
    }
}

fn http(args: HttpArgs) -> Result<()> {
    let nginx_bin = nginx::find(args.nginx_bin.as_deref());
    let scenarios = if args.scenario.is_empty() {
        let mut all = vec![Scenario::Baseline];
        match &nginx_bin {
            Some(_) => all.push(Scenario::Nginx),
            None => {
                progress("no nginx installed (apt-get install nginx-light): no nginx-204 scenario")
            }
        }
        all.extend([Scenario::SluiceJson, Scenario::SluiceNdjson]);
        all
    } else {
        args.scenario.clone()
    };
    let nginx_bin = match (scenarios.contains(&Scenario::Nginx), nginx_bin) {
        (true, Some(bin)) => Some(bin),
        (true, None) => anyhow::bail!(
            "the nginx scenario needs nginx: apt-get install nginx-light, or --nginx-bin"
        ),
        (false, _) => None,
    };
    let mut drivers: Vec<HttpDriver> = Vec::new();
    for &driver in &args.http_io_drivers {
        if !drivers.contains(&driver) {
            drivers.push(driver);
        }
    }
    let needs_sluice = scenarios.iter().any(|s| {
        !matches!(
            s,
            Scenario::Baseline | Scenario::BaselineUring | Scenario::Nginx
        )
    });
    let bin = match &args.sluice_bin {
        Some(bin) => bin.clone(),
        None => sluice::default_binary()?,
    };
    if needs_sluice {
        sluice::check_binary(&bin)?;
    }

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
    let mut rounds = BTreeMap::new();
    let mut nginx_rounds = BTreeMap::new();
    let interleave = args.rounds > 1
        && scenarios.contains(&Scenario::Baseline)
        && scenarios.contains(&Scenario::SluiceJson);
    let counts = args.connection_counts();
    let first_count = counts.first().copied().unwrap_or(64);
    for &count in &counts {
        let plan = Plan {
            connections: count as usize,
            warmup: Duration::from_secs(args.warmup_secs),
            duration: Duration::from_secs(args.duration_secs),
            request_timeout: Duration::from_secs(args.request_timeout_secs),
        };
        if interleave {
            let measured = run_interleaved(
                &runtime,
                &bin,
                server_threads,
                plan,
                args.rounds as u32,
                &single,
                &drivers,
                nginx_bin.as_deref(),
            )?;
            progress(&measured.baseline.one_line());
            results.push(measured.baseline);
            if let Some(nginx) = measured.nginx {
                progress(&nginx.one_line());
                results.push(nginx);
            }
            for (single, pairs, nginx_pairs) in measured.singles {
                progress(&single.one_line());
                rounds.insert((single.name.clone(), plan.connections), pairs);
                if !nginx_pairs.is_empty() {
                    nginx_rounds.insert((single.name.clone(), plan.connections), nginx_pairs);
                }
                results.push(single);
            }
        }
        for &scenario in &scenarios {
            if interleave
                && matches!(
                    scenario,
                    Scenario::Baseline | Scenario::SluiceJson | Scenario::Nginx
                )
            {
                continue;
            }
            if let (Scenario::Nginx, Some(bin)) = (scenario, &nginx_bin) {
                let result = run_nginx(&runtime, plan, bin, &single)?;
                progress(&result.one_line());
                results.push(result);
                continue;
            }
            // Batches reach the CPU's limit at any count; one count keeps the run short.
            let batched = matches!(
                scenario,
                Scenario::SluiceNdjson
                    | Scenario::SluiceNdjsonSchema
                    | Scenario::SluiceNdjsonRules
                    | Scenario::SluiceNdjsonSources
            );
            if batched && count != first_count {
                continue;
            }
            let baseline = match scenario {
                Scenario::Baseline => Some(false),
                Scenario::BaselineUring => Some(true),
                _ => None,
            };
            if let Some(uring) = baseline {
                let result = run_baseline(&runtime, plan, server_threads, uring, &single)?;
                progress(&result.one_line());
                results.push(result);
                continue;
            }
            for &driver in &drivers {
                let node = (bin.as_path(), server_threads, driver);
                let result = match scenario {
                    Scenario::Baseline | Scenario::BaselineUring | Scenario::Nginx => continue,
                    Scenario::SluiceJson => run_sluice(
                        &runtime,
                        node,
                        plan,
                        driver.scenario("sluice-json-1"),
                        "application/json",
                        1,
                        &single,
                    )?,
                    Scenario::SluiceNdjson => run_sluice(
                        &runtime,
                        node,
                        plan,
                        driver.scenario(&format!("sluice-ndjson-{batch}")),
                        "application/x-ndjson",
                        batch,
                        &ndjson,
                    )?,
                    Scenario::SluiceJsonSchema => run_sluice_shaped(
                        &runtime,
                        node,
                        plan,
                        driver.scenario("sluice-json-schema-1"),
                        "application/json",
                        &single,
                        (1, schema_shaping()),
                    )?,
                    Scenario::SluiceNdjsonSchema => run_sluice_shaped(
                        &runtime,
                        node,
                        plan,
                        driver.scenario(&format!("sluice-ndjson-schema-{batch}")),
                        "application/x-ndjson",
                        &ndjson,
                        (batch, schema_shaping()),
                    )?,
                    Scenario::SluiceNdjsonRules => run_sluice_shaped(
                        &runtime,
                        node,
                        plan,
                        driver.scenario(&format!("sluice-ndjson-rules-{batch}")),
                        "application/x-ndjson",
                        &ndjson,
                        (batch, rules_shaping()),
                    )?,
                    Scenario::SluiceNdjsonSources => run_sluice_shaped(
                        &runtime,
                        node,
                        plan,
                        driver.scenario(&format!("sluice-ndjson-sources-{batch}")),
                        "application/x-ndjson",
                        &ndjson,
                        (
                            batch,
                            sluice::Shaping {
                                schema: None,
                                tag_rules: Vec::new(),
                                sources: args.sources as usize,
                            },
                        ),
                    )?,
                };
                progress(&result.one_line());
                results.push(result);
            }
        }
    }

    let mut report = Report::new(&args, results);
    report.rounds = rounds;
    report.nginx_rounds = nginx_rounds;
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
    let outcome = runtime.block_on(loadgen::run(
        Arc::new(baseline_target(server.addr(), single)),
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

/// Single-event requests for a bare 204 server at `addr`.
fn baseline_target(addr: std::net::SocketAddr, single: &Arc<Vec<bytes::Bytes>>) -> Target {
    Target {
        addr,
        paths: vec!["/v1/ingest/default/telemetry".into()],
        // The same request bytes as Sluice gets: a token of the same form, which the bare
        // server ignores.
        authorization: Some(format!("Bearer {}", sluice_config::token::generate())),
        content_type: "application/json",
        bodies: single.clone(),
        events_per_body: 1,
        expect_accepted: false,
    }
}

/// The reference users compare with: nginx answering 204, in its own process.
fn run_nginx(
    runtime: &tokio::runtime::Runtime,
    plan: Plan,
    bin: &std::path::Path,
    single: &Arc<Vec<bytes::Bytes>>,
) -> Result<ScenarioResult> {
    progress(&format!(
        "nginx-204: {}, one process, {} single-event requests in flight",
        bin.display(),
        plan.connections
    ));
    let server = nginx::Nginx::start(bin)?;
    let outcome = runtime.block_on(loadgen::run(
        Arc::new(baseline_target(server.addr, single)),
        plan,
        ServerProcess::Child(server.pid()),
    ));
    let peak = server.peak_rss_kib().ok();
    server.stop();
    let outcome = outcome.context("nginx-204 scenario")?;
    let mut result = ScenarioResult::new("nginx-204", "application/json", 1, single, &outcome);
    result.server_peak_rss_kib = peak;
    Ok(result)
}

/// Each alternating round's (reference, Sluice) requests/s.
type RoundRates = Vec<(f64, f64)>;

/// What [`run_interleaved`] measured.
struct Interleaved {
    baseline: ScenarioResult,
    nginx: Option<ScenarioResult>,
    /// Single-event Sluice on each driver, with each round's (baseline, Sluice) req/s and,
    /// when nginx ran, each round's (nginx, Sluice) req/s.
    singles: Vec<(ScenarioResult, RoundRates, RoundRates)>,
}

/// The baseline, nginx (given its binary) and single-event Sluice on each of `drivers`, all
/// running throughout, measured in `rounds` alternating windows.
#[allow(clippy::too_many_arguments)]
fn run_interleaved(
    runtime: &tokio::runtime::Runtime,
    bin: &std::path::Path,
    server_threads: usize,
    plan: Plan,
    rounds: u32,
    single: &Arc<Vec<bytes::Bytes>>,
    drivers: &[HttpDriver],
    nginx_bin: Option<&std::path::Path>,
) -> Result<Interleaved> {
    let round_plan = Plan {
        duration: plan.duration / rounds,
        ..plan
    };
    let names: Vec<String> = drivers
        .iter()
        .map(|d| d.scenario("sluice-json-1"))
        .collect();
    progress(&format!(
        "baseline-204{} and {} in {rounds} alternating rounds of {:.1} s (each after {:.1} s of \
         warm-up), {} connections",
        if nginx_bin.is_some() {
            ", nginx-204"
        } else {
            ""
        },
        names.join(", "),
        round_plan.duration.as_secs_f64(),
        round_plan.warmup.as_secs_f64(),
        plan.connections
    ));
    let hwm_before = sluice::vm_hwm_kib("/proc/self/status")?;
    let server = baseline::Baseline::start(server_threads)?;
    let base_target = Arc::new(baseline_target(server.addr(), single));
    let nginx = match nginx_bin {
        Some(bin) => {
            let nginx = nginx::Nginx::start(bin)?;
            let target = Arc::new(baseline_target(nginx.addr, single));
            Some((nginx, target))
        }
        None => None,
    };
    let mut nginx_total: Option<loadgen::Outcome> = None;
    let mut nginx_pairs: Vec<Vec<(f64, f64)>> = drivers.iter().map(|_| Vec::new()).collect();
    let mut nodes = Vec::new();
    for &driver in drivers {
        let node = sluice::Node::start(bin, server_threads, driver.flag())?;
        let target = Arc::new(sluice_target(&node, "application/json", 1, single));
        nodes.push((node, target));
    }
    let rate = |o: &loadgen::Outcome| o.requests as f64 / o.window.as_secs_f64().max(1e-9);
    let absorb = |total: &mut Option<loadgen::Outcome>, outcome: loadgen::Outcome| match total {
        Some(total) => total.absorb(outcome),
        None => *total = Some(outcome),
    };
    let mut base_total: Option<loadgen::Outcome> = None;
    let mut sluice_totals: Vec<Option<loadgen::Outcome>> = nodes.iter().map(|_| None).collect();
    let mut pairs: Vec<Vec<(f64, f64)>> = nodes.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        let base = runtime
            .block_on(loadgen::run(
                base_target.clone(),
                round_plan,
                ServerProcess::InProcess,
            ))
            .context("baseline round")?;
        let base_rate = rate(&base);
        absorb(&mut base_total, base);
        let mut nginx_rate = None;
        if let Some((nginx, target)) = &nginx {
            let one = runtime
                .block_on(loadgen::run(
                    target.clone(),
                    round_plan,
                    ServerProcess::Child(nginx.pid()),
                ))
                .context("nginx-204 round")?;
            nginx_rate = Some(rate(&one));
            absorb(&mut nginx_total, one);
        }
        for (i, (node, target)) in nodes.iter().enumerate() {
            let one = runtime
                .block_on(loadgen::run(
                    target.clone(),
                    round_plan,
                    ServerProcess::Child(node.pid()),
                ))
                .with_context(|| format!("{} round", names[i]))?;
            let pair = (base_rate, rate(&one));
            progress(&format!(
                "round {round}: baseline {:.0} req/s, {} {:.0} req/s, ratio {:.2}",
                pair.0,
                names[i],
                pair.1,
                pair.1 / pair.0.max(1e-9)
            ));
            pairs[i].push(pair);
            if let Some(nginx_rate) = nginx_rate {
                progress(&format!(
                    "round {round}: nginx {nginx_rate:.0} req/s, {} / nginx {:.2}",
                    names[i],
                    pair.1 / nginx_rate.max(1e-9)
                ));
                nginx_pairs[i].push((nginx_rate, pair.1));
            }
            absorb(&mut sluice_totals[i], one);
        }
    }
    server.stop();
    let nginx = match (nginx, nginx_total) {
        (Some((nginx, _)), Some(total)) => {
            let peak = nginx.peak_rss_kib().ok();
            nginx.stop();
            let mut result =
                ScenarioResult::new("nginx-204", "application/json", 1, single, &total);
            result.server_peak_rss_kib = peak;
            Some(result)
        }
        (Some((nginx, _)), None) => {
            nginx.stop();
            None
        }
        (None, _) => None,
    };
    let hwm_after = sluice::vm_hwm_kib("/proc/self/status")?;
    let Some(base_total) = base_total else {
        anyhow::bail!("no rounds were run");
    };
    let mut base = ScenarioResult::new("baseline-204", "application/json", 1, single, &base_total);
    base.bench_vmhwm_growth_kib = Some(hwm_after.saturating_sub(hwm_before));
    let mut singles = Vec::new();
    for ((((node, _), total), (name, pairs)), nginx_pairs) in nodes
        .into_iter()
        .zip(sluice_totals)
        .zip(names.iter().zip(pairs))
        .zip(nginx_pairs)
    {
        let Some(total) = total else {
            anyhow::bail!("no rounds were run");
        };
        let one = finish_sluice(node, name, "application/json", 1, single, &total)?;
        singles.push((one, pairs, nginx_pairs));
    }
    Ok(Interleaved {
        baseline: base,
        nginx,
        singles,
    })
}

/// Requests for the node's bootstrap workspace and source.
fn sluice_target(
    node: &sluice::Node,
    content_type: &'static str,
    events_per_body: usize,
    bodies: &Arc<Vec<bytes::Bytes>>,
) -> Target {
    Target {
        addr: node.addr,
        paths: node.paths.clone(),
        authorization: Some(format!("Bearer {}", node.token)),
        content_type,
        bodies: bodies.clone(),
        events_per_body,
        expect_accepted: true,
    }
}

/// Stops the node and turns what was measured into its scenario's result.
fn finish_sluice(
    node: sluice::Node,
    name: &str,
    content_type: &'static str,
    events_per_body: usize,
    bodies: &Arc<Vec<bytes::Bytes>>,
    outcome: &loadgen::Outcome,
) -> Result<ScenarioResult> {
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
    let mut result = ScenarioResult::new(name, content_type, events_per_body, bodies, outcome);
    result.server_peak_rss_kib = Some(peak_rss);
    result.wal = wal;
    result.sluice_log_problems = stopped.problems;
    result.sluice_stop_secs = Some(stopped.took.as_secs_f64());
    Ok(result)
}

/// One scenario against a fresh Sluice node (`bin`, its HTTP threads and driver).
fn run_sluice(
    runtime: &tokio::runtime::Runtime,
    (bin, server_threads, driver): (&std::path::Path, usize, HttpDriver),
    plan: Plan,
    name: String,
    content_type: &'static str,
    events_per_body: usize,
    bodies: &Arc<Vec<bytes::Bytes>>,
) -> Result<ScenarioResult> {
    progress(&format!(
        "{name}: starting {} (--http-threads {server_threads} --http-io-driver {})",
        bin.display(),
        driver.flag()
    ));
    let node = sluice::Node::start(bin, server_threads, driver.flag())?;
    progress(&format!(
        "{name}: node pid {} on {}; {} connections, {} event(s) per {content_type} request",
        node.pid(),
        node.addr,
        plan.connections,
        events_per_body
    ));
    let target = sluice_target(&node, content_type, events_per_body, bodies);
    let outcome = runtime
        .block_on(loadgen::run(
            Arc::new(target),
            plan,
            ServerProcess::Child(node.pid()),
        ))
        .with_context(|| format!("{name} scenario"))?;
    finish_sluice(node, &name, content_type, events_per_body, bodies, &outcome)
}

/// The source of the schema scenarios: the benchmark schema.
fn schema_shaping() -> sluice::Shaping {
    sluice::Shaping {
        schema: Some(bench_schema()),
        tag_rules: Vec::new(),
        sources: 1,
    }
}

/// The source of the tag-rule scenario: no schema, the benchmark rules.
fn rules_shaping() -> sluice::Shaping {
    sluice::Shaping {
        schema: None,
        tag_rules: bench_rules(),
        sources: 1,
    }
}

/// One scenario against a fresh node whose sources are shaped by `shaping`; requests go to
/// each source in turn.
fn run_sluice_shaped(
    runtime: &tokio::runtime::Runtime,
    (bin, server_threads, driver): (&std::path::Path, usize, HttpDriver),
    plan: Plan,
    name: String,
    content_type: &'static str,
    bodies: &Arc<Vec<bytes::Bytes>>,
    (events_per_body, shaping): (usize, sluice::Shaping),
) -> Result<ScenarioResult> {
    progress(&format!(
        "{name}: starting {} (--http-threads {server_threads} --http-io-driver {})",
        bin.display(),
        driver.flag()
    ));
    let node =
        sluice::Node::start_shaped(bin, (server_threads, driver.flag()), &shaping, "?line=4")?;
    let target = sluice_target(&node, content_type, events_per_body, bodies);
    let outcome = runtime
        .block_on(loadgen::run(
            Arc::new(target),
            plan,
            ServerProcess::Child(node.pid()),
        ))
        .with_context(|| format!("{name} scenario"))?;
    finish_sluice(node, &name, content_type, events_per_body, bodies, &outcome)
}

/// Progress goes to stderr so that stdout holds only the table or the JSON.
fn progress(message: &str) {
    eprintln!("[sluice-bench] {message}");
}
