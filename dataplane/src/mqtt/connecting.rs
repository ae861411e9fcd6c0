//! Connections that have not authenticated yet: how many may be open at once
//! (`mqtt.connecting_max`). Together with the CONNECT's size bound (`mqtt.connect_bytes_max`,
//! checked by the framing filter) this bounds what clients without a token can make the node
//! hold: a slow or half-sent CONNECT holds at most one small packet, for at most the connect
//! timeout, and only so many of them at a time.
//!
//! A connection that finds every place taken waits for one, in arrival order, for at most the
//! connect timeout, and is then answered "server busy" if none came free. It is never closed
//! without an answer: a fleet reconnecting at once (after an outage, over a network whose round
//! trip puts many accepted connections ahead of their CONNECT) opens far more connections in a
//! moment than there are places, and closing those over the bound silently was what lost
//! 4–20% of CONNECTs at 2,000 new connections a second (issue 22,
//! `tests/mqtt_connect_burst.rs`). Waiting costs a connection its socket and the framing
//! filter's bounded buffer only, and waiting connections count against `mqtt.connections_max`
//! like any other.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The places of connections waiting for their CONNECT to be accepted.
#[derive(Debug)]
pub struct Connecting {
    /// One permit per place; runtime-agnostic (it only needs a waker), shared by every MQTT
    /// worker thread, and fair: waiters get places in arrival order.
    places: Arc<Semaphore>,
}

/// One connection's standing among those not authenticated yet, held until its CONNECT is
/// accepted or it closes.
#[derive(Debug)]
pub struct ConnectingSlot {
    /// The place, given back when dropped; `None` while the connection waits for one, and for
    /// good when none came free within the connect timeout (its CONNECT is answered "server
    /// busy").
    place: Option<OwnedSemaphorePermit>,
}

impl Connecting {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Connecting {
            places: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
        })
    }

    /// A place for a new connection at once, `None` when all are taken.
    pub fn try_enter(&self) -> Option<ConnectingSlot> {
        self.places
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|place| ConnectingSlot { place: Some(place) })
    }

    /// Waits for a place. The caller bounds the wait (the connect timeout).
    pub async fn enter(&self) -> ConnectingSlot {
        // The semaphore is never closed, so the acquire only fails if it were.
        ConnectingSlot {
            place: self.places.clone().acquire_owned().await.ok(),
        }
    }

    /// Places free now.
    #[cfg(test)]
    pub fn free(&self) -> usize {
        self.places.available_permits()
    }
}

impl ConnectingSlot {
    /// The standing of a connection that has no place (yet).
    pub fn waiting() -> ConnectingSlot {
        ConnectingSlot { place: None }
    }

    /// Whether the connection holds a place; one without is answered "server busy".
    pub fn has_place(&self) -> bool {
        self.place.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_and_given_back() {
        let connecting = Connecting::new(2);
        let a = connecting.try_enter().expect("first");
        let _b = connecting.try_enter().expect("second");
        assert!(connecting.try_enter().is_none(), "over the bound");
        drop(a);
        assert!(connecting.try_enter().is_some(), "a place given back");
    }

    #[test]
    fn a_waiting_connection_gets_the_next_place_given_back() {
        let connecting = Connecting::new(1);
        let first = connecting.try_enter().expect("first");
        let mut waiting = Box::pin(connecting.enter());
        assert!(
            futures::FutureExt::now_or_never(waiting.as_mut()).is_none(),
            "no place while the first holds it"
        );
        drop(first);
        let slot = futures::executor::block_on(waiting);
        assert!(slot.has_place());
        assert_eq!(connecting.free(), 0);
        drop(slot);
        assert_eq!(connecting.free(), 1);
    }

    #[test]
    fn a_slot_without_a_place_is_busy() {
        assert!(!ConnectingSlot::waiting().has_place());
    }
}
