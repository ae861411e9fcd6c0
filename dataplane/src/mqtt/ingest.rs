//! What an MQTT device may do, whatever its protocol version: the CONNECT check and the path of
//! one PUBLISH into the WAL. The version glue (`v3`, `v5`) only maps the outcomes to packets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_storage::snapshot::{is_valid_device_id, is_valid_slug};
use sluice_storage::token;
use sluice_storage::wal::{Wal, WalError};
use tokio::sync::Semaphore;
use tracing::{info, warn};
use uuid::Uuid;

use crate::access::{Access, Refusal};
use crate::config::MqttConfig;
use crate::ingest::now_us;
use crate::metrics::{HttpMetrics, PublishLabels};
use crate::parse::{self, BodyFormat, ParseError};

use super::batcher::Accepted;
use super::sessions::{DeviceSession, Sessions};
use super::throttle::ConnectFailures;

/// State shared by every MQTT connection of a node, on every worker thread.
pub struct MqttIngest {
    pub access: Arc<Access>,
    pub wal: Wal,
    pub metrics: Arc<HttpMetrics>,
    pub limits: MqttConfig,
    /// Events one PUBLISH may carry (a JSON array is a batch, as over HTTP).
    pub events_per_message_max: usize,
    pub sessions: Sessions,
    pub failures: ConnectFailures,
    /// Payload bytes received and not yet durable, all connections together
    /// (`mqtt.inflight_bytes_max`).
    pub inflight: Arc<Semaphore>,
}

/// Why a CONNECT is refused. Every refusal looks the same to the client whatever the detail,
/// so that a wrong guess learns nothing about which workspaces or tokens exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// No or wrong workspace/token pair, or an expired token.
    BadCredentials,
    /// Valid credentials that may not ingest now: disabled workspace, no ingest scope, a token
    /// bound to another device.
    NotAuthorized,
    /// Empty or unusable client id (it is the device id).
    BadClientId,
}

impl ConnectRefusal {
    pub fn slug(self) -> &'static str {
        match self {
            ConnectRefusal::BadCredentials => "bad-credentials",
            ConnectRefusal::NotAuthorized => "not-authorized",
            ConnectRefusal::BadClientId => "bad-client-id",
        }
    }
}

/// The CONNECT fields that decide who the client is.
pub struct Credentials<'a> {
    /// The workspace slug.
    pub username: Option<&'a str>,
    /// An ingest token of that workspace.
    pub password: Option<&'a [u8]>,
    /// The device id.
    pub client_id: &'a str,
}

/// Who an accepted connection speaks for. The token is kept as its hash only, and every
/// PUBLISH is checked again against the configuration in force at that moment.
#[derive(Debug, Clone)]
pub struct Device {
    pub workspace: String,
    pub workspace_id: Uuid,
    pub token_hash: [u8; 32],
    pub device_id: String,
    pub expires_at_us: Option<i64>,
}

/// Why a PUBLISH is refused; the reason codes are MQTT 5's.
#[derive(Debug)]
pub enum PublishRefusal {
    /// Not `ingest/{source}` or `ingest/{source}/...`.
    TopicInvalid,
    UnknownSource,
    /// The token may not write this source, or may not ingest at all any more.
    NotAuthorized(Refusal),
    PayloadTooLarge {
        bytes: usize,
    },
    PayloadInvalid(ParseError),
    /// Rate or disk quota exhausted for longer than a client should be held.
    QuotaExceeded,
    /// The WAL cannot take writes (fsync failed, or it is closing).
    Unavailable,
}

