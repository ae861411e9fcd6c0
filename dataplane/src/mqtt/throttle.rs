//! Slowing down addresses that keep failing to CONNECT: after a few failures in a minute, each
//! further refusal is answered only after a delay that grows with the count (at most 5 s), so
//! that guessing tokens is slow while honest clients with a typo are not hurt.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
const DELAY_STEP: Duration = Duration::from_millis(250);
const DELAY_MAX: Duration = Duration::from_secs(5);
/// Addresses tracked at most; the table is cleared when full (a flood of distinct addresses
/// gets no delay, but also costs no memory).
const ADDRESSES_MAX: usize = 100_000;

/// Failed CONNECTs per client address (IPv6 per /64) in the current minute.
pub struct ConnectFailures {
    allowed_per_minute: u32,
    counts: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl ConnectFailures {
    pub fn new(allowed_per_minute: u32) -> Self {
        ConnectFailures {
            allowed_per_minute,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one failure from `addr` and says how long to wait before answering it.
    pub fn record(&self, addr: Option<IpAddr>) -> Duration {
        let Some(addr) = addr.map(client_key) else {
            return Duration::ZERO;
        };
        let Ok(mut counts) = self.counts.lock() else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        if counts.len() >= ADDRESSES_MAX && !counts.contains_key(&addr) {
            counts.retain(|_, (since, _)| now.duration_since(*since) < WINDOW);
            if counts.len() >= ADDRESSES_MAX {
                counts.clear();
            }
        }
        let entry = counts.entry(addr).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        let over = entry.1.saturating_sub(self.allowed_per_minute);
        (DELAY_STEP * over).min(DELAY_MAX)
    }
}

/// IPv4 addresses count one by one; IPv6 clients usually own a /64, so that is one key.
fn client_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_start_after_the_allowance_and_are_capped() {
        let failures = ConnectFailures::new(3);
        let a: IpAddr = "10.0.0.1".parse().expect("address");
        let b: IpAddr = "10.0.0.2".parse().expect("address");
        for _ in 0..3 {
            assert_eq!(failures.record(Some(a)), Duration::ZERO);
        }
        assert_eq!(failures.record(Some(a)), DELAY_STEP);
        assert_eq!(failures.record(Some(a)), DELAY_STEP * 2);
        assert_eq!(failures.record(Some(b)), Duration::ZERO);
        for _ in 0..100 {
            failures.record(Some(a));
        }
        assert_eq!(failures.record(Some(a)), DELAY_MAX);
    }

    #[test]
    fn one_ipv6_network_is_one_client() {
        let failures = ConnectFailures::new(1);
        let a: IpAddr = "2001:db8::1".parse().expect("address");
        let b: IpAddr = "2001:db8::2".parse().expect("address");
        assert_eq!(failures.record(Some(a)), Duration::ZERO);
        assert_eq!(failures.record(Some(b)), DELAY_STEP);
    }
}
