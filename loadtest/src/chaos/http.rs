//! HTTP clients of a chaos run: NDJSON batches of events with unique keys, posted back to back
//! across the node's deaths; a key counts as acknowledged only when its batch got `202`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{key, Load, SplitMix};

/// Events per request at most (the number is random per request, from 1).
const EVENTS_PER_REQUEST_MAX: u64 = 20;
/// A request that takes longer is given up (unknown outcome: not acknowledged).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Posts until `load.stop`; `client` numbers the keys. Returns its acknowledged keys.
pub fn client(client: u64, url: String, token: String, load: Arc<Load>, seed: u64) -> Vec<u64> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .build()
        .into();
    let auth = format!("Bearer {token}");
    let mut rng = SplitMix::new(seed);
    let mut acked = Vec::new();
    let mut seq = 0u64;
    let mut body = String::new();
    while !load.stop.load(Ordering::Relaxed) {
        let n = 1 + rng.next_u64() % EVENTS_PER_REQUEST_MAX;
        let first = seq;
        body.clear();
        for i in 0..n {
            use std::fmt::Write;
            let _ = writeln!(
                body,
                r#"{{"k":{},"v":{}}}"#,
                key(client, first + i),
                rng.next_u64() % 1000
            );
        }
        seq += n;
        let answer = agent
            .post(&url)
            .header("authorization", &auth)
            .header("content-type", "application/x-ndjson")
            .send(body.as_bytes());
        match answer {
            Ok(resp) if resp.status() == 202 => {
                acked.extend((first..first + n).map(|s| key(client, s)));
                load.http_acked.fetch_add(n, Ordering::Relaxed);
            }
            Ok(_) => {
                // 503 while stopping, or a refusal: not acknowledged.
                load.http_refused.fetch_add(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => {
                // Refused or reset while the node is down: not acknowledged.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    acked
}
