//! `propagation`: how fast a revocation made through the control-plane API reaches every
//! data-plane node, and what a large configuration costs to ship and apply.
//!
//! 1. A control plane and `--nodes` data-plane nodes (child processes of the release binary,
//!    fresh temp dirs, loopback) following its configuration stream. For each of
//!    `--revocations` tokens: create it, wait until every node accepts it, revoke it, and time
//!    from the API's answer to the first refused request on each node (each node polled in
//!    its own thread). Prints p50/p99/max.
//! 2. In this process: a snapshot of `--tokens` tokens across `--workspaces` workspaces, its
//!    JSON size, the time to hash, validate and apply it to a node's access table, and what a
//!    node spends on a one-workspace delta and on a large one (`--large-delta-workspaces`):
//!    apply to its indexed state, to its access table, and to its redb cache.
//! 3. A node serving that snapshot takes single-event POSTs from the same load generator as
//!    `http` in `--swap-rounds` × 2 windows of `--swap-secs`, alternately calm and while a new
//!    version of the whole snapshot is applied every 500 ms (validated, cached in redb and
//!    swapped in; the versions are serialised beforehand); prints requests/s of both, each
//!    window's rate, and the slowest second.
//! 4. The same through the configuration stream: a node follows a scripted control plane that
//!    sends the snapshot, then (in the disturbed windows) a delta every 500 ms, which is what
//!    a node does when people change a large configuration: once with one workspace per delta,
//!    once with `--large-delta-workspaces`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use sluice_config::snapshot::{
    ConfigSnapshot, Protocol, Scope, SourceConfig, TokenConfig, WorkspaceConfig,
};
use sluice_config::state::ConfigState;
use sluice_dataplane::bench_api::{Access, RateDefaults};
use sluice_storage::cache::ConfigCache;
use uuid::Uuid;

use crate::sluice::{self, free_port};

#[derive(Args, Clone)]
pub struct PropagationArgs {
    /// Revocations to time.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    revocations: u64,
    /// Data-plane nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=16))]
    nodes: u64,
    /// Tokens in the large snapshot.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    tokens: u64,
    /// Workspaces in the large snapshot.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    workspaces: u64,
    /// Seconds of each window of the swap measurements.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=600))]
    swap_secs: u64,
    /// Calm and disturbed windows of each swap measurement, alternated (calm, disturbed,
    /// disturbed, calm, ...) so that drift in the machine's speed cancels out.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=100))]
    swap_rounds: u64,
    /// Workspaces each delta of the "large delta" measurements changes (100 of the default
    /// 1,000 is 10,000 tokens).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    large_delta_workspaces: u64,
    /// The `sluice` binary [default: `sluice` next to this executable].
    #[arg(long)]
    sluice_bin: Option<PathBuf>,
}

pub(crate) const SECRET: &str = "bench-cluster-secret";

/// A child process, killed when dropped (the cluster bench's too).
pub(crate) struct Process(pub(crate) Child);

