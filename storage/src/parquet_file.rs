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
//! A source with a schema or tag rules ([`FileShape::Shaped`]) has these columns too, and
//! `payload` only while its `keep_payload` is on:
//!
//! | column | type | notes |
//! | --- | --- | --- |
//! | `tags` | map(string, string) | what the workspace's tag rules extracted |
//! | `schema_version` | string, nullable | the schema the events were checked against |
//! | one per typed property | string, timestamp(µs, UTC), int64, float64, bool, or JSON text | null where the event lacks the property or holds another type |
//!
//! Quarantine files ([`FileShape::Quarantine`]) have the eight columns, `tags`,
//! `schema_version` and `quarantine_error` (the validator's message).
//!
//! Files are zstd-compressed (level 1). `payload` and `event_id` skip dictionary encoding
//! (every value is distinct) for prefix-delta encoding (neighbours share their start);
//! timestamps and integers are delta-encoded (times and counters move in small steps); the
//! other columns keep dictionaries (repetitive text, readings from a small range). Measured by
//! the `size_probe` test below.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, MapBuilder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::event::{event_id, Column, ColumnType, IngestBatch};

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

/// The Arrow schema of every events file of a source without schema or tag rules.
pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}

/// What a file holds, and so which columns it has. The shipper keys its open batches by it:
/// a file has one shape, and a shaped source's file one schema version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileShape {
    /// A source without a schema or tag rules: the eight columns of [`schema`].
    Plain,
    /// Events a source's schema and tag rules shaped (and, with a schema, accepted).
    Shaped {
        schema_version: Option<String>,
        columns: Arc<[Column]>,
        keep_payload: bool,
    },
    /// Events a schema refused, kept under `on_invalid = quarantine`.
    Quarantine,
}

/// Which events of a batch go into a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// Every event the schema accepted (all of them for a source without one).
    Valid,
    /// Every event the schema refused.
    Quarantined,
}

/// The indexes of `batch`'s events that `select` picks, in order.
pub fn selected(batch: &IngestBatch, select: Select) -> Vec<u32> {
    let quarantined = batch
        .shaping
        .as_ref()
        .map_or(&[][..], |s| &s.quarantined[..]);
    match select {
        Select::Quarantined => quarantined.iter().map(|q| q.index).collect(),
        Select::Valid => {
            let mut refused = quarantined.iter().map(|q| q.index).peekable();
            (0..batch.len() as u32)
                .filter(|i| {
                    if refused.peek() == Some(i) {
                        refused.next();
                        false
                    } else {
                        true
                    }
                })
                .collect()
        }
    }
}

/// A typed column being filled.
enum TypedBuilder {
    String(StringBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Boolean(BooleanBuilder),
    Json(StringBuilder),
}

impl TypedBuilder {
    fn new(column_type: ColumnType) -> Self {
        match column_type {
            ColumnType::String => TypedBuilder::String(StringBuilder::new()),
            ColumnType::Timestamp => {
                TypedBuilder::Timestamp(TimestampMicrosecondBuilder::new().with_timezone("UTC"))
            }
            ColumnType::Int64 => TypedBuilder::Int64(Int64Builder::new()),
            ColumnType::Float64 => TypedBuilder::Float64(Float64Builder::new()),
            ColumnType::Boolean => TypedBuilder::Boolean(BooleanBuilder::new()),
            ColumnType::Json => TypedBuilder::Json(StringBuilder::new()),
        }
    }

