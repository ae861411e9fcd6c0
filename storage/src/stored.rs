//! Reading events back from the Parquet files the shipper wrote ([`crate::parquet_file`]),
//! for export endpoints: one file's rows, column by column, with each event's payload as
//! JSON text (the `payload` column, or an object rebuilt from the typed columns of a source
//! that keeps no payload).

use std::borrow::Cow;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, MapArray, RecordBatch, StringArray};
use arrow_schema::{DataType, TimeUnit};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sluice_config::shaping::FIXED_COLUMNS;

/// Why a file cannot be read as events.
#[derive(Debug, thiserror::Error)]
pub enum StoredError {
    #[error("reading Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("reading Parquet: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("the file has no {0} column of the expected type")]
    MissingColumn(&'static str),
}

/// The rows of one record batch of an events file.
pub struct StoredRows {
    rows: usize,
    /// Memory the arrays take.
    bytes: usize,
    event_id: StringArray,
    received_at: arrow_array::PrimitiveArray<TimestampMicrosecondType>,
    source: StringArray,
    device_id: StringArray,
    protocol: StringArray,
    topic: StringArray,
    payload: Option<StringArray>,
    tags: Option<MapArray>,
    /// Typed columns, by name, for rebuilding a payload that is not kept.
    typed: Vec<(String, ArrayRef)>,
}

/// Decodes a whole events file (as the shipper writes them: one row group per million rows).
pub fn read_file(bytes: Bytes) -> Result<Vec<StoredRows>, StoredError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?
        .with_batch_size(64 << 10)
        .build()?;
    let mut out = Vec::new();
    for batch in reader {
        out.push(StoredRows::of(&batch?)?);
    }
    Ok(out)
}

fn text(batch: &RecordBatch, name: &'static str) -> Result<StringArray, StoredError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_string_opt::<i32>())
        .cloned()
        .ok_or(StoredError::MissingColumn(name))
}

impl StoredRows {
    fn of(batch: &RecordBatch) -> Result<StoredRows, StoredError> {
        let received_at = batch
            .column_by_name("received_at")
            .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
            .cloned()
            .ok_or(StoredError::MissingColumn("received_at"))?;
        let typed = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .filter(|(f, _)| !FIXED_COLUMNS.contains(&f.name().as_str()))
            .map(|(f, c)| (f.name().clone(), Arc::clone(c)))
            .collect();
        Ok(StoredRows {
            rows: batch.num_rows(),
            bytes: batch.get_array_memory_size(),
            event_id: text(batch, "event_id")?,
            received_at,
            source: text(batch, "source")?,
            device_id: text(batch, "device_id")?,
            protocol: text(batch, "protocol")?,
            topic: text(batch, "topic")?,
            payload: text(batch, "payload").ok(),
            tags: batch
                .column_by_name("tags")
                .and_then(|c| c.as_map_opt())
                .cloned(),
            typed,
        })
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Memory the rows take.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn event_id(&self, row: usize) -> &str {
        self.event_id.value(row)
    }

    pub fn received_at_us(&self, row: usize) -> i64 {
        self.received_at.value(row)
    }

    pub fn source(&self, row: usize) -> &str {
        self.source.value(row)
    }

    pub fn device_id(&self, row: usize) -> Option<&str> {
        optional(&self.device_id, row)
    }

    pub fn protocol(&self, row: usize) -> &str {
        self.protocol.value(row)
    }

    pub fn topic(&self, row: usize) -> Option<&str> {
        optional(&self.topic, row)
    }

    /// The event's tags, in the order they were stored (name order).
    pub fn tags(&self, row: usize) -> Vec<(&str, &str)> {
        let Some(tags) = &self.tags else {
            return Vec::new();
        };
        let offsets = tags.value_offsets();
        let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
        let (Some(keys), Some(values)) = (
            tags.keys().as_string_opt::<i32>(),
            tags.values().as_string_opt::<i32>(),
        ) else {
            return Vec::new();
        };
        (start..end)
            .filter(|i| !values.is_null(*i))
            .map(|i| (keys.value(i), values.value(i)))
            .collect()
    }

    /// The value of tag `name`, if the event has it.
    pub fn tag(&self, row: usize, name: &str) -> Option<&str> {
        self.tags(row)
            .into_iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// The event as JSON text: exactly as sent when the file keeps payloads; otherwise an
    /// object of the typed columns that are not null (JSON-text columns as their JSON).
    pub fn payload(&self, row: usize) -> Cow<'_, str> {
        if let Some(payload) = &self.payload {
            if !payload.is_null(row) {
                return Cow::Borrowed(payload.value(row));
            }
        }
        let mut object = serde_json::Map::new();
        for (name, column) in &self.typed {
            if let Some(value) = typed_value(column, row) {
                object.insert(name.clone(), value);
            }
        }
        Cow::Owned(serde_json::Value::Object(object).to_string())
    }
}

fn optional(column: &StringArray, row: usize) -> Option<&str> {
    (!column.is_null(row)).then(|| column.value(row))
}

/// A typed column's value as JSON; `None` for null.
fn typed_value(column: &ArrayRef, row: usize) -> Option<serde_json::Value> {
    use serde_json::Value;
    if column.is_null(row) {
        return None;
    }
    Some(match column.data_type() {
        DataType::Utf8 => {
            let text = column.as_string::<i32>().value(row);
            // JSON-text columns (objects and arrays) hold JSON; string columns hold text.
            match serde_json::from_str::<Value>(text) {
                Ok(v @ (Value::Object(_) | Value::Array(_))) => v,
                _ => Value::String(text.to_owned()),
            }
        }
        DataType::Int64 => Value::from(column.as_primitive::<Int64Type>().value(row)),
        DataType::Float64 => Value::from(column.as_primitive::<Float64Type>().value(row)),
        DataType::Boolean => Value::Bool(column.as_boolean().value(row)),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let us = column.as_primitive::<TimestampMicrosecondType>().value(row);
            Value::String(rfc3339_us(us))
        }
        _ => return None,
    })
}

