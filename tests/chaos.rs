//! Chaos rounds in the suite: six kills of a node under HTTP and MQTT QoS 1 load with the
//! configuration changing, one by the clock and one at each crash point (Parquet encoding,
//! between an upload and its commit-log entry, between that entry and the watermark, WAL
//! rotation, configuration swap), the second half of them with a schema that quarantines about
//! one event in ten, then every acknowledged event in the lake exactly once and
//! every file named by the commit log export endpoints and webhooks read. The same code is `sluice-loadtest chaos`, whose
//! long run (100 rounds) is in loadtest/README.md.

use std::time::Duration;

use sluice_loadtest::chaos::{self, Plan};

#[test]
fn six_chaos_rounds_lose_and_duplicate_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A new seed each run, so the suite keeps exploring; a failure names it, and
    // SLUICE_CHAOS_SEED=<seed> replays it.
    let seed = std::env::var("SLUICE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(chaos::fresh_seed);
    let mut plan = Plan::new(
        env!("CARGO_BIN_EXE_sluice").into(),
        dir.path().join("run"),
        6,
        seed,
    );
    plan.kill_after_ms = (300, 1200);
    plan.point_timeout = Duration::from_secs(30);
    plan.progress = true;
    let report = chaos::run(&plan).unwrap_or_else(|e| {
        let log = std::fs::read_to_string(dir.path().join("run/sluice.log")).unwrap_or_default();
        let tail = &log[log.len().saturating_sub(4000)..];
        panic!("chaos run with seed {seed} could not be carried out: {e:#}\nlog tail:\n{tail}")
    });
    eprintln!("{}", report.text());

    if !report.passed() {
        // Kept for a look: the lake, the WAL and the node's log across all its lives.
        let kept = dir.keep();
        panic!(
            "seed {seed} (replay: SLUICE_CHAOS_SEED={seed}): {}\ndata dir and log kept in {}",
            report.text(),
            kept.display()
        );
    }
    // Otherwise the test could pass without testing what it claims.
    for kind in [
        "timer",
        "parquet-encode",
        "upload",
        "commit-entry",
        "wal-rotate",
        "config-swap",
    ] {
        assert!(
            report.fired.contains_key(kind),
            "seed {seed}: no round was ended by {kind}: {:?}",
            report.rounds
        );
    }
    assert!(
        report.acknowledged_http > 1000 && report.acknowledged_mqtt > 100,
        "seed {seed}: the load was too light to prove anything: {}",
        report.text()
    );
    // The second half of the rounds ran with a schema and a quarantine: shaped records and
    // quarantine files went through the kills too.
    assert!(
        report.schema_set && report.quarantined > 0,
        "seed {seed}: no event reached the quarantine: {}",
        report.text()
    );
    assert!(
        report.config_changes >= 5,
        "seed {seed}: the configuration hardly changed: {}",
        report.text()
    );
    assert!(
        report.wal_segments_left <= 2,
        "seed {seed}: {} WAL segments left after a clean stop",
        report.wal_segments_left
    );
}

#[test]
fn the_loadtest_knows_the_storage_crates_kill_line_and_points() {
    // The driver repeats these rather than building the storage crate.
    assert_eq!(chaos::KILL_LINE, sluice_storage::chaos::KILL_LINE);
    let driver: Vec<&str> = chaos::POINTS.iter().map(|(p, _)| *p).collect();
    assert_eq!(driver, sluice_storage::chaos::POINTS);
}