    /// Appends the value whose JSON text is `raw`, or null where it is absent or of another
    /// type: events the schema accepted match it, and anything else (a record replayed under
    /// another schema) must not stop the file.
    fn append(&mut self, raw: Option<&str>) {
        match self {
            TypedBuilder::String(b) => b.append_option(raw.and_then(json_string).as_deref()),
            TypedBuilder::Timestamp(b) => b.append_option(
                raw.and_then(json_string)
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(&s).ok())
                    .map(|t| t.timestamp_micros()),
            ),
            TypedBuilder::Int64(b) => b.append_option(raw.filter(|r| is_number(r)).and_then(|r| {
                r.parse::<i64>().ok().or_else(|| {
                    // JSON Schema's integer takes 3.0 too.
                    r.parse::<f64>()
                        .ok()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                        .map(|f| f as i64)
                })
            })),
            TypedBuilder::Float64(b) => b.append_option(
                raw.filter(|r| is_number(r))
                    .and_then(|r| r.parse::<f64>().ok())
                    .filter(|f| f.is_finite()),
            ),
            TypedBuilder::Boolean(b) => b.append_option(match raw {
                Some("true") => Some(true),
                Some("false") => Some(false),
                _ => None,
            }),
            // The object or array as sent.
            TypedBuilder::Json(b) => {
                b.append_option(raw.filter(|r| r.starts_with('{') || r.starts_with('[')))
            }
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            TypedBuilder::String(b) | TypedBuilder::Json(b) => Arc::new(b.finish()),
            TypedBuilder::Timestamp(b) => Arc::new(b.finish()),
            TypedBuilder::Int64(b) => Arc::new(b.finish()),
            TypedBuilder::Float64(b) => Arc::new(b.finish()),
            TypedBuilder::Boolean(b) => Arc::new(b.finish()),
        }
    }
}

/// Whether `raw` is a JSON number's text.
fn is_number(raw: &str) -> bool {
    raw.starts_with(|c: char| c == '-' || c.is_ascii_digit())
}

/// The string a JSON string's text holds; `None` for any other value.
fn json_string(raw: &str) -> Option<std::borrow::Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(raw).ok().map(Into::into)
    } else {
        Some(inner.into())
    }
}

/// Finds the typed columns' values in an event's text without building it: for each column
/// (by index in `names`, sorted), the byte range of its value's JSON text, the last one when
/// a key repeats (as a parser building the object would keep).
struct Lift<'a> {
    names: &'a [(String, TypedBuilder)],
    base: usize,
    slots: &'a mut [Option<(usize, usize)>],
    /// The previous event's keys in their order, each with its column: a device sends its
    /// keys in the same order every time, so one comparison usually finds the column.
    order: &'a mut Vec<(Box<str>, Option<usize>)>,
}

impl<'de> serde::de::Visitor<'de> for Lift<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut position = 0;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let raw: &serde_json::value::RawValue = map.next_value()?;
            let column = match self.order.get(position) {
                Some((seen, column)) if **seen == *key.0 => *column,
                _ => {
                    let column = self
                        .names
                        .binary_search_by(|(n, _)| n.as_str().cmp(&key.0))
                        .ok();
                    // Remembered for the next event, within a bound against key floods.
                    if position < ORDER_KEYS_MAX {
                        let entry = (Box::from(&*key.0), column);
                        match self.order.get_mut(position) {
                            Some(slot) => *slot = entry,
                            None => self.order.push(entry),
                        }
                    }
                    column
                }
            };
            if let Some(i) = column {
                let start = raw.get().as_ptr() as usize - self.base;
                self.slots[i] = Some((start, start + raw.get().len()));
            }
            position += 1;
        }
        Ok(())
    }
}

/// An object key, borrowed from the text when it has no escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(v.into()))
            }

            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(v.to_owned().into()))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The columns a shaped or quarantine file has beyond the eight.
struct ShapedColumns {
    tags: MapBuilder<StringBuilder, StringBuilder>,
    schema_version: StringBuilder,
    /// `(name, builder)` of each typed column, in the schema's name order.
    typed: Vec<(String, TypedBuilder)>,
    /// Where each typed column's value is in the event being added (reused across events).
    slots: Vec<Option<(usize, usize)>>,
    /// The last event's key order ([`Lift::order`]).
    order: Vec<(Box<str>, Option<usize>)>,
    /// Quarantine files only.
    quarantine_error: Option<StringBuilder>,
    keep_payload: bool,
}

/// Keys of an event whose order [`Lift`] remembers.
const ORDER_KEYS_MAX: usize = 256;

