//! The QoS 0 lane: plain QoS 0 PUBLISHes taken straight from a connection's read buffer.
//!
//! ntex-mqtt 9.0 runs every PUBLISH through its stack of service calls, and a publish that
//! arrives while an earlier one of the connection is unanswered (a QoS 1 publish waiting for
//! the WAL) gets a task of its own. In the QoS 0 profile that machinery (boxing and moving
//! the calls' futures, the allocator) took most of the MQTT workers' time and Sluice's own
//! checks a tenth. A QoS 0 publish has no answer and touches no protocol state, so the
//! framing filter offers each whole packet to this lane first; the lane checks a plain QoS 0
//! publish and queues it on the connection's batcher exactly as the publish handler would.
//!
//! The lane takes a packet only when nothing depends on ntex seeing it; everything else goes
//! to the codec as before, in its order (QoS 1 and 2 publishes may so be stored after QoS 0
//! publishes sent behind them, which MQTT allows: it orders messages per QoS):
//! - the CONNECT was accepted ([`Lane::open`]) and neither side has closed the session (a
//!   DISCONNECT in a read closes the lane for it and everything after);
//! - it is a plain QoS 0 PUBLISH: no DUP flag (RETAIN is allowed: retained messages are
//!   stored as any other), no MQTT 5 properties (so no topic alias), a topic without
//!   wildcards;
//! - every QoS 0 publish handed to the codec earlier has reached the handler, so QoS 0
//!   messages keep their order;
//! - the codec had a packet within [`NUDGE_EVERY`]: ntex's keep-alive counts the packets it
//!   decodes, so a client that sends only QoS 0 would otherwise be timed out. When that
//!   much time has passed and the read has nothing else for the codec, its last whole packet
//!   goes there;
//! - it is stored at once: accepted by the checks and with room in the connection's queue,
//!   the node's in-flight budget and the workspace's rate. A refusal or a wait is the
//!   handler's, which counts, logs and applies flow control as for any publish.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::batcher::Batcher;
use super::connecting::ConnectingSlot;
use super::ingest::MqttIngest;
use super::packet::{keep, packet_at, Packet};
use super::types::Device;

/// How often at least one packet goes to the codec, for its keep-alive; well under the
/// shortest keep-alive the node grants (1 s).
const NUDGE_EVERY: Duration = Duration::from_millis(250);
/// First byte of a QoS 0 PUBLISH without DUP and RETAIN.
const PLAIN_QOS0_PUBLISH: u8 = 0x30;
/// The RETAIN flag, which changes nothing here: a retained message is stored as any other
/// (there are no subscribers to keep it for).
const RETAIN: u8 = 0x01;
/// The packet type and QoS bits of a fixed header's first byte (DUP and RETAIN masked).
const QOS_BITS_AND_TYPE: u8 = 0xF6;
/// First byte of a DISCONNECT.
const DISCONNECT: u8 = 0xE0;

/// The QoS 0 lane of one connection, shared by its framing filter and its session.
#[derive(Default)]
pub struct Lane {
    open: RefCell<Option<Open>>,
    /// The client or the node ended the session: the lane takes nothing more.
    closed: Cell<bool>,
    /// QoS 0 publishes handed to the codec that the handler has not taken yet.
    behind: Cell<u32>,
    /// When the codec was last given a packet.
    handed_at: Cell<Option<Instant>>,
    /// The connection's place among those not authenticated yet, until its CONNECT is
    /// accepted or it closes.
    connecting: RefCell<Option<ConnectingSlot>>,
}

struct Open {
    ingest: Arc<MqttIngest>,
    device: Rc<Device>,
    batcher: Rc<Batcher>,
    /// MQTT 5 publishes carry a properties length after the topic.
    v5: bool,
}

impl fmt::Debug for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lane")
            .field("open", &self.open.borrow().is_some())
            .field("closed", &self.closed.get())
            .field("behind", &self.behind.get())
            .finish()
    }
}

