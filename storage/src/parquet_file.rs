//! The Parquet schema of events and the Arrow builders that fill it.
//!
//! | column | type | notes |
//! | --- | --- | --- |
//! | `event_id` | string | UUIDv7, unique per event, sortable by time |
//! | `received_at` | timestamp(µs, UTC) | when the node received the request |
//! | `workspace_id` | string | UUID of the workspace |
//! | `source` | string | source slug |
//! | `device_id` | string, nullable | `X-Device-Id` or MQTT client id |
//! | `protocol` | string | `http` or `mqtt` |
//! | `topic` | string, nullable | MQTT topic |
//! | `payload` | string | the event as JSON text, exactly as sent |
//!
//! Files are zstd-compressed; `payload` and `event_id` skip dictionary encoding (every value is
//! distinct), the repetitive columns keep it.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use crate::event::{event_id, IngestBatch};

/// Rows per Parquet row group: large enough for scans, small enough to bound reader memory.
const ROW_GROUP_ROWS: usize = 1 << 20;

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new(
            "received_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("workspace_id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("device_id", DataType::Utf8, true),
        Field::new("protocol", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, true),
        Field::new("payload", DataType::Utf8, false),
    ]))
});

/// The Arrow schema of every events file.
pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}

/// Columns being filled for one future file.
pub struct RowsBuilder {
    event_id: StringBuilder,
    received_at: TimestampMicrosecondBuilder,
    workspace_id: StringBuilder,
    source: StringBuilder,
    device_id: StringBuilder,
    protocol: StringBuilder,
    topic: StringBuilder,
    payload: StringBuilder,
    rows: usize,
    bytes: usize,
}

impl Default for RowsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// How much a batch held: its rows and the text bytes of each string column, in the order of
/// [`RowsBuilder`]'s string columns. Sizes the next batch of the same key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchSize {
    pub rows: usize,
    pub text_bytes: [usize; 7],
}

impl BatchSize {
    /// This size scaled down so that its text bytes stay within `bytes_max`.
    pub fn capped(self, bytes_max: usize) -> BatchSize {
        let total: usize = self.text_bytes.iter().sum();
        if total <= bytes_max {
            return self;
        }
        let scale = |n: usize| ((n as u128 * bytes_max as u128) / total as u128) as usize;
        BatchSize {
            rows: scale(self.rows),
            text_bytes: self.text_bytes.map(scale),
        }
    }
}

impl RowsBuilder {
    pub fn new() -> Self {
        Self::with_capacity(BatchSize::default())
    }

    /// Builders with room for a batch of `size` from the start. A builder that outgrows its
    /// buffer copies it into one twice as large and faults in fresh pages; for a key that
    /// fills 1,000,000-row batches that growth was about a sixth of the shipper's time (QoS 0
    /// profile, 2026-11-25). Sizing each batch like the key's previous one avoids it.
    pub fn with_capacity(size: BatchSize) -> Self {
        let text = |i: usize| StringBuilder::with_capacity(size.rows, size.text_bytes[i]);
        RowsBuilder {
            event_id: text(0),
            received_at: TimestampMicrosecondBuilder::with_capacity(size.rows).with_timezone("UTC"),
            workspace_id: text(1),
            source: text(2),
            device_id: text(3),
            protocol: text(4),
            topic: text(5),
            payload: text(6),
            rows: 0,
            bytes: 0,
        }
    }

    /// What the builders hold so far.
    pub fn size(&self) -> BatchSize {
        BatchSize {
            rows: self.rows,
            text_bytes: [
                self.event_id.values_slice().len(),
                self.workspace_id.values_slice().len(),
                self.source.values_slice().len(),
                self.device_id.values_slice().len(),
                self.protocol.values_slice().len(),
                self.topic.values_slice().len(),
                self.payload.values_slice().len(),
            ],
        }
    }