/// Bytes of a string column's offset for one value.
const OFFSET_BYTES: usize = 4;
/// What every row takes in the builders besides its variable-length text: the event id and
/// the workspace id as UUID text (36 bytes each), the timestamp, an offset in each of the 7
/// string columns, and validity bits. Counted so that `batch.max_bytes` and
/// `batch.held_bytes_max` measure the memory the builders hold, not only the payloads (with
/// "payload + 96" the node's memory ran ~9% past the budget for 200-byte events).
const ROW_FIXED_BYTES: usize = 36 + 36 + 8 + 7 * OFFSET_BYTES + 2;

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
    /// `None` for [`FileShape::Plain`].
    shaped: Option<ShapedColumns>,
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
            shaped: None,
            rows: 0,
            bytes: 0,
        }
    }

    /// Builders for a file of `shape`, sized like the last batch of its key.
    pub fn shaped(shape: &FileShape, size: BatchSize) -> Self {
        let mut rows = Self::with_capacity(size);
        let (columns, keep_payload, quarantine) = match shape {
            FileShape::Plain => return rows,
            FileShape::Shaped {
                columns,
                keep_payload,
                ..
            } => (&columns[..], *keep_payload, false),
            FileShape::Quarantine => (&[][..], true, true),
        };
        rows.shaped = Some(ShapedColumns {
            tags: MapBuilder::new(None, StringBuilder::new(), StringBuilder::new()),
            schema_version: StringBuilder::new(),
            typed: {
                let mut typed: Vec<(String, TypedBuilder)> = columns
                    .iter()
                    .map(|c| (c.name.clone(), TypedBuilder::new(c.column_type)))
                    .collect();
                // Sorted for the lookup; the file's column order is this order too.
                typed.sort_by(|a, b| a.0.cmp(&b.0));
                typed.dedup_by(|a, b| a.0 == b.0);
                typed
            },
            slots: vec![None; columns.len()],
            order: Vec::new(),
            quarantine_error: quarantine.then(StringBuilder::new),
            keep_payload,
        });
        rows
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
        let all: Vec<u32> = (0..batch.len() as u32).collect();
        self.append_events(batch, &all)
    }

    /// Adds the events of `batch` at `indexes` (in order), with the typed columns, tags and
    /// quarantine error of a shaped file; returns the count of payloads that were not UTF-8.
    pub fn append_events(&mut self, batch: &IngestBatch, indexes: &[u32]) -> usize {
        let env = &batch.envelope;
        let mut id_buf = uuid::Uuid::encode_buffer();
        let workspace = env.workspace_id.hyphenated().to_string();
        let shaping = batch.shaping.as_deref();
        let mut quarantined = shaping.map_or(&[][..], |s| &s.quarantined[..]).iter();
        let mut bad = 0;
        for &i in indexes {
            let id = event_id(env.first_event_id, i);
            let i = i as usize;
            self.event_id
                .append_value(id.hyphenated().encode_lower(&mut id_buf));
            self.received_at.append_value(env.received_at_us);
            self.workspace_id.append_value(&workspace);
            self.source.append_value(&env.source);
            let device = shaping
                .and_then(|s| s.device_of(i))
                .or(env.device_id.as_deref());
            self.device_id.append_option(device);
            self.protocol.append_value(env.protocol.as_str());
            self.topic.append_option(env.topic.as_deref());
            // What the row takes in the builders (`bytes`): its text, plus what every row
            // takes whatever its text.
            let mut row_bytes = ROW_FIXED_BYTES
                + env.source.len()
                + device.map_or(0, str::len)
                + env.protocol.as_str().len()
                + env.topic.as_deref().map_or(0, str::len);
            let payload = batch.payload(i);
            let text = match std::str::from_utf8(payload) {
                Ok(text) => text,
                Err(_) => {
                    bad += 1;
                    "null"
                }
            };
            match &mut self.shaped {
                None => {
                    self.payload.append_value(text);
                    row_bytes += text.len();
                }
                Some(shaped) => {
                    if shaped.keep_payload {
                        self.payload.append_value(text);
                        row_bytes += text.len();
                    }
                    let tags = shaping.map_or(&[][..], |s| s.tags_of(i));
                    for (k, v) in tags {
                        shaped.tags.keys().append_value(k);
                        shaped.tags.values().append_value(v);
                        row_bytes += k.len() + v.len() + 2 * OFFSET_BYTES;
                    }
                    // Appending an entry cannot fail with matching keys and values.
                    let _ = shaped.tags.append(true);
                    let version = shaping.and_then(|s| s.schema_version.as_deref());
                    row_bytes += version.map_or(0, str::len) + OFFSET_BYTES;
                    shaped.schema_version.append_option(version);
                    if let Some(errors) = &mut shaped.quarantine_error {
                        let error = quarantined
                            .by_ref()
                            .find(|q| q.index as usize >= i)
                            .filter(|q| q.index as usize == i)
                            .map(|q| q.error.as_str());
                        row_bytes += error.map_or(0, str::len) + OFFSET_BYTES;
                        errors.append_option(error);
                    }
                    if !shaped.typed.is_empty() {
                        let slots = &mut shaped.slots[..shaped.typed.len()];
                        slots.fill(None);
                        let mut de = serde_json::Deserializer::from_str(text);
                        let lift = Lift {
                            names: &shaped.typed,
                            base: text.as_ptr() as usize,
                            slots,
                            order: &mut shaped.order,
                        };
                        // An event that is not an object (impossible once admitted) gets
                        // nulls.
                        if serde::Deserializer::deserialize_map(&mut de, lift).is_err() {
                            shaped.slots.fill(None);
                        }
                        for ((_, column), slot) in shaped.typed.iter_mut().zip(&shaped.slots) {
                            // A value takes 8 bytes, or its text (and an offset) at most.
                            row_bytes += slot.map_or(0, |(start, end)| end - start) + 8;
                            column.append(slot.map(|(start, end)| &text[start..end]));
                        }
                    }
                }
            }
            self.bytes += row_bytes;
        }
        self.rows += indexes.len();
        bad
    }

    /// Turns the builders into one record batch.
    pub fn finish(mut self) -> RecordBatch {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.event_id.finish()),
            Arc::new(self.received_at.finish()),
            Arc::new(self.workspace_id.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.device_id.finish()),
            Arc::new(self.protocol.finish()),
            Arc::new(self.topic.finish()),
        ];
        let Some(mut shaped) = self.shaped else {
            columns.push(Arc::new(self.payload.finish()));
            // The columns match SCHEMA by construction; a mismatch is a bug in this module.
            return RecordBatch::try_new(schema(), columns)
                .expect("columns match the events schema");
        };
        let mut fields: Vec<Field> = SCHEMA.fields()[..7]
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        if shaped.keep_payload {
            fields.push(SCHEMA.fields()[7].as_ref().clone());
            columns.push(Arc::new(self.payload.finish()));
        }
        let tags = Arc::new(shaped.tags.finish());
        fields.push(Field::new("tags", tags.data_type().clone(), false));
        columns.push(tags);
        fields.push(Field::new("schema_version", DataType::Utf8, true));
        columns.push(Arc::new(shaped.schema_version.finish()));
        if let Some(mut errors) = shaped.quarantine_error {
            fields.push(Field::new("quarantine_error", DataType::Utf8, true));
            columns.push(Arc::new(errors.finish()));
        }
        for (name, column) in &mut shaped.typed {
            let array = column.finish();
            fields.push(Field::new(name.as_str(), array.data_type().clone(), true));
            columns.push(array);
        }
        // Fields are derived from the arrays themselves; a mismatch is a bug in this module.
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .expect("columns match the fields made from them")
    }
}

