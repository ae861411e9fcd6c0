//! The MQTT front end: MQTT 3.1.1 and 5 on TCP and optionally TLS (rustls), on threads of its
//! own, separate from the tokio-uring HTTP runtimes.
//!
//! One thread accepts connections on every listener and hands them out in turn to `workers`
//! worker threads, each a single-threaded tokio runtime (epoll) running its connections as
//! tasks. ntex-mqtt's codec decodes and encodes the packets; the connection loop around it is
//! ours (`connection`): ntex-mqtt's own server spent about half of the MQTT threads' CPU per
//! QoS 1 message in its service machinery and held 9 KiB per idle connection, where this loop
//! holds about 2 (issue 22, docs/bench-log/mqtt.md).
//!
//! The modules, each importing only those listed before it:
//!
//! - `types`: who a connection speaks for, refusals and close reasons;
//! - `packet`: what is read of a packet without decoding it (where it ends, a CONNECT's
//!   protocol, a topic alias);
//! - `protocol`: the two versions' codecs behind one type, and the answers' layouts;
//! - `exactly_once`: QoS 2 receipt;
//! - `throttle`: slows down failing CONNECTs;
//! - `connecting`: bounds the connections that have not authenticated yet;
//! - `batcher`: a connection's queue of WAL records, appended through the admission path;
//! - `ingest`: the CONNECT check and one PUBLISH through the [admission steps](crate::admit);
//! - `inflight`: a connection's publishes waiting for their outcome, answered in order;
//! - `watch`: one task per worker thread that closes its sessions when taken over or no
//!   longer allowed;
//! - `sessions`: live sessions across the worker threads, for takeover;
//! - `connection`: one connection from its CONNECT to its close.
//!
//! A QoS 1 PUBACK or QoS 2 PUBREC is sent only once the event is durable in the WAL.

mod batcher;
mod connecting;
mod connection;
mod exactly_once;
mod inflight;
pub(crate) mod ingest;
mod packet;
mod protocol;
mod sessions;
pub(crate) mod throttle;
mod types;
mod watch;

use std::cell::Cell;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use sluice_storage::shutdown::Shutdown;

use crate::config::MqttConfig;
use connecting::Connecting;
use connection::Worker;
use ingest::MqttIngest;
use sessions::Sessions;

/// Pending connections the kernel keeps per listener while the node is at
/// `mqtt.connections_max` or busy accepting.
const BACKLOG: i32 = 2048;

/// `mqtt.io_driver`, kept so that configurations naming it still start. The MQTT threads run
/// on epoll (tokio); `io_uring` is taken and logged as unused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoDriver {
    Epoll,
    IoUring,
}

impl std::str::FromStr for IoDriver {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "epoll" => Ok(IoDriver::Epoll),
            "io_uring" | "io-uring" | "uring" => Ok(IoDriver::IoUring),
            other => Err(format!(
                "unknown I/O driver {other:?}: use epoll or io_uring"
            )),
        }
    }
}

