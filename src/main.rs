//! `sluice`: the one command.
//!
//! `sluice up` runs everything a single machine needs with embedded defaults: the control-plane
//! API and a data-plane node. `sluice dataplane` runs a data-plane node, `sluice controlplane`
//! the control plane. Settings come from defaults, then a TOML file (`--config`; control-plane
//! settings in its `[controlplane]` table), then `SLUICE_*` environment variables, then flags;
//! docs/configuration.md lists them all.
// One call into the C library (`memory.rs`, mallopt) is the only unsafe code, allowed there.
#![deny(unsafe_code)]

mod backup;
mod cluster_secret;
mod descriptors;
mod health;
mod memory;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use sluice_controlplane::{ControlPlane, ControlPlaneConfig, FirstStart};
use sluice_dataplane::bootstrap::{self, Bootstrap};
use sluice_dataplane::{Node, NodeConfig};
use sluice_storage::shutdown::{Shutdown, ShutdownTrigger};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Telemetry ingest: HTTP in, Parquet on object storage out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run Sluice on this machine with embedded defaults (everything under --data-dir): the
    /// control-plane API and a data-plane node.
    Up(Box<UpArgs>),
    /// Run one data-plane node.
    Dataplane(Box<NodeArgs>),
    /// Run the control plane (the management API).
    Controlplane(Box<ControlPlaneArgs>),
    /// Check a running Sluice: GET the URL (plain HTTP), exit 0 on a 2xx answer, else 1 with
    /// the reason. For container health checks, e.g. `sluice health http://127.0.0.1:8081/readyz`.
    Health(HealthArgs),
}

/// `sluice health`.
#[derive(Args)]
struct HealthArgs {
    /// The URL to GET, e.g. http://127.0.0.1:8081/healthz.
    url: String,
    /// How long the whole check may take, in ms.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
}

/// `sluice up`: both planes.
#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    api: ApiArgs,
}

/// `sluice controlplane`.
#[derive(Args)]
struct ControlPlaneArgs {
    /// TOML file; control-plane settings go in its `[controlplane]` table.
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for controlplane.redb, initial-operator.json and the mail outbox
    /// [default: ./data].
    #[arg(long, env = "SLUICE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Object storage of the data plane, where deleted workspaces' data is removed
    /// [default: <data-dir>/lake].
    #[arg(long, env = "SLUICE_OBJECT_STORE")]
    object_store: Option<String>,
    /// Secret data-plane nodes present to receive the configuration stream (off without it).
    #[arg(long, env = "SLUICE_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    action: Option<ControlPlaneAction>,
}

/// `sluice controlplane backup` and `restore`.
#[derive(Subcommand)]
enum ControlPlaneAction {
    /// Save a consistent copy of the running control plane's store (controlplane.redb) to a
    /// new file, taken by the control plane while it runs (an operator's token).
    Backup(BackupArgs),
    /// Put a backup in place of the store in --data-dir (the control plane stopped); the
    /// replaced store is kept beside it, and nodes get the restored configuration as a new
    /// version.
    Restore(RestoreArgs),
}

/// `sluice controlplane backup`.
#[derive(Args)]
struct BackupArgs {
    /// The file, or the object (s3://bucket/key, gs://, az://, with the lake's AWS_*/GOOGLE_*/
    /// AZURE_* environment), to write; it must not exist.
    target: String,
    /// The control plane's API.
    #[arg(long, env = "SLUICE_API_URL", default_value = "http://127.0.0.1:8080")]
    api_url: String,
    /// An operator's session or personal access token.
    #[arg(long, env = "SLUICE_OPERATOR_TOKEN", hide_env_values = true)]
    token: String,
    /// How long connecting and each read may take, in ms.
    #[arg(long, default_value_t = 60_000)]
    timeout_ms: u64,
}

/// `sluice controlplane restore`.
#[derive(Args)]
struct RestoreArgs {
    /// The backup: a file, or an object (s3://bucket/key, gs://, az://).
    source: String,
    /// The stopped control plane's data directory.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
}

