//! One subscription's deliveries from this node: read the output from this node's commit log,
//! send it in signed batches, retry what the receiver did not take, move on only once it did
//! (or refused the batch for good), and keep the cursor durably after each batch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use sluice_config::stream::{WebhookAttempt, WebhookOutcome};
use sluice_config::webhook_signature::Signer;
use sluice_storage::lake::Lake;
use sluice_storage::shipper::ShipperStatus;
use sluice_storage::shutdown::Shutdown;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::client::WebhookClient;
use super::cursors::Cursors;
use crate::access::ActiveWebhook;
use crate::export::cursor::Cursor;
use crate::export::reader::{FileCache, ReadSpec, Reader};
use crate::metrics::{NodeMetrics, Outcome};

/// First retry delay; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// A receiver's `Retry-After` is honoured up to this.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);
/// How often a caught-up delivery looks at the commit log when the shipper does not wake it.
const POLL: Duration = Duration::from_millis(500);

pub struct Delivery {
    pub webhook: ActiveWebhook,
    pub node: String,
    pub lake: Lake,
    pub cursors: Arc<Cursors>,
    pub client: WebhookClient,
    pub signer: Signer,
    pub reports: mpsc::Sender<WebhookAttempt>,
    pub shipper: Arc<ShipperStatus>,
    pub cache: Arc<FileCache>,
    pub metrics: Arc<NodeMetrics>,
}

/// How one attempt ended.
enum Sent {
    Delivered,
    /// The receiver refused the batch for good (a 4xx other than 408 and 429).
    Refused,
    /// Try again after this long.
    Retry(Duration),
}

impl Delivery {
    pub async fn run(self, mut shutdown: Shutdown) {
        let id = self.webhook.config.id;
        let config = self.webhook.config.clone();
        let mut reader = match self.start_reader().await {
            Some(reader) => reader,
            None => return,
        };
        let interval = Duration::from_millis(config.batch_interval_ms).min(POLL);
        loop {
            let mut body = Vec::with_capacity(4096);
            body.push(b'[');
            let mut events = 0usize;
            let bytes_max = config.batch_bytes_max;
            let read = reader
                .read(config.batch_events_max, |event| {
                    if events > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(event.json);
                    events += 1;
                    body.len() < bytes_max
                })
                .await;
            if let Err(err) = read {
                warn!(webhook = %id, error = %err, "webhook delivery cannot read the lake; retrying");
            }
            if events == 0 {
                // Nothing new: wait for this node's next commit, or look again later.
                tokio::select! {
                    _ = self.shipper.committed.notified() => {}
                    _ = tokio::time::sleep(interval) => {}
                    _ = shutdown.requested() => return,
                }
                continue;
            }
            body.push(b']');
            let body = Bytes::from(body);
            let message_id = message_id(id, reader.cursor().encode().as_bytes(), &body);
            let mut failures = 0u32;
            loop {
                let sent = tokio::select! {
                    sent = self.attempt(&message_id, &body, events) => sent,
                    _ = shutdown.requested() => return,
                };
                match sent {
                    Sent::Delivered | Sent::Refused => break,
                    Sent::Retry(after) => {
                        failures += 1;
                        let backoff = RETRY_FIRST
                            .saturating_mul(1 << failures.min(12))
                            .min(RETRY_MAX);
                        let wait = after.max(backoff / 2 + jitter(backoff / 2));
                        debug!(webhook = %id, ?wait, "webhook batch not taken; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = shutdown.requested() => return,
                        }
                    }
                }
            }
            // Taken (or given up for good): the next batch starts after it, also after a
            // restart.
            if let Err(err) = self.save_cursor(reader.cursor().clone()).await {
                warn!(webhook = %id, error = %err, "cannot record the webhook's progress; its last batch may be sent again after a restart");
            }
        }
    }

