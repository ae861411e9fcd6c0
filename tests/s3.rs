//! The `s3://` lake against a real S3-compatible server (s3s-fs, installed by
//! scripts/test.sh), including an outage: the WAL absorbs events up to its quota, then HTTP
//! ingest answers 503 with Retry-After and MQTT publishes are held, then refused (0x97 on
//! MQTT 5, a disconnect on 3.1.1) instead of buffered, and when the server returns everything
//! acknowledged arrives.

mod common;

use std::time::Duration;

use common::mqtt::{event, paho};
use common::s3::S3Server;
use common::{duckdb, free_port, parquet_files, post, wait_for, Sluice};
use serde_json::json;

#[test]
fn s3_lake_survives_an_outage_with_503_at_the_wal_quota() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("s3");
    std::fs::create_dir_all(root.join("lake-bucket")).expect("bucket dir");
    let port = free_port();
    let mut s3 = S3Server::start(&root, port);
    let endpoint = format!("http://127.0.0.1:{port}");
    let envs = [
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "sluice-test"),
        ("AWS_SECRET_ACCESS_KEY", "sluice-test-secret"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false"),
    ];
    let data = dir.path().join("data");
    let mut sluice = Sluice::start_with_env(
        &data,
        &[
            "--object-store",
            "s3://lake-bucket/events",
            "--batch-max-age-ms",
            "200",
            "--wal-segment-bytes",
            "8192",
            "--wal-bytes-max",
            "65536",
        ],
        &envs,
    );
    let boot = sluice.bootstrap();
    let url = boot["http_url"].as_str().expect("url").to_owned();
    let auth = format!("Bearer {}", boot["token"].as_str().expect("token"));
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/x-ndjson"),
    ];
    let batch = |from: usize, n: usize| -> Vec<u8> {
        (from..from + n)
            .flat_map(|i| format!("{{\"seq\":{i},\"pad\":\"{}\"}}\n", "x".repeat(40)).into_bytes())
            .collect()
    };

    let mut acked = 0usize;
    for round in 0..5 {
        assert_eq!(
            post(&url, &headers, &batch(acked, 20)).status,
            202,
            "round {round}"
        );
        acked += 20;
    }
    let lake = s3.root.join("lake-bucket/events");
    assert!(
        wait_for(Duration::from_secs(10), || parquet_files(&lake) > 0),
        "no file reached S3; log: {}",
        sluice.log()
    );

    // Outage: accepted into the WAL until its quota, then 503 storage-full with Retry-After.
    s3.stop();
    let mut refused = None;
    for _ in 0..200 {
        let answer = post(&url, &headers, &batch(acked, 20));
        if answer.status == 202 {
            acked += 20;
        } else {
            refused = Some(answer);
            break;
        }
    }
    let refused = refused.expect("the WAL quota was never reached");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.problem(), "storage-full");
    assert!(refused.retry_after.is_some());
    assert!(acked > 100, "the WAL took events during the outage");
    assert_eq!(sluice.readyz()["ready"], json!(false));

    // MQTT at the quota: a 4 KB QoS 1 publish (incompressible) is held for the node's room wait (10 s), then
    // refused with 0x97 (quota exceeded) on MQTT 5 and with a disconnect on 3.1.1, where
    // there is no negative acknowledgement; neither is acknowledged. Both run at once.
    let port = sluice.mqtt_port;
    let token = boot["token"].as_str().expect("token").to_owned();
    let publish = |version: &'static str, seq: usize| {
        let token = token.clone();
        std::thread::spawn(move || {
            // Larger than the room the refused HTTP batch left, even compressed (MQTT records
            // of 8 KiB or more are stored zstd-compressed): letters that do not repeat.
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seq as u64;
            let pad: String = (0..4096)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b'a' + (x % 26) as u8)
                })
                .collect();
            let payload = format!("{{\"seq\":{seq},\"via\":\"mqtt{version}\",\"pad\":\"{pad}\"}}");
            let lines = paho(
                port,
                &[
                    "publish",
                    "--version",
                    version,
                    "--qos",
                    "1",
                    "--payload",
                    &payload,
                    "--client-id",
                    &format!("outage-v{version}"),
                    "--timeout",
                    "20",
                    "--username",
                    "default",
                    "--password",
                    &token,
                ],
            );
            event(&lines, "published").clone()
        })
    };
    let (v5, v3) = (publish("5", acked), publish("3", acked + 1));
    let v5 = v5.join().expect("MQTT 5 client");
    let v3 = v3.join().expect("MQTT 3.1.1 client");
    assert_eq!(v5["refused"]["0"], json!(0x97), "{v5}");
    assert_eq!(v5["acked"], json!([]), "{v5}");
    assert_eq!(v3["acked"], json!([]), "{v3}");
    assert!(!v3["disconnected"].is_null(), "{v3}");
    let metrics = sluice.metrics();
    assert!(
        metrics.contains("sluice_mqtt_publishes_total{qos=\"1\",outcome=\"quota-exceeded\"} 2"),
        "both MQTT refusals counted: {metrics}"
    );

    // Storage returns: everything acknowledged arrives, once, and ingest resumes.
    let mut s3 = S3Server::start(&root, s3.port);
    let arrived = wait_for(Duration::from_secs(60), || {
        duckdb(&lake, "SELECT count(*) FROM {lake}")[0][0] == json!(acked)
    });
    assert!(
        arrived,
        "not every acknowledged event reached S3; log: {}",
        sluice.log()
    );
    assert!(
        wait_for(Duration::from_secs(10), || post(
            &url,
            &headers,
            &batch(acked, 20)
        )
        .status
            == 202),
        "ingest did not resume"
    );
    acked += 20;
    let lines = paho(
        sluice.mqtt_port,
        &[
            "publish",
            "--qos",
            "1",
            "--payload",
            &format!("{{\"seq\":{acked},\"via\":\"mqtt5\"}}"),
            "--username",
            "default",
            "--password",
            &token,
        ],
    );
    assert_eq!(event(&lines, "published")["acked"], json!([0]), "{lines:?}");
    acked += 1;
    sluice.stop();
    let rows = duckdb(
        &lake,
        "SELECT count(*), count(DISTINCT payload->>'seq') FROM {lake}",
    );
    assert_eq!(rows[0], vec![json!(acked), json!(acked)]);
    s3.stop();
}
