//! Live MQTT sessions: one per (workspace, client id) across all worker threads, each watched by
//! its worker thread's [`WorkerWatch`], which closes it when it is taken over or no longer
//! allowed.
//!
//! Sessions live on ntex worker threads (their sinks are not `Send`); what crosses threads is
//! the registry below and the takeover, sent to the old session's worker through its [`Inbox`].

use std::collections::HashMap;
use std::num::NonZeroU16;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use crate::admit::Refusal;

use super::batcher::Batcher;
use super::conformance::Conformance;
use super::ingest::MqttIngest;
use super::lane::Lane;
use super::types::{CloseReason, Device};
use super::watch::{Closer, Inbox, SessionId, WorkerWatch};

type Key = (Uuid, String);

/// The registry of live sessions, for takeover.
#[derive(Default)]
pub struct Sessions {
    /// Each live session's id and its worker's inbox.
    live: Mutex<HashMap<Key, (SessionId, Arc<Inbox>)>>,
    next_id: AtomicU64,
}

impl Sessions {
    /// Registers a new session for `key`, watched by the worker with `inbox`, and tells the
    /// one it replaces, if any, to close.
    fn register(&self, key: Key, inbox: Arc<Inbox>) -> SessionId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let previous = self
            .live
            .lock()
            .ok()
            .and_then(|mut live| live.insert(key, (id, inbox)));
        if let Some((old, inbox)) = previous {
            inbox.take_over(old);
        }
        id
    }

    fn unregister(&self, key: &Key, id: SessionId) {
        if let Ok(mut live) = self.live.lock() {
            if live.get(key).is_some_and(|(current, _)| *current == id) {
                live.remove(key);
            }
        }
    }
}

/// The application state of one MQTT connection.
pub struct DeviceSession {
    pub device: Rc<Device>,
    /// The connection's queue of WAL records.
    batcher: Rc<Batcher>,
    /// The connection's QoS 0 lane, open while the session is.
    lane: Rc<Lane>,
    /// Tells the QoS of a PUBLISH handed to ntex-mqtt at another (see `conformance`).
    conformance: Rc<Conformance>,
    ingest: Arc<MqttIngest>,
    _registration: Registration,
}

/// Removes the session from the registry and from its worker's watch when the connection is
/// gone.
struct Registration {
    sessions: Arc<Sessions>,
    watch: Rc<WorkerWatch>,
    ingest: Arc<MqttIngest>,
    key: Key,
    id: SessionId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.sessions.unregister(&self.key, self.id);
        self.watch.end(self.id);
        self.ingest.metrics.mqtt.sessions.dec();
    }
}

impl DeviceSession {
    /// Registers the session (closing any older one with the same client id), has the current
    /// ntex worker's watch watch it, and opens the connection's `lane` (see [`Lane`]);
    /// `v5` tells it the packet format.
    pub fn start(
        ingest: &Arc<MqttIngest>,
        sessions: &Arc<Sessions>,
        device: Device,
        closer: impl Closer,
        lane: Rc<Lane>,
        conformance: Rc<Conformance>,
        v5: bool,
    ) -> DeviceSession {
        let key = (device.workspace_id, device.device_id.clone());
        let watch = WorkerWatch::here(ingest);
        let id = sessions.register(key.clone(), watch.inbox());
        ingest.metrics.mqtt.sessions.inc();
        let device = Rc::new(device);
        let closer = LaneCloser {
            lane: lane.clone(),
            closer,
        };
        watch.add(id, device.clone(), Box::new(closer));
        let batcher = Rc::new(Batcher::default());
        lane.open(ingest.clone(), device.clone(), batcher.clone(), v5);
        DeviceSession {
            device,
            batcher,
            lane,
            conformance,
            ingest: ingest.clone(),
            _registration: Registration {
                sessions: sessions.clone(),
                ingest: ingest.clone(),
                watch,
                key,
                id,
            },
        }
    }

    /// The QoS a PUBLISH that ntex-mqtt decoded as `qos` was sent with.
    pub fn qos_sent(&self, qos: ntex_mqtt::QoS, packet_id: Option<NonZeroU16>) -> u8 {
        self.conformance.qos_sent(qos as u8, packet_id)
    }

    /// Stores one PUBLISH that ntex-mqtt decoded (see [`MqttIngest::publish`]). A QoS 0
    /// publish handed to the codec is then behind the lane no more, whatever its outcome:
    /// the lane learns it here, from the handler's return, and may take the next ones.
    pub async fn publish(&self, topic: &str, payload: &[u8], qos: u8) -> Result<(), Refusal> {
        let outcome = self
            .ingest
            .publish(&self.device, &self.batcher, topic, payload, qos)
            .await;
        if qos == 0 {
            self.lane.caught_up_one();
        }
        outcome
    }
}

/// Closes the lane along with the session, so that nothing sent after is stored.
struct LaneCloser<C> {
    lane: Rc<Lane>,
    closer: C,
}

impl<C: Closer> Closer for LaneCloser<C> {
    fn close(&self, reason: CloseReason) {
        self.lane.close();
        self.closer.close(reason);
    }
}
