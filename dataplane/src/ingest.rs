//! The HTTP API of a data-plane node: `POST /v1/ingest/{workspace}/{source}`, `/healthz`,
//! `/readyz` and `/metrics`.
//!
//! An ingest request is checked (token, workspace, source, type, size, rate, disk quota),
//! its body read within limits, decompressed within limits and parsed, and only then appended
//! to the WAL as one record. The 202 is sent after the WAL sync. Any refusal happens before the
//! append, so a refused request writes nothing, and a batch is accepted or refused whole.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::json;
use sluice_storage::event::{Envelope, IngestBatch, Protocol};
use sluice_storage::shipper::ShipperStatus;
use sluice_storage::snapshot::{is_valid_device_id, is_valid_slug, DEVICE_ID_LEN_MAX};
use sluice_storage::wal::{Wal, WalError};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::access::{Access, Refusal};
use crate::config::HttpConfig;
use crate::config_stream::StreamStatus;
use crate::metrics::{HttpMetrics, Outcome};
use crate::parse::{self, BodyFormat, ParseError};
use crate::problem::Problem;

/// Shared state of every HTTP runtime.
pub struct Api {
    pub access: Arc<Access>,
    pub wal: Wal,
    pub metrics: Arc<HttpMetrics>,
    pub shipper: Arc<ShipperStatus>,
    pub limits: HttpConfig,
    /// Bytes of bodies in memory, all requests together.
    pub inflight: Semaphore,
    /// The control plane followed and how the stream is doing, for `/readyz`.
    pub config_stream: Option<(String, Arc<StreamStatus>)>,
}

type HttpResponse = Response<Full<Bytes>>;

impl Api {
    pub fn new(
        access: Arc<Access>,
        wal: Wal,
        metrics: Arc<HttpMetrics>,
        shipper: Arc<ShipperStatus>,
        limits: HttpConfig,
        config_stream: Option<(String, Arc<StreamStatus>)>,
    ) -> Self {
        let inflight = Semaphore::new(limits.inflight_bytes_max.min(Semaphore::MAX_PERMITS));
        Api {
            access,
            wal,
            metrics,
            shipper,
            limits,
            inflight,
            config_stream,
        }
    }

