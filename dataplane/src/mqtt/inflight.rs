//! The in-flight bound of a connection's packets: how many PUBLISHes (MQTT 3.1.1: QoS 1 and 2
//! ones waiting for their answer) and how many bytes of packets are being handled at once.
//! Past either, the connection is not read until some are done (flow control by TCP).
//!
//! It replaces ntex-mqtt's own in-flight middleware, for two reasons:
//! - ntex's skips its bound whenever the connection's last packet was a PUBLISH (so that the
//!   payload chunks of a streamed PUBLISH are never held back), which is nearly always on an
//!   ingest connection: it did not bound a stream of PUBLISHes. This one skips it only while
//!   a PUBLISH's payload is really still arriving in chunks.
//! - ntex keeps a connection's readiness future boxed for the connection's whole life, and
//!   ntex's middleware waits for its counter and the inner service *together* (`join`), which
//!   holds both futures side by side. Waiting for one, then the other, holds the larger of
//!   the two: 1.3 KiB less per idle MQTT 5 connection (see docs/bench-log/mqtt.md).

use std::cell::Cell;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Context, Poll};

use ntex_mqtt::{v3, v5};
use ntex_service::{Ctx, Middleware, Service};
use ntex_util::task::LocalWaker;

/// The middleware: at most `count` requests (0: no bound) and `bytes` bytes of them (0: no
/// bound) in flight on one connection.
#[derive(Debug, Clone, Copy)]
pub struct InFlight {
    pub count: u16,
    pub bytes: usize,
}

impl<S, St> Middleware<S, St> for InFlight {
    type Service = InFlightService<S>;

    fn create(&self, _: &St, service: S) -> Self::Service {
        InFlightService {
            service,
            counter: Rc::new(Counter {
                count_max: self.count,
                bytes_max: self.bytes,
                count: Cell::new(0),
                bytes: Cell::new(0),
                waiter: LocalWaker::new(),
            }),
            streaming: Cell::new(false),
        }
    }
}

/// What the bound needs to know of a decoded packet.
pub trait InFlightPacket {
    /// The packet's bytes.
    fn size(&self) -> u32;
    /// Whether more of the connection's payload follows in chunks after this packet.
    fn payload_follows(&self) -> bool;
}

/// Both versions' codecs decode to the same three shapes.
macro_rules! in_flight_packet {
    ($decoded:ident) => {
        impl InFlightPacket for $decoded::codec::Decoded {
            fn size(&self) -> u32 {
                use $decoded::codec::Decoded;
                match self {
                    Decoded::Packet(_, size) | Decoded::Publish(_, _, size) => *size,
                    Decoded::PayloadChunk(..) => 0,
                }
            }

            fn payload_follows(&self) -> bool {
                use $decoded::codec::Decoded;
                match self {
                    Decoded::Publish(publish, first, _) => {
                        first.len() < publish.payload_size as usize
                    }
                    Decoded::PayloadChunk(_, eof) => !eof,
                    Decoded::Packet(..) => false,
                }
            }
        }
    };
}

in_flight_packet!(v3);
in_flight_packet!(v5);

pub struct InFlightService<S> {
    service: S,
    counter: Rc<Counter>,
    /// The payload of a PUBLISH is still arriving in chunks: those are never held back, or the
    /// PUBLISH holding the room would wait for its own payload.
    streaming: Cell<bool>,
}

impl<S, St, Req> Service<St, Req> for InFlightService<S>
where
    S: Service<St, Req>,
    Req: InFlightPacket + 'static,
{
    type Res = S::Res;
    type Error = S::Error;

    async fn ready(&self, ctx: Ctx<'_, Self, St>) -> Result<(), S::Error> {
        if !self.streaming.get() {
            poll_fn(|cx| self.counter.poll_room(cx)).await;
        }
        ctx.ready(&self.service).await
    }

    async fn call(&self, req: Req, ctx: Ctx<'_, Self, St>) -> Result<S::Res, S::Error> {
        self.streaming.set(req.payload_follows());
        let size = if self.counter.bytes_max > 0 {
            req.size()
        } else {
            0
        };
        let _held = Held::new(self.counter.clone(), size);
        ctx.call(&self.service, req).await
    }

    ntex_service::forward_shutdown!(St, service);
}

struct Counter {
    count_max: u16,
    bytes_max: usize,
    count: Cell<u16>,
    bytes: Cell<usize>,
    /// The connection's readiness, waiting for room.
    waiter: LocalWaker,
}

impl Counter {
    fn has_room(&self) -> bool {
        (self.count_max == 0 || self.count.get() < self.count_max)
            && (self.bytes_max == 0 || self.bytes.get() <= self.bytes_max)
    }