impl PublishRefusal {
    pub fn slug(&self) -> &'static str {
        match self {
            PublishRefusal::TopicInvalid => "topic-invalid",
            PublishRefusal::UnknownSource => "unknown-source",
            PublishRefusal::NotAuthorized(_) => "not-authorized",
            PublishRefusal::PayloadTooLarge { .. } => "payload-too-large",
            PublishRefusal::PayloadInvalid(_) => "payload-invalid",
            PublishRefusal::QuotaExceeded => "quota-exceeded",
            PublishRefusal::Unavailable => "unavailable",
        }
    }

    /// A line for the client (MQTT 5 reason string) and the log.
    pub fn describe(&self) -> String {
        match self {
            PublishRefusal::TopicInvalid => {
                "publish to ingest/{source} or ingest/{source}/..., source a lowercase slug".into()
            }
            PublishRefusal::UnknownSource => "no such source in this workspace".into(),
            PublishRefusal::NotAuthorized(r) => format!("not authorized: {r:?}"),
            PublishRefusal::PayloadTooLarge { bytes } => {
                format!("payload of {bytes} bytes is over the limit")
            }
            PublishRefusal::PayloadInvalid(e) => e.to_string(),
            PublishRefusal::QuotaExceeded => {
                "over the workspace's rate or the node's disk quota; retry later".into()
            }
            PublishRefusal::Unavailable => "the node cannot store events right now".into(),
        }
    }
}

/// How long a PUBLISH may wait for rate or disk room before it is refused. Waiting holds the
/// client's in-flight window, which is the flow control MQTT has.
const ROOM_WAIT_MAX: Duration = Duration::from_secs(10);
const ROOM_POLL: Duration = Duration::from_millis(50);

impl MqttIngest {
    /// Checks a CONNECT. Refusals are counted; the caller delays them for repeat offenders.
    pub fn authorize(&self, creds: &Credentials<'_>) -> Result<Device, ConnectRefusal> {
        let outcome = self.check_connect(creds);
        let label = crate::metrics::Outcome {
            outcome: match &outcome {
                Ok(_) => "accepted",
                Err(r) => r.slug(),
            },
        };
        self.metrics.mqtt.connects_total.get_or_create(&label).inc();
        if let Err(refusal) = &outcome {
            info!(
                workspace = creds.username.unwrap_or_default(),
                client_id = creds.client_id,
                reason = refusal.slug(),
                "MQTT CONNECT refused"
            );
        }
        outcome
    }

    fn check_connect(&self, creds: &Credentials<'_>) -> Result<Device, ConnectRefusal> {
        let (Some(workspace), Some(password)) = (creds.username, creds.password) else {
            return Err(ConnectRefusal::BadCredentials);
        };
        if !is_valid_device_id(creds.client_id) {
            return Err(ConnectRefusal::BadClientId);
        }
        let secret = std::str::from_utf8(password).map_err(|_| ConnectRefusal::BadCredentials)?;
        let token_hash = token::hash(secret);
        let view = self.access.current();
        let grant = view
            .check_session(&token_hash, workspace, creds.client_id, now_us())
            .map_err(|r| match r {
                Refusal::UnknownToken
                | Refusal::ExpiredToken
                | Refusal::UnknownWorkspace
                | Refusal::WrongWorkspace => ConnectRefusal::BadCredentials,
                _ => ConnectRefusal::NotAuthorized,
            })?;
        Ok(Device {
            workspace: workspace.to_owned(),
            workspace_id: grant.workspace_id,
            token_hash,
            device_id: creds.client_id.to_owned(),
            expires_at_us: grant.expires_at_us,
        })
    }

    /// Whether `device` may still be connected under the configuration in force now.
    pub fn still_allowed(&self, device: &Device) -> Result<(), Refusal> {
        self.access
            .current()
            .check_session(
                &device.token_hash,
                &device.workspace,
                &device.device_id,
                now_us(),
            )
            .map(|_| ())
    }

