//! The two MQTT versions a connection may speak, behind one type: ntex-mqtt's codec for the
//! version its CONNECT names decodes whole packets into what the connection acts on, and the
//! node's answers are written in that version's layout.
//!
//! The answers sent for nearly every message (PUBACK, PUBREC and PUBCOMP with success,
//! PINGRESP) are written here byte by byte, in the layout ntex-mqtt's encoder gives them (MQTT
//! 5: a reason code and an empty property list); the rarer ones go through the encoder.

use std::num::NonZeroU16;

use ntex_bytes::{BytePageSize, BytePages, ByteString, Bytes, BytesMut};
use ntex_codec::{Decoder, Encoder};
use ntex_mqtt::error::DecodeError;
use ntex_mqtt::{v3, v5};

use super::types::{CloseReason, ConnectRefusal};

/// Reason strings sent to MQTT 5 clients when the node closes their session.
fn close_text(reason: CloseReason) -> &'static str {
    match reason {
        CloseReason::TakenOver => "another connection with this client id",
        CloseReason::NotAuthorized => "the token or workspace no longer allows ingest",
        CloseReason::ShuttingDown => "this node is shutting down; connect again",
    }
}

/// Why the node closes a connection on its own account; MQTT 5 clients are told in a
/// DISCONNECT, 3.1.1 clients see the connection close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// 0x81: a packet that cannot be decoded.
    Malformed,
    /// 0x82: a packet the client may not send now (a second CONNECT, AUTH, ...).
    Protocol,
    /// 0x8D: nothing came within one and a half keep-alives.
    KeepAlive,
    /// 0x90: a PUBLISH topic with wildcards.
    TopicName,
    /// 0x94: an unknown or out-of-range topic alias.
    TopicAlias,
    /// 0x95: a packet over `mqtt.packet_bytes_max`.
    TooLarge,
    /// The node closed the session (takeover, revocation, shutdown).
    Closed(CloseReason),
    /// MQTT 3.1.1: a PUBLISH was refused, and 3.1.1 has no negative acknowledgement. Carries
    /// the publish outcome label.
    PublishRefused(&'static str),
}

impl Violation {
    /// The slug logged when the connection closes.
    pub fn slug(self) -> &'static str {
        match self {
            Violation::Malformed => "malformed-packet",
            Violation::Protocol => "protocol-error",
            Violation::KeepAlive => "keep-alive-timeout",
            Violation::TopicName => "topic-name-invalid",
            Violation::TopicAlias => "topic-alias-invalid",
            Violation::TooLarge => "packet-too-large",
            Violation::Closed(reason) => reason.slug(),
            Violation::PublishRefused(outcome) => outcome,
        }
    }

    fn reason_code(self) -> v5::codec::DisconnectReasonCode {
        use v5::codec::DisconnectReasonCode as Code;
        match self {
            Violation::Malformed => Code::MalformedPacket,
            Violation::Protocol => Code::ProtocolError,
            Violation::KeepAlive => Code::KeepAliveTimeout,
            Violation::TopicName => Code::TopicNameInvalid,
            Violation::TopicAlias => Code::TopicAliasInvalid,
            Violation::TooLarge => Code::PacketTooLarge,
            Violation::Closed(CloseReason::TakenOver) => Code::SessionTakenOver,
            Violation::Closed(CloseReason::NotAuthorized) => Code::NotAuthorized,
            Violation::Closed(CloseReason::ShuttingDown) => Code::ServerShuttingDown,
            Violation::PublishRefused(_) => Code::ImplementationSpecificError,
        }
    }
}

impl From<DecodeError> for Violation {
    fn from(err: DecodeError) -> Self {
        match err {
            DecodeError::MaxSizeExceeded { .. } => Violation::TooLarge,
            _ => Violation::Malformed,
        }
    }
}

