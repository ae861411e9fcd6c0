//! What an MQTT device may do, whatever its protocol version: the CONNECT check, and the path
//! of one PUBLISH through the [admission steps](crate::admit) into the connection's batcher.
//! The connection only maps the outcomes to packets.

use std::borrow::Cow;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use ntex_bytes::{ByteString, Bytes};
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
    /// Checks a CONNECT; `placed` says whether its connection got a place among those
    /// authenticating (`mqtt.connecting_max`) within the connect timeout: one that did not is
    /// refused as busy, unchecked. Every outcome is counted and every refusal logged; the
    /// caller delays refusals for repeat offenders.
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
        if creds.enhanced_auth {
            return Err(ConnectRefusal::BadAuthenticationMethod);
        }
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

    /// Checks one PUBLISH of `device`'s connection and, when there is room now, queues it on
    /// the connection's `batcher`: QoS 0 is then done (unless the connection has too much
    /// queued), QoS 1 and 2 are told when durable. Out of room, nothing is done: the
    /// connection runs [`store_waiting`](Self::store_waiting) instead. Synchronous, so that a
    /// connection hands its publishes to the batcher in the order they came.
    pub fn store_now(
        self: &Arc<Self>,
        device: &Device,
        batcher: &Rc<Batcher>,
        topic: &str,
        payload: &[u8],
        qos: u8,
    ) -> Stored {
        let checked = match self.check(device, topic, payload) {
            Ok(Some(checked)) => checked,
            Ok(None) => return Stored::Done(Ok(())),
            Err(refusal) => return Stored::Done(Err(refusal)),
        };
        let permit = match self.inflight.clone().try_acquire_many_owned(checked.bytes) {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Stored::Done(Err(Refusal::StorageUnavailable)),
            Err(TryAcquireError::NoPermits) => return Stored::Later,
        };
        if admit::take_rate(&checked.workspace, checked.events.ends.len()).is_err() {
            return Stored::Later;
        }
        match batcher.submit(&self.admission, checked.accepted(permit), qos > 0) {
            Some(durable) => Stored::Durable(durable),
            None => Stored::Done(Ok(())),
        }
    }

    /// Stores a PUBLISH that found no room at [`store_now`](Self::store_now): checked again,
    /// it waits for the node's in-flight budget and the workspace's rate (together at most
    /// [`ROOM_WAIT_MAX`]), is queued, and for QoS 1 and 2 waits until durable. The connection
    /// reads nothing more meanwhile, which is the flow control MQTT has.
    pub async fn store_waiting(
        self: Arc<Self>,
        device: Rc<Device>,
        batcher: Rc<Batcher>,
        topic: ByteString,
        payload: Bytes,
        qos: u8,
    ) -> Result<(), Refusal> {
        let Some(checked) = self.check(&device, &topic, &payload)? else {
            return Ok(());
        };
        let permit = self.wait_for_room(&checked).await?;
        match batcher.submit(&self.admission, checked.accepted(permit), qos > 0) {
            Some(durable) => durable.await.unwrap_or(Err(Refusal::StorageUnavailable)),
            None => Ok(()),
        }
    }

    /// Counts and logs the outcome of one PUBLISH received at `started`.
    pub fn settle(
        &self,
        device: &Device,
        topic: &str,
        qos: u8,
        started: Instant,
        outcome: &Result<(), Refusal>,
    ) {
        match (
            outcome,
            self.metrics.mqtt.publishes_accepted.get(usize::from(qos)),
        ) {
            (Ok(()), Some(accepted)) => {
                accepted.inc();
            }
            _ => {
                let label = PublishLabels {
                    qos,
                    outcome: match outcome {
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
        match outcome {
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

    /// Waits for the node's in-flight budget and the workspace's rate, together at most
    /// [`ROOM_WAIT_MAX`].
    async fn wait_for_room(&self, checked: &Checked<'_>) -> Result<OwnedSemaphorePermit, Refusal> {
        let since = Instant::now();
        let permit = tokio::select! {
            permit = self.inflight.clone().acquire_many_owned(checked.bytes) => {
                permit.map_err(|_| Refusal::StorageUnavailable)?
            }
            () = tokio::time::sleep(ROOM_WAIT_MAX) => return Err(Refusal::Overloaded),
        };
        while let Err(refusal) = admit::take_rate(&checked.workspace, checked.events.ends.len()) {
            if since.elapsed() > ROOM_WAIT_MAX {
                return Err(refusal);
            }
            tokio::time::sleep(ROOM_POLL).await;
        }
        Ok(permit)
    }
}

/// How far [`MqttIngest::store_now`] got.
pub enum Stored {
    /// Refused, carried no event, or queued at QoS 0.
    Done(Result<(), Refusal>),
    /// Queued; told when durable.
    Durable(Durable),
    /// Out of room: nothing done, [`MqttIngest::store_waiting`] waits for it.
    Later,
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
