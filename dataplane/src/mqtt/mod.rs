//! The MQTT front end: MQTT 3.1.1 and 5 on ntex-mqtt, on TCP and optionally TLS (rustls).
//!
//! It runs on its own ntex system (a thread of its own plus `workers` worker threads, each
//! with its own I/O driver, epoll by default, see `runtime` for why), separate from the
//! tokio-uring HTTP runtimes. The modules, each importing only those listed before it:
//!
//! - `types`: who a connection speaks for, refusals and close reasons, the connection error;
//! - `packet`: where a packet ends in a buffer (the fixed header);
//! - `conformance`: what the MQTT specifications ask that ntex-mqtt does not do, answered on
//!   whole packets before the codec sees them;
//! - `inflight`: bounds the packets a connection has in flight;
//! - `throttle`: slows down failing CONNECTs;
//! - `connecting`: bounds the connections that have not authenticated yet;
//! - `batcher`: a connection's queue of WAL records, appended through the admission path;
//! - `ingest`: the CONNECT check and one PUBLISH through the [admission steps](crate::admit);
//! - `lane`: plain QoS 0 publishes stored straight from the read buffer;
//! - `framing`: hands the codec whole packets only, after offering them to the lane;
//! - `watch`: one task per worker thread that closes its sessions when taken over or no
//!   longer allowed;
//! - `sessions`: live sessions across the worker threads, for takeover;
//! - `connect`: what both versions do around a CONNECT and a connection's end;
//! - `v3` and `v5`: the version glue, mapping outcomes to packets.
//!
//! A QoS 1 PUBACK or QoS 2 PUBREC is sent only once the event is durable in the WAL.

mod batcher;
mod conformance;
mod connect;
mod connecting;
mod framing;
mod inflight;
pub(crate) mod ingest;
mod lane;
mod packet;
pub(crate) mod runtime;
mod sessions;
pub(crate) mod throttle;
mod types;
mod v3;
mod v5;
mod watch;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ntex_mqtt::MqttServiceConfig;
use ntex_server::net::Connection;
use ntex_service::cfg::SharedCfg;
use ntex_util::time::Seconds;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{error, info};

use sluice_storage::shutdown::Shutdown;

use crate::config::MqttConfig;
use connecting::{Connecting, ConnectingSlot};
use ingest::MqttIngest;
use sessions::Sessions;
use types::MqttError;

/// A running MQTT front end; it stops on the shutdown signal.
pub struct MqttServer {
    addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    /// The ntex system's thread.
    thread: std::thread::JoinHandle<()>,
    /// Waits for the shutdown signal, then stops the ntex server and system.
    stopper: std::thread::JoinHandle<()>,
}