/// The fields of a CONNECT the node acts on.
pub struct Connect {
    pub client_id: ByteString,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
    pub keep_alive: u16,
    /// MQTT 5: reason strings may be sent (Request Problem Information, 1 unless the client
    /// says 0 [MQTT-3.1.2-29]).
    pub problem_info: bool,
    /// MQTT 5: the client asks for enhanced authentication, which the node does not offer.
    pub auth_method: bool,
    /// MQTT 5: the session expiry asked (0: the session ends with the connection).
    pub session_expiry_secs: u32,
}

/// A PUBLISH as the connection handles it.
pub struct Publish {
    pub qos: u8,
    pub packet_id: Option<NonZeroU16>,
    /// Empty when an MQTT 5 topic alias stands for it.
    pub topic: ByteString,
    pub topic_alias: Option<NonZeroU16>,
    pub payload: Bytes,
}

/// A decoded packet after the CONNECT.
pub enum Incoming {
    Publish(Publish),
    PubRel(NonZeroU16),
    Subscribe {
        packet_id: NonZeroU16,
        filters: usize,
    },
    Unsubscribe {
        packet_id: NonZeroU16,
        filters: usize,
    },
    Ping,
    /// MQTT 5 carries the session expiry it may change.
    Disconnect {
        session_expiry_secs: Option<u32>,
    },
    /// A packet a client may not send here: a second CONNECT, AUTH, acknowledgements of
    /// publishes the node never sends, a server's packet.
    Unexpected,
}

/// ntex-mqtt's codec of the version a connection speaks.
pub enum Codec {
    V311(v3::codec::Codec),
    V5(v5::codec::Codec),
}

impl Codec {
    /// The codec of protocol `level` (4: 3.1.1, 5: 5), taking packets of at most
    /// `packet_bytes_max` bytes, whole (never a payload in chunks).
    pub fn new(level: u8, packet_bytes_max: u32) -> Codec {
        if level == 5 {
            let codec = v5::codec::Codec::new();
            codec.set_max_inbound_size(packet_bytes_max);
            codec.set_min_chunk_size(packet_bytes_max);
            Codec::V5(codec)
        } else {
            let codec = v3::codec::Codec::new();
            codec.set_max_size(packet_bytes_max);
            codec.set_min_chunk_size(packet_bytes_max);
            Codec::V311(codec)
        }
    }

    pub fn is_v5(&self) -> bool {
        matches!(self, Codec::V5(_))
    }

    /// Decodes the CONNECT that `buf` starts with (whole: the caller checked).
    pub fn decode_connect(&self, buf: &mut BytesMut) -> Result<Connect, DecodeError> {
        match self {
            Codec::V311(codec) => match codec.decode(buf)? {
                Some(v3::codec::Decoded::Packet(v3::codec::Packet::Connect(connect), _)) => {
                    let connect = *connect;
                    Ok(Connect {
                        client_id: connect.client_id,
                        username: connect.username,
                        password: connect.password,
                        keep_alive: connect.keep_alive,
                        problem_info: false,
                        auth_method: false,
                        session_expiry_secs: 0,
                    })
                }
                _ => Err(DecodeError::MalformedPacket),
            },
            Codec::V5(codec) => match codec.decode(buf)? {
                Some(v5::codec::Decoded::Packet(v5::codec::Packet::Connect(connect), _)) => {
                    let connect = *connect;
                    // Answers are kept within the client's maximum (5 §3.1.2.11.4): the codec
                    // leaves reason strings out to fit. Below 64 bytes not even the CONNACK
                    // would fit (and the codec's arithmetic would underflow), so that is the
                    // least the node keeps to.
                    if let Some(max) = connect.max_packet_size {
                        codec.set_max_outbound_size(max.get().max(64));
                    }
                    Ok(Connect {
                        client_id: connect.client_id,
                        username: connect.username,
                        password: connect.password,
                        keep_alive: connect.keep_alive,
                        problem_info: connect.request_problem_info,
                        auth_method: connect.auth_method.is_some(),
                        session_expiry_secs: connect.session_expiry_interval_secs,
                    })
                }
                _ => Err(DecodeError::MalformedPacket),
            },
        }
    }

