//! The HTTP API of a data-plane node: `POST /v1/ingest/{workspace}/{source}`, `/healthz`,
//! `/readyz` and `/metrics`.
//!
//! An ingest request is checked (token, workspace, source, type, size, rate, disk quota),
//! its body read within limits, decompressed within limits and parsed, and only then appended
//! to the WAL as one record. The 202 is sent after the WAL sync. Any refusal happens before the
//! append, so a refused request writes nothing, and a batch is accepted or refused whole.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use serde_json::json;
use sluice_config::snapshot::{is_valid_device_id, is_valid_slug, DEVICE_ID_LEN_MAX};
use sluice_config::token;
use sluice_storage::event::Protocol;
use sluice_storage::shipper::ShipperStatus;
use sluice_storage::wal::RECORD_BYTES_MAX;
use tokio::sync::Semaphore;

use super::budget::Reservation;
use super::cors;
use super::problem::{Problem, ProblemType};
use crate::access;
use crate::admit::{self, Admission, Refusal, Target};
use crate::config::HttpConfig;
use crate::config_stream::StreamStatus;
use crate::export::{ApiBody, Exports};
use crate::metrics::{NodeMetrics, Outcome};
use crate::parse::{BodyFormat, ParseError};
use crate::shape::Origin;
use sluice_config::shaping::OnInvalid;

/// Shared state of every HTTP runtime.
pub struct Api {
    /// The steps shared with MQTT.
    pub admission: Arc<Admission>,
    pub metrics: Arc<NodeMetrics>,
    pub shipper: Arc<ShipperStatus>,
    pub limits: HttpConfig,
    /// Bytes of bodies in memory, all requests together.
    pub inflight: Arc<Semaphore>,
    /// The control plane followed and how the stream is doing, for `/readyz`.
    pub config_stream: Option<(String, Arc<StreamStatus>)>,
    /// Set on SIGTERM, before the listeners close: `/readyz` answers 503 so that load
    /// balancers stop sending new connections while this node still serves them.
    pub draining: AtomicBool,
    /// Whether anyone (a load balancer, an orchestrator) has asked `/readyz` since start:
    /// the drain delay is worth waiting only if someone will see the node go unready.
    pub readiness_asked: AtomicBool,
    /// Export endpoints (`/v1/stream/...`).
    pub exports: Option<Arc<Exports>>,
}

type HttpResponse = Response<Full<Bytes>>;

impl Api {
    pub fn new(
        admission: Arc<Admission>,
        metrics: Arc<NodeMetrics>,
        shipper: Arc<ShipperStatus>,
        limits: HttpConfig,
        config_stream: Option<(String, Arc<StreamStatus>)>,
    ) -> Self {
        let inflight = Arc::new(Semaphore::new(
            limits.inflight_bytes_max.min(Semaphore::MAX_PERMITS),
        ));
        Api {
            admission,
            metrics,
            shipper,
            limits,
            inflight,
            config_stream,
            draining: AtomicBool::new(false),
            readiness_asked: AtomicBool::new(false),
            exports: None,
        }
    }