impl MqttServer {
    /// Binds the configured listeners and starts serving them. Returns `Ok(None)` when no
    /// listener is configured.
    pub fn start(ingest: Arc<MqttIngest>, shutdown: Shutdown) -> io::Result<Option<MqttServer>> {
        let limits = ingest.limits.clone();
        let plain = limits.addr.map(bind).transpose()?;
        let tls = match limits.tls_addr {
            Some(addr) => Some((bind(addr)?, tls_config(&limits)?)),
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

        let io_driver = limits.io_driver;
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("sluice-mqtt".into())
            .spawn(move || {
                let runner = ntex_rt::System::build()
                    .name("sluice-mqtt")
                    // The process's signals are the node's to handle, not ntex's.
                    .disable_signals()
                    .build(runtime::MqttRuntime(io_driver));
                let result = runner.run(move || {
                    let server = serve(ingest, Arc::new(Sessions::default()), plain, tls)?;
                    let _ = started_tx.send(Ok((server, ntex_rt::System::current())));
                    Ok(())
                });
                if let Err(err) = result {
                    error!(error = %err, "the MQTT runtime stopped with an error");
                }
            })?;
        let (server, system) = started_rx
            .recv()
            .map_err(|_| io::Error::other("the MQTT runtime did not start"))
            .and_then(|r: io::Result<_>| r)?;
        if let Some(addr) = addr {
            info!(%addr, "MQTT listening");
        }
        if let Some(addr) = tls_addr {
            info!(%addr, "MQTT over TLS listening");
        }
        let stopper = std::thread::Builder::new()
            .name("sluice-mqtt-stop".into())
            .spawn(move || stop_on(shutdown, server, system))?;
        Ok(Some(MqttServer {
            addr,
            tls_addr,
            thread,
            stopper,
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
        let _ = self.stopper.join();
        let _ = self.thread.join();
    }
}

/// On the shutdown signal: stops accepting, gives open connections until the deadline to
/// finish what they are storing, then stops the MQTT threads.
fn stop_on(
    mut shutdown: Shutdown,
    server: ntex_server::Server<Connection>,
    system: ntex_rt::System,
) {
    let deadline = futures::executor::block_on(shutdown.requested());
    let stop = server.stop(true);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    // Detached on purpose: ntex's graceful stop may outlive the deadline, and the system is
    // stopped then anyway, which ends it.
    std::thread::spawn(move || {
        futures::executor::block_on(stop);
        let _ = done_tx.send(());
    });
    let _ = done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    system.stop();
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    ntex_server::net::create_tcp_listener(addr, 2048)
        .map_err(|e| io::Error::new(e.kind(), format!("binding MQTT on {addr}: {e}")))
}

/// Builds the ntex server on the current (MQTT) system.
fn serve(
    ingest: Arc<MqttIngest>,
    sessions: Arc<Sessions>,
    plain: Option<TcpListener>,
    tls: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
) -> io::Result<ntex_server::Server<Connection>> {
    let limits = &ingest.limits;
    let workers = match limits.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let cfg = service_config(limits);
    let mut builder = ntex_server::net::ServerBuilder::new(ntex_server::NoConfig)
        .name("sluice-mqtt")
        .workers(workers)
        .disable_signals()
        // ntex counts per worker.
        .maxconn(limits.connections_max.div_ceil(workers).max(1))
        .shutdown_timeout(Seconds(5));
    let connecting = Connecting::new(limits.connecting_max);
    let wait = Duration::from_secs(limits.connect_timeout_secs.into());
    let admission = Admission {
        connecting,
        waiting: ingest.metrics.mqtt.connecting_waiting.clone(),
        packet_bytes_max: limits.packet_bytes_max,
        connect_bytes_max: limits.connect_bytes_max,
        wait,
    };
    if let Some(listener) = plain {
        let ingest = ingest.clone();
        let sessions = sessions.clone();
        let admission = admission.clone();
        builder = builder.listen("mqtt", listener, cfg.clone(), async move |_| {
            let admission = admission.clone();
            ntex_service::service(ntex_service::fn_service(move |io: ntex_io::Io| {
                let admission = admission.clone();
                async move { Ok::<_, ntex_mqtt::MqttError<MqttError>>(admission.admit(io).await) }
            }))
            .and_then(mqtt_service(ingest.clone(), sessions.clone()))
        })?;
    }
    if let Some((listener, tls_config)) = tls {
        let ingest = ingest.clone();
        builder = builder.listen("mqtts", listener, cfg, async move |_| {
            let admission = admission.clone();
            ntex_service::service(ntex_tls::rustls::TlsAcceptor::new(tls_config.clone()))
                .map_err(|e| ntex_mqtt::MqttError::Service(tls_error(&e)))
                .and_then(ntex_service::fn_service(move |io: ntex_io::Io<_>| {
                    let admission = admission.clone();
                    async move {
                        Ok::<_, ntex_mqtt::MqttError<MqttError>>(admission.admit(io).await)
                    }
                }))
                .and_then(mqtt_service(ingest.clone(), sessions.clone()))
        })?;
    }
    Ok(builder.run())
}

/// What a new connection gets before its CONNECT is read: the framing filter, and a place among
/// the connections not authenticated yet (see `connecting`).
#[derive(Clone)]
struct Admission {
    connecting: Arc<Connecting>,
    /// `sluice_mqtt_connecting_waiting`.
    waiting: prometheus_client::metrics::gauge::Gauge,
    packet_bytes_max: u32,
    connect_bytes_max: u32,
    /// How long a connection waits for a place when all are taken (`mqtt.connect_timeout_secs`).
    wait: Duration,
}

impl Admission {
    /// Puts the framing filter on `io` at once (so that every byte read goes through it, and a
    /// CONNECT arriving meanwhile is bounded like any other), then waits, when every place is
    /// taken, for one to come free. A connection that gets none within the wait goes on without
    /// a place, and its CONNECT is answered "server busy": never closed without an answer.
    async fn admit<F: ntex_io::Filter>(
        &self,
        io: ntex_io::Io<F>,
    ) -> ntex_io::Io<ntex_io::Layer<framing::WholePackets, F>> {
        let placed = self.connecting.try_enter();
        let waits = placed.is_none();
        let filter = framing::WholePackets::new(
            self.packet_bytes_max,
            self.connect_bytes_max,
            placed.unwrap_or_else(ConnectingSlot::waiting),
        );
        let lane = filter.lane();
        let io = io.add_filter(filter);
        if waits {
            let counted = Waiting::count(&self.waiting);
            let entered = ntex_util::time::timeout(self.wait, self.connecting.enter()).await;
            drop(counted);
            match entered {
                Ok(slot) => lane.connecting(slot),
                Err(()) => tracing::debug!(
                    wait_secs = self.wait.as_secs(),
                    "no place among the connections authenticating within the connect timeout: \
                     the CONNECT is answered server busy"
                ),
            }
        }
        io
    }
}

/// One connection counted in `sluice_mqtt_connecting_waiting` while it waits, uncounted
/// however the wait ends (also when the future is dropped, at shutdown).
struct Waiting<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> Waiting<'a> {
    fn count(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Waiting<'a> {
        gauge.inc();
        Waiting(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn tls_error(err: &io::Error) -> MqttError {
    tracing::debug!(error = %err, "TLS handshake failed");
    MqttError::TlsHandshake
}

/// The MQTT 3.1.1 and 5 service of one connection.
fn mqtt_service<Req: ntex_service::RequestState<ntex_io::IoBoxed, State = ()>>(
    ingest: Arc<MqttIngest>,
    sessions: Arc<Sessions>,
) -> impl ntex_service::Service<(), Req, Res = (), Error = ntex_mqtt::MqttError<MqttError>> {
    let ingest5 = ingest.clone();
    let sessions5 = sessions.clone();
    // As ntex-mqtt's own middleware does: MQTT 3.1.1 bounds the count (MQTT 5's dispatcher
    // holds clients to the receive maximum of the CONNACK), both the bytes.
    let receive_max = ingest.limits.receive_max;
    let inflight_bytes =
        (ingest.limits.packet_bytes_max as usize).saturating_mul(receive_max as usize);
    ntex_mqtt::MqttServer::new()
        .v3(ntex_mqtt::v3::MqttServer::new(v3::publish)
            .replace_middlewares(inflight::InFlight {
                count: receive_max,
                bytes: inflight_bytes,
            })
            .protocol(v3::protocol)
            .control(v3::control)
            .build(move |connect| v3::connect(ingest.clone(), sessions.clone(), connect)))
        .v5(ntex_mqtt::v5::MqttServer::new(v5::publish)
            .replace_middlewares(inflight::InFlight {
                count: 0,
                bytes: inflight_bytes,
            })
            .protocol(v5::protocol)
            .control(v5::control)
            .build(move |connect| v5::connect(ingest5.clone(), sessions5.clone(), connect)))
}

fn service_config(limits: &MqttConfig) -> SharedCfg {
    SharedCfg::new("sluice-mqtt")
        // ntex's I/O defaults, given explicitly: ntex logs every connection that finds none.
        .add(ntex_io::IoConfig::new())
        .add(
            MqttServiceConfig::new()
                .set_max_size(limits.packet_bytes_max)
                .set_max_receive(limits.receive_max)
                .set_max_receive_size(
                    (limits.packet_bytes_max as usize).saturating_mul(limits.receive_max as usize),
                )
                .set_max_qos(ntex_mqtt::QoS::ExactlyOnce)
                .protocol_version_timeout(Seconds(limits.connect_timeout_secs))
                .set_connect_timeout(Seconds(limits.connect_timeout_secs))
                .set_handshake_timeout(Seconds(limits.connect_timeout_secs))
                // The codec sees whole packets only (`framing`); never stream payloads.
                .set_min_chunk_size(limits.packet_bytes_max)
                .set_max_payload_buffer_size(limits.packet_bytes_max as usize),
        )
        .build()
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
