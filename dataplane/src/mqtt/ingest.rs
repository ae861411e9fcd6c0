//! What an MQTT device may do, whatever its protocol version: the CONNECT check and the path of
//! one PUBLISH into the WAL. The version glue (`v3`, `v5`) only maps the outcomes to packets.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_storage::snapshot::{is_valid_device_id, is_valid_slug};
use sluice_storage::token;
use sluice_storage::wal::{Wal, WalError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tracing::{info, warn};
use uuid::Uuid;

use crate::access::{Access, Refusal, WorkspaceView};
use crate::config::MqttConfig;
use crate::ingest::now_us;
use crate::metrics::{HttpMetrics, PublishLabels};
use crate::parse::{self, BodyFormat, Events, ParseError};

use super::batcher::{Accepted, Batcher, Durable};
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
    ///
    /// The checks and the hand-over to the connection's batcher are synchronous ([`take`]);
    /// this future only waits for durability, or runs the boxed wait of a node or workspace
    /// out of room. Keeping it small matters: ntex moves a handler's future through each of
    /// its service layers for every PUBLISH.
    ///
    /// [`take`]: Self::take
    pub async fn publish(
        self: &Arc<Self>,
        session: &DeviceSession,
        topic: &str,
        payload: &[u8],
        qos: u8,
    ) -> Result<(), PublishRefusal> {
        let started = Instant::now();
        let outcome = match self.take(session, topic, payload, qos) {
            Taken::Done(outcome) => outcome,
            Taken::Durable(durable) => durable.await.unwrap_or(Err(PublishRefusal::Unavailable)),
            Taken::Waiting(waiting) => waiting.await,
        };
        if qos == 0 {
            // Queued, stored or refused: the lane may take the next ones.
            session.lane.caught_up_one();
        }
        let device = &session.device;
        match (
            &outcome,
            self.metrics.mqtt.publishes_accepted.get(usize::from(qos)),
        ) {
            (Ok(()), Some(accepted)) => {
                accepted.inc();
            }
            _ => {
                let label = PublishLabels {
                    qos,
                    outcome: match &outcome {
                        Ok(()) => crate::metrics::ACCEPTED,
                        Err(r) => r.slug(),
                    },
                };
                self.metrics
                    .mqtt
                    .publishes_total
                    .get_or_create(&label)
                    .inc();
            }
        }
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

    /// Checks one PUBLISH and, when there is room, queues it on the connection's batcher.
    fn take<'a>(
        self: &'a Arc<Self>,
        session: &'a DeviceSession,
        topic: &'a str,
        payload: &[u8],
        qos: u8,
    ) -> Taken<'a> {
        let checked = match self.check(&session.device, topic, payload) {
            Ok(Some(checked)) => checked,
            Ok(None) => return Taken::Done(Ok(())),
            Err(refusal) => return Taken::Done(Err(refusal)),
        };
        // Room is there almost always: take it without setting up the waits (a timer and a
        // semaphore future per publish, before this was split).
        let permit = match self.inflight.clone().try_acquire_many_owned(checked.bytes) {
            Ok(permit) => Some(permit),
            Err(TryAcquireError::Closed) => return Taken::Done(Err(PublishRefusal::Unavailable)),
            Err(TryAcquireError::NoPermits) => None,
        };
        match permit {
            Some(permit)
                if checked
                    .workspace
                    .bucket
                    .take(checked.events.ends.len())
                    .is_ok() =>
            {
                match self.submit(session, checked.accepted(permit), qos) {
                    Some(durable) => Taken::Durable(durable),
                    None => Taken::Done(Ok(())),
                }
            }
            permit => Taken::Waiting(Box::pin(async move {
                let permit = self.wait_for_room(&checked, permit).await?;
                match self.submit(session, checked.accepted(permit), qos) {
                    Some(durable) => durable.await.unwrap_or(Err(PublishRefusal::Unavailable)),
                    None => Ok(()),
                }
            })),
        }
    }

    /// Stores a QoS 0 publish taken by the connection's lane, if it is accepted and there is
    /// room for it now; `false` (nothing done) leaves it to the publish handler, which refuses
    /// or waits as it does for every publish.
    pub fn take_at_once(
        self: &Arc<Self>,
        device: &Device,
        batcher: &Rc<Batcher>,
        topic: &str,
        payload: &[u8],
    ) -> bool {
        let Ok(Some(checked)) = self.check(device, topic, payload) else {
            return false;
        };
        if !batcher.has_room(checked.events.payloads.len()) {
            return false;
        }
        let Ok(permit) = self.inflight.clone().try_acquire_many_owned(checked.bytes) else {
            return false;
        };
        if checked
            .workspace
            .bucket
            .take(checked.events.ends.len())
            .is_err()
        {
            return false;
        }
        // With room checked above, a QoS 0 submit never asks to wait.
        let _ = batcher.submit(self, checked.accepted(permit), false);
        if let Some(accepted) = self.metrics.mqtt.publishes_accepted.first() {
            accepted.inc();
        }
        self.metrics.mqtt.qos0_lane_total.inc();
        true
    }

    fn submit(
        self: &Arc<Self>,
        session: &DeviceSession,
        accepted: Accepted<'_>,
        qos: u8,
    ) -> Option<Durable> {
        session.batcher.submit(self, accepted, qos > 0)
    }

    /// Checks one PUBLISH against the configuration in force now and its payload; `None` when
    /// it carries no event.
    fn check<'a>(
        &self,
        device: &'a Device,
        topic: &'a str,
        payload: &[u8],
    ) -> Result<Option<Checked<'a>>, PublishRefusal> {
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
        if events.ends.is_empty() {
            return Ok(None);
        }
        match self.wal.check_room(events.payloads.len()) {
            Ok(()) | Err(WalError::QuotaExceeded { .. }) => {}
            Err(_) => return Err(PublishRefusal::Unavailable),
        }
        Ok(Some(Checked {
            workspace: grant.workspace,
            source,
            topic,
            device_id: &device.device_id,
            received_at_us,
            // Node-wide memory bound: the payload's size is held until it is in the WAL.
            bytes: u32::try_from(events.payloads.len().max(1)).unwrap_or(u32::MAX),
            events,
        }))
    }

    /// Waits for what [`take`](Self::take) found missing: the node's in-flight budget (when
    /// `permit` is `None`) and the workspace's rate, together at most [`ROOM_WAIT_MAX`]. Waiting
    /// holds the client's in-flight window, which is the flow control MQTT has.
    async fn wait_for_room(
        &self,
        checked: &Checked<'_>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<OwnedSemaphorePermit, PublishRefusal> {
        let since = Instant::now();
        let permit = match permit {
            Some(permit) => permit,
            None => tokio::select! {
                permit = self.inflight.clone().acquire_many_owned(checked.bytes) => {
                    permit.map_err(|_| PublishRefusal::Unavailable)?
                }
                () = ntex_util::time::sleep(ROOM_WAIT_MAX) => {
                    return Err(PublishRefusal::QuotaExceeded)
                }
            },
        };
        while checked
            .workspace
            .bucket
            .take(checked.events.ends.len())
            .is_err()
        {
            if since.elapsed() > ROOM_WAIT_MAX {
                return Err(PublishRefusal::QuotaExceeded);
            }
            ntex_util::time::sleep(ROOM_POLL).await;
        }
        Ok(permit)
    }
}

/// How far [`MqttIngest::take`] got without waiting.
enum Taken<'a> {
    /// Refused, carried no event, or queued at QoS 0.
    Done(Result<(), PublishRefusal>),
    /// Queued; told when durable.
    Durable(Durable),
    /// Out of room: the wait, the queueing and the durability, boxed.
    Waiting(Pin<Box<dyn Future<Output = Result<(), PublishRefusal>> + 'a>>),
}

/// A PUBLISH that passed the checks, before it has room.
struct Checked<'a> {
    workspace: Arc<WorkspaceView>,
    source: &'a str,
    topic: &'a str,
    device_id: &'a str,
    received_at_us: i64,
    bytes: u32,
    events: Events,
}

impl<'a> Checked<'a> {
    fn accepted(self, permit: OwnedSemaphorePermit) -> Accepted<'a> {
        Accepted {
            workspace_id: self.workspace.id,
            source: self.source,
            topic: self.topic,
            device_id: self.device_id,
            received_at_us: self.received_at_us,
            payloads: self.events.payloads,
            ends: self.events.ends,
            permit,
        }
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
