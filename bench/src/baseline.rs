//! The ceiling: a bare hyper 1.x HTTP/1.1 server that reads each request body and answers
//! `204 No Content`, run in-process on its own tokio runtime.
//!
//! It does the least any ingest server must do (parse the request, receive the body, write a
//! response) and nothing else, so "Sluice req/s ÷ baseline req/s" shows what durability,
//! auth, validation and the rest cost on this machine. Its runtime gets the same number of
//! threads as Sluice gets HTTP threads (`--server-threads`, 1 by default): on a 2-core machine
//! the load generator needs the other core, and giving both servers the same thread budget
//! keeps the comparison fair.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// Name of the baseline's runtime threads; the CPU probe finds them by it.
pub const THREAD_NAME: &str = "bench-server";

/// The running baseline server.
pub struct Baseline {
    runtime: Runtime,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
}

impl Baseline {
    /// Binds 127.0.0.1 on an ephemeral port and starts serving on `threads` worker threads.
    pub fn start(threads: usize) -> Result<Baseline> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(THREAD_NAME)
            .enable_all()
            .build()
            .context("building the baseline server runtime")?;
        let listener = runtime
            .block_on(TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)))
            .context("binding the baseline server")?;
        let addr = listener
            .local_addr()
            .context("reading the baseline server address")?;
        let (stop, stop_rx) = oneshot::channel();
        runtime.spawn(accept_loop(listener, stop_rx));
        Ok(Baseline {
            runtime,
            addr,
            stop,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and tears the runtime down (open connections are dropped).
    pub fn stop(self) {
        let _ = self.stop.send(());
        self.runtime.shutdown_timeout(Duration::from_secs(2));
    }
}

async fn accept_loop(listener: TcpListener, mut stop: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream));
                }
                // Out of descriptors and the like: back off rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

async fn serve(stream: TcpStream) {
    // Same socket option as Sluice sets on its connections.
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
        // Receive the whole body, as any ingest server must; otherwise the ceiling would not
        // include moving the bytes.
        let _ = req.into_body().collect().await;
        let mut response = Response::new(Empty::<Bytes>::new());
        *response.status_mut() = StatusCode::NO_CONTENT;
        Ok::<_, Infallible>(response)
    });
    // Errors here are clients going away at the end of a run; nothing to report.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
