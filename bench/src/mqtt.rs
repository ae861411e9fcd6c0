//! `sluice-bench mqtt`: MQTT ingest against the Debian `mosquitto` broker measured in the same
//! run with the same fleet simulator (`sluice-loadtest`'s), and the memory an idle connection
//! costs.
//!
//! Scenarios: QoS 0 and QoS 1 at each `--connections` count, first Sluice (a fresh node per
//! scenario, PUBACK only after the WAL fsync), then mosquitto (persistence on, which saves
//! its database periodically and never fsyncs per message) when it is installed. Then
//! `--idle-connections` idle connections to a fresh node, and to mosquitto, with the RSS growth
//! per connection.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use sluice_loadtest::mqtt::{self, Plan, Summary, Version};

use crate::loadgen::{busy_threads_text, process_cpu_ticks, thread_ticks_by_role, ticks_to_secs};
use crate::mqtt_connections as conn;
use crate::sluice::{self, Node};

#[derive(Args, Clone)]
pub struct MqttArgs {
    /// Connection counts to run each QoS with.
    #[arg(long, value_delimiter = ',', default_value = "16,256")]
    connections: Vec<usize>,
    /// QoS levels to run.
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    qos: Vec<u8>,
    /// Measured seconds per scenario.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration_secs: u64,
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=600))]
    warmup_secs: u64,
    /// Unacknowledged QoS 1 messages per connection.
    #[arg(long, default_value_t = 32)]
    inflight: usize,
    /// Payload bytes (generated JSON).
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// MQTT version of the simulated devices: 3 or 5.
    #[arg(long, default_value_t = 5)]
    protocol: u8,
    /// Sluice's MQTT worker threads; 0 = the node's default (one per available core).
    #[arg(long, default_value_t = 0)]
    server_workers: usize,
    /// Threads of the simulator.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Idle connections for the memory measurement (0 skips it). Spread over loopback source
    /// addresses 127.0.0.2 and up; the bench raises its descriptor limit (the hard one too as
    /// root) and gives Sluice an `mqtt.connections_max` with room for them.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// New idle connections per second while they are opened.
    #[arg(long, default_value_t = 5_000.0)]
    idle_connect_rate: f64,
    /// New connections per second of the connect-rate scenario (CONNECT, CONNACK, DISCONNECT
    /// each); 0 skips it.
    #[arg(long, default_value_t = 0.0)]
    connect_rate: f64,
    /// Connections of the burst scenario: all opened at once, then every CONNECT sent
    /// (CONNACK, DISCONNECT each); 0 skips it.
    #[arg(long, default_value_t = 0)]
    connect_burst: usize,
    /// Seconds of the connect-rate scenario's schedule.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=60))]
    connect_secs: u64,
    /// Skip the QoS 0 and 1 scenarios: only the connect-rate and idle-connection ones.
    #[arg(long)]
    connections_only: bool,
    /// Rounds of each QoS scenario, alternating which server goes first (Sluice first in
    /// odd rounds, mosquitto in even ones), each on a fresh server: this VM's speed drifts
    /// within minutes, and alternating puts the drift on both sides of the ratio.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=50))]
    rounds: u64,
    /// Skip the mosquitto reference even when it is installed.
    #[arg(long)]
    no_mosquitto: bool,
    /// The `sluice` binary [default: next to this executable].
    #[arg(long)]
    sluice_bin: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

struct Row {
    server: String,
    qos: u8,
    connections: usize,
    /// 1-based round of the scenario.
    round: u64,
    summary: Summary,
    cpu: Option<ServerCpu>,
    /// The server's peak resident set (VmHWM) over the scenario, in KiB.
    peak_rss_kib: Option<u64>,
}

/// CPU used by the server and by this process (the simulator) over the measured seconds.
struct ServerCpu {
    server_cores: f64,
    simulator_cores: f64,
    /// The server's cores by thread role.
    threads: BTreeMap<String, f64>,
}

impl ServerCpu {
    /// The server's CPU time per message taken, in microseconds.
    fn us_per_message(&self, messages_per_sec: f64) -> Option<f64> {
        (messages_per_sec > 0.0).then(|| self.server_cores / messages_per_sec * 1e6)
    }
}

