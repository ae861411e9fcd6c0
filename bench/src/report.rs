//! Turning measured outcomes into the printed table and the `--json` document, including the
//! ratios that the performance targets are stated in.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::loadgen::{busy_threads_text, Outcome};
use crate::sluice::WalStats;
use crate::HttpArgs;

/// Scenario names the ratio is taken between.
const BASELINE: &str = "baseline-204";
/// The reference users compare with (issue 22's target is stated against it).
const NGINX: &str = "nginx-204";
const SINGLE: &str = "sluice-json-1";

/// The median of the rounds' ratios.
fn median_ratio(rounds: &[(f64, f64)]) -> Option<f64> {
    let mut ratios: Vec<f64> = rounds
        .iter()
        .filter(|(base, _)| *base > 0.0)
        .map(|(base, single)| single / base)
        .collect();
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    let mid = ratios.len() / 2;
    Some(if ratios.len() % 2 == 1 {
        ratios[mid]
    } else {
        (ratios[mid - 1] + ratios[mid]) / 2.0
    })
}

/// Targets from the performance issue, reported against (never enforced).
const TARGET_SINGLE_RATIO: f64 = 0.60;
const TARGET_NDJSON_EVENTS_PER_S: f64 = 500_000.0;
/// Single-event Sluice against nginx's 204 at the same connection count.
const TARGET_NGINX_RATIO: f64 = 0.80;

