//! Live MQTT sessions: one per (workspace, client id) across all worker threads, and the watch
//! that closes a session when it is taken over or no longer allowed.
//!
//! Sessions live on ntex worker threads (their sinks are not `Send`); what crosses threads is
//! a `Notify` per session (takeover) and the configuration's change signal. Each session runs
//! one small task that waits on both, on the token's expiry, and on the session's end.

use std::collections::HashMap;
use std::num::NonZeroU16;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::oneshot;
use tokio::sync::Notify;
use tracing::info;
use uuid::Uuid;

use crate::access::Refusal as AccessRefusal;
use crate::admit::{now_us, Refusal};
use crate::metrics::Reason;

use super::batcher::Batcher;
use super::conformance::Conformance;
use super::ingest::MqttIngest;
use super::lane::Lane;
use super::types::{CloseReason, Device};

type Key = (Uuid, String);

/// The registry of live sessions, for takeover.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<Key, (u64, Arc<Notify>)>>,
    next_id: AtomicU64,
}

impl Sessions {
    /// Registers a new session for `key` and tells the one it replaces, if any, to close.
    fn register(&self, key: Key) -> (u64, Arc<Notify>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let kick = Arc::new(Notify::new());
        let previous = self
            .live
            .lock()
            .ok()
            .and_then(|mut live| live.insert(key, (id, kick.clone())));
        if let Some((_, old)) = previous {
            // A permit is kept if the old session's watch has not started waiting yet.
            old.notify_one();
        }
        (id, kick)
    }

    fn unregister(&self, key: &Key, id: u64) {
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

/// Removes the session from the registry and ends its watch when the connection is gone.
struct Registration {
    sessions: Arc<Sessions>,
    ingest: Arc<MqttIngest>,
    key: Key,
    id: u64,
    _alive: oneshot::Sender<()>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.sessions.unregister(&self.key, self.id);
        self.ingest.metrics.mqtt.sessions.dec();
    }
}

/// What a session's watch does to close its connection (v3 and v5 sinks differ).
pub trait Closer: 'static {
    fn close(&self, reason: CloseReason);
}

impl DeviceSession {
    /// Registers the session (closing any older one with the same client id) and starts its
    /// watch on the current ntex worker, and opens the connection's `lane` (see [`Lane`]);
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
        let (id, kick) = sessions.register(key.clone());
        ingest.metrics.mqtt.sessions.inc();
        let (alive, gone) = oneshot::channel();
        let closer = LaneCloser {
            lane: lane.clone(),
            closer,
        };
        ntex_rt::spawn(watch(ingest.clone(), device.clone(), kick, gone, closer)).detach();
        let device = Rc::new(device);
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
                key,
                id,
                _alive: alive,
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

/// Waits until the session must close (takeover, configuration change, expiry, the node's
/// shutdown) or is gone.
async fn watch(
    ingest: Arc<MqttIngest>,
    device: Device,
    kick: Arc<Notify>,
    mut gone: oneshot::Receiver<()>,
    closer: impl Closer,
) {
    let mut changes = ingest.admission.access.subscribe();
    let mut shutdown = ingest.shutdown.clone();
    let reason = loop {
        // Sleeping until the token expires; a day at most, then look again.
        let expiry = device
            .expires_at_us
            .map(|at| Duration::from_micros(at.saturating_sub(now_us()).max(0) as u64))
            .unwrap_or(Duration::from_secs(86_400))
            .min(Duration::from_secs(86_400));
        tokio::select! {
            biased;
            _ = &mut gone => return,
            () = kick.notified() => break CloseReason::TakenOver,
            _ = shutdown.requested() => break CloseReason::ShuttingDown,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = ntex_util::time::sleep(expiry) => {}
        }
        match ingest.still_allowed(&device) {
            Ok(()) => {}
            Err(refusal) => {
                log_refusal(&device, &refusal);
                break CloseReason::NotAuthorized;
            }
        }
    };
    ingest
        .metrics
        .mqtt
        .sessions_closed_total
        .get_or_create(&Reason {
            reason: reason.slug(),
        })
        .inc();
    closer.close(reason);
}

fn log_refusal(device: &Device, refusal: &AccessRefusal) {
    info!(
        workspace = %device.workspace,
        device = %device.device_id,
        reason = ?refusal,
        "closing an MQTT session that is no longer allowed"
    );
}
