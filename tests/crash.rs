//! Nothing acknowledged is lost or duplicated: drive load from several clients, `kill -9` the
//! node at random moments, restart it, and check in DuckDB that every event that got a 202 is
//! in the Parquet files exactly once.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{duckdb, post, Sluice};
use rand::Rng;
use serde_json::{json, Value};
use sluice_config::token::hash_hex;

/// Four clients post NDJSON batches of 1 to 20 events to `url` while the node is killed with
/// SIGKILL and restarted five times. A share `invalid` of the events breaks the source's schema
/// (`"v"` a string). Returns the keys of the valid and of the invalid events acknowledged, and
/// the count of acknowledged requests.
fn drive_and_kill(
    sluice: &mut Sluice,
    url: &str,
    auth: &str,
    invalid: f64,
) -> (HashSet<String>, HashSet<String>, u64) {
    let acked: Arc<Mutex<(HashSet<String>, HashSet<String>)>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (url, auth, acked, stop) =
            (url.to_owned(), auth.to_owned(), acked.clone(), stop.clone());
        clients.push(std::thread::spawn(move || {
            let mut rng = rand::rng();
            let mut seq = 0u64;
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let n = rng.random_range(1..=20);
                let events: Vec<(String, bool)> = (0..n)
                    .map(|i| (format!("c{client}-s{seq}-i{i}"), rng.random_bool(invalid)))
                    .collect();
                let body: String = events
                    .iter()
                    .map(|(k, bad)| {
                        if *bad {
                            format!("{{\"k\":\"{k}\",\"v\":\"bad\"}}\n")
                        } else {
                            format!("{{\"k\":\"{k}\",\"v\":{}}}\n", rng.random_range(0..1000))
                        }
                    })
                    .collect();
                let bad = events.iter().filter(|(_, bad)| *bad).count();
                let answer = std::panic::catch_unwind(|| {
                    post(
                        &url,
                        &[
                            ("authorization", &auth),
                            ("content-type", "application/x-ndjson"),
                        ],
                        body.as_bytes(),
                    )
                });
                match answer {
                    Ok(a) if a.status == 202 => {
                        let expected = if invalid > 0.0 {
                            json!({ "accepted": n - bad, "quarantined": bad })
                        } else {
                            json!({ "accepted": n })
                        };
                        assert_eq!(a.json(), expected);
                        let mut acked = acked.lock().expect("lock");
                        for (k, bad) in events {
                            if bad {
                                acked.1.insert(k);
                            } else {
                                acked.0.insert(k);
                            }
                        }
                        sent += 1;
                    }
                    // Connection refused or reset while the node is down: not acknowledged.
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            sent
        }));
    }

    let mut rng = rand::rng();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1500)));
        sluice.kill9();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..200)));
        sluice.restart();
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let requests: u64 = clients.into_iter().map(|c| c.join().expect("client")).sum();
    let (valid, invalid) = acked.lock().expect("lock").clone();
    (valid, invalid, requests)
}

/// The keys in `dataset` (a DuckDB table expression): each once, and all of `expected`.
fn assert_exactly_once(lake: &std::path::Path, dataset: &str, expected: &HashSet<String>) {
    let duplicates = duckdb(
        lake,
        &format!(
            "SELECT payload->>'k', count(*) FROM {dataset} GROUP BY 1 HAVING count(*) > 1 LIMIT 10"
        ),
    );
    assert!(
        duplicates.is_empty(),
        "duplicated events in {dataset}: {duplicates:?}"
    );
    let stored: HashSet<String> = duckdb(lake, &format!("SELECT payload->>'k' FROM {dataset}"))
        .into_iter()
        .filter_map(|r| r[0].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<&String> = expected.difference(&stored).take(10).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events are missing from {dataset}, e.g. {missing:?}",
        expected.difference(&stored).count(),
        expected.len()
    );
}

