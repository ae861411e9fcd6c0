//! The event model: one accepted ingest request becomes one [`IngestBatch`], stored as one WAL
//! record and later expanded into Parquet rows.
//!
//! Event ids are derived, not stored: a batch carries one UUIDv7 and event `i` gets that id with
//! `i` added to its random tail. Ids are therefore stable across WAL replays (a replayed batch
//! yields exactly the same ids), unique within a batch, and sortable by time.
//!
//! The encoding is versioned by its first byte and must stay readable by later releases: a node
//! upgraded with a non-empty WAL replays records written by the previous version.

use std::sync::Arc;

pub use sluice_config::shaping::{Column, ColumnType};
use uuid::Uuid;

/// First byte of every encoded batch; bump it when the layout changes and keep a decoder for
/// the old one.
const FORMAT_V1: u8 = 1;
/// As version 1, but the payloads are one zstd frame after their decompressed length (u32).
const FORMAT_V2_ZSTD: u8 = 2;
/// As version 1, with the shaping section ([`Shaping`]) between the event ends and the
/// payloads: written only for sources with a schema or tag rules, so that every other record
/// stays version 1 or 2 and pays nothing for shaping.
const FORMAT_V3_SHAPED: u8 = 3;
/// As version 3, with the payloads compressed as in version 2.
const FORMAT_V4_SHAPED_ZSTD: u8 = 4;
/// Longest validation error text kept for a quarantined event.
pub const QUARANTINE_ERROR_LEN_MAX: usize = 1024;
/// Payloads this large or larger are stored compressed when that makes them smaller. The WAL's
/// `fdatasync` takes time in proportion to the bytes it writes (≈ 1 ms for a 130 KB group of
/// MQTT records on the 2-core VM, 0.15 ms for 5 KB), and acknowledgements wait for it; small
/// records gain little and skip the work (at 4 KiB, MQTT QoS 1 records of ~6 KB paid for
/// compression without a measurable gain).
const COMPRESS_MIN_BYTES: usize = 8 << 10;
/// zstd's fastest regular level: telemetry JSON still shrinks several times.
const ZSTD_LEVEL: i32 = 1;
/// Compressed payloads are at most a WAL record's size once decompressed, so a larger
/// recorded length is corruption, not data (and is not allocated).
const PAYLOADS_MAX: usize = crate::wal::RECORD_BYTES_MAX;

/// The 62 random bits at the end of a UUIDv7 (after the variant bits).
const TAIL_MASK: u128 = (1u128 << 62) - 1;

/// How an event reached the node: the configuration's protocols.
pub use sluice_config::snapshot::Protocol;

/// A protocol's byte in the record encoding.
fn protocol_code(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Http => 1,
        Protocol::Mqtt => 2,
    }
}

fn protocol_from_code(code: u8) -> Option<Protocol> {
    match code {
        1 => Some(Protocol::Http),
        2 => Some(Protocol::Mqtt),
        _ => None,
    }
}

/// The envelope shared by every event of one accepted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Id of the first event; event `i` has [`event_id`]`(first_event_id, i)`.
    pub first_event_id: Uuid,
    /// When the node received the request, microseconds since the Unix epoch (UTC).
    pub received_at_us: i64,
    pub workspace_id: Uuid,
    /// Source slug, as in the ingest URL.
    pub source: String,
    pub device_id: Option<String>,
    pub protocol: Protocol,
    pub topic: Option<String>,
}

/// Id of event `index` of a batch whose first event has id `first`.
pub fn event_id(first: Uuid, index: u32) -> Uuid {
    let bits = first.as_u128();
    let tail = (bits & TAIL_MASK).wrapping_add(u128::from(index)) & TAIL_MASK;
    Uuid::from_u128((bits & !TAIL_MASK) | tail)
}

