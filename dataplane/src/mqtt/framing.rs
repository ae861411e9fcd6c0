//! A filter under the MQTT codec that passes on whole packets only.
//!
//! ntex-mqtt 9.0 hands a PUBLISH to the dispatcher as soon as its header is decoded and
//! streams the rest of a split payload as separate chunks. With several publishes in flight
//! the dispatcher may run a chunk before the publish it belongs to, and the connection fails
//! ("UnexpectedPayload", measured under load) or a payload is cut short. Holding back the
//! tail of a packet until all of it has arrived means the codec only ever sees whole packets,
//! so every payload arrives in one piece. A packet declaring more than the maximum size is
//! passed on at once, for the codec to refuse, so nothing waits for bytes that will never be
//! accepted.
//!
//! Whole packets are first screened for what the MQTT specifications ask that ntex-mqtt does
//! not do ([`Conformance`]), which may answer or refuse them here, and then offered to the
//! QoS 0 lane.

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::rc::Rc;

use futures::FutureExt;
use ntex_bytes::{Bytes, BytesMut};
use ntex_io::{FilterBuf, FilterLayer};
use ntex_mqtt::error::PayloadError;
use ntex_mqtt::Payload;

use super::conformance::{Conformance, Screened};
use super::connecting::ConnectingSlot;
use super::lane::Lane;
use super::packet::{packet_at, Packet};

/// A PUBLISH payload, read.
pub enum PayloadRead {
    /// The whole payload, or why it could not be read.
    Now(Result<Bytes, PayloadError>),
    /// A streamed payload (not expected behind [`WholePackets`]), still arriving.
    Later(Pin<Box<dyn Future<Output = Result<Bytes, PayloadError>>>>),
}

/// Reads `payload` at once when it is whole, which behind [`WholePackets`] it is. Awaiting
/// `read_all` instead would keep its future in the publish handler's state, and ntex moves that
/// state through each of its service layers for every PUBLISH (`memmove` was the largest item in
/// the QoS 0 profile); a streamed payload is awaited from the heap.
pub fn read_payload(payload: Payload) -> PayloadRead {
    if payload.is_fixed() {
        if let Some(read) = payload.read_all().now_or_never() {
            return PayloadRead::Now(read);
        }
    }
    PayloadRead::Later(Box::pin(async move { payload.read_all().await }))
}

/// Room for kept ranges a connection holds on to between reads.
const KEPT_RANGES_KEPT: usize = 16;

/// Passes complete MQTT packets from the socket's buffer to the codec's, after offering
/// them to the connection's QoS 0 [`Lane`].
#[derive(Debug)]
pub struct WholePackets {
    /// Largest remaining length the node accepts (`mqtt.packet_bytes_max`).
    packet_bytes_max: u32,
    /// Largest remaining length of the first packet, the CONNECT (`mqtt.connect_bytes_max`).
    connect_bytes_max: u32,
    /// Found by the CONNECT handler through [`FilterLayer::query`].
    lane: Rc<Lane>,
    /// The connection's conformance state, found by the CONNECT handler the same way.
    conformance: Rc<Conformance>,
    /// What the lane leaves for the codec, reused from read to read.
    kept: RefCell<Vec<Range<usize>>>,
}

impl WholePackets {
    /// The filter of a connection with standing `slot` among those not authenticated yet.
    pub fn new(
        packet_bytes_max: u32,
        connect_bytes_max: u32,
        slot: ConnectingSlot,
    ) -> WholePackets {
        let lane = Rc::new(Lane::default());
        lane.connecting(slot);
        WholePackets {
            packet_bytes_max,
            connect_bytes_max,
            lane,
            conformance: Rc::default(),
            kept: RefCell::default(),
        }
    }

    /// The connection's lane (which holds its standing until the CONNECT is accepted).
    pub fn lane(&self) -> Rc<Lane> {
        self.lane.clone()
    }
}

impl FilterLayer for WholePackets {
    fn query(&self, id: TypeId) -> Option<Box<dyn Any>> {
        if id == TypeId::of::<Rc<Lane>>() {
            Some(Box::new(self.lane.clone()))
        } else if id == TypeId::of::<Rc<Conformance>>() {
            Some(Box::new(self.conformance.clone()))
        } else {
            None
        }
    }