    /// Decodes the packet that `buf` starts with (whole: the caller checked).
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Incoming, DecodeError> {
        match self {
            Codec::V311(codec) => {
                use v3::codec::{Decoded, Packet};
                Ok(match codec.decode(buf)? {
                    Some(Decoded::Publish(publish, payload, _)) => Incoming::Publish(Publish {
                        qos: publish.qos as u8,
                        packet_id: publish.packet_id,
                        topic: publish.topic,
                        topic_alias: None,
                        payload,
                    }),
                    Some(Decoded::Packet(packet, _)) => match packet {
                        Packet::PublishRelease { packet_id } => Incoming::PubRel(packet_id),
                        Packet::Subscribe {
                            packet_id,
                            topic_filters,
                        } => Incoming::Subscribe {
                            packet_id,
                            filters: topic_filters.len(),
                        },
                        Packet::Unsubscribe {
                            packet_id,
                            topic_filters,
                        } => Incoming::Unsubscribe {
                            packet_id,
                            filters: topic_filters.len(),
                        },
                        Packet::PingRequest => Incoming::Ping,
                        Packet::Disconnect => Incoming::Disconnect {
                            session_expiry_secs: None,
                        },
                        _ => Incoming::Unexpected,
                    },
                    // Whole packets only: neither a chunk nor nothing can come.
                    Some(Decoded::PayloadChunk(..)) | None => {
                        return Err(DecodeError::UnexpectedPayload)
                    }
                })
            }
            Codec::V5(codec) => {
                use v5::codec::{Decoded, Packet};
                Ok(match codec.decode(buf)? {
                    Some(Decoded::Publish(publish, payload, _)) => Incoming::Publish(Publish {
                        qos: publish.qos as u8,
                        packet_id: publish.packet_id,
                        topic: publish.topic,
                        topic_alias: publish.properties.topic_alias,
                        payload,
                    }),
                    Some(Decoded::Packet(packet, _)) => match packet {
                        Packet::PublishRelease(release) => Incoming::PubRel(release.packet_id),
                        Packet::Subscribe(subscribe) => Incoming::Subscribe {
                            packet_id: subscribe.packet_id,
                            filters: subscribe.topic_filters.len(),
                        },
                        Packet::Unsubscribe(unsubscribe) => Incoming::Unsubscribe {
                            packet_id: unsubscribe.packet_id,
                            filters: unsubscribe.topic_filters.len(),
                        },
                        Packet::PingRequest => Incoming::Ping,
                        Packet::Disconnect(disconnect) => Incoming::Disconnect {
                            session_expiry_secs: disconnect.session_expiry_interval_secs,
                        },
                        _ => Incoming::Unexpected,
                    },
                    Some(Decoded::PayloadChunk(..)) | None => {
                        return Err(DecodeError::UnexpectedPayload)
                    }
                })
            }
        }
    }
}

/// What the node answers one PUBLISH with, once its outcome is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishAnswer {
    /// QoS 1.
    PubAck,
    /// QoS 2.
    PubRec,
}

/// Where a connection's answers are gathered until they are written, in one write.
#[derive(Default)]
pub struct Answers {
    bytes: Vec<u8>,
}