    /// Routes one request: export endpoints answer with a streamed body, the rest whole.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<ApiBody> {
        if req.uri().path().starts_with("/v1/stream/") {
            if let Some(exports) = &self.exports {
                return exports.serve(&self.admission.access, req).await;
            }
        }
        self.handle_whole(req).await.map(Either::Left)
    }

    async fn handle_whole(self: Arc<Self>, req: Request<Incoming>) -> HttpResponse {
        let path = req.uri().path();
        match (req.method(), path) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
            (&Method::GET, "/readyz") => self.readiness(),
            (&Method::GET, "/metrics") => text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.render(),
            ),
            (&Method::OPTIONS, _) if path.starts_with("/v1/ingest/") => cors::preflight(
                cors::allowed_origin(&self.admission.view(), path, req.headers()),
            ),
            _ if path.starts_with("/v1/ingest/") => {
                if req.method() != Method::POST {
                    let mut response =
                        Problem::new(ProblemType::MethodNotAllowed, "ingest takes POST")
                            .into_response();
                    response
                        .headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"));
                    return response;
                }
                // Only requests from browsers carry `Origin`; others skip the lookup.
                let origin = req
                    .headers()
                    .contains_key(header::ORIGIN)
                    .then(|| cors::allowed_origin(&self.admission.view(), path, req.headers()))
                    .flatten();
                let started = Instant::now();
                let mut response = match self.ingest(req).await {
                    Ok(Ingested {
                        accepted,
                        quarantined,
                    }) => {
                        self.metrics.requests_accepted.inc();
                        self.metrics.events_accepted.inc_by(accepted as u64);
                        self.metrics
                            .ack_seconds
                            .observe(started.elapsed().as_secs_f64());
                        // The same JSON as `json!({"accepted": n})`, without building a value.
                        let body = match quarantined {
                            None => format!("{{\"accepted\":{accepted}}}"),
                            Some(quarantined) => {
                                if quarantined > 0 {
                                    let label = Outcome {
                                        outcome: "quarantined",
                                    };
                                    self.metrics
                                        .events_total
                                        .get_or_create(&label)
                                        .inc_by(quarantined as u64);
                                }
                                format!("{{\"accepted\":{accepted},\"quarantined\":{quarantined}}}")
                            }
                        };
                        text(StatusCode::ACCEPTED, "application/json", body)
                    }
                    Err((problem, events)) => {
                        let label = Outcome {
                            outcome: problem.kind.slug(),
                        };
                        self.metrics.requests_total.get_or_create(&label).inc();
                        self.metrics
                            .events_total
                            .get_or_create(&label)
                            .inc_by(events as u64);
                        problem.into_response()
                    }
                };
                if let Some(origin) = origin {
                    cors::allow(&mut response, origin);
                }
                response
            }
            _ => Problem::new(
                ProblemType::NotFound,
                format!("no route for {path}; ingest is POST /v1/ingest/{{workspace}}/{{source}}"),
            )
            .into_response(),
        }
    }

    fn readiness(&self) -> HttpResponse {
        self.readiness_asked.store(true, Ordering::Relaxed);
        let draining = self.draining.load(Ordering::Relaxed);
        let configured = self.admission.access.is_configured();
        let wal = &self.admission.wal;
        let wal_ok = wal.is_healthy();
        // Not ready (take me out of the load balancer) once the WAL cannot take a typical
        // request: a tenth of the quota or one largest body, whichever is smaller.
        let typical = (wal.bytes_max() / 10).min(self.limits.body_bytes_max as u64);
        let wal_room = wal.check_room(typical as usize).is_ok();
        let uploads_failing = self
            .shipper
            .failing
            .load(std::sync::atomic::Ordering::Relaxed);
        let last_error = self.shipper.last_error.lock().ok().and_then(|e| e.clone());
        let ready = wal_ok && wal_room && configured && !draining;
        let body = json!({
            "ready": ready,
            // Shutting down: no new connections, please (see `shutdown_drain_ms`).
            "draining": draining,
            // False until a node following a control plane has heard from it (nothing was
            // cached): every request is refused `503 not-configured` meanwhile.
            "configured": configured,
            "config_version": self.admission.view().version,
            "wal": {
                "healthy": wal_ok,
                "bytes": wal.segments().bytes(),
                "bytes_max": wal.bytes_max(),
                // Damaged WAL bytes kept in <data dir>/quarantine/ since start: an operator's
                // matter (see docs/parquet-layout.md), not a reason to take the node out.
                "quarantined_files": wal.segments().quarantined(),
            },
            "object_store": {
                "uploads_failing": uploads_failing,
                "last_error": if uploads_failing { last_error } else { None },
            },
            // Serving from the last-known-good configuration while the control plane is away
            // keeps the node ready; this says so.
            "config_stream": self.config_stream.as_ref().map(|(url, status)| json!({
                "control_plane": url,
                "connected": status.connected.load(std::sync::atomic::Ordering::Relaxed),
                "last_error": status.last_error.lock().ok().and_then(|e| e.clone()),
            })),
        });
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        text(status, "application/json", body.to_string())
    }

    /// Accepts one ingest request; returns the number of events made durable, or the refusal
    /// and the number of events it concerned (when known). The protocol's own checks (path,
    /// headers, body) come first; the events then take the [admission path](crate::admit).
    async fn ingest(&self, req: Request<Incoming>) -> Result<Ingested, (Problem, usize)> {
        let received_at_us = admit::now_us();
        let (parts, body) = req.into_parts();
        let refuse = |p: Problem| (p, 0usize);
        let (workspace, source) = ingest_target(parts.uri.path()).map_err(refuse)?;
        if !self.admission.access.is_configured() {
            // The tokens are unknown, not wrong: say so, so that clients retry (elsewhere).
            return Err(refuse(
                Problem::new(
                    ProblemType::NotConfigured,
                    "this node has not received its configuration from the control plane yet; retry",
                )
                .retry_after(5),
            ));
        }
        let secret = bearer_token(&parts.headers).map_err(refuse)?;
        let device = device_id(&parts.headers).map_err(refuse)?;
        let admission = &self.admission;
        let refused = |r: Refusal| refusal_problem(r, workspace, source);
        let view = admission.view();
        let grant = Admission::check(
            &view,
            &token::hash(secret),
            workspace,
            source,
            device,
            Protocol::Http,
            received_at_us,
        )
        .map_err(|r| refuse(refused(r)))?;
        let format = body_format(&parts.headers).map_err(refuse)?;
        let encoding = content_encoding(&parts.headers).map_err(refuse)?;
        let declared =
            declared_length(&parts.headers, self.limits.body_bytes_max).map_err(refuse)?;
        admission
            .check_room(declared.unwrap_or(0))
            .map_err(|r| refuse(refused(r)))?;

        // Bound memory: the body and its decompressed form hold the node's budget as they
        // arrive and inflate (`budget`), released when the request ends.
        let mut reservation = Reservation::new(self.inflight.clone());
        let overloaded = || refused(Refusal::Overloaded);
        let raw = read_body(body, &self.limits, declared, &mut reservation)
            .await
            .map_err(|e| refuse(e.into_problem(overloaded)))?;
        self.metrics.body_bytes_total.inc_by(raw.len() as u64);
        let (decoded, _reservation): (Bytes, Reservation) = match encoding {
            Encoding::Identity => (raw, reservation),
            other => {
                // Decompressing up to `decoded_body_bytes_max` takes milliseconds of CPU; on the
                // blocking pool it does not stall the other connections of this io_uring thread.
                let max = self.limits.decoded_body_bytes_max;
                let (decoded, reservation) = tokio::task::spawn_blocking(move || {
                    let decoded = decode(&raw, other, max, &mut reservation);
                    (decoded, reservation)
                })
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "decompression task failed");
                    refuse(overloaded())
                })?;
                (
                    decoded.map_err(|e| refuse(e.into_problem(overloaded)))?,
                    reservation,
                )
            }
        };
        let events = admission
            .parse(&decoded, format)
            .map_err(|r| refuse(refused(r)))?;
        let count = events.ends.len();
        let quarantine = grant
            .shape
            .as_ref()
            .is_some_and(|s| s.on_invalid == OnInvalid::Quarantine);
        if count == 0 {
            return Ok(Ingested {
                accepted: 0,
                quarantined: quarantine.then_some(0),
            });
        }
        let counted = |r: Refusal| (refused(r), count);
        let origin = Origin {
            topic: None,
            headers: Some(&parts.headers),
            query: parts.uri.query(),
        };
        let shaped = admit::shape(&grant, &events, origin).map_err(counted)?;
        admit::take_rate(&grant.workspace, count).map_err(counted)?;
        let (shaping, rule_device) = match shaped {
            Some(shaped) => (Some(shaped.shaping), shaped.device_id),
            None => (None, None),
        };
        let quarantined = shaping.as_ref().map_or(0, |s| s.quarantined.len());
        let batch = Target {
            workspace_id: grant.workspace.id,
            source: source.into(),
            device_id: match rule_device {
                Some(device) => Some(device.into()),
                None => grant.device_id.map(Into::into),
            },
            protocol: Protocol::Http,
            topic: None,
            received_at_us,
            shaping,
        }
        .batch(events.payloads, events.ends);
        let mut record = Vec::new();
        batch.encode_into(&mut record);
        admission.append(record).await.map_err(counted)?;
        Ok(Ingested {
            accepted: count - quarantined,
            quarantined: quarantine.then_some(quarantined),
        })
    }
}