/// Encodes `batch` as a zstd Parquet file with `metadata` in its footer.
pub fn encode(
    batch: &RecordBatch,
    metadata: Vec<(String, String)>,
) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
    for field in batch.schema().fields() {
        let column = ColumnPath::from(field.name().as_str());
        let encoding = match (field.name().as_str(), field.data_type()) {
            // Every value is distinct, but neighbours share their start: a UUIDv7's time,
            // a device's JSON up to its first reading.
            ("event_id" | "payload", _) => Encoding::DELTA_BYTE_ARRAY,
            // Times and counters run near each other: the differences are small.
            (_, DataType::Timestamp(..) | DataType::Int64) => Encoding::DELTA_BINARY_PACKED,
            _ => continue,
        };
        if field.name() == "payload" {
            // Nobody prunes files by the JSON text's min and max; finding them compares
            // every payload for nothing.
            props = props.set_column_statistics_enabled(column.clone(), EnabledStatistics::None);
        }
        props = props
            .set_column_dictionary_enabled(column.clone(), false)
            .set_column_encoding(column, encoding);
    }
    let props = props
        .set_key_value_metadata(Some(
            metadata
                .into_iter()
                .map(|(k, v)| KeyValue::new(k, v))
                .collect(),
        ))
        .build();
    let mut out = Vec::with_capacity(batch.get_array_memory_size() / 4);
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(props))?;
    writer.write(batch)?;
    crate::chaos::point("parquet-encode");
    writer.close()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Envelope, IngestBatch, Protocol};

    pub(super) fn batch(events: usize) -> IngestBatch {
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
            shaping: None,
        }
    }

    /// The bytes of a record batch's buffers up to their lengths: what its rows take, without
    /// the capacity a builder reserved ahead.
    fn buffer_bytes(batch: &RecordBatch) -> usize {
        batch
            .columns()
            .iter()
            .map(|column| {
                let data = column.to_data();
                data.buffers().iter().map(|b| b.len()).sum::<usize>()
                    + data.nulls().map_or(0, |n| n.buffer().len())
            })
            .sum()
    }

    #[test]
    fn the_bytes_counted_against_the_memory_budget_are_what_the_rows_take() {
        // Events of ~200 bytes, as the benchmarks send: a count that missed a column's bytes
        // let the node's memory run past `batch.held_bytes_max` (issue 22).
        let mut rows = RowsBuilder::new();
        let mut input = batch(0);
        for i in 0..5_000 {
            let payload = format!(
                r#"{{"i":{i},"site":"plant-7","temp_c":21.5,"note":"{}"}}"#,
                "x".repeat(140)
            );
            input.payloads.extend_from_slice(payload.as_bytes());
            input.ends.push(input.payloads.len() as u32);
        }
        rows.append(&input);
        let counted = rows.bytes();
        let held = buffer_bytes(&rows.finish());
        assert!(
            counted >= held * 95 / 100 && counted <= held * 110 / 100,
            "counted {counted} bytes for rows whose buffers hold {held}"
        );
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

    /// Events whose keys come in changing orders (the lookup remembers the last event's
    /// order) still put each value in its own column, the last one where a key repeats.
    #[test]
    fn typed_values_land_in_their_columns_whatever_the_key_order() {
        use crate::event::Shaping;
        use arrow_array::cast::AsArray;
        use arrow_array::types::Int64Type;
        let mut b = batch(0);
        for event in [
            r#"{"a":1,"b":2,"c":3}"#,
            r#"{"a":4,"b":5,"c":6}"#,
            r#"{"c":9,"a":7,"x":0,"b":8}"#,
            r#"{"b":11,"a":10}"#,
            r#"{"a":12,"a":13,"b":14,"c":15}"#,
        ] {
            b.payloads.extend_from_slice(event.as_bytes());
            b.ends.push(b.payloads.len() as u32);
        }
        let columns: Arc<[Column]> = ["a", "b", "c"]
            .map(|name| Column {
                name: name.into(),
                column_type: ColumnType::Int64,
            })
            .to_vec()
            .into();
        b.shaping = Some(Box::new(Shaping {
            schema_version: Some("v1".into()),
            columns: columns.clone(),
            keep_payload: true,
            tags: Vec::new(),
            events: None,
            quarantined: Vec::new(),
        }));
        let shape = FileShape::Shaped {
            schema_version: Some("v1".into()),
            columns,
            keep_payload: true,
        };
        let mut rows = RowsBuilder::shaped(&shape, BatchSize::default());
        rows.append(&b);
        let file = rows.finish();
        let column = |name: &str| -> Vec<Option<i64>> {
            file.column_by_name(name)
                .expect("column")
                .as_primitive::<Int64Type>()
                .iter()
                .collect()
        };
        assert_eq!(column("a"), [Some(1), Some(4), Some(7), Some(10), Some(13)]);
        assert_eq!(column("b"), [Some(2), Some(5), Some(8), Some(11), Some(14)]);
        assert_eq!(column("c"), [Some(3), Some(6), Some(9), None, Some(15)]);
    }

    /// A shaped batch becomes typed columns (null where an event holds another type), its
    /// tags a map, and its refused events a quarantine file of their own.
    #[test]
    fn shaped_events_fill_typed_columns_and_quarantine_apart() {
        use crate::event::{Quarantined, Shaping};
        use arrow_array::cast::AsArray;
        use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
        let mut b = batch(0);
        for event in [
            r#"{"temp_c":21.5,"n":3,"at":"2026-12-06T08:00:00Z","ok":true,"meta":{"a":1}}"#,
            r#"{"temp_c":"warm"}"#,
            r#"{"temp_c":7,"n":4.0,"at":"not a time"}"#,
        ] {
            b.payloads.extend_from_slice(event.as_bytes());
            b.ends.push(b.payloads.len() as u32);
        }
        let col = |name: &str, column_type| Column {
            name: name.into(),
            column_type,
        };
        let columns: Arc<[Column]> = vec![
            col("at", ColumnType::Timestamp),
            col("meta", ColumnType::Json),
            col("n", ColumnType::Int64),
            col("ok", ColumnType::Boolean),
            col("temp_c", ColumnType::Float64),
        ]
        .into();
        b.shaping = Some(Box::new(Shaping {
            schema_version: Some("v1".into()),
            columns: columns.clone(),
            keep_payload: false,
            tags: vec![("site".into(), "lyon".into())],
            events: None,
            quarantined: vec![Quarantined {
                index: 1,
                error: "\"warm\" is not of type \"number\"".into(),
            }],
        }));
        let shape = FileShape::Shaped {
            schema_version: Some("v1".into()),
            columns,
            keep_payload: false,
        };
        let mut rows = RowsBuilder::shaped(&shape, BatchSize::default());
        let valid = selected(&b, Select::Valid);
        assert_eq!(valid, vec![0, 2]);
        rows.append_events(&b, &valid);
        let file = rows.finish();
        let schema = file.schema();
        assert!(
            schema.field_with_name("payload").is_err(),
            "keep_payload off"
        );
        assert!(matches!(
            schema.field_with_name("tags").expect("tags").data_type(),
            DataType::Map(..)
        ));
        let temp = file.column_by_name("temp_c").expect("temp_c");
        assert_eq!(
            temp.as_primitive::<Float64Type>().values().to_vec(),
            [21.5, 7.0]
        );
        let n = file
            .column_by_name("n")
            .expect("n")
            .as_primitive::<Int64Type>();
        assert_eq!(n.values().to_vec(), [3, 4]);
        let at = file.column_by_name("at").expect("at");
        let at = at.as_primitive::<TimestampMicrosecondType>();
        assert_eq!(at.value(0), 1_796_544_000_000_000);
        assert!(at.is_null(1), "not a date-time: null");
        assert!(file.column_by_name("ok").expect("ok").is_null(1));
        assert_eq!(
            file.column_by_name("meta")
                .expect("meta")
                .as_string::<i32>()
                .value(0),
            r#"{"a":1}"#
        );
        encode(&file, Vec::new()).expect("encodes");

        let mut quarantine = RowsBuilder::shaped(&FileShape::Quarantine, BatchSize::default());
        quarantine.append_events(&b, &selected(&b, Select::Quarantined));
        let file = quarantine.finish();
        assert_eq!(file.num_rows(), 1);
        let errors = file.column_by_name("quarantine_error").expect("errors");
        assert!(errors.as_string::<i32>().value(0).contains("warm"));
        assert_eq!(
            file.column_by_name("payload")
                .expect("payload")
                .as_string::<i32>()
                .value(0),
            r#"{"temp_c":"warm"}"#
        );
    }
}