    fn process_read_buf(&self, buf: &FilterBuf<'_>) -> io::Result<()> {
        // Answers of the conformance screen; allocated only when there are some.
        let mut answers = Vec::new();
        let screened = buf.with_read_buffers(|src, dst| {
            let Some(src) = src.as_mut() else {
                return Ok(Screened::Open);
            };
            if self.conformance.is_closing() {
                // Refused, and closing: nothing more is read while the answer goes out.
                src.clear();
                return Ok(Screened::Open);
            }
            // Until its CONNECT is accepted a client gets room for a small CONNECT only: one
            // declaring more is cut off before its bytes are held.
            if self.lane.is_connecting()
                && packet_at(src, self.connect_bytes_max) == Packet::Refused
            {
                return Err(io::Error::other(format!(
                    "a first packet over mqtt.connect_bytes_max ({} bytes)",
                    self.connect_bytes_max
                )));
            }
            let mut whole = complete_prefix(src, self.packet_bytes_max);
            if whole == 0 {
                return Ok(Screened::Open);
            }
            let mut kept = self.kept.borrow_mut();
            let screened = self.conformance.screen(
                &mut src[..whole],
                self.packet_bytes_max,
                &mut kept,
                &mut answers,
            );
            if screened == Screened::Close {
                src.clear();
                return Ok(Screened::Close);
            }
            if !(kept.len() == 1 && kept[0] == (0..whole)) {
                // The screen answered some packets itself (QoS 2 resends, PUBREL): the rest
                // goes on without them. Rare, so copied.
                let mut rest = BytesMut::with_capacity(src.len());
                for range in kept.iter() {
                    rest.extend_from_slice(&src[range.clone()]);
                }
                let screened_len = rest.len();
                rest.extend_from_slice(&src[whole..]);
                *src = rest;
                whole = screened_len;
                if whole == 0 {
                    return Ok(Screened::Open);
                }
            }
            self.lane
                .sort(&src[..whole], self.packet_bytes_max, &mut kept);
            let untouched = kept.len() == 1 && kept[0] == (0..whole);
            if !untouched {
                // The lane took some: the codec gets the rest, copied (markers and the like).
                for range in kept.iter() {
                    dst.extend_from_slice(&src[range.clone()]);
                }
                src.advance_to(whole);
                // A read alternating kinds of packets leaves many ranges; an idle connection
                // should not keep their room.
                kept.clear();
                kept.shrink_to(KEPT_RANGES_KEPT);
                return Ok(Screened::Open);
            }
            if whole == src.len() && dst.is_empty() {
                // The common case, everything complete: hand the buffer over without copying.
                std::mem::swap(src, dst);
            } else {
                dst.extend_from_slice(&src.split_to(whole));
            }
            Ok(Screened::Open)
        })?;
        if !answers.is_empty() {
            buf.with_write_buffers(|src, dst| {
                // After what ntex-mqtt wrote before, in order.
                self.conformance.outgoing(src, dst);
                dst.extend_from_slice(&answers);
            });
        }
        if screened == Screened::Close {
            // Graceful: the answer is written before the connection closes.
            buf.io().close();
        }
        Ok(())
    }

    fn process_write_buf(&self, buf: &FilterBuf<'_>) -> io::Result<()> {
        buf.with_write_buffers(|src, dst| {
            self.conformance.outgoing(src, dst);
            Ok(())
        })
    }
}

/// Bytes at the start of `buf` that form whole packets, plus everything after a header the
/// codec must see at once (malformed length, or over `max`).
fn complete_prefix(buf: &BytesMut, max: u32) -> usize {
    let mut at = 0;
    loop {
        match packet_at(&buf[at..], max) {
            Packet::Whole { total, .. } => at += total,
            Packet::Partial => return at,
            Packet::Refused => return buf.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(b: &[u8]) -> BytesMut {
        BytesMut::from(b)
    }

    #[test]
    fn only_whole_packets_pass() {
        // PINGREQ, then a PUBLISH of 5 bytes of which 3 arrived.
        let buf = bytes(&[0xC0, 0x00, 0x30, 0x05, 1, 2, 3]);
        assert_eq!(complete_prefix(&buf, 1024), 2);
        let buf = bytes(&[0xC0, 0x00, 0x30, 0x05, 1, 2, 3, 4, 5]);
        assert_eq!(complete_prefix(&buf, 1024), 9);
        // A lone first byte, a length still arriving.
        assert_eq!(complete_prefix(&bytes(&[0x30]), 1024), 0);
        assert_eq!(complete_prefix(&bytes(&[0x30, 0x80]), 1024), 0);
    }

    #[test]
    fn multi_byte_lengths_are_read() {
        // 200 = 0xC8 0x01
        let mut buf = vec![0x30, 0xC8, 0x01];
        buf.extend(std::iter::repeat_n(0u8, 199));
        assert_eq!(complete_prefix(&bytes(&buf), 1024), 0);
        buf.push(0);
        assert_eq!(complete_prefix(&bytes(&buf), 1024), 203);
    }

    #[test]
    fn oversized_and_malformed_headers_go_straight_to_the_codec() {
        // Declares 16 KiB with a limit of 1 KiB: passed on for the codec to refuse.
        let buf = bytes(&[0x30, 0x80, 0x80, 0x01, 0]);
        assert_eq!(complete_prefix(&buf, 1024), 5);
        let buf = bytes(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
        assert_eq!(complete_prefix(&buf, u32::MAX), 6);
    }
}
