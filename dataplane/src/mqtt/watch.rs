//! The watch of one worker thread's sessions: it closes a session when another connection takes
//! its client id over, when its token or workspace no longer allows it (configuration change,
//! the token's expiry), or when the node shuts down.
//!
//! One task per MQTT worker thread watches all of that thread's sessions. (It was one task per
//! session: ~700 bytes and a channel for every idle connection, and on a configuration change
//! every session's task woke at once.) A session is an entry in the worker's table, added when
//! it starts and removed when it ends; a takeover from any thread reaches the worker through
//! its [`Inbox`].

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::info;

use crate::access::{ConfigView, Refusal as AccessRefusal};
use crate::admit::now_us;
use crate::metrics::Reason;

use super::ingest::MqttIngest;
use super::types::{CloseReason, Device};

/// What the watch does to close a session's connection (v3 and v5 sinks differ).
pub trait Closer: 'static {
    fn close(&self, reason: CloseReason);
}

/// A session's id, unique in the node.
pub type SessionId = u64;

/// Where other threads leave work for a worker's watch: sessions taken over. The watch drains
/// it each time it is woken; a wake-up while it is busy is kept (`Notify` stores one permit).
#[derive(Default)]
pub struct Inbox {
    taken_over: Mutex<Vec<SessionId>>,
    wake: Notify,
}

impl Inbox {
    /// Asks the worker to close session `id` as taken over (a no-op if it has ended).
    pub fn take_over(&self, id: SessionId) {
        if let Ok(mut ids) = self.taken_over.lock() {
            ids.push(id);
        }
        self.wake.notify_one();
    }

    fn drain(&self) -> Vec<SessionId> {
        self.taken_over
            .lock()
            .map(|mut ids| std::mem::take(&mut *ids))
            .unwrap_or_default()
    }
}

struct Watched {
    device: Rc<Device>,
    closer: Rc<dyn Closer>,
}

/// The sessions of one workspace (by the slug they connected with).
struct Workspace {
    ids: HashSet<SessionId>,
    /// The oldest configuration generation any of them was last found allowed in.
    checked: u64,
}

#[derive(Default)]
struct Table {
    sessions: HashMap<SessionId, Watched>,
    /// The same sessions by workspace, so that a configuration change re-checks only the
    /// sessions of the workspaces it touched.
    workspaces: HashMap<String, Workspace>,
    /// (expiry in µs since the epoch, session) of the sessions whose token expires.
    expiries: BTreeSet<(i64, SessionId)>,
    /// Shutdown has been asked for and the watch has ended: a session that starts now is
    /// closed at once.
    shut: bool,
}

impl Table {
    /// Watches session `id`; true when its expiry comes before every other (the timer must be
    /// set again).
    fn insert(&mut self, id: SessionId, device: Rc<Device>, closer: Rc<dyn Closer>) -> bool {
        let mut sooner = false;
        if let Some(at) = device.expires_at_us {
            sooner = self.expiries.first().is_none_or(|(first, _)| at < *first);
            self.expiries.insert((at, id));
        }
        let checked = device.checked_generation;
        let workspace = match self.workspaces.get_mut(&device.workspace) {
            Some(workspace) => workspace,
            None => self
                .workspaces
                .entry(device.workspace.clone())
                .or_insert(Workspace {
                    ids: HashSet::new(),
                    checked,
                }),
        };
        workspace.ids.insert(id);
        workspace.checked = workspace.checked.min(checked);
        self.sessions.insert(id, Watched { device, closer });
        sooner
    }

