//! Sluice's control plane: the axum API people use to manage users, workspaces, members and
//! roles, invitations, access tokens, sources and what reads them (outputs, export endpoints,
//! webhooks).
//!
//! - `store`: every record in memory and in one redb file; changes commit before they show.
//! - `model` and `roles`: the records and the one permission table.
//! - `references`: what names what in a workspace (outputs their source, endpoints their
//!   output, read tokens their endpoints), and the refusals that keep the names valid.
//! - `auth`: passwords, sessions, personal tokens, one-time codes, the caller of a request.
//! - `api` and `problem`: the HTTP endpoints, the OpenAPI document generated from them, and
//!   the one list of problem types they refuse with.
//! - `mcp` and `oauth`: the MCP endpoint of each workspace (the API's operations as tools) and
//!   the OAuth 2.1 authorization server its clients get their tokens from.
//! - `listener`: the API's connections, at most `connections_max` open, closed when idle.
//! - `request_body`: every request body read whole, in time, before the request counts
//!   against the in-flight limit of the whole API.
//! - `mail`: platform mail through SMTP, or an outbox directory when none is configured.
//! - `outbound`: which addresses the control plane may connect to for a workspace.
//! - `webhook_client`: the control plane's own requests to webhook receivers (the address
//!   check of a saved URL, the test delivery); `webhook_health`: the nodes' reports of their
//!   deliveries, the delivery and failure logs, and the disabling of failing webhooks.
//! - `trial`, `purge`, `housekeeping`, [`snapshot`]: background work (ended trials disable
//!   workspaces, deleted workspaces' data leaves the lake, expired records go, the data-plane
//!   configuration is written out), started and stopped through `shutdown`.
//!
//! The control plane runs on its own tokio runtime and threads; it never touches the data
//! plane's request path. Outside this crate only [`ControlPlane`], its settings and errors, and
//! the file names of [`snapshot`] and [`initial_operator`] are visible.

#![forbid(unsafe_code)]

pub(crate) mod api;
pub(crate) mod app;
pub(crate) mod asyncapi;
pub(crate) mod auth;
pub mod backup;
pub(crate) mod cluster;
pub(crate) mod config;
pub(crate) mod console;
pub(crate) mod housekeeping;
pub mod initial_operator;
pub(crate) mod listener;
pub(crate) mod mail;
pub(crate) mod mcp;
pub(crate) mod mcp_ingest;
pub(crate) mod model;
pub(crate) mod oauth;
pub(crate) use sluice_config::outbound;
pub(crate) mod problem;
pub(crate) mod purge;
pub(crate) mod rate_limit;
pub(crate) mod references;
pub(crate) mod request_body;
pub(crate) mod roles;
pub(crate) mod schema;
pub(crate) mod secrets;
pub(crate) mod seed;
pub(crate) mod shutdown;
pub(crate) mod sign_in;
pub mod snapshot;
pub(crate) mod store;
pub(crate) mod trial;
pub(crate) mod webhook_client;
pub(crate) mod webhook_health;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::{BoxError, Router};
use sluice_storage::lake::{Lake, LakeError};
use sluice_storage::shutdown::Shutdown;
use tower::ServiceBuilder;

// The public surface: starting and stopping, the settings, and what `start` may fail with.
pub use config::{ConfigError, ControlPlaneConfig};
pub use initial_operator::{InitialOperator, InitialOperatorError};
pub use mail::MailError;
pub use secrets::SecretError;
pub use seed::Seeded;
pub use shutdown::Joined;
pub use store::StoreError;

use crate::app::App;
use crate::listener::ConnectionLimits;
use crate::mail::{MailSettings, Mailer};
use crate::problem::{ApiError, ProblemType};
use crate::secrets::SecretBox;
use crate::shutdown::BackgroundTasks;
use crate::store::Store;

