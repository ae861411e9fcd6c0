//! The one admission path every protocol takes, HTTP and MQTT alike:
//!
//! 1. **access**: the token, its workspace and the source, against the configuration in force
//!    ([`Admission::check`]);
//! 2. **parse**: the payload into events, within the per-batch event limit
//!    ([`Admission::parse`]);
//! 3. **shape**: the source's schema on every event and the workspace's tag rules
//!    ([`shape`], [`crate::shape`]); nothing for a source with neither;
//! 4. **rate**: the workspace's event rate ([`take_rate`]);
//! 5. **envelope**: what every event of the batch shares ([`Target::batch`]);
//! 6. **WAL**: the batch appended as one record, waiting for its group's `fdatasync`
//!    ([`Admission::append`]); only then does the front end acknowledge.
//!
//! Each front end reads its own framing first (HTTP headers and body, MQTT packets) and maps a
//! [`Refusal`] to its own answer: problem+json for HTTP (`http::api`), reason codes or a
//! closed connection for MQTT (`mqtt::connection`). A step that shapes data (schemas, tag
//! rules) goes here, once, for both.
//!
//! Nothing here may block: every step is either in memory or the WAL's asynchronous append.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice_storage::event::{Envelope, IngestBatch, Protocol, Shaping};
use sluice_storage::wal::{Lane, Wal, WalError, RECORD_BYTES_MAX};
use uuid::Uuid;

use crate::access::{self, Access, ConfigView, Grant, WorkspaceView};
use crate::parse::{self, BodyFormat, Events, ParseError};
use crate::shape::{EventFailure, Origin, Shaped};

/// How long a protocol with flow control (MQTT) may hold a message while it waits for rate or
/// disk room before refusing it. Waiting holds the client's in-flight window.
pub const ROOM_WAIT_MAX: Duration = Duration::from_secs(10);
/// How often such a wait looks again.
pub const ROOM_POLL: Duration = Duration::from_millis(50);

/// Limits every protocol applies alike.
#[derive(Debug, Clone, Copy)]
pub struct AdmitLimits {
    /// Events one request or message may carry (`http.events_per_request_max`, which MQTT
    /// applies to a PUBLISH carrying a JSON array too).
    pub events_per_batch_max: usize,
}

/// The steps of the path, shared by every front end of a node.
pub struct Admission {
    pub access: Arc<Access>,
    pub wal: Wal,
    pub limits: AdmitLimits,
}

/// Why events are refused, whatever the protocol. Each front end maps every variant to its
/// own answer: a problem type for HTTP, a reason code and outcome label for MQTT.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// The token, workspace, source or device check failed.
    #[error("not allowed: {0:?}")]
    Access(access::Refusal),
    /// The MQTT topic names no source (`ingest/{source}` or `ingest/{source}/...`).
    #[error("the topic names no source: publish to ingest/{{source}} or ingest/{{source}}/...")]
    TopicInvalid,
    /// The payload is over the protocol's size limit.
    #[error("payload of {bytes} bytes is over the limit of {max} bytes")]
    PayloadTooLarge { bytes: usize, max: usize },
    /// The payload is not events (malformed JSON, not objects, too many).
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// Events do not match the source's schema (`on_invalid = reject`): the first
    /// [`crate::shape::FAILURES_LISTED_MAX`] failures, and how many there were.
    #[error(
        "{count} event(s) do not match the source's schema{}",
        first_failure(failures)
    )]
    InvalidEvents {
        failures: Vec<EventFailure>,
        count: usize,
    },
    /// The workspace is over its event rate on this node.
    #[error("the workspace is over its event rate on this node; retry after {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    /// The node's budget for payload bytes in flight is spent.
    #[error("too many payload bytes are in flight on this node; retry shortly")]
    Overloaded,
    /// The WAL is at its disk quota while object storage catches up.
    #[error("this node's write-ahead log is at its disk quota while object storage catches up; retry later")]
    StorageFull,
    /// The batch is larger than one WAL record may be.
    #[error("the batch is larger than {RECORD_BYTES_MAX} bytes; send smaller batches")]
    RecordTooLarge,
    /// The WAL cannot write durably (I/O error, closing).
    #[error("this node cannot write events durably right now; retry on another node or later")]
    StorageUnavailable,
}