/// What an accepted request stored.
struct Ingested {
    /// Events stored as accepted.
    accepted: usize,
    /// Events stored in quarantine; `Some` for a source with `on_invalid = quarantine` only,
    /// whose answers always say it.
    quarantined: Option<usize>,
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `(workspace, source)` from `/v1/ingest/{workspace}/{source}`.
fn ingest_target(path: &str) -> Result<(&str, &str), Problem> {
    let rest = path.strip_prefix("/v1/ingest/").unwrap_or_default();
    let mut parts = rest.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(ws), Some(source), None) if is_valid_slug(ws) && is_valid_slug(source) => {
            Ok((ws, source))
        }
        _ => Err(Problem::new(
            ProblemType::NotFound,
            "ingest URLs are /v1/ingest/{workspace}/{source} with lowercase slugs (a-z, 0-9, -)",
        )),
    }
}

pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<&str, Problem> {
    let missing = || {
        Problem::new(
            ProblemType::MissingToken,
            "send the workspace access token as `Authorization: Bearer <token>`",
        )
    };
    let value = headers.get(header::AUTHORIZATION).ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| missing())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(missing());
    }
    Ok(token.trim())
}

fn device_id(headers: &HeaderMap) -> Result<Option<&str>, Problem> {
    let Some(value) = headers.get("x-device-id") else {
        return Ok(None);
    };
    let bad = || {
        Problem::new(
            ProblemType::InvalidDeviceId,
            format!("X-Device-Id must be 1 to {DEVICE_ID_LEN_MAX} visible ASCII characters"),
        )
    };
    let id = value.to_str().map_err(|_| bad())?;
    if is_valid_device_id(id) {
        Ok(Some(id))
    } else {
        Err(bad())
    }
}