/// Errors that keep the control plane from starting.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error(transparent)]
    InitialOperator(#[from] InitialOperatorError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("sealing webhook secrets with the cluster secret: {0}")]
    Seal(String),
    #[error("invalid control-plane setting: {0}")]
    Config(#[from] ConfigError),
    #[error("invalid control-plane setting: {0}")]
    SignIn(#[from] sign_in::config::SignInConfigError),
    #[error("preparing the HTTP client for sign-in providers: {0}")]
    SignInHttp(#[from] sign_in::http::ProviderHttpError),
    #[error("building the OpenAPI document: {0}")]
    OpenApi(#[from] serde_json::Error),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ControlPlaneError {
    let context = context.into();
    move |source| ControlPlaneError::Io { context, source }
}

/// What to create on the very first start, besides the operator.
#[derive(Debug, Clone, Default)]
pub enum FirstStart {
    /// Nothing.
    #[default]
    Bare,
    /// The default workspace of [`seed`], with this token secret when one exists already.
    DefaultWorkspace { token: Option<String> },
}

/// How long stopping may take when the shutdown signal carries no nearer deadline: in-flight
/// requests finish and background tasks end within it, then the runtime is dropped with
/// whatever still runs.
pub const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// A running control plane.
pub struct ControlPlane {
    addr: SocketAddr,
    initial_operator: Option<InitialOperator>,
    seeded: Option<Seeded>,
    /// Serves until the shutdown signal; returns how the background tasks ended.
    thread: std::thread::JoinHandle<Joined>,
}

impl ControlPlane {
    /// Opens the store, makes the operator account (and what `first_start` asks for) on first
    /// start, writes the configuration snapshot file, binds the API address and serves on a
    /// runtime of its own until `shutdown`.
    pub fn start(
        config: ControlPlaneConfig,
        first_start: FirstStart,
        shutdown: Shutdown,
    ) -> Result<ControlPlane, ControlPlaneError> {
        let mut config = config;
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(io(format!(
            "creating data dir {}",
            config.data_dir.display()
        )))?;
        // Bound first: the public URL of links (and of initial-operator.json) may need the
        // port the system picked.
        let listener = std::net::TcpListener::bind(config.api_addr)
            .map_err(io(format!("binding the API address {}", config.api_addr)))?;
        listener
            .set_nonblocking(true)
            .map_err(io("configuring the API listener"))?;
        let addr = listener
            .local_addr()
            .map_err(io("reading the API address"))?;
        if config.public_url.is_none() {
            if addr.ip().is_unspecified() {
                tracing::warn!(
                    %addr,
                    "links in mails use http://{addr}, which no one can open; set --public-url"
                );
            }
            config.public_url = Some(format!("http://{addr}"));
        }
        let store = Arc::new(Store::open(&config.data_dir.join("controlplane.redb"))?);
        let initial_operator =
            initial_operator::ensure(&store, &config.data_dir, &config.public_url())?;
        let seeded = match (&initial_operator, first_start) {
            (Some(operator), FirstStart::DefaultWorkspace { token }) => {
                Some(seed::seed(&store, operator.id, token)?)
            }
            _ => None,
        };
        let secrets = Arc::new(open_secrets(&config)?);
        reseal(&store, &secrets, config.cluster_secret.as_deref())?;
        // Written before anything is served, so a node started next finds it.
        let snapshot_path = config.data_dir.join(snapshot::FILE_NAME);
        store
            .read(|s| {
                snapshot::write_file(
                    &snapshot_path,
                    &snapshot::build(s, config.smtp_allow_private_hosts),
                )
            })
            .map_err(io(format!("writing {}", snapshot_path.display())))?;
        let lake_spec = config
            .object_store
            .clone()
            .unwrap_or_else(|| config.data_dir.join("lake").display().to_string());
        let lake = Arc::new(Lake::open(&lake_spec)?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("controlplane")
            .enable_all()
            .build()
            .map_err(io("starting the control-plane runtime"))?;
        let providers = config.sign_in.resolve(|name| std::env::var(name).ok())?;
        for p in &providers {
            tracing::info!(provider = %p.id, kind = ?p.kind, "sign-in provider configured");
        }
        let sign_in = sign_in::SignIn::new(&config.sign_in, providers)?;
        let app = {
            let _guard = runtime.enter();
            let mailer = Mailer::start(
                MailSettings {
                    smtp_url: config.smtp_url.clone(),
                    from: config.mail_from.clone(),
                    outbox: config.data_dir.join("outbox"),
                    queue_max: config.mail_queue_max,
                    timeout: Duration::from_millis(config.smtp_timeout_ms),
                    ca_file: config.smtp_ca_file.clone(),
                    allow_private_hosts: config.smtp_allow_private_hosts,
                },
                store.clone(),
                secrets.clone(),
            )?;
            App::new(
                store,
                mailer,
                secrets,
                sign_in,
                config,
                shutdown,
                lake.clone(),
            )
        };
        let router = router(app.clone())?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)
                .map_err(io("registering the API listener"))?
        };
        let thread = std::thread::Builder::new()
            .name("controlplane-main".into())
            .spawn(move || {
                let (joined, deadline) = runtime.block_on(async move {
                    let config = app.config.clone();
                    let mut background = BackgroundTasks::default();
                    background.spawn(
                        "trial sweep",
                        trial::sweep(
                            app.clone(),
                            Duration::from_millis(config.trial_check_interval_ms.max(10)),
                        ),
                    );
                    background.spawn(
                        "snapshot writer",
                        snapshot::keep_file_current(app.clone(), snapshot_path),
                    );
                    background.spawn("purge", purge::run(app.clone(), lake));
                    background.spawn(
                        "housekeeping",
                        housekeeping::sweep(app.clone(), housekeeping::INTERVAL),
                    );
                    let limits = ConnectionLimits {
                        connections_max: config.connections_max,
                        idle_timeout: Duration::from_millis(config.idle_timeout_ms),
                    };
                    // Connections and background tasks stop by the same deadline.
                    let stop_by = |requested: std::time::Instant| {
                        requested.min(std::time::Instant::now() + STOP_DEADLINE)
                    };
                    listener::serve(listener, router, limits, app.stop_signal(), stop_by).await;
                    let now = tokio::time::Instant::now();
                    let deadline = match app.stop_signal().deadline() {
                        Some(deadline) => {
                            tokio::time::Instant::from_std(deadline).min(now + STOP_DEADLINE)
                        }
                        None => now + STOP_DEADLINE,
                    };
                    (background.join_until(deadline).await, deadline)
                });
                runtime.shutdown_timeout(
                    deadline.saturating_duration_since(tokio::time::Instant::now()),
                );
                joined
            })
            .map_err(io("starting the control-plane thread"))?;
        tracing::info!(%addr, "control-plane API listening");
        Ok(ControlPlane {
            addr,
            initial_operator,
            seeded,
            thread,
        })
    }

    /// The bound API address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The operator credentials, when this start created the account.
    pub fn initial_operator(&self) -> Option<&InitialOperator> {
        self.initial_operator.as_ref()
    }

    /// The default workspace, when this start created it.
    pub fn seeded(&self) -> Option<&Seeded> {
        self.seeded.as_ref()
    }

    /// Waits until the control plane has stopped after the shutdown signal: requests in
    /// flight finished, background tasks ended, the runtime stopped, within the signal's
    /// deadline (at most [`STOP_DEADLINE`]) or little more. Returns how the background tasks
    /// ended (`None` when the thread panicked).
    pub fn join(self) -> Option<Joined> {
        let joined = self.thread.join().ok()?;
        tracing::info!(
            ended = joined.ended.len(),
            cut_off = ?joined.cut_off,
            "control plane stopped"
        );
        Some(joined)
    }
}

/// The whole HTTP surface, every route documented in the OpenAPI document, behind the limits.
///
/// The limits wrap the router as one service: `Router::layer` would give every route a
/// concurrency limit of its own. Bodies are read outside them (`request_body`), so a slow
/// sender holds no place among the requests in flight.
pub(crate) fn router(app: App) -> Result<Router, ControlPlaneError> {
    let (api, document) = api::router_and_document();
    let _ = app.openapi.set(document.to_json()?);
    let document = serde_json::to_value(&document)?;
    let api = api
        .merge(oauth::routes())
        .merge(console::routes())
        .layer(axum::middleware::from_fn(console::headers::secure_html))
        .layer(axum::middleware::from_fn(trace_request))
        .fallback(api::no_route)
        .method_not_allowed_fallback(api::wrong_method)
        .layer(DefaultBodyLimit::max(app.config.body_bytes_max))
        .with_state(app.clone());
    let limited = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(overloaded))
        .load_shed()
        .concurrency_limit(app.config.concurrent_requests_max.max(1))
        .timeout(Duration::from_millis(app.config.request_timeout_ms))
        .service(api);
    // The MCP tools call the API as the listener serves it, limits included; the MCP request
    // itself holds no place among the requests in flight, so its calls cannot wait on it.
    let api = Router::new().fallback_service(limited);
    Ok(mcp::router(app.clone(), &document, api.clone())
        .merge(api)
        .layer(axum::middleware::from_fn_with_state(
            app,
            request_body::read_whole,
        )))
}

/// The secret key: from the settings, else from the key file (made on first start).
fn open_secrets(config: &ControlPlaneConfig) -> Result<SecretBox, ControlPlaneError> {
    let key = match &config.secret_key {
        Some(key) => key.clone(),
        None => {
            let path = config
                .secret_key_file
                .clone()
                .unwrap_or_else(|| config.data_dir.join("secret.key"));
            SecretBox::key_from_file(&path)?
        }
    };
    Ok(SecretBox::new(&key, &config.previous_secret_keys)?)
}

/// Seals again, with the current key, every stored secret sealed with a previous one, so that
/// previous keys can be dropped after one start; and webhook secrets for nodes with the
/// cluster secret of this start, when it is not the one they were sealed with.
fn reseal(
    store: &Store,
    secrets: &SecretBox,
    cluster_secret: Option<&str>,
) -> Result<(), ControlPlaneError> {
    let mut changes = Vec::new();
    for mut webhook in store.read(|s| s.webhooks.values().cloned().collect::<Vec<_>>()) {
        let context = webhook.id.to_string();
        let for_nodes_ok = match (cluster_secret, &webhook.secret_for_nodes) {
            (None, _) => true,
            (Some(cluster), Some(sealed)) => sluice_config::sealed::open(cluster, sealed).is_ok(),
            (Some(_), None) => false,
        };
        if for_nodes_ok && !secrets.needs_resealing(&webhook.secret_sealed) {
            continue;
        }
        match secrets.open(&webhook.secret_sealed, &context) {
            Ok(secret) => {
                webhook.secret_sealed = secrets.seal(&secret, &context)?;
                if let (false, Some(cluster)) = (for_nodes_ok, cluster_secret) {
                    webhook.secret_for_nodes = Some(
                        sluice_config::sealed::seal(cluster, &secret)
                            .map_err(|e| ControlPlaneError::Seal(e.to_string()))?,
                    );
                }
                changes.push(store::Change::PutWebhook(webhook));
            }
            // Nodes cannot sign for it (they log why) until the key is configured or the
            // secret rotated (`POST …/rotate-secret`).
            Err(e) => tracing::error!(
                workspace = %webhook.workspace_id,
                webhook = %webhook.slug,
                error = %e,
                "a stored webhook secret cannot be opened with the configured keys"
            ),
        }
    }
    for mut smtp in store.read(|s| s.smtp.values().cloned().collect::<Vec<_>>()) {
        let Some(sealed) = smtp.password_sealed.as_deref() else {
            continue;
        };
        if secrets.needs_resealing(sealed) {
            let context = smtp.workspace_id.to_string();
            match secrets.open(sealed, &context) {
                Ok(password) => {
                    smtp.password_sealed = Some(secrets.seal(&password, &context)?);
                    changes.push(store::Change::PutSmtp(smtp));
                }
                // The control plane still starts; this workspace's mail fails (logged in its
                // delivery log) until the key is configured or the password saved again.
                Err(e) => tracing::error!(
                    workspace = %smtp.workspace_id,
                    error = %e,
                    "a stored SMTP password cannot be opened with the configured keys"
                ),
            }
        }
    }
    changes.extend(mcp_ingest::resealed(store, secrets)?);
    if !changes.is_empty() {
        let count = changes.len();
        store.write(|_| Ok::<_, StoreError>((changes, ())))?;
        tracing::info!(count, "sealed stored secrets again with the current key");
    }
    Ok(())
}

/// A span per request (method and route, never the query: it may carry an invitation token)
/// and a debug line with the status and duration.
async fn trace_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| request.uri().path().to_owned());
    let span = tracing::info_span!("api", method = %request.method(), route = %route);
    let started = std::time::Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request"
        )
    });
    response
}

