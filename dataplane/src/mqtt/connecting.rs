//! Connections that have not authenticated yet: how many may be open at once
//! (`mqtt.connecting_max`). Together with the CONNECT's size bound (`mqtt.connect_bytes_max`,
//! checked by the framing filter) this bounds what clients without a token can make the node
//! hold: a slow or half-sent CONNECT holds at most one small packet, for at most the connect
//! timeout, and only so many of them at a time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The count of connections waiting for their CONNECT to be accepted.
#[derive(Debug)]
pub struct Connecting {
    count: AtomicUsize,
    max: usize,
}

/// One connection's place among them, given back when its CONNECT is accepted or it closes.
#[derive(Debug)]
pub struct ConnectingSlot(Arc<Connecting>);

impl Connecting {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Connecting {
            count: AtomicUsize::new(0),
            max: max.max(1),
        })
    }

    /// A place for a new connection, `None` when all are taken.
    pub fn enter(self: &Arc<Self>) -> Option<ConnectingSlot> {
        if self.count.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectingSlot(self.clone()))
    }
}

impl Drop for ConnectingSlot {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_and_given_back() {
        let connecting = Connecting::new(2);
        let a = connecting.enter().expect("first");
        let _b = connecting.enter().expect("second");
        assert!(connecting.enter().is_none(), "over the bound");
        drop(a);
        assert!(connecting.enter().is_some(), "a place given back");
    }
}