/// A running MQTT front end; it stops on the shutdown signal.
pub struct MqttServer {
    addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    /// The accepting thread and the worker threads.
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// An accepted connection on its way to a worker thread.
struct NewConnection {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    /// Its place among `mqtt.connections_max`, given back when it closes.
    open: OwnedSemaphorePermit,
}

impl MqttServer {
    /// Binds the configured listeners and starts serving them. Returns `Ok(None)` when no
    /// listener is configured.
    pub fn start(ingest: Arc<MqttIngest>, shutdown: Shutdown) -> io::Result<Option<MqttServer>> {
        let limits = ingest.limits.clone();
        let plain = limits.addr.map(bind).transpose()?;
        let tls = match limits.tls_addr {
            Some(addr) => Some((bind(addr)?, TlsAcceptor::from(tls_config(&limits)?))),
            None => None,
        };
        let addr = plain.as_ref().map(TcpListener::local_addr).transpose()?;
        let tls_addr = tls
            .as_ref()
            .map(|(listener, _)| listener.local_addr())
            .transpose()?;
        if plain.is_none() && tls.is_none() {
            return Ok(None);
        }
        if limits.io_driver == IoDriver::IoUring {
            warn!("mqtt.io_driver = \"io_uring\" is not used any more: MQTT runs on epoll");
        }
        let workers = match limits.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let sessions = Arc::new(Sessions::default());
        let connecting = Connecting::new(limits.connecting_max);
        let mut threads = Vec::with_capacity(workers + 1);
        let mut senders = Vec::with_capacity(workers);
        for i in 0..workers {
            let (tx, rx) = unbounded_channel();
            senders.push(tx);
            let worker = Worker {
                ingest: ingest.clone(),
                sessions: sessions.clone(),
                connecting: connecting.clone(),
            };
            let (runtime, shutdown) = (runtime()?, shutdown.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("sluice-mqtt-{i}"))
                    .spawn(move || run_worker(&runtime, rx, worker, shutdown))?,
            );
        }
        let listeners: Vec<_> = plain
            .map(|listener| (listener, None))
            .into_iter()
            .chain(tls.map(|(listener, acceptor)| (listener, Some(acceptor))))
            .collect();
        let open = Arc::new(Semaphore::new(
            limits.connections_max.clamp(1, Semaphore::MAX_PERMITS),
        ));
        let runtime = runtime()?;
        threads.push(
            std::thread::Builder::new()
                .name("sluice-mqtt-accept".into())
                .spawn(move || run_acceptor(&runtime, listeners, senders, open, shutdown))?,
        );
        if let Some(addr) = addr {
            info!(%addr, workers, "MQTT listening");
        }
        if let Some(addr) = tls_addr {
            info!(%addr, "MQTT over TLS listening");
        }
        Ok(Some(MqttServer {
            addr,
            tls_addr,
            threads,
        }))
    }

    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Waits for the MQTT threads to end (after the shutdown signal).
    pub fn join(self) {
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// The runtime of one MQTT thread, made before the thread so that a failure stops the start.
fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| io::Error::new(e.kind(), format!("starting an MQTT thread's runtime: {e}")))
}

