//! The one mailer every mail goes through: verification codes, password resets, invitations,
//! SMTP tests.
//!
//! It picks the transport per mail: a workspace's own SMTP server when the mail belongs to a
//! workspace that has one (read at send time, so removing it falls back at once), else the
//! platform SMTP server, else (no platform server configured) the outbox directory
//! `<data-dir>/outbox` plus the log, so that every flow works out of the box. Every attempt for
//! a workspace is recorded in its delivery log (the last [`DELIVERIES_KEPT`]).
//!
//! Requests never wait for SMTP, except a test send, which waits at most twice
//! `smtp_timeout_ms` (for a sending slot, then for the server). Mail waiting or being sent is
//! bounded by `mail_queue_max` (past it requests are refused with 503). Sends run with at most
//! [`PLATFORM_SENDS_IN_FLIGHT`] through the platform server and [`WORKSPACE_SENDS_IN_FLIGHT`]
//! per workspace server, each bounded by the timeout, so a slow or dead workspace server holds
//! its own two slots and never delays other workspaces' or the platform's mail.
//!
//! Every mail is a complete MIME message (`multipart/alternative`): the text as written, and
//! the same as HTML with its links made real links. The text goes as 7bit whenever it is plain
//! ASCII, so that a link can be copied out of the raw message (an outbox `.eml`) as it is;
//! otherwise as quoted-printable, which every mail client decodes.
//!
//! A workspace server must resolve to public addresses unless the operator allows private ones
//! (`smtp_allow_private_hosts`): otherwise any workspace Admin could make the control plane
//! probe or relay through hosts on its internal network. The checked address is the one
//! connected to, so a second DNS answer cannot swap it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::{AsyncFileTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::model::{Delivery, MailPurpose, MailTransport, SmtpSecurity, WorkspaceSmtp};
use crate::outbound;
use crate::problem::{ApiError, ProblemType};
use crate::secrets::{SecretBox, SecretError};
use crate::store::{Change, State, Store};

/// Delivery attempts kept per workspace.
pub const DELIVERIES_KEPT: usize = 50;
/// Sends through the platform server running at once at most.
pub const PLATFORM_SENDS_IN_FLIGHT: usize = 8;
/// Sends through one workspace's server running at once at most.
pub const WORKSPACE_SENDS_IN_FLIGHT: usize = 2;
/// Longest SMTP error text kept (a server's reply can be long).
const ERROR_CHARS_MAX: usize = 1024;
/// Longest line of a 7bit body (RFC 5322, without the CRLF).
const LINE_BYTES_MAX: usize = 998;

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
    #[error("setting up TLS for the platform SMTP server: {0}")]
    Tls(TlsError),
}

/// Why TLS parameters for an SMTP server cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The configured extra CA (`smtp_ca_file`) is not a PEM certificate.
    #[error("the SMTP CA file: {0}")]
    CaFile(lettre::transport::smtp::Error),
    #[error("{0}")]
    Parameters(lettre::transport::smtp::Error),
}

/// Why one mail was not delivered. The text is what the workspace's delivery log and the answer
/// to a test send show, so it starts with the kind of failure ("connection failed", "TLS
/// failure", "timed out", ...) and carries the server's own words; the underlying errors are
/// part of the text rather than `source()`, so that nothing is printed twice.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the from address is not valid: {0}")]
    FromAddress(lettre::address::AddressError),
    #[error("the recipient address is not valid: {0}")]
    Recipient(lettre::address::AddressError),
    #[error("the mail could not be built: {0}")]
    Message(lettre::error::Error),
    #[error("connection failed: resolving {host} timed out")]
    ResolveTimeout { host: String },
    #[error("connection failed: resolving {host}: {error}")]
    Resolve { host: String, error: std::io::Error },
    /// A workspace server on a private address while the operator allows none.
    #[error("connection failed: {host} resolves to the non-public address {ip}; an operator can allow such servers with smtp_allow_private_hosts")]
    AddressRefused { host: String, ip: IpAddr },
    #[error("connection failed: {host} has no address")]
    NoAddress { host: String },
    #[error("{0}")]
    Tls(TlsError),
    /// The workspace's SMTP password was sealed with a key that is no longer configured.
    #[error("the stored SMTP password cannot be read: {0}")]
    Password(SecretError),
    /// The server or the connection to it failed; `detail` is lettre's error with its causes.
    #[error("{kind}: {detail}")]
    Smtp { kind: SmtpFailure, detail: String },
    #[error("timed out after {} ms", .0.as_millis())]
    Timeout(Duration),
    /// Writing to the outbox directory (no platform SMTP server configured) failed.
    #[error("{0}")]
    OutboxWrite(lettre::transport::file::Error),
}

