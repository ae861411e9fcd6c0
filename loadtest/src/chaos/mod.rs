//! Chaos rounds: HTTP and MQTT QoS 1 load against a `sluice up` node that is killed with
//! SIGKILL once per round and started again, then a count of what was acknowledged against
//! what the lake holds. Nothing acknowledged may be lost and nothing may be stored twice.
//!
//! Each round kills the node one way, dealt from a shuffled deck of six so that every six
//! rounds use each once: at a random moment (the driver's own `kill -9`), or at one of the
//! node's named crash points (`sluice_storage::chaos`: during Parquet encoding, between an
//! upload and its commit-log entry, between that entry and its watermark, during WAL
//! rotation, during a configuration swap), armed with
//! `SLUICE_CHAOS=<point>:<n>` so that the node kills itself on the point's `n`th hit. Random
//! kills find what nobody thought of; crash points make sure the narrow windows are hit every
//! run. Meanwhile the control plane mints and revokes tokens so that the node swaps its
//! configuration several times a second.
//!
//! Everything random (the deck, `n`, the kill moments, batch sizes) comes from one seed, printed
//! at the start and in the report: `--seed` replays the same rounds. Thread timing is not
//! replayed, so a replay hits the same points but not necessarily the same bytes.

mod churn;
mod http;
mod lake;
mod mqtt;
mod node;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use node::{End, Node, Ports};

/// The node's crash points (`sluice_storage::chaos::POINTS`), each with the highest `n` a
/// round may arm it with: enough spread that the kill lands sometimes while the node recovers
/// the last life's WAL and sometimes well into new load, small enough that the point fires
/// within a second or two (with the default node flags a file is cut every 150 ms per key and a
/// segment fills in tens of ms; the churn changes the configuration about every 200 ms).
pub const POINTS: [(&str, u64); 5] = [
    ("parquet-encode", 8),
    ("upload", 8),
    ("commit-entry", 8),
    ("wal-rotate", 20),
    ("config-swap", 4),
];

/// The line a node writes to stderr as a crash point kills it (`sluice_storage::chaos::KILL_LINE`,
/// repeated so that the load tester does not build the storage crate; `tests/chaos.rs` checks
/// that the two agree).
pub const KILL_LINE: &str = "sluice chaos: SIGKILL at";

/// What a chaos run does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The `sluice` binary, built with `--features chaos`.
    pub sluice: PathBuf,
    /// A new or empty directory for the node's data dir (`data/`) and log (`sluice.log`).
    pub dir: PathBuf,
    pub rounds: u32,
    pub seed: u64,
    /// HTTP clients posting back to back.
    pub http_clients: u64,
    /// MQTT QoS 1 devices.
    pub mqtt_devices: u64,
    /// A timed kill lands this many ms after the node is up, at random in the range.
    pub kill_after_ms: (u64, u64),
    /// A crash-point round waits this long for its point; then the driver kills the node.
    pub point_timeout: Duration,
    /// After the last round, the load runs this long against the node started once more.
    pub settle: Duration,
    /// `sluice up` flags besides the addresses and the data dir.
    pub node_args: Vec<String>,
    /// One line per round on stderr.
    pub progress: bool,
}

impl Plan {
    pub fn new(sluice: PathBuf, dir: PathBuf, rounds: u32, seed: u64) -> Plan {
        Plan {
            sluice,
            dir,
            rounds,
            seed,
            http_clients: 2,
            mqtt_devices: 2,
            kill_after_ms: (200, 1500),
            point_timeout: Duration::from_secs(20),
            settle: Duration::from_millis(700),
            // Small segments and quick, small files: rotation, encoding and upload happen
            // many times a second, so a kill at any moment is likely inside one of them.
            node_args: [
                "--batch-max-age-ms",
                "150",
                "--batch-max-rows",
                "500",
                "--wal-segment-bytes",
                "32768",
                "--shutdown-grace-ms",
                "60000",
            ]
            .map(String::from)
            .to_vec(),
            progress: false,
        }
    }
}

/// How one round kills the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The driver's SIGKILL, this many ms after the node is up.
    Timer { after_ms: u64 },
    /// The node's own SIGKILL on the `hit`th time it reaches `point`.
    Point { point: &'static str, hit: u64 },
}

impl Mode {
    /// `timer` or the point's name.
    pub fn kind(&self) -> &'static str {
        match self {
            Mode::Timer { .. } => "timer",
            Mode::Point { point, .. } => point,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Timer { after_ms } => write!(f, "timer:{after_ms}ms"),
            Mode::Point { point, hit } => write!(f, "{point}:{hit}"),
        }
    }
}