/// Control-plane settings; each overrides the TOML file and the built-in default.
#[derive(Args)]
struct ApiArgs {
    /// Control-plane API address [default: 127.0.0.1:8080].
    #[arg(long, env = "SLUICE_API_ADDR")]
    api_addr: Option<SocketAddr>,
    /// Address people reach the API at, used in links sent by e-mail
    /// [default: http://<api-addr>].
    #[arg(long, env = "SLUICE_PUBLIC_URL")]
    public_url: Option<String>,
    /// Where devices reach HTTP ingest, as workspaces' AsyncAPI documents name it
    /// [default: http://<http-addr>].
    #[arg(long, env = "SLUICE_INGEST_PUBLIC_URL")]
    ingest_public_url: Option<String>,
    /// Where devices reach MQTT (mqtt:// or mqtts://), as workspaces' AsyncAPI documents name
    /// it [default: mqtt://<mqtt-addr>].
    #[arg(long, env = "SLUICE_MQTT_PUBLIC_URL")]
    mqtt_public_url: Option<String>,
    /// Platform SMTP server, e.g. smtp://user:pass@host:587?tls=required; without it mail goes
    /// to <data-dir>/outbox and the log.
    #[arg(long, env = "SLUICE_SMTP_URL")]
    smtp_url: Option<String>,
    /// Sender of platform mail [default: Sluice <no-reply@sluice.localhost>].
    #[arg(long, env = "SLUICE_MAIL_FROM")]
    mail_from: Option<String>,
    /// Extra CA certificate (PEM) trusted for SMTP over TLS (platform and workspace servers).
    #[arg(long, env = "SLUICE_SMTP_CA_FILE")]
    smtp_ca_file: Option<PathBuf>,
    /// Let workspace SMTP servers and webhook receivers be on loopback, private or link-local
    /// addresses (and webhook URLs be http://).
    #[arg(long, env = "SLUICE_SMTP_ALLOW_PRIVATE_HOSTS")]
    smtp_allow_private_hosts: bool,
    /// Key (64 hex digits) encrypting stored secrets such as workspace SMTP passwords
    /// [default: the key in --secret-key-file].
    #[arg(long, env = "SLUICE_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    /// File with the secret key, created with a random key when missing
    /// [default: <data-dir>/secret.key].
    #[arg(long, env = "SLUICE_SECRET_KEY_FILE")]
    secret_key_file: Option<PathBuf>,
    /// Earlier secret keys, comma-separated, to open secrets sealed before a rotation.
    #[arg(
        long,
        env = "SLUICE_PREVIOUS_SECRET_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    previous_secret_keys: Vec<String>,
    /// Length of a new user's free trial in seconds [default: 1209600, 14 days].
    #[arg(long, env = "SLUICE_TRIAL_DURATION_SECS")]
    trial_duration_secs: Option<u64>,
    /// How often ended trials are looked for, in ms [default: 60000].
    #[arg(long, env = "SLUICE_TRIAL_CHECK_INTERVAL_MS")]
    trial_check_interval_ms: Option<u64>,
}

