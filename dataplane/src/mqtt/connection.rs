//! One MQTT connection, from its first byte to its close: the CONNECT (a place among the
//! connections authenticating, the protocol, the credentials), then a loop that reads whole
//! packets, hands publishes to the admission path in the order they came, and writes the
//! answers once their outcome is known.
//!
//! The loop is one task of the worker thread's runtime. While the connection is idle it holds
//! its socket, its session and a timer, and no buffer: what was read is dropped once handled,
//! the answers' room once written (issue 22: ~2 KiB an idle connection, where ntex-mqtt's
//! server held 9).
//!
//! Flow control: the connection reads nothing more while `mqtt.receive_max` QoS 1 and 2
//! publishes wait for their answer, or while a publish waits for room (the node's in-flight
//! budget, the workspace's rate, the disk quota). The client's packets then wait in its socket.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use ntex_bytes::{ByteString, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;

use super::connecting::{Connecting, ConnectingSlot};
use super::exactly_once::{Arrival, ExactlyOnce, Release};
use super::inflight::{InFlight, Received, Settled, Wait, Waiting};
use super::ingest::{MqttIngest, Stored};
use super::packet::{packet_at, protocol_of, publish_topic_alias, unsupported_protocol, Packet};
use super::protocol::{Answers, Codec, Incoming, Publish, PublishAnswer, Violation};
use super::sessions::{DeviceSession, Sessions};
use super::types::{describe, publish_outcome, CloseReason, ConnectRefusal, Credentials};
use super::watch::Closer;
use crate::admit::Refusal;

/// Topic aliases an MQTT 5 client may set up (CONNACK Topic Alias Maximum).
const TOPIC_ALIAS_MAX: u16 = 32;
/// Bytes read from a socket at once.
const READ_CHUNK: usize = 16 << 10;
/// How long a session the node closes may take to answer the publishes it is storing before
/// its DISCONNECT goes out.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long a closed connection's unread input is read and dropped, so that the last answer
/// is not lost to a reset.
const LINGER: Duration = Duration::from_secs(1);

/// What the connections of one worker thread share.
pub struct Worker {
    pub ingest: Arc<MqttIngest>,
    pub sessions: Arc<Sessions>,
    pub connecting: Arc<Connecting>,
}

/// Serves one connection until it closes. (Not an `async fn`, which would keep its arguments
/// twice in the future: see [`Session::run`].)
#[allow(clippy::manual_async_fn)]
pub fn serve<S>(stream: S, peer: Option<IpAddr>, worker: Rc<Worker>) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        // Boxed: the CONNECT's state does not size the idle connection's future.
        let Some(session) = Box::pin(handshake(stream, peer, &worker)).await else {
            return;
        };
        session.run().await;
    }
}

/// Why a connection ends.
enum End {
    /// The client sent DISCONNECT, closed, or the socket failed: nothing more to send.
    Client,
    /// The node ends it: MQTT 5 is told why.
    Node(Violation),
}

/// What the watch sets when the node closes the session (see `watch`).
#[derive(Default)]
struct CloseSignal {
    reason: Cell<Option<CloseReason>>,
    waker: RefCell<Option<Waker>>,
}

