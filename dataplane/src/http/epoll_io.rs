//! A tokio (epoll) TCP stream as hyper I/O, with the idle timeout [`UringIo`] enforces on the
//! io_uring driver: a read that sees no bytes for `idle_timeout` fails with `TimedOut`, which
//! closes half-open and silent connections; writes count as activity too.
//!
//! Unlike io_uring, epoll lends hyper's own buffers to the kernel, so there is nothing to
//! copy or keep alive here. The deadline moves with every read that returns, but the timer is
//! re-armed only when it fires early, not on every read: most reads would otherwise each
//! move an entry in the runtime's timer wheel.
//!
//! [`UringIo`]: super::uring_io::UringIo

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// A tokio TCP stream as hyper I/O.
pub struct EpollIo {
    stream: TokioIo<TcpStream>,
    idle_timeout: Duration,
    /// When the last read returned; the connection is idle `idle_timeout` after it.
    last_read: Instant,
    /// Fires at or before `last_read + idle_timeout`.
    idle: Pin<Box<Sleep>>,
}

impl EpollIo {
    pub fn new(stream: TcpStream, idle_timeout: Duration) -> Self {
        let now = Instant::now();
        EpollIo {
            stream: TokioIo::new(stream),
            idle_timeout,
            last_read: now,
            idle: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
        }
    }

    /// Whether the connection has been idle too long; re-arms the timer if it fired for a
    /// deadline that has since moved.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.idle.as_mut().poll(cx).is_ready() {
            let deadline = self.last_read + self.idle_timeout;
            if deadline <= Instant::now() {
                return true;
            }
            self.idle.as_mut().reset(deadline);
        }
        false
    }
}

impl Read for EpollIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.last_read = Instant::now();
                Poll::Ready(result)
            }
            Poll::Pending if this.idle_expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Write for EpollIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write(cx, data);
        if written.is_ready() {
            // A connection the node still writes to is not idle (see the module's note).
            this.last_read = Instant::now();
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if written.is_ready() {
            this.last_read = Instant::now();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
