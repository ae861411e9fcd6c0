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

impl RowsBuilder {
    pub fn new() -> Self {
        RowsBuilder {
            event_id: StringBuilder::new(),
            received_at: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            workspace_id: StringBuilder::new(),
            source: StringBuilder::new(),
            device_id: StringBuilder::new(),
            protocol: StringBuilder::new(),
            topic: StringBuilder::new(),
            payload: StringBuilder::new(),
            rows: 0,
            bytes: 0,
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
    writer.close()?;
    Ok(out)
}