impl Lane {
    /// Lets the lane take the publishes of an accepted session (unless a DISCONNECT sent right
    /// behind the CONNECT already closed it).
    pub fn open(
        &self,
        ingest: Arc<MqttIngest>,
        device: Rc<Device>,
        batcher: Rc<Batcher>,
        v5: bool,
    ) {
        self.connecting.borrow_mut().take();
        if self.closed.get() {
            return;
        }
        *self.open.borrow_mut() = Some(Open {
            ingest,
            device,
            batcher,
            v5,
        });
    }

    /// The session is over (DISCONNECT, takeover, revoked token): publishes go to ntex, which
    /// drops them.
    pub fn close(&self) {
        self.closed.set(true);
        self.open.borrow_mut().take();
    }

    /// Holds `slot` until the connection's CONNECT is accepted (replacing the standing it
    /// waited with, once it gets a place).
    pub fn connecting(&self, slot: ConnectingSlot) {
        *self.connecting.borrow_mut() = Some(slot);
    }

    /// Whether the connection has not authenticated yet.
    pub fn is_connecting(&self) -> bool {
        self.connecting.borrow().is_some()
    }

    /// Whether the connection has not authenticated and got no place among those that may
    /// (`mqtt.connecting_max`) within the connect timeout: its CONNECT is answered "server
    /// busy".
    pub fn lacks_place(&self) -> bool {
        self.connecting
            .borrow()
            .as_ref()
            .is_some_and(|slot| !slot.has_place())
    }

    /// The publish handler took a QoS 0 publish that the codec was given.
    pub fn caught_up_one(&self) {
        self.behind.set(self.behind.get().saturating_sub(1));
    }

    /// Takes what it can of `whole` (complete packets, then possibly a header the codec must
    /// refuse) and leaves in `kept` the byte ranges the codec gets, in their order.
    pub fn sort(&self, whole: &[u8], packet_bytes_max: u32, kept: &mut Vec<Range<usize>>) {
        kept.clear();
        let open = self.open.borrow();
        // Once per read, not per packet (a vDSO call).
        let now = open.as_ref().map(|_| Instant::now());
        let nudge = match (now, self.handed_at.get()) {
            (Some(now), Some(at)) => now.saturating_duration_since(at) >= NUDGE_EVERY,
            _ => true,
        };
        let mut disconnect = false;
        let mut at = 0;
        while let Packet::Whole { header, total } = packet_at(&whole[at..], packet_bytes_max) {
            let first = whole[at];
            let taken = match open.as_ref() {
                Some(open)
                    if !disconnect
                        && first & !RETAIN == PLAIN_QOS0_PUBLISH
                        && self.behind.get() == 0
                        && !(nudge && kept.is_empty() && at + total == whole.len()) =>
                {
                    open.take(&whole[at + header..at + total])
                }
                _ => false,
            };
            if !taken {
                if first == DISCONNECT {
                    disconnect = true;
                } else if first & QOS_BITS_AND_TYPE == PLAIN_QOS0_PUBLISH {
                    // Counted before the lane opens too: publishes sent right behind the
                    // CONNECT reach the handler after the lane has opened.
                    self.behind.set(self.behind.get().saturating_add(1));
                }
                keep(kept, at..at + total);
            }
            at += total;
        }
        if at < whole.len() {
            keep(kept, at..whole.len());
        }
        drop(open);
        if disconnect {
            self.close();
        }
        if let (Some(now), false) = (now, kept.is_empty()) {
            self.handed_at.set(Some(now));
        }
    }
}

impl Open {
    /// Stores one QoS 0 publish (its variable header and payload) if it is plain and can be
    /// stored at once; `false` leaves it to the codec.
    fn take(&self, body: &[u8]) -> bool {
        let Some((topic, payload)) = split_publish(body, self.v5) else {
            return false;
        };
        self.ingest
            .take_at_once(&self.device, &self.batcher, topic, payload)
    }
}

