//! Acknowledgements delivered to a thread in one hand-off per group commit.
//!
//! An append waits for the writer thread's sync. Answered one by one, each answer wakes its
//! waiting task from the writer thread: a cross-thread wake-up per append, which on a tokio
//! runtime is a write to its eventfd. On single-event HTTP that was 13 % of the node's CPU
//! samples at ~40 appends per sync (docs/bench-log/http.md, "Where a single event's
//! microseconds go"). A [`Lane`] belongs to one runtime thread: the writer puts the answers of
//! the lane's appends in the lane's box and wakes the thread once per group; the lane's
//! dispatcher task, on that thread, hands each answer to its waiting task with a local wake-up.
//!
//! Nothing about durability changes: an answer is still given only after the group's sync, and
//! an append whose answer can no longer come (the writer stopped) gets [`WalError::Closed`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, Notify};

use super::{Lsn, WalError};

/// One append's answer.
type Answer = Result<Lsn, WalError>;

/// What the writer thread and the lane's thread share: answers waiting to be handed on.
#[derive(Default)]
pub(super) struct LaneBox {
    answers: Mutex<Vec<(u64, Answer)>>,
    /// Wakes the dispatcher; holds a permit when nobody waits, so an answer put in while the
    /// dispatcher is busy is not missed.
    ready: Notify,
}

impl LaneBox {
    fn put(&self, ticket: u64, answer: Answer) {
        match self.answers.lock() {
            Ok(mut answers) => answers.push((ticket, answer)),
            // A panic while holding the lock cannot leave the Vec torn; keep answering.
            Err(poisoned) => poisoned.into_inner().push((ticket, answer)),
        }
    }

    /// Wakes the lane's thread (once per group, by the writer).
    pub(super) fn wake(&self) {
        self.ready.notify_one();
    }

    fn take(&self) -> Vec<(u64, Answer)> {
        match self.answers.lock() {
            Ok(mut answers) => std::mem::take(&mut *answers),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

/// Where the writer sends one append's answer: the lane's box, under the append's ticket.
pub(super) struct LaneTicket {
    pub(super) lane: Arc<LaneBox>,
    ticket: u64,
    answered: bool,
}

impl LaneTicket {
    /// Puts the answer in the lane's box; the writer wakes the lane after the group.
    pub(super) fn answer(mut self, answer: Answer) {
        self.answered = true;
        self.lane.put(self.ticket, answer);
    }
}

impl Drop for LaneTicket {
    /// An append dropped unanswered (the writer stopped) is answered "closed", so its task
    /// does not wait forever.
    fn drop(&mut self) {
        if !self.answered {
            self.lane.put(self.ticket, Err(WalError::Closed));
            self.lane.wake();
        }
    }
}

/// The tasks of this thread waiting for an answer, by ticket.
#[derive(Default)]
struct Waiting {
    next: u64,
    tasks: HashMap<u64, oneshot::Sender<Answer>>,
}

/// One thread's lane; not `Send`: its appends and its dispatcher run on the thread that made
/// it ([`crate::wal::Wal::lane`]).
pub struct Lane {
    pub(super) shared: Arc<LaneBox>,
    waiting: Rc<RefCell<Waiting>>,
}

impl Lane {
    /// A lane and its dispatcher, to be spawned on the same thread (`spawn_local`); it runs
    /// until that thread's runtime stops.
    pub(super) fn new() -> (Lane, impl Future<Output = ()>) {
        let shared = Arc::new(LaneBox::default());
        let waiting = Rc::new(RefCell::new(Waiting::default()));
        let dispatcher = dispatch(shared.clone(), waiting.clone());
        (Lane { shared, waiting }, dispatcher)
    }

    /// A ticket for the next append and the receiver of its answer.
    pub(super) fn ticket(&self) -> (LaneTicket, oneshot::Receiver<Answer>) {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.waiting.borrow_mut();
        let ticket = waiting.next;
        waiting.next = waiting.next.wrapping_add(1);
        waiting.tasks.insert(ticket, tx);
        (
            LaneTicket {
                lane: self.shared.clone(),
                ticket,
                answered: false,
            },
            rx,
        )
    }
}

/// Hands each answer put in the box to its waiting task (a wake-up on this thread). A task
/// that stopped waiting (its request was dropped) just has its entry removed.
async fn dispatch(shared: Arc<LaneBox>, waiting: Rc<RefCell<Waiting>>) {
    loop {
        shared.ready.notified().await;
        let answers = shared.take();
        let mut waiting = waiting.borrow_mut();
        for (ticket, answer) in answers {
            if let Some(task) = waiting.tasks.remove(&ticket) {
                let _ = task.send(answer);
            }
        }
    }
}
