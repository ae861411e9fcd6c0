//! What an MQTT device may do, whatever its protocol version: the CONNECT check, and the path
//! of one PUBLISH through the [admission steps](crate::admit) into the connection's batcher.
//! The version glue (`v3`, `v5`) only maps the outcomes to packets.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use sluice_config::snapshot::{is_valid_device_id, is_valid_slug, Protocol};
use sluice_config::token;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tracing::{info, warn};

use crate::access::{Refusal as AccessRefusal, WorkspaceView};
use crate::admit::{self, Admission, Refusal, ROOM_POLL, ROOM_WAIT_MAX};
use crate::config::MqttConfig;
use crate::metrics::{NodeMetrics, PublishLabels};
use crate::parse::{BodyFormat, Events};
use crate::shape::Origin;
use sluice_storage::event::Shaping;

use super::batcher::{Accepted, Batcher, Durable};
use super::throttle::ConnectFailures;
use super::types::{describe, publish_outcome, ConnectRefusal, Credentials, Device};

/// State shared by every MQTT connection of a node, on every worker thread.
pub struct MqttIngest {
    /// The steps shared with HTTP.
    pub admission: Arc<Admission>,
    pub metrics: Arc<NodeMetrics>,
    pub limits: MqttConfig,
    pub failures: ConnectFailures,
    /// Payload bytes received and not yet durable, all connections together
    /// (`mqtt.inflight_bytes_max`).
    pub inflight: Arc<Semaphore>,
    /// The node's shutdown: every session is then closed (DISCONNECT 0x8B on MQTT 5), so that
    /// devices reconnect through the balancer to another node instead of finding a dead socket.
    pub shutdown: sluice_storage::shutdown::Shutdown,
}

impl MqttIngest {
    /// Checks a CONNECT. Refusals are counted; the caller delays them for repeat offenders.
    /// Checks a CONNECT; `placed` says whether its connection got a place among those
    /// authenticating (`mqtt.connecting_max`) within the connect timeout: one that did not is
    /// refused as busy, unchecked.
    pub fn authorize(
        &self,
        creds: &Credentials<'_>,
        placed: bool,
    ) -> Result<Device, ConnectRefusal> {
        let outcome = if placed {
            self.check_connect(creds)
        } else {
            Err(ConnectRefusal::ServerBusy)
        };
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
        if !self.admission.access.is_configured() {
            return Err(ConnectRefusal::NotConfigured);
        }
        if !is_valid_device_id(creds.client_id) {
            return Err(ConnectRefusal::BadClientId);
        }
        let secret = std::str::from_utf8(password).map_err(|_| ConnectRefusal::BadCredentials)?;
        let token_hash = token::hash(secret);
        let view = self.admission.view();
        let grant = view
            .check_session(&token_hash, workspace, creds.client_id, admit::now_us())
            .map_err(|r| match r {
                AccessRefusal::UnknownToken
                | AccessRefusal::ExpiredToken
                | AccessRefusal::UnknownWorkspace
                | AccessRefusal::WrongWorkspace => ConnectRefusal::BadCredentials,
                _ => ConnectRefusal::NotAuthorized,
            })?;
        Ok(Device {
            workspace: workspace.to_owned(),
            workspace_id: grant.workspace_id,
            token_hash,
            device_id: creds.client_id.to_owned(),
            expires_at_us: grant.expires_at_us,
            checked_generation: view.generation,
        })
    }