/// Accepts connections until the shutdown signal, waiting while `mqtt.connections_max` are
/// open (the kernel's backlog holds the next ones), and hands them to the workers in turn.
fn run_acceptor(
    rt: &tokio::runtime::Runtime,
    listeners: Vec<(TcpListener, Option<TlsAcceptor>)>,
    workers: Vec<UnboundedSender<NewConnection>>,
    open: Arc<Semaphore>,
    mut shutdown: Shutdown,
) {
    let local = tokio::task::LocalSet::new();
    local.block_on(rt, async move {
        let workers = Rc::new(workers);
        let next = Rc::new(Cell::new(0usize));
        for (listener, tls) in listeners {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(err) => {
                    error!(error = %err, "cannot accept MQTT connections");
                    continue;
                }
            };
            let (workers, next, open) = (workers.clone(), next.clone(), open.clone());
            tokio::task::spawn_local(async move {
                loop {
                    let Ok(place) = open.clone().acquire_owned().await else {
                        return;
                    };
                    let (stream, peer) = match listener.accept().await {
                        Ok(accepted) => accepted,
                        Err(err) => {
                            // Out of descriptors, typically: wait for some to close.
                            warn!(error = %err, "accepting an MQTT connection failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    // Answers are small and go out as soon as they are known.
                    let _ = stream.set_nodelay(true);
                    let Ok(stream) = stream.into_std() else {
                        continue;
                    };
                    let at = next.get();
                    next.set(at.wrapping_add(1));
                    let _ = workers[at % workers.len()].send(NewConnection {
                        stream,
                        peer,
                        tls: tls.clone(),
                        open: place,
                    });
                }
            });
        }
        // Returning ends the accepting tasks and closes the listeners.
        shutdown.requested().await;
    });
}

/// The connections of one worker thread that have not ended yet.
#[derive(Default)]
struct Live {
    count: Cell<usize>,
    ended: Notify,
}

/// One live connection, counted until its task ends.
struct LiveConnection(Rc<Live>);

impl Drop for LiveConnection {
    fn drop(&mut self) {
        let live = &self.0;
        live.count.set(live.count.get() - 1);
        if live.count.get() == 0 {
            live.ended.notify_waiters();
        }
    }
}

/// Serves the connections handed to this worker thread. On the shutdown signal the thread's
/// watch closes every session (MQTT 5: DISCONNECT 0x8B), and the connections get until the
/// deadline to answer what they are storing and end.
fn run_worker(
    rt: &tokio::runtime::Runtime,
    mut incoming: UnboundedReceiver<NewConnection>,
    worker: Worker,
    mut shutdown: Shutdown,
) {
    let local = tokio::task::LocalSet::new();
    local.block_on(rt, async move {
        let worker = Rc::new(worker);
        let live = Rc::new(Live::default());
        let deadline = loop {
            tokio::select! {
                deadline = shutdown.requested() => break deadline,
                new = incoming.recv() => match new {
                    Some(new) => {
                        live.count.set(live.count.get() + 1);
                        let counted = LiveConnection(live.clone());
                        tokio::task::spawn_local(serve_new(new, worker.clone(), counted));
                    }
                    // The acceptor ends only at shutdown.
                    None => break shutdown.requested().await,
                },
            }
        };
        // Accepted and not started: closed unserved, as the node is stopping.
        incoming.close();
        while incoming.try_recv().is_ok() {}
        let all_ended = async {
            while live.count.get() > 0 {
                let ended = live.ended.notified();
                if live.count.get() == 0 {
                    break;
                }
                ended.await;
            }
        };
        let _ = tokio::time::timeout_at(deadline.into(), all_ended).await;
    });
}

/// Serves one accepted connection. (Not an `async fn`, which would keep the whole
/// `NewConnection` in the future besides what it is taken apart into.)
fn serve_new(
    new: NewConnection,
    worker: Rc<Worker>,
    live: LiveConnection,
) -> impl std::future::Future<Output = ()> {
    let NewConnection {
        stream,
        peer,
        tls,
        open,
    } = new;
    let peer = Some(peer.ip());
    async move {
        let _counted = (open, live);
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(err) => {
                debug!(error = %err, "an accepted MQTT connection could not be registered");
                return;
            }
        };
        match tls {
            None => connection::serve(stream, peer, worker).await,
            // Boxed: a TLS stream is far larger than a socket, and plain connections should
            // not carry its room.
            Some(acceptor) => Box::pin(serve_tls(acceptor, stream, peer, worker)).await,
        }
    }
}

async fn serve_tls(
    acceptor: TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: Option<std::net::IpAddr>,
    worker: Rc<Worker>,
) {
    let timeout = Duration::from_secs(worker.ingest.limits.connect_timeout_secs.into());
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => connection::serve(stream, peer, worker).await,
        Ok(Err(err)) => debug!(error = %err, "TLS handshake failed"),
        Err(_) => debug!("TLS handshake timed out"),
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let bound = (|| {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        socket.set_nonblocking(true)?;
        Ok(TcpListener::from(socket))
    })();
    bound.map_err(|e: io::Error| io::Error::new(e.kind(), format!("binding MQTT on {addr}: {e}")))
}

fn tls_config(limits: &MqttConfig) -> io::Result<Arc<rustls::ServerConfig>> {
    let (Some(cert), Some(key)) = (&limits.tls_cert, &limits.tls_key) else {
        return Err(io::Error::other(
            "mqtt.tls_addr needs mqtt.tls_cert and mqtt.tls_key (PEM files)",
        ));
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| io::Error::other(format!("reading {}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| io::Error::other(format!("reading {}: {e}", key.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(io::Error::other)?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| io::Error::other(format!("the MQTT TLS certificate or key: {e}")))?;
    Ok(Arc::new(config))
}
