//! One WAL record for many PUBLISHes: a connection's messages that arrive while its previous
//! append is in flight are gathered into the next record.
//!
//! A connection has at most one WAL append in flight. Messages for the same source, topic
//! and device join the newest record still waiting; each record is one [`IngestBatch`], so
//! its events share an envelope (the first message's receive time, the topic) and get
//! consecutive event ids. When the append is durable, every QoS 1/2 publish in the record is
//! acknowledged. This takes the per-message cost out of the WAL writer and the shipper, which
//! otherwise handle one tiny record per MQTT message.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use futures::channel::oneshot;
use sluice_storage::event::{Protocol, Shaping};
use tokio::sync::OwnedSemaphorePermit;
use tracing::warn;
use uuid::Uuid;

use crate::admit::{Admission, Refusal, Target};

/// Payload bytes per record at most.
const RECORD_BYTES_MAX: usize = 1 << 20;
/// Events per record at most.
const RECORD_EVENTS_MAX: usize = 16_384;
/// Bytes waiting per connection before a QoS 0 publish waits for its record too.
const QUEUED_BYTES_MAX: usize = 4 << 20;

/// Events of one accepted PUBLISH, checked and ready to store. The names are borrowed: most
/// messages join a record that already owns them, so they are copied only for a new record.
pub struct Accepted<'a> {
    pub workspace_id: Uuid,
    pub source: &'a str,
    pub topic: &'a str,
    pub device_id: Cow<'a, str>,
    /// What the source's schema and tag rules made of its events.
    pub shaping: Option<Box<Shaping>>,
    pub received_at_us: i64,
    pub payloads: Vec<u8>,
    pub ends: Vec<u32>,
    /// Its share of `mqtt.inflight_bytes_max`, given back once the record is appended.
    pub permit: OwnedSemaphorePermit,
}

/// Told when the record holding a publish is durable, or why it is not.
pub type Durable = oneshot::Receiver<Result<(), Refusal>>;

struct Record {
    workspace_id: Uuid,
    source: String,
    topic: String,
    device_id: String,
    shaping: Option<Box<Shaping>>,
    received_at_us: i64,
    payloads: Vec<u8>,
    ends: Vec<u32>,
    /// The memory shares of its publishes, given back once it is appended.
    permits: Vec<OwnedSemaphorePermit>,
    waiters: Vec<oneshot::Sender<Result<(), Refusal>>>,
}

impl Record {
    fn new(first: Accepted<'_>) -> Record {
        Record {
            workspace_id: first.workspace_id,
            source: first.source.to_owned(),
            topic: first.topic.to_owned(),
            device_id: first.device_id.into_owned(),
            shaping: first.shaping,
            received_at_us: first.received_at_us,
            payloads: first.payloads,
            ends: first.ends,
            permits: vec![first.permit],
            waiters: Vec::new(),
        }
    }

    fn takes(&self, next: &Accepted<'_>) -> bool {
        self.workspace_id == next.workspace_id
            && self.source == next.source
            && self.topic == next.topic
            && self.device_id == next.device_id
            && shaping_joins(self.shaping.as_deref(), next.shaping.as_deref())
            && self.payloads.len() + next.payloads.len() <= RECORD_BYTES_MAX
            && self.ends.len() + next.ends.len() <= RECORD_EVENTS_MAX
    }

    fn absorb(&mut self, next: Accepted<'_>) {
        if let (Some(mine), Some(theirs)) = (self.shaping.as_deref_mut(), next.shaping) {
            // Event indexes in the record continue from this one's.
            let offset = self.ends.len() as u32;
            mine.quarantined
                .extend(theirs.quarantined.into_iter().map(|mut q| {
                    q.index += offset;
                    q
                }));
            if let (Some(events), Some(more)) = (&mut mine.events, theirs.events) {
                events.extend(more);
            }
        }
        let base = self.payloads.len() as u32;
        self.payloads.extend_from_slice(&next.payloads);
        self.ends.extend(next.ends.iter().map(|end| base + end));
        self.permits.push(next.permit);
    }
}

/// Whether events shaped as `next` may join a record shaped as `open`: one record has one
/// schema version, payload setting and batch tags (the configuration may change between two
/// publishes of a connection).
fn shaping_joins(open: Option<&Shaping>, next: Option<&Shaping>) -> bool {
    match (open, next) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.schema_version == b.schema_version
                && a.keep_payload == b.keep_payload
                && a.tags == b.tags
                && a.events.is_some() == b.events.is_some()
        }
        _ => false,
    }
}

