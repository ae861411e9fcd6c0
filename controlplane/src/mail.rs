//! The one mailer every mail goes through: verification codes, password resets, invitations,
//! SMTP tests.
//!
//! It picks the transport per mail: a workspace's own SMTP server when the mail belongs to a
//! workspace that has one (read at send time, so removing it falls back at once), else the
//! platform SMTP server, else (no platform server configured) the outbox directory
//! `<data-dir>/outbox` plus the log, so that every flow works out of the box. Every attempt for
//! a workspace is recorded in its delivery log (the last [`DELIVERIES_KEPT`]).
//!
//! Requests never wait for SMTP, except a test send, which waits at most `smtp_timeout_ms`:
//! mail is queued (bounded; a full queue refuses the request with 503) and sent by tasks of
//! which at most [`SENDS_IN_FLIGHT`] run at once, each bounded by the timeout. A slow or dead
//! server therefore holds a bounded number of tasks, never a growing pile.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::{AsyncFileTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::{mpsc, Semaphore};
use uuid::Uuid;

use crate::model::{Delivery, MailPurpose, MailTransport, SmtpSecurity, WorkspaceSmtp};
use crate::problem::ApiError;
use crate::secrets::SecretBox;
use crate::store::{Change, Store};

/// Delivery attempts kept per workspace.
pub const DELIVERIES_KEPT: usize = 50;
/// Sends running at once at most.
pub const SENDS_IN_FLIGHT: usize = 16;

/// Why mail cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("SMTP URL is not valid: {0}")]
    SmtpUrl(String),
    #[error("sender address {0:?} is not valid: {1}")]
    From(String, String),
    #[error("creating the outbox {path}: {source}")]
    Outbox {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the SMTP CA file {path}: {source}")]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One mail to send.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
    pub purpose: MailPurpose,
    /// The workspace it is sent for: its SMTP server is used and the attempt is logged.
    pub workspace: Option<Uuid>,
}

/// How the mailer reaches the platform's server.
pub struct MailSettings {
    pub smtp_url: Option<String>,
    pub from: String,
    pub outbox: PathBuf,
    pub queue_max: usize,
    pub timeout: Duration,
    /// Extra CA certificate (PEM) trusted for SMTP over TLS, besides the web PKI roots.
    pub ca_file: Option<PathBuf>,
}

enum Platform {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Outbox(AsyncFileTransport<Tokio1Executor>, PathBuf),
}

struct Shared {
    platform: Platform,
    from: Mailbox,
    store: Arc<Store>,
    secrets: Arc<SecretBox>,
    timeout: Duration,
    ca_pem: Option<Vec<u8>>,
    in_flight: Arc<Semaphore>,
}

/// The mailer: a bounded queue in front of the sending tasks.
#[derive(Clone)]
pub struct Mailer {
    queue: mpsc::Sender<Mail>,
    shared: Arc<Shared>,
}

impl Mailer {
    /// Starts the queue worker on the current tokio runtime.
    pub fn start(
        settings: MailSettings,
        store: Arc<Store>,
        secrets: Arc<SecretBox>,
    ) -> Result<Mailer, MailError> {
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|e: lettre::address::AddressError| {
                MailError::From(settings.from.clone(), e.to_string())
            })?;
        let ca_pem = match &settings.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|source| MailError::CaFile {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let platform = match &settings.smtp_url {
            Some(url) => Platform::Smtp(platform_transport(
                url,
                ca_pem.as_deref(),
                settings.timeout,
            )?),
            None => {
                std::fs::create_dir_all(&settings.outbox).map_err(|source| MailError::Outbox {
                    path: settings.outbox.clone(),
                    source,
                })?;
                Platform::Outbox(
                    AsyncFileTransport::new(&settings.outbox),
                    settings.outbox.clone(),
                )
            }
        };
        let shared = Arc::new(Shared {
            platform,
            from,
            store,
            secrets,
            timeout: settings.timeout,
            ca_pem,
            in_flight: Arc::new(Semaphore::new(SENDS_IN_FLIGHT)),
        });
        let (queue, rx) = mpsc::channel(settings.queue_max.max(1));
        tokio::spawn(worker(rx, shared.clone()));
        Ok(Mailer { queue, shared })
    }

