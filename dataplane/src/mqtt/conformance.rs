//! What the MQTT specifications ask of a server that ntex-mqtt 9.0 does not do, done by the
//! framing filter on whole packets before the codec sees them, and on ntex-mqtt's answers
//! before they are sent. It answers with bytes of its own and closes; it never stores anything.
//!
//! - **The CONNECT's protocol.** A CONNECT whose protocol name is not `MQTT` or whose level is
//!   not 4 (3.1.1) or 5 gets CONNACK 0x01 *unacceptable protocol version* in the 3.1.1 layout
//!   (levels below 5, so MQTT 3.1's `MQIsdp` too), or 0x84 *unsupported protocol version* in
//!   the MQTT 5 layout (level 5 and up), and the connection closes (3.1.1 §3.1.2.2, 5
//!   §3.1.2.2). ntex-mqtt closes it without a word, and the client cannot tell why.
//! - **A second CONNECT** is a protocol error (3.1.1 and 5 §3.1, [MQTT-3.1.0-2]): MQTT 5 gets
//!   DISCONNECT 0x82, both are closed. ntex-mqtt ignores it.
//! - **Malformed PUBLISHes**: QoS 3, packet id 0, a topic that is not UTF-8 or contains U+0000,
//!   and on MQTT 5 a topic alias of 0. MQTT 5 gets DISCONNECT 0x81 *malformed packet* (0x94
//!   *topic alias invalid* for the alias), 3.1.1 a closed connection. ntex-mqtt answers all of
//!   them with 0x83, and decodes a topic with U+0000 as valid, which the node would store.
//! - **QoS 2 receipt.** ntex-mqtt 9.0 answers a PUBLISH resent before PUBREL with PUBACK 0x91
//!   (MQTT 5) or closes the connection (3.1.1), where both specifications ask for PUBREC again
//!   (§4.3.3); and on MQTT 5 it never frees the packet id at PUBREL, so the id cannot be used
//!   again and the connection is closed with 0x93 after `mqtt.receive_max` QoS 2 messages. So
//!   ntex-mqtt is handed a QoS 2 PUBLISH as QoS 1: its handler stores it as any other, and its
//!   PUBACK, sent once the message is durable, goes out as PUBREC (the two have the same
//!   layout). What follows is answered here: a resend gets that PUBREC again (once the first
//!   one went out, never before the message is durable), PUBREL gets PUBCOMP. The exchanges
//!   waiting for PUBREL are kept for the connection only (the node keeps no session state),
//!   at most one per packet id.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::num::NonZeroU16;
use std::ops::Range;

use ntex_bytes::BytePages;

use super::packet::{keep, packet_at, Packet};

/// Packet types (the fixed header's high four bits).
const CONNECT: u8 = 1;
const PUBLISH: u8 = 3;
const PUBREL: u8 = 6;
/// First bytes that are whole packet kinds (type and the flags the specifications fix).
const FIRST_CONNECT: u8 = 0x10;
const FIRST_PUBACK: u8 = 0x40;
const FIRST_PUBREC: u8 = 0x50;
const FIRST_PUBREL: u8 = 0x62;
const FIRST_PUBCOMP: u8 = 0x70;
const FIRST_DISCONNECT: u8 = 0xE0;
/// The QoS bits of a PUBLISH's first byte, and QoS 1 in them.
const QOS_BITS: u8 = 0b0110;
const QOS_1: u8 = 0b0010;
/// MQTT 5 reason codes. Answers carry one and an empty property list, as ntex-mqtt writes
/// them, so that a client sees one layout.
const SUCCESS: u8 = 0x00;
const NO_PROPERTIES: u8 = 0x00;
const MALFORMED_PACKET: u8 = 0x81;
const PROTOCOL_ERROR: u8 = 0x82;
const PACKET_ID_IN_USE: u8 = 0x91;
const PACKET_ID_NOT_FOUND: u8 = 0x92;
const TOPIC_ALIAS_INVALID: u8 = 0x94;
/// The MQTT 5 Topic Alias property.
const TOPIC_ALIAS: u8 = 0x23;
/// Resends of one QoS 2 message answered at most while it is being stored: each costs a
/// PUBREC later, and a client has no reason to resend more than a few times.
const RESENDS_ANSWERED_MAX: u8 = 16;

/// What the connection speaks, from its first packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    /// No CONNECT seen yet.
    Unknown,
    V311,
    V5,
    /// The node refused a packet and is closing: nothing more is read.
    Closing,
}