/// Samples the CPU of process `pid` and of this process over the simulator's measured
/// window: from `warmup` after the start (connections take a moment more, so the window
/// starts a little early) for `duration`.
fn sample_cpu(
    pid: u32,
    warmup: Duration,
    duration: Duration,
) -> std::thread::JoinHandle<Option<ServerCpu>> {
    std::thread::spawn(move || {
        let sample = || -> Result<(u64, u64, BTreeMap<String, u64>)> {
            Ok((
                process_cpu_ticks(&format!("/proc/{pid}/stat"))?,
                process_cpu_ticks("/proc/self/stat")?,
                thread_ticks_by_role(pid)?,
            ))
        };
        std::thread::sleep(warmup);
        let before = sample().ok()?;
        std::thread::sleep(duration);
        let after = sample().ok()?;
        let secs = duration.as_secs_f64().max(f64::MIN_POSITIVE);
        let cores = |a: u64, b: u64| ticks_to_secs(a.saturating_sub(b)) / secs;
        Some(ServerCpu {
            server_cores: cores(after.0, before.0),
            simulator_cores: cores(after.1, before.1),
            threads: after
                .2
                .iter()
                .map(|(role, &a)| {
                    (
                        role.clone(),
                        cores(a, before.2.get(role).copied().unwrap_or(0)),
                    )
                })
                .collect(),
        })
    })
}

