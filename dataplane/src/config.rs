//! Settings of a data-plane node, with their defaults. The `sluice` command fills this from a
//! TOML file, `SLUICE_*` environment variables and flags (docs/configuration.md lists them).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use sluice_storage::layout::{is_valid_node_id, NODE_ID_LEN_MAX};

use crate::http::io_driver::HttpIoDriver;
use crate::mqtt::IoDriver;

/// Everything a node needs to start.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Root of the node's files: WAL, caches, bootstrap, and the default lake.
    pub data_dir: PathBuf,
    /// Where Parquet files go; `<data-dir>/lake` when unset.
    pub object_store: Option<String>,
    /// Name of this node in object names; generated once and kept in the data dir when unset.
    pub node_id: Option<String>,
    /// A JSON snapshot file to serve from (watched for changes); the cache or the bootstrap
    /// when unset.
    pub config_snapshot: Option<PathBuf>,
    /// Told when the control plane in the same process (`sluice up`) has written a new
    /// version of `config_snapshot`, so that the node applies it at once rather than at its
    /// next poll of the file. Not a setting.
    #[serde(skip)]
    pub snapshot_nudge: Option<sluice_config::nudge::SnapshotNudge>,
    /// Control-plane URL (`http://host:port`) to follow the configuration stream from; the
    /// cache (or nothing) until the first version arrives. Excludes `config_snapshot`.
    pub control_plane: Option<String>,
    /// Secret shared with the control plane for the stream.
    pub cluster_secret: Option<String>,
    pub http: HttpConfig,
    pub mqtt: MqttConfig,
    pub batch: BatchConfig,
    pub wal: WalSettings,
    pub export: ExportConfig,
    /// Events per second one workspace may send to this node, unless its config says otherwise.
    pub workspace_events_per_second: u64,
    /// How long shutdown waits for requests in flight and the last uploads.
    pub shutdown_grace_ms: u64,
    /// On SIGTERM, how long the node keeps serving while `/readyz` says 503, so that load
    /// balancers take it out before its listeners close; part of `shutdown_grace_ms` (at
    /// most half of it).
    pub shutdown_drain_ms: u64,
}

/// Limits of the HTTP front end.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    /// HTTP threads (one runtime each); one per core when 0.
    pub threads: usize,
    /// The I/O driver of those threads: `auto` (io_uring, or epoll where the kernel refuses
    /// io_uring), `io_uring` or `epoll`.
    pub io_driver: HttpIoDriver,
    pub connections_max: usize,
    /// Largest request head (request line and headers).
    pub header_bytes_max: usize,
    /// Largest request body as sent.
    pub body_bytes_max: usize,
    /// Largest body after gzip/zstd decompression.
    pub decoded_body_bytes_max: usize,
    pub events_per_request_max: usize,
    /// Bytes of request bodies held in memory by all requests together.
    pub inflight_bytes_max: usize,
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    /// After the first 5 s, the slowest a body may arrive on average; slower, `408`.
    pub body_bytes_per_second_min: usize,
    /// A connection with no bytes arriving for this long is closed.
    pub idle_timeout_ms: u64,
}

/// The MQTT front end (3.1.1 and 5).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Plain TCP listener; `None` turns it off.
    pub addr: Option<SocketAddr>,
    /// TLS listener; off unless set, and then `tls_cert` and `tls_key` are required.
    pub tls_addr: Option<SocketAddr>,
    /// PEM certificate chain for the TLS listener.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the TLS listener.
    pub tls_key: Option<PathBuf>,
    /// Threads running MQTT connections; 0 = one per available core.
    pub workers: usize,
    /// No longer used (MQTT runs on epoll); `io_uring` is taken and logged as unused.
    pub io_driver: IoDriver,
    /// Open connections at most, all listeners together.
    pub connections_max: usize,
    /// QoS 1 and 2 messages a client may have unacknowledged (MQTT 5 Receive Maximum; the
    /// same window is applied to 3.1.1 clients by not reading past it).
    pub receive_max: u16,
    /// Largest MQTT packet accepted; a larger one closes the connection (0x95 on MQTT 5).
    pub packet_bytes_max: u32,
    /// Largest payload stored; a larger one is refused (0x97 on MQTT 5).
    pub payload_bytes_max: usize,
    /// Payload bytes of all MQTT messages received and not yet in the WAL, all connections
    /// together; past it publishes wait (and are refused after 10 s).
    pub inflight_bytes_max: usize,
    /// Keep-alive a client may ask for at most, in seconds (0 = no keep-alive is refused).
    pub keep_alive_max_secs: u16,
    /// Time a client has to send its CONNECT after the TCP (or TLS) handshake.
    pub connect_timeout_secs: u16,
    /// Failed CONNECTs one address may make per minute before its refusals are delayed.
    pub failed_connects_per_minute: u32,
    /// Largest CONNECT packet: a client that has not authenticated gets no more room.
    pub connect_bytes_max: u32,
    /// Connections that have not authenticated yet, at once; more wait for a place for up to
    /// `connect_timeout_secs`, then are answered "server busy" (never closed unanswered).
    pub connecting_max: usize,
}

/// When a batch becomes a Parquet file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_age_ms: u64,
    /// Memory for open batches and files awaiting upload, all sources together.
    pub held_bytes_max: usize,
    pub uploads_max: usize,
    /// One upload attempt is given up after this long and retried: a store that never
    /// answers must not hold a (workspace, source) pair's files forever. At least 1000.
    pub upload_timeout_ms: u64,
}

