//! Attempt limits for sign-in, verification, password resets and invitations.
//!
//! Each limit allows `max` events per `window` for one key (an account, an address, a
//! workspace, an inviter). Counters live in memory (a restart forgets them, which is fine for
//! abuse limits) and the number of keys is bounded: when the table is full, expired keys are
//! dropped, and if none are, the new key is refused rather than memory growing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys tracked per limit at most.
const KEYS_MAX: usize = 100_000;

/// The key of a client address: the address itself for IPv4, its /64 network for IPv6 (one
/// host usually holds a whole /64, so single addresses would be free to rotate).
pub fn client_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// One limit, e.g. "10 failed sign-ins per account per 15 minutes".
pub struct RateLimit {
    max: u32,
    window: Duration,
    counters: Mutex<HashMap<String, (Instant, u32)>>,
}

impl RateLimit {
    pub fn new(max: u32, window: Duration) -> Self {
        RateLimit {
            max,
            window,
            counters: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one event for `key`; `Err(seconds until allowed)` when over the limit (the event
    /// is then not counted).
    pub fn hit(&self, key: &str) -> Result<(), u64> {
        self.check(key, true)
    }

    /// Like [`RateLimit::hit`] without counting: is `key` over the limit right now?
    pub fn check_only(&self, key: &str) -> Result<(), u64> {
        self.check(key, false)
    }

    fn check(&self, key: &str, count: bool) -> Result<(), u64> {
        let now = Instant::now();
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        if !count {
            // A look only: never adds a key, so checks cannot fill the table.
            return match counters.get(key) {
                Some((start, n)) if now.duration_since(*start) < self.window && *n >= self.max => {
                    let left = self.window.saturating_sub(now.duration_since(*start));
                    Err(left.as_secs().max(1))
                }
                _ => Ok(()),
            };
        }
        if counters.len() >= KEYS_MAX && !counters.contains_key(key) {
            let window = self.window;
            counters.retain(|_, (start, _)| now.duration_since(*start) < window);
            if counters.len() >= KEYS_MAX {
                return Err(self.window.as_secs().max(1));
            }
        }
        let entry = counters.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.max {
            let left = self.window.saturating_sub(now.duration_since(entry.0));
            return Err(left.as_secs().max(1));
        }
        entry.1 += 1;
        Ok(())
    }

    /// Forgets `key` (e.g. after a successful sign-in).
    pub fn reset(&self, key: &str) {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_limit_and_forgets_after_the_window() {
        let limit = RateLimit::new(2, Duration::from_millis(50));
        assert!(limit.hit("a").is_ok());
        assert!(limit.hit("a").is_ok());
        assert!(limit.hit("a").is_err());
        assert!(limit.hit("b").is_ok(), "keys are independent");
        std::thread::sleep(Duration::from_millis(60));
        assert!(limit.hit("a").is_ok());
    }

    #[test]
    fn looking_never_adds_keys_and_ipv6_is_limited_per_64() {
        let limit = RateLimit::new(1, Duration::from_secs(60));
        for i in 0..1000 {
            assert!(limit.check_only(&format!("k{i}")).is_ok());
        }
        assert!(limit.counters.lock().expect("lock").is_empty());
        let a: std::net::IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: std::net::IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        assert_eq!(client_key(a), client_key(b));
        let v4: std::net::IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(client_key(v4), "10.0.0.1");
    }
}