    /// Stores one PUBLISH of `session`'s connection. QoS 1 and 2 return once it is durable in
    /// the WAL; QoS 0 returns once it is queued (unless the connection has too much queued).
    pub async fn publish(
        self: &Arc<Self>,
        session: &DeviceSession,
        topic: &str,
        payload: &[u8],
        qos: u8,
    ) -> Result<(), PublishRefusal> {
        let started = Instant::now();
        let device = &session.device;
        let outcome = match self.accept(device, topic, payload).await {
            Ok(Some(accepted)) => match session.batcher.submit(self, accepted, qos > 0) {
                Some(durable) => durable.await.unwrap_or(Err(PublishRefusal::Unavailable)),
                None => Ok(()),
            },
            Ok(None) => Ok(()),
            Err(refusal) => Err(refusal),
        };
        let label = PublishLabels {
            qos,
            outcome: match &outcome {
                Ok(()) => "accepted",
                Err(r) => r.slug(),
            },
        };
        self.metrics
            .mqtt
            .publishes_total
            .get_or_create(&label)
            .inc();
        match &outcome {
            Ok(()) if qos > 0 => self
                .metrics
                .mqtt
                .ack_seconds
                .observe(started.elapsed().as_secs_f64()),
            Ok(()) => {}
            Err(refusal) => warn!(
                workspace = %device.workspace,
                device = %device.device_id,
                topic,
                reason = refusal.slug(),
                "MQTT publish refused: {}",
                refusal.describe()
            ),
        }
        outcome
    }

    /// Checks one PUBLISH against the configuration in force now, its payload, and the
    /// workspace's rate; `None` when it carries no event.
    async fn accept<'a>(
        &self,
        device: &'a Device,
        topic: &'a str,
        payload: &[u8],
    ) -> Result<Option<Accepted<'a>>, PublishRefusal> {
        let received_at_us = now_us();
        let source = source_of(topic).ok_or(PublishRefusal::TopicInvalid)?;
        let view = self.access.current();
        let grant = view
            .check_hash(
                &device.token_hash,
                &device.workspace,
                source,
                Some(&device.device_id),
                received_at_us,
            )
            .map_err(|r| match r {
                Refusal::UnknownSource => PublishRefusal::UnknownSource,
                other => PublishRefusal::NotAuthorized(other),
            })?;
        if payload.len() > self.limits.payload_bytes_max {
            return Err(PublishRefusal::PayloadTooLarge {
                bytes: payload.len(),
            });
        }
        let events = parse::parse(payload, BodyFormat::Json, self.events_per_message_max)
            .map_err(PublishRefusal::PayloadInvalid)?;
        let count = events.ends.len();
        if count == 0 {
            return Ok(None);
        }
        let waited = Instant::now();
        // Node-wide memory bound: hold the payload's size until it is in the WAL.
        let bytes = u32::try_from(events.payloads.len().max(1)).unwrap_or(u32::MAX);
        let permit = tokio::select! {
            permit = self.inflight.clone().acquire_many_owned(bytes) => {
                permit.map_err(|_| PublishRefusal::Unavailable)?
            }
            () = ntex_util::time::sleep(ROOM_WAIT_MAX) => return Err(PublishRefusal::QuotaExceeded),
        };
        while grant.workspace.bucket.take(count).is_err() {
            if waited.elapsed() > ROOM_WAIT_MAX {
                return Err(PublishRefusal::QuotaExceeded);
            }
            ntex_util::time::sleep(ROOM_POLL).await;
        }
        match self.wal.check_room(events.payloads.len()) {
            Ok(()) | Err(WalError::QuotaExceeded { .. }) => {}
            Err(_) => return Err(PublishRefusal::Unavailable),
        }
        Ok(Some(Accepted {
            workspace_id: grant.workspace.id,
            source,
            topic,
            device_id: &device.device_id,
            received_at_us,
            payloads: events.payloads,
            ends: events.ends,
            permit,
        }))
    }
}

/// The source of `ingest/{source}` or `ingest/{source}/<anything>`.
pub fn source_of(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("ingest/")?;
    let source = rest.split('/').next()?;
    is_valid_slug(source).then_some(source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_name_their_source() {
        assert_eq!(source_of("ingest/telemetry"), Some("telemetry"));
        assert_eq!(source_of("ingest/telemetry/room/4"), Some("telemetry"));
        assert_eq!(source_of("ingest/telemetry/"), Some("telemetry"));
        assert_eq!(source_of("ingest/"), None);
        assert_eq!(source_of("ingest"), None);
        assert_eq!(source_of("other/telemetry"), None);
        assert_eq!(source_of("ingest/Tele"), None);
        assert_eq!(source_of("ingest/../x"), None);
    }
}
