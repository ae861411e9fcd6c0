//! Sluice's data plane: takes events over HTTP (hyper on tokio-uring) and MQTT (ntex-mqtt),
//! checks every request against the node's configuration snapshot, and hands accepted batches
//! to the storage pipeline, answering only once they are durable.
//!
//! - [`node`]: assembles and runs a node.
//! - [`http_server`] and [`uring_io`]: the io_uring front end.
//! - [`ingest`], [`parse`], [`problem`]: the ingest API, body parsing, problem+json refusals.
//! - [`mqtt`]: the MQTT 3.1.1 and 5 front end on ntex-mqtt, into the same WAL.
//! - [`access`], [`token_table`] and [`rate_limit`]: token checks against the snapshot, the
//!   copy-on-write token index, per-workspace rates.
//! - [`config`], [`config_source`], [`bootstrap`]: settings, where the snapshot comes from.
//! - [`metrics`]: the Prometheus registry behind `/metrics`.
//!
//! The data plane never calls the control plane on the request path.

pub mod access;
pub mod bootstrap;
pub mod config;
pub mod config_source;
pub mod config_stream;
pub mod http_server;
pub mod ingest;
pub mod metrics;
pub mod mqtt;
pub mod node;
pub mod parse;
pub mod problem;
pub mod rate_limit;
pub mod token_table;
pub mod uring_io;

pub use config::NodeConfig;
pub use node::{Node, NodeError};
