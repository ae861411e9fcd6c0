//! Sluice's data plane: takes events over HTTP (hyper on io_uring, or epoll where io_uring
//! is refused) and MQTT (ntex-mqtt),
//! checks every request against the node's configuration snapshot, and hands accepted batches
//! to the storage pipeline, answering only once they are durable.
//!
//! - [`node`]: assembles and runs a node.
//! - `admit`: the one admission path both protocols take (access, parse, rate, envelope,
//!   WAL).
//! - `http`: the HTTP front end (io_uring or epoll), the ingest API and its problem+json
//!   refusals.
//! - `mqtt`: the MQTT 3.1.1 and 5 front end on ntex-mqtt.
//! - `export`: export endpoints, outputs read back from the lake for end-users.
//! - `webhooks`: outputs delivered to subscribers' URLs, by the node that accepted the events.
//! - `access`, `token_table` and `rate_limit`: token checks against the snapshot, the
//!   copy-on-write token index, per-workspace rates.
//! - [`config`], `config_source`, `config_stream`, `bootstrap`: settings, and where the
//!   snapshot comes from (a file, the control plane, or the first start's bootstrap).
//! - `metrics`: the node's Prometheus registry behind `/metrics`.
//!
//! The data plane never calls the control plane on the request path. Only what the `sluice`
//! binary and the benchmarks need is public.
#![forbid(unsafe_code)]

mod access;
mod admit;
pub mod bootstrap;
pub mod config;
mod config_source;
mod config_stream;
mod export;
mod flat_schema;
mod http;
mod metrics;
mod mqtt;
pub mod node;
mod parse;
mod rate_limit;
mod raw_pointer;
mod shape;
mod token_table;
mod webhooks;

pub use bootstrap::Bootstrap;
pub use config::NodeConfig;
pub use http::io_driver::HttpIoDriver;
pub use mqtt::IoDriver;
pub use node::{Node, NodeError};

/// What the benchmarks build on: the HTTP front end's listener and socket adapter (for a bare
/// baseline server on the same I/O path) and the access table (whose apply time they measure).
pub mod bench_api {
    pub use crate::access::{Access, RateDefaults};
    pub use crate::http::server::bind;
    pub use crate::http::uring_io::UringIo;
}