/// Reads the TOML file into the node's settings and the `[controlplane]` table.
fn read_config_file(path: Option<&PathBuf>) -> Result<(NodeConfig, ControlPlaneConfig)> {
    let Some(path) = path else {
        return Ok((NodeConfig::default(), ControlPlaneConfig::default()));
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let mut table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
    let controlplane = match table.remove("controlplane") {
        Some(value) => value
            .try_into()
            .with_context(|| format!("[controlplane] in {} is not valid", path.display()))?,
        None => ControlPlaneConfig::default(),
    };
    let node = toml::Value::Table(table)
        .try_into()
        .with_context(|| format!("config file {} is not valid", path.display()))?;
    Ok((node, controlplane))
}

impl ApiArgs {
    fn apply(self, config: &mut ControlPlaneConfig) {
        if let Some(addr) = self.api_addr {
            config.api_addr = addr;
        }
        if self.public_url.is_some() {
            config.public_url = self.public_url;
        }
        if self.ingest_public_url.is_some() {
            config.ingest_public_url = self.ingest_public_url;
        }
        if self.mqtt_public_url.is_some() {
            config.mqtt_public_url = self.mqtt_public_url;
        }
        if self.smtp_url.is_some() {
            config.smtp_url = self.smtp_url;
        }
        if let Some(from) = self.mail_from {
            config.mail_from = from;
        }
        if self.smtp_ca_file.is_some() {
            config.smtp_ca_file = self.smtp_ca_file;
        }
        if self.smtp_allow_private_hosts {
            config.smtp_allow_private_hosts = true;
        }
        if self.secret_key.is_some() {
            config.secret_key = self.secret_key;
        }
        if self.secret_key_file.is_some() {
            config.secret_key_file = self.secret_key_file;
        }
        if !self.previous_secret_keys.is_empty() {
            config.previous_secret_keys = self.previous_secret_keys;
        }
        if let Some(secs) = self.trial_duration_secs {
            config.trial_duration_secs = secs;
        }
        if let Some(ms) = self.trial_check_interval_ms {
            config.trial_check_interval_ms = ms;
        }
    }
}

impl ControlPlaneArgs {
    fn into_config(self) -> Result<ControlPlaneConfig> {
        let (_, mut config) = read_config_file(self.config.as_ref())?;
        if let Some(dir) = self.data_dir {
            config.data_dir = dir;
        }
        if self.object_store.is_some() {
            config.object_store = self.object_store;
        }
        if self.cluster_secret.is_some() {
            config.cluster_secret = self.cluster_secret;
        }
        self.api.apply(&mut config);
        Ok(config)
    }
}

/// Node settings; each overrides the TOML file and the built-in default.
#[derive(Args)]
struct NodeArgs {
    /// TOML file with node settings (same names as docs/configuration.md).
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for the WAL, caches, bootstrap.json and the default lake [default: ./data].
    #[arg(long, env = "SLUICE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Object storage for Parquet: a path, file:///abs, s3://bucket/prefix, gs://, az://,
    /// memory:// [default: <data-dir>/lake].
    #[arg(long, env = "SLUICE_OBJECT_STORE")]
    object_store: Option<String>,
    /// HTTP ingest address [default: 127.0.0.1:8081].
    #[arg(long, env = "SLUICE_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// HTTP threads; 0 = one per core [default: 0].
    #[arg(long, env = "SLUICE_HTTP_THREADS")]
    http_threads: Option<usize>,
    /// I/O driver of the HTTP threads: auto (io_uring, epoll where the kernel refuses
    /// io_uring), io_uring or epoll [default: auto].
    #[arg(long, env = "SLUICE_HTTP_IO_DRIVER")]
    http_io_driver: Option<sluice_dataplane::HttpIoDriver>,
    /// MQTT (3.1.1 and 5) address, or `off` [default: 127.0.0.1:1883].
    #[arg(long, env = "SLUICE_MQTT_ADDR", value_parser = listen_addr)]
    mqtt_addr: Option<Listen>,
    /// MQTT over TLS address, or `off`; needs --mqtt-tls-cert and --mqtt-tls-key
    /// [default: off].
    #[arg(long, env = "SLUICE_MQTTS_ADDR", value_parser = listen_addr)]
    mqtts_addr: Option<Listen>,
    /// PEM certificate chain for MQTT over TLS.
    #[arg(long, env = "SLUICE_MQTT_TLS_CERT")]
    mqtt_tls_cert: Option<PathBuf>,
    /// PEM private key for MQTT over TLS.
    #[arg(long, env = "SLUICE_MQTT_TLS_KEY")]
    mqtt_tls_key: Option<PathBuf>,
    /// Open MQTT connections at most [default: 20000].
    #[arg(long, env = "SLUICE_MQTT_CONNECTIONS_MAX")]
    mqtt_connections_max: Option<usize>,
    /// MQTT worker threads; 0 = one per available core [default: 0].
    #[arg(long, env = "SLUICE_MQTT_WORKERS")]
    mqtt_workers: Option<usize>,
    /// No longer used: the MQTT threads run on epoll (kept so that old command lines start).
    #[arg(long, env = "SLUICE_MQTT_IO_DRIVER")]
    mqtt_io_driver: Option<sluice_dataplane::IoDriver>,
    /// Name of this node in Parquet object names [default: generated, kept in the data dir].
    #[arg(long, env = "SLUICE_NODE_ID")]
    node_id: Option<String>,
    /// Serve the configuration from this JSON snapshot file (watched for changes).
    #[arg(long, env = "SLUICE_CONFIG_SNAPSHOT")]
    config_snapshot: Option<PathBuf>,
    /// Follow the configuration stream of this control plane (http://host:port).
    #[arg(long, env = "SLUICE_CONTROL_PLANE")]
    control_plane: Option<String>,
    /// Secret shared between the control plane and its data-plane nodes for the
    /// configuration stream; it also opens webhook secrets (in `sluice up`, also the control
    /// plane's, made once in <data-dir>/cluster-secret when not given).
    #[arg(long, env = "SLUICE_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Longest time an event waits in memory before its batch is written [default: 60000].
    #[arg(long, env = "SLUICE_BATCH_MAX_AGE_MS")]
    batch_max_age_ms: Option<u64>,
    /// Events per Parquet file at most [default: 1000000].
    #[arg(long, env = "SLUICE_BATCH_MAX_ROWS")]
    batch_max_rows: Option<usize>,
    /// Bytes of events per Parquet file at most, before compression [default: 134217728].
    #[arg(long, env = "SLUICE_BATCH_MAX_BYTES")]
    batch_max_bytes: Option<usize>,
    /// WAL disk quota in bytes; past it ingest answers 503 [default: 4294967296].
    #[arg(long, env = "SLUICE_WAL_BYTES_MAX")]
    wal_bytes_max: Option<u64>,
    /// WAL segment size in bytes [default: 67108864].
    #[arg(long, env = "SLUICE_WAL_SEGMENT_BYTES")]
    wal_segment_bytes: Option<u64>,
    /// Largest request body in bytes [default: 8388608].
    #[arg(long = "http-body-bytes-max", env = "SLUICE_HTTP_BODY_BYTES_MAX")]
    body_bytes_max: Option<usize>,
    /// Open HTTP connections at most [default: 10000].
    #[arg(long = "http-connections-max", env = "SLUICE_HTTP_CONNECTIONS_MAX")]
    connections_max: Option<usize>,
    /// Events per second per workspace on this node [default: 1000000].
    #[arg(long, env = "SLUICE_WORKSPACE_EVENTS_PER_SECOND")]
    workspace_events_per_second: Option<u64>,
    /// How long shutdown waits for requests and uploads, in ms [default: 10000].
    #[arg(long, env = "SLUICE_SHUTDOWN_GRACE_MS")]
    shutdown_grace_ms: Option<u64>,
    /// On SIGTERM, how long the node keeps serving with /readyz answering 503 before its
    /// listeners close, so that load balancers take it out first; in ms, at most half the
    /// grace, skipped when nothing asked /readyz [default: 2000].
    #[arg(long, env = "SLUICE_SHUTDOWN_DRAIN_MS")]
    shutdown_drain_ms: Option<u64>,
}

/// A listener address, or `off` (`None`).
#[derive(Clone, Copy, Debug)]
struct Listen(Option<SocketAddr>);

fn listen_addr(value: &str) -> Result<Listen, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(Listen(None));
    }
    value
        .parse()
        .map(|addr| Listen(Some(addr)))
        .map_err(|e| format!("{e}: give host:port or `off`"))
}

