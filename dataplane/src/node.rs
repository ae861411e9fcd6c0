//! A data-plane node: opens the WAL, the upload progress, the lake and the config, starts the
//! shipper, the configuration's source and the HTTP and MQTT front ends, all on one
//! [`Shutdown`] signal. On it the front ends stop taking requests and let the ones in flight
//! finish, and the shipper uploads what the WAL holds, within the signal's deadline;
//! [`Node::join`] waits for all of them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice_config::snapshot::ConfigSnapshot;
use sluice_storage::cache::{CacheError, ConfigCache};
use sluice_storage::lake::{Lake, LakeError};

use crate::export::reader::FileCache;
use crate::export::Exports;
use crate::webhooks::cursors::Cursors;
use crate::webhooks::{ReportTo, Webhooks};
use sluice_storage::metrics::StorageMetrics;
use sluice_storage::progress::{Progress, ProgressError};
use sluice_storage::shipper::{self, ShipperConfig, ShipperError, ShipperHandle};
use sluice_storage::shutdown::Shutdown;
use sluice_storage::wal::{Wal, WalConfig, WalError};
use tracing::{info, warn};

use crate::access::{Access, RateDefaults};
use crate::admit::{Admission, AdmitLimits};
use crate::bootstrap::{self, Bootstrap};
use crate::config::{ConfigError, NodeConfig};
use crate::config_source::{self, SnapshotWatch, SourceError};
use crate::config_stream::{ConfigStream, StreamSettings, StreamStatus};
use crate::http::api::Api;
use crate::http::server::{HttpServer, HttpStartError};
use crate::metrics::NodeMetrics;
use crate::mqtt::ingest::MqttIngest;
use crate::mqtt::throttle::ConnectFailures;
use crate::mqtt::MqttServer;

/// Errors that keep a node from starting.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Progress(#[from] ProgressError),
    #[error(transparent)]
    Shipper(#[from] ShipperError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("the node's configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("starting HTTP on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: HttpStartError,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let context = context.into();
    move |source| NodeError::Io { context, source }
}

/// A running node.
pub struct Node {
    http: HttpServer,
    mqtt: Option<MqttServer>,
    shipper: ShipperHandle,
    watch: Option<SnapshotWatch>,
    /// Follows the control plane, when configured.
    stream: Option<ConfigStream>,
    /// Where export endpoints read the lake.
    export_runtime: tokio::runtime::Runtime,
    bootstrap: Option<Bootstrap>,
    lake_url: String,
    lake_local: Option<PathBuf>,
    data_dir: PathBuf,
    /// Shared with the HTTP runtimes: `/readyz` reads its draining flag.
    api: Arc<Api>,
    /// How long to keep serving, unready, before the listeners close (`shutdown_drain_ms`,
    /// at most half the grace).
    drain: Duration,
}

impl Node {
    /// Starts a node whose every thread stops on `shutdown`.
    pub fn start(config: NodeConfig, shutdown: Shutdown) -> Result<Node, NodeError> {
        config.validate()?;
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir)
            .map_err(io(format!("creating data dir {}", data_dir.display())))?;
        let node_id = match &config.node_id {
            Some(id) => id.clone(),
            None => node_id(&data_dir)?,
        };
        let lake_spec = config
            .object_store
            .clone()
            .unwrap_or_else(|| data_dir.join("lake").display().to_string());
        let lake = Lake::open(&lake_spec)?;
        let storage_metrics = StorageMetrics::default();
        let metrics = Arc::new(NodeMetrics::new(&storage_metrics));

