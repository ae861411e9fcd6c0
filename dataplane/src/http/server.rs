//! The HTTP front end: one single-threaded runtime per thread, each with its own
//! `SO_REUSEPORT` listener so the kernel spreads connections across cores, hyper serving every
//! connection. The runtime is tokio-uring with [`UringIo`], or, where io_uring is refused or
//! not wanted (`http.io_driver`, [`io_driver`](super::io_driver)), a current-thread tokio
//! runtime (epoll) with [`EpollIo`]. Everything else, the accept loop, the limits and the
//! shutdown, is the same code for both ([`Transport`]).
//!
//! Limits enforced here: the connection count (over it, new connections are closed at once),
//! the request-head size and read timeout (hyper), and the idle timeout (the I/O adapters).

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use prometheus_client::metrics::gauge::Gauge;
use sluice_storage::shutdown::Shutdown;
use socket2::{Domain, Socket, Type};
use tracing::{debug, info, warn};

use super::api::Api;
use super::epoll_io::EpollIo;
use super::io_driver::{self, Driver, HttpIoDriver, IoUringUnavailable};
use super::uring_io::UringIo;
use crate::metrics::IoDriverLabel;

/// Why the front end did not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpStartError {
    #[error(transparent)]
    IoUring(#[from] IoUringUnavailable),
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> HttpStartError {
    move |source| HttpStartError::Io { context, source }
}

/// The running front end.
pub struct HttpServer {
    addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl HttpServer {
    /// Resolves `api.limits.io_driver`, binds `api.limits.addr` and starts the runtimes. On
    /// `shutdown` they stop accepting, let requests in flight finish until its deadline, then
    /// close the rest.
    pub fn start(api: Arc<Api>, shutdown: Shutdown) -> Result<HttpServer, HttpStartError> {
        let driver = io_driver::resolve(api.limits.io_driver)?;
        let threads = match api.limits.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let first = bind(api.limits.addr).map_err(io("binding the listener"))?;
        let addr = first
            .local_addr()
            .map_err(io("reading the listener's address"))?;
        let mut listeners = vec![first];
        for _ in 1..threads {
            listeners.push(bind(addr).map_err(io("binding the listener"))?);
        }
        let open = Arc::new(AtomicUsize::new(0));
        let fallback = api.limits.io_driver == HttpIoDriver::Auto;
        // Each thread says whether its runtime started, so that a failure is the node's start
        // error rather than a thread that quietly serves nothing.
        let (started_tx, started_rx) = mpsc::channel();
        let mut handles = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let api = api.clone();
            let shutdown = shutdown.clone();
            let open = open.clone();
            let started = started_tx.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("sluice-http-{i}"))
                    .spawn(move || match driver {
                        Driver::IoUring => {
                            run_uring(listener, api, shutdown, open, started, fallback)
                        }
                        Driver::Epoll => run_epoll(listener, api, shutdown, open, started),
                    })
                    .map_err(io("spawning an HTTP thread"))?,
            );
        }
        drop(started_tx);
        for _ in 0..handles.len() {
            match started_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(source)) => {
                    return Err(HttpStartError::Io {
                        context: "starting an HTTP runtime",
                        source,
                    })
                }
                Err(_) => {
                    return Err(HttpStartError::Io {
                        context: "starting an HTTP runtime",
                        source: std::io::Error::other("an HTTP thread ended during start"),
                    })
                }
            }
        }
        info!(%addr, threads, io_driver = driver.name(), "HTTP ingest listening");
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

type Started = mpsc::Sender<std::io::Result<()>>;

/// One io_uring thread: a tokio-uring runtime (itself a current-thread tokio runtime driven
/// by the ring) serving `listener`. With `fallback` (`auto`), a thread whose ring cannot be
/// set up although the probe's could (rings charged to `RLIMIT_MEMLOCK` together, on kernels
/// before 5.12) serves on epoll rather than keep the node from starting.
fn run_uring(
    listener: std::net::TcpListener,
    api: Arc<Api>,
    shutdown: Shutdown,
    open: Arc<AtomicUsize>,
    started: Started,
    fallback: bool,
) {
    let runtime = match tokio_uring::Runtime::new(
        tokio_uring::builder()
            .entries(io_driver::RING_ENTRIES)
            .uring_builder(&io_driver::ring_setup()),
    ) {
        Ok(runtime) => runtime,
        Err(err) if fallback => {
            warn!(error = %err, "this HTTP thread cannot set up its io_uring ring; it runs on epoll");
            return run_epoll(listener, api, shutdown, open, started);
        }
        Err(err) => {
            let _ = started.send(Err(err));
            return;
        }
    };
    let threads = count_thread(&api, Driver::IoUring);
    let _ = started.send(Ok(()));
    runtime.block_on(accept_loop::<Uring>(listener, api.clone(), shutdown, open));
    threads.dec();
}