    /// Routes one request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> HttpResponse {
        let path = req.uri().path();
        match (req.method(), path) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
            (&Method::GET, "/readyz") => self.readiness(),
            (&Method::GET, "/metrics") => text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.render(),
            ),
            _ if path.starts_with("/v1/ingest/") => {
                if req.method() != Method::POST {
                    let mut response = Problem::new(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "method-not-allowed",
                        "Method not allowed",
                        "ingest takes POST",
                    )
                    .into_response();
                    response
                        .headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static("POST"));
                    return response;
                }
                let started = Instant::now();
                match self.ingest(req).await {
                    Ok(accepted) => {
                        self.metrics.requests_accepted.inc();
                        self.metrics.events_accepted.inc_by(accepted as u64);
                        self.metrics
                            .ack_seconds
                            .observe(started.elapsed().as_secs_f64());
                        // The same JSON as `json!({"accepted": n})`, without building a value.
                        text(
                            StatusCode::ACCEPTED,
                            "application/json",
                            format!("{{\"accepted\":{accepted}}}"),
                        )
                    }
                    Err((problem, events)) => {
                        let label = Outcome {
                            outcome: problem.kind,
                        };
                        self.metrics.requests_total.get_or_create(&label).inc();
                        self.metrics
                            .events_total
                            .get_or_create(&label)
                            .inc_by(events as u64);
                        problem.into_response()
                    }
                }
            }
            _ => Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                format!("no route for {path}; ingest is POST /v1/ingest/{{workspace}}/{{source}}"),
            )
            .into_response(),
        }
    }

    fn readiness(&self) -> HttpResponse {
        let wal_ok = self.wal.is_healthy();
        // Not ready (take me out of the load balancer) once the WAL cannot take a typical
        // request: a tenth of the quota or one largest body, whichever is smaller.
        let typical = (self.wal.bytes_max() / 10).min(self.limits.body_bytes_max as u64);
        let wal_room = self.wal.check_room(typical as usize).is_ok();
        let uploads_failing = self
            .shipper
            .failing
            .load(std::sync::atomic::Ordering::Relaxed);
        let last_error = self.shipper.last_error.lock().ok().and_then(|e| e.clone());
        let ready = wal_ok && wal_room;
        let body = json!({
            "ready": ready,
            "config_version": self.access.current().version,
            "wal": {
                "healthy": wal_ok,
                "bytes": self.wal.segments().bytes(),
                "bytes_max": self.wal.bytes_max(),
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
    /// and the number of events it concerned (when known).
    async fn ingest(&self, req: Request<Incoming>) -> Result<usize, (Problem, usize)> {
        let received_at_us = now_us();
        let (parts, body) = req.into_parts();
        let refuse = |p: Problem| (p, 0usize);
        let (workspace, source) = ingest_target(parts.uri.path()).map_err(refuse)?;
        let secret = bearer_token(&parts.headers).map_err(refuse)?;
        let device = device_id(&parts.headers).map_err(refuse)?;
        let view = self.access.current();
        let grant = view
            .check(secret, workspace, source, device, received_at_us)
            .map_err(|r| refuse(refusal_problem(r, workspace, source)))?;
        let format = body_format(&parts.headers).map_err(refuse)?;
        let encoding = content_encoding(&parts.headers).map_err(refuse)?;
        let declared =
            declared_length(&parts.headers, self.limits.body_bytes_max).map_err(refuse)?;
        self.wal
            .check_room(declared.unwrap_or(0))
            .map_err(|e| refuse(wal_problem(e)))?;

        // Bound memory: reserve the body's size before reading it.
        let reserve = declared.unwrap_or(self.limits.body_bytes_max).max(1);
        let _permit = self
            .inflight
            .try_acquire_many(reserve.min(u32::MAX as usize) as u32)
            .map_err(|_| refuse(overloaded()))?;
        let raw = read_body(
            body,
            self.limits.body_bytes_max,
            declared,
            Duration::from_millis(self.limits.body_read_timeout_ms),
        )
        .await
        .map_err(refuse)?;
        self.metrics.body_bytes_total.inc_by(raw.len() as u64);
        // Decompressed bodies are held too; reserve a typical expansion (the decoder itself
        // stops at `decoded_body_bytes_max`).
        let mut _decoded_permit = None;
        let decoded: Bytes = match encoding {
            Encoding::Identity => raw,
            other => {
                let expected = (raw.len().saturating_mul(8))
                    .clamp(64 << 10, self.limits.decoded_body_bytes_max);
                _decoded_permit = Some(
                    self.inflight
                        .try_acquire_many(expected.min(u32::MAX as usize) as u32)
                        .map_err(|_| refuse(overloaded()))?,
                );
                // Decompressing up to `decoded_body_bytes_max` takes milliseconds of CPU; on the
                // blocking pool it does not stall the other connections of this io_uring thread.
                let max = self.limits.decoded_body_bytes_max;
                tokio::task::spawn_blocking(move || decode(&raw, other, max))
                    .await
                    .map_err(|e| {
                        tracing::error!(error = %e, "decompression task failed");
                        refuse(overloaded())
                    })?
                    .map_err(refuse)?
            }
        };
        let events = parse::parse(&decoded, format, self.limits.events_per_request_max)
            .map_err(|e| refuse(parse_problem(e)))?;
        let count = events.ends.len();
        if count == 0 {
            return Ok(0);
        }
        grant.workspace.bucket.take(count).map_err(|wait| {
            (
                Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    "Rate limit exceeded",
                    format!(
                        "workspace {workspace} is over its event rate on this node; retry after {wait} s"
                    ),
                )
                .retry_after(wait),
                count,
            )
        })?;
        let batch = IngestBatch {
            envelope: Envelope {
                first_event_id: Uuid::now_v7(),
                received_at_us,
                workspace_id: grant.workspace.id,
                source: source.to_owned(),
                device_id: grant.device_id.map(str::to_owned),
                protocol: Protocol::Http,
                topic: None,
            },
            payloads: events.payloads,
            ends: events.ends,
        };
        let mut record = Vec::new();
        batch.encode_into(&mut record);
        self.wal
            .append(record)
            .await
            .map_err(|e| (wal_problem(e), count))?;
        Ok(count)
    }
}

/// Now, in microseconds since the Unix epoch (UTC).
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn overloaded() -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "Node overloaded",
        "too many request bodies are in flight on this node; retry shortly",
    )
    .retry_after(1)
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
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            "ingest URLs are /v1/ingest/{workspace}/{source} with lowercase slugs (a-z, 0-9, -)",
        )),
    }
}

fn bearer_token(headers: &HeaderMap) -> Result<&str, Problem> {
    let missing = || {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "missing-token",
            "Missing access token",
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
            StatusCode::BAD_REQUEST,
            "invalid-device-id",
            "Invalid device id",
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
        _ => Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            format!(
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
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-encoding",
            "Unsupported content encoding",
            format!("Content-Encoding {name:?} is not accepted; use gzip, zstd or none"),
        )),
    }
}

fn too_large(what: &str, max: usize) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        "Request body too large",
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
                StatusCode::BAD_REQUEST,
                "invalid-content-length",
                "Invalid Content-Length",
                "Content-Length is not a number",
            )
        })?;
    if len > max {
        return Err(too_large("body", max));
    }
    Ok(Some(len))
}