        let progress = Progress::open(&data_dir.join("progress.redb"), &data_dir.join("wal"))?;
        let min_next_lsn = progress.load()?.values().max().map_or(1, |lsn| lsn + 1);
        let mut wal_config = WalConfig::new(data_dir.join("wal"));
        wal_config.bytes_max = config.wal.bytes_max;
        // The segment being written is never deleted, so the quota must hold several
        // segments or a full active segment would block ingest for good.
        wal_config.segment_bytes_max = config
            .wal
            .segment_bytes
            .min(config.wal.bytes_max / 4)
            .max(4096);
        if wal_config.segment_bytes_max < config.wal.segment_bytes {
            warn!(
                segment_bytes = wal_config.segment_bytes_max,
                "wal.segment_bytes lowered to a quarter of wal.bytes_max"
            );
        }
        let wal = Wal::open(wal_config, min_next_lsn, storage_metrics.clone())?;

        let mut shipper_config = ShipperConfig::new(node_id.clone());
        shipper_config.batch_max_rows = config.batch.max_rows;
        shipper_config.batch_max_bytes = config.batch.max_bytes;
        shipper_config.batch_max_age = Duration::from_millis(config.batch.max_age_ms);
        shipper_config.held_bytes_max = config.batch.held_bytes_max;
        shipper_config.uploads_max = config.batch.uploads_max.max(1);
        // Shorter would give up uploads that are merely slow, again and again.
        shipper_config.upload_timeout =
            Duration::from_millis(config.batch.upload_timeout_ms.max(1000));
        let lake_url = lake.url().to_owned();
        let lake_local = lake.local_root().map(Path::to_path_buf);
        let export_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.export.threads.max(1))
            .max_blocking_threads(config.export.threads.max(1) * 2)
            .thread_name("sluice-export")
            .enable_all()
            .build()
            .map_err(io("starting the export runtime"))?;
        let export_lake = lake.clone();
        let shipper = shipper::start(
            shipper_config,
            &wal,
            progress,
            lake,
            storage_metrics.clone(),
            shutdown.clone(),
        )?;
        let file_cache = Arc::new(FileCache::new(config.export.cache_bytes_max));
        let exports = Arc::new(Exports::new(
            export_lake.clone(),
            file_cache.clone(),
            shipper.status(),
            metrics.clone(),
            export_runtime.handle().clone(),
            config.export.clone(),
            shutdown.clone(),
        ));

        let cache = Arc::new(ConfigCache::open(&data_dir.join("cache.redb"))?);
        let cached = cache.load()?;
        // A node following a control plane with nothing cached has no configuration until
        // the stream's first answer: it refuses traffic meanwhile (503) rather than answering
        // every token as unknown.
        let awaiting = config.control_plane.is_some() && cached.is_none();
        let (snapshot, mut bootstrap) = initial_config(&config, &cache, cached)?;
        let rates = RateDefaults {
            events_per_second: config.workspace_events_per_second,
        };
        let access = Arc::new(Access::new(&snapshot, rates));
        if awaiting {
            access.await_configuration();
            info!("no configuration yet: refusing traffic until the control plane answers");
        }
        metrics.config_version.set(snapshot.version as i64);
        let stream_status = Arc::new(StreamStatus::default());
        let stream = match &config.control_plane {
            Some(url) => {
                // Present: checked by `validate`.
                let secret = config.cluster_secret.clone().unwrap_or_default();
                Some(
                    ConfigStream::start(
                        StreamSettings {
                            url: url.clone(),
                            secret,
                            node_id: node_id.clone(),
                            http_addr: config.http.addr.to_string(),
                        },
                        snapshot.clone(),
                        cache.clone(),
                        access.clone(),
                        metrics.clone(),
                        stream_status.clone(),
                        shutdown.clone(),
                    )
                    .map_err(io("starting the configuration stream"))?,
                )
            }
            None => None,
        };
        let watch = match &config.config_snapshot {
            Some(path) => Some(
                SnapshotWatch::start(
                    path.clone(),
                    config.snapshot_nudge.clone(),
                    snapshot.clone(),
                    cache.clone(),
                    access.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                )
                .map_err(io("starting the config snapshot watch"))?,
            ),
            None => None,
        };

        let cursors = Arc::new(
            Cursors::open(&data_dir.join("webhooks.redb"))
                .map_err(|e| io("opening webhooks.redb")(std::io::Error::other(e)))?,
        );
        let webhooks = Webhooks {
            access: access.clone(),
            lake: export_lake,
            node: node_id.clone(),
            cursors,
            shipper: shipper.status(),
            cache: file_cache,
            metrics: metrics.clone(),
            cluster_secret: config.cluster_secret.clone(),
            report_to: config.control_plane.clone().map(|url| ReportTo {
                control_plane: url,
                secret: config.cluster_secret.clone().unwrap_or_default(),
            }),
        };
        export_runtime.spawn(webhooks.run(shutdown.clone()));

        let admission = Arc::new(Admission {
            access,
            wal,
            limits: AdmitLimits {
                events_per_batch_max: config.http.events_per_request_max,
            },
        });
        let mqtt = MqttServer::start(
            Arc::new(MqttIngest {
                admission: admission.clone(),
                metrics: metrics.clone(),
                limits: config.mqtt.clone(),
                failures: ConnectFailures::new(config.mqtt.failed_connects_per_minute),
                inflight: Arc::new(tokio::sync::Semaphore::new(
                    config.mqtt.inflight_bytes_max.clamp(
                        config.mqtt.payload_bytes_max,
                        tokio::sync::Semaphore::MAX_PERMITS,
                    ),
                )),
                shutdown: shutdown.clone(),
            }),
            shutdown.clone(),
        )
        .map_err(io("starting MQTT"))?;
        let mut api = Api::new(
            admission,
            metrics,
            shipper.status(),
            config.http.clone(),
            config
                .control_plane
                .clone()
                .map(|url| (url, stream_status.clone())),
        );
        api.exports = Some(exports);
        let api = Arc::new(api);
        // Written before the listeners open when their address is known, so that whoever sees
        // `/healthz` answer finds the file complete (port 0: after, below).
        if let Some(b) = bootstrap.as_mut().filter(|_| config.http.addr.port() != 0) {
            let url = format!(
                "http://{}/v1/ingest/{}/{}",
                config.http.addr, b.workspace, b.source
            );
            if b.http_url != url {
                b.http_url = url;
                bootstrap::write(&data_dir, b).map_err(io("writing bootstrap.json"))?;
            }
        }
        let http = HttpServer::start(api.clone(), shutdown).map_err(|source| NodeError::Http {
            addr: config.http.addr,
            source,
        })?;

        if let Some(b) = bootstrap.as_mut() {
            let url = format!(
                "http://{}/v1/ingest/{}/{}",
                http.local_addr(),
                b.workspace,
                b.source
            );
            if b.http_url != url {
                b.http_url = url;
                bootstrap::write(&data_dir, b).map_err(io("writing bootstrap.json"))?;
            }
        }
        info!(node = %node_id, lake = %lake_url, "data-plane node started");
        Ok(Node {
            http,
            mqtt,
            shipper,
            watch,
            stream,
            export_runtime,
            bootstrap,
            lake_url,
            lake_local,
            data_dir,
            api,
            drain: Duration::from_millis(
                config.shutdown_drain_ms.min(config.shutdown_grace_ms / 2),
            ),
        })
    }

    /// The first step of a shutdown: `/readyz` answers 503 from now on while everything is
    /// still served. Returns how long to wait before firing the shutdown signal, so that load
    /// balancers see the node unready and stop sending it connections: `shutdown_drain_ms`,
    /// or nothing when no one has asked `/readyz` since start (no one to tell).
    pub fn drain(&self) -> Duration {
        self.api.draining.store(true, Ordering::Relaxed);
        if self.api.readiness_asked.load(Ordering::Relaxed) {
            info!(
                drain_ms = self.drain.as_millis() as u64,
                "draining: /readyz answers 503; listeners close after the drain delay"
            );
            self.drain
        } else {
            Duration::ZERO
        }
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// The MQTT listener's address, when MQTT over TCP is on.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt.as_ref().and_then(MqttServer::addr)
    }

    /// The MQTT over TLS listener's address, when configured.
    pub fn mqtts_addr(&self) -> Option<SocketAddr> {
        self.mqtt.as_ref().and_then(MqttServer::tls_addr)
    }

    /// The bootstrap workspace, source and token, when this node serves the bootstrap config.
    pub fn bootstrap(&self) -> Option<&Bootstrap> {
        self.bootstrap.as_ref()
    }

    /// Where the bootstrap workspace, source and token are written.
    pub fn bootstrap_path(&self) -> PathBuf {
        bootstrap::path(&self.data_dir)
    }

    pub fn lake_url(&self) -> &str {
        &self.lake_url
    }

    /// The lake's directory when it is local.
    pub fn lake_dir(&self) -> Option<&Path> {
        self.lake_local.as_deref()
    }

    /// Waits for every thread of the node to end, after the shutdown signal: the front ends
    /// first (their end closes the WAL's writer), then the shipper, which uploads until then.
    pub fn join(self) {
        info!("stopping: no new requests; uploading what is buffered");
        if let Some(mqtt) = self.mqtt {
            mqtt.join();
        }
        self.http.join();
        // Live streams end on the shutdown signal; pages in flight are given up.
        self.export_runtime.shutdown_timeout(Duration::from_secs(1));
        if let Some(stream) = self.stream {
            stream.join();
        }
        if let Some(watch) = self.watch {
            watch.join();
        }
        // The last holder of the WAL's writer: dropped, the writer closes and the shipper
        // knows nothing more will come.
        drop(self.api);
        self.shipper.join();
        info!("stopped");
    }
}