/// Figures of one scenario.
pub struct ScenarioResult {
    pub name: String,
    /// Keep-alive connections of the closed loop.
    pub connections: usize,
    pub content_type: &'static str,
    pub events_per_request: usize,
    pub body_bytes_mean: usize,
    pub requests_per_s: f64,
    pub events_per_s: f64,
    pub body_mib_per_s: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    pub error_samples: BTreeMap<String, String>,
    pub errors_outside_window: u64,
    pub server_cpu_cores: Option<f64>,
    pub loadgen_cpu_cores: Option<f64>,
    pub other_cpu_cores: Option<f64>,
    /// The server's cores by thread role (Sluice only).
    pub server_threads_cores: BTreeMap<String, f64>,
    /// Successful requests per second of the window.
    pub per_second: Vec<u64>,
    /// Sluice's VmHWM at the end of the window.
    pub server_peak_rss_kib: Option<u64>,
    /// The baseline runs in this process: how much this process' VmHWM grew meanwhile.
    pub bench_vmhwm_growth_kib: Option<u64>,
    pub wal: Option<WalStats>,
    pub sluice_log_problems: Vec<String>,
    pub sluice_stop_secs: Option<f64>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl ScenarioResult {
    pub fn new(
        name: &str,
        content_type: &'static str,
        events_per_request: usize,
        bodies: &[Bytes],
        outcome: &Outcome,
    ) -> ScenarioResult {
        let secs = outcome.window.as_secs_f64().max(f64::MIN_POSITIVE);
        let h = &outcome.latency_us;
        let has = !h.is_empty();
        let pct = |q: f64| if has { ms(h.value_at_quantile(q)) } else { 0.0 };
        ScenarioResult {
            name: name.to_owned(),
            connections: outcome.connections,
            content_type,
            events_per_request,
            body_bytes_mean: crate::payload::mean_len(bodies),
            requests_per_s: outcome.requests as f64 / secs,
            events_per_s: outcome.events as f64 / secs,
            body_mib_per_s: outcome.body_bytes as f64 / secs / (1024.0 * 1024.0),
            mean_ms: if has { h.mean() / 1000.0 } else { 0.0 },
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            p999_ms: pct(0.999),
            max_ms: if has { ms(h.max()) } else { 0.0 },
            errors: outcome.error_count(),
            error_kinds: outcome.errors.clone(),
            error_samples: outcome.error_samples.clone(),
            errors_outside_window: outcome.errors_outside_window,
            server_cpu_cores: outcome.cpu.server_cores,
            loadgen_cpu_cores: outcome.cpu.loadgen_cores,
            other_cpu_cores: outcome.cpu.other_cores,
            server_threads_cores: outcome.cpu.server_threads.clone(),
            per_second: outcome.per_second.clone(),
            server_peak_rss_kib: None,
            bench_vmhwm_growth_kib: None,
            wal: None,
            sluice_log_problems: Vec::new(),
            sluice_stop_secs: None,
        }
    }

    /// A progress line for stderr.
    pub fn one_line(&self) -> String {
        format!(
            "{}: {:.0} req/s, {:.0} events/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
            self.name,
            self.requests_per_s,
            self.events_per_s,
            self.p50_ms,
            self.p99_ms,
            self.errors
        )
    }

    fn rss_text(&self) -> String {
        match self.server_peak_rss_kib {
            Some(kib) => format!("{:.1} MiB", kib as f64 / 1024.0),
            None => "n/a (in-process)".into(),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "scenario": self.name,
            "connections": self.connections,
            "content_type": self.content_type,
            "events_per_request": self.events_per_request,
            "body_bytes_mean": self.body_bytes_mean,
            "requests_per_s": round(self.requests_per_s, 1),
            "events_per_s": round(self.events_per_s, 1),
            "body_mib_per_s": round(self.body_mib_per_s, 2),
            "latency_ms": {
                "mean": round(self.mean_ms, 3),
                "p50": round(self.p50_ms, 3),
                "p99": round(self.p99_ms, 3),
                "p999": round(self.p999_ms, 3),
                "max": round(self.max_ms, 3),
            },
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "error_samples": self.error_samples,
            "errors_outside_window": self.errors_outside_window,
            "server_cpu_cores": self.server_cpu_cores.map(|v| round(v, 2)),
            "loadgen_cpu_cores": self.loadgen_cpu_cores.map(|v| round(v, 2)),
            "other_cpu_cores": self.other_cpu_cores.map(|v| round(v, 2)),
            "server_threads_cpu_cores": self
                .server_threads_cores
                .iter()
                .map(|(role, cores)| (role.clone(), json!(round(*cores, 2))))
                .collect::<serde_json::Map<_, _>>(),
            "requests_per_second_timeline": self.per_second,
            "server_peak_rss_kib": self.server_peak_rss_kib,
            "bench_vmhwm_growth_kib": self.bench_vmhwm_growth_kib,
            "wal": self.wal.map(|w| json!({
                "fsyncs": w.fsyncs,
                "mean_fsync_ms": w.mean_fsync_ms().map(|v| round(v, 3)),
                "records_per_fsync": w.records_per_fsync().map(|v| round(v, 1)),
            })),
            "sluice_stop_secs": self.sluice_stop_secs.map(|v| round(v, 2)),
            "sluice_log_problems": self.sluice_log_problems,
        })
    }
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

/// Thousands separators, for reading large rates at a glance.
fn grouped(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn bytes_text(n: usize) -> String {
    if n >= 1024 * 1024 {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    } else if n >= 10 * 1024 {
        format!("{:.0} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

fn cores_text(v: Option<f64>) -> String {
    v.map_or_else(|| "?".into(), |v| format!("{v:.2}"))
}

/// The whole run.
pub struct Report {
    connections: Vec<u64>,
    duration_secs: u64,
    warmup_secs: u64,
    batch_events: u64,
    client_threads: u64,
    server_threads: u64,
    cpus: usize,
    kernel: String,
    results: Vec<ScenarioResult>,
    /// (baseline, Sluice single-event) req/s of each alternating round, when interleaved, by
    /// Sluice scenario (one per HTTP I/O driver) and connection count.
    pub rounds: BTreeMap<(String, usize), Vec<(f64, f64)>>,
    /// The same with nginx's req/s in place of the baseline's, when nginx ran interleaved.
    pub nginx_rounds: BTreeMap<(String, usize), Vec<(f64, f64)>>,
}

/// The baseline and Sluice single-event at one connection count.
struct Pair<'a> {
    connections: usize,
    baseline: &'a ScenarioResult,
    single: &'a ScenarioResult,
}

impl Pair<'_> {
    fn ratio(&self) -> f64 {
        self.single.requests_per_s / self.baseline.requests_per_s.max(f64::MIN_POSITIVE)
    }
}

impl Report {
    pub fn new(args: &HttpArgs, results: Vec<ScenarioResult>) -> Report {
        Report {
            connections: args.connection_counts(),
            duration_secs: args.duration_secs,
            warmup_secs: args.warmup_secs,
            batch_events: args.batch_events,
            client_threads: args.client_threads,
            server_threads: args.server_threads,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            results,
            rounds: BTreeMap::new(),
            nginx_rounds: BTreeMap::new(),
        }
    }

    /// The result of `name` with the most requests/s, over the connection counts.
    fn best(&self, name: &str) -> Option<&ScenarioResult> {
        self.results
            .iter()
            .filter(|r| r.name == name)
            .max_by(|a, b| a.requests_per_s.total_cmp(&b.requests_per_s))
    }

    /// The single-event Sluice scenarios: `sluice-json-1` (io_uring) and the same on other
    /// HTTP I/O drivers (`sluice-json-1-epoll`, ...), in the order they ran.
    fn singles(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for r in &self.results {
            let single = r.name == SINGLE
                || r.name
                    .strip_prefix(SINGLE)
                    .is_some_and(|rest| rest.starts_with('-'));
            if single && !names.contains(&r.name.as_str()) {
                names.push(&r.name);
            }
        }
        names
    }

    /// The rounds of `pair`, when interleaved.
    /// One connection count of a comparison as JSON, the reference server's requests/s under
    /// `reference` (in the pair and in each round).
    fn pair_json(&self, pair: &Pair<'_>, reference: &str) -> serde_json::Value {
        let rounds = self.rounds_of(pair);
        let mut entry = json!({
            "connections": pair.connections,
            "sluice_scenario": pair.single.name,
            "sluice_single_requests_per_s": round(pair.single.requests_per_s, 1),
            "ratio": round(pair.ratio(), 3),
            "rounds": rounds.iter().map(|(base, single)| {
                let mut round_entry = json!({"sluice_single_requests_per_s": round(*single, 1)});
                round_entry[reference] = json!(round(*base, 1));
                round_entry
            }).collect::<Vec<_>>(),
            "median_round_ratio": median_ratio(rounds).map(|v| round(v, 3)),
        });
        entry[reference] = json!(round(pair.baseline.requests_per_s, 1));
        entry
    }

    fn rounds_of(&self, pair: &Pair<'_>) -> &[(f64, f64)] {
        let rounds = if pair.baseline.name == NGINX {
            &self.nginx_rounds
        } else {
            &self.rounds
        };
        rounds
            .get(&(pair.single.name.clone(), pair.connections))
            .map_or(&[][..], Vec::as_slice)
    }

    /// The baseline and each Sluice single-event scenario side by side, at each count both
    /// ran at.
    fn pairs(&self) -> Vec<Pair<'_>> {
        self.pairs_with(BASELINE)
    }

    /// nginx and each Sluice single-event scenario side by side, at each count both ran at.
    fn nginx_pairs(&self) -> Vec<Pair<'_>> {
        self.pairs_with(NGINX)
    }

    /// `reference` and each Sluice single-event scenario side by side, at each count both
    /// ran at.
    fn pairs_with(&self, reference: &'static str) -> Vec<Pair<'_>> {
        let at = |name: &str, connections: usize| {
            self.results
                .iter()
                .find(|r| r.name == name && r.connections == connections)
        };
        let mut counts: Vec<usize> = self.results.iter().map(|r| r.connections).collect();
        counts.sort_unstable();
        counts.dedup();
        let singles = self.singles();
        counts
            .into_iter()
            .flat_map(|connections| {
                singles.iter().filter_map(move |&single| {
                    Some(Pair {
                        connections,
                        baseline: at(reference, connections)?,
                        single: at(single, connections)?,
                    })
                })
            })
            .collect()
    }

    /// Sluice's best single-event requests/s ÷ the ceiling, the baseline's best: each server
    /// at the connection count that suits it.
    fn single_ratio(&self) -> Option<f64> {
        self.ratio_of(SINGLE)
    }

    /// [`single_ratio`](Self::single_ratio) for the single-event scenario `name`.
    fn ratio_of(&self, name: &str) -> Option<f64> {
        let base = self.best(BASELINE)?;
        let single = self.best(name)?;
        (base.requests_per_s > 0.0).then(|| single.requests_per_s / base.requests_per_s)
    }

    /// The plain NDJSON scenario's events/s (`sluice-ndjson-<batch>`, on any driver), not the
    /// schema, rule or many-source ones.
    fn ndjson_events_per_s(&self) -> Option<f64> {
        self.results
            .iter()
            .find(|r| {
                r.name
                    .strip_prefix("sluice-ndjson-")
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
            .map(|r| r.events_per_s)
    }

    pub fn to_json(&self) -> Value {
        let ratio = self.single_ratio();
        let ndjson = self.ndjson_events_per_s();
        json!({
            "benchmark": "http",
            "machine": { "cpus": self.cpus, "kernel": self.kernel },
            "config": {
                "connections": self.connections,
                "duration_secs": self.duration_secs,
                "warmup_secs": self.warmup_secs,
                "batch_events": self.batch_events,
                "client_threads": self.client_threads,
                "server_threads": self.server_threads,
            },
            "scenarios": self.results.iter().map(ScenarioResult::to_json).collect::<Vec<_>>(),
            "sluice_single_best_vs_baseline_best_requests": ratio.map(|v| round(v, 3)),
            "single_best_vs_baseline_best_by_scenario": self.singles().iter().map(|&name| {
                (name.to_owned(), json!(self.ratio_of(name).map(|v| round(v, 3))))
            }).collect::<serde_json::Map<_, _>>(),
            "by_connections": self.pairs().iter()
                .map(|pair| self.pair_json(pair, "baseline_requests_per_s"))
                .collect::<Vec<_>>(),
            "vs_nginx_by_connections": self.nginx_pairs().iter().map(|pair| {
                let mut entry = self.pair_json(pair, "nginx_requests_per_s");
                entry["target_min"] = json!(TARGET_NGINX_RATIO);
                entry["target_met"] = json!(pair.ratio() >= TARGET_NGINX_RATIO);
                entry
            }).collect::<Vec<_>>(),
            "targets": {
                "single_vs_baseline_min": TARGET_SINGLE_RATIO,
                "single_vs_baseline_met": ratio.map(|r| r >= TARGET_SINGLE_RATIO),
                "ndjson_events_per_s_min": TARGET_NDJSON_EVENTS_PER_S,
                "ndjson_events_per_s_met": ndjson.map(|e| e >= TARGET_NDJSON_EVENTS_PER_S),
            },
        })
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Sluice HTTP ingest: {} keep-alive connections, {} s warm-up + {} s measured per \
             scenario; server threads {}, load generator threads {}; {} CPUs, Linux {}",
            self.connections
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            self.warmup_secs,
            self.duration_secs,
            self.server_threads,
            self.client_threads,
            self.cpus,
            self.kernel
        );
        if let Some(rounds) = self.rounds.values().next() {
            let _ = writeln!(
                out,
                "baseline-204{} and {} were measured in {} alternating rounds at each \
                 connection count, each round after its own warm-up, the {} s split between them",
                if self.nginx_rounds.is_empty() {
                    ""
                } else {
                    ", nginx-204"
                },
                self.singles().join(", "),
                rounds.len(),
                self.duration_secs
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<24} {:>5} {:>9} {:>10} {:>11} {:>8} {:>8} {:>9} {:>8} {:>7} {:>17} {:>7} {:>7} {:>7}",
            "scenario",
            "conns",
            "body",
            "req/s",
            "events/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "errors",
            "server peak RSS",
            "srv CPU",
            "gen CPU",
            "oth CPU"
        );
        for r in &self.results {
            let _ = writeln!(
                out,
                "{:<24} {:>5} {:>9} {:>10} {:>11} {:>8.2} {:>8.2} {:>9.2} {:>8.1} {:>7} {:>17} {:>7} {:>7} {:>7}",
                r.name,
                r.connections,
                bytes_text(r.body_bytes_mean),
                grouped(r.requests_per_s),
                grouped(r.events_per_s),
                r.p50_ms,
                r.p99_ms,
                r.p999_ms,
                r.max_ms,
                r.errors,
                r.rss_text(),
                cores_text(r.server_cpu_cores),
                cores_text(r.loadgen_cpu_cores),
                cores_text(r.other_cpu_cores),
            );
        }
        let _ = writeln!(out);
        let nginx_pairs = self.nginx_pairs();
        for pair in self.pairs().into_iter().chain(nginx_pairs) {
            let reference = if pair.baseline.name == NGINX {
                "nginx 204"
            } else {
                "baseline 204"
            };
            let rounds = self.rounds_of(&pair);
            let per_round: Vec<String> = rounds
                .iter()
                .map(|(base, single)| format!("{:.2}", single / base.max(f64::MIN_POSITIVE)))
                .collect();
            let _ = write!(
                out,
                "{:>4} connections: {} {} req/s / {reference} {} req/s = {:.2}",
                pair.connections,
                pair.single.name,
                grouped(pair.single.requests_per_s),
                grouped(pair.baseline.requests_per_s),
                pair.ratio()
            );
            if let Some(median) = median_ratio(rounds) {
                let _ = write!(
                    out,
                    " (rounds {}, median {median:.2})",
                    per_round.join(", ")
                );
            }
            if pair.baseline.name == NGINX {
                let _ = write!(
                    out,
                    " (target >= {TARGET_NGINX_RATIO:.2}: {})",
                    verdict(pair.ratio() >= TARGET_NGINX_RATIO)
                );
            }
            let _ = writeln!(out);
        }
        for name in self.singles() {
            let (Some(ratio), Some(base), Some(single)) =
                (self.ratio_of(name), self.best(BASELINE), self.best(name))
            else {
                continue;
            };
            let label = if name == SINGLE {
                "Sluice single-event".to_owned()
            } else {
                format!("Sluice single-event ({name})")
            };
            let _ = writeln!(
                out,
                "{label} best {} req/s ({} connections) / ceiling, baseline 204 best {} req/s \
                 ({} connections) = {ratio:.2} (target >= {TARGET_SINGLE_RATIO:.2}: {})",
                grouped(single.requests_per_s),
                single.connections,
                grouped(base.requests_per_s),
                base.connections,
                verdict(ratio >= TARGET_SINGLE_RATIO)
            );
        }
        if let Some(events) = self.ndjson_events_per_s() {
            let _ = writeln!(
                out,
                "Sluice NDJSON events/s = {} (target >= {}: {})",
                grouped(events),
                grouped(TARGET_NDJSON_EVENTS_PER_S),
                verdict(events >= TARGET_NDJSON_EVENTS_PER_S)
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "CPU columns are cores busy during the measured window (1.00 = one core): the \
             server, the load generator, and everything else on the machine. Latency is per \
             request in a closed loop."
        );
        for r in &self.results {
            let name = format!("{} ({} connections)", r.name, r.connections);
            if let (Some(min), Some(max)) = (r.per_second.iter().min(), r.per_second.iter().max()) {
                let _ = writeln!(
                    out,
                    "{}: req/s per second of the window: min {}, max {}.",
                    name,
                    grouped(*min as f64),
                    grouped(*max as f64)
                );
            }
            let busy = busy_threads_text(&r.server_threads_cores);
            if !busy.is_empty() {
                let _ = writeln!(out, "{name}: server CPU by thread (cores): {busy}.");
            }
            if let Some(kib) = r.bench_vmhwm_growth_kib {
                let _ = writeln!(
                    out,
                    "{}: runs inside the bench process; its VmHWM grew by {:.1} MiB (load \
                     generator included).",
                    name,
                    kib as f64 / 1024.0
                );
            }
            if let Some(wal) = &r.wal {
                if let (Some(fsync_ms), Some(per)) = (wal.mean_fsync_ms(), wal.records_per_fsync())
                {
                    let _ = writeln!(
                        out,
                        "{}: WAL {:.0} fsyncs (warm-up included), mean {fsync_ms:.2} ms each, \
                         {per:.1} requests per fsync; node stopped in {:.1} s after SIGTERM.",
                        name,
                        wal.fsyncs,
                        r.sluice_stop_secs.unwrap_or_default()
                    );
                }
            }
            for (kind, n) in &r.error_kinds {
                let sample = r.error_samples.get(kind).map_or("", String::as_str);
                let _ = writeln!(out, "{name}: {n} x {kind}: {sample}");
            }
            if r.errors_outside_window > 0 {
                let _ = writeln!(
                    out,
                    "{}: {} errors during warm-up or after the window (not counted above).",
                    name, r.errors_outside_window
                );
            }
            for line in &r.sluice_log_problems {
                let _ = writeln!(out, "{name}: sluice log: {line}");
            }
        }
        out
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, connections: usize, requests: u64) -> ScenarioResult {
        let outcome = Outcome {
            connections,
            requests,
            events: requests,
            body_bytes: 0,
            errors: BTreeMap::new(),
            error_samples: BTreeMap::new(),
            errors_outside_window: 0,
            latency_us: hdrhistogram::Histogram::new(3).expect("histogram"),
            per_second: Vec::new(),
            window: std::time::Duration::from_secs(1),
            cpu: Default::default(),
        };
        ScenarioResult::new(name, "application/json", 1, &[], &outcome)
    }

    #[test]
    fn the_ratio_is_each_servers_best_count_and_every_count_is_paired() {
        let report = Report {
            connections: vec![64, 256],
            duration_secs: 1,
            warmup_secs: 0,
            batch_events: 1,
            client_threads: 1,
            server_threads: 1,
            cpus: 2,
            kernel: String::new(),
            results: vec![
                result(BASELINE, 64, 100_000),
                result(SINGLE, 64, 50_000),
                result("sluice-json-1-epoll", 64, 40_000),
                result("sluice-ndjson-1000", 64, 1_000),
                result(BASELINE, 256, 80_000),
                result(SINGLE, 256, 70_000),
                result(NGINX, 64, 125_000),
                result(NGINX, 256, 87_500),
            ],
            rounds: BTreeMap::from([(
                (SINGLE.to_owned(), 64),
                vec![(100_000.0, 40_000.0), (100_000.0, 60_000.0)],
            )]),
            nginx_rounds: BTreeMap::from([(
                (SINGLE.to_owned(), 256),
                vec![(90_000.0, 72_000.0), (85_000.0, 68_000.0)],
            )]),
        };
        // Sluice's best (256) against the ceiling (the baseline at 64).
        assert_eq!(report.single_ratio(), Some(0.7));
        let pairs: Vec<(usize, f64)> = report
            .pairs()
            .iter()
            .map(|p| (p.connections, p.ratio()))
            .collect();
        assert_eq!(pairs, vec![(64, 0.5), (64, 0.4), (256, 0.875)]);
        let table = report.table();
        assert!(table.contains("= 0.70 (target >= 0.60: met)"), "{table}");
        // Another HTTP I/O driver's single-event scenario is set against the same ceiling.
        assert!(
            table.contains("(sluice-json-1-epoll) best 40,000 req/s (64 connections)"),
            "{table}"
        );
        assert!(
            table.contains("= 0.40 (target >= 0.60: NOT met)"),
            "{table}"
        );
        assert!(table.contains("median 0.50"), "{table}");
        // nginx is set against Sluice at the same count, each count against its own target.
        assert!(
            table.contains(
                "64 connections: sluice-json-1 50,000 req/s / nginx 204 125,000 req/s = 0.40 \
                 (target >= 0.80: NOT met)"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "256 connections: sluice-json-1 70,000 req/s / nginx 204 87,500 req/s = 0.80 \
                 (rounds 0.80, 0.80, median 0.80) (target >= 0.80: met)"
            ),
            "{table}"
        );
        let json = report.to_json();
        assert_eq!(json["vs_nginx_by_connections"][0]["target_met"], false);
        assert_eq!(json["vs_nginx_by_connections"][2]["target_met"], true);
        // Each comparison names its reference server's figures after it, rounds included.
        let nginx = &json["vs_nginx_by_connections"][2];
        assert_eq!(nginx["nginx_requests_per_s"], 87_500.0);
        assert!(nginx["rounds"][0]["nginx_requests_per_s"].is_number());
        assert!(json["by_connections"][0]["baseline_requests_per_s"].is_number());
        assert!(json["by_connections"][0]["rounds"][0]["baseline_requests_per_s"].is_number());
        assert!(json["by_connections"][0].get("target_met").is_none());
    }

    #[test]
    fn grouped_inserts_thousands_separators() {
        assert_eq!(grouped(0.0), "0");
        assert_eq!(grouped(999.4), "999");
        assert_eq!(grouped(1234567.0), "1,234,567");
    }
}