    /// A reader from where this subscription's deliveries from this node stand; a new
    /// subscription starts with the files committed from now on.
    async fn start_reader(&self) -> Option<Reader> {
        let id = self.webhook.config.id;
        let spec = ReadSpec {
            workspace_id: self.webhook.workspace_id,
            output: self.webhook.output.clone(),
            since_us: None,
            only_node: Some(self.node.clone()),
        };
        let source = &self.webhook.output.source;
        let cursor = match self.cursors.load(id, source) {
            Ok(Some(cursor)) => cursor,
            Ok(None) => loop {
                let end = Reader::end_cursor(
                    &self.lake,
                    self.webhook.workspace_id,
                    &self.webhook.output.source,
                    Some(&self.node),
                )
                .await;
                match end {
                    Ok(cursor) => {
                        if let Err(err) = self.save_cursor(cursor.clone()).await {
                            warn!(webhook = %id, error = %err, "cannot record where the webhook starts");
                        }
                        break cursor;
                    }
                    Err(err) => {
                        warn!(webhook = %id, error = %err, "webhook delivery cannot list the lake; retrying");
                        tokio::time::sleep(POLL * 4).await;
                    }
                }
            },
            Err(err) => {
                warn!(webhook = %id, error = %err, "cannot read the webhook's progress; not delivering");
                return None;
            }
        };
        Some(Reader::new(
            self.lake.clone(),
            self.cache.clone(),
            spec,
            cursor,
        ))
    }

    /// Stores where the subscription stands, off the runtime's workers: a redb commit syncs
    /// the disk, which would stall every reader sharing the export runtime.
    async fn save_cursor(&self, cursor: Cursor) -> Result<(), String> {
        let (cursors, id) = (self.cursors.clone(), self.webhook.config.id);
        let source = self.webhook.output.source.clone();
        tokio::task::spawn_blocking(move || cursors.save(id, &source, &cursor))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    async fn attempt(&self, message_id: &str, body: &Bytes, events: usize) -> Sent {
        let config = &self.webhook.config;
        let started = Instant::now();
        let timestamp = chrono::Utc::now().timestamp();
        let headers = [
            ("webhook-id", message_id.to_owned()),
            ("webhook-timestamp", timestamp.to_string()),
            (
                "webhook-signature",
                self.signer.sign(message_id, timestamp, body),
            ),
        ];
        let answer = self
            .client
            .post(&config.url, config.allow_private, &headers, body.clone())
            .await;
        // The rule both planes follow (`WebhookOutcome::of_status`); no answer is retried.
        let (outcome, sent, status, error) = match answer {
            Ok(answer) => {
                let outcome = WebhookOutcome::of_status(answer.status);
                let sent = match outcome {
                    WebhookOutcome::Delivered => Sent::Delivered,
                    WebhookOutcome::Failed => Sent::Refused,
                    WebhookOutcome::Retrying => {
                        Sent::Retry(answer.retry_after.unwrap_or_default().min(RETRY_AFTER_MAX))
                    }
                };
                let error = (outcome != WebhookOutcome::Delivered)
                    .then(|| format!("{} {}", answer.status, answer.body));
                (outcome, sent, Some(answer.status), error)
            }
            Err(err) => (
                WebhookOutcome::Retrying,
                Sent::Retry(Duration::ZERO),
                None,
                Some(err.to_string()),
            ),
        };
        let attempt = WebhookAttempt {
            webhook_id: config.id,
            at: chrono::Utc::now(),
            outcome,
            status,
            events: events as u64,
            first_event_id: None,
            last_event_id: None,
            duration_ms: started.elapsed().as_millis() as u64,
            error,
            webhook_message_id: message_id.to_owned(),
        };
        let metrics = &self.metrics.data_out;
        let label = match outcome {
            WebhookOutcome::Delivered => "delivered",
            WebhookOutcome::Retrying => "retrying",
            WebhookOutcome::Failed => "failed",
        };
        metrics
            .webhook_attempts_total
            .get_or_create(&Outcome { outcome: label })
            .inc();
        if outcome == WebhookOutcome::Delivered {
            metrics.webhook_events_delivered_total.inc_by(events as u64);
        }
        if self.reports.try_send(attempt).is_err() {
            debug!("webhook attempt reports are backed up; one dropped");
        }
        sent
    }
}

/// The batch's `webhook-id`: the same for every attempt at the same batch (also after a
/// restart, which reads the same events again from the same cursor), so that receivers can
/// drop a batch they already took.
fn message_id(subscription: uuid::Uuid, cursor_after: &[u8], body: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(subscription.as_bytes())
        .chain_update(cursor_after)
        .chain_update(body)
        .finalize();
    format!("msg_{}", hex::encode(&digest[..16]))
}

fn jitter(max: Duration) -> Duration {
    Duration::from_millis(rand::random_range(0..=max.as_millis() as u64))
}