fn first_failure(failures: &[EventFailure]) -> String {
    failures.first().map_or_else(String::new, |f| {
        format!(
            "; event {} at {:?}: {}",
            f.index,
            if f.pointer.is_empty() {
                "/"
            } else {
                &f.pointer
            },
            f.message
        )
    })
}

impl From<WalError> for Refusal {
    fn from(err: WalError) -> Self {
        match err {
            WalError::QuotaExceeded { .. } => Refusal::StorageFull,
            WalError::RecordTooLarge(_) => Refusal::RecordTooLarge,
            other => {
                tracing::error!(error = %other, "WAL append failed");
                Refusal::StorageUnavailable
            }
        }
    }
}

/// Where a batch goes and what its events share: the envelope's fields before the batch has
/// an id. Names are borrowed from the request, or moved in when the caller owns them already
/// (an MQTT record), so that none is copied twice.
pub struct Target<'a> {
    pub workspace_id: Uuid,
    pub source: Cow<'a, str>,
    pub device_id: Option<Cow<'a, str>>,
    pub protocol: Protocol,
    pub topic: Option<Cow<'a, str>>,
    pub received_at_us: i64,
    /// What shaping made of the batch ([`shape`]).
    pub shaping: Option<Box<Shaping>>,
}

impl Target<'_> {
    /// The WAL batch of `payloads` (back to back, ending at `ends`), its events numbered from
    /// a fresh UUIDv7.
    pub fn batch(self, payloads: Vec<u8>, ends: Vec<u32>) -> IngestBatch {
        IngestBatch {
            envelope: Envelope {
                first_event_id: Uuid::now_v7(),
                received_at_us: self.received_at_us,
                workspace_id: self.workspace_id,
                source: self.source.into_owned(),
                device_id: self.device_id.map(Cow::into_owned),
                protocol: self.protocol,
                topic: self.topic.map(Cow::into_owned),
            },
            payloads,
            ends,
            shaping: self.shaping,
        }
    }
}

impl Admission {
    /// The configuration in force, for one request or message.
    pub fn view(&self) -> Arc<ConfigView> {
        self.access.current()
    }

    /// Step 1: may the token (known by its SHA-256) send to `workspace`/`source` as `device`
    /// over `protocol`?
    pub fn check<'a>(
        view: &'a ConfigView,
        token_hash: &[u8; 32],
        workspace: &str,
        source: &str,
        device: Option<&'a str>,
        protocol: Protocol,
        now_us: i64,
    ) -> Result<Grant<'a>, Refusal> {
        view.check_hash(token_hash, workspace, source, device, protocol, now_us)
            .map_err(Refusal::Access)
    }

    /// Step 2: the payload's events (one object, an array of objects, or NDJSON).
    pub fn parse(&self, payload: &[u8], format: BodyFormat) -> Result<Events, Refusal> {
        Ok(parse::parse(
            payload,
            format,
            self.limits.events_per_batch_max,
        )?)
    }

    /// Whether the WAL has room for a record of about `bytes` now.
    pub fn check_room(&self, bytes: usize) -> Result<(), Refusal> {
        Ok(self.wal.check_room(bytes)?)
    }

    /// [`check_room`](Self::check_room), waiting up to [`ROOM_WAIT_MAX`] for the shipper to
    /// free room at the quota; `sleep` is the caller's runtime's timer.
    pub async fn wait_for_room<F, Fut>(&self, bytes: usize, sleep: F) -> Result<(), Refusal>
    where
        F: Fn(Duration) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let started = Instant::now();
        loop {
            match self.wal.check_room(bytes) {
                Err(WalError::QuotaExceeded { .. }) if started.elapsed() < ROOM_WAIT_MAX => {
                    sleep(ROOM_POLL).await;
                }
                other => return Ok(other?),
            }
        }
    }

    /// Step 5: appends an encoded batch as one WAL record; returns once it is durable.
    /// Through this thread's WAL lane when it has one ([`Admission::wal_lane_here`]): the
    /// answers of a group reach the thread in one wake-up.
    pub async fn append(&self, record: Vec<u8>) -> Result<(), Refusal> {
        match WAL_LANE.with(|lane| lane.borrow().clone()) {
            Some(lane) => self.wal.append_in(&lane, record).await?,
            None => self.wal.append(record).await?,
        };
        Ok(())
    }
}