impl NodeArgs {
    /// The node's settings and the file's `[controlplane]` table.
    fn into_configs(self) -> Result<(NodeConfig, ControlPlaneConfig)> {
        let (mut config, controlplane) = read_config_file(self.config.as_ref())?;
        macro_rules! set {
            ($arg:ident => $($field:ident).+) => {
                if let Some(value) = self.$arg {
                    config.$($field).+ = value;
                }
            };
        }
        set!(data_dir => data_dir);
        set!(http_addr => http.addr);
        set!(http_threads => http.threads);
        set!(http_io_driver => http.io_driver);
        set!(batch_max_age_ms => batch.max_age_ms);
        set!(batch_max_rows => batch.max_rows);
        set!(batch_max_bytes => batch.max_bytes);
        set!(wal_bytes_max => wal.bytes_max);
        set!(wal_segment_bytes => wal.segment_bytes);
        set!(body_bytes_max => http.body_bytes_max);
        set!(connections_max => http.connections_max);
        set!(workspace_events_per_second => workspace_events_per_second);
        set!(shutdown_grace_ms => shutdown_grace_ms);
        set!(shutdown_drain_ms => shutdown_drain_ms);
        set!(mqtt_connections_max => mqtt.connections_max);
        set!(mqtt_workers => mqtt.workers);
        set!(mqtt_io_driver => mqtt.io_driver);
        if let Some(Listen(addr)) = self.mqtt_addr {
            config.mqtt.addr = addr;
        }
        if let Some(Listen(addr)) = self.mqtts_addr {
            config.mqtt.tls_addr = addr;
        }
        if self.mqtt_tls_cert.is_some() {
            config.mqtt.tls_cert = self.mqtt_tls_cert;
        }
        if self.mqtt_tls_key.is_some() {
            config.mqtt.tls_key = self.mqtt_tls_key;
        }
        if self.object_store.is_some() {
            config.object_store = self.object_store;
        }
        if self.node_id.is_some() {
            config.node_id = self.node_id;
        }
        if self.config_snapshot.is_some() {
            config.config_snapshot = self.config_snapshot;
        }
        if self.control_plane.is_some() {
            config.control_plane = self.control_plane;
        }
        if self.cluster_secret.is_some() {
            config.cluster_secret = self.cluster_secret;
        }
        Ok((config, controlplane))
    }
}

