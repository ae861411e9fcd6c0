//! The few MQTT 3.1.1 / 5 packets a publishing device needs, encoded and decoded by hand so
//! that the simulator spends its CPU on sending, not on a general-purpose client.

use bytes::{Buf, BufMut, BytesMut};

/// MQTT protocol level: 4 is 3.1.1, 5 is MQTT 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

impl Version {
    fn level(self) -> u8 {
        match self {
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }
}

/// A packet from the server, as far as a publisher cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    ConnAck {
        code: u8,
    },
    /// PUBACK (QoS 1) or PUBREC (QoS 2); `code` is the MQTT 5 reason code (0 on 3.1.1).
    Ack {
        packet_id: u16,
        code: u8,
        qos2: bool,
    },
    PubComp {
        packet_id: u16,
    },
    PingResp,
    Disconnect {
        code: u8,
    },
    /// Anything else (a server may send what a publisher ignores).
    Other,
}

fn put_str(buf: &mut BytesMut, s: &[u8]) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s);
}

fn put_varint(buf: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

pub fn connect(
    buf: &mut BytesMut,
    version: Version,
    client_id: &str,
    username: Option<&str>,
    password: Option<&str>,
    keep_alive: u16,
) {
    let mut body = BytesMut::with_capacity(64);
    put_str(&mut body, b"MQTT");
    body.put_u8(version.level());
    let mut flags = 0x02; // clean session / clean start
    if username.is_some() {
        flags |= 0x80;
    }
    if password.is_some() {
        flags |= 0x40;
    }
    body.put_u8(flags);
    body.put_u16(keep_alive);
    if version == Version::V5 {
        body.put_u8(0); // no properties
    }
    put_str(&mut body, client_id.as_bytes());
    if let Some(u) = username {
        put_str(&mut body, u.as_bytes());
    }
    if let Some(p) = password {
        put_str(&mut body, p.as_bytes());
    }
    buf.put_u8(0x10);
    put_varint(buf, body.len());
    buf.put_slice(&body);
}

pub fn publish(
    buf: &mut BytesMut,
    version: Version,
    topic: &str,
    qos: u8,
    packet_id: u16,
    payload: &[u8],
) {
    let props = usize::from(version == Version::V5);
    let id_len = if qos > 0 { 2 } else { 0 };
    let len = 2 + topic.len() + id_len + props + payload.len();
    buf.reserve(len + 5);
    buf.put_u8(0x30 | (qos << 1));
    put_varint(buf, len);
    put_str(buf, topic.as_bytes());
    if qos > 0 {
        buf.put_u16(packet_id);
    }
    if props == 1 {
        buf.put_u8(0);
    }
    buf.put_slice(payload);
}

pub fn pubrel(buf: &mut BytesMut, packet_id: u16) {
    buf.put_slice(&[0x62, 0x02]);
    buf.put_u16(packet_id);
}

pub fn pingreq(buf: &mut BytesMut) {
    buf.put_slice(&[0xC0, 0x00]);
}

pub fn disconnect(buf: &mut BytesMut) {
    buf.put_slice(&[0xE0, 0x00]);
}

/// Takes one whole packet off the front of `buf`, if there is one.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Incoming>, &'static str> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut len = 0usize;
    let mut shift = 0;
    let mut header = 1;
    loop {
        let Some(&byte) = buf.get(header) else {
            return Ok(None);
        };
        len |= usize::from(byte & 0x7F) << shift;
        header += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err("malformed remaining length");
        }
    }
    if buf.len() < header + len {
        return Ok(None);
    }
    let kind = buf[0] >> 4;
    buf.advance(header);
    let mut body = buf.split_to(len);
    let id = |body: &mut BytesMut| if body.len() >= 2 { body.get_u16() } else { 0 };
    Ok(Some(match kind {
        2 => {
            let code = body.get(1).copied().unwrap_or(0);
            Incoming::ConnAck { code }
        }
        4 | 5 => {
            let packet_id = id(&mut body);
            let code = body.first().copied().unwrap_or(0);
            Incoming::Ack {
                packet_id,
                code,
                qos2: kind == 5,
            }
        }
        7 => Incoming::PubComp {
            packet_id: id(&mut body),
        },
        13 => Incoming::PingResp,
        14 => Incoming::Disconnect {
            code: body.first().copied().unwrap_or(0),
        },
        _ => Incoming::Other,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_decode_with_and_without_reason_codes() {
        let mut buf = BytesMut::new();
        buf.put_slice(&[0x40, 0x02, 0x00, 0x07]);
        buf.put_slice(&[0x40, 0x03, 0x01, 0x00, 0x87]);
        buf.put_slice(&[0x50, 0x02, 0x00, 0x09, 0x70]);
        assert_eq!(
            decode(&mut buf),
            Ok(Some(Incoming::Ack {
                packet_id: 7,
                code: 0,
                qos2: false
            }))
        );
        assert_eq!(
            decode(&mut buf),
            Ok(Some(Incoming::Ack {
                packet_id: 256,
                code: 0x87,
                qos2: false
            }))
        );
        assert_eq!(
            decode(&mut buf),
            Ok(Some(Incoming::Ack {
                packet_id: 9,
                code: 0,
                qos2: true
            }))
        );
        // A partial packet waits for more bytes.
        assert_eq!(decode(&mut buf), Ok(None));
        buf.put_slice(&[0x02, 0x00, 0x09]);
        assert_eq!(
            decode(&mut buf),
            Ok(Some(Incoming::PubComp { packet_id: 9 }))
        );
    }

    #[test]
    fn a_long_publish_gets_a_multi_byte_length() {
        let mut buf = BytesMut::new();
        publish(&mut buf, Version::V5, "ingest/t", 1, 3, &[b'x'; 300]);
        // 2 + 8 topic + 2 id + 1 props + 300 payload = 313 = 0xB9 0x02.
        assert_eq!(&buf[..3], &[0x32, 0xB9, 0x02]);
        assert_eq!(buf.len(), 3 + 313);
    }
}