/// The snapshot to serve at start, and the bootstrap when the config is the bootstrap one.
fn initial_config(
    config: &NodeConfig,
    cache: &ConfigCache,
    cached: Option<ConfigSnapshot>,
) -> Result<(ConfigSnapshot, Option<Bootstrap>), NodeError> {
    if config.control_plane.is_some() {
        // Until the first version arrives: the last-known-good copy, else nothing (every
        // request refused), never a bootstrap of its own.
        return Ok((cached.unwrap_or_else(ConfigSnapshot::empty), None));
    }
    if let Some(path) = &config.config_snapshot {
        match (config_source::read_snapshot_file(path), cached) {
            (Ok(file), Some(cached)) if cached.version > file.version => {
                warn!(
                    file_version = file.version,
                    cached_version = cached.version,
                    "the snapshot file is older than the cached snapshot; serving the cached one"
                );
                return Ok((cached, None));
            }
            (Ok(file), _) => {
                cache.store(&file)?;
                return Ok((file, None));
            }
            (Err(err), Some(cached)) => {
                warn!(error = %err, version = cached.version, "serving the last-known-good cached snapshot");
                return Ok((cached, None));
            }
            (Err(err), None) => return Err(err.into()),
        }
    }
    if let Some(cached) = cached {
        return Ok((cached, bootstrap::read(&config.data_dir)));
    }
    let (snapshot, bootstrap) = bootstrap::create();
    bootstrap::write(&config.data_dir, &bootstrap).map_err(io("writing bootstrap.json"))?;
    cache.store(&snapshot)?;
    info!("first start: created workspace `default` with source `telemetry` and an ingest token");
    Ok((snapshot, Some(bootstrap)))
}

/// This node's id, generated on first start and kept in `<data-dir>/node_id`.
fn node_id(data_dir: &Path) -> Result<String, NodeError> {
    let path = data_dir.join("node_id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_owned());
        }
    }
    let id = format!("node-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    std::fs::write(&path, format!("{id}\n")).map_err(io("writing node_id"))?;
    Ok(id)
}