/// The kind of an SMTP failure, as the delivery log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpFailure {
    Tls,
    Timeout,
    Authentication,
    Refused,
    Protocol,
    Connection,
}

impl std::fmt::Display for SmtpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SmtpFailure::Tls => "TLS failure",
            SmtpFailure::Timeout => "timed out",
            SmtpFailure::Authentication => "authentication failed",
            SmtpFailure::Refused => "refused by the server",
            SmtpFailure::Protocol => "SMTP error",
            SmtpFailure::Connection => "connection failed",
        })
    }
}

/// One mail to send.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    /// Plain text; paragraphs apart by blank lines. A paragraph that is a lone `http(s)://`
    /// URL becomes a link in the HTML part.
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
    /// Let workspace servers be on loopback, private or link-local addresses.
    pub allow_private_hosts: bool,
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
    allow_private_hosts: bool,
    /// Mail waiting or being sent: the queue's bound.
    pending: Arc<Semaphore>,
    platform_slots: Arc<Semaphore>,
    workspace_slots: Mutex<HashMap<Uuid, Arc<Semaphore>>>,
}

impl Shared {
    fn workspace_slots(&self, workspace: Uuid) -> Arc<Semaphore> {
        let mut slots = self
            .workspace_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Bounded by the number of workspaces; forget the idle ones now and then.
        if slots.len() > 10_000 {
            slots.retain(|_, s| s.available_permits() < WORKSPACE_SENDS_IN_FLIGHT);
        }
        slots
            .entry(workspace)
            .or_insert_with(|| Arc::new(Semaphore::new(WORKSPACE_SENDS_IN_FLIGHT)))
            .clone()
    }
}

/// The mailer.
#[derive(Clone)]
pub struct Mailer {
    shared: Arc<Shared>,
}

