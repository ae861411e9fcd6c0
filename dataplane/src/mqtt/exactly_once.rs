//! QoS 2 receipt on one connection (3.1.1 and 5 §4.3.3, the receiver's side): a message is
//! stored once and answered PUBREC once it is durable; a resend before PUBREL gets PUBREC
//! again, never before the message is durable; PUBREL gets PUBCOMP and frees the packet id.
//! The exchanges are kept for the connection only (the node keeps no session state), at most
//! one per packet id.

use std::collections::HashMap;

/// Resends of one QoS 2 message answered at most while it is being stored: each costs a
/// PUBREC later, and a client has no reason to resend more than a few times.
const RESENDS_ANSWERED_MAX: u8 = 16;

/// Where a QoS 2 message of the connection is in its exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exchange {
    /// Being stored; the client sent it `resent` times more meanwhile.
    Storing { resent: u8 },
    /// Stored and answered with PUBREC; waiting for PUBREL.
    Received,
}

/// What to do with a QoS 2 PUBLISH.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    /// A new message: store it.
    New,
    /// Sent again while the first is being stored: answered along with it.
    Resent,
    /// Sent again after its PUBREC: PUBREC again, store nothing.
    Stored,
}

/// What a PUBREL finds.
#[derive(Debug, PartialEq, Eq)]
pub enum Release {
    /// The exchange it completes: PUBCOMP, and the packet id is free.
    Completed,
    /// None with its packet id (say, one from before a reconnect: the node keeps no session
    /// state): PUBCOMP all the same (MQTT 5: 0x92 packet identifier not found).
    Unknown,
    /// A message not answered with PUBREC yet: the client broke the exchange (protocol
    /// error).
    Early,
}

/// The QoS 2 exchanges of one connection that have not completed.
#[derive(Debug, Default)]
pub struct ExactlyOnce {
    exchanges: HashMap<u16, Exchange>,
}

impl ExactlyOnce {
    /// A QoS 2 PUBLISH with packet id `id` arrived.
    pub fn publish(&mut self, id: u16) -> Arrival {
        match self.exchanges.get_mut(&id) {
            None => {
                self.exchanges.insert(id, Exchange::Storing { resent: 0 });
                Arrival::New
            }
            Some(Exchange::Storing { resent }) => {
                *resent = resent.saturating_add(1).min(RESENDS_ANSWERED_MAX);
                Arrival::Resent
            }
            Some(Exchange::Received) => Arrival::Stored,
        }
    }

    /// The message with `id` is durable (`accepted`) or refused; returns how many PUBRECs
    /// answer it (one, and one per resend meanwhile). A refusal ends the exchange (MQTT 5: a
    /// PUBREC with a failure code; 3.1.1 closes the connection).
    pub fn stored(&mut self, id: u16, accepted: bool) -> u8 {
        let resent = match self.exchanges.get(&id) {
            Some(Exchange::Storing { resent }) => *resent,
            _ => 0,
        };
        if accepted {
            self.exchanges.insert(id, Exchange::Received);
        } else {
            self.forget(id);
        }
        1 + resent
    }

    /// PUBREL for `id`.
    pub fn release(&mut self, id: u16) -> Release {
        match self.exchanges.get(&id) {
            Some(Exchange::Received) => {
                self.forget(id);
                Release::Completed
            }
            Some(Exchange::Storing { .. }) => Release::Early,
            None => Release::Unknown,
        }
    }

    /// Whether `id` belongs to an exchange not completed (a QoS 1 PUBLISH may not use it
    /// [MQTT-2.2.1-3]).
    pub fn holds(&self, id: u16) -> bool {
        self.exchanges.contains_key(&id)
    }

    pub fn is_empty(&self) -> bool {
        self.exchanges.is_empty()
    }

    fn forget(&mut self, id: u16) {
        self.exchanges.remove(&id);
        if self.exchanges.is_empty() && self.exchanges.capacity() > 16 {
            // Nothing kept by a connection that once had many exchanges open.
            self.exchanges = HashMap::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_stored_once_and_every_copy_is_answered() {
        let mut q = ExactlyOnce::default();
        assert_eq!(q.publish(7), Arrival::New);
        assert_eq!(q.publish(7), Arrival::Resent);
        assert_eq!(q.release(7), Release::Early, "no PUBREL before PUBREC");
        assert_eq!(q.stored(7, true), 2, "the first and its resend");
        assert_eq!(q.publish(7), Arrival::Stored);
        assert!(q.holds(7));
        assert_eq!(q.release(7), Release::Completed);
        assert!(!q.holds(7));
        assert_eq!(q.publish(7), Arrival::New, "the id is free after PUBCOMP");
    }

    #[test]
    fn a_refusal_ends_the_exchange() {
        let mut q = ExactlyOnce::default();
        assert_eq!(q.publish(9), Arrival::New);
        assert_eq!(q.stored(9, false), 1);
        assert!(!q.holds(9));
        assert_eq!(q.release(9), Release::Unknown);
    }

    #[test]
    fn resends_answered_are_bounded() {
        let mut q = ExactlyOnce::default();
        q.publish(1);
        for _ in 0..100 {
            q.publish(1);
        }
        assert_eq!(q.stored(1, true), 1 + RESENDS_ANSWERED_MAX);
    }
}