    fn poll_room(&self, cx: &Context<'_>) -> Poll<()> {
        if self.has_room() {
            Poll::Ready(())
        } else {
            self.waiter.register(cx.waker());
            // Room may have come between the check and the registration.
            if self.has_room() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }
}

/// One request's share of the counter, given back when its handling ends (or is dropped).
struct Held {
    counter: Rc<Counter>,
    size: u32,
}

impl Held {
    fn new(counter: Rc<Counter>, size: u32) -> Held {
        counter.count.set(counter.count.get().saturating_add(1));
        counter
            .bytes
            .set(counter.bytes.get().saturating_add(size as usize));
        Held { counter, size }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let counter = &self.counter;
        counter.count.set(counter.count.get().saturating_sub(1));
        counter
            .bytes
            .set(counter.bytes.get().saturating_sub(self.size as usize));
        if counter.has_room() {
            counter.waiter.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Arc;
    use std::task::Waker;

    use futures::channel::oneshot;
    use ntex_service::{fn_service, Pipeline};

    use super::*;

    /// A packet of `size` bytes, handled until `release` fires (or at once without one).
    struct Packet {
        size: u32,
        /// More of its payload follows.
        streams: bool,
        release: Option<oneshot::Receiver<()>>,
    }

    impl InFlightPacket for Packet {
        fn size(&self) -> u32 {
            self.size
        }
        fn payload_follows(&self) -> bool {
            self.streams
        }
    }

    fn pipeline(bound: InFlight) -> Pipeline<Packet, (), ()> {
        let handler = fn_service(async |packet: Packet| {
            if let Some(release) = packet.release {
                let _ = release.await;
            }
            Ok::<_, ()>(())
        });
        Pipeline::new((), bound.create(&(), handler))
    }

    fn ready(pipeline: &Pipeline<Packet, (), ()>) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        pipeline.poll_ready(&mut cx).is_ready()
    }

    fn poll(call: &mut (impl Future<Output = Result<(), ()>> + Unpin)) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        std::pin::Pin::new(call).poll(&mut cx).is_ready()
    }

    /// A packet in flight until the returned sender is dropped or fires.
    fn held(size: u32, streams: bool) -> (Packet, oneshot::Sender<()>) {
        let (tx, rx) = oneshot::channel();
        (
            Packet {
                size,
                streams,
                release: Some(rx),
            },
            tx,
        )
    }

    #[test]
    fn a_connection_at_its_count_is_not_read_until_one_is_done() {
        let pipeline = pipeline(InFlight { count: 2, bytes: 0 });
        assert!(ready(&pipeline));
        let (a, release_a) = held(10, false);
        let (b, _release_b) = held(10, false);
        let mut a = pipeline.call_nowait(a);
        let mut b = pipeline.call_nowait(b);
        assert!(
            !poll(&mut a) && !poll(&mut b),
            "both wait for their release"
        );
        assert!(!ready(&pipeline), "two in flight: no room");
        let _ = release_a.send(());
        assert!(poll(&mut a));
        assert!(ready(&pipeline), "one done: room again");
    }

    #[test]
    fn a_connection_past_its_bytes_is_not_read_until_they_are_handled() {
        let pipeline = pipeline(InFlight {
            count: 0,
            bytes: 100,
        });
        let (small, release_small) = held(60, false);
        let mut small = pipeline.call_nowait(small);
        assert!(!poll(&mut small));
        assert!(ready(&pipeline), "60 of 100 bytes");
        let (large, release_large) = held(60, false);
        let mut large = pipeline.call_nowait(large);
        assert!(!poll(&mut large));
        assert!(!ready(&pipeline), "120 of 100 bytes");
        drop(release_small);
        assert!(poll(&mut small));
        assert!(ready(&pipeline), "60 of 100 bytes again");
        drop(release_large);
        assert!(poll(&mut large));
    }

    #[test]
    fn the_payload_chunks_of_a_publish_are_never_held_back() {
        let pipeline = pipeline(InFlight {
            count: 0,
            bytes: 100,
        });
        // A PUBLISH past the bound whose payload comes in chunks.
        let (publish, _release) = held(150, true);
        let mut publish = pipeline.call_nowait(publish);
        assert!(!poll(&mut publish));
        assert!(
            ready(&pipeline),
            "its payload's chunks must get through, or the publish waits for itself"
        );
        let mut chunk = pipeline.call_nowait(Packet {
            size: 0,
            streams: true,
            release: None,
        });
        assert!(poll(&mut chunk));
        assert!(ready(&pipeline), "still streaming");
        let mut last = pipeline.call_nowait(Packet {
            size: 0,
            streams: false,
            release: None,
        });
        assert!(poll(&mut last));
        assert!(
            !ready(&pipeline),
            "the payload is whole: the bound applies again"
        );
    }

    #[test]
    fn a_waiting_connection_is_woken_when_room_comes() {
        let pipeline = pipeline(InFlight { count: 1, bytes: 0 });
        let (a, release_a) = held(1, false);
        let mut a = pipeline.call_nowait(a);
        assert!(!poll(&mut a));
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(woken.clone());
        let mut readiness = pin!(pipeline.ready());
        assert!(readiness
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        let _ = release_a.send(());
        assert!(poll(&mut a));
        assert!(woken.0.load(std::sync::atomic::Ordering::SeqCst), "woken");
        assert!(readiness
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready());
    }

    #[test]
    fn a_whole_publish_is_bounded_and_only_a_streamed_payload_is_let_through() {
        use ntex_bytes::{ByteString, Bytes};
        let publish = |payload_size: u32| v3::codec::Publish {
            dup: false,
            retain: false,
            qos: ntex_mqtt::QoS::AtLeastOnce,
            topic: ByteString::from_static("ingest/telemetry"),
            packet_id: std::num::NonZeroU16::new(1),
            payload_size,
        };
        let whole = v3::codec::Decoded::Publish(publish(4), Bytes::from_static(b"{}{}"), 24);
        assert!(!whole.payload_follows(), "the payload is all there");
        assert_eq!(whole.size(), 24);
        let first_part = v3::codec::Decoded::Publish(publish(10), Bytes::from_static(b"{}{}"), 24);
        assert!(first_part.payload_follows());
        let middle = v3::codec::Decoded::PayloadChunk(Bytes::from_static(b"{}"), false);
        assert!(middle.payload_follows());
        assert_eq!(middle.size(), 0, "a chunk was counted with its PUBLISH");
        let last = v3::codec::Decoded::PayloadChunk(Bytes::from_static(b"{}"), true);
        assert!(!last.payload_follows());
    }

    #[derive(Default)]
    struct Woken(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}