impl CloseSignal {
    fn poll(&self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        match self.reason.get() {
            Some(reason) => Poll::Ready(reason),
            None => {
                let mut waker = self.waker.borrow_mut();
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

impl Closer for CloseSignal {
    fn close(&self, reason: CloseReason) {
        self.reason.set(Some(reason));
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

/// Reads what the socket has (at most [`READ_CHUNK`]) onto `buf`: the number of bytes, 0 at
/// the end of the stream. The chunk is on the stack of this call, not in the connection.
fn poll_read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    // Uninitialised: zeroing 16 KiB at every poll would cost more than the read.
    let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut read = ReadBuf::uninit(&mut chunk);
    match Pin::new(stream).poll_read(cx, &mut read) {
        Poll::Ready(Ok(())) => {
            buf.extend_from_slice(read.filled());
            Poll::Ready(Ok(read.filled().len()))
        }
        Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
        Poll::Pending => Poll::Pending,
    }
}

async fn read_some<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> io::Result<usize> {
    poll_fn(|cx| poll_read_some(stream, buf, cx)).await
}

/// Sends `answers` and forgets them.
async fn send<S: AsyncWrite + Unpin>(stream: &mut S, answers: &mut Answers) -> io::Result<()> {
    if answers.is_empty() {
        return Ok(());
    }
    let written = stream.write_all(answers.as_slice()).await;
    answers.written();
    written?;
    stream.flush().await
}

/// Closes the connection after its last answer: the write side first, then what the client
/// still sends is read and dropped for a moment, so that a reset does not destroy the answer
/// before the client reads it.
async fn close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let _ = stream.shutdown().await;
    let _ = tokio::time::timeout(LINGER, async {
        let mut drained = BytesMut::new();
        while let Ok(n) = read_some(stream, &mut drained).await {
            if n == 0 {
                break;
            }
            drained.clear();
        }
    })
    .await;
}

/// The keep-alive the node applies: the client's, capped; a client asking for none gets the
/// cap (a connection that never has to speak would hold its slot forever).
fn keep_alive(asked: u16, max: u16) -> u16 {
    let max = max.max(1);
    if asked == 0 {
        max
    } else {
        asked.min(max)
    }
}

/// One connection counted in `sluice_mqtt_connecting_waiting` while it waits for a place,
/// uncounted however the wait ends.
struct CountedWait<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> CountedWait<'a> {
    fn count(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> CountedWait<'a> {
        gauge.inc();
        CountedWait(gauge)
    }
}

impl Drop for CountedWait<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// From the first byte to the CONNACK: `None` when the connection ends there.
async fn handshake<S>(mut stream: S, peer: Option<IpAddr>, worker: &Worker) -> Option<Session<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ingest = &worker.ingest;
    let limits = &ingest.limits;
    let connect_timeout = Duration::from_secs(limits.connect_timeout_secs.into());
    // A place among the connections authenticating; without one at once, the connection waits
    // in arrival order (its CONNECT waits in the socket meanwhile, costing the node nothing)
    // and, if none comes free within the connect timeout, its CONNECT is answered server busy:
    // never closed unanswered (see `connecting`).
    let slot = match worker.connecting.try_enter() {
        Some(slot) => slot,
        None => {
            let _counted = CountedWait::count(&ingest.metrics.mqtt.connecting_waiting);
            tokio::time::timeout(connect_timeout, worker.connecting.enter())
                .await
                .unwrap_or_else(|_| {
                    tracing::debug!(
                        "no place among the connections authenticating within the connect \
                         timeout: the CONNECT is answered server busy"
                    );
                    ConnectingSlot::waiting()
                })
        }
    };
    let deadline = tokio::time::Instant::now() + connect_timeout;
    let mut buf = BytesMut::new();
    let (header, total) = loop {
        match packet_at(&buf, limits.connect_bytes_max) {
            Packet::Whole { header, total } => break (header, total),
            Packet::Partial => {}
            // Cut off before its bytes are held: a client that has not authenticated gets no
            // more room than `mqtt.connect_bytes_max`.
            Packet::TooLarge | Packet::Malformed => return None,
        }
        match tokio::time::timeout_at(deadline, read_some(&mut stream, &mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    };
    // Anything but a CONNECT first is closed [MQTT-3.1.0-1].
    if buf[0] != 0x10 {
        return None;
    }
    let level = match protocol_of(&buf[header..total]) {
        Some((b"MQTT", level @ (4 | 5))) => level,
        Some((_, level)) => {
            // The client learns why: 3.1.1 and 5 §3.1.2.2.
            let mut answers = Answers::default();
            answers.raw(unsupported_protocol(level));
            if send(&mut stream, &mut answers).await.is_ok() {
                close(&mut stream).await;
            }
            return None;
        }
        None => return None,
    };
    let codec = Codec::new(level, limits.packet_bytes_max);
    let mut answers = Answers::default();
    let connect = match codec.decode_connect(&mut buf) {
        Ok(connect) => connect,
        Err(err) => {
            tracing::debug!(error = %err, "malformed MQTT CONNECT");
            answers.connack_malformed(&codec);
            if send(&mut stream, &mut answers).await.is_ok() {
                close(&mut stream).await;
            }
            return None;
        }
    };
    let creds = Credentials {
        username: connect.username.as_deref(),
        password: connect.password.as_deref(),
        client_id: &connect.client_id,
        enhanced_auth: connect.auth_method,
    };
    let outcome = ingest.authorize(&creds, slot.has_place());
    drop(slot);
    let device = match outcome {
        Ok(device) => device,
        Err(refusal) => {
            // Not the client's failure: no throttle for a node without a configuration or
            // without room.
            if !matches!(
                refusal,
                ConnectRefusal::NotConfigured | ConnectRefusal::ServerBusy
            ) {
                let delay = ingest.failures.record(peer);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
            if answers.connack_refused(&codec, refusal)
                && send(&mut stream, &mut answers).await.is_ok()
            {
                close(&mut stream).await;
            }
            return None;
        }
    };
    let granted = keep_alive(connect.keep_alive, limits.keep_alive_max_secs);
    let signal = Rc::new(CloseSignal::default());
    let session = DeviceSession::start(ingest, &worker.sessions, device, signal.clone());
    // MQTT 5 tells the client a keep-alive only when it differs from its own [MQTT-3.2.2-21].
    let server_keep_alive = (granted != connect.keep_alive).then_some(granted);
    if !answers.connack_accepted(
        &codec,
        server_keep_alive,
        limits.receive_max,
        limits.packet_bytes_max,
        TOPIC_ALIAS_MAX,
    ) {
        return None;
    }
    send(&mut stream, &mut answers).await.ok()?;
    // What the CONNECT needed is given back: an idle connection holds no buffer.
    answers.release();
    if buf.is_empty() {
        buf = BytesMut::new();
    }
    // One and a half keep-alives (3.1.1 and 5 §3.1.2.10).
    let idle = Duration::from_millis(u64::from(granted) * 1500);
    Some(Session {
        stream,
        codec,
        session,
        signal,
        ingest: worker.ingest.clone(),
        // Publishes sent right behind the CONNECT are in it already.
        buf,
        answers,
        going: None,
        problem_info: connect.problem_info,
        session_expiry_zero: connect.session_expiry_secs == 0,
        idle,
        last_read: Instant::now(),
    })
}

/// An accepted connection.
struct Session<S> {
    stream: S,
    codec: Codec,
    session: DeviceSession,
    signal: Rc<CloseSignal>,
    ingest: Arc<MqttIngest>,
    /// Read and not handled yet: at most a packet's tail between reads, or the packets
    /// behind a stall.
    buf: BytesMut,
    answers: Answers,
    /// What the connection has going; `None` while it has nothing (an idle connection).
    going: Option<Box<Going>>,
    /// MQTT 5: reason strings may be sent.
    problem_info: bool,
    /// MQTT 5: the CONNECT asked for no session expiry, so a DISCONNECT may not ask for one
    /// [MQTT-3.14.2-2].
    session_expiry_zero: bool,
    /// One and a half keep-alives: a connection silent that long is closed.
    idle: Duration,
    last_read: Instant,
}

/// What a connection has going: publishes waiting for their outcome, QoS 2 exchanges, topic
/// aliases. Allocated when first needed and given back once a keep-alive period passes with
/// none of it, so that an idle connection holds none (120 bytes less each).
#[derive(Default)]
struct Going {
    inflight: InFlight,
    exactly_once: ExactlyOnce,
    /// MQTT 5 topic aliases set up by the client, by alias - 1.
    aliases: Vec<Option<ByteString>>,
    /// The topic of the last publish that had to wait, as [`Going::kept_topic`] keeps it.
    last_topic: ByteString,
}

impl Going {
    fn is_empty(&self) -> bool {
        self.inflight.is_empty() && self.exactly_once.is_empty() && self.aliases.is_empty()
    }

    /// `topic` as a waiting publish keeps it (for its log line): a copy of its own, since the
    /// decoded topic shares the whole read buffer its packet came in, and that buffer would
    /// be held for as long as the publish waits. A connection's publishes mostly share one
    /// topic, so the copy is made when it changes.
    fn kept_topic(&mut self, topic: &ByteString) -> ByteString {
        if self.last_topic != *topic {
            self.last_topic = ByteString::from(topic.to_string());
        }
        self.last_topic.clone()
    }
}

/// What woke the connection.
enum Event {
    Closed(CloseReason),
    Settled(Settled),
    Read(io::Result<usize>),
    Timer,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    // Not an `async fn`: its argument would be kept twice in the future (once as the
    // argument, once as the body's binding), 376 bytes more per idle connection.
    #[allow(clippy::manual_async_fn)]
    fn run(mut self) -> impl Future<Output = ()> {
        async move {
            let timer = tokio::time::sleep(self.idle);
            tokio::pin!(timer);
            let end = loop {
                let readable = self.reads_now();
                let event = poll_fn(|cx| self.poll_event(cx, readable, timer.as_mut())).await;
                let step = match event {
                    Event::Closed(reason) => Err(End::Node(Violation::Closed(reason))),
                    Event::Settled(settled) => self.answer_settled(settled),
                    Event::Read(Ok(0) | Err(_)) => Err(End::Client),
                    Event::Read(Ok(_)) => {
                        self.last_read = Instant::now();
                        Ok(())
                    }
                    Event::Timer => {
                        // Silence while the node itself holds the client back (flow control, or
                        // answers it owes) is not the client's.
                        if !self.reads_now() || self.busy() {
                            self.last_read = Instant::now();
                        }
                        let due = self.last_read + self.idle;
                        if Instant::now() >= due {
                            Err(End::Node(Violation::KeepAlive))
                        } else {
                            timer.as_mut().reset(due.into());
                            // Quiet for a while: the answers' room is given back.
                            if !self.busy() {
                                self.answers.release();
                                if self.going.as_ref().is_some_and(|going| going.is_empty()) {
                                    self.going = None;
                                }
                            }
                            Ok(())
                        }
                    }
                };
                // Packets read (now, or behind a stall that has cleared) are handled as far as
                // flow control allows.
                let step = step.and_then(|()| self.handle_read());
                if let Err(end) = step {
                    break end;
                }
                // A client that stops reading its answers is given up after as long as one that
                // stops sending. The timer is set up only when a write has to wait (boxed, so
                // that it does not size the idle connection's future).
                let idle = self.idle;
                let mut sending = std::pin::pin!(send(&mut self.stream, &mut self.answers));
                let sent = match futures::poll!(sending.as_mut()) {
                    Poll::Ready(sent) => sent.is_ok(),
                    Poll::Pending => matches!(
                        Box::pin(tokio::time::timeout(idle, sending)).await,
                        Ok(Ok(()))
                    ),
                };
                if !sent {
                    break End::Client;
                }
            };
            // Boxed: how a connection ends does not size the idle connection's future.
            Box::pin(self.end(end)).await;
        }
    }

    /// What the connection has going, set up on first use.
    fn going(&mut self) -> &mut Going {
        self.going.get_or_insert_with(Box::default)
    }

    /// Whether publishes wait for their outcome.
    fn busy(&self) -> bool {
        self.going
            .as_ref()
            .is_some_and(|going| !going.inflight.is_empty())
    }

    /// Whether the connection may read more now (see the module's flow control).
    fn reads_now(&self) -> bool {
        self.going.as_ref().is_none_or(|going| {
            !going.inflight.stalled()
                && going.inflight.unanswered() < usize::from(self.ingest.limits.receive_max.max(1))
        })
    }

    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
        readable: bool,
        timer: Pin<&mut Sleep>,
    ) -> Poll<Event> {
        if let Poll::Ready(reason) = self.signal.poll(cx) {
            return Poll::Ready(Event::Closed(reason));
        }
        if let Some(Poll::Ready(settled)) = self
            .going
            .as_mut()
            .map(|going| going.inflight.poll_next(cx))
        {
            return Poll::Ready(Event::Settled(settled));
        }
        if readable {
            if let Poll::Ready(read) = poll_read_some(&mut self.stream, &mut self.buf, cx) {
                return Poll::Ready(Event::Read(read));
            }
        }
        match timer.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Event::Timer),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Answers `settled` and every later publish whose outcome is known now, in order.
    fn answer_settled(&mut self, settled: Settled) -> Result<(), End> {
        let mut next = Some(settled);
        while let Some(settled) = next {
            self.answer(settled)?;
            next = self
                .going
                .as_mut()
                .and_then(|going| going.inflight.next_now());
        }
        Ok(())
    }

    /// Counts one publish's outcome and writes its answer.
    fn answer(&mut self, settled: Settled) -> Result<(), End> {
        let received = &settled.received;
        self.ingest.settle(
            &self.session.device,
            &received.topic,
            received.qos,
            received.started,
            &settled.outcome,
        );
        let Some((answer, id)) = received.answer else {
            // Nothing to answer at QoS 0: a refusal is counted and logged only.
            return Ok(());
        };
        let copies = match answer {
            PublishAnswer::PubAck => 1,
            PublishAnswer::PubRec => self
                .going()
                .exactly_once
                .stored(id.get(), settled.outcome.is_ok()),
        };
        match &settled.outcome {
            Ok(()) => {
                for _ in 0..copies {
                    self.answers.publish_stored(&self.codec, answer, id);
                }
                Ok(())
            }
            Err(refusal) => match &self.codec {
                Codec::V5(codec) => {
                    let text = self.problem_info.then(|| describe(refusal));
                    for _ in 0..copies {
                        if !self.answers.publish_refused(
                            codec,
                            answer,
                            id,
                            reason_code(refusal),
                            text.as_deref(),
                        ) {
                            return Err(End::Node(Violation::Protocol));
                        }
                    }
                    Ok(())
                }
                // 3.1.1 has no negative acknowledgement: a refused PUBLISH closes the
                // connection, so that the client never takes a refusal for an ack (the
                // metric and the log line say why).
                Codec::V311(_) => Err(End::Node(Violation::PublishRefused(publish_outcome(
                    refusal,
                )))),
            },
        }
    }

    /// Handles the whole packets read, as far as flow control allows.
    fn handle_read(&mut self) -> Result<(), End> {
        while self.reads_now() {
            let (header, total) = match packet_at(&self.buf, self.ingest.limits.packet_bytes_max) {
                Packet::Whole { header, total } => (header, total),
                Packet::Partial => break,
                Packet::TooLarge => return Err(End::Node(Violation::TooLarge)),
                Packet::Malformed => return Err(End::Node(Violation::Malformed)),
            };
            let first = self.buf[0];
            if first >> 4 == 3 && self.codec.is_v5() {
                let qos = (first >> 1) & 0b11;
                if publish_topic_alias(&self.buf[header..total], qos) == Some(0) {
                    // [MQTT-3.3.2-8]
                    return Err(End::Node(Violation::TopicAlias));
                }
            }
            let incoming = self
                .codec
                .decode(&mut self.buf)
                .map_err(|err| End::Node(err.into()))?;
            self.on_packet(incoming)?;
        }
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            // Nothing held while idle.
            self.buf = BytesMut::new();
        }
        Ok(())
    }

    fn on_packet(&mut self, incoming: Incoming) -> Result<(), End> {
        match incoming {
            Incoming::Publish(publish) => self.on_publish(publish),
            Incoming::PubRel(id) => match self.going().exactly_once.release(id.get()) {
                Release::Completed => {
                    self.answers.pubcomp(&self.codec, id, true);
                    Ok(())
                }
                Release::Unknown => {
                    self.answers.pubcomp(&self.codec, id, false);
                    Ok(())
                }
                Release::Early => Err(End::Node(Violation::Protocol)),
            },
            Incoming::Subscribe { packet_id, filters } => {
                if self
                    .answers
                    .suback_refused(&self.codec, packet_id, filters, self.problem_info)
                {
                    Ok(())
                } else {
                    Err(End::Node(Violation::Protocol))
                }
            }
            Incoming::Unsubscribe { packet_id, filters } => {
                if self.answers.unsuback(&self.codec, packet_id, filters) {
                    Ok(())
                } else {
                    Err(End::Node(Violation::Protocol))
                }
            }
            Incoming::Ping => {
                self.answers.pingresp();
                Ok(())
            }
            Incoming::Disconnect {
                session_expiry_secs,
            } => {
                if self.session_expiry_zero && session_expiry_secs.is_some_and(|secs| secs > 0) {
                    Err(End::Node(Violation::Protocol))
                } else {
                    Err(End::Client)
                }
            }
            // A second CONNECT [MQTT-3.1.0-2], AUTH without an authentication method,
            // acknowledgements of publishes the node never sent.
            Incoming::Unexpected => Err(End::Node(Violation::Protocol)),
        }
    }

    fn on_publish(&mut self, publish: Publish) -> Result<(), End> {
        let topic = self.resolve_topic(&publish)?;
        if topic.contains(['#', '+']) {
            // [MQTT-3.3.2-2]
            return Err(End::Node(Violation::TopicName));
        }
        if topic.contains('\0') {
            // [MQTT-1.5.3-2] (3.1.1), [MQTT-1.5.4-2] (5): never stored.
            return Err(End::Node(Violation::Malformed));
        }
        let answer = match (publish.qos, publish.packet_id) {
            (0, _) => None,
            (1, Some(id)) => {
                if self.going().exactly_once.holds(id.get()) {
                    // The id of a QoS 2 exchange not completed [MQTT-2.2.1-3].
                    return match self.codec {
                        Codec::V5(_) => {
                            self.answers.packet_id_in_use(id);
                            Ok(())
                        }
                        Codec::V311(_) => Err(End::Node(Violation::Protocol)),
                    };
                }
                Some((PublishAnswer::PubAck, id))
            }
            (2, Some(id)) => match self.going().exactly_once.publish(id.get()) {
                Arrival::New => Some((PublishAnswer::PubRec, id)),
                // Answered along with the first, once it is stored.
                Arrival::Resent => return Ok(()),
                Arrival::Stored => {
                    self.answers
                        .publish_stored(&self.codec, PublishAnswer::PubRec, id);
                    return Ok(());
                }
            },
            // The codec decodes no other QoS, nor a QoS 1 or 2 publish without an id.
            _ => return Err(End::Node(Violation::Malformed)),
        };
        let started = Instant::now();
        let device = &self.session.device;
        let wait = match self.ingest.store_now(
            device,
            &self.session.batcher,
            &topic,
            &publish.payload,
            publish.qos,
        ) {
            Stored::Done(outcome) => Wait::Ready(outcome),
            Stored::Durable(durable) => Wait::Durable(durable),
            // Its payload holds its read buffer while it waits: one at most, as the connection
            // reads nothing more meanwhile.
            Stored::Later => Wait::Later(Box::pin(self.ingest.clone().store_waiting(
                device.clone(),
                self.session.batcher.clone(),
                topic.clone(),
                publish.payload,
                publish.qos,
            ))),
        };
        match wait {
            // Settled now when nothing is ahead of it, or when it has no answer to wait its
            // turn for (QoS 0): only its count is left to do.
            Wait::Ready(outcome) if answer.is_none() || !self.busy() => self.answer(Settled {
                received: Received {
                    answer,
                    qos: publish.qos,
                    topic,
                    started,
                },
                outcome,
            }),
            wait => {
                let going = self.going();
                let topic = going.kept_topic(&topic);
                going.inflight.push(Waiting {
                    received: Received {
                        answer,
                        qos: publish.qos,
                        topic,
                        started,
                    },
                    wait,
                });
                Ok(())
            }
        }
    }

    /// The topic of an MQTT 5 PUBLISH with a topic alias: set up, or looked up.
    fn resolve_topic(&mut self, publish: &Publish) -> Result<ByteString, End> {
        let Some(alias) = publish.topic_alias else {
            return Ok(publish.topic.clone());
        };
        if alias.get() > TOPIC_ALIAS_MAX {
            return Err(End::Node(Violation::TopicAlias));
        }
        let at = usize::from(alias.get() - 1);
        if publish.topic.is_empty() {
            return self
                .going
                .as_ref()
                .and_then(|going| going.aliases.get(at))
                .cloned()
                .flatten()
                .ok_or(End::Node(Violation::TopicAlias));
        }
        let aliases = &mut self.going().aliases;
        if aliases.len() <= at {
            aliases.resize(at + 1, None);
        }
        // A copy of its own: the decoded topic shares the whole read buffer it came in.
        aliases[at] = Some(ByteString::from(publish.topic.to_string()));
        Ok(publish.topic.clone())
    }

    /// Ends the connection: when the node closes the session, the publishes it is storing are
    /// answered first (for a moment), then MQTT 5 gets a DISCONNECT saying why.
    async fn end(mut self, end: End) {
        let why = match end {
            End::Client => return,
            End::Node(why) => why,
        };
        if matches!(why, Violation::Closed(_)) {
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                while self.busy() {
                    let settled = poll_fn(|cx| self.going().inflight.poll_next(cx)).await;
                    if self.answer(settled).is_err() {
                        break;
                    }
                }
            })
            .await;
        }
        match why {
            Violation::Closed(_) | Violation::KeepAlive => {}
            _ => tracing::info!(
                workspace = %self.session.device.workspace,
                device = %self.session.device.device_id,
                reason = why.slug(),
                "MQTT connection closed"
            ),
        }
        self.answers.disconnect(&self.codec, why);
        if send(&mut self.stream, &mut self.answers).await.is_ok() {
            close(&mut self.stream).await;
        }
    }
}

/// The MQTT 5 PUBACK or PUBREC reason code of a refused PUBLISH.
fn reason_code(refusal: &Refusal) -> ntex_mqtt::v5::codec::PublishAckReason {
    use crate::access::Refusal as Access;
    use ntex_mqtt::v5::codec::PublishAckReason as Code;
    match refusal {
        Refusal::TopicInvalid | Refusal::Access(Access::UnknownSource) => Code::TopicNameInvalid,
        Refusal::Access(_) => Code::NotAuthorized,
        Refusal::Parse(_) | Refusal::InvalidEvents { .. } => Code::PayloadFormatInvalid,
        Refusal::PayloadTooLarge { .. }
        | Refusal::RateLimited { .. }
        | Refusal::Overloaded
        | Refusal::StorageFull => Code::QuotaExceeded,
        Refusal::RecordTooLarge | Refusal::StorageUnavailable => Code::ImplementationSpecificError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keep_alive_is_capped_and_never_none() {
        assert_eq!(keep_alive(30, 60), 30);
        assert_eq!(keep_alive(120, 60), 60);
        assert_eq!(keep_alive(0, 60), 60);
        assert_eq!(keep_alive(0, 0), 1);
    }
}
