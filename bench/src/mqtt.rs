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
use crate::sluice::{self, status_kib, Node};

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
    /// I/O drivers to run Sluice's scenarios with (`epoll`, `io_uring`).
    #[arg(long, value_delimiter = ',', default_value = "epoll")]
    io_drivers: Vec<String>,
    /// Threads of the simulator.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Idle connections for the memory measurement (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
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
    summary: Summary,
    cpu: Option<ServerCpu>,
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

    let mut rows = Vec::new();
    for &qos in &args.qos {
        for &connections in &args.connections {
            for driver in &args.io_drivers {
                progress(&format!(
                    "sluice ({driver}): QoS {qos}, {connections} connections"
                ));
                let node = Node::start_mqtt(&bin, 1, args.server_workers, driver)?;
                let addr = node.mqtt_addr.context("the node has no MQTT address")?;
                let mut plan = plan_for(&args, addr, connections, qos);
                plan.username = Some("default".into());
                plan.password = Some(node.token.clone());
                let cpu = sample_cpu(node.pid(), plan.warmup, plan.duration);
                let summary = runtime.block_on(mqtt::run(plan))?;
                let cpu = cpu.join().ok().flatten();
                progress(&format!("  {}", summary.one_line()));
                node.stop()?;
                rows.push(Row {
                    server: format!("sluice ({driver})"),
                    qos,
                    connections,
                    summary,
                    cpu,
                });
            }
            if let Some(bin) = &mosquitto {
                progress(&format!("mosquitto: QoS {qos}, {connections} connections"));
                let broker = Mosquitto::start(bin)?;
                let plan = plan_for(&args, broker.addr, connections, qos);
                let cpu = sample_cpu(broker.child.id(), plan.warmup, plan.duration);
                let summary = runtime.block_on(mqtt::run(plan))?;
                let cpu = cpu.join().ok().flatten();
                progress(&format!("  {}", summary.one_line()));
                drop(broker);
                rows.push(Row {
                    server: "mosquitto".into(),
                    qos,
                    connections,
                    summary,
                    cpu,
                });
            }
        }
    }

    let mut idle = Vec::new();
    if args.idle_connections > 0 {
        progress(&format!(
            "sluice: {} idle connections",
            args.idle_connections
        ));
        let driver = args.io_drivers.first().map_or("epoll", String::as_str);
        let node = Node::start_mqtt(&bin, 1, args.server_workers, driver)?;
        let addr = node.mqtt_addr.context("the node has no MQTT address")?;
        let pid = node.pid();
        let measured = idle_memory(&runtime, &args, addr, pid, |plan| {
            plan.username = Some("default".into());
            plan.password = Some(node.token.clone());
        })?;
        node.stop()?;
        idle.push(("sluice", measured));
        if let Some(bin) = &mosquitto {
            progress(&format!(
                "mosquitto: {} idle connections",
                args.idle_connections
            ));
            let broker = Mosquitto::start(bin)?;
            let measured = idle_memory(&runtime, &args, broker.addr, broker.child.id(), |_| {})?;
            idle.push(("mosquitto", measured));
        }
    }

    if args.json {
        let out = json!({
            "scenarios": rows.iter().map(|r| json!({
                "server": r.server, "qos": r.qos, "connections": r.connections,
                "ratio_to_mosquitto": ratio(&rows, r),
                "summary": r.summary,
                "server_cpu_cores": r.cpu.as_ref().map(|c| c.server_cores),
                "simulator_cpu_cores": r.cpu.as_ref().map(|c| c.simulator_cores),
                "server_threads_cpu_cores": r.cpu.as_ref().map(|c| &c.threads),
                "server_us_per_message": r.cpu.as_ref().and_then(|c| c.us_per_message(r.summary.taken_per_sec)),
            })).collect::<Vec<_>>(),
            "idle": idle.iter().map(|(server, m)| json!({
                "server": server, "connections": m.connected,
                "rss_before_kib": m.before_kib, "rss_after_kib": m.after_kib,
                "bytes_per_connection": m.per_connection_bytes(),
                "first_error": m.first_error,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", table(&args, &rows, &idle));
    }
    Ok(())
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
        .find(|r| r.server == "mosquitto" && r.qos == row.qos && r.connections == row.connections)
        .filter(|r| r.summary.taken_per_sec > 0.0)
        .map(|r| row.summary.taken_per_sec / r.summary.taken_per_sec)
}

/// New idle connections per second.
const IDLE_CONNECT_RATE: f64 = 500.0;

struct IdleMemory {
    connected: u64,
    before_kib: u64,
    after_kib: u64,
    first_error: Option<String>,
}

impl IdleMemory {
    fn per_connection_bytes(&self) -> Option<u64> {
        (self.connected > 0)
            .then(|| self.after_kib.saturating_sub(self.before_kib) * 1024 / self.connected)
    }
}

fn idle_memory(
    runtime: &tokio::runtime::Runtime,
    args: &MqttArgs,
    addr: SocketAddr,
    pid: u32,
    creds: impl FnOnce(&mut Plan),
) -> Result<IdleMemory> {
    let status = format!("/proc/{pid}/status");
    let before_kib = status_kib(&status, "VmRSS:")?;
    let mut plan = plan_for(args, addr, args.idle_connections, 0);
    plan.idle = true;
    plan.client_id_prefix = "idle".into();
    // At 2,000 new connections a second into one worker, a few percent of Sluice's CONNECTs
    // were closed before their CONNACK (docs/bench-log/mqtt.md); 500 a second opens them all.
    plan.connect_rate = IDLE_CONNECT_RATE;
    plan.warmup = Duration::from_secs(2);
    plan.duration = Duration::from_secs(3);
    creds(&mut plan);
    let started = Instant::now();
    let handle = runtime.spawn(mqtt::run(plan));
    // The RSS while every connection is open: sample during the held window.
    let connect_time = Duration::from_secs_f64(args.idle_connections as f64 / IDLE_CONNECT_RATE);
    std::thread::sleep(connect_time + Duration::from_secs(4));
    let after_kib = status_kib(&status, "VmRSS:")?;
    let summary = runtime.block_on(handle).context("idle run")??;
    progress(&format!(
        "  {} connected ({} failed) in {:.1} s; RSS {} -> {} KiB",
        summary.connected,
        summary.failed,
        started.elapsed().as_secs_f64(),
        before_kib,
        after_kib
    ));
    Ok(IdleMemory {
        connected: summary.connected,
        before_kib,
        after_kib,
        first_error: summary.first_error,
    })
}

fn table(args: &MqttArgs, rows: &[Row], idle: &[(&str, IdleMemory)]) -> String {
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
    out.push_str("| server | QoS | connections | messages/s | ack p50 ms | ack p99 ms | ack p999 ms | failed | vs mosquitto | server CPU | server µs/msg | sim CPU |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
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
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.server,
            r.qos,
            r.connections,
            s.taken_per_sec,
            p50,
            p99,
            p999,
            s.failed,
            ratio(rows, r).map_or("-".into(), |x| format!("{x:.2}")),
            cpu(&|c| Some(c.server_cores)),
            cpu(&|c| c.us_per_message(s.taken_per_sec)),
            cpu(&|c| Some(c.simulator_cores)),
        ));
    }
    out.push_str(
        "\nCPU in cores over the measured seconds (sampled from /proc, starting the warm-up's \
         length after the simulator starts); \"sim CPU\" is this process, the simulator.\n",
    );
    for r in rows.iter().filter(|r| r.server.starts_with("sluice")) {
        let Some(cpu) = &r.cpu else { continue };
        out.push_str(&format!(
            "{} QoS {} {} connections, CPU by thread: {}\n",
            r.server,
            r.qos,
            r.connections,
            busy_threads_text(&cpu.threads)
        ));
    }
    if !idle.is_empty() {
        out.push_str("\n| server | idle connections | RSS before KiB | RSS after KiB | bytes per connection |\n|---|---|---|---|---|\n");
        for (server, m) in idle {
            out.push_str(&format!(
                "| {server} | {} | {} | {} | {} |\n",
                m.connected,
                m.before_kib,
                m.after_kib,
                m.per_connection_bytes()
                    .map_or("-".into(), |b| b.to_string())
            ));
        }
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
