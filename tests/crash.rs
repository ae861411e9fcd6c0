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
use serde_json::json;

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

    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (url, auth, acked, stop) = (url.clone(), auth.clone(), acked.clone(), stop.clone());
        clients.push(std::thread::spawn(move || {
            let mut rng = rand::rng();
            let mut seq = 0u64;
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let n = rng.random_range(1..=20);
                let keys: Vec<String> = (0..n).map(|i| format!("c{client}-s{seq}-i{i}")).collect();
                let body: String = keys
                    .iter()
                    .map(|k| format!("{{\"k\":\"{k}\",\"v\":{}}}\n", rng.random_range(0..1000)))
                    .collect();
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
                        assert_eq!(a.json(), json!({ "accepted": n }));
                        acked.lock().expect("lock").extend(keys);
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
    sluice.stop();

    let acked = acked.lock().expect("lock").clone();
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