pub fn run(args: MqttArgs) -> Result<()> {
    let bin = match &args.sluice_bin {
        Some(bin) => bin.clone(),
        None => sluice::default_binary()?,
    };
    sluice::check_binary(&bin)?;
    let mosquitto = (!args.no_mosquitto).then(find_mosquitto).flatten();
    if mosquitto.is_none() && !args.no_mosquitto {
        progress("mosquitto is not installed (apt-get install mosquitto): Sluice figures only");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()
        .context("starting the simulator runtime")?;

    // The connection scenarios need descriptors on both sides: raised before any server starts,
    // so that they inherit it.
    let descriptors = crate::mqtt_connections::raise_descriptor_limit(
        (args.idle_connections as u64).saturating_mul(2) + 65_536,
    );
    progress(&format!("descriptor limit: {descriptors}"));

    let mut rows = Vec::new();
    let qos_levels: &[u8] = if args.connections_only {
        &[]
    } else {
        &args.qos
    };
    for &qos in qos_levels {
        for &connections in &args.connections {
            for round in 1..=args.rounds {
                let sluice_first = round % 2 == 1;
                if sluice_first {
                    rows.push(run_sluice(&args, &runtime, &bin, qos, connections, round)?);
                }
                if let Some(mosquitto) = &mosquitto {
                    rows.push(run_mosquitto(
                        &args,
                        &runtime,
                        mosquitto,
                        qos,
                        connections,
                        round,
                    )?);
                }
                if !sluice_first {
                    rows.push(run_sluice(&args, &runtime, &bin, qos, connections, round)?);
                }
            }
        }
    }

    let version = if args.protocol == 3 {
        Version::V311
    } else {
        Version::V5
    };
    let mut rates = Vec::new();
    let mut scenarios = Vec::new();
    if args.connect_burst > 0 {
        scenarios.push(format!("burst of {}", args.connect_burst));
    }
    if args.connect_rate > 0.0 {
        scenarios.push(format!(
            "{}/s for {} s",
            args.connect_rate, args.connect_secs
        ));
    }
    for scenario in scenarios {
        let run = |client: conn::Client| {
            if scenario.starts_with("burst") {
                runtime.block_on(conn::connect_burst(client, args.connect_burst))
            } else {
                runtime.block_on(conn::connect_rate(
                    client,
                    args.connect_rate,
                    args.connect_secs,
                ))
            }
        };
        progress(&format!("sluice: new connections, {scenario}"));
        let node = Node::start_mqtt(&bin, 1, args.server_workers)?;
        let client = conn::Client {
            addr: node.mqtt_addr.context("the node has no MQTT address")?,
            version,
            username: Some("default".into()),
            password: Some(node.token.clone()),
        };
        let measured = run(client)?;
        progress(&format!("  {}", rate_line(&measured)));
        node.stop()?;
        rates.push(("sluice", scenario.clone(), measured));
        if let Some(bin) = &mosquitto {
            progress(&format!("mosquitto: new connections, {scenario}"));
            let broker = Mosquitto::start(bin)?;
            let client = conn::Client {
                addr: broker.addr,
                version,
                username: None,
                password: None,
            };
            let measured = run(client)?;
            progress(&format!("  {}", rate_line(&measured)));
            rates.push(("mosquitto", scenario.clone(), measured));
        }
    }

    let mut idle = Vec::new();
    // Both ends hold one descriptor per connection: the bench's limit (which the servers
    // inherit) bounds how many can be measured, less a reserve for the servers' own files.
    let idle_fit =
        (descriptors.saturating_sub(IDLE_DESCRIPTORS_RESERVED) as usize).min(args.idle_connections);
    if idle_fit < args.idle_connections {
        progress(&format!(
            "the descriptor limit ({descriptors}; raising the hard limit needs root with \
             CAP_SYS_RESOURCE) leaves room for {idle_fit} idle connections, not {}",
            args.idle_connections
        ));
    }
    if idle_fit > 0 {
        progress(&format!("sluice: {idle_fit} idle connections"));
        // Room for them over the node's default MQTT cap (20,000), and the HTTP listener's
        // cap small, or the descriptors module would halve the MQTT cap to fit both.
        let cap = idle_fit.saturating_add(256).max(20_000);
        let node = Node::start_mqtt_with(
            &bin,
            1,
            args.server_workers,
            &[
                "--mqtt-connections-max".into(),
                cap.to_string(),
                "--http-connections-max".into(),
                "64".into(),
            ],
        )?;
        let client = conn::Client {
            addr: node.mqtt_addr.context("the node has no MQTT address")?,
            version,
            username: Some("default".into()),
            password: Some(node.token.clone()),
        };
        let measured = runtime.block_on(conn::idle(
            client,
            node.pid(),
            idle_fit,
            args.idle_connect_rate,
            IDLE_SETTLE,
        ))?;
        progress(&format!("  {}", idle_line(&measured)));
        node.stop()?;
        idle.push(("sluice", measured));
        if let Some(bin) = &mosquitto {
            progress(&format!("mosquitto: {idle_fit} idle connections"));
            let broker = Mosquitto::start(bin)?;
            let client = conn::Client {
                addr: broker.addr,
                version,
                username: None,
                password: None,
            };
            let measured = runtime.block_on(conn::idle(
                client,
                broker.child.id(),
                idle_fit,
                args.idle_connect_rate,
                IDLE_SETTLE,
            ))?;
            progress(&format!("  {}", idle_line(&measured)));
            idle.push(("mosquitto", measured));
        }
    }

    if args.json {
        let out = json!({
            "rounds": round_summaries(&rows).iter().map(|s| json!({
                "qos": s.qos, "connections": s.connections,
                "sluice_mean_per_sec": s.sluice_mean, "mosquitto_mean_per_sec": s.mosquitto_mean,
                "ratio_of_means": s.ratio_of_means(), "median_ratio": s.median_ratio(),
                "ratios": s.ratios,
            })).collect::<Vec<_>>(),
            "scenarios": rows.iter().map(|r| json!({
                "server": r.server, "qos": r.qos, "connections": r.connections, "round": r.round,
                "ratio_to_mosquitto": ratio(&rows, r),
                "summary": r.summary,
                "server_cpu_cores": r.cpu.as_ref().map(|c| c.server_cores),
                "simulator_cpu_cores": r.cpu.as_ref().map(|c| c.simulator_cores),
                "server_threads_cpu_cores": r.cpu.as_ref().map(|c| &c.threads),
                "server_us_per_message": r.cpu.as_ref().and_then(|c| c.us_per_message(r.summary.taken_per_sec)),
                "server_peak_rss_kib": r.peak_rss_kib,
            })).collect::<Vec<_>>(),
            "connect_rate": rates.iter().map(|(server, scenario, m)| json!({
                "server": server, "scenario": scenario,
                "accepted_per_sec": m.accepted_per_sec, "outcomes": m.outcomes.json(),
                "connack_ms_p50": m.connack_ms_p50, "connack_ms_p99": m.connack_ms_p99,
                "connack_ms_max": m.connack_ms_max,
            })).collect::<Vec<_>>(),
            "idle": idle.iter().map(|(server, m)| json!({
                "server": server, "connections": m.outcomes.accepted,
                "outcomes": m.outcomes.json(), "sources": m.sources,
                "connect_secs": m.connect_secs,
                "rss_before_kib": m.rss_before_kib, "rss_after_kib": m.rss_after_kib,
                "bytes_per_connection": m.per_connection_bytes(),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", table(&args, &rows, &rates, &idle));
    }
    Ok(())
}

/// One QoS scenario against a fresh Sluice node.
fn run_sluice(
    args: &MqttArgs,
    runtime: &tokio::runtime::Runtime,
    bin: &Path,
    qos: u8,
    connections: usize,
    round: u64,
) -> Result<Row> {
    progress(&format!(
        "sluice: QoS {qos}, {connections} connections{}",
        round_label(args, round)
    ));
    let node = Node::start_mqtt(bin, 1, args.server_workers)?;
    let addr = node.mqtt_addr.context("the node has no MQTT address")?;
    let mut plan = plan_for(args, addr, connections, qos);
    plan.username = Some("default".into());
    plan.password = Some(node.token.clone());
    let (summary, cpu) = measure(runtime, plan, node.pid())?;
    let peak_rss_kib = node.peak_rss_kib().ok();
    let wal = node.wal_stats().ok();
    let stopped = node.stop()?;
    // How long the node took to stop is mostly the shipping of what the WAL still held: a
    // shipper that fell behind shows here.
    progress(&format!(
        "  WAL {}; node stopped in {:.1} s after SIGTERM",
        wal.map_or("-".into(), |w| format!(
            "{:.0} fsyncs (warm-up included), mean {:.2} ms, {:.1} records each",
            w.fsyncs,
            w.mean_fsync_ms().unwrap_or(0.0),
            w.records_per_fsync().unwrap_or(0.0)
        )),
        stopped.took.as_secs_f64()
    ));
    Ok(Row {
        server: "sluice".into(),
        qos,
        connections,
        round,
        summary,
        cpu,
        peak_rss_kib,
    })
}

/// One QoS scenario against a fresh mosquitto.
fn run_mosquitto(
    args: &MqttArgs,
    runtime: &tokio::runtime::Runtime,
    bin: &Path,
    qos: u8,
    connections: usize,
    round: u64,
) -> Result<Row> {
    progress(&format!(
        "mosquitto: QoS {qos}, {connections} connections{}",
        round_label(args, round)
    ));
    let broker = Mosquitto::start(bin)?;
    let plan = plan_for(args, broker.addr, connections, qos);
    let (summary, cpu) = measure(runtime, plan, broker.child.id())?;
    let peak_rss_kib = sluice::vm_hwm_kib(&format!("/proc/{}/status", broker.child.id())).ok();
    drop(broker);
    Ok(Row {
        server: "mosquitto".into(),
        qos,
        connections,
        round,
        summary,
        cpu,
        peak_rss_kib,
    })
}

/// Runs the simulator's `plan` against the server `pid`, sampling its CPU meanwhile.
fn measure(
    runtime: &tokio::runtime::Runtime,
    plan: Plan,
    pid: u32,
) -> Result<(Summary, Option<ServerCpu>)> {
    let cpu = sample_cpu(pid, plan.warmup, plan.duration);
    let summary = runtime.block_on(mqtt::run(plan))?;
    let cpu = cpu.join().ok().flatten();
    progress(&format!("  {}", summary.one_line()));
    Ok((summary, cpu))
}

fn round_label(args: &MqttArgs, round: u64) -> String {
    if args.rounds > 1 {
        format!(", round {round} of {}", args.rounds)
    } else {
        String::new()
    }
}

fn plan_for(args: &MqttArgs, addr: SocketAddr, connections: usize, qos: u8) -> Plan {
    let version = if args.protocol == 3 {
        Version::V311
    } else {
        Version::V5
    };
    let mut plan = Plan::new(addr, version, connections, qos);
    plan.inflight = args.inflight;
    plan.payload_bytes = args.payload_bytes;
    plan.warmup = Duration::from_secs(args.warmup_secs);
    plan.duration = Duration::from_secs(args.duration_secs);
    plan.client_id_prefix = format!("bench-q{qos}-c{connections}");
    plan
}

/// Sluice's messages/s over mosquitto's for the same QoS and connection count.
fn ratio(rows: &[Row], row: &Row) -> Option<f64> {
    if !row.server.starts_with("sluice") {
        return None;
    }
    rows.iter()
        .find(|r| {
            r.server == "mosquitto"
                && r.qos == row.qos
                && r.connections == row.connections
                && r.round == row.round
        })
        .filter(|r| r.summary.taken_per_sec > 0.0)
        .map(|r| row.summary.taken_per_sec / r.summary.taken_per_sec)
}

/// How long idle connections are held after the last one opened before the RSS is read.
const IDLE_SETTLE: Duration = Duration::from_secs(3);
/// Descriptors of the bench's limit not given to idle connections (the servers' files and
/// threads, mosquitto's, the bench's own).
const IDLE_DESCRIPTORS_RESERVED: u64 = 1024;

fn rate_line(m: &conn::ConnectRate) -> String {
    let o = &m.outcomes;
    format!(
        "{} attempted: {} accepted ({:.0}/s), {} refused, {} closed before CONNACK, {} TCP failed, {} unanswered; CONNACK p50 {:.2} ms p99 {:.2} ms{}",
        o.attempted, o.accepted, m.accepted_per_sec, o.refused,
        o.closed_before_connack, o.tcp_failed, o.no_answer, m.connack_ms_p50, m.connack_ms_p99,
        o.first_error.as_ref().map(|e| format!(", first error: {e}")).unwrap_or_default()
    )
}

fn idle_line(m: &conn::IdleMemory) -> String {
    let o = &m.outcomes;
    format!(
        "{} connected of {} ({} refused, {} closed before CONNACK, {} TCP failed, {} unanswered) in {:.1} s from {} source addresses; RSS {} -> {} KiB{}",
        o.accepted, o.attempted, o.refused, o.closed_before_connack, o.tcp_failed, o.no_answer,
        m.connect_secs, m.sources, m.rss_before_kib, m.rss_after_kib,
        o.first_error.as_ref().map(|e| format!(", first error: {e}")).unwrap_or_default()
    )
}

fn table(
    args: &MqttArgs,
    rows: &[Row],
    rates: &[(&str, String, conn::ConnectRate)],
    idle: &[(&str, conn::IdleMemory)],
) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "MQTT ingest, {} B JSON payloads, MQTT {}, {} in flight per connection (QoS 1), {} s measured after {} s warm-up, Sluice MQTT workers: {}\n\n",
        args.payload_bytes,
        if args.protocol == 3 { "3.1.1" } else { "5" },
        args.inflight,
        args.duration_secs,
        args.warmup_secs,
        match args.server_workers {
            0 => format!(
                "one per core ({})",
                std::thread::available_parallelism().map_or(1, |n| n.get())
            ),
            n => n.to_string(),
        }
    ));
    if !rows.is_empty() {
        out.push_str(&qos_table(rows));
    }
    if !rates.is_empty() {
        out.push_str("\n| server | new connections | attempted | accepted | accepted/s | refused | closed before CONNACK | TCP failed | unanswered | CONNACK p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
        for (server, scenario, m) in rates {
            let o = &m.outcomes;
            out.push_str(&format!(
                "| {server} | {scenario} | {} | {} | {:.0} | {} | {} | {} | {} | {:.2} | {:.2} |\n",
                o.attempted,
                o.accepted,
                m.accepted_per_sec,
                o.refused,
                o.closed_before_connack,
                o.tcp_failed,
                o.no_answer,
                m.connack_ms_p50,
                m.connack_ms_p99
            ));
        }
    }
    if !idle.is_empty() {
        out.push_str("\n| server | idle connections held | of | RSS before KiB | RSS after KiB | bytes per connection | KiB per connection |\n|---|---|---|---|---|---|---|\n");
        for (server, m) in idle {
            let per = m.per_connection_bytes();
            out.push_str(&format!(
                "| {server} | {} | {} | {} | {} | {} | {} |\n",
                m.outcomes.accepted,
                m.outcomes.attempted,
                m.rss_before_kib,
                m.rss_after_kib,
                per.map_or("-".into(), |b| b.to_string()),
                per.map_or("-".into(), |b| format!("{:.2}", b as f64 / 1024.0)),
            ));
        }
    }
    out
}

/// The QoS scenarios' table and their CPU by thread.
fn qos_table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| server | QoS | connections | round | messages/s | ack p50 ms | ack p99 ms | ack p999 ms | failed | vs mosquitto | server CPU | server µs/msg | sim CPU | server peak RSS MiB |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let s = &r.summary;
        let (p50, p99, p999) = if r.qos == 0 {
            ("-".to_owned(), "-".to_owned(), "-".to_owned())
        } else {
            (
                format!("{:.2}", s.latency_ms_p50),
                format!("{:.2}", s.latency_ms_p99),
                format!("{:.2}", s.latency_ms_p999),
            )
        };
        let cpu = |f: &dyn Fn(&ServerCpu) -> Option<f64>| {
            r.cpu
                .as_ref()
                .and_then(f)
                .map_or("-".into(), |x| format!("{x:.2}"))
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.server,
            r.qos,
            r.connections,
            r.round,
            s.taken_per_sec,
            p50,
            p99,
            p999,
            s.failed,
            ratio(rows, r).map_or("-".into(), |x| format!("{x:.2}")),
            cpu(&|c| Some(c.server_cores)),
            cpu(&|c| c.us_per_message(s.taken_per_sec)),
            cpu(&|c| Some(c.simulator_cores)),
            r.peak_rss_kib
                .map_or("-".into(), |kib| format!("{:.0}", kib as f64 / 1024.0)),
        ));
    }
    out.push_str(
        "\nCPU in cores over the measured seconds (sampled from /proc, starting the warm-up's \
         length after the simulator starts); \"sim CPU\" is this process, the simulator. Peak \
         RSS is the server's VmHWM at the end of the scenario (a fresh process each).\n",
    );
    for r in rows.iter().filter(|r| r.server.starts_with("sluice")) {
        let Some(cpu) = &r.cpu else { continue };
        out.push_str(&format!(
            "{} QoS {} {} connections, round {}, CPU by thread: {}\n",
            r.server,
            r.qos,
            r.connections,
            r.round,
            busy_threads_text(&cpu.threads)
        ));
    }
    let summaries = round_summaries(rows);
    if !summaries.is_empty() {
        out.push('\n');
    }
    for s in summaries {
        out.push_str(&format!(
            "QoS {} {} connections over {} rounds: Sluice {:.0} msg/s / mosquitto {:.0} = {:.2} (median of the rounds' ratios {:.2}; rounds {})\n",
            s.qos,
            s.connections,
            s.ratios.len(),
            s.sluice_mean,
            s.mosquitto_mean,
            s.ratio_of_means(),
            s.median_ratio(),
            s.ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    out
}

/// A QoS scenario measured in several rounds against mosquitto.
struct RoundSummary {
    qos: u8,
    connections: usize,
    /// Mean messages/s over the rounds (each the same length).
    sluice_mean: f64,
    mosquitto_mean: f64,
    /// Sluice over mosquitto in each round.
    ratios: Vec<f64>,
}

impl RoundSummary {
    fn ratio_of_means(&self) -> f64 {
        if self.mosquitto_mean > 0.0 {
            self.sluice_mean / self.mosquitto_mean
        } else {
            0.0
        }
    }

    fn median_ratio(&self) -> f64 {
        let mut sorted = self.ratios.clone();
        sorted.sort_by(f64::total_cmp);
        match sorted.len() {
            0 => 0.0,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        }
    }
}

/// The scenarios measured in more than one round with mosquitto, in the order first run.
fn round_summaries(rows: &[Row]) -> Vec<RoundSummary> {
    let mut out: Vec<RoundSummary> = Vec::new();
    for r in rows.iter().filter(|r| r.server.starts_with("sluice")) {
        let Some(ratio) = ratio(rows, r) else {
            continue;
        };
        match out
            .iter_mut()
            .find(|s| s.qos == r.qos && s.connections == r.connections)
        {
            Some(summary) => summary.ratios.push(ratio),
            None => out.push(RoundSummary {
                qos: r.qos,
                connections: r.connections,
                sluice_mean: 0.0,
                mosquitto_mean: 0.0,
                ratios: vec![ratio],
            }),
        }
    }
    out.retain(|s| s.ratios.len() > 1);
    for summary in &mut out {
        let mean = |server: &str| {
            let rates: Vec<f64> = rows
                .iter()
                .filter(|r| {
                    r.server == server
                        && r.qos == summary.qos
                        && r.connections == summary.connections
                })
                .map(|r| r.summary.taken_per_sec)
                .collect();
            rates.iter().sum::<f64>() / rates.len().max(1) as f64
        };
        summary.sluice_mean = mean("sluice");
        summary.mosquitto_mean = mean("mosquitto");
    }
    out
}

fn progress(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The mosquitto broker binary, when installed.
fn find_mosquitto() -> Option<PathBuf> {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// A mosquitto broker on a free port with persistence on, in a temporary directory.
struct Mosquitto {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start(bin: &Path) -> Result<Mosquitto> {
        let dir = tempfile::tempdir().context("mosquitto dir")?;
        let port = sluice::free_port()?;
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nlog_dest none\nmax_keepalive 3600\n",
                dir.path().display()
            ),
        )
        .context("writing mosquitto.conf")?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                bail!("mosquitto did not listen on {addr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Mosquitto {
            child,
            addr,
            _dir: dir,
        })
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(server: &str, round: u64, taken_per_sec: f64) -> Row {
        Row {
            server: server.into(),
            qos: 1,
            connections: 16,
            round,
            summary: Summary {
                devices: 16,
                connected: 16,
                failed: 0,
                qos: 1,
                protocol: "5",
                window_secs: 6.0,
                sent: 0,
                acked: 0,
                refused: 0,
                sent_per_sec: taken_per_sec,
                acked_per_sec: taken_per_sec,
                taken_per_sec,
                latency_ms_p50: 1.0,
                latency_ms_p99: 2.0,
                latency_ms_p999: 3.0,
                latency_ms_max: 4.0,
                first_error: None,
            },
            cpu: None,
            peak_rss_kib: None,
        }
    }

    #[test]
    fn each_round_is_compared_with_its_own_mosquitto_run_and_the_rounds_are_summed_up() {
        // Round 1 Sluice first, round 2 mosquitto first: the order the bench runs them.
        let rows = vec![
            row("sluice", 1, 300.0),
            row("mosquitto", 1, 150.0),
            row("mosquitto", 2, 200.0),
            row("sluice", 2, 300.0),
            row("sluice", 3, 400.0),
            row("mosquitto", 3, 400.0),
        ];
        assert_eq!(ratio(&rows, &rows[3]), Some(1.5), "round 2 against round 2");
        assert_eq!(ratio(&rows, &rows[1]), None, "mosquitto has no ratio");
        let summaries = round_summaries(&rows);
        assert_eq!(summaries.len(), 1);
        let s = &summaries[0];
        assert_eq!(s.ratios, vec![2.0, 1.5, 1.0]);
        assert_eq!(s.median_ratio(), 1.5);
        assert!((s.ratio_of_means() - 1000.0 / 750.0).abs() < 1e-9);
        // One round: nothing to sum up.
        assert!(round_summaries(&rows[..2]).is_empty());
    }
}