/// One accepted ingest request: an envelope and the raw JSON text of each event's payload.
///
/// Payloads are kept as the exact bytes the device sent (already validated as JSON objects),
/// concatenated in one buffer, so that no per-event allocation happens on the hot path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestBatch {
    pub envelope: Envelope,
    /// All payloads back to back.
    pub payloads: Vec<u8>,
    /// End offset of each payload in `payloads`.
    pub ends: Vec<u32>,
    /// What the source's schema and tag rules made of the batch; `None` for a source with
    /// neither (records of versions 1 and 2).
    pub shaping: Option<Box<Shaping>>,
}

/// What a source's schema and its workspace's tag rules made of a batch at admission: all the
/// shipper needs to write it, recorded with it because the shipper may replay the record after
/// a restart under a newer configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shaping {
    /// The version of the schema the events were checked against; `None` for a source
    /// without a schema (tag rules only).
    pub schema_version: Option<String>,
    /// The typed columns of that schema (`sluice_config::shaping::columns`), shared by every
    /// batch of the source until its schema changes.
    pub columns: Arc<[Column]>,
    /// Whether the files keep the `payload` column.
    pub keep_payload: bool,
    /// Tags every event of the batch has (topic, header and query parameter rules).
    pub tags: Vec<(String, String)>,
    /// Each event's own tags and device, when the workspace has payload pointer rules for
    /// the source: then they replace `tags` and the envelope's device for every event.
    pub events: Option<Vec<EventShaping>>,
    /// The events the schema refused under `on_invalid = quarantine`, by index, in order.
    pub quarantined: Vec<Quarantined>,
}

/// One event's tags and device, where payload pointer rules make them differ per event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventShaping {
    pub tags: Vec<(String, String)>,
    /// A rule's `device_id`, replacing the envelope's.
    pub device_id: Option<String>,
}

/// An event refused by its schema and kept in the quarantine dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub index: u32,
    /// The validator's message, at most [`QUARANTINE_ERROR_LEN_MAX`] bytes.
    pub error: String,
}

impl Shaping {
    /// The tags of event `index`.
    pub fn tags_of(&self, index: usize) -> &[(String, String)] {
        match &self.events {
            Some(events) => events.get(index).map_or(&[][..], |e| &e.tags[..]),
            None => &self.tags,
        }
    }

    /// The device a rule gave event `index`, if any.
    pub fn device_of(&self, index: usize) -> Option<&str> {
        self.events
            .as_ref()
            .and_then(|events| events.get(index))
            .and_then(|e| e.device_id.as_deref())
    }

    fn encoded_len(&self) -> usize {
        let pairs = |tags: &[(String, String)]| {
            2 + tags
                .iter()
                .map(|(k, v)| str_len(Some(k)) + str_len(Some(v)))
                .sum::<usize>()
        };
        1 + self.schema_version.as_deref().map_or(0, |v| {
            str_len(Some(v))
                + 2
                + self
                    .columns
                    .iter()
                    .map(|c| str_len(Some(&c.name)) + 1)
                    .sum::<usize>()
        }) + pairs(&self.tags)
            + 4
            + self
                .quarantined
                .iter()
                .map(|q| 4 + str_len(Some(&q.error)))
                .sum::<usize>()
            + self.events.as_ref().map_or(0, |events| {
                events
                    .iter()
                    .map(|e| pairs(&e.tags) + str_len(e.device_id.as_deref()))
                    .sum()
            })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let flags = u8::from(self.schema_version.is_some())
            | (u8::from(self.keep_payload) << 1)
            | (u8::from(self.events.is_some()) << 2);
        out.push(flags);
        if let Some(version) = &self.schema_version {
            put_str(out, Some(version));
            out.extend_from_slice(
                &(self.columns.len().min(u16::MAX as usize) as u16).to_le_bytes(),
            );
            for column in self.columns.iter().take(u16::MAX as usize) {
                put_str(out, Some(&column.name));
                out.push(column_code(column.column_type));
            }
        }
        put_pairs(out, &self.tags);
        out.extend_from_slice(&(self.quarantined.len() as u32).to_le_bytes());
        for q in &self.quarantined {
            out.extend_from_slice(&q.index.to_le_bytes());
            put_str(out, Some(&q.error));
        }
        if let Some(events) = &self.events {
            for event in events {
                put_pairs(out, &event.tags);
                put_str(out, event.device_id.as_deref());
            }
        }
    }