/// The log filter: `SLUICE_LOG` (tracing's `EnvFilter` syntax) or `info`.
fn log_filter(sluice_log: Option<String>) -> tracing_subscriber::EnvFilter {
    let directives = sluice_log
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "info".to_owned());
    tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(std::env::var("SLUICE_LOG").ok()))
        // Logs are diagnostics: stderr, like every server's, so stdout stays clean.
        .with_writer(std::io::stderr)
        .init();
    // object_store's HTTP client uses rustls without a built-in provider; pick ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The data dir holds secrets (tokens, the secret key, mailed links, password hashes):
    // everything this process creates is its user's only (files 0600, directories 0700).
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    memory::return_large_buffers_to_the_kernel();
    let cli = Cli::parse();
    match cli.command {
        Command::Health(args) => {
            match health::check(&args.url, Duration::from_millis(args.timeout_ms)) {
                Ok(status) => println!("{status}"),
                Err(err) => {
                    eprintln!("unhealthy: {err:#}");
                    std::process::exit(1);
                }
            }
        }
        Command::Up(args) => {
            let (mut node, mut controlplane) = args.node.into_configs()?;
            private_dir(&node.data_dir)?;
            // One machine, one data dir and one lake for both planes.
            controlplane.data_dir = node.data_dir.clone();
            controlplane.object_store = node.object_store.clone();
            // Both planes hold one cluster secret: webhook secrets travel to the node sealed
            // with it. Without one configured, the installation makes its own.
            let secret = match (
                node.cluster_secret.take(),
                controlplane.cluster_secret.take(),
            ) {
                (Some(secret), _) | (None, Some(secret)) => Some(secret),
                // A node told to follow another control plane must be given that one's
                // secret: its settings check says so, rather than a made one meeting 401s.
                (None, None) if node.control_plane.is_some() => None,
                (None, None) => Some(cluster_secret::read_or_create(&node.data_dir)?),
            };
            node.cluster_secret.clone_from(&secret);
            controlplane.cluster_secret = secret;
            args.api.apply(&mut controlplane);
            // The AsyncAPI documents name this node's listeners unless told otherwise.
            if controlplane.ingest_public_url.is_none() {
                controlplane.ingest_public_url = Some(format!("http://{}", node.http.addr));
            }
            if controlplane.mqtt_public_url.is_none() {
                controlplane.mqtt_public_url = match (node.mqtt.addr, node.mqtt.tls_addr) {
                    (Some(addr), _) => Some(format!("mqtt://{addr}")),
                    (None, Some(addr)) => Some(format!("mqtts://{addr}")),
                    (None, None) => None,
                };
            }
            fit_connection_caps(Some(&mut node), Some(&mut controlplane))?;
            // The node follows the control plane's configuration (the snapshot file it writes
            // after every change) unless it is given a snapshot file of its own. The first
            // start seeds the default workspace there, keeping the token of an earlier
            // data-plane-only bootstrap.json so that it goes on working.
            let first_start = match (&node.config_snapshot, &node.control_plane) {
                (Some(_), _) | (_, Some(_)) => FirstStart::Bare,
                (None, None) => {
                    node.config_snapshot =
                        Some(node.data_dir.join(sluice_controlplane::snapshot::FILE_NAME));
                    // Each version written is applied at once, not at the file's next poll.
                    let nudge = sluice_config::nudge::SnapshotNudge::default();
                    node.snapshot_nudge = Some(nudge.clone());
                    controlplane.snapshot_written = Some(nudge);
                    FirstStart::DefaultWorkspace {
                        token: bootstrap::read(&node.data_dir).map(|b| b.token),
                    }
                }
            };
            // One signal for both planes; dropped on an early return, it stops what started.
            let shutdown = ShutdownTrigger::new();
            let grace = Duration::from_millis(node.shutdown_grace_ms);
            let controlplane = start_controlplane(controlplane, first_start, shutdown.signal())?;
            let data_dir = node.data_dir.clone();
            let seeded = controlplane.seeded().map(|s| Bootstrap {
                workspace: s.workspace.clone(),
                source: s.source.clone(),
                token: s.token.clone(),
                http_url: String::new(),
            });
            let mut bootstrap = seeded.or_else(|| bootstrap::read(&data_dir));
            let ingest_url = |addr: std::net::SocketAddr, b: &Bootstrap| {
                format!("http://{addr}/v1/ingest/{}/{}", b.workspace, b.source)
            };
            // Written before the listeners open when their address is known, so that whoever
            // sees `/healthz` answer finds the file complete.
            if let Some(b) = bootstrap.as_mut().filter(|_| node.http.addr.port() != 0) {
                b.http_url = ingest_url(node.http.addr, b);
                bootstrap::write(&data_dir, b).context("writing bootstrap.json")?;
            }
            let node = start_node(node, shutdown.signal())?;
            if let Some(mut b) = bootstrap {
                // Port 0: the address is known only now.
                let url = ingest_url(node.http_addr(), &b);
                if b.http_url != url {
                    b.http_url = url;
                    bootstrap::write(&data_dir, &b).context("writing bootstrap.json")?;
                }
                announce(&node, &b);
            }
            wait_for_signal()?;
            let signalled = Instant::now();
            std::thread::sleep(node.drain());
            shutdown.trigger(signalled + grace);
            node.join();
            controlplane.join();
        }
        Command::Dataplane(args) => {
            let mut config = args.into_configs()?.0;
            fit_connection_caps(Some(&mut config), None)?;
            private_dir(&config.data_dir)?;
            let grace = Duration::from_millis(config.shutdown_grace_ms);
            let shutdown = ShutdownTrigger::new();
            let node = start_node(config, shutdown.signal())?;
            if let Some(b) = node.bootstrap() {
                announce(&node, b);
            }
            wait_for_signal()?;
            let signalled = Instant::now();
            std::thread::sleep(node.drain());
            shutdown.trigger(signalled + grace);
            node.join();
        }
        Command::Controlplane(mut args) => {
            if let Some(action) = args.action.take() {
                return controlplane_action(action);
            }
            let mut config = args.into_config()?;
            fit_connection_caps(None, Some(&mut config))?;
            private_dir(&config.data_dir)?;
            let shutdown = ShutdownTrigger::new();
            let controlplane = start_controlplane(config, FirstStart::Bare, shutdown.signal())?;
            wait_for_signal()?;
            shutdown.trigger(Instant::now() + sluice_controlplane::STOP_DEADLINE);
            controlplane.join();
        }
    }
    Ok(())
}

