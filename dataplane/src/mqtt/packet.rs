//! What the connection reads of a packet without decoding it: where a packet in a buffer ends
//! (the fixed header), the protocol a CONNECT names, and an MQTT 5 PUBLISH's topic alias.

/// What the bytes at the start of a buffer hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet {
    /// A whole packet of `total` bytes, its fixed header `header` of them.
    Whole { header: usize, total: usize },
    /// The start of a packet; more bytes are needed.
    Partial,
    /// A remaining length over the maximum.
    TooLarge,
    /// A remaining length of more than four bytes.
    Malformed,
}

/// Reads the fixed header at the start of `buf`.
pub fn packet_at(buf: &[u8], max: u32) -> Packet {
    if buf.len() < 2 {
        return Packet::Partial;
    }
    let mut remaining: u64 = 0;
    let mut header = 1;
    loop {
        let Some(&byte) = buf.get(header) else {
            return Packet::Partial;
        };
        remaining |= u64::from(byte & 0x7F) << (7 * (header - 1));
        header += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if header > 4 {
            // A fifth length byte is malformed.
            return Packet::Malformed;
        }
    }
    if remaining > u64::from(max) {
        return Packet::TooLarge;
    }
    let total = header + remaining as usize;
    if buf.len() < total {
        return Packet::Partial;
    }
    Packet::Whole { header, total }
}

/// The protocol name and level at the start of a CONNECT's variable header.
pub fn protocol_of(body: &[u8]) -> Option<(&[u8], u8)> {
    let name = string_at(body, 0)?;
    Some((name, *body.get(2 + name.len())?))
}

/// The CONNACK refusing a protocol: the MQTT 5 layout for level 5 and up (a bridge's flag, the
/// level's high bit, aside), else the 3.1.1 layout that MQTT 3.1 shares (3.1.1 and 5
/// §3.1.2.2).
pub fn unsupported_protocol(level: u8) -> &'static [u8] {
    if level & 0x7F >= 5 {
        &[0x20, 0x03, 0x00, 0x84, 0x00]
    } else {
        &[0x20, 0x02, 0x00, 0x01]
    }
}

/// The Topic Alias of an MQTT 5 PUBLISH, read from its body (after the fixed header) when the
/// packet can be read that far. The codec decodes an alias of 0 as malformed (0x81), where
/// MQTT 5 asks for 0x94 *topic alias invalid* [MQTT-3.3.2-8].
pub fn publish_topic_alias(body: &[u8], qos: u8) -> Option<u16> {
    let topic = string_at(body, 0)?;
    let at = 2 + topic.len() + if qos > 0 { 2 } else { 0 };
    topic_alias(body.get(at..)?)
}

/// The MQTT 5 Topic Alias property among the properties at the start of `buf`.
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

/// The MQTT 5 Topic Alias property's identifier.
const TOPIC_ALIAS: u8 = 0x23;

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]))
}

/// The bytes of the MQTT string (two-byte length, then the bytes) at `at`.
fn string_at(buf: &[u8], at: usize) -> Option<&[u8]> {
    let len = usize::from(u16_at(buf, at)?);
    buf.get(at + 2..at + 2 + len)
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

    #[test]
    fn fixed_headers_tell_whole_partial_and_refused_packets_apart() {
        assert_eq!(
            packet_at(&[0xC0, 0x00], 1024),
            Packet::Whole {
                header: 2,
                total: 2
            }
        );
        assert_eq!(packet_at(&[0x30, 0x05, 1, 2], 1024), Packet::Partial);
        assert_eq!(packet_at(&[0x30], 1024), Packet::Partial);
        // 200 = 0xC8 0x01: a two-byte length.
        let mut buf = vec![0x30, 0xC8, 0x01];
        buf.extend(std::iter::repeat_n(0u8, 200));
        assert_eq!(
            packet_at(&buf, 1024),
            Packet::Whole {
                header: 3,
                total: 203
            }
        );
        assert_eq!(
            packet_at(&[0x30, 0x80, 0x80, 0x01, 0], 1024),
            Packet::TooLarge
        );
        assert_eq!(
            packet_at(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], u32::MAX),
            Packet::Malformed
        );
    }

    #[test]
    fn connects_name_their_protocol() {
        let body = [0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 30];
        assert_eq!(protocol_of(&body), Some((&b"MQTT"[..], 5)));
        assert_eq!(protocol_of(&body[..6]), None, "no level");
        assert_eq!(protocol_of(&[0, 9, b'M']), None, "name cut short");
        assert_eq!(unsupported_protocol(3), [0x20, 0x02, 0x00, 0x01]);
        assert_eq!(unsupported_protocol(6), [0x20, 0x03, 0x00, 0x84, 0x00]);
    }

    #[test]
    fn topic_aliases_are_found_among_other_properties() {
        let mut body = vec![0, 1, b't', 0, 7];
        // Properties: payload format (1 byte), a user property ("k", "v"), topic alias 0.
        body.extend_from_slice(&[12, 0x01, 1, 0x26, 0, 1, b'k', 0, 1, b'v', 0x23, 0, 0]);
        body.extend_from_slice(b"{}");
        assert_eq!(publish_topic_alias(&body, 1), Some(0));
        assert_eq!(publish_topic_alias(&[0, 1, b't', 0], 0), None, "no alias");
        assert_eq!(publish_topic_alias(&[0, 1, b't', 3, 0x99, 0, 0], 0), None);
    }

    /// Fuzz: any bytes and limit give a header of 2 to 5 bytes inside a packet inside the
    /// buffer, or no packet; never a panic (`SLUICE_FUZZ_MS` sets the run).
    #[test]
    fn fuzz_fixed_headers_stay_inside_the_buffer() {
        arbtest::arbtest(|u| {
            let bytes: Vec<u8> = u.arbitrary()?;
            let max: u32 = u.arbitrary()?;
            if let Packet::Whole { header, total } = packet_at(&bytes, max) {
                assert!((2..=5).contains(&header) && header <= total && total <= bytes.len());
                assert!(total - header <= max as usize);
            }
            Ok(())
        })
        .budget_ms(sluice_config::test_fixtures::fuzz_budget_ms());
    }
}