impl Answers {
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes
    }

    /// Forgets what was written; the room is kept for the next answers unless it grew past a
    /// burst's.
    pub fn written(&mut self) {
        self.bytes.clear();
        if self.bytes.capacity() > 4096 {
            self.bytes = Vec::new();
        }
    }

    /// Gives the room back (an idle connection holds none).
    pub fn release(&mut self) {
        if self.bytes.is_empty() {
            self.bytes = Vec::new();
        }
    }

    pub fn raw(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    fn encoded(&mut self, encode: impl FnOnce(&mut BytePages) -> bool) -> bool {
        let mut pages = BytePages::new(BytePageSize::Size8);
        if !encode(&mut pages) {
            return false;
        }
        while let Some(page) = pages.take() {
            self.bytes.extend_from_slice(&page);
        }
        true
    }

    /// CONNACK accepting the session: `server_keep_alive` when it differs from the client's.
    pub fn connack_accepted(
        &mut self,
        codec: &Codec,
        server_keep_alive: Option<u16>,
        receive_max: u16,
        packet_bytes_max: u32,
        topic_alias_max: u16,
    ) -> bool {
        match codec {
            // No session state is kept between connections (see docs/mqtt.md).
            Codec::V311(_) => {
                self.raw(&[0x20, 0x02, 0x00, 0x00]);
                true
            }
            Codec::V5(codec) => {
                let ack = v5::codec::ConnectAck {
                    receive_max: NonZeroU16::new(receive_max).unwrap_or(NonZeroU16::MIN),
                    max_packet_size: Some(packet_bytes_max),
                    topic_alias_max,
                    server_keepalive_sec: server_keep_alive,
                    // Ingest only: nothing to subscribe to.
                    wildcard_subscription_available: false,
                    subscription_identifiers_available: false,
                    shared_subscription_available: false,
                    ..Default::default()
                };
                let packet = v5::codec::Packet::ConnectAck(Box::new(ack));
                self.encoded(|pages| codec.encodev(packet.into(), pages).is_ok())
            }
        }
    }

    /// CONNACK refusing the CONNECT.
    pub fn connack_refused(&mut self, codec: &Codec, refusal: ConnectRefusal) -> bool {
        match codec {
            Codec::V311(_) => {
                use v3::codec::ConnectAckReason as Code;
                let code = match refusal {
                    ConnectRefusal::BadCredentials => Code::BadUserNameOrPassword,
                    ConnectRefusal::NotAuthorized => Code::NotAuthorized,
                    ConnectRefusal::BadClientId => Code::IdentifierRejected,
                    // 3.1.1 has no "busy": return code 3, server unavailable.
                    ConnectRefusal::NotConfigured | ConnectRefusal::ServerBusy => {
                        Code::ServiceUnavailable
                    }
                    // 3.1.1 has no enhanced authentication to refuse.
                    ConnectRefusal::BadAuthenticationMethod => Code::NotAuthorized,
                };
                self.raw(&[0x20, 0x02, 0x00, u8::from(code)]);
                true
            }
            Codec::V5(codec) => {
                use v5::codec::ConnectAckReason as Code;
                let reason_code = match refusal {
                    ConnectRefusal::BadCredentials => Code::BadUserNameOrPassword,
                    ConnectRefusal::NotAuthorized => Code::NotAuthorized,
                    ConnectRefusal::BadClientId => Code::ClientIdentifierNotValid,
                    ConnectRefusal::NotConfigured => Code::ServerUnavailable,
                    ConnectRefusal::ServerBusy => Code::ServerBusy,
                    ConnectRefusal::BadAuthenticationMethod => Code::BadAuthenticationMethod,
                };
                let ack = v5::codec::ConnectAck {
                    reason_code,
                    ..Default::default()
                };
                let packet = v5::codec::Packet::ConnectAck(Box::new(ack));
                self.encoded(|pages| codec.encodev(packet.into(), pages).is_ok())
            }
        }
    }

    /// MQTT 5: CONNACK 0x81 *malformed packet* for a CONNECT that cannot be decoded (3.1.1
    /// has no code for it: the connection just closes).
    pub fn connack_malformed(&mut self, codec: &Codec) {
        if codec.is_v5() {
            self.raw(&[0x20, 0x03, 0x00, 0x81, 0x00]);
        }
    }

    /// PUBACK or PUBREC with success.
    pub fn publish_stored(&mut self, codec: &Codec, answer: PublishAnswer, id: NonZeroU16) {
        let first = match answer {
            PublishAnswer::PubAck => 0x40,
            PublishAnswer::PubRec => 0x50,
        };
        self.ack(codec, first, id, 0x00);
    }

    /// MQTT 5: PUBACK or PUBREC refusing the message with `code` and, when the client takes
    /// reason strings, `text` (the codec leaves it out when the answer would then be over the
    /// client's Maximum Packet Size, 5 §3.1.2.11.4).
    pub fn publish_refused(
        &mut self,
        codec: &v5::codec::Codec,
        answer: PublishAnswer,
        id: NonZeroU16,
        code: v5::codec::PublishAckReason,
        text: Option<&str>,
    ) -> bool {
        let packet = |text: Option<&str>| {
            let ack = v5::codec::PublishAck {
                packet_id: id,
                reason_code: code,
                properties: Vec::new(),
                reason_string: text.map(ByteString::from),
            };
            match answer {
                PublishAnswer::PubAck => v5::codec::Packet::PublishAck(ack),
                PublishAnswer::PubRec => v5::codec::Packet::PublishReceived(ack),
            }
        };
        self.encoded(|pages| codec.encodev(packet(text).into(), pages).is_ok())
    }

    /// MQTT 5: PUBACK 0x91 *packet identifier in use*.
    pub fn packet_id_in_use(&mut self, id: NonZeroU16) {
        let [hi, lo] = id.get().to_be_bytes();
        self.raw(&[0x40, 0x04, hi, lo, 0x91, 0x00]);
    }

    /// PUBCOMP: success, or MQTT 5's 0x92 *packet identifier not found* when `found` is false
    /// (3.1.1 answers every PUBREL with a PUBCOMP [MQTT-3.6.4-1]).
    pub fn pubcomp(&mut self, codec: &Codec, id: NonZeroU16, found: bool) {
        self.ack(codec, 0x70, id, if found { 0x00 } else { 0x92 });
    }

    fn ack(&mut self, codec: &Codec, first: u8, id: NonZeroU16, code: u8) {
        let [hi, lo] = id.get().to_be_bytes();
        match codec {
            Codec::V311(_) => self.raw(&[first, 0x02, hi, lo]),
            Codec::V5(_) => self.raw(&[first, 0x04, hi, lo, code, 0x00]),
        }
    }

    pub fn pingresp(&mut self) {
        self.raw(&[0xD0, 0x00]);
    }

    /// SUBACK refusing every filter (0x80 on 3.1.1, 0x87 *not authorized* on 5): this is an
    /// ingest-only endpoint.
    pub fn suback_refused(
        &mut self,
        codec: &Codec,
        id: NonZeroU16,
        filters: usize,
        problem_info: bool,
    ) -> bool {
        match codec {
            Codec::V311(codec) => {
                let packet = v3::codec::Packet::SubscribeAck {
                    packet_id: id,
                    status: vec![v3::codec::SubscribeReturnCode::Failure; filters],
                };
                self.encoded(|pages| codec.encodev(packet.into(), pages).is_ok())
            }
            Codec::V5(codec) => {
                let packet = |text: bool| {
                    v5::codec::Packet::SubscribeAck(v5::codec::SubscribeAck {
                        packet_id: id,
                        properties: Vec::new(),
                        reason_string: text.then(|| {
                            ByteString::from_static("ingest only: publish to ingest/{source}")
                        }),
                        status: vec![v5::codec::SubscribeAckReason::NotAuthorized; filters],
                    })
                };
                self.encoded(|pages| codec.encodev(packet(problem_info).into(), pages).is_ok())
            }
        }
    }

    /// UNSUBACK: 3.1.1's has no codes; MQTT 5's says 0x11 *no subscription existed* per filter.
    pub fn unsuback(&mut self, codec: &Codec, id: NonZeroU16, filters: usize) -> bool {
        match codec {
            Codec::V311(_) => {
                let [hi, lo] = id.get().to_be_bytes();
                self.raw(&[0xB0, 0x02, hi, lo]);
                true
            }
            Codec::V5(codec) => {
                let packet = v5::codec::Packet::UnsubscribeAck(v5::codec::UnsubscribeAck {
                    packet_id: id,
                    properties: Vec::new(),
                    reason_string: None,
                    status: vec![v5::codec::UnsubscribeAckReason::NoSubscriptionExisted; filters],
                });
                self.encoded(|pages| codec.encodev(packet.into(), pages).is_ok())
            }
        }
    }

    /// MQTT 5: DISCONNECT saying why the node closes the connection (3.1.1 servers have none
    /// to send: the close is the signal).
    pub fn disconnect(&mut self, codec: &Codec, why: Violation) {
        let Codec::V5(codec) = codec else {
            return;
        };
        let reason_string = match why {
            Violation::Closed(reason) => Some(ByteString::from_static(close_text(reason))),
            _ => None,
        };
        let packet = v5::codec::Packet::Disconnect(v5::codec::Disconnect {
            reason_code: why.reason_code(),
            reason_string,
            ..v5::codec::Disconnect::default()
        });
        if !self.encoded(|pages| codec.encodev(packet.into(), pages).is_ok()) {
            // Over the client's maximum packet size with its reason string: the code alone.
            self.raw(&[0xE0, 0x02, u8::from(why.reason_code()), 0x00]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).expect("non-zero")
    }

    #[test]
    fn hot_answers_have_the_layout_of_each_version() {
        let (v3, v5) = (Codec::new(4, 1024), Codec::new(5, 1024));
        let mut answers = Answers::default();
        answers.publish_stored(&v3, PublishAnswer::PubAck, id(7));
        answers.publish_stored(&v5, PublishAnswer::PubRec, id(7));
        answers.pubcomp(&v3, id(7), false);
        answers.pubcomp(&v5, id(7), false);
        answers.pingresp();
        assert_eq!(
            answers.as_slice(),
            [
                0x40, 0x02, 0, 7, //
                0x50, 0x04, 0, 7, 0, 0, //
                0x70, 0x02, 0, 7, //
                0x70, 0x04, 0, 7, 0x92, 0, //
                0xD0, 0x00
            ]
        );
    }

    #[test]
    fn a_refusal_over_the_clients_maximum_packet_size_goes_without_its_reason_string() {
        let codec = v5::codec::Codec::new();
        codec.set_max_outbound_size(20);
        let mut answers = Answers::default();
        assert!(answers.publish_refused(
            &codec,
            PublishAnswer::PubAck,
            id(9),
            v5::codec::PublishAckReason::QuotaExceeded,
            Some("over the workspace's rate or the node's disk quota; retry later"),
        ));
        let bytes = answers.as_slice();
        assert_eq!((bytes[0], &bytes[2..5]), (0x40, &[0, 9, 0x97][..]));
        assert!(bytes.len() <= 20, "no reason string: {bytes:02X?}");
        answers.written();
        assert!(answers.suback_refused(&Codec::V5(codec), id(3), 2, true));
        assert!(
            answers.as_slice().len() <= 20,
            "{:02X?}",
            answers.as_slice()
        );
    }

    #[test]
    fn refusals_and_disconnects_carry_their_codes() {
        let (v3, v5) = (Codec::new(4, 1024), Codec::new(5, 1024));
        let mut answers = Answers::default();
        assert!(answers.connack_refused(&v3, ConnectRefusal::ServerBusy));
        assert_eq!(answers.as_slice(), [0x20, 0x02, 0x00, 0x03]);
        answers.written();
        answers.disconnect(&v3, Violation::Malformed);
        assert!(
            answers.is_empty(),
            "3.1.1 has no DISCONNECT from the server"
        );
        answers.disconnect(&v5, Violation::TopicAlias);
        assert_eq!(answers.as_slice(), [0xE0, 0x02, 0x94, 0x00]);
        answers.written();
        answers.disconnect(&v5, Violation::Closed(CloseReason::NotAuthorized));
        assert_eq!(answers.as_slice()[..1], [0xE0]);
        assert_eq!(answers.as_slice()[2], 0x87);
    }
}