/// The rounds a seed gives: modes dealt from a deck of the six (the timer and each crash
/// point), shuffled anew every six rounds.
pub fn schedule(seed: u64, rounds: u32, kill_after_ms: (u64, u64)) -> Vec<Mode> {
    let mut rng = SplitMix::new(seed);
    let mut modes = Vec::with_capacity(rounds as usize);
    let mut deck: Vec<Option<usize>> = Vec::new();
    while modes.len() < rounds as usize {
        if deck.is_empty() {
            deck = std::iter::once(None)
                .chain((0..POINTS.len()).map(Some))
                .collect();
            for i in (1..deck.len()).rev() {
                deck.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
            }
        }
        let (lo, hi) = kill_after_ms;
        modes.push(match deck.pop().flatten() {
            None => Mode::Timer {
                after_ms: lo + rng.next_u64() % (hi.saturating_sub(lo) + 1),
            },
            Some(i) => Mode::Point {
                point: POINTS[i].0,
                hit: 1 + rng.next_u64() % POINTS[i].1,
            },
        });
    }
    modes
}

/// One round, as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub round: u32,
    /// What the round armed: `timer:830ms` or `<point>:<n>`.
    pub mode: String,
    /// `timer` or the crash point's name.
    pub kind: &'static str,
    /// What killed the node: `driver` or the crash point's line (`upload (hit 3)`).
    pub killed_by: String,
    /// Whether the armed crash point fired (always true for a timer round).
    pub fired: bool,
    /// The point fired while the node was starting (recovering the last life's WAL).
    pub during_start: bool,
    /// How long the node lived, ms.
    pub alive_ms: u64,
    /// Events acknowledged so far, over both protocols.
    pub acknowledged_so_far: u64,
}

/// The outcome of a chaos run.
#[derive(Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub rounds: Vec<Round>,
    /// Rounds per kill mode whose kill happened as armed (`timer`, and each point that fired).
    pub fired: BTreeMap<String, u64>,
    /// Crash-point rounds whose point did not fire in time (the driver killed the node).
    pub not_fired: u64,
    /// Events acknowledged: HTTP `202`, MQTT PUBACK below 0x80.
    pub acknowledged: u64,
    pub acknowledged_http: u64,
    pub acknowledged_mqtt: u64,
    /// Rows in the lake carrying one of the run's keys.
    pub stored: u64,
    /// Acknowledged, but not in the lake.
    pub lost: u64,
    /// Keys stored more than once.
    pub duplicated: u64,
    /// In the lake but never acknowledged (in flight at a kill; allowed).
    pub stored_unacknowledged: u64,
    /// Rows without a key of this run (must be 0).
    pub foreign: u64,
    /// Of `stored`, rows in quarantine files (events the schema of the run's second half
    /// refused).
    pub quarantined: u64,
    /// Whether the control plane took that schema.
    pub schema_set: bool,
    pub parquet_files: u64,
    /// Parquet files no commit-log entry names (export endpoints and webhooks would miss
    /// them; must be 0), and entries naming no file (must be 0).
    pub uncommitted_files: u64,
    pub dangling_entries: u64,
    /// Configuration versions the churn made.
    pub config_changes: u64,
    /// WAL segments left after the final clean stop (the active one at most).
    pub wal_segments_left: u64,
    pub elapsed_secs: f64,
    /// A few lost keys, for the log.
    pub lost_examples: Vec<u64>,
    /// A few duplicated keys.
    pub duplicated_examples: Vec<u64>,
}