#[test]
fn acknowledged_events_reach_parquet_exactly_once_across_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // Small segments and quick batches so kills land during rotation, upload and trimming.
    let mut sluice = Sluice::start(
        &data,
        &[
            "--batch-max-age-ms",
            "150",
            "--wal-segment-bytes",
            "32768",
            "--batch-max-rows",
            "500",
        ],
    );
    let boot = sluice.bootstrap();
    let url = boot["http_url"].as_str().expect("url").to_owned();
    let auth = format!("Bearer {}", boot["token"].as_str().expect("token"));

    let (acked, _, requests) = drive_and_kill(&mut sluice, &url, &auth, 0.0);
    sluice.stop();

    assert!(
        requests > 50,
        "the load was too light to prove anything: {requests} requests"
    );
    let lake = data.join("lake");
    let duplicates = duckdb(
        &lake,
        "SELECT payload->>'k', count(*) FROM {lake} GROUP BY 1 HAVING count(*) > 1 LIMIT 10",
    );
    assert!(duplicates.is_empty(), "duplicated events: {duplicates:?}");
    let ids = duckdb(
        &lake,
        "SELECT count(*), count(DISTINCT event_id) FROM {lake}",
    );
    assert_eq!(ids[0][0], ids[0][1], "event ids are unique");
    let stored: HashSet<String> = duckdb(&lake, "SELECT payload->>'k' FROM {lake}")
        .into_iter()
        .filter_map(|r| r[0].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<&String> = acked.difference(&stored).take(10).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events are missing, e.g. {missing:?}",
        acked.difference(&stored).count(),
        acked.len()
    );
    // Everything uploaded: the WAL keeps at most the active segment.
    let wal_files = std::fs::read_dir(data.join("wal"))
        .expect("wal dir")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".wal"))
        .count();
    assert!(
        wal_files <= 2,
        "{wal_files} WAL segments left after a clean stop"
    );
}

/// As above for a source with a schema and `on_invalid = quarantine` (and a tag rule): every
/// acknowledged valid event is in the events dataset once, every invalid one in the
/// quarantine dataset once, and neither holds the other's.
#[test]
fn acknowledged_events_of_a_quarantining_source_reach_both_datasets_exactly_once_across_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let snapshot = dir.path().join("snapshot.json");
    let config = json!({
        "version": 1,
        "workspaces": [{
            "id": "0190f3a0-0000-7000-8000-0000000000c5",
            "slug": "plant",
            "sources": [{
                "id": "0190f3a0-0000-7000-8000-0000000002c5",
                "slug": "lenient",
                "schema": {"type": "object", "properties": {"k": {"type": "string"}, "v": {"type": "integer"}}, "required": ["k", "v"]},
                "on_invalid": "quarantine",
            }],
            "tokens": [{
                "id": "0190f3a0-0000-7000-8000-0000000001c5",
                "sha256": hash_hex("tok-crash"),
                "scopes": ["ingest"],
            }],
            "tag_rules": [{
                "id": "0190f3a0-0000-7000-8000-0000000003c5",
                "name": "client from the key",
                "extract": {"from": "pointer", "pointer": "/k", "tag": "key"},
            }],
        }]
    });
    std::fs::write(&snapshot, serde_json::to_vec(&config).expect("json")).expect("snapshot");
    let mut sluice = Sluice::start(
        &data,
        &[
            "--config-snapshot",
            snapshot.to_str().expect("utf8 path"),
            "--batch-max-age-ms",
            "150",
            "--wal-segment-bytes",
            "32768",
            "--batch-max-rows",
            "500",
        ],
    );
    let url = sluice.ingest_url("plant", "lenient");
    let (valid, invalid, requests) = drive_and_kill(&mut sluice, &url, "Bearer tok-crash", 0.2);
    sluice.stop();
    assert!(
        requests > 50 && !invalid.is_empty(),
        "the load was too light to prove anything: {requests} requests"
    );
    let lake = data.join("lake");
    let events = format!(
        "read_parquet('{}/**/*.parquet', hive_partitioning = true)",
        lake.display()
    );
    let quarantine = format!(
        "read_parquet('{}/**/*.quarantine', hive_partitioning = true)",
        lake.display()
    );
    assert_exactly_once(&lake, &events, &valid);
    assert_exactly_once(&lake, &quarantine, &invalid);
    for (dataset, other) in [(&events, &invalid), (&quarantine, &valid)] {
        let stray = duckdb(&lake, &format!("SELECT payload->>'k' FROM {dataset}"))
            .into_iter()
            .filter(|r| r[0].as_str().is_some_and(|k| other.contains(k)))
            .count();
        assert_eq!(stray, 0, "{dataset} holds events of the other dataset");
    }
    // Replays after each kill typed and tagged the events as admission did.
    let rows: Vec<Vec<Value>> = duckdb(
        &lake,
        &format!("SELECT count(*) FILTER (WHERE v IS NULL OR tags['key'] <> payload->>'k') FROM {events}"),
    );
    assert_eq!(rows, vec![vec![json!(0)]]);
}
