//! Sluice's control plane: the axum API people use to manage users, workspaces, members and
//! roles, invitations, access tokens and sources.
//!
//! - [`store`]: every record in memory and in one redb file; changes commit before they show.
//! - [`model`] and [`roles`]: the records and the one permission table.
//! - [`auth`]: passwords, sessions, personal tokens, one-time codes, the caller of a request.
//! - [`api`]: the HTTP endpoints and the OpenAPI document generated from them.
//! - [`mail`]: platform mail through SMTP, or an outbox directory when none is configured.
//! - [`trial`], [`purge`], [`housekeeping`], [`snapshot`]: background work (ended trials
//!   disable workspaces, deleted workspaces' data leaves the lake, expired records go, the
//!   data-plane configuration is written out).
//!
//! The control plane runs on its own tokio runtime and threads; it never touches the data
//! plane's request path.

pub mod api;
pub mod app;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod housekeeping;
pub mod initial_operator;
pub mod mail;
pub mod model;
pub mod problem;
pub mod purge;
pub mod rate_limit;
pub mod roles;
pub mod secrets;
pub mod seed;
pub mod snapshot;
pub mod store;
pub mod trial;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{BoxError, Router};
use sluice_storage::lake::{Lake, LakeError};
use tokio::sync::oneshot;
use tower::ServiceBuilder;

pub use config::ControlPlaneConfig;

use crate::app::App;
use crate::initial_operator::{InitialOperator, InitialOperatorError};
use crate::mail::{MailError, MailSettings, Mailer};
use crate::problem::ApiError;
use crate::secrets::{SecretBox, SecretError};
use crate::store::{Store, StoreError};

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
    #[error("invalid control-plane setting: {0}")]
    Config(String),
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

/// A running control plane.
pub struct ControlPlane {
    addr: SocketAddr,
    initial_operator: Option<InitialOperator>,
    seeded: Option<seed::Seeded>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlPlane {
    /// Opens the store, makes the operator account (and what `first_start` asks for) on first
    /// start, writes the configuration snapshot file, binds the API address and serves on a
    /// runtime of its own.
    pub fn start(
        config: ControlPlaneConfig,
        first_start: FirstStart,
    ) -> Result<ControlPlane, ControlPlaneError> {
        let mut config = config;
        config.validate().map_err(ControlPlaneError::Config)?;
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
        // Written before anything is served, so a node started next finds it.
        let snapshot_path = config.data_dir.join(snapshot::FILE_NAME);
        store
            .read(|s| snapshot::write_file(&snapshot_path, &snapshot::build(s)))
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
        let secrets = Arc::new(open_secrets(&config)?);
        reseal(&store, &secrets)?;
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
            App::new(store, mailer, secrets, config)
        };
        let router = router(app.clone())?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)
                .map_err(io("registering the API listener"))?
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("controlplane-main".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let config = app.config.clone();
                    tokio::spawn(trial::sweep(
                        app.clone(),
                        Duration::from_millis(config.trial_check_interval_ms.max(10)),
                    ));
                    tokio::spawn(snapshot::keep_file_current(app.clone(), snapshot_path));
                    tokio::spawn(purge::run(app.clone(), lake));
                    tokio::spawn(housekeeping::sweep(app.clone(), housekeeping::INTERVAL));
                    let service = router.into_make_service_with_connect_info::<SocketAddr>();
                    let stopping = app.stopping.clone();
                    let served = axum::serve(listener, service)
                        .with_graceful_shutdown(async move {
                            let _ = stopped.await;
                            // Configuration streams never end on their own.
                            stopping.send_replace(true);
                        })
                        .await;
                    if let Err(e) = served {
                        tracing::error!(error = %e, "the control-plane API stopped");
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(5));
            })
            .map_err(io("starting the control-plane thread"))?;
        tracing::info!(%addr, "control-plane API listening");
        Ok(ControlPlane {
            addr,
            initial_operator,
            seeded,
            stop: Some(stop),
            thread: Some(thread),
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
    pub fn seeded(&self) -> Option<&seed::Seeded> {
        self.seeded.as_ref()
    }

    /// Stops taking requests, lets the ones in flight finish, and stops the runtime.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// The whole HTTP surface, every route documented in the OpenAPI document, behind the limits.
pub fn router(app: App) -> Result<Router, ControlPlaneError> {
    let (api, document) = api::router_and_document();
    let _ = app.openapi.set(document.to_json()?);
    let limits = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(overloaded))
        .load_shed()
        .concurrency_limit(app.config.concurrent_requests_max.max(1))
        .timeout(Duration::from_millis(app.config.request_timeout_ms));
    Ok(api
        .layer(axum::middleware::from_fn(trace_request))
        .fallback(api::no_route)
        .method_not_allowed_fallback(api::wrong_method)
        .layer(DefaultBodyLimit::max(app.config.body_bytes_max))
        .layer(limits)
        .with_state(app))
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
/// previous keys can be dropped after one start.
fn reseal(store: &Store, secrets: &SecretBox) -> Result<(), ControlPlaneError> {
    let mut changes = Vec::new();
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
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took too long; retry later",
        )
        .retry_after(5)
        .into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the control plane is handling too many requests; retry shortly",
        )
        .retry_after(1)
        .into_response()
    }
}