impl Report {
    /// Nothing acknowledged lost, nothing duplicated, nothing unexplained in the lake.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.foreign == 0
            && self.uncommitted_files == 0
            && self.dangling_entries == 0
    }

    /// Crash points armed in some round that never fired in any: a `sluice` built without
    /// the `chaos` feature, or load too light to reach them.
    pub fn points_never_fired(&self) -> Vec<&'static str> {
        let armed: HashSet<&'static str> = self
            .rounds
            .iter()
            .map(|r| r.kind)
            .filter(|k| *k != "timer")
            .collect();
        let mut never: Vec<&'static str> = armed
            .into_iter()
            .filter(|k| !self.fired.contains_key(*k))
            .collect();
        never.sort_unstable();
        never
    }

    /// The summary a person reads.
    pub fn text(&self) -> String {
        let fired: Vec<String> = self.fired.iter().map(|(k, n)| format!("{k} {n}")).collect();
        format!(
            "chaos: {} rounds, seed {}: acknowledged {} (HTTP {}, MQTT {}), stored {} ({} in quarantine{}), lost {}, duplicated {}; \
             stored unacknowledged {}, foreign {}; {} Parquet files ({} named by no commit entry, {} entries naming no file), \
             {} config changes, {} WAL segments left; \
             kills: {}{}; {:.1} s{}",
            self.rounds.len(),
            self.seed,
            self.acknowledged,
            self.acknowledged_http,
            self.acknowledged_mqtt,
            self.stored,
            self.quarantined,
            if self.schema_set { "" } else { ", schema never set" },
            self.lost,
            self.duplicated,
            self.stored_unacknowledged,
            self.foreign,
            self.parquet_files,
            self.uncommitted_files,
            self.dangling_entries,
            self.config_changes,
            self.wal_segments_left,
            fired.join(", "),
            if self.not_fired > 0 {
                format!(", {} crash-point rounds ended by the driver", self.not_fired)
            } else {
                String::new()
            },
            self.elapsed_secs,
            if self.lost > 0 || self.duplicated > 0 {
                format!(
                    "\nlost e.g. {:?}; duplicated e.g. {:?}; replay with --seed {}",
                    self.lost_examples, self.duplicated_examples, self.seed
                )
            } else {
                String::new()
            }
        )
    }
}

/// The clients' shared state: the stop flag and running counts.
#[derive(Debug, Default)]
pub(crate) struct Load {
    stop: AtomicBool,
    http_acked: AtomicU64,
    http_refused: AtomicU64,
    mqtt_acked: AtomicU64,
    mqtt_refused: AtomicU64,
    mqtt_sessions_lost: AtomicU64,
    config_changes: AtomicU64,
    /// Set by the driver halfway through the rounds: the churn gives the source a schema.
    shape: AtomicBool,
    /// Set by the churn once the control plane took the schema.
    shaped: AtomicBool,
}

impl Load {
    fn acknowledged(&self) -> u64 {
        self.http_acked.load(Ordering::Relaxed) + self.mqtt_acked.load(Ordering::Relaxed)
    }
}

/// Stops the clients however the run ends.
struct StopOnDrop(Arc<Load>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

/// An event key: the client's number in the top 24 bits, its sequence number below.
pub(crate) fn key(client: u64, seq: u64) -> u64 {
    (client << 40) | (seq & ((1 << 40) - 1))
}

/// SplitMix64: a few lines, the same numbers from a seed in every build (rand's generators do
/// not promise that across versions), which `--seed` relies on.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A seed from the clock, for runs not given one.
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    SplitMix::new(nanos ^ u64::from(std::process::id())).next_u64()
}

