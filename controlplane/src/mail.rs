//! Platform mail: verification codes, password resets and invitations.
//!
//! Requests never wait for SMTP: a mail is queued (the queue is bounded; a full queue refuses
//! the request with 503) and one worker sends it with a bounded timeout. Without a configured
//! SMTP server, mail is written to `<data-dir>/outbox` as `.eml` files and logged, so that every
//! flow works out of the box.

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::{AsyncFileTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::mpsc;

use crate::problem::ApiError;

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
}

/// One mail to send.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
}

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Outbox(AsyncFileTransport<Tokio1Executor>, PathBuf),
}

/// The queue in front of the mail worker.
#[derive(Clone)]
pub struct Mailer {
    queue: mpsc::Sender<Mail>,
}

impl Mailer {
    /// Starts the worker on the current tokio runtime.
    pub fn start(
        smtp_url: Option<&str>,
        from: &str,
        outbox: PathBuf,
        queue_max: usize,
        timeout: Duration,
    ) -> Result<Mailer, MailError> {
        let from: Mailbox = from.parse().map_err(|e: lettre::address::AddressError| {
            MailError::From(from.to_owned(), e.to_string())
        })?;
        let transport = match smtp_url {
            Some(url) => Transport::Smtp(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| MailError::SmtpUrl(e.to_string()))?
                    .timeout(Some(timeout))
                    .build(),
            ),
            None => {
                std::fs::create_dir_all(&outbox).map_err(|source| MailError::Outbox {
                    path: outbox.clone(),
                    source,
                })?;
                Transport::Outbox(AsyncFileTransport::new(&outbox), outbox)
            }
        };
        let (queue, rx) = mpsc::channel(queue_max.max(1));
        tokio::spawn(worker(rx, transport, from, timeout));
        Ok(Mailer { queue })
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
}

/// A reserved place in the mail queue.
pub struct MailSlot(mpsc::OwnedPermit<Mail>);

impl MailSlot {
    /// Queues `mail` in the reserved place (never fails, never waits).
    pub fn send(self, mail: Mail) {
        self.0.send(mail);
    }
}

async fn worker(
    mut rx: mpsc::Receiver<Mail>,
    transport: Transport,
    from: Mailbox,
    timeout: Duration,
) {
    while let Some(mail) = rx.recv().await {
        let to: Mailbox = match mail.to.parse() {
            Ok(to) => to,
            Err(e) => {
                tracing::warn!(to = %mail.to, error = %e, "not sending mail to an invalid address");
                continue;
            }
        };
        let message = match Message::builder()
            .from(from.clone())
            .to(to)
            .subject(mail.subject.clone())
            .body(mail.body.clone())
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "could not build mail");
                continue;
            }
        };
        let sent = match &transport {
            Transport::Smtp(smtp) => tokio::time::timeout(timeout, smtp.send(message))
                .await
                .map_err(|_| "timed out".to_owned())
                .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string())),
            Transport::Outbox(file, dir) => {
                let sent = file.send(message).await;
                tracing::info!(
                    outbox = %dir.display(),
                    to = %mail.to,
                    subject = %mail.subject,
                    "mail written to the outbox (no SMTP configured):\n{}",
                    mail.body
                );
                sent.map(|_| ()).map_err(|e| e.to_string())
            }
        };
        match sent {
            Ok(()) => tracing::info!(to = %mail.to, subject = %mail.subject, "mail sent"),
            Err(e) => tracing::warn!(to = %mail.to, error = %e, "sending mail failed"),
        }
    }
}