thread_local! {
    /// The WAL lane of this thread's appends, on the threads that made one (HTTP threads).
    static WAL_LANE: std::cell::RefCell<Option<std::rc::Rc<Lane>>> =
        const { std::cell::RefCell::new(None) };
}

impl Admission {
    /// Gives this thread a WAL lane for [`append_here`](Self::append_here), unless it has
    /// one: `spawn` starts the lane's dispatcher on this thread's runtime (a local spawn).
    /// When the runtime drops the dispatcher, the thread's lane goes with it, so later appends
    /// take the plain path rather than wait for a dispatcher that is gone.
    pub fn wal_lane_here(&self, spawn: impl FnOnce(LaneDispatcher)) {
        if WAL_LANE.with(|l| l.borrow().is_some()) {
            return;
        }
        let (lane, dispatcher) = self.wal.lane();
        WAL_LANE.with(|l| *l.borrow_mut() = Some(std::rc::Rc::new(lane)));
        spawn(Box::pin(async move {
            let _gone = LaneGone;
            dispatcher.await;
        }));
    }
}

/// A lane's dispatcher, for the thread's runtime to run.
pub type LaneDispatcher = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// Takes the thread's lane away when its dispatcher is dropped.
struct LaneGone;

impl Drop for LaneGone {
    fn drop(&mut self) {
        // During thread teardown the thread-local may be gone already: nothing to clear then.
        let _ = WAL_LANE.try_with(|l| l.borrow_mut().take());
    }
}

/// Step 3: the source's schema and tag rules on `events` (none: `Ok(None)` at no cost).
pub fn shape(
    grant: &Grant<'_>,
    events: &Events,
    origin: Origin<'_>,
) -> Result<Option<Shaped>, Refusal> {
    let Some(shape) = &grant.shape else {
        return Ok(None);
    };
    shape
        .apply(&events.payloads, &events.ends, origin, grant.device_bound)
        .map(Some)
        .map_err(|(failures, count)| Refusal::InvalidEvents { failures, count })
}

/// Step 4: takes `events` from the workspace's rate.
pub fn take_rate(workspace: &WorkspaceView, events: usize) -> Result<(), Refusal> {
    workspace
        .bucket
        .take(events)
        .map_err(|retry_after_s| Refusal::RateLimited { retry_after_s })
}

/// Now, in microseconds since the Unix epoch (UTC): every event's `received_at`.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_numbers_its_batch_from_a_fresh_id() {
        let target = || Target {
            workspace_id: Uuid::nil(),
            source: "telemetry".into(),
            device_id: Some("d-1".into()),
            protocol: Protocol::Mqtt,
            topic: Some("ingest/telemetry/d-1".into()),
            received_at_us: 42,
            shaping: None,
        };
        let a = target().batch(b"{}".to_vec(), vec![2]);
        let b = target().batch(b"{}".to_vec(), vec![2]);
        assert!(b.envelope.first_event_id > a.envelope.first_event_id);
        assert_eq!(a.envelope.topic.as_deref(), Some("ingest/telemetry/d-1"));
        assert_eq!(a.envelope.device_id.as_deref(), Some("d-1"));
        assert_eq!(a.envelope.received_at_us, 42);
    }
}