/// Runs the rounds and counts. `Err` only when the run could not be carried out (the node did
/// not start, the lake could not be read); a lost or duplicated event is a failed
/// [`Report::passed`].
pub fn run(plan: &Plan) -> Result<Report> {
    let started = Instant::now();
    if std::fs::read_dir(&plan.dir).is_ok_and(|mut d| d.next().is_some()) {
        bail!(
            "{} is not empty; a chaos run needs a fresh directory (remove it or pass another --dir)",
            plan.dir.display()
        );
    }
    std::fs::create_dir_all(&plan.dir)
        .with_context(|| format!("creating {}", plan.dir.display()))?;
    let modes = schedule(plan.seed, plan.rounds, plan.kill_after_ms);
    // Ports and the clients' randomness come from the seed too, but from their own streams so
    // that the schedule of a seed does not depend on them.
    let mut rng = SplitMix::new(plan.seed ^ 0x5EED_C1AE_0000_0001);
    let ports = Ports::pick(&mut rng)?;
    let mut node = Node::new(
        &plan.sluice,
        &plan.dir,
        ports.clone(),
        plan.node_args.clone(),
    );
    let log = |line: String| {
        if plan.progress {
            eprintln!("{line}");
        }
    };
    log(format!(
        "chaos: seed {} (replay with --seed {}), {} rounds, node log {}",
        plan.seed,
        plan.seed,
        plan.rounds,
        node.log_path().display()
    ));

    let load = Arc::new(Load::default());
    let _stop = StopOnDrop(load.clone());
    let mut clients: Vec<std::thread::JoinHandle<Vec<u64>>> = Vec::new();
    let mut http_threads = 0;
    let mut churn_thread = None;
    let mut rounds = Vec::new();
    let mut fired: BTreeMap<String, u64> = BTreeMap::new();
    let mut not_fired = 0;

    for (i, mode) in modes.iter().enumerate() {
        let round = i as u32 + 1;
        // The first half of the rounds kills a node whose source takes any JSON; the second
        // half one whose source has a schema with a quarantine (shaped WAL records, typed
        // files, quarantine files).
        if i == modes.len() / 2 {
            load.shape.store(true, Ordering::Relaxed);
        }
        let arm = match mode {
            Mode::Timer { .. } => None,
            Mode::Point { .. } => Some(mode.to_string()),
        };
        node.spawn(arm.as_deref())?;
        let born = Instant::now();
        let mut during_start = false;
        let end = match node.wait_healthy()? {
            Some(end) => {
                during_start = true;
                end
            }
            None => {
                if clients.is_empty() {
                    // The first life wrote bootstrap.json: its token and URL feed the clients.
                    let boot = bootstrap(&node)?;
                    for c in 0..plan.http_clients {
                        let (url, token, load) =
                            (boot.http_url.clone(), boot.token.clone(), load.clone());
                        let seed = rng.next_u64();
                        clients.push(spawn(format!("chaos-http-{c}"), move || {
                            http::client(c, url, token, load, seed)
                        })?);
                    }
                    http_threads = clients.len();
                    for d in 0..plan.mqtt_devices {
                        let dev = mqtt::Device {
                            index: 1000 + d,
                            addr: SocketAddr::from(([127, 0, 0, 1], ports.mqtt)),
                            workspace: boot.workspace.clone(),
                            token: boot.token.clone(),
                            topic: format!("ingest/{}", boot.source),
                        };
                        let (load, seed) = (load.clone(), rng.next_u64());
                        clients.push(spawn(format!("chaos-mqtt-{d}"), move || {
                            mqtt::device(dev, load, seed)
                        })?);
                    }
                    let churn = churn::Churn {
                        api_base: node.api_base(),
                        workspace: boot.workspace.clone(),
                        source: boot.source.clone(),
                        operator_file: node.data_dir().join("initial-operator.json"),
                    };
                    let load = load.clone();
                    churn_thread = Some(
                        std::thread::Builder::new()
                            .name("chaos-churn".into())
                            .spawn(move || churn::run(churn, load))
                            .context("starting the churn thread")?,
                    );
                }
                match mode {
                    Mode::Timer { after_ms } => {
                        match node.wait_end(Duration::from_millis(*after_ms))? {
                            Some(end) => end,
                            None => node.kill9(),
                        }
                    }
                    Mode::Point { .. } => match node.wait_end(plan.point_timeout)? {
                        Some(end) => end,
                        None => node.kill9(),
                    },
                }
            }
        };
        let (killed_by, ok) = match end {
            End::CrashPoint(line) => {
                let kind = line.split_whitespace().next().unwrap_or_default().to_owned();
                let ok = kind == mode.kind();
                *fired.entry(kind).or_default() += 1;
                (line, ok)
            }
            End::Killed => {
                if matches!(mode, Mode::Timer { .. }) {
                    *fired.entry("timer".into()).or_default() += 1;
                } else {
                    not_fired += 1;
                }
                ("driver".to_owned(), matches!(mode, Mode::Timer { .. }))
            }
            End::Exited(status) => bail!(
                "round {round} ({mode}): sluice exited by itself ({status}) instead of being killed; see {}",
                node.log_path().display()
            ),
        };
        let r = Round {
            round,
            mode: mode.to_string(),
            kind: mode.kind(),
            killed_by,
            fired: ok,
            during_start,
            alive_ms: born.elapsed().as_millis() as u64,
            acknowledged_so_far: load.acknowledged(),
        };
        log(format!(
            "round {}/{}: {} -> killed by {}{} after {} ms; acknowledged so far {}",
            r.round,
            plan.rounds,
            r.mode,
            r.killed_by,
            if r.during_start { " during start" } else { "" },
            r.alive_ms,
            r.acknowledged_so_far
        ));
        rounds.push(r);
        // A moment down, as after a real crash: clients meet refused connections.
        std::thread::sleep(Duration::from_millis(rng.next_u64() % 200));
    }

    // Once more, unarmed: the node recovers the last life's WAL while the load goes on, then
    // stops cleanly and uploads everything it holds.
    node.spawn(None)?;
    if let Some(end) = node.wait_healthy()? {
        bail!(
            "sluice died during its final start ({end:?}); see {}",
            node.log_path().display()
        );
    }
    if clients.is_empty() {
        bail!("the node never came up long enough to start the load");
    }
    std::thread::sleep(plan.settle);
    load.stop.store(true, Ordering::Relaxed);
    let stopping = Instant::now();
    let mut acked_http = Vec::new();
    let mut acked_mqtt = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let keys = client
            .join()
            .map_err(|_| anyhow::anyhow!("a load client panicked"))?;
        if i < http_threads {
            acked_http.extend(keys);
        } else {
            acked_mqtt.extend(keys);
        }
    }
    if let Some(churn) = churn_thread {
        let _ = churn.join();
    }
    let clients_stopped = stopping.elapsed();
    let status = node.stop(Duration::from_secs(120))?;
    if !status.success() {
        bail!(
            "sluice exited with {status} on SIGTERM; see {}",
            node.log_path().display()
        );
    }
    log(format!(
        "chaos: clients stopped in {:.1} s, node stopped cleanly in {:.1} s; reading the lake",
        clients_stopped.as_secs_f64(),
        (stopping.elapsed() - clients_stopped).as_secs_f64()
    ));

    let stored = lake::read(&node.data_dir().join("lake"))?;
    let acked: HashSet<u64> = acked_http.iter().chain(&acked_mqtt).copied().collect();
    let lost_keys: Vec<u64> = acked
        .iter()
        .filter(|k| !stored.keys.contains_key(k))
        .copied()
        .collect();
    let duplicated: Vec<u64> = stored
        .keys
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| *k)
        .collect();
    let stored_rows: u64 = stored.keys.values().map(|n| u64::from(*n)).sum();
    let stored_unacknowledged = stored.keys.keys().filter(|k| !acked.contains(k)).count() as u64;
    Ok(Report {
        seed: plan.seed,
        rounds,
        fired,
        not_fired,
        acknowledged: acked.len() as u64,
        acknowledged_http: acked_http.len() as u64,
        acknowledged_mqtt: acked_mqtt.len() as u64,
        stored: stored_rows,
        lost: lost_keys.len() as u64,
        duplicated: duplicated.len() as u64,
        stored_unacknowledged,
        foreign: stored.foreign,
        quarantined: stored.quarantined,
        schema_set: load.shaped.load(Ordering::Relaxed),
        parquet_files: stored.files,
        uncommitted_files: stored.uncommitted_files,
        dangling_entries: stored.dangling_entries,
        config_changes: load.config_changes.load(Ordering::Relaxed),
        wal_segments_left: wal_segments(&node.data_dir().join("wal")),
        elapsed_secs: started.elapsed().as_secs_f64(),
        lost_examples: lost_keys.into_iter().take(10).collect(),
        duplicated_examples: duplicated.into_iter().take(10).collect(),
    })
}