    /// After a configuration change to `generation`: the sessions that `refused` says must
    /// close, asked only of the workspaces whose entry (`workspace_generation`) is newer than
    /// the generation their sessions were last checked against, or gone. A change to one
    /// workspace so costs a look-up per workspace and a check per session of that workspace
    /// (it was a check per session of the worker: ~1 µs each, 8,000 sessions delayed a
    /// revocation by 4–8 ms). The sessions asked count as checked at `generation`; those to
    /// close are left for the caller to remove.
    fn recheck(
        &mut self,
        generation: u64,
        workspace_generation: impl Fn(&str) -> Option<u64>,
        mut refused: impl FnMut(&Device) -> bool,
    ) -> Vec<SessionId> {
        let mut closing = Vec::new();
        for (slug, workspace) in &mut self.workspaces {
            if workspace_generation(slug).is_some_and(|built| built <= workspace.checked) {
                continue;
            }
            for id in &workspace.ids {
                if self
                    .sessions
                    .get(id)
                    .is_some_and(|watched| refused(&watched.device))
                {
                    closing.push(*id);
                }
            }
            workspace.checked = generation;
        }
        closing
    }

    /// The sessions whose expiry has come by `now` and that `refused` says must close. Every
    /// due expiry leaves the timer's set: a session still allowed (the configuration now says
    /// otherwise) is left to configuration changes, and the timer does not spin on it.
    fn take_due(&mut self, now: i64, mut refused: impl FnMut(&Device) -> bool) -> Vec<SessionId> {
        let mut due = Vec::new();
        while let Some(&(at, id)) = self.expiries.first() {
            if at > now {
                break;
            }
            self.expiries.remove(&(at, id));
            if self
                .sessions
                .get(&id)
                .is_some_and(|watched| refused(&watched.device))
            {
                due.push(id);
            }
        }
        due
    }

    fn remove(&mut self, id: SessionId) -> Option<Watched> {
        let watched = self.sessions.remove(&id)?;
        if let Some(at) = watched.device.expires_at_us {
            self.expiries.remove(&(at, id));
        }
        let slug = &watched.device.workspace;
        if let Some(workspace) = self.workspaces.get_mut(slug) {
            workspace.ids.remove(&id);
            if workspace.ids.is_empty() {
                self.workspaces.remove(slug);
            }
        }
        Some(watched)
    }
}

/// One worker thread's watch.
pub struct WorkerWatch {
    ingest: Arc<MqttIngest>,
    inbox: Arc<Inbox>,
    table: RefCell<Table>,
}

thread_local! {
    static WORKER: RefCell<Option<Rc<WorkerWatch>>> = const { RefCell::new(None) };
}

impl WorkerWatch {
    /// This worker thread's watch, started on first use. A worker thread serves one MQTT
    /// front end, so `ingest` is the same at every call on a thread.
    pub fn here(ingest: &Arc<MqttIngest>) -> Rc<WorkerWatch> {
        WORKER.with(|worker| {
            worker
                .borrow_mut()
                .get_or_insert_with(|| {
                    let watch = Rc::new(WorkerWatch {
                        ingest: ingest.clone(),
                        inbox: Arc::default(),
                        table: RefCell::default(),
                    });
                    drop(tokio::task::spawn_local(run(watch.clone())));
                    watch
                })
                .clone()
        })
    }

    /// Where a takeover of this worker's sessions is sent from any thread.
    pub fn inbox(&self) -> Arc<Inbox> {
        self.inbox.clone()
    }

    /// Watches session `id` until [`WorkerWatch::end`] or the watch closes it.
    pub fn add(self: &Rc<Self>, id: SessionId, device: Rc<Device>, closer: Rc<dyn Closer>) {
        let mut table = self.table.borrow_mut();
        let shut = table.shut;
        // An expiry sooner than the one the watch sleeps until: it must look again.
        let wake = table.insert(id, device, closer);
        drop(table);
        if shut {
            // A session that started during the shutdown, after the watch ended: closed once
            // its CONNACK is out, like those before it.
            let watch = self.clone();
            drop(tokio::task::spawn_local(async move {
                watch.close_ids(CloseReason::ShuttingDown, [id])
            }));
        } else if wake {
            self.inbox.wake.notify_one();
        }
    }

