//! Live MQTT sessions: one per (workspace, client id) across all worker threads, each watched by
//! its worker thread's [`WorkerWatch`], which closes it when it is taken over or no longer
//! allowed.
//!
//! Sessions live on the MQTT worker threads (a connection is not `Send`); what crosses threads
//! is the registry below and the takeover, sent to the old session's worker through its
//! [`Inbox`].

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::batcher::Batcher;
use super::ingest::MqttIngest;
use super::types::Device;
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

/// The session of one MQTT connection: who it speaks for and its queue of WAL records, while
/// it is registered and watched.
pub struct DeviceSession {
    pub device: Rc<Device>,
    /// The connection's queue of WAL records.
    pub batcher: Rc<Batcher>,
    _registration: Registration,
}

/// Removes the session from the registry and from its worker's watch when the connection is
/// gone.
struct Registration {
    sessions: Arc<Sessions>,
    watch: Rc<WorkerWatch>,
    ingest: Arc<MqttIngest>,
    /// Its key in the registry is its workspace and client id.
    device: Rc<Device>,
    id: SessionId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let key = (self.device.workspace_id, self.device.device_id.clone());
        self.sessions.unregister(&key, self.id);
        self.watch.end(self.id);
        self.ingest.metrics.mqtt.sessions.dec();
    }
}

impl DeviceSession {
    /// Registers the session (closing any older one with the same client id) and has the
    /// current worker thread's watch watch it, closing it through `closer`.
    pub fn start(
        ingest: &Arc<MqttIngest>,
        sessions: &Arc<Sessions>,
        device: Device,
        closer: Rc<dyn Closer>,
    ) -> DeviceSession {
        let key = (device.workspace_id, device.device_id.clone());
        let watch = WorkerWatch::here(ingest);
        let id = sessions.register(key, watch.inbox());
        ingest.metrics.mqtt.sessions.inc();
        let device = Rc::new(device);
        watch.add(id, device.clone(), closer);
        DeviceSession {
            device: device.clone(),
            batcher: Rc::new(Batcher::default()),
            _registration: Registration {
                sessions: sessions.clone(),
                ingest: ingest.clone(),
                watch,
                device,
                id,
            },
        }
    }
}