#[cfg(test)]
mod size_probe {
    use super::*;
    use crate::event::Shaping;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    /// Events like the benchmarks' (`bench/src/payload.rs`): ~200 bytes of JSON with a time,
    /// a device, a site, readings, a status and a sequence number.
    fn events(n: usize) -> IngestBatch {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut below = |m: u64| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d) % m
        };
        let sites = [
            "plant-north",
            "plant-south",
            "depot-a",
            "depot-b",
            "lab-3",
            "yard",
        ];
        let statuses = ["ok", "ok", "ok", "degraded"];
        let mut payloads = Vec::new();
        let mut ends = Vec::new();
        for seq in 0..n as u64 {
            let ms = (seq * 37 + below(1000)) % 86_400_000;
            let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
            let event = format!(
                concat!(
                    r#"{{"ts":"2025-06-01T{:02}:{:02}:{:02}.{:03}Z","device_id":"probe-{:05}","#,
                    r#""site":"{}","temp_c":{}.{:02},"humidity_pct":{}.{},"pressure_hpa":{}.{:02},"#,
                    r#""battery_v":{}.{:02},"rssi_dbm":-{},"status":"{}","fw":"2.4.1","seq":{}}}"#
                ),
                h,
                m,
                s,
                ms,
                below(5000),
                sites[below(6) as usize],
                15 + below(15),
                below(100),
                30 + below(40),
                below(10),
                980 + below(50),
                below(100),
                3 + below(2),
                below(100),
                40 + below(50),
                statuses[below(4) as usize],
                seq
            );
            payloads.extend_from_slice(event.as_bytes());
            ends.push(payloads.len() as u32);
        }
        IngestBatch {
            payloads,
            ends,
            ..super::tests::batch(0)
        }
    }

    /// The typed columns of the benchmarks' schema (`device_id` is a fixed column's name).
    fn columns() -> Arc<[Column]> {
        let c = |name: &str, column_type| Column {
            name: name.into(),
            column_type,
        };
        vec![
            c("battery_v", ColumnType::Float64),
            c("fw", ColumnType::String),
            c("humidity_pct", ColumnType::Float64),
            c("pressure_hpa", ColumnType::Float64),
            c("rssi_dbm", ColumnType::Int64),
            c("seq", ColumnType::Int64),
            c("site", ColumnType::String),
            c("status", ColumnType::String),
            c("temp_c", ColumnType::Float64),
            c("ts", ColumnType::Timestamp),
        ]
        .into()
    }

    fn report(label: &str, file: &[u8], rows: usize) {
        let reader =
            SerializedFileReader::new(bytes::Bytes::copy_from_slice(file)).expect("reads back");
        let mut per: Vec<(String, i64)> = Vec::new();
        for group in reader.metadata().row_groups() {
            for c in group.columns() {
                let name = c.column_path().string();
                match per.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, size)) => *size += c.compressed_size(),
                    None => per.push((name, c.compressed_size())),
                }
            }
        }
        let columns: Vec<String> = per
            .iter()
            .filter(|(_, size)| *size as f64 / rows as f64 >= 0.05)
            .map(|(name, size)| format!("{name} {:.2}", *size as f64 / rows as f64))
            .collect();
        println!(
            "{label}: {:.2} bytes/event ({})",
            file.len() as f64 / rows as f64,
            columns.join(", ")
        );
    }

    /// `n` benchmark events shaped by the benchmark schema, and an empty builder of its files.
    fn shaped(n: usize, keep_payload: bool) -> (IngestBatch, RowsBuilder) {
        let version = Some("0123456789abcdef".to_string());
        let mut batch = events(n);
        batch.shaping = Some(Box::new(Shaping {
            schema_version: version.clone(),
            columns: columns(),
            keep_payload,
            tags: Vec::new(),
            events: None,
            quarantined: Vec::new(),
        }));
        let shape = FileShape::Shaped {
            schema_version: version,
            columns: columns(),
            keep_payload,
        };
        (batch, RowsBuilder::shaped(&shape, BatchSize::default()))
    }

    /// What `keep_payload: false` promises a source that trusts its schema: its files take
    /// about a third of what the JSON text takes with these events (half before the delta
    /// encodings).
    #[test]
    fn typed_files_without_payload_take_under_40_percent_of_the_json_text_layout() {
        let n = 20_000;
        let mut rows = RowsBuilder::new();
        rows.append(&events(n));
        let plain = encode(&rows.finish(), Vec::new()).expect("encodes").len();
        let (batch, mut rows) = shaped(n, false);
        rows.append(&batch);
        let typed = encode(&rows.finish(), Vec::new()).expect("encodes").len();
        assert!(
            typed * 5 < plain * 2,
            "typed {typed} bytes, JSON text {plain}"
        );
    }

    /// Bytes per event of one file of 200,000 benchmark events, per layout and column:
    /// `cargo test --release -p sluice-storage size_probe -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bytes_per_event_by_layout() {
        let n = 200_000;
        let mut rows = RowsBuilder::new();
        rows.append(&events(n));
        report(
            "no schema",
            &encode(&rows.finish(), Vec::new()).expect("encodes"),
            n,
        );
        for keep_payload in [true, false] {
            let (batch, mut rows) = shaped(n, keep_payload);
            let started = std::time::Instant::now();
            rows.append(&batch);
            println!("rows built in {:?}", started.elapsed());
            let batch = rows.finish();
            let started = std::time::Instant::now();
            let file = encode(&batch, Vec::new()).expect("encodes");
            println!("encoded in {:?}", started.elapsed());
            report(&format!("schema, keep_payload {keep_payload}"), &file, n);
        }
    }
}