fn busy() -> ApiError {
    ApiError::new(
        ProblemType::MailUnavailable,
        "too much mail is waiting to be sent; retry in a minute",
    )
    .retry_after(60)
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
        Ok(Mailer {
            shared: Arc::new(Shared {
                platform,
                from,
                store,
                secrets,
                timeout: settings.timeout,
                ca_pem,
                allow_private_hosts: settings.allow_private_hosts,
                pending: Arc::new(Semaphore::new(settings.queue_max.max(1))),
                platform_slots: Arc::new(Semaphore::new(PLATFORM_SENDS_IN_FLIGHT)),
                workspace_slots: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Takes a place in the queue, or refuses with 503 when it is full. Take it before
    /// committing the change a mail belongs to, so that a full queue refuses the request
    /// whole instead of after the change.
    pub fn reserve(&self) -> Result<MailSlot, ApiError> {
        let permit = self
            .shared
            .pending
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy())?;
        Ok(MailSlot {
            permit,
            shared: self.shared.clone(),
        })
    }

    /// Sends `mail` now through `settings` (the workspace's, as checked by the caller) and
    /// returns the attempt, also logged. Refuses with 503 when the queue is full or the
    /// workspace's sending slots stay busy for a whole timeout.
    pub async fn send_now(
        &self,
        mail: Mail,
        settings: WorkspaceSmtp,
    ) -> Result<Delivery, ApiError> {
        let _pending = self
            .shared
            .pending
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy())?;
        let slots = self.shared.workspace_slots(settings.workspace_id);
        let _slot = tokio::time::timeout(self.shared.timeout, slots.acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                ApiError::new(
                    ProblemType::MailUnavailable,
                    "this workspace's SMTP server is busy with other mail; retry shortly",
                )
                .retry_after(10)
            })?;
        Ok(deliver(&self.shared, mail, Some(settings)).await)
    }
}

/// A reserved place in the mail queue.
pub struct MailSlot {
    permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
}

impl MailSlot {
    /// Queues `mail` in the reserved place (never fails, never waits; call on the runtime).
    pub fn send(self, mail: Mail) {
        tokio::spawn(async move {
            let _pending = self.permit;
            send_queued(&self.shared, mail).await;
        });
    }
}

/// Sends queued mail through the transport its workspace uses now, in that transport's slots.
async fn send_queued(shared: &Shared, mail: Mail) {
    let own = match mail.workspace {
        Some(ws) => match shared.store.read(|s| {
            s.workspaces
                .contains_key(&ws)
                .then(|| s.smtp.get(&ws).cloned())
        }) {
            Some(own) => own,
            None => {
                tracing::info!(workspace = %ws, to = %mail.to, "mail of a deleted workspace dropped");
                return;
            }
        },
        None => None,
    };
    let slots = match &own {
        Some(settings) => shared.workspace_slots(settings.workspace_id),
        None => shared.platform_slots.clone(),
    };
    let Ok(_slot) = slots.acquire_owned().await else {
        return;
    };
    deliver(shared, mail, own).await;
}

/// The platform transport from its URL. With an extra CA, the URL's TLS choice is rebuilt
/// with parameters that trust it.
fn platform_transport(
    url: &str,
    ca_pem: Option<&[u8]>,
    timeout: Duration,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, MailError> {
    let bad = |e: &dyn std::fmt::Display| MailError::SmtpUrl(e.to_string());
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
        .map_err(|e| bad(&e))?
        .timeout(Some(timeout));
    if ca_pem.is_some() {
        let parsed = url::Url::parse(url).map_err(|e| bad(&e))?;
        let host = parsed.host_str().unwrap_or_default().to_owned();
        let tls_query = parsed
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let params = || tls_parameters(&host, ca_pem).map_err(MailError::Tls);
        builder = match (parsed.scheme(), tls_query.as_deref()) {
            ("smtps", _) => builder.tls(Tls::Wrapper(params()?)),
            (_, Some("required")) => builder.tls(Tls::Required(params()?)),
            (_, Some("opportunistic")) => builder.tls(Tls::Opportunistic(params()?)),
            _ => builder,
        };
    }
    Ok(builder.build())
}

fn tls_parameters(host: &str, ca_pem: Option<&[u8]>) -> Result<TlsParameters, TlsError> {
    let mut builder = TlsParameters::builder(host.to_owned());
    if let Some(pem) = ca_pem {
        let ca = Certificate::from_pem(pem).map_err(TlsError::CaFile)?;
        builder = builder.add_root_certificate(ca);
    }
    builder.build_rustls().map_err(TlsError::Parameters)
}

/// The address to connect to for a workspace server: resolved once, checked, then used as is.
async fn checked_address(shared: &Shared, smtp: &WorkspaceSmtp) -> Result<IpAddr, SendError> {
    let host = || smtp.host.clone();
    let resolved = tokio::time::timeout(
        shared.timeout,
        tokio::net::lookup_host((smtp.host.as_str(), smtp.port)),
    )
    .await
    .map_err(|_| SendError::ResolveTimeout { host: host() })?
    .map_err(|error| SendError::Resolve {
        host: host(),
        error,
    })?;
    let mut first = None;
    for addr in resolved {
        let ip = addr.ip();
        if !shared.allow_private_hosts && !outbound::is_public(ip) {
            return Err(SendError::AddressRefused { host: host(), ip });
        }
        first.get_or_insert(ip);
    }
    first.ok_or_else(|| SendError::NoAddress { host: host() })
}

/// A transport to a workspace's own server, at its checked address; TLS still verifies the
/// certificate against the configured host name.
async fn workspace_transport(
    shared: &Shared,
    smtp: &WorkspaceSmtp,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, SendError> {
    let address = checked_address(shared, smtp).await?;
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(address.to_string())
        .port(smtp.port)
        .timeout(Some(shared.timeout));
    let params = || tls_parameters(&smtp.host, shared.ca_pem.as_deref()).map_err(SendError::Tls);
    builder = match smtp.security {
        SmtpSecurity::None => builder.tls(Tls::None),
        SmtpSecurity::Starttls => builder.tls(Tls::Required(params()?)),
        SmtpSecurity::Tls => builder.tls(Tls::Wrapper(params()?)),
    };
    if let Some(user) = &smtp.username {
        let password = match &smtp.password_sealed {
            Some(sealed) => shared
                .secrets
                .open(sealed, &smtp.workspace_id.to_string())
                .map_err(SendError::Password)?,
            None => String::new(),
        };
        builder = builder.credentials(Credentials::new(user.clone(), password));
    }
    Ok(builder.build())
}

/// Whether a cause of `e` is a TLS error (lettre reports handshake failures as connection
/// errors wrapping rustls' error in an I/O error).
fn tls_in_causes(e: &lettre::transport::smtp::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<rustls::Error>()
            || c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The SMTP error with its causes, classified by what kind of failure it is.
fn smtp_failure(e: &lettre::transport::smtp::Error) -> SendError {
    let code = e.status().and_then(|c| c.to_string().parse::<u16>().ok());
    let kind = if e.is_tls() || tls_in_causes(e) {
        SmtpFailure::Tls
    } else if e.is_timeout() {
        SmtpFailure::Timeout
    } else if let Some(code) = code {
        match code {
            534 | 535 | 538 => SmtpFailure::Authentication,
            450..=452 | 550..=553 => SmtpFailure::Refused,
            _ => SmtpFailure::Protocol,
        }
    } else {
        SmtpFailure::Connection
    };
    // Causes lettre's message does not already repeat are appended; the check runs against the
    // whole text as shown, kind included.
    let prefix = format!("{kind}: ");
    let mut text = format!("{prefix}{e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    SendError::Smtp {
        kind,
        detail: text.split_off(prefix.len()),
    }
}

/// Sends one mail through `own` (a workspace's server) or the platform, and records the attempt
/// when the mail belongs to a workspace.
async fn deliver(shared: &Shared, mail: Mail, own: Option<WorkspaceSmtp>) -> Delivery {
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
        error: result
            .err()
            .map(|e| e.to_string().chars().take(ERROR_CHARS_MAX).collect()),
    };
    if mail.workspace.is_some() {
        record(shared, delivery.clone()).await;
    }
    delivery
}

async fn send(shared: &Shared, own: Option<&WorkspaceSmtp>, mail: &Mail) -> Result<(), SendError> {
    let from = match own {
        Some(smtp) => {
            let address = smtp.from_address.parse().map_err(SendError::FromAddress)?;
            Mailbox::new(smtp.from_name.clone(), address)
        }
        None => shared.from.clone(),
    };
    let to: Mailbox = mail.to.parse().map_err(SendError::Recipient)?;
    let message = Message::builder()
        .from(from)
        .to(to)
        .subject(mail.subject.clone())
        .multipart(alternative(&mail.body))
        .map_err(SendError::Message)?;
    let smtp = |transport: AsyncSmtpTransport<Tokio1Executor>, message: Message| async move {
        match tokio::time::timeout(shared.timeout, transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(smtp_failure(&e)),
            Err(_) => Err(SendError::Timeout(shared.timeout)),
        }
    };
    match (own, &shared.platform) {
        (Some(settings), _) => smtp(workspace_transport(shared, settings).await?, message).await,
        (None, Platform::Smtp(transport)) => smtp(transport.clone(), message).await,
        (None, Platform::Outbox(file, dir)) => {
            let written = file.send(message).await.map_err(SendError::OutboxWrite);
            // The body carries codes and links that act as credentials: it goes to the outbox
            // file only, never to the log.
            tracing::info!(
                outbox = %dir.display(),
                to = %mail.to,
                subject = %mail.subject,
                "mail written to the outbox (no SMTP configured); read it there"
            );
            written.map(|_| ())
        }
    }
}

/// The mail's MIME body: `text` as it is and as HTML, for clients to choose from.
fn alternative(text: &str) -> MultiPart {
    MultiPart::alternative()
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(encoded(text.to_owned())),
        )
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_HTML)
                .body(encoded(html_of(text))),
        )
}