/// The topic and payload of a QoS 0 PUBLISH body, when the topic is a valid topic name and
/// (MQTT 5) there are no properties.
fn split_publish(body: &[u8], v5: bool) -> Option<(&str, &[u8])> {
    let len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let topic = body.get(2..2 + len)?;
    let mut rest = &body[2 + len..];
    if v5 {
        // A properties length of zero is one 0x00 byte; anything else goes to the codec.
        if rest.first() != Some(&0) {
            return None;
        }
        rest = &rest[1..];
    }
    let topic = std::str::from_utf8(topic).ok()?;
    if topic.is_empty() || topic.contains(['#', '+', '\0']) {
        return None;
    }
    Some((topic, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(topic: &str, v5_props: Option<&[u8]>, payload: &[u8]) -> Vec<u8> {
        let mut b = (topic.len() as u16).to_be_bytes().to_vec();
        b.extend_from_slice(topic.as_bytes());
        if let Some(props) = v5_props {
            b.extend_from_slice(props);
        }
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn plain_publishes_split_into_topic_and_payload() {
        let b = body("ingest/telemetry", None, br#"{"a":1}"#);
        assert_eq!(
            split_publish(&b, false),
            Some(("ingest/telemetry", &br#"{"a":1}"#[..]))
        );
        let b = body("ingest/telemetry", Some(&[0]), br#"{"a":1}"#);
        assert_eq!(
            split_publish(&b, true),
            Some(("ingest/telemetry", &br#"{"a":1}"#[..]))
        );
    }

    #[test]
    fn anything_unusual_is_left_to_the_codec() {
        // MQTT 5 properties (here a topic alias) need ntex's session state.
        let b = body("ingest/telemetry", Some(&[3, 0x23, 0, 1]), b"{}");
        assert_eq!(split_publish(&b, true), None);
        for topic in ["ingest/#", "ingest/+/x", "", "ingest/\0"] {
            assert_eq!(
                split_publish(&body(topic, None, b"{}"), false),
                None,
                "{topic:?}"
            );
        }
        let mut b = body("ingest/telemetry", None, b"{}");
        b[2] = 0xFF;
        assert_eq!(split_publish(&b, false), None, "not UTF-8");
        assert_eq!(split_publish(&[0, 9, b'a'], false), None, "topic cut short");
        assert_eq!(split_publish(&[0], false), None);
    }

    #[test]
    fn an_unopened_lane_takes_nothing_and_counts_what_it_hands_over() {
        let lane = Lane::default();
        let mut kept = Vec::new();
        // Two QoS 0 publishes (one with RETAIN), a QoS 1 publish, then a header declaring more
        // than the maximum.
        let mut buf = vec![0x30, 3, 0, 1, b'a', 0x31, 3, 0, 1, b'a'];
        buf.extend_from_slice(&[0x32, 5, 0, 1, b'a', 0, 1]);
        buf.extend_from_slice(&[0x30, 0x80, 0x10]);
        lane.sort(&buf, 1024, &mut kept);
        assert_eq!(
            (kept.len(), &kept[0]),
            (1, &(0..buf.len())),
            "all of it, in one piece"
        );
        assert_eq!(lane.behind.get(), 2);
        for _ in 0..3 {
            lane.caught_up_one();
        }
        assert_eq!(lane.behind.get(), 0);
        // A DISCONNECT closes it for good.
        lane.sort(&[0xE0, 0, 0x30, 3, 0, 1, b'a'], 1024, &mut kept);
        assert_eq!((kept.len(), &kept[0]), (1, &(0..7)));
        assert!(lane.closed.get());
    }

    /// Fuzz: the lane's publish splitter and its sorting of a read, on any bytes, never panic,
    /// and the ranges it leaves for the codec lie inside the read, in order
    /// (`SLUICE_FUZZ_MS` sets the run).
    #[test]
    fn fuzz_the_lane_splits_and_sorts_any_read() {
        arbtest::arbtest(|u| {
            let bytes: Vec<u8> = u.arbitrary()?;
            let v5: bool = u.arbitrary()?;
            if let Some((topic, payload)) = split_publish(&bytes, v5) {
                assert!(topic.len() + payload.len() < bytes.len());
            }
            let lane = Lane::default();
            let mut kept = Vec::new();
            lane.sort(&bytes, u.int_in_range(1..=1 << 20)?, &mut kept);
            let mut at = 0;
            for range in &kept {
                assert!(range.start >= at && range.start < range.end && range.end <= bytes.len());
                at = range.end;
            }
            Ok(())
        })
        .budget_ms(sluice_config::test_fixtures::fuzz_budget_ms());
    }
}
