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

use sluice_dataplane::bench_api as http_server;
use sluice_dataplane::bench_api::UringIo;

/// Name of the baseline's runtime threads; the CPU probe finds them by it.
pub const THREAD_NAME: &str = "bench-server";

/// Either baseline, running.
pub enum Server {
    Tokio(Baseline),
    Uring(UringBaseline),
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Server::Tokio(server) => server.addr(),
            Server::Uring(server) => server.addr(),
        }
    }

    pub fn stop(self) {
        match self {
            Server::Tokio(server) => server.stop(),
            Server::Uring(server) => server.stop(),
        }
    }
}

/// The running baseline server.
pub struct Baseline {
    runtime: Runtime,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
}

/// The same bare server on Sluice's own HTTP transport: one tokio-uring runtime per thread,
/// each with its own `SO_REUSEPORT` listener, hyper over [`UringIo`]. Set against
/// [`Baseline`], it shows what the io_uring transport itself costs or saves; set against
/// Sluice, what everything above the transport costs.
pub struct UringBaseline {
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl UringBaseline {
    pub fn start(threads: usize) -> Result<UringBaseline> {
        let first = http_server::bind((std::net::Ipv4Addr::LOCALHOST, 0).into())
            .context("binding the baseline server")?;
        let addr = first.local_addr().context("reading the baseline address")?;
        let mut listeners = vec![first];
        for _ in 1..threads {
            listeners.push(http_server::bind(addr).context("binding the baseline server")?);
        }
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut handles = Vec::new();
        for listener in listeners {
            let mut stop_rx = stop_rx.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(THREAD_NAME.into())
                    .spawn(move || {
                        tokio_uring::start(async move {
                            let listener = tokio_uring::net::TcpListener::from_std(listener);
                            loop {
                                tokio::select! {
                                    _ = stop_rx.changed() => break,
                                    accepted = listener.accept() => match accepted {
                                        Ok((stream, _)) => {
                                            tokio_uring::spawn(serve_uring(stream));
                                        }
                                        Err(_) => {
                                            tokio::time::sleep(Duration::from_millis(10)).await
                                        }
                                    },
                                }
                            }
                        })
                    })
                    .context("starting a baseline thread")?,
            );
        }
        Ok(UringBaseline {
            addr,
            stop,
            threads: handles,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting; each runtime ends, dropping its connections.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

async fn serve_uring(stream: tokio_uring::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let io = UringIo::new(stream, Duration::from_secs(60));
    let _ = http1::Builder::new()
        .serve_connection(io, hyper::service::service_fn(answer_204))
        .await;
}

/// Receives the whole body, as any ingest server must (otherwise the ceiling would not include
/// moving the bytes), and answers 204.
async fn answer_204(req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, Infallible> {
    let _ = req.into_body().collect().await;
    let mut response = Response::new(Empty::<Bytes>::new());
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
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
    let service = hyper::service::service_fn(answer_204);
    // Errors here are clients going away at the end of a run; nothing to report.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