    fn decode(r: &mut Reader<'_>, count: usize) -> Result<Self, DecodeError> {
        let flags = r.u8()?;
        let (schema_version, columns) = if flags & 1 != 0 {
            let version = r.str()?.ok_or(DecodeError::Truncated)?;
            let n = u16::from_le_bytes(r.array()?) as usize;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                let name = r.str()?.ok_or(DecodeError::Truncated)?;
                let code = r.u8()?;
                let column_type = column_from_code(code).ok_or(DecodeError::BadShaping)?;
                columns.push(Column { name, column_type });
            }
            (Some(version), columns)
        } else {
            (None, Vec::new())
        };
        let tags = r.pairs()?;
        let n = u32::from_le_bytes(r.array()?) as usize;
        if n > count {
            return Err(DecodeError::BadShaping);
        }
        let mut quarantined = Vec::with_capacity(n);
        let mut previous = None;
        for _ in 0..n {
            let index = u32::from_le_bytes(r.array()?);
            if index as usize >= count || previous.is_some_and(|p| p >= index) {
                return Err(DecodeError::BadShaping);
            }
            previous = Some(index);
            let error = r.str()?.ok_or(DecodeError::Truncated)?;
            quarantined.push(Quarantined { index, error });
        }
        let events = if flags & 4 != 0 {
            let mut events = Vec::with_capacity(count.min(r.remaining() / 3));
            for _ in 0..count {
                let tags = r.pairs()?;
                let device_id = r.str()?;
                events.push(EventShaping { tags, device_id });
            }
            Some(events)
        } else {
            None
        };
        Ok(Shaping {
            schema_version,
            columns: columns.into(),
            keep_payload: flags & 2 != 0,
            tags,
            events,
            quarantined,
        })
    }
}

fn column_code(t: ColumnType) -> u8 {
    match t {
        ColumnType::String => 1,
        ColumnType::Timestamp => 2,
        ColumnType::Int64 => 3,
        ColumnType::Float64 => 4,
        ColumnType::Boolean => 5,
        ColumnType::Json => 6,
    }
}

fn column_from_code(code: u8) -> Option<ColumnType> {
    Some(match code {
        1 => ColumnType::String,
        2 => ColumnType::Timestamp,
        3 => ColumnType::Int64,
        4 => ColumnType::Float64,
        5 => ColumnType::Boolean,
        6 => ColumnType::Json,
        _ => return None,
    })
}

fn put_pairs(out: &mut Vec<u8>, pairs: &[(String, String)]) {
    let n = pairs.len().min(u16::MAX as usize);
    out.extend_from_slice(&(n as u16).to_le_bytes());
    for (k, v) in &pairs[..n] {
        put_str(out, Some(k));
        put_str(out, Some(v));
    }
}

/// Why bytes read from the WAL are not a valid batch.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("batch record is truncated")]
    Truncated,
    #[error("unknown batch format version {0}")]
    UnknownVersion(u8),
    #[error("unknown protocol code {0}")]
    UnknownProtocol(u8),
    #[error("text field is not UTF-8")]
    NotUtf8,
    #[error("payload offsets are inconsistent")]
    BadOffsets,
    #[error("compressed payloads do not decompress to their recorded length")]
    BadCompression,
    #[error("the shaping section is inconsistent")]
    BadShaping,
}

