//! Webhook deliveries: each node delivers the events it accepted, for every enabled
//! subscription, from its own commit log. No two nodes ever send the same batch, and a
//! receiver that is down only delays its subscription: the events wait in the lake, not on the
//! node's disk, so no lag cap is needed to protect the WAL.
//!
//! - `deliver`: one subscription's loop (read, batch, sign, send, retry, keep the cursor).
//! - `client`: the HTTP client with the outbound address policy.
//! - `cursors`: where each subscription stands, in `<data-dir>/webhooks.redb`.
//!
//! Every attempt is reported to the control plane, which keeps the delivery and failure logs
//! and disables a subscription that keeps failing (a new configuration version, which stops
//! its deliveries here).

pub mod client;
pub mod cursors;
pub mod deliver;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_config::sealed;
use sluice_config::stream::{
    WebhookAttempt, WebhookAttempts, WebhookOutcome, WEBHOOK_ATTEMPTS_PATH,
    WEBHOOK_ATTEMPTS_PER_REPORT_MAX,
};
use sluice_config::webhook_signature::Signer;
use sluice_storage::lake::Lake;
use sluice_storage::shipper::ShipperStatus;
use sluice_storage::shutdown::Shutdown;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::{info, warn};
use uuid::Uuid;

use crate::access::{Access, ActiveWebhook};
use crate::export::reader::FileCache;
use crate::metrics::NodeMetrics;
use client::WebhookClient;
use cursors::Cursors;
use deliver::Delivery;

/// Attempt reports waiting to be sent to the control plane; more are dropped (the delivery
/// log is a window of recent attempts, not a ledger).
const REPORTS_QUEUED_MAX: usize = 10_000;
/// Attempts per report request.
const REPORT_ATTEMPTS_MAX: usize = WEBHOOK_ATTEMPTS_PER_REPORT_MAX;

/// Where attempt reports go: the control plane followed, with the cluster secret.
#[derive(Clone)]
pub struct ReportTo {
    pub control_plane: String,
    pub secret: String,
}

/// Everything the deliveries of a node share.
pub struct Webhooks {
    pub access: Arc<Access>,
    pub lake: Lake,
    pub node: String,
    pub cursors: Arc<Cursors>,
    pub shipper: Arc<ShipperStatus>,
    pub cache: Arc<FileCache>,
    pub metrics: Arc<NodeMetrics>,
    /// Opens the subscriptions' sealed secrets; without it nothing can be signed.
    pub cluster_secret: Option<String>,
    pub report_to: Option<ReportTo>,
}

impl Webhooks {
    /// Runs until the shutdown signal: starts a delivery for each enabled subscription,
    /// restarts it when its configuration changes, stops it when it is disabled or removed.
    pub async fn run(self, shutdown: Shutdown) {
        let client = match WebhookClient::new() {
            Ok(client) => client,
            Err(err) => {
                warn!(error = %err, "webhook deliveries cannot start");
                return;
            }
        };
        let (reports, receiver) = mpsc::channel(REPORTS_QUEUED_MAX);
        let reporter = tokio::spawn(report(receiver, self.report_to.clone(), self.node.clone()));
        let mut changes = self.access.subscribe();
        let mut running: HashMap<Uuid, (ActiveWebhook, AbortHandle)> = HashMap::new();
        let mut unopenable: HashMap<Uuid, String> = HashMap::new();
        let mut stop = shutdown.clone();
        loop {
            let view = self.access.current();
            let desired: HashMap<Uuid, &ActiveWebhook> = view
                .webhooks()
                .filter(|w| w.config.enabled)
                .map(|w| (w.config.id, w))
                .collect();
            running.retain(|id, (active, handle)| {
                let keep = desired.get(id).is_some_and(|w| {
                    w.config == active.config && w.output_config == active.output_config
                });
                if !keep {
                    handle.abort();
                    info!(webhook = %id, "webhook deliveries stopped (disabled, changed or removed)");
                }
                keep
            });
            for (id, webhook) in desired {
                if running.contains_key(&id) {
                    continue;
                }
                let signer = match self.signer(webhook) {
                    Ok(signer) => signer,
                    Err(reason) => {
                        if unopenable.get(&id) != Some(&reason) {
                            warn!(webhook = %id, %reason, "webhook not delivered from this node");
                            unopenable.insert(id, reason);
                        }
                        continue;
                    }
                };
                unopenable.remove(&id);
                let delivery = Delivery {
                    webhook: webhook.clone(),
                    node: self.node.clone(),
                    lake: self.lake.clone(),
                    cursors: self.cursors.clone(),
                    client: client.clone(),
                    signer,
                    reports: reports.clone(),
                    shipper: self.shipper.clone(),
                    cache: self.cache.clone(),
                    metrics: self.metrics.clone(),
                };
                let task = tokio::spawn(delivery.run(shutdown.clone()));
                info!(webhook = %id, url = %webhook.config.url, "webhook deliveries started");
                running.insert(id, (webhook.clone(), task.abort_handle()));
            }
            drop(view);
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                _ = stop.requested() => break,
            }
        }
        for (_, (_, handle)) in running {
            handle.abort();
        }
        drop(reports);
        let _ = reporter.await;
    }

    fn signer(&self, webhook: &ActiveWebhook) -> Result<Signer, String> {
        let Some(cluster_secret) = &self.cluster_secret else {
            return Err("this node has no cluster secret to open the signing secret with".into());
        };
        let secret = sealed::open(cluster_secret, &webhook.config.secret_sealed)
            .map_err(|e| e.to_string())?;
        Signer::new(&secret).map_err(|e| e.to_string())
    }
}

/// Sends attempt reports to the control plane about once a second, in order; drops them when
/// there is no control plane (a node on a snapshot file) after logging failures.
async fn report(mut attempts: mpsc::Receiver<WebhookAttempt>, to: Option<ReportTo>, node: String) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .ok();
    let mut batch = Vec::new();
    while attempts.recv_many(&mut batch, REPORT_ATTEMPTS_MAX).await > 0 {
        for attempt in batch
            .iter()
            .filter(|a| a.outcome != WebhookOutcome::Delivered)
        {
            warn!(webhook = %attempt.webhook_id, outcome = ?attempt.outcome, status = ?attempt.status, error = ?attempt.error, "webhook batch not delivered");
        }
        if let (Some(to), Some(client)) = (&to, &client) {
            let url = format!(
                "{}{WEBHOOK_ATTEMPTS_PATH}",
                to.control_plane.trim_end_matches('/')
            );
            let report = WebhookAttempts {
                node: node.clone(),
                attempts: std::mem::take(&mut batch),
            };
            // Serialising plain data cannot fail.
            let body = serde_json::to_vec(&report).unwrap_or_default();
            let sent = client
                .post(&url)
                .bearer_auth(&to.secret)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            match sent {
                Ok(answer) if answer.status().is_success() => {}
                Ok(answer) => {
                    warn!(status = %answer.status(), "the control plane refused webhook attempt reports")
                }
                Err(err) => {
                    warn!(error = %err, "cannot report webhook attempts to the control plane")
                }
            }
        }
        batch.clear();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