    /// Rows added so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Approximate bytes held by the builders.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds every event of `batch`. Payloads that are not UTF-8 (impossible for batches the
    /// data plane validated) are replaced by `null` JSON rather than dropped, so row counts stay
    /// exact; the count of such payloads is returned.
    pub fn append(&mut self, batch: &IngestBatch) -> usize {
        let env = &batch.envelope;
        let mut id_buf = uuid::Uuid::encode_buffer();
        let workspace = env.workspace_id.hyphenated().to_string();
        let mut bad = 0;
        for i in 0..batch.len() {
            let id = event_id(env.first_event_id, i as u32);
            self.event_id
                .append_value(id.hyphenated().encode_lower(&mut id_buf));
            self.received_at.append_value(env.received_at_us);
            self.workspace_id.append_value(&workspace);
            self.source.append_value(&env.source);
            self.device_id.append_option(env.device_id.as_deref());
            self.protocol.append_value(env.protocol.as_str());
            self.topic.append_option(env.topic.as_deref());
            let payload = batch.payload(i);
            match std::str::from_utf8(payload) {
                Ok(text) => self.payload.append_value(text),
                Err(_) => {
                    bad += 1;
                    self.payload.append_value("null");
                }
            }
            self.bytes += payload.len() + 96;
        }
        self.rows += batch.len();
        bad
    }

    /// Turns the builders into one record batch.
    pub fn finish(mut self) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.event_id.finish()),
            Arc::new(self.received_at.finish()),
            Arc::new(self.workspace_id.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.device_id.finish()),
            Arc::new(self.protocol.finish()),
            Arc::new(self.topic.finish()),
            Arc::new(self.payload.finish()),
        ];
        // The columns match SCHEMA by construction; a mismatch is a bug in this module.
        RecordBatch::try_new(schema(), columns).expect("columns match the events schema")
    }
}

/// Encodes `batch` as a zstd Parquet file with `metadata` in its footer.
pub fn encode(
    batch: &RecordBatch,
    metadata: Vec<(String, String)>,
) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_column_dictionary_enabled(ColumnPath::from("payload"), false)
        .set_column_dictionary_enabled(ColumnPath::from("event_id"), false)
        .set_key_value_metadata(Some(
            metadata
                .into_iter()
                .map(|(k, v)| KeyValue::new(k, v))
                .collect(),
        ))
        .build();
    let mut out = Vec::with_capacity(batch.get_array_memory_size() / 4);
    let mut writer = ArrowWriter::try_new(&mut out, schema(), Some(props))?;
    writer.write(batch)?;
    crate::chaos::point("parquet-encode");
    writer.close()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Envelope, IngestBatch, Protocol};

    fn batch(events: usize) -> IngestBatch {
        let mut payloads = Vec::new();
        let mut ends = Vec::new();
        for i in 0..events {
            payloads.extend_from_slice(format!(r#"{{"i":{i},"t":"x"}}"#).as_bytes());
            ends.push(payloads.len() as u32);
        }
        IngestBatch {
            envelope: Envelope {
                first_event_id: uuid::Uuid::now_v7(),
                received_at_us: 1_764_000_000_000_000,
                workspace_id: uuid::Uuid::now_v7(),
                source: "telemetry".into(),
                device_id: Some("dev-1".into()),
                protocol: Protocol::Mqtt,
                topic: Some("ingest/telemetry/dev-1".into()),
            },
            payloads,
            ends,
        }
    }

    #[test]
    fn a_batch_sized_like_the_last_one_holds_the_same_rows() {
        let input = [batch(700), batch(1), batch(2_000)];
        let mut first = RowsBuilder::new();
        for b in &input {
            first.append(b);
        }
        let size = first.size();
        assert_eq!(size.rows, 2_701);
        assert_eq!(size.text_bytes[0], 2_701 * 36, "event ids");
        let mut sized = RowsBuilder::with_capacity(size);
        for b in &input {
            sized.append(b);
        }
        assert_eq!(sized.size(), size);
        assert_eq!(sized.finish(), first.finish());
    }

    #[test]
    fn a_size_is_capped_in_proportion() {
        let size = BatchSize {
            rows: 1_000,
            text_bytes: [36_000, 36_000, 0, 0, 0, 0, 128_000],
        };
        assert_eq!(size.capped(1 << 30), size);
        let half = size.capped(100_000);
        assert_eq!(half.rows, 500);
        assert_eq!(half.text_bytes, [18_000, 18_000, 0, 0, 0, 0, 64_000]);
        assert_eq!(size.capped(0).rows, 0);
    }
}