/// One epoll thread: a current-thread tokio runtime, its tasks on a `LocalSet` as tokio-uring
/// runs them, so that both drivers run the same (not `Send`) connection code.
fn run_epoll(
    listener: std::net::TcpListener,
    api: Arc<Api>,
    shutdown: Shutdown,
    open: Arc<AtomicUsize>,
    started: Started,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            let _ = started.send(Err(err));
            return;
        }
    };
    let threads = count_thread(&api, Driver::Epoll);
    let _ = started.send(Ok(()));
    tokio::task::LocalSet::new().block_on(
        &runtime,
        accept_loop::<Epoll>(listener, api.clone(), shutdown, open),
    );
    threads.dec();
}

/// Counts this thread in `sluice_http_threads` for `driver`; the caller counts it out when it
/// ends.
fn count_thread(api: &Api, driver: Driver) -> Gauge {
    // A clone, not the family's guard: that would hold its lock while the thread runs.
    let threads = api
        .metrics
        .http_threads
        .get_or_create(&IoDriverLabel {
            io_driver: driver.name(),
        })
        .clone();
    threads.inc();
    threads
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

/// What the two drivers do differently; the rest of a thread's work is [`accept_loop`] and
/// [`serve`], the same for both.
trait Transport: 'static {
    type Listener;
    /// A connection as hyper I/O, with the idle timeout.
    type Io: hyper::rt::Read + hyper::rt::Write + Unpin + 'static;

    /// The thread's listener on its runtime (called inside it).
    fn listen(listener: std::net::TcpListener) -> std::io::Result<Self::Listener>;

    /// The next connection, its Nagle delay off (answers are written whole).
    fn accept(
        listener: &Self::Listener,
        idle_timeout: Duration,
    ) -> impl Future<Output = std::io::Result<(Self::Io, SocketAddr)>>;

    /// Runs `task` on this thread's runtime.
    fn spawn(task: impl Future<Output = ()> + 'static);
}

/// tokio-uring: owned-buffer operations on the ring ([`UringIo`]).
struct Uring;

impl Transport for Uring {
    type Listener = tokio_uring::net::TcpListener;
    type Io = UringIo;

    fn listen(listener: std::net::TcpListener) -> std::io::Result<Self::Listener> {
        Ok(tokio_uring::net::TcpListener::from_std(listener))
    }

    async fn accept(
        listener: &Self::Listener,
        idle_timeout: Duration,
    ) -> std::io::Result<(UringIo, SocketAddr)> {
        let (stream, peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((UringIo::new(stream, idle_timeout), peer))
    }

    fn spawn(task: impl Future<Output = ()> + 'static) {
        tokio_uring::spawn(task);
    }
}

/// tokio on epoll ([`EpollIo`]).
struct Epoll;

impl Transport for Epoll {
    type Listener = tokio::net::TcpListener;
    type Io = EpollIo;

    fn listen(listener: std::net::TcpListener) -> std::io::Result<Self::Listener> {
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)
    }

    async fn accept(
        listener: &Self::Listener,
        idle_timeout: Duration,
    ) -> std::io::Result<(EpollIo, SocketAddr)> {
        let (stream, peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((EpollIo::new(stream, idle_timeout), peer))
    }

    fn spawn(task: impl Future<Output = ()> + 'static) {
        tokio::task::spawn_local(task);
    }
}

async fn accept_loop<T: Transport>(
    listener: std::net::TcpListener,
    api: Arc<Api>,
    mut shutdown: Shutdown,
    open: Arc<AtomicUsize>,
) {
    let listener = match T::listen(listener) {
        Ok(listener) => listener,
        Err(err) => {
            // Only `set_nonblocking` or the epoll registration can fail here, on a socket
            // that was just bound: nothing this thread can serve without.
            warn!(error = %err, "cannot register the HTTP listener; this thread serves nothing");
            return;
        }
    };
    let idle_timeout = Duration::from_millis(api.limits.idle_timeout_ms);
    let local = Rc::new(Cell::new(0usize));
    // This thread's WAL appends are answered in one wake-up per group commit (`wal::Lane`);
    // the dispatcher ends with the runtime.
    api.admission.wal_lane_here(T::spawn);
    // Ends with the runtime, when this loop returns.
    T::spawn(async {
        let mut floor = tokio::time::interval(TIMER_FLOOR);
        floor.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            floor.tick().await;
        }
    });
    loop {
        tokio::select! {
            accepted = T::accept(&listener, idle_timeout) => match accepted {
                Ok((io, peer)) => {
                    if open.fetch_add(1, Ordering::AcqRel) >= api.limits.connections_max {
                        open.fetch_sub(1, Ordering::AcqRel);
                        api.metrics.connections_refused_total.inc();
                        debug!(%peer, "connection limit reached; closing new connection");
                        drop(io);
                        continue;
                    }
                    api.metrics.connections.inc();
                    local.set(local.get() + 1);
                    let (api, shutdown, open, local) =
                        (api.clone(), shutdown.clone(), open.clone(), local.clone());
                    T::spawn(async move {
                        serve(io, api.clone(), shutdown).await;
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

async fn serve<I>(io: I, api: Arc<Api>, mut shutdown: Shutdown)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    let limits = &api.limits;
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
