//! The node's memory budget for request bodies (`http.inflight_bytes_max`): what every request
//! holds of it, taken as the bytes arrive and as decompression produces them, never up front.
//!
//! A request that declares 8 MiB and sends a byte every few seconds holds a few bytes, not
//! 8 MiB, so slow senders cannot spend the budget of everyone else; a small gzip body that
//! inflates to 64 MiB holds what it inflated to, so decompression cannot take memory the
//! budget does not have. When the budget has no room the request is refused
//! (`503 overloaded`), and what it held is given back when it ends.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What one request holds of the budget.
pub struct Reservation {
    budget: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

impl Reservation {
    pub fn new(budget: Arc<Semaphore>) -> Self {
        Reservation {
            budget,
            held: None,
            bytes: 0,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `more` bytes more; `false` (holding what it held) when the budget lacks them.
    pub fn grow(&mut self, more: usize) -> bool {
        if more == 0 {
            return true;
        }
        let Ok(permits) = u32::try_from(more) else {
            return false;
        };
        let Ok(permit) = self.budget.clone().try_acquire_many_owned(permits) else {
            return false;
        };
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        self.bytes += more;
        true
    }

    /// Holds at least `total` bytes.
    pub fn hold(&mut self, total: usize) -> bool {
        self.grow(total.saturating_sub(self.bytes))
    }

    /// Gives back what it holds over `total` bytes.
    pub fn release_to(&mut self, total: usize) {
        if total >= self.bytes {
            return;
        }
        if let Some(held) = &mut self.held {
            // Dropping the split-off permits returns them to the budget.
            drop(held.split(self.bytes - total));
        }
        self.bytes = total;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_hold_what_they_use_and_give_it_back_when_done() {
        let budget = Arc::new(Semaphore::new(100));
        let mut a = Reservation::new(budget.clone());
        assert!(a.grow(60));
        assert!(a.hold(50), "already held");
        assert_eq!(a.bytes(), 60);
        let mut b = Reservation::new(budget.clone());
        assert!(!b.grow(41), "over the budget");
        assert!(b.grow(40));
        assert_eq!(budget.available_permits(), 0);
        drop(a);
        assert_eq!(budget.available_permits(), 60);
        assert!(b.hold(100));
        b.release_to(30);
        assert_eq!((b.bytes(), budget.available_permits()), (30, 70));
        b.release_to(50);
        assert_eq!(b.bytes(), 30, "releasing never takes more");
    }
}