/// `2026-12-06T10:38:07.123456Z`.
pub fn rfc3339_us(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Envelope, IngestBatch, Protocol};
    use crate::parquet_file::{encode, RowsBuilder};
    use uuid::Uuid;

    #[test]
    fn a_written_file_reads_back_event_by_event() {
        let payloads = [r#"{"t":1}"#, r#"{"t":2,"s":"x"}"#];
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for p in payloads {
            bytes.extend_from_slice(p.as_bytes());
            ends.push(bytes.len() as u32);
        }
        let batch = IngestBatch {
            envelope: Envelope {
                first_event_id: Uuid::now_v7(),
                received_at_us: 1_700_000_000_123_456,
                workspace_id: Uuid::now_v7(),
                source: "telemetry".into(),
                device_id: Some("d-1".into()),
                protocol: Protocol::Mqtt,
                topic: Some("ingest/telemetry".into()),
            },
            payloads: bytes,
            ends,
            shaping: None,
        };
        let mut rows = RowsBuilder::new();
        rows.append(&batch);
        let file = encode(&rows.finish(), Vec::new()).expect("encode");
        let read = read_file(Bytes::from(file)).expect("read");
        assert_eq!(read.len(), 1);
        let rows = &read[0];
        assert_eq!(rows.len(), 2);
        assert_eq!(rows.payload(1), payloads[1]);
        assert_eq!(rows.device_id(0), Some("d-1"));
        assert_eq!(rows.protocol(0), "mqtt");
        assert_eq!(rows.topic(1), Some("ingest/telemetry"));
        assert_eq!(rows.received_at_us(0), 1_700_000_000_123_456);
        assert_eq!(
            rows.event_id(1),
            crate::event::event_id(batch.envelope.first_event_id, 1).to_string()
        );
        assert!(rows.tags(0).is_empty());
        assert_eq!(
            rfc3339_us(rows.received_at_us(0)),
            "2023-11-14T22:13:20.123456Z"
        );
    }
}
