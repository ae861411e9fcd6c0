//! `sluice`: the one command.
//!
//! `sluice up` runs everything a single machine needs with embedded defaults (today the data
//! plane; the control plane joins it when it exists). `sluice dataplane` runs a data-plane node.
//! Settings come from defaults, then a TOML file (`--config`), then `SLUICE_*` environment
//! variables, then flags; docs/configuration.md lists them all.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use sluice_dataplane::{Node, NodeConfig};

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
    /// Run Sluice on this machine with embedded defaults (everything under --data-dir).
    Up(NodeArgs),
    /// Run one data-plane node.
    Dataplane(NodeArgs),
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
    /// io_uring HTTP threads; 0 = one per core [default: 0].
    #[arg(long, env = "SLUICE_HTTP_THREADS")]
    http_threads: Option<usize>,
    /// Name of this node in Parquet object names [default: generated, kept in the data dir].
    #[arg(long, env = "SLUICE_NODE_ID")]
    node_id: Option<String>,
    /// Serve the configuration from this JSON snapshot file (watched for changes).
    #[arg(long, env = "SLUICE_CONFIG_SNAPSHOT")]
    config_snapshot: Option<PathBuf>,
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
}

impl NodeArgs {
    fn into_config(self) -> Result<NodeConfig> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("config file {} is not valid", path.display()))?
            }
            None => NodeConfig::default(),
        };
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
        set!(batch_max_age_ms => batch.max_age_ms);
        set!(batch_max_rows => batch.max_rows);
        set!(batch_max_bytes => batch.max_bytes);
        set!(wal_bytes_max => wal.bytes_max);
        set!(wal_segment_bytes => wal.segment_bytes);
        set!(body_bytes_max => http.body_bytes_max);
        set!(connections_max => http.connections_max);
        set!(workspace_events_per_second => workspace_events_per_second);
        set!(shutdown_grace_ms => shutdown_grace_ms);
        if self.object_store.is_some() {
            config.object_store = self.object_store;
        }
        if self.node_id.is_some() {
            config.node_id = self.node_id;
        }
        if self.config_snapshot.is_some() {
            config.config_snapshot = self.config_snapshot;
        }
        Ok(config)
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // object_store's HTTP client uses rustls without a built-in provider; pick ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Up(args) | Command::Dataplane(args) => run_node(args.into_config()?),
    }
}

fn run_node(config: NodeConfig) -> Result<()> {
    let node = Node::start(config).context("starting the data-plane node")?;
    if let Some(b) = node.bootstrap() {
        let lake = node
            .lake_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| node.lake_url().to_owned());
        tracing::info!(
            "ready. Send an event (the token is in {boot}):\n\n  TOKEN=$(python3 -c \"import json; print(json.load(open('{boot}'))['token'])\")\n  curl -X POST {url} \\\n    -H \"Authorization: Bearer $TOKEN\" \\\n    -H 'Content-Type: application/json' \\\n    -d '{{\"device\":\"probe-1\",\"temp_c\":21.5}}'\n\nQuery the Parquet files (written every --batch-max-age-ms) with DuckDB:\n\n  duckdb -c \"SELECT received_at, device_id, payload->>'temp_c' AS temp_c FROM read_parquet('{lake}/**/*.parquet', hive_partitioning = true)\"",
            url = b.http_url,
            boot = node.bootstrap_path().display(),
        );
    }
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
    })?;
    node.shutdown();
    Ok(())
}