impl IngestBatch {
    /// Number of events in the batch.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The payload of event `index` as JSON text.
    pub fn payload(&self, index: usize) -> &[u8] {
        let start = if index == 0 {
            0
        } else {
            self.ends[index - 1] as usize
        };
        &self.payloads[start..self.ends[index] as usize]
    }

    /// Bytes this batch occupies once encoded; used for quotas before encoding.
    pub fn encoded_len(&self) -> usize {
        let env = &self.envelope;
        // version, first id, received_at, workspace id, protocol
        1 + 16
            + 8
            + 16
            + 1
            + str_len(Some(&env.source))
            + str_len(env.device_id.as_deref())
            + str_len(env.topic.as_deref())
            + 4
            + 4 * self.ends.len()
            + self.shaping.as_ref().map_or(0, |s| s.encoded_len())
            + self.payloads.len()
    }

    /// The batch encoded compressed (version 2) when its payloads are large enough and shrink,
    /// as [`encode_into`](Self::encode_into) writes it otherwise. Worth it where the WAL's
    /// syncs, not the CPU, hold acknowledgements back: MQTT records (QoS 0 with 16 devices,
    /// +28% on the 2-core VM). HTTP NDJSON bodies are not compressed: that benchmark is bound
    /// by CPU, and compressing on the HTTP thread cost 17% of its events/s.
    pub fn encode_compact(&self) -> Vec<u8> {
        if (COMPRESS_MIN_BYTES..=PAYLOADS_MAX).contains(&self.payloads.len()) {
            let compressed = COMPRESSOR.with(|c| {
                c.borrow_mut()
                    .as_mut()
                    .and_then(|c| c.compress(&self.payloads).ok())
            });
            if let Some(compressed) = compressed.filter(|c| c.len() + 4 < self.payloads.len()) {
                let mut out = Vec::with_capacity(
                    self.encoded_len() - self.payloads.len() + 4 + compressed.len(),
                );
                let version = if self.shaping.is_some() {
                    FORMAT_V4_SHAPED_ZSTD
                } else {
                    FORMAT_V2_ZSTD
                };
                self.encode_head(&mut out, version);
                out.extend_from_slice(&(self.payloads.len() as u32).to_le_bytes());
                out.extend_from_slice(&compressed);
                return out;
            }
        }
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoded batch to `out` (version 1, uncompressed).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        let version = if self.shaping.is_some() {
            FORMAT_V3_SHAPED
        } else {
            FORMAT_V1
        };
        self.encode_head(out, version);
        out.extend_from_slice(&self.payloads);
    }

    /// Everything before the payloads: version, envelope, event count and ends.
    fn encode_head(&self, out: &mut Vec<u8>, version: u8) {
        let env = &self.envelope;
        out.push(version);
        out.extend_from_slice(env.first_event_id.as_bytes());
        out.extend_from_slice(&env.received_at_us.to_le_bytes());
        out.extend_from_slice(env.workspace_id.as_bytes());
        out.push(protocol_code(env.protocol));
        put_str(out, Some(&env.source));
        put_str(out, env.device_id.as_deref());
        put_str(out, env.topic.as_deref());
        out.extend_from_slice(&(self.ends.len() as u32).to_le_bytes());
        for end in &self.ends {
            out.extend_from_slice(&end.to_le_bytes());
        }
        if let Some(shaping) = &self.shaping {
            shaping.encode(out);
        }
    }