async fn read_body(
    mut body: Incoming,
    max: usize,
    declared: Option<usize>,
    timeout: Duration,
) -> Result<Bytes, Problem> {
    let collect = async {
        let mut first: Option<Bytes> = None;
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid-body",
                    "Unreadable body",
                    format!("the request body could not be read: {e}"),
                )
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let total = first.as_ref().map_or(0, Bytes::len) + buf.len() + data.len();
            if total > max {
                return Err(too_large("body", max));
            }
            // A body that arrives in one frame is used as is, without a copy.
            match first.take() {
                None if buf.is_empty() => first = Some(data),
                None => buf.extend_from_slice(&data),
                Some(previous) => {
                    buf.reserve(declared.unwrap_or(0).max(previous.len() + data.len()));
                    buf.extend_from_slice(&previous);
                    buf.extend_from_slice(&data);
                }
            }
        }
        Ok(first.unwrap_or_else(|| buf.freeze()))
    };
    tokio::time::timeout(timeout, collect).await.map_err(|_| {
        Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            "Body too slow",
            format!("the body did not arrive within {} s", timeout.as_secs_f64()),
        )
    })?
}

fn decode(raw: &[u8], encoding: Encoding, max: usize) -> Result<Bytes, Problem> {
    let bad = |e: std::io::Error| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-encoding",
            "Body does not decompress",
            format!("the body is not valid {encoding:?} data: {e}"),
        )
    };
    let mut out = Vec::new();
    // Read one byte past the limit to tell "exactly at the limit" from "over it"; the limit
    // also stops decompression bombs after `max` bytes of output.
    let limit = max as u64 + 1;
    match encoding {
        Encoding::Identity => out.extend_from_slice(raw),
        Encoding::Gzip => {
            flate2::read::MultiGzDecoder::new(raw)
                .take(limit)
                .read_to_end(&mut out)
                .map_err(bad)?;
        }
        Encoding::Zstd => {
            zstd::stream::read::Decoder::new(raw)
                .map_err(bad)?
                .take(limit)
                .read_to_end(&mut out)
                .map_err(bad)?;
        }
    }
    if out.len() > max {
        return Err(too_large("decompressed body", max));
    }
    Ok(Bytes::from(out))
}

fn parse_problem(err: ParseError) -> Problem {
    let kind = match err {
        ParseError::TooManyEvents { .. } => {
            return Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-many-events",
                "Too many events",
                err.to_string(),
            )
        }
        ParseError::NotAnObject { .. } | ParseError::WrongTopLevel { .. } => "invalid-event",
        ParseError::Malformed { .. } | ParseError::TooLarge => "malformed-json",
    };
    let title = if kind == "invalid-event" {
        "Event is not a JSON object"
    } else {
        "Malformed JSON"
    };
    Problem::new(StatusCode::BAD_REQUEST, kind, title, err.to_string())
}

fn wal_problem(err: WalError) -> Problem {
    match err {
        WalError::QuotaExceeded { .. } => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage-full",
            "Node storage full",
            "this node's write-ahead log is at its disk quota while object storage catches up; retry later",
        )
        .retry_after(5),
        WalError::RecordTooLarge(_) => too_large("batch", sluice_storage::wal::RECORD_BYTES_MAX),
        other => {
            tracing::error!(error = %other, "WAL append failed");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage-unavailable",
                "Node storage unavailable",
                "this node cannot write events durably right now; retry on another node or later",
            )
            .retry_after(5)
        }
    }
}

fn refusal_problem(refusal: Refusal, workspace: &str, source: &str) -> Problem {
    use StatusCode as S;
    match refusal {
        Refusal::UnknownToken => Problem::new(
            S::UNAUTHORIZED,
            "invalid-token",
            "Invalid access token",
            "the access token is not known (mistyped, revoked, or from another installation)",
        ),
        Refusal::ExpiredToken => Problem::new(
            S::UNAUTHORIZED,
            "token-expired",
            "Access token expired",
            "the access token has expired; create a new one",
        ),
        Refusal::UnknownWorkspace => Problem::new(
            S::NOT_FOUND,
            "unknown-workspace",
            "Unknown workspace",
            format!("there is no workspace {workspace:?}"),
        ),
        Refusal::WrongWorkspace => Problem::new(
            S::FORBIDDEN,
            "wrong-workspace",
            "Token of another workspace",
            format!("the access token does not belong to workspace {workspace:?}"),
        ),
        Refusal::WorkspaceDisabled => Problem::new(
            S::FORBIDDEN,
            "workspace-disabled",
            "Workspace disabled",
            format!("workspace {workspace:?} is disabled and accepts no data; ask its admin to re-enable it"),
        ),
        Refusal::UnknownSource => Problem::new(
            S::NOT_FOUND,
            "unknown-source",
            "Unknown source",
            format!("workspace {workspace:?} has no source {source:?}"),
        ),
        Refusal::MissingScope => Problem::new(
            S::FORBIDDEN,
            "missing-scope",
            "Token lacks the ingest scope",
            "the access token may not send events; use a token with the `ingest` scope",
        ),
        Refusal::SourceNotAllowed => Problem::new(
            S::FORBIDDEN,
            "source-not-allowed",
            "Source not allowed for this token",
            format!("the access token may not write to source {source:?}"),
        ),
        Refusal::DeviceNotAllowed { bound } => Problem::new(
            S::FORBIDDEN,
            "device-not-allowed",
            "Device not allowed for this token",
            format!("the access token is bound to device {bound:?}; X-Device-Id must match"),
        ),
    }
}
