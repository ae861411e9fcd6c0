//! `sluice-loadtest`: fleet simulators.
//!
//! ```text
//! sluice-loadtest mqtt --port 1883 --devices 256 --qos 1 --duration-secs 30 \
//!     --username default --password "$TOKEN"
//! sluice-loadtest mqtt --devices 10000 --idle --duration-secs 60 ...   # hold connections
//! sluice-loadtest mqtt ... --json                                     # machine-readable
//! sluice-loadtest chaos --rounds 100 --sluice target/release/sluice    # kill -9 rounds
//! ```
#![forbid(unsafe_code)]

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use sluice_loadtest::chaos;
use sluice_loadtest::mqtt::{self, Payload, Plan, Version};

#[derive(Parser)]
#[command(name = "sluice-loadtest", about = "Fleet simulators for Sluice")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// N MQTT devices, each its own connection, publishing at a QoS and rate.
    Mqtt(MqttArgs),
    /// Rounds of HTTP and MQTT QoS 1 load against a node killed with SIGKILL once per round;
    /// reports acknowledged, stored, lost and duplicated events. Exits 1 unless none is lost
    /// or duplicated.
    Chaos(ChaosArgs),
}

#[derive(Args)]
struct ChaosArgs {
    /// Rounds: one kill and restart each.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    rounds: u32,
    /// Seed of everything random; printed by every run, to replay it.
    #[arg(long)]
    seed: Option<u64>,
    /// The `sluice` binary, built with `--features chaos` [default: `sluice` beside this
    /// binary].
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// New or empty directory for the node's data and log [default: a new one under the
    /// system's temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// HTTP clients posting NDJSON back to back.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=256))]
    http_clients: u64,
    /// MQTT QoS 1 devices.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=1000))]
    mqtt_devices: u64,
    /// Earliest and latest moment of a timed kill after the node is up, ms.
    #[arg(long, default_value = "200,1500", value_delimiter = ',', num_args = 2)]
    kill_after_ms: Vec<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct MqttArgs {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// MQTT version: 3 (3.1.1) or 5.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(3..=5))]
    protocol: u8,
    /// Devices, each with its own connection.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    devices: u64,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Messages per second per device; 0 = as fast as the in-flight window allows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Unacknowledged QoS 1/2 messages per device at most.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=65_000))]
    inflight: u64,
    /// Payload size in bytes of the generated JSON (ignored with --template).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(64..=16_000_000))]
    payload_bytes: u64,
    /// Payload template; {device}, {seq} and {ts} (Unix ms) are filled in.
    #[arg(long)]
    template: Option<String>,
    #[arg(long, default_value = "ingest/telemetry")]
    topic: String,
    /// Workspace slug (Sluice) or broker user name.
    #[arg(long, env = "SLUICE_MQTT_USERNAME")]
    username: Option<String>,
    /// Ingest token (Sluice) or broker password.
    #[arg(long, env = "SLUICE_MQTT_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Client ids are `<prefix>-<n>`.
    #[arg(long, default_value = "sim")]
    client_id_prefix: String,
    #[arg(long, default_value_t = 60)]
    keep_alive_secs: u16,
    /// New connections per second while the fleet comes up.
    #[arg(long, default_value_t = 2000.0)]
    connect_rate: f64,
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=3600))]
    warmup_secs: u64,
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    duration_secs: u64,
    /// Only connect and keep the connections alive (memory per connection, connection limits).
    #[arg(long)]
    idle: bool,
    /// Worker threads of the simulator.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: u64,
    /// Print the summary as JSON (no progress bar).
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Mqtt(args) => run_mqtt(args),
        Command::Chaos(args) => run_chaos(args),
    }
}

fn run_chaos(args: ChaosArgs) -> Result<()> {
    let seed = args.seed.unwrap_or_else(chaos::fresh_seed);
    let sluice = match args.sluice {
        Some(path) => path,
        None => std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("sluice"),
    };
    if !sluice.is_file() {
        bail!(
            "no sluice binary at {}: build it with `cargo build --release -p sluice --features chaos` or pass --sluice",
            sluice.display()
        );
    }
    let dir = args
        .dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("sluice-chaos-{seed}")));
    let mut plan = chaos::Plan::new(sluice, dir, args.rounds, seed);
    plan.http_clients = args.http_clients;
    plan.mqtt_devices = args.mqtt_devices;
    if let [lo, hi] = args.kill_after_ms[..] {
        plan.kill_after_ms = (lo.min(hi), lo.max(hi));
    }
    plan.progress = true;
    raise_fd_limit();
    let report = chaos::run(&plan)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.text());
    }
    let never = report.points_never_fired();
    if !never.is_empty() {
        eprintln!(
            "crash points armed but never fired: {never:?}; was sluice built with `--features chaos`?"
        );
    }
    if !report.passed() || !never.is_empty() {
        eprintln!("chaos run FAILED; replay with --seed {seed}");
        std::process::exit(1);
    }
    Ok(())
}

fn run_mqtt(args: MqttArgs) -> Result<()> {
    let addr: SocketAddr = (args.host.as_str(), args.port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", args.host))?
        .next()
        .context("no address")?;
    let mut plan = Plan::new(
        addr,
        if args.protocol == 5 {
            Version::V5
        } else {
            Version::V311
        },
        args.devices as usize,
        args.qos,
    );
    plan.rate_per_device = args.rate.max(0.0);
    plan.inflight = args.inflight as usize;
    plan.payload_bytes = args.payload_bytes as usize;
    plan.payload = args.template.map_or(Payload::Generated, Payload::Template);
    plan.topic = args.topic;
    plan.username = args.username;
    plan.password = args.password;
    plan.client_id_prefix = args.client_id_prefix;
    plan.keep_alive_secs = args.keep_alive_secs;
    plan.connect_rate = args.connect_rate;
    plan.warmup = Duration::from_secs(args.warmup_secs);
    plan.duration = Duration::from_secs(args.duration_secs);
    plan.idle = args.idle;
    plan.progress = !args.json;
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads as usize)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let summary = runtime.block_on(mqtt::run(plan))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("{}", summary.one_line());
    }
    Ok(())
}

/// Many devices need many file descriptors: take the hard limit.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    // Best effort: with the soft limit as it was, the run reports the connections it could
    // not open.
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
}