/// Where a QoS 2 message of the connection is in its exchange.
#[derive(Debug)]
enum Qos2 {
    /// Handed to ntex-mqtt as QoS 1, not answered yet; the client sent it `resent` times more.
    Storing { resent: u8 },
    /// Stored and answered with these PUBREC bytes; waiting for PUBREL.
    Received(Box<[u8]>),
}

/// What becomes of one incoming packet.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// On to the lane and the codec (possibly rewritten).
    Pass,
    /// Answered here, or nothing to answer: the codec never sees it.
    Drop,
    /// Refused: the answer, if any, is sent and the connection closes.
    Close,
}

/// What [`Conformance::screen`] found in a read.
#[derive(Debug, PartialEq, Eq)]
pub enum Screened {
    /// The kept ranges go on to the lane and the codec.
    Open,
    /// The connection is to be closed after the answers are sent; none of the read goes on.
    Close,
}

/// One connection's conformance state, owned by its framing filter.
#[derive(Debug)]
pub struct Conformance {
    version: Cell<Version>,
    /// QoS 2 exchanges not completed, by packet id (so at most 65,535).
    qos2: RefCell<HashMap<u16, Qos2>>,
    /// How many of them are [`Qos2::Storing`]: ntex-mqtt's answers are read only while some are.
    storing: Cell<usize>,
}

impl Default for Conformance {
    fn default() -> Self {
        Conformance {
            version: Cell::new(Version::Unknown),
            qos2: RefCell::default(),
            storing: Cell::new(0),
        }
    }
}

impl Conformance {
    /// Whether the node refused a packet of this connection and is closing it.
    pub fn is_closing(&self) -> bool {
        self.version.get() == Version::Closing
    }

    /// The QoS a PUBLISH was sent with: ntex-mqtt sees QoS 2 ones as QoS 1.
    pub fn qos_sent(&self, qos: u8, packet_id: Option<NonZeroU16>) -> u8 {
        match packet_id {
            Some(id) if qos == 1 && self.storing.get() > 0 => {
                match self.qos2.borrow().get(&id.get()) {
                    Some(Qos2::Storing { .. }) => 2,
                    _ => qos,
                }
            }
            _ => qos,
        }
    }

    /// Screens the whole packets at the start of `buf` (and a header the codec must refuse
    /// after them): rewrites the QoS of QoS 2 PUBLISHes in place, leaves in `kept` the ranges
    /// that go on, in order, and in `answers` the bytes to send.
    pub fn screen(
        &self,
        buf: &mut [u8],
        packet_bytes_max: u32,
        kept: &mut Vec<Range<usize>>,
        answers: &mut Vec<u8>,
    ) -> Screened {
        kept.clear();
        let mut at = 0;
        while let Packet::Whole { header, total } = packet_at(&buf[at..], packet_bytes_max) {
            match self.incoming(&mut buf[at..at + total], header, answers) {
                Verdict::Pass => keep(kept, at..at + total),
                Verdict::Drop => {}
                Verdict::Close => {
                    self.version.set(Version::Closing);
                    return Screened::Close;
                }
            }
            at += total;
        }
        if at < buf.len() {
            keep(kept, at..buf.len());
        }
        Screened::Open
    }

    fn incoming(&self, packet: &mut [u8], header: usize, answers: &mut Vec<u8>) -> Verdict {
        let first = packet[0];
        match self.version.get() {
            Version::Closing => Verdict::Drop,
            // Anything but a CONNECT first is ntex-mqtt's to refuse (it closes, as the
            // specifications ask [MQTT-3.1.0-1]).
            Version::Unknown if first != FIRST_CONNECT => Verdict::Pass,
            Version::Unknown => match protocol_of(&packet[header..]) {
                Some((b"MQTT", 4)) => {
                    self.version.set(Version::V311);
                    Verdict::Pass
                }
                Some((b"MQTT", 5)) => {
                    self.version.set(Version::V5);
                    Verdict::Pass
                }
                Some((_, level)) => {
                    answers.extend_from_slice(&unsupported_protocol(level));
                    Verdict::Close
                }
                // Too short to name a protocol: malformed, ntex-mqtt closes.
                None => Verdict::Pass,
            },
            version => match first >> 4 {
                CONNECT => refuse(version, PROTOCOL_ERROR, answers),
                PUBLISH => self.publish(version, packet, header, answers),
                PUBREL if first == FIRST_PUBREL => {
                    self.release(version, &packet[header..], answers)
                }
                _ => Verdict::Pass,
            },
        }
    }

