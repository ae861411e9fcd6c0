//! Synthetic telemetry request bodies, generated once before any load is sent.
//!
//! Events look like what a sensor fleet posts (~200 bytes of JSON: timestamp, device, site,
//! a handful of readings, a status and a sequence number) with values that vary from event to
//! event, so the server cannot benefit from identical payloads. Generation is deterministic (a
//! fixed-seed xorshift) so two runs send the same bytes.

use bytes::Bytes;

/// A small deterministic PRNG (xorshift64*); statistical quality is irrelevant here, only
/// that values vary and runs are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `[0, n)`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const SITES: [&str; 6] = [
    "plant-north",
    "plant-south",
    "depot-a",
    "depot-b",
    "lab-3",
    "yard",
];
const STATUSES: [&str; 4] = ["ok", "ok", "ok", "degraded"];

/// One event as a JSON object (no trailing newline).
fn event(rng: &mut Rng, seq: u64) -> String {
    let ms_of_day = (seq * 37 + rng.below(1000)) % 86_400_000;
    let (h, m, s, ms) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    let device = rng.below(5000);
    let site = SITES[rng.below(SITES.len() as u64) as usize];
    let temp_centi = 1500 + rng.below(1500) as i64; // 15.00 .. 29.99 °C
    let humidity_deci = 300 + rng.below(400); // 30.0 .. 69.9 %
    let pressure_centi = 98_000 + rng.below(5_000); // 980.00 .. 1029.99 hPa
    let battery_centi = 330 + rng.below(90); // 3.30 .. 4.19 V
    let rssi = 40 + rng.below(50); // -40 .. -89 dBm
    let status = STATUSES[rng.below(STATUSES.len() as u64) as usize];
    format!(
        concat!(
            r#"{{"ts":"2025-06-01T{:02}:{:02}:{:02}.{:03}Z","device_id":"probe-{:05}","site":"{}","#,
            r#""temp_c":{}.{:02},"humidity_pct":{}.{},"pressure_hpa":{}.{:02},"battery_v":{}.{:02},"#,
            r#""rssi_dbm":-{},"status":"{}","fw":"2.4.1","seq":{}}}"#
        ),
        h,
        m,
        s,
        ms,
        device,
        site,
        temp_centi / 100,
        temp_centi % 100,
        humidity_deci / 10,
        humidity_deci % 10,
        pressure_centi / 100,
        pressure_centi % 100,
        battery_centi / 100,
        battery_centi % 100,
        rssi,
        status,
        seq,
    )
}

/// `count` bodies of one JSON object each (`application/json`).
pub fn single_event_bodies(count: usize) -> Vec<Bytes> {
    let mut rng = Rng(0x5eed_0001_dead_beef);
    (0..count as u64)
        .map(|seq| Bytes::from(event(&mut rng, seq)))
        .collect()
}

/// `count` NDJSON bodies of `events` lines each (`application/x-ndjson`).
pub fn ndjson_bodies(count: usize, events: usize) -> Vec<Bytes> {
    let mut rng = Rng(0x5eed_0002_cafe_f00d);
    let mut seq = 0u64;
    (0..count)
        .map(|_| {
            let mut body = String::with_capacity(events * 224);
            for _ in 0..events {
                body.push_str(&event(&mut rng, seq));
                body.push('\n');
                seq += 1;
            }
            Bytes::from(body)
        })
        .collect()
}

/// Mean body size in bytes.
pub fn mean_len(bodies: &[Bytes]) -> usize {
    let total: usize = bodies.iter().map(Bytes::len).sum();
    total / bodies.len().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_valid_json_objects_of_about_200_bytes_and_vary() {
        let bodies = single_event_bodies(100);
        for body in &bodies {
            let value: serde_json::Value = serde_json::from_slice(body).expect("valid JSON");
            assert!(value.is_object());
            assert!((180..=240).contains(&body.len()), "{} bytes", body.len());
        }
        assert_ne!(bodies[0], bodies[1]);
    }

    #[test]
    fn ndjson_bodies_have_the_requested_number_of_lines() {
        let bodies = ndjson_bodies(2, 10);
        for body in &bodies {
            let text = std::str::from_utf8(body).expect("utf8");
            assert_eq!(text.lines().count(), 10);
            for line in text.lines() {
                serde_json::from_str::<serde_json::Value>(line).expect("valid line");
            }
        }
        assert_ne!(bodies[0], bodies[1]);
    }
}