impl Process {
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// Starts `count` data-plane nodes following the control plane at `api` (one HTTP thread
/// each, MQTT off, a data dir and log of their own under `dir`), each waited for; the cluster
/// bench's nodes too.
pub(crate) fn start_nodes(
    bin: &Path,
    dir: &Path,
    count: usize,
    api: &str,
) -> Result<Vec<(Process, u16)>> {
    let mut nodes = Vec::new();
    for n in 0..count {
        let port = free_port()?;
        let process = spawn(
            bin,
            &[
                "dataplane".into(),
                "--data-dir".into(),
                dir.join(format!("node{n}")).display().to_string(),
                "--http-addr".into(),
                format!("127.0.0.1:{port}"),
                "--mqtt-addr".into(),
                "off".into(),
                "--http-threads".into(),
                "1".into(),
                "--control-plane".into(),
                api.to_owned(),
                "--cluster-secret".into(),
                SECRET.into(),
                "--node-id".into(),
                format!("bench-{n}"),
            ],
            &dir.join(format!("node{n}.log")),
            &format!("http://127.0.0.1:{port}/healthz"),
        )?;
        nodes.push((process, port));
    }
    Ok(nodes)
}

/// Starts `bin` with its stderr in `log` and waits until `health` answers 200.
pub(crate) fn spawn(bin: &Path, args: &[String], log: &Path, health: &str) -> Result<Process> {
    let log_file = std::fs::File::create(log)?;
    let child = Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let process = Process(child);
    let agent = agent();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if agent.get(health).call().is_ok_and(|r| r.status() == 200) {
            return Ok(process);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{health} did not answer 200 within 30 s; see {}",
        log.display()
    )
}

fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let request = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(body.map(|b| b.to_string()).unwrap_or_default())?;
    let mut response = agent.run(request)?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

pub fn run(args: PropagationArgs) -> Result<()> {
    let bin = match &args.sluice_bin {
        Some(bin) => bin.clone(),
        None => sluice::default_binary()?,
    };
    sluice::check_binary(&bin)?;
    revocations(&bin, &args)?;
    let snapshot = big_snapshot(&args);
    snapshot_costs(&snapshot, args.large_delta_workspaces as usize)?;
    ingest_during_swaps(&bin, &args, snapshot.clone())?;
    ingest_during_deltas(&bin, &args, snapshot.clone(), 1)?;
    ingest_during_deltas(&bin, &args, snapshot, args.large_delta_workspaces as usize)?;
    Ok(())
}

fn revocations(bin: &Path, args: &PropagationArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let api_port = free_port()?;
    let api = format!("http://127.0.0.1:{api_port}");
    let cp_dir = dir.path().join("cp");
    let _control = spawn(
        bin,
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
    let nodes = start_nodes(bin, dir.path(), args.nodes as usize, &api)?;
    let agent = agent();
    let operator: Value = serde_json::from_str(&std::fs::read_to_string(
        cp_dir.join("initial-operator.json"),
    )?)?;
    let (_, session) = call(
        &agent,
        "POST",
        &format!("{api}/api/v1/sessions"),
        "",
        Some(json!({"email": operator["email"], "password": operator["password"]})),
    )?;
    let session = session["token"].as_str().context("no session")?.to_owned();
    call(
        &agent,
        "POST",
        &format!("{api}/api/v1/workspaces"),
        &session,
        Some(json!({"name": "Bench", "slug": "bench"})),
    )?;
    call(
        &agent,
        "POST",
        &format!("{api}/api/v1/workspaces/bench/sources"),
        &session,
        Some(json!({"slug": "telemetry"})),
    )?;

    let ports: Vec<u16> = nodes.iter().map(|(_, p)| *p).collect();
    let status_on = |agent: &ureq::Agent, port: u16, secret: &str| -> u16 {
        agent
            .post(format!("http://127.0.0.1:{port}/v1/ingest/bench/telemetry"))
            .header("authorization", format!("Bearer {secret}"))
            .header("content-type", "application/json")
            .send(b"{\"t\":1}".as_slice())
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    eprintln!(
        "propagation: {} revocations, {} nodes (control plane and nodes on loopback)",
        args.revocations, args.nodes
    );
    let mut samples: Vec<Duration> = Vec::new();
    for i in 0..args.revocations {
        let (status, token) = call(
            &agent,
            "POST",
            &format!("{api}/api/v1/workspaces/bench/tokens"),
            &session,
            Some(json!({"name": format!("t{i}"), "scopes": ["ingest"]})),
        )?;
        if status != 201 {
            bail!("creating a token answered {status}: {token}");
        }
        let secret = token["secret"].as_str().context("secret")?.to_owned();
        let id = token["id"].as_str().context("id")?.to_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ports.iter().all(|p| status_on(&agent, *p, &secret) == 202) {
            if Instant::now() > deadline {
                bail!("a new token did not reach every node within 10 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let (status, _) = call(
            &agent,
            "DELETE",
            &format!("{api}/api/v1/workspaces/bench/tokens/{id}"),
            &session,
            None,
        )?;
        if status != 204 {
            bail!("revoking answered {status}");
        }
        let revoked_at = Instant::now();
        let pollers: Vec<_> = ports
            .iter()
            .map(|port| {
                let (port, secret) = (*port, secret.clone());
                std::thread::spawn(move || {
                    let agent = self::agent();
                    loop {
                        if status_on(&agent, port, &secret) == 401 {
                            return Some(revoked_at.elapsed());
                        }
                        if revoked_at.elapsed() > Duration::from_secs(10) {
                            return None;
                        }
                    }
                })
            })
            .collect();
        for poller in pollers {
            match poller.join() {
                Ok(Some(elapsed)) => samples.push(elapsed),
                _ => bail!("a revocation did not reach a node within 10 s"),
            }
        }
    }
    samples.sort();
    println!(
        "revocation to first refused request, {} samples ({} revocations x {} nodes):",
        samples.len(),
        args.revocations,
        args.nodes
    );
    println!(
        "  p50 {}   p99 {}   max {}   (target: p99 under 100 ms)",
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.99)),
        ms(samples.last().copied().unwrap_or_default())
    );
    Ok(())
}

/// The load generator's token, in the big snapshot's first workspace.
const LOAD_TOKEN: &str = "sluice_benchbenchbenchbenchbenchbenchbenchbench";

fn big_snapshot(args: &PropagationArgs) -> ConfigSnapshot {
    let workspaces = args.workspaces as usize;
    let per = (args.tokens as usize).div_ceil(workspaces);
    let mut n = 0u64;
    let mut snapshot = ConfigSnapshot {
        version: 1,
        workspaces: (0..workspaces)
            .map(|w| WorkspaceConfig {
                id: Uuid::now_v7(),
                slug: format!("ws-{w}"),
                name: format!("Workspace {w}"),
                enabled: true,
                events_per_second_max: None,
                cors_origins: Vec::new(),
                tag_rules: Vec::new(),
                outputs: Vec::new(),
                export_endpoints: Vec::new(),
                webhooks: Vec::new(),
                sources: vec![SourceConfig {
                    id: Uuid::now_v7(),
                    slug: "telemetry".into(),
                    name: String::new(),
                    protocols: Protocol::all(),
                    schema: None,
                    on_invalid: Default::default(),
                    keep_payload: true,
                }],
                tokens: (0..per)
                    .map(|_| {
                        n += 1;
                        TokenConfig {
                            id: Uuid::now_v7(),
                            name: String::new(),
                            sha256: format!("{n:064x}"),
                            scopes: vec![Scope::Ingest],
                            sources: None,
                            device_id: None,
                            expires_at: None,
                            endpoints: None,
                        }
                    })
                    .collect(),
            })
            .collect(),
    };
    if let Some(first) = snapshot
        .workspaces
        .first_mut()
        .and_then(|w| w.tokens.first_mut())
    {
        first.sha256 = sluice_config::token::hash_hex(LOAD_TOKEN);
    }
    snapshot
}

fn snapshot_costs(snapshot: &ConfigSnapshot, large: usize) -> Result<()> {
    let workspaces = snapshot.workspaces.len();
    let n: usize = snapshot.workspaces.iter().map(|w| w.tokens.len()).sum();
    let mut json_len = 0;
    let serialise =
        timed(&mut || json_len = serde_json::to_vec(&snapshot).map(|v| v.len()).unwrap_or(0));
    let mut hash = String::new();
    let hashing = timed(&mut || hash = snapshot.content_hash());
    let validating = timed(&mut || {
        let _ = snapshot.validate();
    });
    let access = Arc::new(Access::new(
        &ConfigSnapshot::empty(),
        RateDefaults {
            events_per_second: 1_000_000,
        },
    ));
    let mut applied = Ok(());
    let applying = timed(&mut || applied = access.apply(snapshot));
    applied?;
    let mut state = None;
    let indexing = timed(&mut || state = ConfigState::new(snapshot.clone()).ok());
    let mut state = state.context("the benchmark snapshot is invalid")?;
    let dir = tempfile::tempdir()?;
    let cache = ConfigCache::open(&dir.path().join("cache.redb"))?;
    let caching = timed(&mut || {
        let _ = cache.store(snapshot);
    });
    println!(
        "snapshot of {} tokens in {} workspaces: {:.1} MB of JSON",
        n,
        workspaces,
        json_len as f64 / 1e6
    );
    println!(
        "  serialise {}   content hash {}   validate {}   index {}   build the access table {}   cache in redb {}",
        ms(serialise),
        ms(hashing),
        ms(validating),
        ms(indexing),
        ms(applying),
        ms(caching)
    );
    let mut current = snapshot.clone();
    for touched in [1, large] {
        let next = next_version(&current, touched);
        let mut delta = None;
        let diffing = timed(&mut || delta = Some(current.delta_to(&next)));
        let delta = delta.context("no delta")?;
        let delta_len = serde_json::to_vec(&delta).map(|v| v.len()).unwrap_or(0);
        let mut change = None;
        let to_state = timed(&mut || change = Some(state.apply(&delta)));
        let change = change.context("no change")??;
        let mut swapped = Ok(());
        let to_access = timed(&mut || swapped = access.apply_change(&change));
        swapped?;
        let mut stored = Ok(());
        let to_cache = timed(&mut || stored = cache.store_change(&change));
        stored?;
        println!(
            "  delta of {}: {delta_len} bytes, diff (control plane) {}; node: validate, apply and hash {}, access table {}, redb cache {}",
            describe(&current, touched),
            ms(diffing),
            ms(to_state),
            ms(to_access),
            ms(to_cache)
        );
        current = next;
    }
    Ok(())
}

fn timed(f: &mut dyn FnMut()) -> Duration {
    let started = Instant::now();
    f();
    started.elapsed()
}

/// A node for the swap measurements (one HTTP thread, no rate limit) with `config` telling it
/// where its configuration comes from.
fn spawn_loaded_node(bin: &Path, dir: &Path, port: u16, config: &[String]) -> Result<Process> {
    let mut args: Vec<String> = vec![
        "dataplane".into(),
        "--data-dir".into(),
        dir.join("node").display().to_string(),
        "--http-addr".into(),
        format!("127.0.0.1:{port}"),
        "--mqtt-addr".into(),
        "off".into(),
        "--http-threads".into(),
        "1".into(),
        "--workspace-events-per-second".into(),
        "1000000000".into(),
    ];
    args.extend_from_slice(config);
    spawn(
        bin,
        &args,
        &dir.join("node.log"),
        &format!("http://127.0.0.1:{port}/healthz"),
    )
}

fn write_snapshot(path: &Path, snapshot: &ConfigSnapshot) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(snapshot)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn ingest_during_swaps(bin: &Path, args: &PropagationArgs, snapshot: ConfigSnapshot) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("snapshot.json");
    write_snapshot(&file, &snapshot)?;
    let port = free_port()?;
    let node = spawn_loaded_node(
        bin,
        dir.path(),
        port,
        &["--config-snapshot".into(), file.display().to_string()],
    )?;
    let load = Load::new(
        node.0.id(),
        port,
        format!("/v1/ingest/{}/telemetry", snapshot.workspaces[0].slug),
        args.swap_secs,
    )?;
    eprintln!(
        "swap: {} windows of {} s of single-event POSTs, alternately without and with a full-snapshot swap every 500 ms",
        args.swap_rounds * 2,
        args.swap_secs
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The versions are serialised before measuring, so that the load generator's process
    // spends only a file write per swap, not 35 ms of JSON.
    let swaps_max = disturbed_secs(args) as usize * 2 + 4;
    let versions: Vec<(u64, Vec<u8>)> = {
        let mut snapshot = snapshot.clone();
        (0..swaps_max)
            .map(|_| {
                snapshot = next_version(&snapshot, 1);
                (
                    snapshot.version,
                    serde_json::to_vec(&snapshot).unwrap_or_default(),
                )
            })
            .collect()
    };
    let swapper = {
        let (stop, swapping, file) = (stop.clone(), swapping.clone(), file.clone());
        std::thread::spawn(move || {
            let (mut swaps, mut last_version) = (0u64, 0u64);
            let mut versions = versions.into_iter();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                if !swapping.load(std::sync::atomic::Ordering::Relaxed) {
                    continue;
                }
                let Some((version, bytes)) = versions.next() else {
                    break;
                };
                let tmp = file.with_extension("tmp");
                if std::fs::write(&tmp, &bytes)
                    .and_then(|()| std::fs::rename(&tmp, &file))
                    .is_ok()
                {
                    swaps += 1;
                    last_version = version;
                }
            }
            (swaps, last_version)
        })
    };
    let measured = load.alternate(args.swap_rounds, &|on| {
        swapping.store(on, std::sync::atomic::Ordering::Relaxed)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (swaps, last_version) = swapper
        .join()
        .map_err(|_| anyhow::anyhow!("swapper panicked"))?;
    let (calm, swapped) = measured?;
    println!(
        "ingest while swapping a {}-token snapshot ({swaps} versions written, node at version {} of {last_version}):",
        snapshot.workspaces.iter().map(|w| w.tokens.len()).sum::<usize>(),
        load.node_version()
    );
    print_pair("swaps", &calm, &swapped);
    drop(node);
    Ok(())
}

/// Seconds of disturbed windows in one alternated measurement, warm-ups included.
fn disturbed_secs(args: &PropagationArgs) -> u64 {
    args.swap_rounds * (args.swap_secs + 1)
}

/// Lines a scripted control plane sends: the snapshot, then deltas.
struct Script {
    snapshot: Vec<u8>,
    deltas: Vec<(u64, String, Vec<u8>)>,
}

/// `count` deltas, each changing the last `touched` workspaces ([`next_version`]).
fn script(snapshot: &ConfigSnapshot, count: usize, touched: usize) -> Script {
    let line = |value: Value| {
        let mut bytes = value.to_string().into_bytes();
        bytes.push(b'\n');
        bytes
    };
    let first =
        line(json!({"type": "snapshot", "hash": snapshot.content_hash(), "snapshot": snapshot}));
    let mut current = snapshot.clone();
    let deltas = (0..count)
        .map(|_| {
            let next = next_version(&current, touched);
            let delta = current.delta_to(&next);
            let bytes = line(json!({"type": "delta", "delta": delta}));
            current = next;
            (current.version, delta.hash, bytes)
        })
        .collect();
    Script {
        snapshot: first,
        deltas,
    }
}

/// What [`next_version`] changes, in words.
fn describe(snapshot: &ConfigSnapshot, touched: usize) -> String {
    let tokens: usize = snapshot.workspaces
        [1.max(snapshot.workspaces.len().saturating_sub(touched))..]
        .iter()
        .map(|w| w.tokens.len())
        .sum();
    if touched > 1 {
        format!("{touched} workspaces flipped enabled/disabled, all their {tokens} tokens replaced")
    } else {
        format!("1 workspace flipped enabled/disabled ({tokens} tokens kept)")
    }
}

/// The next version of `snapshot` with its last `touched` workspaces changed (never the
/// first: the load generator's token is there): one workspace is disabled or enabled again,
/// as when a trial ends; more have every token replaced as well, the largest change a delta
/// of that many workspaces can carry.
fn next_version(snapshot: &ConfigSnapshot, touched: usize) -> ConfigSnapshot {
    let mut next = snapshot.clone();
    next.version += 1;
    let len = next.workspaces.len();
    let version = next.version;
    for ws in &mut next.workspaces[1.max(len.saturating_sub(touched))..] {
        ws.enabled = !ws.enabled;
        if touched > 1 {
            for (i, token) in ws.tokens.iter_mut().enumerate() {
                token.id = Uuid::now_v7();
                token.sha256 = sluice_config::token::hash_hex(&format!("{version}-{}-{i}", ws.id));
            }
        }
    }
    next
}

/// Serves one node: the snapshot, heartbeats, and deltas while `flowing` is set; answers
/// acknowledgements with 204.
fn scripted_control_plane(
    listener: std::net::TcpListener,
    script: Arc<Script>,
    base: (u64, String),
    flowing: Arc<std::sync::atomic::AtomicBool>,
    sent: Arc<std::sync::atomic::AtomicU64>,
) {
    use std::io::{BufRead, BufReader, Read, Write};
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (script, base, flowing, sent) =
                (script.clone(), base.clone(), flowing.clone(), sent.clone());
            std::thread::spawn(move || {
                let Ok(reader) = stream.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(reader);
                let mut stream = stream;
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    return;
                }
                let mut length = 0usize;
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = header.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                }
                if first.starts_with("POST") {
                    let mut body = vec![0; length];
                    let _ = reader.read_exact(&mut body);
                    let _ =
                        stream.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
                    return;
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n");
                if stream.write_all(&script.snapshot).is_err() {
                    return;
                }
                let (mut version, mut hash) = base;
                let mut deltas = script.deltas.iter();
                loop {
                    std::thread::sleep(Duration::from_millis(500));
                    let line = if flowing.load(std::sync::atomic::Ordering::Relaxed) {
                        match deltas.next() {
                            Some((v, h, bytes)) => {
                                (version, hash) = (*v, h.clone());
                                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                bytes.clone()
                            }
                            None => break,
                        }
                    } else {
                        let mut bytes =
                            json!({"type": "heartbeat", "version": version, "hash": hash})
                                .to_string()
                                .into_bytes();
                        bytes.push(b'\n');
                        bytes
                    };
                    if stream.write_all(&line).is_err() {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_secs(30));
            });
        }
    });
}

fn ingest_during_deltas(
    bin: &Path,
    args: &PropagationArgs,
    snapshot: ConfigSnapshot,
    touched: usize,
) -> Result<()> {
    let deltas_max = disturbed_secs(args) as usize * 2 + 4;
    let script = Arc::new(script(&snapshot, deltas_max, touched));
    let delta_bytes = script.deltas.first().map_or(0, |(_, _, bytes)| bytes.len());
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let cp_port = listener.local_addr()?.port();
    let flowing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    scripted_control_plane(
        listener,
        script,
        (snapshot.version, snapshot.content_hash()),
        flowing.clone(),
        sent.clone(),
    );
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let node = spawn_loaded_node(
        bin,
        dir.path(),
        port,
        &[
            "--control-plane".into(),
            format!("http://127.0.0.1:{cp_port}"),
            "--cluster-secret".into(),
            SECRET.into(),
        ],
    )?;
    let probe = agent();
    let path = format!("/v1/ingest/{}/telemetry", snapshot.workspaces[0].slug);
    let deadline = Instant::now() + Duration::from_secs(30);
    while probe
        .post(format!("http://127.0.0.1:{port}{path}"))
        .header("authorization", format!("Bearer {LOAD_TOKEN}"))
        .header("content-type", "application/json")
        .send(b"{}".as_slice())
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 202
    {
        if Instant::now() > deadline {
            bail!("the node did not take the streamed snapshot within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let load = Load::new(node.0.id(), port, path, args.swap_secs)?;
    eprintln!(
        "stream: {} windows of {} s, alternately without and with a {touched}-workspace delta every 500 ms",
        args.swap_rounds * 2,
        args.swap_secs
    );
    let (calm, during) = load.alternate(args.swap_rounds, &|on| {
        flowing.store(on, std::sync::atomic::Ordering::Relaxed)
    })?;
    // The last delta may still be applying.
    std::thread::sleep(Duration::from_secs(1));
    println!(
        "ingest while streamed deltas of {} ({delta_bytes} bytes) arrive ({} deltas sent, node at version {}):",
        describe(&snapshot, touched),
        sent.load(std::sync::atomic::Ordering::Relaxed),
        load.node_version()
    );
    print_pair("deltas", &calm, &during);
    drop(node);
    Ok(())
}

/// Single-event load from the `http` load generator against one node, measured in windows.
struct Load {
    runtime: tokio::runtime::Runtime,
    target: Arc<crate::loadgen::Target>,
    plan: crate::loadgen::Plan,
    pid: u32,
    port: u16,
}

impl Load {
    fn new(pid: u32, port: u16, path: String, secs: u64) -> Result<Load> {
        Ok(Load {
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?,
            target: Arc::new(crate::loadgen::Target {
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                paths: vec![path],
                authorization: Some(format!("Bearer {LOAD_TOKEN}")),
                content_type: "application/json",
                bodies: Arc::new(crate::payload::single_event_bodies(1024)),
                events_per_body: 1,
                expect_accepted: true,
            }),
            plan: crate::loadgen::Plan {
                connections: 32,
                warmup: Duration::from_millis(500),
                duration: Duration::from_secs(secs),
                request_timeout: Duration::from_secs(10),
            },
            pid,
            port,
        })
    }

    fn measure(&self) -> Result<crate::loadgen::Outcome> {
        self.runtime.block_on(crate::loadgen::run(
            self.target.clone(),
            self.plan,
            crate::loadgen::ServerProcess::Child(self.pid),
        ))
    }

    /// `rounds` calm and `rounds` disturbed windows (`disturb(true)` before a disturbed one,
    /// `disturb(false)` after), in the order calm, disturbed, disturbed, calm, ... so that a
    /// machine that speeds up or slows down over the run favours neither.
    fn alternate(
        &self,
        rounds: u64,
        disturb: &dyn Fn(bool),
    ) -> Result<(Vec<crate::loadgen::Outcome>, Vec<crate::loadgen::Outcome>)> {
        let (mut calm, mut disturbed) = (Vec::new(), Vec::new());
        for round in 0..rounds * 2 {
            let on = round % 4 == 1 || round % 4 == 2;
            disturb(on);
            let outcome = self.measure();
            disturb(false);
            if on {
                disturbed.push(outcome?);
            } else {
                calm.push(outcome?);
            }
        }
        Ok((calm, disturbed))
    }

    /// The configuration version the node serves, from its `/readyz`.
    fn node_version(&self) -> String {
        agent()
            .get(format!("http://127.0.0.1:{}/readyz", self.port))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["config_version"].as_u64())
            .map_or("?".into(), |v| v.to_string())
    }
}

/// Prints calm windows against disturbed ones.
fn print_pair(what: &str, calm: &[crate::loadgen::Outcome], disturbed: &[crate::loadgen::Outcome]) {
    let rate = |o: &[crate::loadgen::Outcome]| {
        let requests: u64 = o.iter().map(|o| o.requests).sum();
        let secs: f64 = o.iter().map(|o| o.window.as_secs_f64()).sum();
        requests as f64 / secs.max(1e-9)
    };
    let slowest = |o: &[crate::loadgen::Outcome]| {
        o.iter()
            .flat_map(|o| o.per_second.iter().copied())
            .min()
            .unwrap_or(0)
    };
    let errors = |o: &[crate::loadgen::Outcome]| o.iter().map(|o| o.error_count()).sum::<u64>();
    let windows = |o: &[crate::loadgen::Outcome]| {
        o.iter()
            .map(|o| format!("{:.0}", o.requests as f64 / o.window.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "  without {what} {:.0} req/s (slowest second {}), with {what} {:.0} req/s (slowest second {}), ratio {:.2}, errors {} / {}",
        rate(calm),
        slowest(calm),
        rate(disturbed),
        slowest(disturbed),
        rate(disturbed) / rate(calm).max(1.0),
        errors(calm),
        errors(disturbed)
    );
    println!(
        "    windows without: {}; with: {}",
        windows(calm),
        windows(disturbed)
    );
}