/// Export endpoints (`/v1/stream/{workspace}/{endpoint}`), read from the lake.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// Live (SSE) streams open at once on this node; past it, `503 overloaded`.
    pub streams_max: usize,
    /// How often a live stream that has caught up looks for newly committed files.
    pub poll_ms: u64,
    /// NDJSON pages read at once on this node; past it, `503 overloaded`.
    pub pages_max: usize,
    /// Events one NDJSON page holds at most (`limit` is capped to it).
    pub page_events_max: usize,
    /// Bytes one NDJSON page holds at most (a page ends after the event that passes it).
    pub page_bytes_max: usize,
    /// A live stream with nothing to send writes an SSE comment this often, so that proxies
    /// and readers see it alive.
    pub heartbeat_ms: u64,
    /// Threads reading and decoding files for readers.
    pub threads: usize,
    /// Memory for files decoded recently, shared by the node's readers and webhook
    /// deliveries (a file larger than all of it is not kept).
    pub cache_bytes_max: usize,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            streams_max: 256,
            poll_ms: 500,
            pages_max: 16,
            page_events_max: 10_000,
            page_bytes_max: 8 << 20,
            heartbeat_ms: 15_000,
            threads: 1,
            cache_bytes_max: 512 << 20,
        }
    }
}

/// Write-ahead log limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalSettings {
    /// Disk quota; past it ingest answers 503.
    pub bytes_max: u64,
    pub segment_bytes: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("data"),
            object_store: None,
            node_id: None,
            config_snapshot: None,
            snapshot_nudge: None,
            control_plane: None,
            cluster_secret: None,
            http: HttpConfig::default(),
            mqtt: MqttConfig::default(),
            batch: BatchConfig::default(),
            wal: WalSettings::default(),
            export: ExportConfig::default(),
            workspace_events_per_second: 1_000_000,
            shutdown_grace_ms: 10_000,
            shutdown_drain_ms: 2_000,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            threads: 0,
            io_driver: HttpIoDriver::Auto,
            connections_max: 10_000,
            header_bytes_max: 16 << 10,
            body_bytes_max: 8 << 20,
            decoded_body_bytes_max: 64 << 20,
            events_per_request_max: 100_000,
            inflight_bytes_max: 512 << 20,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            body_bytes_per_second_min: 1024,
            idle_timeout_ms: 120_000,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            addr: Some(SocketAddr::from(([127, 0, 0, 1], 1883))),
            tls_addr: None,
            tls_cert: None,
            tls_key: None,
            workers: 0,
            io_driver: IoDriver::Epoll,
            connections_max: 20_000,
            receive_max: 64,
            packet_bytes_max: 1 << 20,
            payload_bytes_max: 256 << 10,
            inflight_bytes_max: 256 << 20,
            keep_alive_max_secs: 3600,
            connect_timeout_secs: 10,
            failed_connects_per_minute: 10,
            connect_bytes_max: 64 << 10,
            connecting_max: 1024,
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_rows: 1_000_000,
            max_bytes: 128 << 20,
            max_age_ms: 60_000,
            held_bytes_max: 512 << 20,
            uploads_max: 4,
            upload_timeout_ms: 300_000,
        }
    }
}

impl Default for WalSettings {
    fn default() -> Self {
        WalSettings {
            bytes_max: 4 << 30,
            segment_bytes: 64 << 20,
        }
    }
}

/// A configuration mistake found when the node starts, before anything is opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("node id {0:?} is not valid: use 1 to {NODE_ID_LEN_MAX} of A-Z, a-z, 0-9, -, _ and .")]
    NodeId(String),
    #[error(
        "--control-plane needs --cluster-secret (the secret the control plane was started with)"
    )]
    ControlPlaneWithoutSecret,
    #[error("--control-plane and --config-snapshot exclude each other: choose where the configuration comes from")]
    TwoConfigSources,
    #[error("control-plane URL {0:?} must start with http://")]
    ControlPlaneUrl(String),
    #[error("mqtt.tls_addr needs mqtt.tls_cert and mqtt.tls_key (PEM files)")]
    TlsWithoutCertificate,
}

impl NodeConfig {
    /// Checks the settings that depend on each other, once, at start.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(id) = &self.node_id {
            if !is_valid_node_id(id) {
                return Err(ConfigError::NodeId(id.clone()));
            }
        }
        if let Some(url) = &self.control_plane {
            if self.cluster_secret.as_deref().is_none_or(str::is_empty) {
                return Err(ConfigError::ControlPlaneWithoutSecret);
            }
            if self.config_snapshot.is_some() {
                return Err(ConfigError::TwoConfigSources);
            }
            if !url.starts_with("http://") {
                return Err(ConfigError::ControlPlaneUrl(url.clone()));
            }
        }
        if self.mqtt.tls_addr.is_some()
            && (self.mqtt.tls_cert.is_none() || self.mqtt.tls_key.is_none())
        {
            return Err(ConfigError::TlsWithoutCertificate);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_contradict_each_other_are_refused_at_start() {
        let ok = NodeConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let mut c = NodeConfig {
            control_plane: Some("http://cp:8080".into()),
            ..NodeConfig::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::ControlPlaneWithoutSecret));
        c.cluster_secret = Some("s".into());
        assert_eq!(c.validate(), Ok(()));
        c.config_snapshot = Some("snap.json".into());
        assert_eq!(c.validate(), Err(ConfigError::TwoConfigSources));
        c.config_snapshot = None;
        c.control_plane = Some("https://cp".into());
        assert!(matches!(c.validate(), Err(ConfigError::ControlPlaneUrl(_))));
        let bad_id = NodeConfig {
            node_id: Some("a/b".into()),
            ..NodeConfig::default()
        };
        assert!(matches!(bad_id.validate(), Err(ConfigError::NodeId(_))));
    }
}
