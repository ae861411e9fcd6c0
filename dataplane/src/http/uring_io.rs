//! Adapter from tokio-uring's owned-buffer TCP stream to hyper's `Read`/`Write` traits.
//!
//! io_uring operations own their buffers until the kernel completes them, while hyper lends
//! borrowed slices. The adapter keeps one read buffer and one write buffer per connection:
//! a read fills the adapter's buffer and hyper is served from it; a write copies hyper's bytes
//! into the adapter's buffer and submits it. If the connection is dropped with an operation in
//! flight, tokio-uring keeps the buffer alive until the kernel is done with it, so cancellation
//! is safe.
//!
//! Dropping the adapter shuts the socket down, which completes any read still in flight; only
//! then does tokio-uring release the descriptor (see `Drop`).
//!
//! It also enforces the idle timeout: a read that sees no bytes for `idle_timeout` fails with
//! `TimedOut`, which closes half-open and silent connections. A write moves the deadline too:
//! a connection the node is still answering on (a long export stream, whose reader sends
//! nothing after its request) is not idle.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use tokio::time::{Instant, Sleep};
use tokio_uring::net::TcpStream;

/// Bytes read from the socket per operation.
const READ_BUF_BYTES: usize = 16 << 10;

type ReadOp = Pin<Box<dyn Future<Output = (io::Result<usize>, Vec<u8>)>>>;
type WriteOp = Pin<Box<dyn Future<Output = (io::Result<()>, Vec<u8>)>>>;

/// A tokio-uring TCP stream as hyper I/O.
pub struct UringIo {
    stream: Rc<TcpStream>,
    /// Bytes read and not yet handed to hyper: `read_buf[read_pos..]`.
    read_buf: Vec<u8>,
    read_pos: usize,
    read_op: Option<ReadOp>,
    /// Buffer reused for the next write once the previous one completed.
    write_spare: Vec<u8>,
    write_op: Option<WriteOp>,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
}

impl UringIo {
    pub fn new(stream: TcpStream, idle_timeout: Duration) -> Self {
        UringIo {
            stream: Rc::new(stream),
            read_buf: Vec::new(),
            read_pos: 0,
            read_op: None,
            write_spare: Vec::new(),
            write_op: None,
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
        }
    }

    /// Drives the write in flight; `Ready(Ok)` once there is none.
    fn poll_write_op(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(op) = self.write_op.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        match op.as_mut().poll(cx) {
            Poll::Ready((result, buf)) => {
                self.write_op = None;
                self.write_spare = buf;
                Poll::Ready(result)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for UringIo {
    fn drop(&mut self) {
        // tokio-uring closes the socket only once every operation on it has completed, and a
        // read from a silent peer never completes: without this, a timed-out or abandoned
        // connection would keep its fd and its slot forever. Shutting the socket down makes
        // the kernel complete the pending read, after which the fd is closed.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

impl Read for UringIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.read_pos < this.read_buf.len() {
                let available = &this.read_buf[this.read_pos..];
                let n = available.len().min(buf.remaining());
                buf.put_slice(&available[..n]);
                this.read_pos += n;
                return Poll::Ready(Ok(()));
            }
            if this.read_op.is_none() {
                let mut owned = std::mem::take(&mut this.read_buf);
                owned.clear();
                if owned.capacity() < READ_BUF_BYTES {
                    owned.reserve(READ_BUF_BYTES);
                }
                this.read_pos = 0;
                let stream = this.stream.clone();
                this.read_op = Some(Box::pin(async move { stream.read(owned).await }));
                this.idle.as_mut().reset(Instant::now() + this.idle_timeout);
            }
            let Some(op) = this.read_op.as_mut() else {
                continue;
            };
            match op.as_mut().poll(cx) {
                Poll::Ready((result, owned)) => {
                    this.read_op = None;
                    this.read_buf = owned;
                    match result {
                        // End of stream: hand hyper nothing.
                        Ok(0) => return Poll::Ready(Ok(())),
                        Ok(_) => continue,
                        Err(err) => return Poll::Ready(Err(err)),
                    }
                }
                Poll::Pending => {
                    if this.idle.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "connection idle for too long",
                        )));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Write for UringIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.poll_write_op(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other.map(|r| r.map(|()| 0)),
        }
        let mut owned = std::mem::take(&mut this.write_spare);
        owned.clear();
        owned.extend_from_slice(data);
        let stream = this.stream.clone();
        this.write_op = Some(Box::pin(async move { stream.write_all(owned).await }));
        this.idle.as_mut().reset(Instant::now() + this.idle_timeout);
        // Submit now; the bytes are ours, so the write counts as accepted either way.
        match this.poll_write_op(cx) {
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            _ => Poll::Ready(Ok(data.len())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_write_op(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_write_op(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        Poll::Ready(this.stream.shutdown(std::net::Shutdown::Write))
    }
}