fn body_format(headers: &HeaderMap) -> Result<BodyFormat, Problem> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(BodyFormat::Json);
    };
    let media = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/json" => Ok(BodyFormat::Json),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl"
        | "application/x-jsonlines" => Ok(BodyFormat::Ndjson),
        _ => Err(Problem::new(ProblemType::UnsupportedMediaType, format!(
                "Content-Type {media:?} is not accepted; use application/json or application/x-ndjson"
            ),
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

fn content_encoding(headers: &HeaderMap) -> Result<Encoding, Problem> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    let name = value
        .to_str()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match name.as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        "zstd" => Ok(Encoding::Zstd),
        _ => Err(Problem::new(
            ProblemType::UnsupportedEncoding,
            format!("Content-Encoding {name:?} is not accepted; use gzip, zstd or none"),
        )),
    }
}

fn too_large(what: &str, max: usize) -> Problem {
    Problem::new(
        ProblemType::BodyTooLarge,
        format!("the {what} is larger than {max} bytes; send smaller batches"),
    )
}

/// The declared `Content-Length`, refused early when over the limit.
fn declared_length(headers: &HeaderMap, max: usize) -> Result<Option<usize>, Problem> {
    let Some(value) = headers.get(header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    let len: usize = value
        .to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            Problem::new(
                ProblemType::InvalidContentLength,
                "Content-Length is not a number",
            )
        })?;
    if len > max {
        return Err(too_large("body", max));
    }
    Ok(Some(len))
}

/// Why a body could not be taken: a problem of its own, or no room in the memory budget.
enum BodyError {
    Problem(Problem),
    NoRoom,
}

impl BodyError {
    fn into_problem(self, overloaded: impl FnOnce() -> Problem) -> Problem {
        match self {
            BodyError::Problem(problem) => problem,
            BodyError::NoRoom => overloaded(),
        }
    }
}

impl From<Problem> for BodyError {
    fn from(problem: Problem) -> Self {
        BodyError::Problem(problem)
    }
}

/// How long a body may arrive slower than `http.body_bytes_per_second_min`: a request
/// starting on a slow link gets going in that time.
const BODY_RATE_GRACE: Duration = Duration::from_secs(5);

