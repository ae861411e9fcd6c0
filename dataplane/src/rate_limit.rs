//! Per-workspace event rate limits (token buckets).
//!
//! Buckets live outside the config view so that a config change does not refill them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use uuid::Uuid;

/// A token bucket counting events.
#[derive(Debug)]
pub struct Bucket {
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    rate_per_s: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate_per_s: u64, burst: u64) -> Self {
        Bucket {
            state: Mutex::new(BucketState {
                rate_per_s: rate_per_s as f64,
                burst: burst as f64,
                tokens: burst as f64,
                last: Instant::now(),
            }),
        }
    }

    fn set(&self, rate_per_s: u64, burst: u64) {
        if let Ok(mut s) = self.state.lock() {
            s.rate_per_s = rate_per_s as f64;
            s.burst = burst as f64;
            s.tokens = s.tokens.min(s.burst);
        }
    }

    /// Takes `events` tokens, or says how many seconds until the workspace may send again.
    ///
    /// A request is admitted whenever the bucket is not in debt, even if it carries more
    /// events than the bucket holds: the balance goes negative and later requests wait until
    /// it is paid back. So any batch size the body limits allow can get through, and the
    /// long-run rate still holds.
    pub fn take(&self, events: usize) -> Result<(), u64> {
        let Ok(mut s) = self.state.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        let refill = now.duration_since(s.last).as_secs_f64() * s.rate_per_s;
        s.tokens = (s.tokens + refill).min(s.burst);
        s.last = now;
        let need = events as f64;
        if s.tokens >= need.min(s.burst) {
            s.tokens -= need;
            Ok(())
        } else {
            let wait = (need.min(s.burst) - s.tokens) / s.rate_per_s.max(1.0);
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

/// All buckets of a node, by workspace id.
#[derive(Debug, Default)]
pub struct RateLimits {
    buckets: Mutex<HashMap<Uuid, Arc<Bucket>>>,
}

impl RateLimits {
    /// The bucket of `workspace`, created or re-rated to `rate_per_s` with room for `burst`.
    pub fn bucket(&self, workspace: Uuid, rate_per_s: u64, burst: u64) -> Arc<Bucket> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Arc::new(Bucket::new(rate_per_s, burst));
        };
        let bucket = buckets
            .entry(workspace)
            .or_insert_with(|| Arc::new(Bucket::new(rate_per_s, burst)));
        bucket.set(rate_per_s, burst);
        bucket.clone()
    }

    /// Forgets workspaces that are no longer configured.
    pub fn retain(&self, keep: impl Fn(&Uuid) -> bool) {
        if let Ok(mut buckets) = self.buckets.lock() {
            buckets.retain(|id, _| keep(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refuses_past_its_burst_and_says_when_to_retry() {
        let limits = RateLimits::default();
        let bucket = limits.bucket(Uuid::nil(), 10, 20);
        assert!(bucket.take(20).is_ok());
        assert_eq!(bucket.take(15), Err(2));
    }

    #[test]
    fn a_batch_larger_than_the_burst_gets_through_once_and_puts_the_bucket_in_debt() {
        let limits = RateLimits::default();
        let bucket = limits.bucket(Uuid::nil(), 10, 10);
        assert!(bucket.take(50).is_ok(), "a full bucket admits any batch");
        // 40 events of debt plus one more: about 4 seconds at 10 events/s.
        assert_eq!(bucket.take(1), Err(5));
    }
}
