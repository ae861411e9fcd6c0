//! MQTT's fixed header: where a packet in a buffer ends, read without decoding it. The
//! framing filter, the conformance screen and the QoS 0 lane all cut their reads on it.

use std::ops::Range;

/// What the bytes at the start of a buffer hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet {
    /// A whole packet of `total` bytes, its fixed header `header` of them.
    Whole { header: usize, total: usize },
    /// The start of a packet; more bytes are needed.
    Partial,
    /// A fixed header the codec must see at once: a malformed length, or over the maximum.
    Refused,
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
            return Packet::Refused;
        }
    }
    if remaining > u64::from(max) {
        return Packet::Refused;
    }
    let total = header + remaining as usize;
    if buf.len() < total {
        return Packet::Partial;
    }
    Packet::Whole { header, total }
}

/// Adds `range` of a read to those kept for the codec, merged with the last when they touch.
pub fn keep(kept: &mut Vec<Range<usize>>, range: Range<usize>) {
    match kept.last_mut() {
        Some(last) if last.end == range.start => last.end = range.end,
        _ => kept.push(range),
    }
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
            Packet::Refused
        );
        assert_eq!(
            packet_at(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], u32::MAX),
            Packet::Refused
        );
    }

    #[test]
    fn kept_ranges_merge_when_they_touch() {
        let mut kept = Vec::new();
        keep(&mut kept, 0..5);
        keep(&mut kept, 5..9);
        keep(&mut kept, 12..14);
        assert_eq!(kept, vec![0..9, 12..14]);
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
