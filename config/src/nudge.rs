//! A nudge from the control plane to a data-plane node in the same process (`sluice up`): the
//! snapshot file the node follows has a new version. Without it the node notices the file on
//! its next poll, up to `WATCH_INTERVAL` later; with it, at once.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Counts the versions written; a follower waits for the count to move past the one it saw.
#[derive(Clone, Default)]
pub struct SnapshotNudge(Arc<(Mutex<u64>, Condvar)>);

impl SnapshotNudge {
    /// A new version of the file is written.
    pub fn nudge(&self) {
        let (count, changed) = &*self.0;
        if let Ok(mut count) = count.lock() {
            *count = count.wrapping_add(1);
        }
        changed.notify_all();
    }

    /// The versions written so far.
    pub fn count(&self) -> u64 {
        self.0 .0.lock().map_or(0, |count| *count)
    }

    /// Waits until the count differs from `seen`, or `timeout`; returns the count then.
    pub fn wait(&self, seen: u64, timeout: Duration) -> u64 {
        let (count, changed) = &*self.0;
        let Ok(guard) = count.lock() else {
            std::thread::sleep(timeout);
            return seen;
        };
        match changed.wait_timeout_while(guard, timeout, |count| *count == seen) {
            Ok((count, _)) => *count,
            Err(_) => seen,
        }
    }
}

impl fmt::Debug for SnapshotNudge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SnapshotNudge").field(&self.count()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_waiting_follower_wakes_on_a_nudge_and_not_before() {
        let nudge = SnapshotNudge::default();
        let seen = nudge.count();
        assert_eq!(
            nudge.wait(seen, Duration::from_millis(20)),
            seen,
            "no nudge: the wait times out with the count unchanged"
        );
        let other = nudge.clone();
        let poker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            other.nudge();
        });
        let started = Instant::now();
        let now = nudge.wait(seen, Duration::from_secs(60));
        assert_eq!(now, seen + 1);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "woken by the nudge"
        );
        poker.join().expect("poker");
        // A nudge while the follower was busy is not lost: the count has moved.
        nudge.nudge();
        assert_eq!(nudge.wait(now, Duration::from_secs(60)), now + 1);
    }
}