    /// Takes a place in the queue, or refuses with 503 when it is full. Take it before
    /// committing the change a mail belongs to, so that a full queue refuses the request
    /// whole instead of after the change.
    pub fn reserve(&self) -> Result<MailSlot, ApiError> {
        self.queue
            .clone()
            .try_reserve_owned()
            .map(MailSlot)
            .map_err(|_| {
                ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "mail-unavailable",
                    "too much mail is waiting to be sent; retry in a minute",
                )
                .retry_after(60)
            })
    }

    /// Sends `mail` now and returns the attempt (also logged when it belongs to a workspace).
    /// Waits for a free sending slot and then at most the SMTP timeout.
    pub async fn send_now(&self, mail: Mail) -> Delivery {
        let _permit = self.shared.in_flight.clone().acquire_owned().await;
        deliver(&self.shared, mail).await
    }
}

/// A reserved place in the mail queue.
pub struct MailSlot(mpsc::OwnedPermit<Mail>);

impl MailSlot {
    /// Queues `mail` in the reserved place (never fails, never waits).
    pub fn send(self, mail: Mail) {
        self.0.send(mail);
    }
}

async fn worker(mut rx: mpsc::Receiver<Mail>, shared: Arc<Shared>) {
    while let Some(mail) = rx.recv().await {
        let Ok(permit) = shared.in_flight.clone().acquire_owned().await else {
            return;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            deliver(&shared, mail).await;
            drop(permit);
        });
    }
}

