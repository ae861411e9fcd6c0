//! The publishes of one connection waiting for their outcome, answered in the order they came
//! (3.1.1 §4.6: PUBACKs and PUBRECs in the order of their PUBLISHes).
//!
//! Only the oldest is polled: a connection's WAL records are appended one after the other, so
//! a later publish is never durable before an earlier one, and the oldest is what the answers
//! wait for anyway. Nothing is allocated per publish beyond its durability signal, and an
//! idle connection holds no queue.

use std::collections::VecDeque;
use std::future::Future;
use std::num::NonZeroU16;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use ntex_bytes::ByteString;

use crate::admit::Refusal;

use super::batcher::Durable;
use super::protocol::PublishAnswer;

/// What a publish's outcome waits for.
pub enum Wait {
    /// Known already (answered in order behind earlier ones).
    Ready(Result<(), Refusal>),
    /// The record holding it becoming durable.
    Durable(Durable),
    /// Room at the node or the workspace's rate, then durability (rare: overload).
    Later(Pin<Box<dyn Future<Output = Result<(), Refusal>>>>),
}

/// What is kept of a publish until it is answered (and counted).
pub struct Received {
    /// The answer it gets and its packet id; `None` at QoS 0.
    pub answer: Option<(PublishAnswer, NonZeroU16)>,
    pub qos: u8,
    pub topic: ByteString,
    pub started: Instant,
}

/// One publish waiting for its outcome.
pub struct Waiting {
    pub received: Received,
    pub wait: Wait,
}

/// A publish whose outcome is known.
pub struct Settled {
    pub received: Received,
    pub outcome: Result<(), Refusal>,
}

/// A connection's publishes waiting for their outcome.
#[derive(Default)]
pub struct InFlight {
    queue: VecDeque<Waiting>,
    /// Of them, those that get an answer (QoS 1 and 2): bounded by `mqtt.receive_max`.
    answered: usize,
    /// Of them, those the connection must not read past: QoS 0 publishes that wait (the
    /// connection's queue or the node is full) and every wait for room.
    stalling: usize,
}

impl InFlight {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// QoS 1 and 2 publishes not answered yet.
    pub fn unanswered(&self) -> usize {
        self.answered
    }

    /// Whether a publish waits for room, or a QoS 0 one for its record: the connection reads
    /// nothing more until it is through.
    pub fn stalled(&self) -> bool {
        self.stalling > 0
    }

    pub fn push(&mut self, waiting: Waiting) {
        self.answered += usize::from(waiting.received.answer.is_some());
        self.stalling += usize::from(stalls(&waiting));
        self.queue.push_back(waiting);
    }

    /// The oldest publish's outcome, once known.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Settled> {
        let Some(front) = self.queue.front_mut() else {
            return Poll::Pending;
        };
        let outcome = match &mut front.wait {
            Wait::Ready(outcome) => outcome.clone(),
            Wait::Durable(durable) => match Pin::new(durable).poll(cx) {
                Poll::Ready(told) => told.unwrap_or(Err(Refusal::StorageUnavailable)),
                Poll::Pending => return Poll::Pending,
            },
            Wait::Later(later) => match later.as_mut().poll(cx) {
                Poll::Ready(outcome) => outcome,
                Poll::Pending => return Poll::Pending,
            },
        };
        let Some(done) = self.queue.pop_front() else {
            return Poll::Pending;
        };
        self.answered -= usize::from(done.received.answer.is_some());
        self.stalling -= usize::from(stalls(&done));
        if self.queue.is_empty() && self.queue.capacity() > 64 {
            // An idle connection holds no queue left from a burst.
            self.queue = VecDeque::new();
        }
        Poll::Ready(Settled {
            received: done.received,
            outcome,
        })
    }

    /// The oldest publish's outcome if it is known now.
    pub fn next_now(&mut self) -> Option<Settled> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.poll_next(&mut cx) {
            Poll::Ready(settled) => Some(settled),
            Poll::Pending => None,
        }
    }
}

/// Whether the connection must not read past `waiting`: a wait for room, or a QoS 0 publish
/// waiting for its record (one whose outcome is known is never queued).
fn stalls(waiting: &Waiting) -> bool {
    matches!(waiting.wait, Wait::Later(_)) || waiting.received.answer.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::oneshot;

    fn waiting(answer: Option<u16>, wait: Wait) -> Waiting {
        Waiting {
            received: Received {
                answer: answer.map(|id| (PublishAnswer::PubAck, NonZeroU16::new(id).expect("id"))),
                qos: u8::from(answer.is_some()),
                topic: ByteString::from_static("ingest/t"),
                started: Instant::now(),
            },
            wait,
        }
    }

    #[test]
    fn outcomes_come_out_in_the_order_the_publishes_came() {
        let mut inflight = InFlight::default();
        let (first_tx, first_rx) = oneshot::channel();
        let (second_tx, second_rx) = oneshot::channel();
        inflight.push(waiting(Some(1), Wait::Durable(first_rx)));
        inflight.push(waiting(Some(2), Wait::Durable(second_rx)));
        inflight.push(waiting(Some(3), Wait::Ready(Err(Refusal::TopicInvalid))));
        assert_eq!(inflight.unanswered(), 3);
        assert!(!inflight.stalled());
        second_tx.send(Ok(())).expect("send");
        assert!(
            inflight.next_now().is_none(),
            "the second waits for the first"
        );
        first_tx.send(Ok(())).expect("send");
        let ids: Vec<u16> = std::iter::from_fn(|| inflight.next_now())
            .map(|s| s.received.answer.map_or(0, |(_, id)| id.get()))
            .collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(inflight.unanswered(), 0);
        assert!(inflight.is_empty());
    }

    #[test]
    fn a_qos0_publish_waiting_for_its_record_stalls_reading() {
        let mut inflight = InFlight::default();
        let (tx, rx) = oneshot::channel();
        inflight.push(waiting(None, Wait::Durable(rx)));
        assert!(inflight.stalled());
        assert_eq!(inflight.unanswered(), 0);
        drop(tx);
        let settled = inflight.next_now().expect("settled");
        assert!(
            settled.outcome.is_err(),
            "a record never appended is not stored"
        );
        assert!(!inflight.stalled());
    }
}