    /// A PUBLISH: refused when malformed; QoS 2 handed on as QoS 1 or answered here.
    fn publish(
        &self,
        version: Version,
        packet: &mut [u8],
        header: usize,
        answers: &mut Vec<u8>,
    ) -> Verdict {
        let qos = (packet[0] & QOS_BITS) >> 1;
        if qos == 3 {
            // [MQTT-3.3.1-4]
            return refuse(version, MALFORMED_PACKET, answers);
        }
        let body = &packet[header..];
        // A packet too short for what it declares is ntex-mqtt's to refuse (0x81 already).
        let Some(topic) = string_at(body, 0) else {
            return Verdict::Pass;
        };
        // [MQTT-1.5.3-1], [MQTT-1.5.3-2] (3.1.1); [MQTT-1.5.4-1], [MQTT-1.5.4-2] (5)
        if topic.contains(&0) || std::str::from_utf8(topic).is_err() {
            return refuse(version, MALFORMED_PACKET, answers);
        }
        let mut at = 2 + topic.len();
        let packet_id = if qos > 0 {
            let Some(id) = u16_at(body, at) else {
                return Verdict::Pass;
            };
            if id == 0 {
                // [MQTT-2.3.1-1] (3.1.1); [MQTT-2.2.1-3] (5)
                return refuse(version, MALFORMED_PACKET, answers);
            }
            at += 2;
            Some(id)
        } else {
            None
        };
        if version == Version::V5 && topic_alias(&body[at..]) == Some(0) {
            // [MQTT-3.3.2-8]
            return refuse(version, TOPIC_ALIAS_INVALID, answers);
        }
        match (qos, packet_id) {
            (2, Some(id)) => self.exactly_once(packet, id, answers),
            (1, Some(id)) if self.qos2.borrow().contains_key(&id) => {
                // The id of a QoS 2 exchange not completed [MQTT-2.2.1-3]: what ntex-mqtt
                // answers a packet id in use with.
                match version {
                    Version::V5 => {
                        let [hi, lo] = id.to_be_bytes();
                        answers.extend_from_slice(&[
                            FIRST_PUBACK,
                            0x04,
                            hi,
                            lo,
                            PACKET_ID_IN_USE,
                            NO_PROPERTIES,
                        ]);
                        Verdict::Drop
                    }
                    _ => Verdict::Close,
                }
            }
            _ => Verdict::Pass,
        }
    }

    /// A QoS 2 PUBLISH with packet id `id`.
    fn exactly_once(&self, packet: &mut [u8], id: u16, answers: &mut Vec<u8>) -> Verdict {
        let mut qos2 = self.qos2.borrow_mut();
        match qos2.get_mut(&id) {
            None => {
                qos2.insert(id, Qos2::Storing { resent: 0 });
                self.storing.set(self.storing.get() + 1);
                // DUP and RETAIN stay as they are.
                packet[0] = (packet[0] & !QOS_BITS) | QOS_1;
                Verdict::Pass
            }
            // Answered along with the first, once it is stored.
            Some(Qos2::Storing { resent }) => {
                *resent = resent.saturating_add(1).min(RESENDS_ANSWERED_MAX);
                Verdict::Drop
            }
            Some(Qos2::Received(pubrec)) => {
                answers.extend_from_slice(pubrec);
                Verdict::Drop
            }
        }
    }

    /// A PUBREL: PUBCOMP for an exchange waiting for it.
    fn release(&self, version: Version, body: &[u8], answers: &mut Vec<u8>) -> Verdict {
        let Some(id) = u16_at(body, 0) else {
            return Verdict::Pass;
        };
        let [hi, lo] = id.to_be_bytes();
        let mut qos2 = self.qos2.borrow_mut();
        match qos2.get(&id) {
            Some(Qos2::Received(_)) => {
                qos2.remove(&id);
                if version == Version::V5 {
                    answers.extend_from_slice(&[
                        FIRST_PUBCOMP,
                        0x04,
                        hi,
                        lo,
                        SUCCESS,
                        NO_PROPERTIES,
                    ]);
                } else {
                    answers.extend_from_slice(&[FIRST_PUBCOMP, 0x02, hi, lo]);
                }
                Verdict::Drop
            }
            // PUBREL before PUBREC: the client broke the exchange.
            Some(Qos2::Storing { .. }) => refuse(version, PROTOCOL_ERROR, answers),
            // None waiting (say, one from before a reconnect: the node keeps no session state).
            None if version == Version::V5 => {
                answers.extend_from_slice(&[
                    FIRST_PUBCOMP,
                    0x04,
                    hi,
                    lo,
                    PACKET_ID_NOT_FOUND,
                    NO_PROPERTIES,
                ]);
                Verdict::Drop
            }
            // 3.1.1 has no such code: PUBCOMP, as for any PUBREL [MQTT-3.6.4-1].
            None => {
                answers.extend_from_slice(&[FIRST_PUBCOMP, 0x02, hi, lo]);
                Verdict::Drop
            }
        }
    }

