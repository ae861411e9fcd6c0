//! Formats and durable machinery shared by Sluice's planes.
//!
//! - [`event`]: the event model and the WAL record that carries one accepted ingest batch.
//! - [`wal`]: the write-ahead log: framed, checksummed records in segment files, group commit.
//! - [`layout`] and [`parquet_file`]: the Hive-style object layout and the Parquet schema.
//! - [`lake`]: object storage (local directory, S3, GCS, Azure, memory) behind `object_store`.
//! - [`stored`]: events read back from those files, for export endpoints.
//! - [`shipper`]: tails the WAL, batches per (workspace, source), uploads Parquet, trims the WAL.
//! - [`cache`]: the node's redb cache of the last-known-good configuration (the configuration
//!   itself is `sluice-config`'s).
//! - [`commits`]: per node, the ordered log of the files it uploaded, which export readers follow.
//! - [`progress`]: the shipper's record of what each WAL range became.
//! - [`shutdown`]: the one shutdown signal every thread and task of a process receives.
//! - [`chaos`]: named crash points, compiled in only with the feature `chaos`.
//!
//! The Parquet half (`parquet_file`, `shipper`, and with them arrow and parquet) is the
//! default feature `parquet`; the control plane, which only lists and deletes lake objects,
//! builds without it.
//!
//! This crate never speaks HTTP or MQTT; the data plane turns requests into [`event::IngestBatch`]es.
#![forbid(unsafe_code)]

pub mod cache;
pub mod chaos;
pub mod commits;
pub mod event;
pub mod lake;
pub mod layout;
pub mod metrics;
#[cfg(feature = "parquet")]
pub(crate) mod parquet_file;
pub mod progress;
#[cfg(feature = "parquet")]
pub mod shipper;
pub mod shutdown;
#[cfg(feature = "parquet")]
pub mod stored;
pub mod wal;