/// `sluice controlplane backup` or `restore`.
fn controlplane_action(action: ControlPlaneAction) -> Result<()> {
    match action {
        ControlPlaneAction::Backup(b) => {
            let target = backup::Location::parse(&b.target)?;
            let (version, bytes) = backup::save(
                &b.api_url,
                &b.token,
                &target,
                Duration::from_millis(b.timeout_ms),
            )?;
            println!(
                "saved {} ({bytes} bytes, configuration version {version})",
                b.target
            );
        }
        ControlPlaneAction::Restore(r) => {
            let source = backup::Location::parse(&r.source)?;
            // An object is fetched first, into a scratch directory inside the data dir (private,
            // like the data dir, and removed after): restore works on local files.
            std::fs::create_dir_all(&r.data_dir)
                .with_context(|| format!("creating {}", r.data_dir.display()))?;
            let scratch = tempfile::tempdir_in(&r.data_dir)
                .with_context(|| format!("a scratch directory in {}", r.data_dir.display()))?;
            let path = backup::local_copy(&source, scratch.path())?;
            let restored = sluice_controlplane::backup::restore(&path, &r.data_dir)
                .with_context(|| format!("restoring {}", r.source))?;
            println!(
                "restored {} into {} (configuration version {} in the backup, {} now){}",
                r.source,
                r.data_dir
                    .join(sluice_controlplane::backup::STORE_FILE_NAME)
                    .display(),
                restored.backup_version,
                restored.version,
                restored
                    .previous
                    .map(|p| format!("; the replaced store is {}", p.display()))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Raises the descriptor limit and fits the connection caps of the listeners this process
/// runs into it (see `descriptors`), lowering them in the configs when they do not fit.
fn fit_connection_caps(
    node: Option<&mut NodeConfig>,
    controlplane: Option<&mut ControlPlaneConfig>,
) -> Result<()> {
    let per_core = |n: usize| match n {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut caps = Vec::new();
    let mut threads = 0;
    if let Some(controlplane) = controlplane {
        caps.push(descriptors::Cap {
            setting: "controlplane.connections_max",
            value: &mut controlplane.connections_max,
        });
    }
    if let Some(node) = node {
        threads += per_core(node.http.threads);
        caps.push(descriptors::Cap {
            setting: "http.connections_max",
            value: &mut node.http.connections_max,
        });
        if node.mqtt.addr.is_some() || node.mqtt.tls_addr.is_some() {
            threads += per_core(node.mqtt.workers);
            caps.push(descriptors::Cap {
                setting: "mqtt.connections_max",
                value: &mut node.mqtt.connections_max,
            });
        }
    }
    descriptors::fit_caps(&mut caps, threads)
}

fn start_controlplane(
    config: ControlPlaneConfig,
    first_start: FirstStart,
    shutdown: Shutdown,
) -> Result<ControlPlane> {
    let data_dir = config.data_dir.clone();
    let controlplane =
        ControlPlane::start(config, first_start, shutdown).context("starting the control plane")?;
    if let Some(operator) = controlplane.initial_operator() {
        // The password itself never goes to the log (logs are shipped and kept); the file
        // holding it is readable by this user only.
        tracing::info!(
            "created the operator account {}; its password is in {} (mode 0600). Sign in:\n\n  curl -X POST {}/api/v1/sessions -H 'Content-Type: application/json' -d '{{\"email\": \"{}\", \"password\": \"<password>\"}}'",
            operator.email,
            data_dir
                .join(sluice_controlplane::initial_operator::FILE_NAME)
                .display(),
            operator.api_url,
            operator.email,
        );
    }
    Ok(controlplane)
}

fn start_node(config: NodeConfig, shutdown: Shutdown) -> Result<Node> {
    Node::start(config, shutdown).context("starting the data-plane node")
}

/// Creates `dir` if needed and makes it its owner's only (0700), also when an earlier release
/// created it open to others.
fn private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))
}

/// Logs how to send a first event with the bootstrap token and query it.
fn announce(node: &Node, b: &Bootstrap) {
    {
        let lake = node
            .lake_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| node.lake_url().to_owned());
        tracing::info!(
            "ready. Send an event (the token is in {boot}):\n\n  TOKEN=$(python3 -c \"import json; print(json.load(open('{boot}'))['token'])\")\n  curl -X POST {url} \\\n    -H \"Authorization: Bearer $TOKEN\" \\\n    -H 'Content-Type: application/json' -H 'X-Device-Id: probe-1' \\\n    -d '{{\"temp_c\":21.5}}'\n\nQuery the Parquet files (written every --batch-max-age-ms) with DuckDB:\n\n  duckdb -c \"SELECT received_at, device_id, payload->>'temp_c' AS temp_c FROM read_parquet('{lake}/**/*.parquet', hive_partitioning = true)\"",
            url = b.http_url,
            boot = node.bootstrap_path().display(),
        );
        if let Some(addr) = node.mqtt_addr() {
            tracing::info!(
                "or over MQTT (username = workspace, password = token, client id = device):\n\n  mosquitto_pub -h {host} -p {port} -V mqttv5 -q 1 -i probe-1 -u {ws} -P \"$TOKEN\" \\\n    -t ingest/{source} -m '{{\"temp_c\":21.5}}'",
                host = addr.ip(),
                port = addr.port(),
                ws = b.workspace,
                source = b.source,
            );
        }
    }
}

/// Blocks until Ctrl-C or SIGTERM.
fn wait_for_signal() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })
}