    /// Stores one PUBLISH of `device`'s connection, queued on its `batcher`. QoS 1 and 2 return
    /// once it is durable in the WAL; QoS 0 returns once it is queued (unless the connection
    /// has too much queued).
    ///
    /// The checks and the hand-over to the connection's batcher are synchronous ([`take`]);
    /// this future only waits for durability, or runs the boxed wait of a node or workspace
    /// out of room. Keeping it small matters: ntex moves a handler's future through each of
    /// its service layers for every PUBLISH.
    ///
    /// [`take`]: Self::take
    pub async fn publish(
        self: &Arc<Self>,
        device: &Device,
        batcher: &Rc<Batcher>,
        topic: &str,
        payload: &[u8],
        qos: u8,
    ) -> Result<(), Refusal> {
        let started = Instant::now();
        let outcome = match self.take(device, batcher, topic, payload, qos) {
            Taken::Done(outcome) => outcome,
            Taken::Durable(durable) => durable.await.unwrap_or(Err(Refusal::StorageUnavailable)),
            Taken::Waiting(waiting) => waiting.await,
        };
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
                        Err(r) => publish_outcome(r),
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
                reason = publish_outcome(refusal),
                "MQTT publish refused: {}",
                describe(refusal)
            ),
        }
        outcome
    }

    /// Checks one PUBLISH and, when there is room, queues it on the connection's batcher.
    fn take<'a>(
        self: &'a Arc<Self>,
        device: &'a Device,
        batcher: &'a Rc<Batcher>,
        topic: &'a str,
        payload: &[u8],
        qos: u8,
    ) -> Taken<'a> {
        let checked = match self.check(device, topic, payload) {
            Ok(Some(checked)) => checked,
            Ok(None) => return Taken::Done(Ok(())),
            Err(refusal) => return Taken::Done(Err(refusal)),
        };
        // Room is there almost always: take it without setting up the waits (a timer and a
        // semaphore future per publish, before this was split).
        let permit = match self.inflight.clone().try_acquire_many_owned(checked.bytes) {
            Ok(permit) => Some(permit),
            Err(TryAcquireError::Closed) => return Taken::Done(Err(Refusal::StorageUnavailable)),
            Err(TryAcquireError::NoPermits) => None,
        };
        match permit {
            Some(permit)
                if admit::take_rate(&checked.workspace, checked.events.ends.len()).is_ok() =>
            {
                match batcher.submit(&self.admission, checked.accepted(permit), qos > 0) {
                    Some(durable) => Taken::Durable(durable),
                    None => Taken::Done(Ok(())),
                }
            }
            permit => Taken::Waiting(Box::pin(async move {
                let permit = self.wait_for_room(&checked, permit).await?;
                match batcher.submit(&self.admission, checked.accepted(permit), qos > 0) {
                    Some(durable) => durable.await.unwrap_or(Err(Refusal::StorageUnavailable)),
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
        if admit::take_rate(&checked.workspace, checked.events.ends.len()).is_err() {
            return false;
        }
        // With room checked above, a QoS 0 submit never asks to wait.
        let _ = batcher.submit(&self.admission, checked.accepted(permit), false);
        if let Some(accepted) = self.metrics.mqtt.publishes_accepted.first() {
            accepted.inc();
        }
        self.metrics.mqtt.qos0_lane_total.inc();
        true
    }

    /// Checks one PUBLISH against the configuration in force now and its payload; `None` when
    /// it carries no event.
    fn check<'a>(
        &self,
        device: &'a Device,
        topic: &'a str,
        payload: &[u8],
    ) -> Result<Option<Checked<'a>>, Refusal> {
        let received_at_us = admit::now_us();
        let source = source_of(topic).ok_or(Refusal::TopicInvalid)?;
        let view = self.admission.view();
        let grant = Admission::check(
            &view,
            &device.token_hash,
            &device.workspace,
            source,
            Some(&device.device_id),
            Protocol::Mqtt,
            received_at_us,
        )?;
        if payload.len() > self.limits.payload_bytes_max {
            return Err(Refusal::PayloadTooLarge {
                bytes: payload.len(),
                max: self.limits.payload_bytes_max,
            });
        }
        let events = self.admission.parse(payload, BodyFormat::Json)?;
        if events.ends.is_empty() {
            return Ok(None);
        }
        let origin = Origin {
            topic: Some(topic),
            ..Origin::default()
        };
        let shaped = admit::shape(&grant, &events, origin)?;
        // At the disk quota the batcher waits for room (MQTT's flow control); anything else
        // is refused now.
        match self.admission.check_room(events.payloads.len()) {
            Ok(()) | Err(Refusal::StorageFull) => {}
            Err(other) => return Err(other),
        }
        let (shaping, device_id) = match shaped {
            Some(shaped) => (
                Some(shaped.shaping),
                match shaped.device_id {
                    Some(rule_device) => Cow::Owned(rule_device),
                    None => Cow::Borrowed(device.device_id.as_str()),
                },
            ),
            None => (None, Cow::Borrowed(device.device_id.as_str())),
        };
        Ok(Some(Checked {
            workspace: grant.workspace,
            source,
            topic,
            device_id,
            shaping,
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
    ) -> Result<OwnedSemaphorePermit, Refusal> {
        let since = Instant::now();
        let permit = match permit {
            Some(permit) => permit,
            None => tokio::select! {
                permit = self.inflight.clone().acquire_many_owned(checked.bytes) => {
                    permit.map_err(|_| Refusal::StorageUnavailable)?
                }
                () = ntex_util::time::sleep(ROOM_WAIT_MAX) => {
                    return Err(Refusal::Overloaded)
                }
            },
        };
        while let Err(refusal) = admit::take_rate(&checked.workspace, checked.events.ends.len()) {
            if since.elapsed() > ROOM_WAIT_MAX {
                return Err(refusal);
            }
            ntex_util::time::sleep(ROOM_POLL).await;
        }
        Ok(permit)
    }
}

/// How far [`MqttIngest::take`] got without waiting.
enum Taken<'a> {
    /// Refused, carried no event, or queued at QoS 0.
    Done(Result<(), Refusal>),
    /// Queued; told when durable.
    Durable(Durable),
    /// Out of room: the wait, the queueing and the durability, boxed.
    Waiting(Pin<Box<dyn Future<Output = Result<(), Refusal>> + 'a>>),
}

/// A PUBLISH that passed the checks, before it has room.
struct Checked<'a> {
    workspace: Arc<WorkspaceView>,
    source: &'a str,
    topic: &'a str,
    /// The client id, or a tag rule's device.
    device_id: Cow<'a, str>,
    shaping: Option<Box<Shaping>>,
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
            shaping: self.shaping,
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