    /// Session `id` has ended (its connection is gone).
    pub fn end(&self, id: SessionId) {
        // Dropped outside the borrow: a closer's drop is the connection's code.
        let ended = self.table.borrow_mut().remove(id);
        drop(ended);
    }

    /// Takes sessions `ids` (those still open) out of the table and closes them with
    /// `reason`.
    fn close_ids(&self, reason: CloseReason, ids: impl IntoIterator<Item = SessionId>) {
        let closing: Vec<Watched> = {
            let mut table = self.table.borrow_mut();
            ids.into_iter().filter_map(|id| table.remove(id)).collect()
        };
        close_all(&self.ingest, reason, closing);
    }

    /// Takes every session out of the table and closes it with `reason` (the node is
    /// shutting down); a session added later finds the table `shut`. Nothing is borrowed
    /// while a closer runs.
    fn shut(&self, reason: CloseReason) {
        let closing: Vec<Watched> = {
            let mut table = self.table.borrow_mut();
            table.shut = true;
            table.expiries.clear();
            table.workspaces.clear();
            table.sessions.drain().map(|(_, watched)| watched).collect()
        };
        close_all(&self.ingest, reason, closing);
    }
}

fn close_all(ingest: &MqttIngest, reason: CloseReason, closing: Vec<Watched>) {
    if closing.is_empty() {
        return;
    }
    ingest
        .metrics
        .mqtt
        .sessions_closed_total
        .get_or_create(&Reason {
            reason: reason.slug(),
        })
        .inc_by(closing.len() as u64);
    for watched in closing {
        watched.closer.close(reason);
    }
}

/// The watch task of one worker thread; it lives as long as the worker's runtime.
async fn run(watch: Rc<WorkerWatch>) {
    let ingest = watch.ingest.clone();
    let mut changes = ingest.admission.access.subscribe();
    let mut changes_open = true;
    let mut shutdown = ingest.shutdown.clone();
    loop {
        // Sleeping until the first token expires; a day at most, then look again.
        let first_expiry = watch.table.borrow().expiries.first().map(|(at, _)| *at);
        let sleep = first_expiry
            .map(|at| Duration::from_micros(at.saturating_sub(now_us()).max(0) as u64))
            .unwrap_or(Duration::from_secs(86_400))
            .min(Duration::from_secs(86_400));
        tokio::select! {
            biased;
            _ = shutdown.requested() => {
                watch.shut(CloseReason::ShuttingDown);
                return;
            }
            () = watch.inbox.wake.notified() => {
                watch.close_ids(CloseReason::TakenOver, watch.inbox.drain());
            }
            changed = changes.changed(), if changes_open => {
                // The configuration's sender is gone only when the node is ending.
                changes_open = changed.is_ok();
                if changes_open {
                    let view = ingest.admission.view();
                    let now = now_us();
                    let closing = watch.table.borrow_mut().recheck(
                        view.generation,
                        |workspace| view.workspace_generation(workspace),
                        |device| refused(&view, device, now),
                    );
                    watch.close_ids(CloseReason::NotAuthorized, closing);
                }
            }
            () = tokio::time::sleep(sleep) => {
                let view = ingest.admission.view();
                let now = now_us();
                let due = watch
                    .table
                    .borrow_mut()
                    .take_due(now, |device| refused(&view, device, now));
                watch.close_ids(CloseReason::NotAuthorized, due);
            }
        }
    }
}

/// Whether `device`'s session is no longer allowed in `view` at `now` (logged when so).
fn refused(view: &ConfigView, device: &Device, now: i64) -> bool {
    match device.still_allowed(view, now) {
        Ok(()) => false,
        Err(refusal) => {
            log_refusal(device, &refusal);
            true
        }
    }
}