    /// Decodes a batch written by [`IngestBatch::encode_into`] or
    /// [`IngestBatch::encode_compact`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader { bytes, pos: 0 };
        let version = r.u8()?;
        if !(FORMAT_V1..=FORMAT_V4_SHAPED_ZSTD).contains(&version) {
            return Err(DecodeError::UnknownVersion(version));
        }
        let shaped = version == FORMAT_V3_SHAPED || version == FORMAT_V4_SHAPED_ZSTD;
        let compressed = version == FORMAT_V2_ZSTD || version == FORMAT_V4_SHAPED_ZSTD;
        let first_event_id = Uuid::from_bytes(r.array()?);
        let received_at_us = i64::from_le_bytes(r.array()?);
        let workspace_id = Uuid::from_bytes(r.array()?);
        let code = r.u8()?;
        let protocol = protocol_from_code(code).ok_or(DecodeError::UnknownProtocol(code))?;
        let source = r.str()?.ok_or(DecodeError::Truncated)?;
        let device_id = r.str()?;
        let topic = r.str()?;
        let count = u32::from_le_bytes(r.array()?) as usize;
        let mut ends = Vec::with_capacity(count.min(bytes.len() / 4));
        for _ in 0..count {
            ends.push(u32::from_le_bytes(r.array()?));
        }
        let shaping = if shaped {
            Some(Box::new(Shaping::decode(&mut r, count)?))
        } else {
            None
        };
        let payloads = if compressed {
            let len = u32::from_le_bytes(r.array()?) as usize;
            if len > PAYLOADS_MAX {
                return Err(DecodeError::BadCompression);
            }
            let payloads = DECOMPRESSOR
                .with(|d| {
                    d.borrow_mut()
                        .as_mut()
                        .and_then(|d| d.decompress(r.rest(), len).ok())
                })
                .ok_or(DecodeError::BadCompression)?;
            if payloads.len() != len {
                return Err(DecodeError::BadCompression);
            }
            payloads
        } else {
            r.rest().to_vec()
        };
        let mut previous = 0u32;
        for &end in &ends {
            if end < previous || end as usize > payloads.len() {
                return Err(DecodeError::BadOffsets);
            }
            previous = end;
        }
        if previous as usize != payloads.len() {
            return Err(DecodeError::BadOffsets);
        }
        Ok(IngestBatch {
            envelope: Envelope {
                first_event_id,
                received_at_us,
                workspace_id,
                source,
                device_id,
                protocol,
                topic,
            },
            payloads,
            ends,
            shaping,
        })
    }
}

thread_local! {
    // One zstd context per thread, reused: creating one per record costs more than
    // compressing a small record. `None` if zstd could not allocate one (then records are
    // stored uncompressed, or fail to decode as corrupt).
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Compressor::new(ZSTD_LEVEL).ok());
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().ok());
}

/// Encoded size of an optional string written by [`put_str`].
fn str_len(value: Option<&str>) -> usize {
    value.map_or(1, |s| 3 + s.len().min(u16::MAX as usize))
}