#[derive(Default)]
struct State {
    /// Records not yet handed to the WAL; the last one still takes messages.
    waiting: VecDeque<Record>,
    waiting_bytes: usize,
    /// A flush task is running for this connection.
    flushing: bool,
}

/// The record queue of one connection.
#[derive(Default)]
pub struct Batcher {
    state: RefCell<State>,
}

impl Batcher {
    /// Queues `accepted`. With `wait` (QoS 1/2), or when the connection has too much waiting,
    /// returns what tells when it is durable.
    pub fn submit(
        self: &Rc<Self>,
        admission: &Arc<Admission>,
        accepted: Accepted<'_>,
        wait: bool,
    ) -> Option<Durable> {
        let mut state = self.state.borrow_mut();
        state.waiting_bytes += accepted.payloads.len();
        let wait = wait || state.waiting_bytes > QUEUED_BYTES_MAX;
        let (tx, rx) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        match state.waiting.back_mut() {
            Some(open) if open.takes(&accepted) => {
                open.absorb(accepted);
                open.waiters.extend(tx);
            }
            _ => {
                let mut record = Record::new(accepted);
                record.waiters.extend(tx);
                state.waiting.push_back(record);
            }
        }
        if !state.flushing {
            state.flushing = true;
            drop(tokio::task::spawn_local(flush(
                self.clone(),
                admission.clone(),
            )));
        }
        rx
    }
}

/// Appends the connection's records one after the other until none is waiting.
async fn flush(batcher: Rc<Batcher>, admission: Arc<Admission>) {
    loop {
        let mut record = {
            let mut state = batcher.state.borrow_mut();
            match state.waiting.pop_front() {
                Some(record) => {
                    state.waiting_bytes = state.waiting_bytes.saturating_sub(record.payloads.len());
                    record
                }
                None => {
                    state.flushing = false;
                    return;
                }
            }
        };
        let waiters = std::mem::take(&mut record.waiters);
        // The record's memory shares go back when `append` is done with it.
        let result = append(&admission, record).await;
        if let Err(err) = &result {
            warn!(error = %err, "MQTT messages could not be stored");
        }
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

/// Appends one record, waiting at the disk quota for the shipper to free room: the
/// connection's publishes wait meanwhile, which is MQTT's flow control.
async fn append(admission: &Admission, record: Record) -> Result<(), Refusal> {
    let _permits = record.permits;
    let batch = Target {
        workspace_id: record.workspace_id,
        source: record.source.into(),
        device_id: Some(record.device_id.into()),
        protocol: Protocol::Mqtt,
        topic: Some(record.topic.into()),
        received_at_us: record.received_at_us,
        shaping: record.shaping,
    }
    .batch(record.payloads, record.ends);
    let encoded = batch.encode_compact();
    admission
        .wait_for_room(encoded.len(), tokio::time::sleep)
        .await?;
    // No WAL lane here (unlike the HTTP threads): a connection's publishes already share one
    // record, and a lane per MQTT worker measured the same QoS 1 rate and CPU per message
    // (docs/bench-log/http.md, "One wake-up per group commit").
    admission.append(encoded).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted<'a>(topic: &'a str, payload: &str) -> Accepted<'a> {
        let permits = Arc::new(tokio::sync::Semaphore::new(1 << 24));
        Accepted {
            permit: permits
                .try_acquire_many_owned(payload.len().max(1) as u32)
                .expect("permits"),
            workspace_id: Uuid::nil(),
            source: "telemetry",
            topic,
            device_id: "d".into(),
            shaping: None,
            received_at_us: 1,
            payloads: payload.as_bytes().to_vec(),
            ends: vec![payload.len() as u32],
        }
    }

    #[test]
    fn messages_of_one_topic_share_a_record_with_their_own_spans() {
        let mut record = Record::new(accepted("ingest/telemetry", r#"{"a":1}"#));
        let next = accepted("ingest/telemetry", r#"{"b":22}"#);
        assert!(record.takes(&next));
        record.absorb(next);
        assert_eq!(
            record.permits.len(),
            2,
            "both publishes' memory shares are kept"
        );
        assert_eq!(record.payloads, br#"{"a":1}{"b":22}"#);
        assert_eq!(record.ends, vec![7, 15]);
        assert!(!record.takes(&accepted("ingest/telemetry/other", "{}")));
        let mut big = accepted("ingest/telemetry", "{}");
        big.payloads = vec![b' '; RECORD_BYTES_MAX];
        assert!(!record.takes(&big));
    }
}