fn log_refusal(device: &Device, refusal: &AccessRefusal) {
    info!(
        workspace = %device.workspace,
        device = %device.device_id,
        reason = ?refusal,
        "closing an MQTT session that is no longer allowed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    struct NoClose;

    impl Closer for NoClose {
        fn close(&self, _: CloseReason) {}
    }

    fn device(expires_at_us: Option<i64>) -> Rc<Device> {
        Rc::new(Device {
            expires_at_us,
            ..Device::clone(&device_in("plant", "press-1", 1))
        })
    }

    fn device_in(workspace: &str, device_id: &str, checked_generation: u64) -> Rc<Device> {
        Rc::new(Device {
            workspace: workspace.into(),
            workspace_id: Uuid::nil(),
            token_hash: [0; 32],
            device_id: device_id.into(),
            expires_at_us: None,
            checked_generation,
        })
    }

    #[test]
    fn a_change_rechecks_only_the_sessions_of_workspaces_it_touched() {
        let mut table = Table::default();
        table.insert(1, device_in("plant", "press-1", 1), Rc::new(NoClose));
        table.insert(2, device_in("mill", "saw-1", 1), Rc::new(NoClose));
        // Connected after plant changed at generation 3.
        table.insert(3, device_in("plant", "press-2", 3), Rc::new(NoClose));
        table.insert(4, device_in("gone", "old-1", 1), Rc::new(NoClose));

        // Generation 4 changes plant again and removes "gone"; mill is as it was at 1.
        let generations = HashMap::from([("plant", 4), ("mill", 1)]);
        let mut asked = Vec::new();
        let mut closing = table.recheck(
            4,
            |ws| generations.get(ws).copied(),
            |device| {
                asked.push(device.device_id.clone());
                device.device_id == "press-1" || device.workspace == "gone"
            },
        );
        asked.sort();
        closing.sort();
        assert_eq!(
            asked,
            ["old-1", "press-1", "press-2"],
            "mill's session not asked"
        );
        assert_eq!(closing, [1, 4]);
        for id in closing {
            table.remove(id);
        }
        assert!(
            !table.workspaces.contains_key("gone"),
            "a workspace leaves with its last session"
        );

        // Generation 5 changes mill only: press-2 was found allowed at 4, so it is not asked.
        let generations = HashMap::from([("plant", 4), ("mill", 5)]);
        let mut asked = Vec::new();
        let closing = table.recheck(
            5,
            |ws| generations.get(ws).copied(),
            |device| {
                asked.push(device.device_id.clone());
                false
            },
        );
        assert_eq!(asked, ["saw-1"]);
        assert!(closing.is_empty());
    }

    #[test]
    fn expiries_come_due_in_order_once_each_and_leave_with_their_session() {
        let mut table = Table::default();
        assert!(
            table.insert(1, device(Some(500)), Rc::new(NoClose)),
            "the first expiry"
        );
        assert!(
            !table.insert(2, device(None), Rc::new(NoClose)),
            "no expiry"
        );
        assert!(
            table.insert(3, device(Some(300)), Rc::new(NoClose)),
            "sooner: set again"
        );
        assert!(
            !table.insert(4, device(Some(900)), Rc::new(NoClose)),
            "later"
        );
        assert!(
            !table.insert(5, device(Some(700)), Rc::new(NoClose)),
            "later"
        );

        assert_eq!(table.take_due(100, |_| true), Vec::<SessionId>::new());
        assert_eq!(table.take_due(500, |_| true), vec![3, 1]);
        assert_eq!(
            table.take_due(500, |_| true),
            Vec::<SessionId>::new(),
            "each comes due once"
        );
        // A session past its expiry yet still allowed leaves the timer all the same.
        assert_eq!(table.take_due(800, |_| false), Vec::<SessionId>::new());
        assert!(table.sessions.contains_key(&5), "still watched");
        assert_eq!(table.expiries.len(), 1, "only 4's expiry is left");
        // A session that ends takes its expiry along.
        assert!(table.remove(4).is_some());
        assert!(table.expiries.is_empty());
        assert_eq!(table.take_due(i64::MAX, |_| true), Vec::<SessionId>::new());
        assert_eq!(table.sessions.len(), 4, "1, 2, 3 and 5 stay until they end");
    }
}