/// Writes an optional string as a presence byte, a u16 length and the bytes. Callers bound
/// every string well below 64 KiB (slugs, device ids, topics).
fn put_str(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            let len = s.len().min(u16::MAX as usize);
            out.extend_from_slice(&(len as u16).to_le_bytes());
            out.extend_from_slice(&s.as_bytes()[..len]);
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn str(&mut self) -> Result<Option<String>, DecodeError> {
        if self.u8()? == 0 {
            return Ok(None);
        }
        let len = u16::from_le_bytes(self.array()?) as usize;
        let bytes = self.take(len)?;
        let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8)?;
        Ok(Some(s.to_owned()))
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn pairs(&mut self) -> Result<Vec<(String, String)>, DecodeError> {
        let n = u16::from_le_bytes(self.array()?) as usize;
        let mut pairs = Vec::with_capacity(n.min(self.remaining() / 2));
        for _ in 0..n {
            let k = self.str()?.ok_or(DecodeError::Truncated)?;
            let v = self.str()?.ok_or(DecodeError::Truncated)?;
            pairs.push((k, v));
        }
        Ok(pairs)
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = &self.bytes[self.pos..];
        self.pos = self.bytes.len();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> IngestBatch {
        let payloads = br#"{"a":1}{"b":"x"}"#.to_vec();
        IngestBatch {
            envelope: Envelope {
                first_event_id: Uuid::now_v7(),
                received_at_us: 1_700_000_000_000_000,
                workspace_id: Uuid::now_v7(),
                source: "telemetry".into(),
                device_id: Some("dev-1".into()),
                protocol: Protocol::Http,
                topic: None,
            },
            payloads,
            ends: vec![7, 16],
            shaping: None,
        }
    }

    #[test]
    fn batch_survives_encode_and_decode() {
        let batch = sample();
        let mut buf = Vec::new();
        batch.encode_into(&mut buf);
        assert_eq!(buf.len(), batch.encoded_len());
        let decoded = IngestBatch::decode(&buf).expect("decodes");
        assert_eq!(decoded, batch);
        assert_eq!(decoded.payload(1), br#"{"b":"x"}"#);
    }

    fn telemetry(events: usize) -> IngestBatch {
        let mut batch = sample();
        batch.payloads.clear();
        batch.ends.clear();
        for i in 0..events {
            let event = format!(
                r#"{{"device":"sensor-{}","seq":{i},"temp":{}.5}}"#,
                i % 7,
                i % 40
            );
            batch.payloads.extend_from_slice(event.as_bytes());
            batch.ends.push(batch.payloads.len() as u32);
        }
        batch
    }

    #[test]
    fn large_batches_are_stored_compressed_and_read_back_exactly() {
        let batch = telemetry(500);
        let record = batch.encode_compact();
        assert_eq!(record[0], FORMAT_V2_ZSTD);
        assert!(
            record.len() * 3 < batch.encoded_len(),
            "{} bytes for {}",
            record.len(),
            batch.encoded_len()
        );
        assert_eq!(IngestBatch::decode(&record).expect("decodes"), batch);

        // Small or incompressible payloads stay version 1.
        let small = sample();
        assert_eq!(small.encode_compact()[0], FORMAT_V1);
        let mut noise = sample();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        noise.payloads = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        noise.ends = vec![8192];
        let record = noise.encode_compact();
        assert_eq!(record[0], FORMAT_V1);
        assert_eq!(IngestBatch::decode(&record).expect("decodes"), noise);
    }

    #[test]
    fn damaged_compressed_batches_are_errors_not_panics() {
        let batch = telemetry(300);
        let record = batch.encode_compact();
        assert_eq!(record[0], FORMAT_V2_ZSTD);
        for cut in (0..record.len()).step_by(7) {
            assert!(IngestBatch::decode(&record[..cut]).is_err(), "cut at {cut}");
        }
        // A recorded length that does not match what the frame holds.
        let head = batch.encoded_len() - batch.payloads.len();
        let mut wrong = record.clone();
        wrong[head..head + 4].copy_from_slice(&(batch.payloads.len() as u32 + 1).to_le_bytes());
        assert!(matches!(
            IngestBatch::decode(&wrong),
            Err(DecodeError::BadCompression)
        ));
        let mut huge = record.clone();
        huge[head..head + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            IngestBatch::decode(&huge),
            Err(DecodeError::BadCompression)
        ));
    }

    fn shaped(mut batch: IngestBatch, per_event: bool) -> IngestBatch {
        let n = batch.len();
        batch.shaping = Some(Box::new(Shaping {
            schema_version: Some("0123456789abcdef".into()),
            columns: vec![
                Column {
                    name: "seq".into(),
                    column_type: ColumnType::Int64,
                },
                Column {
                    name: "temp".into(),
                    column_type: ColumnType::Float64,
                },
            ]
            .into(),
            keep_payload: false,
            tags: vec![("site".into(), "lyon".into())],
            events: per_event.then(|| {
                (0..n)
                    .map(|i| EventShaping {
                        tags: vec![("n".into(), i.to_string())],
                        device_id: (i % 2 == 0).then(|| format!("d-{i}")),
                    })
                    .collect()
            }),
            quarantined: vec![Quarantined {
                index: (n - 1) as u32,
                error: "\"x\" is not of type \"number\"".into(),
            }],
        }));
        batch
    }

    /// Records of sources with a schema or tag rules (versions 3 and 4) carry what the
    /// shipper needs, compressed or not; others stay versions 1 and 2.
    #[test]
    fn shaped_batches_survive_encode_and_decode() {
        for per_event in [false, true] {
            let small = shaped(sample(), per_event);
            let mut buf = Vec::new();
            small.encode_into(&mut buf);
            assert_eq!(buf[0], FORMAT_V3_SHAPED);
            assert_eq!(buf.len(), small.encoded_len());
            assert_eq!(IngestBatch::decode(&buf).expect("decodes"), small);
            let large = shaped(telemetry(500), per_event);
            let record = large.encode_compact();
            assert_eq!(record[0], FORMAT_V4_SHAPED_ZSTD);
            let decoded = IngestBatch::decode(&record).expect("decodes");
            assert_eq!(decoded, large);
            let shaping = decoded.shaping.as_deref().expect("shaping");
            assert_eq!(shaping.tags_of(0).len(), 1);
            assert_eq!(shaping.device_of(0).is_some(), per_event);
            for cut in (0..record.len()).step_by(13) {
                assert!(IngestBatch::decode(&record[..cut]).is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn truncated_batch_is_an_error_not_a_panic() {
        let mut buf = Vec::new();
        sample().encode_into(&mut buf);
        for cut in 0..buf.len() - 9 {
            assert!(IngestBatch::decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn event_ids_are_distinct_and_keep_version_and_variant() {
        // A first id whose random tail is all ones: adding wraps inside the tail.
        let first = Uuid::from_u128(Uuid::now_v7().as_u128() | TAIL_MASK);
        let a = event_id(first, 0);
        let b = event_id(first, 1);
        assert_ne!(a, b);
        assert_eq!(b.get_version_num(), 7);
        assert_eq!(b.get_variant(), uuid::Variant::RFC4122);
    }

    /// Fuzz: any bytes, and real records cut or damaged anywhere, decode to a batch whose
    /// offsets hold, or to an error; never to a panic (`SLUICE_FUZZ_MS` sets the run).
    #[test]
    fn fuzz_batch_decoding_never_panics_and_offsets_hold() {
        let batch = IngestBatch {
            envelope: Envelope {
                first_event_id: Uuid::now_v7(),
                received_at_us: 1,
                workspace_id: Uuid::now_v7(),
                source: "telemetry".into(),
                device_id: Some("d".into()),
                protocol: Protocol::Mqtt,
                topic: Some("ingest/telemetry".into()),
            },
            payloads: br#"{"a":1}{"b":[2,3]}"#.repeat(300),
            ends: (1..=600)
                .map(|i| {
                    if i % 2 == 1 {
                        7 + 18 * (i / 2)
                    } else {
                        18 * (i / 2)
                    }
                })
                .collect(),
            shaping: None,
        };
        let mut plain = Vec::new();
        batch.encode_into(&mut plain);
        let seeds = [plain, batch.encode_compact()];
        arbtest::arbtest(|u| {
            let mut bytes = match u.int_in_range(0..=2u8)? {
                0 => u.arbitrary::<Vec<u8>>()?,
                n => seeds[usize::from(n - 1)].clone(),
            };
            for _ in 0..u.int_in_range(0..=4u8)? {
                if bytes.is_empty() {
                    break;
                }
                let at = u.choose_index(bytes.len())?;
                if u.arbitrary()? {
                    bytes.truncate(at);
                } else {
                    bytes[at] ^= u.int_in_range(1..=255u8)?;
                }
            }
            if let Ok(batch) = IngestBatch::decode(&bytes) {
                let mut previous = 0;
                for &end in &batch.ends {
                    assert!(end >= previous && end as usize <= batch.payloads.len());
                    previous = end;
                }
            }
            Ok(())
        })
        .budget_ms(sluice_config::test_fixtures::fuzz_budget_ms());
    }
}
