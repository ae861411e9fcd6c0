//! What every request handler shares: the store, the mailer, the limits and the settings.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use crate::cluster::{ConfigHistory, Nodes};
use crate::config::ControlPlaneConfig;
use crate::mail::Mailer;
use crate::problem::{ApiError, ApiResult};
use crate::rate_limit::{RateLimit, SignInLimits};
use crate::secrets::SecretBox;
use crate::sign_in::SignIn;
use crate::store::{Change, State, Store};
use sluice_storage::lake::Lake;
use sluice_storage::shutdown::Shutdown;

/// Attempt limits (see [`ControlPlaneConfig`] for their sizes).
pub struct Limits {
    /// Failed sign-ins per (account, client address) and per account.
    pub sign_in: SignInLimits,
    pub sign_in_per_address: RateLimit,
    pub code_attempts_per_address: RateLimit,
    pub codes_per_account: RateLimit,
    pub sign_ups_per_address: RateLimit,
    pub invitations_per_workspace: RateLimit,
    pub invitations_per_inviter: RateLimit,
    pub smtp_tests_per_workspace: RateLimit,
    /// Test deliveries of a workspace's webhooks, as many per hour as SMTP tests.
    pub webhook_tests_per_workspace: RateLimit,
}

impl Limits {
    fn new(c: &ControlPlaneConfig) -> Self {
        const QUARTER_HOUR: Duration = Duration::from_secs(15 * 60);
        const HOUR: Duration = Duration::from_secs(3600);
        const DAY: Duration = Duration::from_secs(24 * 3600);
        Limits {
            sign_in: SignInLimits::new(
                c.sign_in_failures_per_account,
                c.sign_in_failures_per_account_all_addresses,
                QUARTER_HOUR,
            ),
            sign_in_per_address: RateLimit::new(c.sign_in_attempts_per_address, QUARTER_HOUR),
            code_attempts_per_address: RateLimit::new(c.code_attempts_per_address, QUARTER_HOUR),
            codes_per_account: RateLimit::new(c.codes_per_account_per_hour, HOUR),
            sign_ups_per_address: RateLimit::new(c.sign_ups_per_address_per_hour, HOUR),
            invitations_per_workspace: RateLimit::new(c.invitations_per_workspace_per_day, DAY),
            invitations_per_inviter: RateLimit::new(c.invitations_per_inviter_per_day, DAY),
            smtp_tests_per_workspace: RateLimit::new(c.smtp_tests_per_workspace_per_hour, HOUR),
            webhook_tests_per_workspace: RateLimit::new(c.smtp_tests_per_workspace_per_hour, HOUR),
        }
    }
}

/// Shared state of the API (cheap to clone).
#[derive(Clone)]
pub struct App {
    pub store: Arc<Store>,
    pub mailer: Mailer,
    /// Seals and opens stored secrets (workspace SMTP passwords).
    pub secrets: Arc<SecretBox>,
    /// Sign-in providers and the sign-ins in progress.
    pub sign_in: Arc<SignIn>,
    pub config: Arc<ControlPlaneConfig>,
    pub limits: Arc<Limits>,
    /// The configuration version, published after every commit that moves it.
    pub config_version: watch::Sender<u64>,
    /// The configuration versions the stream to data-plane nodes serves.
    pub history: Arc<ConfigHistory>,
    /// The data-plane nodes that connected.
    pub nodes: Arc<Nodes>,
    /// Configuration streams open at once at most.
    pub streams: Arc<Semaphore>,
    /// The process's shutdown signal: on it the API stops taking requests, configuration
    /// streams and background tasks end. Receive it with [`App::stop_signal`].
    shutdown: Shutdown,
    /// The OpenAPI document as served, set once when the router is built.
    pub openapi: Arc<std::sync::OnceLock<String>>,
    /// Password hashes computed at once at most (two per core).
    password_slots: Arc<Semaphore>,
    /// The OAuth authorization server's memory: consent pages open, client metadata
    /// documents, the registration limit.
    pub oauth: Arc<crate::oauth::OAuth>,
    /// The lake nodes write to (the one the purge task cleans): the console's ingest overview
    /// reads its commit log.
    pub lake: Arc<Lake>,
}

impl App {
    pub fn new(
        store: Arc<Store>,
        mailer: Mailer,
        secrets: Arc<SecretBox>,
        sign_in: SignIn,
        config: ControlPlaneConfig,
        shutdown: Shutdown,
        lake: Arc<Lake>,
    ) -> Self {
        let version = store.read(|s| s.config_version);
        let allow_private = config.smtp_allow_private_hosts;
        let history = Arc::new(ConfigHistory::new(
            store.read(|s| crate::snapshot::build(s, allow_private)),
        ));
        let streams = Arc::new(Semaphore::new(config.config_streams_max.max(1)));
        App {
            store,
            mailer,
            secrets,
            sign_in: Arc::new(sign_in),
            limits: Arc::new(Limits::new(&config)),
            oauth: Arc::new(crate::oauth::OAuth::new(&config)),
            config: Arc::new(config),
            config_version: watch::Sender::new(version),
            history,
            nodes: Arc::new(Nodes::default()),
            streams,
            shutdown,
            openapi: Arc::new(std::sync::OnceLock::new()),
            password_slots: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
            )),
            lake,
        }
    }

    /// The stop signal, for a task that must end when the control plane stops.
    pub fn stop_signal(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Computes and commits a change on a blocking thread (see [`Store::write`]).
    pub async fn write<T, F>(&self, f: F) -> ApiResult<T>
    where
        F: FnOnce(&State) -> ApiResult<(Vec<Change>, T)> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.store.clone();
        let value = tokio::task::spawn_blocking(move || store.write(f))
            .await
            .map_err(|e| ApiError::internal(format!("the change did not complete: {e}")))??;
        let version = self.store.read(|s| s.config_version);
        // Writers finish in any order; the published version only moves forward.
        self.config_version.send_if_modified(|v| {
            let moved = version > *v;
            if moved {
                *v = version;
            }
            moved
        });
        Ok(value)
    }

    /// Runs password hashing or checking off the async threads, a few at a time: each takes
    /// a core and 19 MiB, so a flood of sign-ins waits here instead of exhausting memory.
    pub async fn password_work<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> ApiResult<T> {
        let _permit = self
            .password_slots
            .acquire()
            .await
            .map_err(|_| ApiError::internal("the control plane is shutting down"))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| ApiError::internal(format!("the work did not complete: {e}")))
    }
}