/// `content` with an explicit transfer encoding: 7bit when it is ASCII with lines short enough
/// (links stay intact in the raw message; lettre's own choice would take quoted-printable for
/// any line over 76 characters, which writes `=` as `=3D` and breaks long links), else
/// quoted-printable.
fn encoded(content: String) -> Body {
    let seven_bit = content.is_ascii()
        && !content.contains(['\0', '\r'])
        && content.lines().all(|line| line.len() <= LINE_BYTES_MAX);
    if seven_bit {
        Body::dangerous_pre_encoded(
            content.replace('\n', "\r\n").into_bytes(),
            ContentTransferEncoding::SevenBit,
        )
    } else {
        match Body::new_with_encoding(content, ContentTransferEncoding::QuotedPrintable) {
            Ok(body) => body,
            // Quoted-printable takes any content; lettre's own choice is the fallback.
            Err(bytes) => Body::new(bytes),
        }
    }
}

/// `text` as an HTML page: paragraphs, line breaks, and paragraphs that are a lone URL as
/// links. Everything is escaped, non-ASCII as character references, so the HTML is ASCII.
fn html_of(text: &str) -> String {
    let mut html =
        String::from("<!doctype html>\n<html><head><meta charset=\"utf-8\"></head><body>\n");
    for paragraph in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        let is_link = (paragraph.starts_with("http://") || paragraph.starts_with("https://"))
            && !paragraph.contains(char::is_whitespace);
        if is_link {
            let url = escape_html(paragraph);
            html.push_str(&format!("<p><a href=\"{url}\">{url}</a></p>\n"));
        } else {
            let lines: Vec<String> = paragraph.lines().map(escape_html).collect();
            html.push_str(&format!("<p>{}</p>\n", lines.join("<br>\n")));
        }
    }
    html.push_str("</body></html>\n");
    html
}