async fn overloaded(error: BoxError) -> axum::response::Response {
    if error.is::<tower::timeout::error::Elapsed>() {
        ApiError::new(
            ProblemType::Timeout,
            "the request took too long; retry later",
        )
        .retry_after(5)
        .into_response()
    } else {
        ApiError::new(
            ProblemType::Overloaded,
            "the control plane is handling too many requests; retry shortly",
        )
        .retry_after(1)
        .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_storage::shutdown::ShutdownTrigger;

    /// The sweeps, the purge and the snapshot writer heed the stop signal: all of them return
    /// on their own, none is aborted at the deadline, and stopping takes far less than it.
    #[test]
    fn stopping_ends_every_background_task_well_before_the_deadline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ControlPlaneConfig {
            data_dir: dir.path().to_owned(),
            api_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            secret_key: Some("11".repeat(32)),
            ..ControlPlaneConfig::default()
        };
        let shutdown = ShutdownTrigger::new();
        let control_plane =
            ControlPlane::start(config, FirstStart::Bare, shutdown.signal()).expect("starts");
        let started = std::time::Instant::now();
        shutdown.trigger(started + STOP_DEADLINE);
        let joined = control_plane.join().expect("the stop reports");
        let took = started.elapsed();
        assert_eq!(
            joined.ended,
            ["trial sweep", "snapshot writer", "purge", "housekeeping"],
            "{joined:?}"
        );
        assert!(joined.cut_off.is_empty(), "{joined:?}");
        assert!(
            took < STOP_DEADLINE / 5,
            "stopping took {took:?} (deadline {STOP_DEADLINE:?})"
        );
    }
}