fn spawn(
    name: String,
    f: impl FnOnce() -> Vec<u64> + Send + 'static,
) -> Result<std::thread::JoinHandle<Vec<u64>>> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .with_context(|| format!("starting {name}"))
}

/// What the clients need from `bootstrap.json`.
struct Boot {
    workspace: String,
    source: String,
    token: String,
    http_url: String,
}

/// Reads `bootstrap.json`, which `sluice up` writes right after it starts listening.
fn bootstrap(node: &Node) -> Result<Boot> {
    let path = node.data_dir().join("bootstrap.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let parsed = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        if let Some(b) = parsed {
            let field = |name: &str| b[name].as_str().unwrap_or_default().to_owned();
            let boot = Boot {
                workspace: field("workspace"),
                source: field("source"),
                token: field("token"),
                http_url: field("http_url"),
            };
            if !boot.token.is_empty() && boot.http_url.starts_with(&node.http_base()) {
                return Ok(boot);
            }
        }
        if Instant::now() > deadline {
            bail!("{} did not appear with a token and URL", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wal_segments(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
                .count() as u64
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_six_rounds_use_each_kill_mode_once() {
        let modes = schedule(42, 12, (200, 1500));
        for six in modes.chunks(6) {
            let mut kinds: Vec<&str> = six.iter().map(Mode::kind).collect();
            kinds.sort_unstable();
            assert_eq!(
                kinds,
                [
                    "commit-entry",
                    "config-swap",
                    "parquet-encode",
                    "timer",
                    "upload",
                    "wal-rotate"
                ]
            );
        }
    }

    #[test]
    fn a_seed_gives_the_same_rounds_every_time() {
        assert_eq!(schedule(7, 20, (200, 1500)), schedule(7, 20, (200, 1500)));
        assert_ne!(schedule(7, 20, (200, 1500)), schedule(8, 20, (200, 1500)));
    }
}
