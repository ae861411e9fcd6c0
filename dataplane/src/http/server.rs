//! The HTTP front end: one tokio-uring runtime per thread, each with its own `SO_REUSEPORT`
//! listener so the kernel spreads connections across cores, hyper serving every connection
//! through [`UringIo`].
//!
//! Limits enforced here: the connection count (over it, new connections are closed at once),
//! the request-head size and read timeout (hyper), and the idle timeout ([`UringIo`]).

use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use sluice_storage::shutdown::Shutdown;
use socket2::{Domain, Socket, Type};
use tracing::{debug, info, warn};

use super::api::Api;
use super::uring_io::UringIo;

/// The running front end.
pub struct HttpServer {
    addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `api.limits.addr` and starts the runtimes. On `shutdown` they stop accepting, let
    /// requests in flight finish until its deadline, then close the rest.
    pub fn start(api: Arc<Api>, shutdown: Shutdown) -> std::io::Result<HttpServer> {
        let threads = match api.limits.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let first = bind(api.limits.addr)?;
        let addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..threads {
            listeners.push(bind(addr)?);
        }
        let open = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let api = api.clone();
            let shutdown = shutdown.clone();
            let open = open.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("sluice-http-{i}"))
                    .spawn(move || {
                        tokio_uring::builder()
                            .entries(1024)
                            .uring_builder(&ring_setup())
                            .start(accept_loop(listener, api, shutdown, open));
                    })?,
            );
        }
        info!(%addr, threads, "HTTP ingest listening (io_uring)");
        Ok(HttpServer {
            addr,
            threads: handles,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits for every runtime to end (after the shutdown signal).
    pub fn join(self) {
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// io_uring setup for the HTTP runtimes. By default the kernel interrupts the thread (through
/// the signal path) to run completion work as soon as a socket read finishes; with cooperative
/// task running it runs that work at the thread's next ring entry instead, which a profile of
/// single-event ingest showed to be a large share of the HTTP thread's kernel time. Kernels
/// before 5.19 lack the flags; they get the default setup.
fn ring_setup() -> io_uring::Builder {
    let mut cooperative = tokio_uring::uring_builder();
    cooperative.setup_coop_taskrun().setup_taskrun_flag();
    if cooperative.build(8).is_ok() {
        cooperative
    } else {
        tokio_uring::uring_builder()
    }
}

/// A listener on `addr` with `SO_REUSEPORT`, so that each runtime can have its own on the same
/// port. Also used by the benchmark's io_uring baseline, to listen exactly as Sluice does.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A timer that always fires within this long keeps the runtime's next wake-up close. Every
/// request arms timers later than that (hyper's head-read timeout, the idle timeout), and
/// tokio wakes its driver (an eventfd write, then an extra `epoll_wait` return) whenever a new
/// timer is earlier than the next wake-up it parked for; with none pending, that was once per
/// request.
const TIMER_FLOOR: Duration = Duration::from_millis(500);

async fn accept_loop(
    listener: std::net::TcpListener,
    api: Arc<Api>,
    mut shutdown: Shutdown,
    open: Arc<AtomicUsize>,
) {
    let listener = tokio_uring::net::TcpListener::from_std(listener);
    let local = Rc::new(Cell::new(0usize));
    // Ends with the runtime, when this loop returns.
    tokio_uring::spawn(async {
        let mut floor = tokio::time::interval(TIMER_FLOOR);
        floor.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            floor.tick().await;
        }
    });
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if open.fetch_add(1, Ordering::AcqRel) >= api.limits.connections_max {
                        open.fetch_sub(1, Ordering::AcqRel);
                        api.metrics.connections_refused_total.inc();
                        debug!(%peer, "connection limit reached; closing new connection");
                        drop(stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    api.metrics.connections.inc();
                    local.set(local.get() + 1);
                    let (api, shutdown, open, local) =
                        (api.clone(), shutdown.clone(), open.clone(), local.clone());
                    tokio_uring::spawn(async move {
                        serve(stream, api.clone(), shutdown).await;
                        api.metrics.connections.dec();
                        open.fetch_sub(1, Ordering::AcqRel);
                        local.set(local.get() - 1);
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            _ = shutdown.requested() => break,
        }
    }
    // Closed now, not when the runtime ends: a connection the kernel would queue on it meanwhile
    // is never served; refused, it goes (through the balancer) to another node.
    drop(listener);
    let deadline = shutdown.deadline().unwrap_or_else(Instant::now);
    while local.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn serve(stream: tokio_uring::net::TcpStream, api: Arc<Api>, mut shutdown: Shutdown) {
    let limits = &api.limits;
    let io = UringIo::new(stream, Duration::from_millis(limits.idle_timeout_ms));
    let handler = api.clone();
    let service = hyper::service::service_fn(move |req| {
        let api = handler.clone();
        async move { Ok::<_, Infallible>(api.handle(req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Some(Duration::from_millis(limits.header_read_timeout_ms)))
        .max_buf_size(limits.header_bytes_max.max(8192))
        // At most 100 headers: hyper's default. Not set with `max_headers(100)`, which makes
        // hyper fill a 100-slot vector element by element on every request (1% of this
        // thread in a single-event profile) where the default uses an inline array.
        .serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.requested() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        debug!(error = %err, "connection ended with an error");
    }
}