/// Reads the body within `http.body_bytes_max`, `http.body_read_timeout_ms` and the minimum
/// rate, holding in `reservation` what it keeps in memory.
async fn read_body(
    mut body: Incoming,
    limits: &HttpConfig,
    declared: Option<usize>,
    reservation: &mut Reservation,
) -> Result<Bytes, BodyError> {
    let max = limits.body_bytes_max;
    let started = tokio::time::Instant::now();
    let timeout = Duration::from_millis(limits.body_read_timeout_ms);
    let rate_min = limits.body_bytes_per_second_min.max(1) as f64;
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    let mut received = 0usize;
    loop {
        // The next bytes are due by the overall deadline and by the minimum rate's.
        let by_rate =
            started + BODY_RATE_GRACE + Duration::from_secs_f64((received + 1) as f64 / rate_min);
        let due = by_rate.min(started + timeout);
        let frame = match tokio::time::timeout_at(due, body.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) if due < started + timeout => {
                return Err(Problem::new(
                    ProblemType::BodyTimeout,
                    format!(
                        "the body arrived slower than {} bytes/s; send it in one go",
                        limits.body_bytes_per_second_min
                    ),
                )
                .into())
            }
            Err(_) => {
                return Err(Problem::new(
                    ProblemType::BodyTimeout,
                    format!("the body did not arrive within {} s", timeout.as_secs_f64()),
                )
                .into())
            }
        };
        let frame = frame.map_err(|e| {
            Problem::new(
                ProblemType::InvalidBody,
                format!("the request body could not be read: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        received += data.len();
        if received > max {
            return Err(too_large("body", max).into());
        }
        // A body that arrives in one frame is used as is, without a copy.
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            None => buf.extend_from_slice(&data),
            Some(previous) => {
                // The declared size is the likely end; it is held only as the bytes come.
                buf.reserve(declared.unwrap_or(0).min(received * 2).max(received));
                buf.extend_from_slice(&previous);
                buf.extend_from_slice(&data);
            }
        }
        let held = first.as_ref().map_or(0, Bytes::len) + buf.capacity();
        if !reservation.hold(held) {
            return Err(BodyError::NoRoom);
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

/// Decompresses `raw` within `max` bytes of output, holding in `reservation` what the output
/// takes as it grows.
fn decode(
    raw: &[u8],
    encoding: Encoding,
    max: usize,
    reservation: &mut Reservation,
) -> Result<Bytes, BodyError> {
    let bad = |e: std::io::Error| {
        Problem::new(
            ProblemType::InvalidEncoding,
            format!("the body is not valid {encoding:?} data: {e}"),
        )
    };
    let mut decoder: Box<dyn Read + '_> = match encoding {
        Encoding::Identity => Box::new(raw),
        Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        Encoding::Zstd => Box::new(zstd::stream::read::Decoder::new(raw).map_err(bad)?),
    };
    // What the input already holds stays held; the output comes on top.
    let base = reservation.bytes();
    let mut out: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = decoder.read(&mut chunk).map_err(bad)?;
        if n == 0 {
            break;
        }
        // The limit also stops decompression bombs after `max` bytes of output.
        if out.len() + n > max {
            return Err(too_large("decompressed body", max).into());
        }
        if out.capacity() < out.len() + n {
            let grown = (out.len() + n).next_power_of_two().min(max);
            // Growing copies: the old buffer and the new one are both in memory until the copy
            // is done, so both are held first (without it twelve 16 MiB bombs against a 48 MiB
            // budget took the node's peak memory up by 89 MiB), and the old one given back.
            if !reservation.hold(base + out.capacity() + grown) {
                return Err(BodyError::NoRoom);
            }
            out.reserve_exact(grown - out.len());
            reservation.release_to(base + out.capacity());
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(Bytes::from(out))
}

/// The problem+json answer to a refusal of the admission path. Retry-After: 5 s while the
/// node's storage is full or failing, 1 s when its memory budget is spent.
fn refusal_problem(refusal: Refusal, workspace: &str, source: &str) -> Problem {
    use ProblemType as P;
    match refusal {
        Refusal::Access(refusal) => access_problem(refusal, workspace, source),
        // HTTP names its source in the path, checked before admission; kept for completeness.
        Refusal::TopicInvalid => Problem::new(P::NotFound, refusal.to_string()),
        Refusal::Parse(err) => {
            let kind = match err {
                ParseError::TooManyEvents { .. } => P::TooManyEvents,
                ParseError::NotAnObject { .. }
                | ParseError::WrongTopLevel { .. }
                | ParseError::Unreadable { .. } => P::InvalidEvent,
                ParseError::Malformed { .. } | ParseError::TooLarge => P::MalformedJson,
            };
            Problem::new(kind, err.to_string())
        }
        Refusal::InvalidEvents { ref failures, .. } => {
            let failures = failures.clone();
            Problem::new(P::InvalidEvents, refusal.to_string()).with_errors(failures)
        }
        Refusal::PayloadTooLarge { max, .. } => too_large("body", max),
        Refusal::RecordTooLarge => too_large("batch", RECORD_BYTES_MAX),
        Refusal::RateLimited { retry_after_s } => Problem::new(
            P::RateLimited,
            format!(
                "workspace {workspace} is over its event rate on this node; retry after {retry_after_s} s"
            ),
        )
        .retry_after(retry_after_s),
        Refusal::Overloaded => Problem::new(
            P::Overloaded,
            "too many request bodies are in flight on this node; retry shortly",
        )
        .retry_after(1),
        Refusal::StorageFull => Problem::new(P::StorageFull, refusal.to_string()).retry_after(5),
        Refusal::StorageUnavailable => {
            Problem::new(P::StorageUnavailable, refusal.to_string()).retry_after(5)
        }
    }
}

/// The problem for an access refusal; `source` names the source (ingest) or the export
/// endpoint (reads).
pub(crate) fn access_problem(refusal: access::Refusal, workspace: &str, source: &str) -> Problem {
    use access::Refusal as R;
    use ProblemType as P;
    match refusal {
        R::UnknownToken => Problem::new(
            P::InvalidToken,
            "the access token is not known (mistyped, revoked, or from another installation)",
        ),
        R::ExpiredToken => Problem::new(
            P::TokenExpired,
            "the access token has expired; create a new one",
        ),
        R::UnknownWorkspace => Problem::new(
            P::UnknownWorkspace,
            format!("there is no workspace {workspace:?}"),
        ),
        R::WrongWorkspace => Problem::new(
            P::WrongWorkspace,
            format!("the access token does not belong to workspace {workspace:?}"),
        ),
        R::WorkspaceDisabled => Problem::new(
            P::WorkspaceDisabled,
            format!("workspace {workspace:?} is disabled because its creator's trial ended, and accepts no data until an operator prolongs that trial or changes the creator's plan"),
        ),
        R::UnknownSource => Problem::new(
            P::UnknownSource,
            format!("workspace {workspace:?} has no source {source:?}"),
        ),
        R::MissingScope => Problem::new(
            P::MissingScope,
            "the access token may not send events; use a token with the `ingest` scope",
        ),
        R::ProtocolNotAllowed => Problem::new(
            P::ProtocolNotAllowed,
            format!("source {source:?} does not take events over HTTP; its protocols are set in the control plane"),
        ),
        R::SourceNotAllowed => Problem::new(
            P::SourceNotAllowed,
            format!("the access token may not write to source {source:?}"),
        ),
        R::DeviceNotAllowed { bound } => Problem::new(
            P::DeviceNotAllowed,
            format!("the access token is bound to device {bound:?}; X-Device-Id must match"),
        ),
        R::UnknownEndpoint => Problem::new(
            P::UnknownEndpoint,
            format!("workspace {workspace:?} has no export endpoint {source:?}"),
        ),
        R::EndpointNotAllowed => Problem::new(
            P::EndpointNotAllowed,
            format!("the access token may not read export endpoint {source:?}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every refusal of the admission path answers with its documented problem type, and
    /// those a client should retry carry `Retry-After`.
    #[test]
    fn admission_refusals_become_their_problem_types() {
        use ProblemType as P;
        let cases = [
            (
                Refusal::Access(access::Refusal::UnknownToken),
                P::InvalidToken,
                None,
            ),
            (
                Refusal::Access(access::Refusal::UnknownSource),
                P::UnknownSource,
                None,
            ),
            (
                Refusal::Access(access::Refusal::DeviceNotAllowed { bound: "d".into() }),
                P::DeviceNotAllowed,
                None,
            ),
            (
                Refusal::Parse(ParseError::TooManyEvents { max: 1 }),
                P::TooManyEvents,
                None,
            ),
            (
                Refusal::Parse(ParseError::NotAnObject { index: 1, line: 1 }),
                P::InvalidEvent,
                None,
            ),
            (Refusal::Parse(ParseError::TooLarge), P::MalformedJson, None),
            (
                Refusal::PayloadTooLarge { bytes: 2, max: 1 },
                P::BodyTooLarge,
                None,
            ),
            (Refusal::RecordTooLarge, P::BodyTooLarge, None),
            (
                Refusal::RateLimited { retry_after_s: 3 },
                P::RateLimited,
                Some(3),
            ),
            (Refusal::Overloaded, P::Overloaded, Some(1)),
            (Refusal::StorageFull, P::StorageFull, Some(5)),
            (Refusal::StorageUnavailable, P::StorageUnavailable, Some(5)),
        ];
        for (refusal, kind, retry_after) in cases {
            let what = format!("{refusal:?}");
            let problem = refusal_problem(refusal, "ws", "telemetry");
            assert_eq!(problem.kind, kind, "{what}");
            assert_eq!(problem.retry_after_s, retry_after, "{what}");
        }
    }
}
