//! Formats and durable machinery shared by Sluice's planes.
//!
//! - [`event`]: the event model and the WAL record that carries one accepted ingest batch.
//! - [`wal`]: the write-ahead log: framed, checksummed records in segment files, group commit.
//! - [`layout`] and [`parquet_file`]: the Hive-style object layout and the Parquet schema.
//! - [`lake`]: object storage (local directory, S3, GCS, Azure, memory) behind `object_store`.
//! - [`shipper`]: tails the WAL, batches per (workspace, source), uploads Parquet, trims the WAL.
//! - [`snapshot`], [`config_delta`], [`config_hash`], [`config_state`], [`token`] and
//!   [`cache`]: the configuration snapshot, the deltas between versions, the hash that proves
//!   two copies equal, the indexed copy a node applies deltas to, token hashing, and the node's redb cache of the last-known-good
//!   configuration.
//!
//! This crate never speaks HTTP or MQTT; the data plane turns requests into [`event::IngestBatch`]es.

pub mod cache;
pub mod config_delta;
pub mod config_hash;
pub mod config_state;
pub mod event;
pub mod lake;
pub mod layout;
pub mod metrics;
pub mod parquet_file;
pub mod progress;
pub mod shipper;
pub mod snapshot;
#[cfg(test)]
mod test_fixtures;
pub mod token;
pub mod wal;