/// `text` safe in HTML text and attribute values, and ASCII.
fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_ascii() => out.push(c),
            c => out.push_str(&format!("&#{};", u32::from(c))),
        }
    }
    out
}

/// The changes that add `delivery` to its workspace's log and drop what falls out of the
/// window; none when the workspace is gone.
pub fn log_changes(s: &State, delivery: Delivery) -> Vec<Change> {
    if !s.workspaces.contains_key(&delivery.workspace_id) {
        return Vec::new();
    }
    let kept: Vec<_> = s.deliveries_of(delivery.workspace_id).collect();
    let surplus = (kept.len() + 1).saturating_sub(DELIVERIES_KEPT);
    let mut changes: Vec<Change> = kept[..surplus]
        .iter()
        .map(|d| Change::DeleteDelivery(d.workspace_id, d.id))
        .collect();
    changes.push(Change::PutDelivery(delivery));
    changes
}

/// Adds `delivery` to its workspace's log.
async fn record(shared: &Shared, delivery: Delivery) {
    let store = shared.store.clone();
    let written = tokio::task::spawn_blocking(move || {
        store.write(|s| Ok::<_, ApiError>((log_changes(s, delivery), ())))
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::warn!("recording a mail delivery failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Workspace;

    #[test]
    fn the_log_keeps_the_newest_50_per_workspace() {
        let mut state = State::default();
        let ws = Uuid::now_v7();
        state.workspaces.insert(
            ws,
            Workspace {
                id: ws,
                slug: "w".into(),
                name: "w".into(),
                created_by: Uuid::now_v7(),
                created_at: Utc::now(),
                enabled: true,
                cors_allowed_origins: vec![],
                asyncapi_public: false,
            },
        );
        let delivery = |n: usize| Delivery {
            id: Uuid::now_v7(),
            workspace_id: ws,
            at: Utc::now(),
            recipient: format!("r{n}@example.com"),
            purpose: MailPurpose::SmtpTest,
            transport: MailTransport::PlatformSmtp,
            delivered: true,
            error: None,
        };
        for n in 0..60 {
            let changes = log_changes(&state, delivery(n));
            assert_eq!(changes.len(), if n < DELIVERIES_KEPT { 1 } else { 2 });
            for change in changes {
                state.apply(change);
            }
        }
        let kept: Vec<String> = state
            .deliveries_of(ws)
            .map(|d| d.recipient.clone())
            .collect();
        let expected: Vec<String> = (10..60).map(|n| format!("r{n}@example.com")).collect();
        assert_eq!(kept, expected);
        let mut gone = delivery(99);
        gone.workspace_id = Uuid::now_v7();
        assert!(
            log_changes(&state, gone).is_empty(),
            "no log for a deleted workspace"
        );
    }

    /// The delivery log and test sends show these texts; the integration tests and scripts
    /// match on their beginnings ("connection failed", "TLS failure", "timed out", ...).
    #[test]
    fn send_errors_read_as_the_delivery_log_shows_them() {
        let host = || "mail.internal".to_owned();
        let cases = [
            (
                SendError::AddressRefused {
                    host: host(),
                    ip: "10.0.0.5".parse().expect("ip"),
                },
                "connection failed: mail.internal resolves to the non-public address 10.0.0.5; \
                 an operator can allow such servers with smtp_allow_private_hosts",
            ),
            (
                SendError::NoAddress { host: host() },
                "connection failed: mail.internal has no address",
            ),
            (
                SendError::ResolveTimeout { host: host() },
                "connection failed: resolving mail.internal timed out",
            ),
            (
                SendError::Timeout(Duration::from_millis(1500)),
                "timed out after 1500 ms",
            ),
            (
                SendError::Smtp {
                    kind: SmtpFailure::Authentication,
                    detail: "permanent error (535): bad credentials".into(),
                },
                "authentication failed: permanent error (535): bad credentials",
            ),
            (
                SendError::Password(SecretError::Malformed),
                "the stored SMTP password cannot be read: ",
            ),
        ];
        for (error, text) in cases {
            assert!(error.to_string().starts_with(text), "{error} / {text}");
        }
    }

    fn formatted(body: &str) -> String {
        let message = Message::builder()
            .from("Sluice <noreply@example.com>".parse().expect("from"))
            .to("ada@example.com".parse().expect("to"))
            .subject("Test")
            .multipart(alternative(body))
            .expect("message");
        String::from_utf8(message.formatted()).expect("utf-8")
    }

    #[test]
    fn mails_are_mime_with_a_copyable_link_and_an_html_alternative() {
        let link =
            "http://127.0.0.1:18080/invitations/accept?token=0190f3a0-0000-7000-8000-000000000001";
        let raw = formatted(&format!(
            "Ada <ada@example.com> invited you to \"R&D <lab>\" as Editor, and this line is long enough to pass 76 characters.\n\n{link}\n"
        ));
        assert!(raw.contains("MIME-Version: 1.0\r\n"), "{raw}");
        assert!(
            raw.contains("Content-Type: multipart/alternative;"),
            "{raw}"
        );
        assert!(
            raw.contains("Content-Type: text/plain; charset=utf-8\r\n"),
            "{raw}"
        );
        assert!(
            raw.contains("Content-Type: text/html; charset=utf-8\r\n"),
            "{raw}"
        );
        assert_eq!(
            raw.matches("Content-Transfer-Encoding: 7bit\r\n").count(),
            2,
            "{raw}"
        );
        assert!(
            raw.contains(&format!("\r\n{link}\r\n")),
            "the link as is: {raw}"
        );
        assert!(raw.contains(&format!("<a href=\"{link}\">")), "{raw}");
        assert!(raw.contains("&quot;R&amp;D &lt;lab&gt;&quot;"), "{raw}");
        assert!(!raw.contains("=3D"), "{raw}");
    }

    #[test]
    fn non_ascii_text_goes_quoted_printable_and_html_as_character_references() {
        let raw = formatted("Jürgen invited you to Wärme.\n");
        assert!(
            raw.contains("Content-Transfer-Encoding: quoted-printable\r\n"),
            "{raw}"
        );
        assert!(raw.contains("J=C3=BCrgen"), "{raw}");
        assert!(
            raw.contains("J&#252;rgen invited you to W&#228;rme."),
            "{raw}"
        );
        assert!(raw.is_ascii());
    }
}
