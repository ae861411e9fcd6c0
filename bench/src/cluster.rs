//! `sluice-bench cluster`: throughput through HAProxy with 1, 2, ... `--nodes` data-plane
//! nodes following one control plane, as deploy/ runs them, and what the cluster's parts cost
//! in CPU: each node, the balancer, the control plane, and the configuration stream of an idle
//! node.
//!
//! Every node, the control plane, HAProxy and the load generator share this machine: on 2
//! cores more nodes cannot add throughput, they add the cost of each node and of the hop
//! through the balancer. The figures say how large that overhead is, not how the cluster
//! scales on machines of its own.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::loadgen::{self, process_cpu_ticks, ticks_to_secs, Plan, ServerProcess, Target};
use crate::payload;
use crate::propagation::{agent, spawn, start_nodes, Process, SECRET};
use crate::sluice::{self, free_port};

#[derive(Args, Clone)]
pub struct ClusterArgs {
    /// The most nodes: the load runs with 1, 2, ... up to this many behind the balancer.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=8))]
    nodes: u64,
    /// Concurrent keep-alive connections through the balancer.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    connections: u64,
    /// Measured seconds per node count.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration_secs: u64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=600))]
    warmup_secs: u64,
    /// Seconds the idle cluster is watched for the configuration stream's cost.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    idle_secs: u64,
    /// Events per request: 1 sends single-event JSON, more sends NDJSON batches.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=20_000))]
    batch_events: u64,
    /// Worker threads of the load generator's tokio runtime.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    client_threads: u64,
    /// The `sluice` binary [default: `sluice` next to this executable].
    #[arg(long)]
    sluice_bin: Option<PathBuf>,
    /// The HAProxy binary.
    #[arg(long, default_value = "haproxy")]
    haproxy: PathBuf,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn call(agent: &ureq::Agent, url: &str, token: &str, body: Value) -> Result<Value> {
    let mut response = agent
        .post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .send(body.to_string().as_bytes())?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    if !(200..300).contains(&status) {
        bail!("{url} answered {status}: {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// CPU seconds used by each of `pids` (utime + stime).
fn cpu_secs(pids: &[u32]) -> Result<Vec<f64>> {
    pids.iter()
        .map(|pid| process_cpu_ticks(&format!("/proc/{pid}/stat")).map(ticks_to_secs))
        .collect()
}

/// One node count's figures.
struct Measured {
    nodes: usize,
    requests_per_sec: f64,
    events_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// Cores used by each node in the window.
    node_cores: Vec<f64>,
    haproxy_cores: f64,
    controlplane_cores: f64,
    loadgen_cores: f64,
    /// Everything else on the machine (other processes): figures mean little when this is
    /// far from zero.
    other_cores: f64,
}

pub fn run(args: ClusterArgs) -> Result<()> {
    let bin = match &args.sluice_bin {
        Some(bin) => bin.clone(),
        None => sluice::default_binary()?,
    };
    sluice::check_binary(&bin)?;
    let haproxy_ok = Command::new(&args.haproxy)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !haproxy_ok {
        bail!(
            "{} does not run: install HAProxy (Debian: apt-get install haproxy) or give --haproxy",
            args.haproxy.display()
        );
    }
    let dir = tempfile::tempdir()?;

    // The control plane, a workspace, a source and a token.
    let api_port = free_port()?;
    let api = format!("http://127.0.0.1:{api_port}");
    let cp_dir = dir.path().join("cp");
    let control = spawn(
        &bin,
        &[
            "controlplane".into(),
            "--data-dir".into(),
            cp_dir.display().to_string(),
            "--api-addr".into(),
            format!("127.0.0.1:{api_port}"),
            "--cluster-secret".into(),
            SECRET.into(),
        ],
        &dir.path().join("cp.log"),
        &format!("{api}/healthz"),
    )?;
    let agent = agent();
    let operator: Value = serde_json::from_str(&std::fs::read_to_string(
        cp_dir.join("initial-operator.json"),
    )?)?;
    let session = call(
        &agent,
        &format!("{api}/api/v1/sessions"),
        "",
        json!({"email": operator["email"], "password": operator["password"]}),
    )?;
    let session = session["token"].as_str().context("no session")?.to_owned();
    call(
        &agent,
        &format!("{api}/api/v1/workspaces"),
        &session,
        json!({"name": "Bench", "slug": "bench"}),
    )?;
    call(
        &agent,
        &format!("{api}/api/v1/workspaces/bench/sources"),
        &session,
        json!({"slug": "telemetry"}),
    )?;
    let token = call(
        &agent,
        &format!("{api}/api/v1/workspaces/bench/tokens"),
        &session,
        json!({"name": "bench", "scopes": ["ingest"]}),
    )?;
    let token = token["secret"]
        .as_str()
        .context("no token secret")?
        .to_owned();

    // The nodes: one HTTP thread each, MQTT off, their own data dir and local lake.
    let count = args.nodes as usize;
    let nodes = start_nodes(&bin, dir.path(), count, &api)?;
    let accepts = |port: u16| {
        agent
            .post(format!("http://127.0.0.1:{port}/v1/ingest/bench/telemetry"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .send(b"{\"t\":1}".as_slice())
            .is_ok_and(|r| r.status() == 202)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes.iter().all(|(_, port)| accepts(*port)) {
        if Instant::now() > deadline {
            bail!("the nodes did not all take the token within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // The configuration stream's cost: the idle cluster (heartbeats only).
    let mut idle_pids: Vec<u32> = nodes.iter().map(|(p, _)| p.pid()).collect();
    idle_pids.push(control.pid());
    eprintln!(
        "cluster: {count} nodes and the control plane idle for {} s (configuration stream only)",
        args.idle_secs
    );
    let before = cpu_secs(&idle_pids)?;
    std::thread::sleep(Duration::from_secs(args.idle_secs));
    let after = cpu_secs(&idle_pids)?;
    let idle: Vec<f64> = after
        .iter()
        .zip(&before)
        .map(|(a, b)| (a - b) / args.idle_secs as f64)
        .collect();
    let idle_node_ms_per_min = idle[..count].iter().sum::<f64>() / count as f64 * 60_000.0;
    let idle_cp_ms_per_min = idle[count] * 60_000.0;

    let batch = args.batch_events as usize;
    let (bodies, content_type) = if batch == 1 {
        (payload::single_event_bodies(4096), "application/json")
    } else {
        (payload::ndjson_bodies(32, batch), "application/x-ndjson")
    };
    let bodies = Arc::new(bodies);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads as usize)
        .thread_name(loadgen::THREAD_NAME)
        .enable_all()
        .build()
        .context("building the load generator runtime")?;
    let plan = Plan {
        connections: args.connections as usize,
        warmup: Duration::from_secs(args.warmup_secs),
        duration: Duration::from_secs(args.duration_secs),
        request_timeout: Duration::from_secs(10),
    };

    let mut results = Vec::new();
    for n in 1..=count {
        let lb_port = free_port()?;
        let cfg = dir.path().join(format!("haproxy-{n}.cfg"));
        std::fs::write(&cfg, haproxy_cfg(lb_port, &nodes[..n]))?;
        let haproxy = Process(
            Command::new(&args.haproxy)
                .arg("-db")
                .arg("-f")
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(
                    dir.path().join(format!("haproxy-{n}.log")),
                )?)
                .spawn()
                .context("starting haproxy")?,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !accepts(lb_port) {
            if Instant::now() > deadline {
                bail!("HAProxy did not pass ingest through within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "cluster: {n} node(s) behind HAProxy, {} connections, {} s",
            args.connections, args.duration_secs
        );
        let target = Arc::new(Target {
            addr: ([127, 0, 0, 1], lb_port).into(),
            paths: vec!["/v1/ingest/bench/telemetry".into()],
            authorization: Some(format!("Bearer {token}")),
            content_type,
            bodies: bodies.clone(),
            events_per_body: batch,
            expect_accepted: true,
        });
        // CPU of every process over the measured window, sampled beside the load.
        let mut pids: Vec<u32> = nodes[..n].iter().map(|(p, _)| p.pid()).collect();
        pids.push(haproxy.pid());
        pids.push(control.pid());
        let window = (plan.warmup, plan.duration);
        let sampler = std::thread::spawn(move || -> Result<Vec<f64>> {
            std::thread::sleep(window.0);
            let before = cpu_secs(&pids)?;
            std::thread::sleep(window.1);
            let after = cpu_secs(&pids)?;
            Ok(after
                .iter()
                .zip(&before)
                .map(|(a, b)| (a - b) / window.1.as_secs_f64())
                .collect())
        });
        // The load generator's own CPU comes back in the outcome (the balancer is the
        // "server" it names; its figure is measured here with the rest).
        let outcome = runtime.block_on(loadgen::run(
            target,
            plan,
            ServerProcess::Child(haproxy.pid()),
        ))?;
        let cores = match sampler.join() {
            Ok(cores) => cores?,
            Err(_) => bail!("the CPU sampler panicked"),
        };
        drop(haproxy);
        let secs = outcome.window.as_secs_f64();
        // The load generator counts the balancer as the server and everything else as other;
        // the nodes and the control plane are part of the cluster, not other.
        let cluster_cores: f64 = cores[..n].iter().sum::<f64>() + cores[n + 1];
        let other_cores = (outcome.cpu.other_cores.unwrap_or(0.0) - cluster_cores).max(0.0);
        let ms = |q: f64| outcome.latency_us.value_at_quantile(q) as f64 / 1000.0;
        results.push(Measured {
            nodes: n,
            requests_per_sec: outcome.requests as f64 / secs,
            events_per_sec: outcome.events as f64 / secs,
            p50_ms: ms(0.50),
            p99_ms: ms(0.99),
            errors: outcome.error_count(),
            node_cores: cores[..n].to_vec(),
            haproxy_cores: cores[n],
            controlplane_cores: cores[n + 1],
            loadgen_cores: outcome.cpu.loadgen_cores.unwrap_or(0.0),
            other_cores,
        });
    }

    if args.json {
        let rows: Vec<Value> = results
            .iter()
            .map(|m| {
                json!({
                    "nodes": m.nodes,
                    "requests_per_sec": m.requests_per_sec,
                    "events_per_sec": m.events_per_sec,
                    "p50_ms": m.p50_ms,
                    "p99_ms": m.p99_ms,
                    "errors": m.errors,
                    "node_cores": m.node_cores,
                    "haproxy_cores": m.haproxy_cores,
                    "controlplane_cores": m.controlplane_cores,
                    "loadgen_cores": m.loadgen_cores,
                    "other_cores": m.other_cores,
                })
            })
            .collect();
        let report = json!({
            "connections": args.connections,
            "batch_events": args.batch_events,
            "duration_secs": args.duration_secs,
            "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "idle_node_cpu_ms_per_min": idle_node_ms_per_min,
            "idle_controlplane_cpu_ms_per_min": idle_cp_ms_per_min,
            "results": rows,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "Cluster through HAProxy (tcp, round robin): {} connections, {} event(s) per request, {} s per row, {cores} cores shared by everything",
        args.connections, args.batch_events, args.duration_secs
    );
    println!(
        "{:>5} {:>10} {:>11} {:>8} {:>8} {:>6}  {:>20} {:>8} {:>8} {:>8} {:>8}",
        "nodes",
        "req/s",
        "events/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "cores per node",
        "haproxy",
        "cp",
        "loadgen",
        "other"
    );
    let mut per_request = BTreeMap::new();
    for m in &results {
        let per_node = m
            .node_cores
            .iter()
            .map(|c| format!("{c:.2}"))
            .collect::<Vec<_>>()
            .join("/");
        println!(
            "{:>5} {:>10.0} {:>11.0} {:>8.2} {:>8.2} {:>6}  {:>20} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            m.nodes,
            m.requests_per_sec,
            m.events_per_sec,
            m.p50_ms,
            m.p99_ms,
            m.errors,
            per_node,
            m.haproxy_cores,
            m.controlplane_cores,
            m.loadgen_cores,
            m.other_cores
        );
        if m.requests_per_sec > 0.0 {
            let node_us = m.node_cores.iter().sum::<f64>() / m.requests_per_sec * 1e6;
            let lb_us = m.haproxy_cores / m.requests_per_sec * 1e6;
            per_request.insert(m.nodes, (node_us, lb_us));
        }
    }
    println!("CPU per request (µs): nodes together / HAProxy");
    for (n, (node_us, lb_us)) in per_request {
        println!("  {n} node(s): {node_us:.1} / {lb_us:.1}");
    }
    println!(
        "Idle ({} s; the configuration stream's heartbeats and the nodes' own timers): {idle_node_ms_per_min:.1} ms CPU per node per minute; control plane {idle_cp_ms_per_min:.1} ms per minute serving {count} streams",
        args.idle_secs
    );
    Ok(())
}

/// HAProxy in front of `nodes`' HTTP ports: `mode tcp`, round robin, `/readyz` checks, as
/// deploy/compose/haproxy.cfg.
fn haproxy_cfg(port: u16, nodes: &[(Process, u16)]) -> String {
    let mut cfg = format!(
        "global\n    maxconn 4096\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n\
         frontend ingest\n    bind 127.0.0.1:{port}\n    default_backend nodes\n\
         backend nodes\n    balance roundrobin\n    option httpchk GET /readyz\n    http-check expect status 200\n"
    );
    for (i, (_, node_port)) in nodes.iter().enumerate() {
        cfg.push_str(&format!(
            "    server n{i} 127.0.0.1:{node_port} check inter 1s\n"
        ));
    }
    cfg
}