    /// Moves ntex-mqtt's answers from `src` on to `dst`; the PUBACK of a QoS 2 PUBLISH goes out
    /// as PUBREC, once more for each time the client resent it meanwhile.
    pub fn outgoing(&self, src: &mut BytePages, dst: &mut BytePages) {
        if self.storing.get() == 0 {
            src.move_to(dst);
            return;
        }
        let bytes = src.freeze();
        let mut qos2 = self.qos2.borrow_mut();
        let mut at = 0;
        while let Packet::Whole { header, total } = packet_at(&bytes[at..], u32::MAX) {
            let packet = &bytes[at..at + total];
            at += total;
            let id = match u16_at(&packet[header..], 0) {
                Some(id) if packet[0] == FIRST_PUBACK => id,
                _ => {
                    dst.extend_from_slice(packet);
                    continue;
                }
            };
            let Some(Qos2::Storing { resent }) = qos2.get(&id) else {
                dst.extend_from_slice(packet);
                continue;
            };
            let resent = *resent;
            let mut pubrec = packet.to_vec();
            pubrec[0] = FIRST_PUBREC;
            for _ in 0..=resent {
                dst.extend_from_slice(&pubrec);
            }
            self.storing.set(self.storing.get().saturating_sub(1));
            // An MQTT 5 reason code of 0x80 or more ends the exchange: the id is free again
            // (5 §4.3.3). A refused 3.1.1 message is never answered (the connection closes).
            if packet.get(header + 2).is_some_and(|&code| code >= 0x80) {
                qos2.remove(&id);
            } else {
                qos2.insert(id, Qos2::Received(pubrec.into_boxed_slice()));
            }
        }
        // ntex-mqtt encodes whole packets; anything else goes on as it is.
        if at < bytes.len() {
            dst.extend_from_slice(&bytes[at..]);
        }
    }
}

/// The refusal of a packet: MQTT 5 gets DISCONNECT with `reason` first, 3.1.1 only the close.
fn refuse(version: Version, reason: u8, answers: &mut Vec<u8>) -> Verdict {
    if version == Version::V5 {
        answers.extend_from_slice(&[FIRST_DISCONNECT, 0x02, reason, NO_PROPERTIES]);
    }
    Verdict::Close
}

/// The CONNACK refusing a protocol: the MQTT 5 layout for level 5 and up (a bridge's flag, the
/// level's high bit, aside), else the 3.1.1 layout that MQTT 3.1 shares.
fn unsupported_protocol(level: u8) -> Vec<u8> {
    if level & 0x7F >= 5 {
        vec![0x20, 0x03, 0x00, 0x84, 0x00]
    } else {
        vec![0x20, 0x02, 0x00, 0x01]
    }
}

/// The protocol name and level at the start of a CONNECT's variable header.
fn protocol_of(body: &[u8]) -> Option<(&[u8], u8)> {
    let name = string_at(body, 0)?;
    Some((name, *body.get(2 + name.len())?))
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]))
}

/// The bytes of the MQTT string (two-byte length, then the bytes) at `at`.
fn string_at(buf: &[u8], at: usize) -> Option<&[u8]> {
    let len = usize::from(u16_at(buf, at)?);
    buf.get(at + 2..at + 2 + len)
}

