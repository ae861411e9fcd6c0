//! Prometheus metrics of the durable path: WAL appends and syncs, flushes and uploads.
//!
//! The data plane registers these next to its own request metrics so one `/metrics` shows the
//! whole event path.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Outcome label of a flush or an upload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// Metrics owned by the storage pipeline; cheap to clone (all handles are shared).
#[derive(Clone)]
pub struct StorageMetrics {
    pub wal_bytes: Gauge,
    pub wal_segments: Gauge,
    pub wal_records_total: Counter,
    pub wal_appended_bytes_total: Counter,
    pub wal_fsync_seconds: Histogram,
    pub wal_group_commit_records: Histogram,
    pub wal_corrupt_records_total: Counter,
    pub flushes_total: Family<OutcomeLabel, Counter>,
    pub flush_seconds: Histogram,
    pub flushed_rows_total: Counter,
    pub flushed_bytes_total: Counter,
    pub upload_errors_total: Counter,
    pub builder_bytes: Gauge,
    pub pending_upload_bytes: Gauge,
}

impl Default for StorageMetrics {
    fn default() -> Self {
        StorageMetrics {
            wal_bytes: Gauge::default(),
            wal_segments: Gauge::default(),
            wal_records_total: Counter::default(),
            wal_appended_bytes_total: Counter::default(),
            // 20 µs .. ~1.3 s
            wal_fsync_seconds: Histogram::new(exponential_buckets(0.00002, 2.0, 17)),
            wal_group_commit_records: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            wal_corrupt_records_total: Counter::default(),
            flushes_total: Family::default(),
            // 1 ms .. ~65 s
            flush_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            flushed_rows_total: Counter::default(),
            flushed_bytes_total: Counter::default(),
            upload_errors_total: Counter::default(),
            builder_bytes: Gauge::default(),
            pending_upload_bytes: Gauge::default(),
        }
    }
}

impl StorageMetrics {
    /// Adds every metric to `registry` under the `sluice_` prefix the caller chose.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "wal_bytes",
            "Bytes of WAL segments on disk",
            self.wal_bytes.clone(),
        );
        registry.register(
            "wal_segments",
            "WAL segment files on disk",
            self.wal_segments.clone(),
        );
        registry.register(
            "wal_records",
            "Records (accepted batches) appended to the WAL",
            self.wal_records_total.clone(),
        );
        registry.register(
            "wal_appended_bytes",
            "Bytes appended to the WAL",
            self.wal_appended_bytes_total.clone(),
        );
        registry.register(
            "wal_fsync_seconds",
            "Latency of one WAL fdatasync (one group commit)",
            self.wal_fsync_seconds.clone(),
        );
        registry.register(
            "wal_group_commit_records",
            "Records made durable by one fdatasync",
            self.wal_group_commit_records.clone(),
        );
        registry.register(
            "wal_corrupt_records",
            "WAL records that could not be read back (checksum, framing or encoding); their bytes go to quarantine",
            self.wal_corrupt_records_total.clone(),
        );
        registry.register(
            "flushes",
            "Parquet files written to object storage, by outcome",
            self.flushes_total.clone(),
        );
        registry.register(
            "flush_seconds",
            "Time to encode and upload one Parquet file",
            self.flush_seconds.clone(),
        );
        registry.register(
            "flushed_rows",
            "Events written to Parquet in object storage",
            self.flushed_rows_total.clone(),
        );
        registry.register(
            "flushed_bytes",
            "Parquet bytes uploaded to object storage",
            self.flushed_bytes_total.clone(),
        );
        registry.register(
            "upload_errors",
            "Failed uploads to object storage (each is retried)",
            self.upload_errors_total.clone(),
        );
        registry.register(
            "builder_bytes",
            "Bytes of events held in Arrow builders waiting for a batch cut",
            self.builder_bytes.clone(),
        );
        registry.register(
            "pending_upload_bytes",
            "Bytes of encoded Parquet files waiting for upload",
            self.pending_upload_bytes.clone(),
        );
    }
}