/// The platform transport from its URL. With an extra CA, the URL's TLS choice is rebuilt
/// with parameters that trust it.
fn platform_transport(
    url: &str,
    ca_pem: Option<&[u8]>,
    timeout: Duration,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, MailError> {
    let bad = |e: String| MailError::SmtpUrl(e);
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
        .map_err(|e| bad(e.to_string()))?
        .timeout(Some(timeout));
    if ca_pem.is_some() {
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let host = parsed.host_str().unwrap_or_default().to_owned();
        let tls_query = parsed
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let params = || tls_parameters(&host, ca_pem).map_err(bad);
        builder = match (parsed.scheme(), tls_query.as_deref()) {
            ("smtps", _) => builder.tls(Tls::Wrapper(params()?)),
            (_, Some("required")) => builder.tls(Tls::Required(params()?)),
            (_, Some("opportunistic")) => builder.tls(Tls::Opportunistic(params()?)),
            _ => builder,
        };
    }
    Ok(builder.build())
}

fn tls_parameters(host: &str, ca_pem: Option<&[u8]>) -> Result<TlsParameters, String> {
    let mut builder = TlsParameters::builder(host.to_owned());
    if let Some(pem) = ca_pem {
        let ca = Certificate::from_pem(pem).map_err(|e| format!("the SMTP CA file: {e}"))?;
        builder = builder.add_root_certificate(ca);
    }
    builder.build_rustls().map_err(|e| e.to_string())
}

/// A transport to a workspace's own server.
fn workspace_transport(
    shared: &Shared,
    smtp: &WorkspaceSmtp,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
        .port(smtp.port)
        .timeout(Some(shared.timeout));
    let ca = shared.ca_pem.as_deref();
    builder = match smtp.security {
        SmtpSecurity::None => builder.tls(Tls::None),
        SmtpSecurity::Starttls => builder.tls(Tls::Required(tls_parameters(&smtp.host, ca)?)),
        SmtpSecurity::Tls => builder.tls(Tls::Wrapper(tls_parameters(&smtp.host, ca)?)),
    };
    if let Some(user) = &smtp.username {
        let password = match &smtp.password_sealed {
            Some(sealed) => shared
                .secrets
                .open(sealed, &smtp.workspace_id.to_string())
                .map_err(|e| format!("the stored SMTP password cannot be read: {e}"))?,
            None => String::new(),
        };
        builder = builder.credentials(Credentials::new(user.clone(), password));
    }
    Ok(builder.build())
}

/// The SMTP error with its causes, prefixed with what kind of failure it is.
fn describe(e: &lettre::transport::smtp::Error) -> String {
    let code = e.status().and_then(|c| c.to_string().parse::<u16>().ok());
    let kind = if e.is_tls() {
        "TLS failure"
    } else if e.is_timeout() {
        "timed out"
    } else if let Some(code) = code {
        match code {
            530 | 534 | 535 | 538 | 454 => "authentication failed",
            450..=452 | 550..=553 => "refused by the server",
            _ => "SMTP error",
        }
    } else {
        "connection failed"
    };
    let mut text = format!("{kind}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Sends one mail through the transport it belongs to and records the attempt.
async fn deliver(shared: &Shared, mail: Mail) -> Delivery {
    let own = mail
        .workspace
        .and_then(|ws| shared.store.read(|s| s.smtp.get(&ws).cloned()));
    let transport = if own.is_some() {
        MailTransport::WorkspaceSmtp
    } else {
        MailTransport::PlatformSmtp
    };
    let result = send(shared, own.as_ref(), &mail).await;
    match &result {
        Ok(()) => tracing::info!(to = %mail.to, ?transport, purpose = ?mail.purpose, "mail sent"),
        Err(e) => {
            tracing::warn!(to = %mail.to, ?transport, purpose = ?mail.purpose, error = %e, "sending mail failed")
        }
    }
    let delivery = Delivery {
        id: Uuid::now_v7(),
        workspace_id: mail.workspace.unwrap_or_default(),
        at: Utc::now(),
        recipient: mail.to.clone(),
        purpose: mail.purpose,
        transport,
        delivered: result.is_ok(),
        error: result.err(),
    };
    if mail.workspace.is_some() {
        record(shared, delivery.clone()).await;
    }
    delivery
}

async fn send(shared: &Shared, own: Option<&WorkspaceSmtp>, mail: &Mail) -> Result<(), String> {
    let from = match own {
        Some(smtp) => {
            let address = smtp
                .from_address
                .parse()
                .map_err(|e| format!("the from address is not valid: {e}"))?;
            Mailbox::new(smtp.from_name.clone(), address)
        }
        None => shared.from.clone(),
    };
    let to: Mailbox = mail
        .to
        .parse()
        .map_err(|e| format!("the recipient address is not valid: {e}"))?;
    let message = Message::builder()
        .from(from)
        .to(to)
        .subject(mail.subject.clone())
        .body(mail.body.clone())
        .map_err(|e| format!("the mail could not be built: {e}"))?;
    let smtp = |transport: AsyncSmtpTransport<Tokio1Executor>, message: Message| async move {
        match tokio::time::timeout(shared.timeout, transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err(format!("timed out after {} ms", shared.timeout.as_millis())),
        }
    };
    match (own, &shared.platform) {
        (Some(settings), _) => smtp(workspace_transport(shared, settings)?, message).await,
        (None, Platform::Smtp(transport)) => smtp(transport.clone(), message).await,
        (None, Platform::Outbox(file, dir)) => {
            let written = file.send(message).await.map_err(|e| e.to_string());
            tracing::info!(
                outbox = %dir.display(),
                to = %mail.to,
                subject = %mail.subject,
                "mail written to the outbox (no SMTP configured):\n{}",
                mail.body
            );
            written.map(|_| ())
        }
    }
}

/// Adds `delivery` to its workspace's log and drops what falls out of the window.
async fn record(shared: &Shared, delivery: Delivery) {
    let store = shared.store.clone();
    let written = tokio::task::spawn_blocking(move || {
        store.write(|s| {
            if !s.workspaces.contains_key(&delivery.workspace_id) {
                return Ok::<_, ApiError>((vec![], ()));
            }
            let kept: Vec<_> = s.deliveries_of(delivery.workspace_id).collect();
            let surplus = (kept.len() + 1).saturating_sub(DELIVERIES_KEPT);
            let mut changes: Vec<Change> = kept[..surplus]
                .iter()
                .map(|d| Change::DeleteDelivery(d.workspace_id, d.id))
                .collect();
            changes.push(Change::PutDelivery(delivery));
            Ok((changes, ()))
        })
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::warn!("recording a mail delivery failed");
    }
}