/// The Topic Alias among the MQTT 5 PUBLISH properties at the start of `buf`, if there is one
/// and the properties can be read (the codec refuses those that cannot).
fn topic_alias(buf: &[u8]) -> Option<u16> {
    let (len, mut at) = var_int(buf)?;
    let end = at.checked_add(len)?;
    let props = buf.get(..end)?;
    while at < end {
        let id = *props.get(at)?;
        at += 1;
        at += match id {
            TOPIC_ALIAS => return u16_at(props, at),
            // Payload format indicator.
            0x01 => 1,
            // Message expiry interval.
            0x02 => 4,
            // Content type, response topic, correlation data.
            0x03 | 0x08 | 0x09 => 2 + usize::from(u16_at(props, at)?),
            // Subscription identifier.
            0x0B => var_int(&props[at..])?.1,
            // User property: two strings.
            0x26 => {
                let key = 2 + usize::from(u16_at(props, at)?);
                key + 2 + usize::from(u16_at(props, at + key)?)
            }
            _ => return None,
        };
    }
    None
}

/// A variable byte integer: its value and its length in bytes.
fn var_int(buf: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, &byte) in buf.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(name: &[u8], level: u8) -> Vec<u8> {
        let mut body = (name.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(name);
        body.extend_from_slice(&[level, 0x02, 0, 30, 0, 1, b'c']);
        let mut packet = vec![FIRST_CONNECT, body.len() as u8];
        packet.extend_from_slice(&body);
        packet
    }

    fn publish(first: u8, topic: &[u8], id: Option<u16>, props: Option<&[u8]>) -> Vec<u8> {
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic);
        if let Some(id) = id {
            body.extend_from_slice(&id.to_be_bytes());
        }
        if let Some(props) = props {
            body.push(props.len() as u8);
            body.extend_from_slice(props);
        }
        body.extend_from_slice(b"{}");
        let mut packet = vec![first, body.len() as u8];
        packet.extend_from_slice(&body);
        packet
    }

    /// Screens `packets` sent one read each; returns the answers and whether it closed.
    fn screen(c: &Conformance, packet: &[u8]) -> (Vec<u8>, Screened, Vec<u8>) {
        let mut buf = packet.to_vec();
        let (mut kept, mut answers) = (Vec::new(), Vec::new());
        let screened = c.screen(&mut buf, 1024, &mut kept, &mut answers);
        let passed = kept.iter().flat_map(|r| buf[r.clone()].to_vec()).collect();
        (answers, screened, passed)
    }

    fn connected(level: u8) -> Conformance {
        let c = Conformance::default();
        assert_eq!(screen(&c, &connect(b"MQTT", level)).1, Screened::Open);
        c
    }

    #[test]
    fn unknown_protocols_get_the_connack_of_their_generation() {
        for (name, level, answer) in [
            (&b"MQTT"[..], 3, &[0x20, 0x02, 0x00, 0x01][..]),
            (b"MQIsdp", 3, &[0x20, 0x02, 0x00, 0x01]),
            (b"MQTT", 0x84, &[0x20, 0x02, 0x00, 0x01]),
            (b"MQTT", 6, &[0x20, 0x03, 0x00, 0x84, 0x00]),
            (b"MQTX", 5, &[0x20, 0x03, 0x00, 0x84, 0x00]),
        ] {
            let c = Conformance::default();
            let (answers, screened, _) = screen(&c, &connect(name, level));
            assert_eq!((answers.as_slice(), screened), (answer, Screened::Close));
            assert!(c.is_closing());
        }
        let c = Conformance::default();
        let hello = connect(b"MQTT", 5);
        assert_eq!(screen(&c, &hello), (vec![], Screened::Open, hello.clone()));
        // A second CONNECT.
        assert_eq!(
            screen(&c, &hello).0,
            [FIRST_DISCONNECT, 0x02, PROTOCOL_ERROR, 0]
        );
    }

    #[test]
    fn malformed_publishes_are_refused() {
        for (packet, code) in [
            (
                publish(0x36, b"ingest/t", Some(1), Some(&[])),
                MALFORMED_PACKET,
            ),
            (
                publish(0x32, b"ingest/t", Some(0), Some(&[])),
                MALFORMED_PACKET,
            ),
            (
                publish(0x30, b"ingest/\0", None, Some(&[])),
                MALFORMED_PACKET,
            ),
            (
                publish(0x32, b"ingest/\xff", Some(1), Some(&[])),
                MALFORMED_PACKET,
            ),
            (
                publish(
                    0x32,
                    b"ingest/t",
                    Some(1),
                    Some(&[0x01, 1, TOPIC_ALIAS, 0, 0]),
                ),
                TOPIC_ALIAS_INVALID,
            ),
        ] {
            let (answers, screened, _) = screen(&connected(5), &packet);
            assert_eq!(
                (answers, screened),
                (vec![0xE0, 0x02, code, 0], Screened::Close)
            );
            let (answers, screened, _) = screen(&connected(4), &packet);
            if code == MALFORMED_PACKET {
                assert_eq!((answers, screened), (vec![], Screened::Close));
            }
        }
        // A user property before an alias of 1: passed on.
        let props = [0x26, 0, 1, b'k', 0, 1, b'v', TOPIC_ALIAS, 0, 1];
        let fine = publish(0x32, b"ingest/t", Some(1), Some(&props));
        assert_eq!(
            screen(&connected(5), &fine),
            (vec![], Screened::Open, fine.clone())
        );
    }

    #[test]
    fn qos2_goes_to_the_codec_as_qos1_and_is_finished_here() {
        let c = connected(4);
        let first = publish(0x34, b"ingest/t", Some(7), None);
        let (answers, _, passed) = screen(&c, &first);
        assert!(answers.is_empty());
        assert_eq!(passed[0], 0x32, "handed on as QoS 1");
        assert_eq!(c.qos_sent(1, NonZeroU16::new(7)), 2);
        // A resend before the PUBACK is held, and answered along with it.
        let resend = publish(0x3C, b"ingest/t", Some(7), None);
        assert_eq!(screen(&c, &resend), (vec![], Screened::Open, vec![]));
        let mut src = BytePages::default();
        src.extend_from_slice(&[0xD0, 0x00, 0x40, 0x02, 0x00, 0x07]);
        let mut dst = BytePages::default();
        c.outgoing(&mut src, &mut dst);
        assert_eq!(
            dst.freeze().as_ref(),
            [0xD0, 0x00, 0x50, 0x02, 0x00, 0x07, 0x50, 0x02, 0x00, 0x07]
        );
        // Then a resend is answered at once, PUBREL completes it, and the id is free again.
        assert_eq!(screen(&c, &resend).0, [0x50, 0x02, 0x00, 0x07]);
        assert_eq!(
            screen(&c, &[0x62, 0x02, 0x00, 0x07]).0,
            [0x70, 0x02, 0x00, 0x07]
        );
        // 3.1.1 has no "not found": PUBCOMP all the same.
        assert_eq!(
            screen(&c, &[0x62, 0x02, 0x00, 0x07]).0,
            [0x70, 0x02, 0x00, 0x07]
        );
        assert_eq!(screen(&c, &first).2[0], 0x32);
        // MQTT 5: a QoS 1 publish may not take the id meanwhile, and a refused message
        // (reason code 0x80 or more) frees it.
        let c = connected(5);
        let q2 = publish(0x34, b"ingest/t", Some(9), Some(&[]));
        screen(&c, &q2);
        let q1 = publish(0x32, b"ingest/t", Some(9), Some(&[]));
        assert_eq!(screen(&c, &q1).0, [0x40, 0x04, 0x00, 0x09, 0x91, 0x00]);
        let mut src = BytePages::default();
        src.extend_from_slice(&[0x40, 0x04, 0x00, 0x09, 0x97, 0x00]);
        let mut dst = BytePages::default();
        c.outgoing(&mut src, &mut dst);
        assert_eq!(dst.freeze().as_ref(), [0x50, 0x04, 0x00, 0x09, 0x97, 0x00]);
        assert_eq!(
            screen(&c, &[0x62, 0x02, 0x00, 0x09]).0,
            [0x70, 0x04, 0x00, 0x09, 0x92, 0x00]
        );
    }

    /// Fuzz: screening any bytes after a CONNECT of either version never panics, and the
    /// ranges it keeps lie inside the read, in order (`SLUICE_FUZZ_MS` sets the run).
    #[test]
    fn fuzz_screening_any_read() {
        arbtest::arbtest(|u| {
            let c = connected(if u.arbitrary()? { 5 } else { 4 });
            let mut bytes: Vec<u8> = u.arbitrary()?;
            let (mut kept, mut answers) = (Vec::new(), Vec::new());
            c.screen(
                &mut bytes,
                u.int_in_range(1..=1 << 20)?,
                &mut kept,
                &mut answers,
            );
            let mut at = 0;
            for range in &kept {
                assert!(range.start >= at && range.start < range.end && range.end <= bytes.len());
                at = range.end;
            }
            let mut src = BytePages::default();
            src.extend_from_slice(&bytes);
            c.outgoing(&mut src, &mut BytePages::default());
            Ok(())
        })
        .budget_ms(sluice_config::test_fixtures::fuzz_budget_ms());
    }
}
