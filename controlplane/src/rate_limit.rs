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
    /// is then not counted). Looking and counting are one step under the lock, so events
    /// racing each other never get past the limit together.
    pub fn hit(&self, key: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
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

    /// Like [`RateLimit::hit`] without counting: is `key` over the limit right now? A look
    /// only: never adds a key, so checks cannot fill the table.
    pub fn check_only(&self, key: &str) -> Result<(), u64> {
        let now = Instant::now();
        let counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        match counters.get(key) {
            Some((start, n)) if now.duration_since(*start) < self.window && *n >= self.max => {
                let left = self.window.saturating_sub(now.duration_since(*start));
                Err(left.as_secs().max(1))
            }
            _ => Ok(()),
        }
    }

    /// Takes back one event of `key` counted by [`RateLimit::hit`] (e.g. an attempt that
    /// turned out to be no failure).
    pub fn refund(&self, key: &str) {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, n)) = counters.get_mut(key) {
            *n = n.saturating_sub(1);
        }
    }

    /// Forgets `key` (e.g. after a successful sign-in).
    pub fn reset(&self, key: &str) {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// The limits on guessing passwords: failures per account from one client address, and a
/// slower limit per account from all addresses together.
///
/// Per (account, address) so that a guesser locks out only their own address, not the owner
/// signing in from theirs; the overall limit is the wall a guesser spread over many addresses
/// still meets (at the price that such a guesser, past it, locks the owner out too). Each
/// attempt is counted before its password is checked and given back when it was right, so
/// attempts sent in parallel get no more checks than the limit.
pub struct SignInLimits {
    from_address: RateLimit,
    all_addresses: RateLimit,
}

/// Why a sign-in attempt may not go ahead, with the seconds until it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInRefused {
    /// Too many failures for this account from this client address.
    FromThisAddress(u64),
    /// Too many failures for this account from everywhere.
    AllAddresses(u64),
}

impl SignInLimits {
    pub fn new(from_address_max: u32, all_addresses_max: u32, window: Duration) -> Self {
        SignInLimits {
            from_address: RateLimit::new(from_address_max, window),
            all_addresses: RateLimit::new(all_addresses_max, window),
        }
    }

    fn pair(account: &str, client: &str) -> String {
        // A space never appears in an e-mail address or a client key.
        format!("{account} {client}")
    }

    /// Counts an attempt on `account` from `client` (a [`client_key`]) as a failure until
    /// [`SignInLimits::succeeded`] says otherwise; refused past either limit.
    pub fn begin(&self, account: &str, client: &str) -> Result<(), SignInRefused> {
        let pair = Self::pair(account, client);
        self.from_address
            .hit(&pair)
            .map_err(SignInRefused::FromThisAddress)?;
        if let Err(wait) = self.all_addresses.hit(account) {
            self.from_address.refund(&pair);
            return Err(SignInRefused::AllAddresses(wait));
        }
        Ok(())
    }

    /// The password was right: the failures from this address are forgotten and this attempt
    /// is no longer counted against the account.
    pub fn succeeded(&self, account: &str, client: &str) {
        self.from_address.reset(&Self::pair(account, client));
        self.all_addresses.refund(account);
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

    #[test]
    fn a_guesser_locks_out_their_own_address_and_many_guessers_the_account() {
        let limits = SignInLimits::new(3, 5, Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(limits.begin("ada@example.com", "10.0.0.1"), Ok(()));
        }
        assert!(matches!(
            limits.begin("ada@example.com", "10.0.0.1"),
            Err(SignInRefused::FromThisAddress(_))
        ));
        // The owner elsewhere is not locked out, and a right password is not a failure.
        assert_eq!(limits.begin("ada@example.com", "10.0.0.2"), Ok(()));
        limits.succeeded("ada@example.com", "10.0.0.2");
        assert_eq!(limits.begin("grace@example.com", "10.0.0.1"), Ok(()));
        // Two more failures from a third address make five in all: everyone is refused.
        for _ in 0..2 {
            assert_eq!(limits.begin("ada@example.com", "10.0.0.3"), Ok(()));
        }
        for client in ["10.0.0.2", "10.0.0.4"] {
            assert!(matches!(
                limits.begin("ada@example.com", client),
                Err(SignInRefused::AllAddresses(_))
            ));
        }
        // Refused by the overall limit, an attempt does not count against its address.
        let counters = limits.from_address.counters.lock().expect("lock");
        assert_eq!(
            counters.get("ada@example.com 10.0.0.4").map(|c| c.1),
            Some(0)
        );
    }

    #[test]
    fn attempts_racing_each_other_never_pass_the_limit_together() {
        let limits = std::sync::Arc::new(SignInLimits::new(10, 100, Duration::from_secs(60)));
        let passed: usize = (0..40)
            .map(|_| {
                let limits = limits.clone();
                std::thread::spawn(move || limits.begin("ada@example.com", "10.0.0.1").is_ok())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| usize::from(t.join().expect("thread")))
            .sum();
        assert_eq!(passed, 10);
    }
}
