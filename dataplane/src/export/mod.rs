//! Export endpoints: `GET /v1/stream/{workspace}/{endpoint}`, an output of the workspace read
//! by end-users with a `read` token, from the files every node committed to the lake.
//!
//! - `text/event-stream` (the default): a live stream (Server-Sent Events). Each event's `id`
//!   is a cursor; a reader that reconnects with `Last-Event-ID` resumes after that event.
//! - `Accept: application/x-ndjson`: one page of at most `limit` events, and the cursor of the
//!   next page in `Sluice-Cursor` (and a `Link: rel="next"`).
//!
//! Both start at `?after=<cursor>`, else at `?since=<RFC 3339 time>`, else at
//! `?from=beginning` or `?from=now`; a live stream starts at `now` by default and a page at
//! `beginning`. Readers work on their own runtime (`export.threads`), so that decoding
//! Parquet never holds up ingest.
//!
//! - `output`: an output compiled (filter and projection).
//! - `cursor`: a reader's position in every node's commit log.
//! - `reader`: reading an output from the commit logs and files.

pub mod cursor;
pub mod output;
pub mod reader;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use sluice_config::snapshot::is_valid_slug;
use sluice_config::token;
use sluice_storage::lake::Lake;
use sluice_storage::shipper::ShipperStatus;
use sluice_storage::shutdown::Shutdown;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use crate::access::{self, Access, ExportGrant};
use crate::admit::now_us;
use crate::config::ExportConfig;
use crate::http::api::{access_problem, bearer_token};
use crate::http::problem::{Problem, ProblemType};
use crate::metrics::NodeMetrics;
use cursor::Cursor;
use output::CompiledOutput;
use reader::{FileCache, ReadSpec, Reader};

/// What the export endpoints share on a node.
pub struct Exports {
    lake: Lake,
    /// Decoded files, shared with the node's webhook deliveries.
    cache: Arc<FileCache>,
    /// Wakes live streams when this node commits a file (others' files need a poll).
    shipper: Arc<ShipperStatus>,
    metrics: Arc<NodeMetrics>,
    runtime: tokio::runtime::Handle,
    streams: Arc<Semaphore>,
    /// NDJSON pages being read at once: each may decode a file.
    pages: Arc<Semaphore>,
    settings: ExportConfig,
    shutdown: Shutdown,
}

/// The body of an answer from the HTTP API: whole, or streamed by an export reader.
pub type ApiBody = http_body_util::Either<http_body_util::Full<Bytes>, StreamBody>;

/// A streamed body: chunks sent by a reader task on the export runtime. Dropping it (the
/// client went away) closes the channel, which ends the task.
pub struct StreamBody {
    chunks: mpsc::Receiver<Bytes>,
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .chunks
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Where a reader starts, from the request.
#[derive(Clone)]
enum Start {
    After(Cursor),
    Since(i64),
    Beginning,
    Now,
}

/// A request's reading instructions.
struct Query {
    start: Option<Start>,
    limit: Option<usize>,
}

/// A bytes chunk of SSE is sent once it holds this much (or the reader has caught up).
const SSE_CHUNK_BYTES: usize = 64 << 10;
/// Events read between two looks at whether the reader may still read.
const SSE_EVENTS_PER_STEP: usize = 4096;

impl Exports {
    pub fn new(
        lake: Lake,
        cache: Arc<FileCache>,
        shipper: Arc<ShipperStatus>,
        metrics: Arc<NodeMetrics>,
        runtime: tokio::runtime::Handle,
        settings: ExportConfig,
        shutdown: Shutdown,
    ) -> Self {
        Exports {
            lake,
            cache,
            shipper,
            metrics,
            runtime,
            streams: Arc::new(Semaphore::new(settings.streams_max)),
            pages: Arc::new(Semaphore::new(settings.pages_max)),
            settings,
            shutdown,
        }
    }

    /// Serves one request on `/v1/stream/...`.
    pub async fn serve(
        self: &Arc<Self>,
        access: &Arc<Access>,
        req: Request<Incoming>,
    ) -> Response<ApiBody> {
        match self.answer(access, req).await {
            Ok(response) => response,
            Err(problem) => problem.into_response().map(http_body_util::Either::Left),
        }
    }

    async fn answer(
        self: &Arc<Self>,
        access: &Arc<Access>,
        req: Request<Incoming>,
    ) -> Result<Response<ApiBody>, Problem> {
        if req.method() != Method::GET {
            return Err(Problem::new(
                ProblemType::MethodNotAllowed,
                "export endpoints take GET",
            ));
        }
        let path = req.uri().path().to_owned();
        let (workspace, endpoint) = endpoint_path(&path)?;
        if !access.is_configured() {
            return Err(Problem::new(
                ProblemType::NotConfigured,
                "this node has no configuration yet; try again shortly",
            )
            .retry_after(5));
        }
        let hash = token::hash(bearer_token(req.headers())?);
        let grant = access
            .current()
            .check_read(&hash, workspace, endpoint, now_us())
            .map_err(|refusal| match refusal {
                access::Refusal::MissingScope => Problem::new(
                    ProblemType::MissingScope,
                    "the access token may not read; use a token with the `read` scope",
                ),
                other => access_problem(other, workspace, endpoint),
            })?;
        let query = parse_query(req.uri().query().unwrap_or_default())?;
        if wants_ndjson(req.headers()) {
            return self.page(grant, query, workspace, endpoint).await;
        }
        // An empty id is no id (EventSource sends none before its first event with one).
        let last_event_id = req
            .headers()
            .get("last-event-id")
            .filter(|id| !id.as_bytes().trim_ascii().is_empty());
        let start = match last_event_id {
            Some(id) => {
                let id = id.to_str().map_err(|_| bad_cursor())?;
                Some(Start::After(
                    Cursor::decode(id.trim()).map_err(|_| bad_cursor())?,
                ))
            }
            None => query.start,
        };
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            Problem::new(
                ProblemType::Overloaded,
                format!(
                    "this node serves {} live streams already; try again or another node",
                    self.settings.streams_max
                ),
            )
            .retry_after(5)
        })?;
        // Asked again before each read: the token may be revoked, the output changed.
        let still_allowed = {
            let (access, workspace, endpoint) =
                (access.clone(), workspace.to_owned(), endpoint.to_owned());
            move || {
                access
                    .current()
                    .check_read(&hash, &workspace, &endpoint, now_us())
                    .ok()
                    .map(|grant| grant.output)
            }
        };
        let (tx, rx) = mpsc::channel(4);
        let exports = self.clone();
        self.runtime.spawn(async move {
            exports
                .live(
                    grant,
                    start.unwrap_or(Start::Now),
                    tx,
                    still_allowed,
                    permit,
                )
                .await;
        });
        let mut response = Response::new(http_body_util::Either::Right(StreamBody { chunks: rx }));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // Proxies that buffer answers (nginx) would hold events back.
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        Ok(response)
    }

    /// One NDJSON page.
    async fn page(
        self: &Arc<Self>,
        grant: ExportGrant,
        query: Query,
        workspace: &str,
        endpoint: &str,
    ) -> Result<Response<ApiBody>, Problem> {
        let limit = query
            .limit
            .unwrap_or(1000)
            .clamp(1, self.settings.page_events_max);
        let bytes_max = self.settings.page_bytes_max;
        let permit = self.pages.clone().try_acquire_owned().map_err(|_| {
            Problem::new(
                ProblemType::Overloaded,
                format!(
                    "this node reads {} pages at once already; try again or another node",
                    self.settings.pages_max
                ),
            )
            .retry_after(1)
        })?;
        let exports = self.clone();
        let start = query.start.unwrap_or(Start::Beginning);
        let read = self.runtime.spawn(async move {
            let _permit = permit;
            let mut reader = exports.reader(grant, start).await?;
            let mut body = Vec::new();
            let events = reader
                .read(limit, |event| {
                    body.extend_from_slice(event.json);
                    body.push(b'\n');
                    body.len() < bytes_max
                })
                .await?;
            exports
                .metrics
                .data_out
                .export_events_total
                .inc_by(events as u64);
            Ok::<_, reader::ReadError>((body, reader.cursor().encode()))
        });
        let (body, cursor) = match read.await {
            Ok(Ok(page)) => page,
            Ok(Err(err)) => return Err(unavailable(&err)),
            Err(err) => return Err(unavailable(&err)),
        };
        let next = format!(
            "</v1/stream/{workspace}/{endpoint}?after={cursor}&limit={limit}>; rel=\"next\""
        );
        let mut response = Response::new(http_body_util::Either::Left(http_body_util::Full::new(
            Bytes::from(body),
        )));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // A cursor and a path of slugs are ASCII; the fallbacks cannot happen.
        if let Ok(value) = HeaderValue::from_str(&cursor) {
            headers.insert("sluice-cursor", value);
        }
        if let Ok(value) = HeaderValue::from_str(&next) {
            headers.insert(header::LINK, value);
        }
        *response.status_mut() = StatusCode::OK;
        Ok(response)
    }

    async fn reader(&self, grant: ExportGrant, start: Start) -> Result<Reader, reader::ReadError> {
        let (cursor, since_us) = match start {
            Start::After(cursor) => (cursor, None),
            Start::Since(us) => (Cursor::default(), Some(us)),
            Start::Beginning => (Cursor::default(), None),
            Start::Now => (
                Reader::end_cursor(&self.lake, grant.workspace_id, &grant.output.source, None)
                    .await?,
                None,
            ),
        };
        let spec = ReadSpec {
            workspace_id: grant.workspace_id,
            output: grant.output,
            since_us,
            only_node: None,
        };
        Ok(Reader::new(
            self.lake.clone(),
            self.cache.clone(),
            spec,
            cursor,
        ))
    }

    /// A live stream: reads, sends, and when caught up looks again every `poll_ms`, until
    /// the client leaves, its token stops granting the endpoint, or the node stops.
    async fn live(
        self: Arc<Self>,
        grant: ExportGrant,
        start: Start,
        tx: mpsc::Sender<Bytes>,
        still_allowed: impl Fn() -> Option<Arc<CompiledOutput>>,
        _permit: OwnedSemaphorePermit,
    ) {
        let streams = &self.metrics.data_out.export_streams;
        streams.inc();
        // Counted down however the stream ends.
        let _open = scopeguard(|| {
            streams.dec();
        });
        let mut shutdown = self.shutdown.clone();
        let poll = Duration::from_millis(self.settings.poll_ms.max(10));
        let heartbeat = Duration::from_millis(self.settings.heartbeat_ms.max(100));
        // Tells EventSource to reconnect after 1 s if the connection drops.
        if tx
            .send(Bytes::from_static(b"retry: 1000\n\n"))
            .await
            .is_err()
        {
            return;
        }
        let mut reader = loop {
            match self.reader(grant.clone(), start.clone()).await {
                Ok(reader) => break reader,
                Err(err) => {
                    warn!(error = %err, "export stream cannot start reading; retrying");
                    if wait(&mut shutdown, poll * 4).await {
                        return;
                    }
                }
            }
        };
        let mut quiet = Duration::ZERO;
        let mut chunk = Vec::with_capacity(SSE_CHUNK_BYTES * 2);
        loop {
            // A changed output applies from the next event on; one moved to another source
            // ends the stream (its positions mean nothing there).
            let Some(output) = still_allowed() else {
                debug!("export stream's token no longer grants it; closing");
                return;
            };
            if !reader.set_output(output) {
                debug!("export stream's output reads another source now; closing");
                return;
            }
            let read = reader
                .read(SSE_EVENTS_PER_STEP, |event| {
                    chunk.extend_from_slice(b"id: ");
                    chunk.extend_from_slice(event.cursor.encode().as_bytes());
                    chunk.extend_from_slice(b"\ndata: ");
                    chunk.extend_from_slice(event.json);
                    chunk.extend_from_slice(b"\n\n");
                    chunk.len() < SSE_CHUNK_BYTES
                })
                .await;
            let emitted = match read {
                Ok(n) => {
                    self.metrics.data_out.export_events_total.inc_by(n as u64);
                    n
                }
                Err(err) => {
                    warn!(error = %err, "export stream read failed; retrying");
                    0
                }
            };
            if !chunk.is_empty() {
                quiet = Duration::ZERO;
                let bytes = Bytes::from(std::mem::take(&mut chunk));
                chunk.reserve(SSE_CHUNK_BYTES * 2);
                tokio::select! {
                    sent = tx.send(bytes) => if sent.is_err() { return },
                    _ = shutdown.requested() => return,
                }
            }
            if emitted > 0 {
                continue;
            }
            if quiet >= heartbeat {
                quiet = Duration::ZERO;
                if tx
                    .send(Bytes::from_static(b": keep-alive\n\n"))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if tx.is_closed() {
                return;
            }
            tokio::select! {
                _ = self.shipper.committed.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.requested() => return,
            }
            quiet += poll;
        }
    }
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// Sleeps `duration`; true if the node is stopping.
async fn wait(shutdown: &mut Shutdown, duration: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => false,
        _ = shutdown.requested() => true,
    }
}

fn unavailable(err: &dyn std::fmt::Display) -> Problem {
    warn!(error = %err, "export page failed");
    Problem::new(
        ProblemType::StorageUnavailable,
        "the lake could not be read; try again",
    )
    .retry_after(5)
}

fn bad_cursor() -> Problem {
    Problem::new(
        ProblemType::InvalidCursor,
        "the cursor (`after` or `Last-Event-ID`) is not one this endpoint gave out",
    )
}

fn endpoint_path(path: &str) -> Result<(&str, &str), Problem> {
    let rest = path.strip_prefix("/v1/stream/").unwrap_or_default();
    let mut parts = rest.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(ws), Some(endpoint), None) if is_valid_slug(ws) && is_valid_slug(endpoint) => {
            Ok((ws, endpoint))
        }
        _ => Err(Problem::new(
            ProblemType::NotFound,
            "export URLs are /v1/stream/{workspace}/{endpoint} with lowercase slugs (a-z, 0-9, -)",
        )),
    }
}

/// Whether the client asks for NDJSON pages rather than a live stream.
fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            let media = media.split(';').next().unwrap_or_default().trim();
            media.eq_ignore_ascii_case("application/x-ndjson")
        })
}

fn parse_query(query: &str) -> Result<Query, Problem> {
    let invalid = |detail: String| Problem::new(ProblemType::InvalidParameter, detail);
    let mut parsed = Query {
        start: None,
        limit: None,
    };
    let (mut after, mut since, mut from) = (None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value)
            .ok_or_else(|| invalid(format!("{name}: not valid percent-encoding")))?;
        match name {
            "after" => after = Some(Cursor::decode(&value).map_err(|_| bad_cursor())?),
            "since" => {
                let at = chrono::DateTime::parse_from_rfc3339(&value).map_err(|_| {
                    invalid(format!(
                        "since={value:?}: an RFC 3339 time such as 2026-12-06T10:00:00Z"
                    ))
                })?;
                since = Some(at.timestamp_micros());
            }
            "from" => {
                from = Some(match value.as_str() {
                    "beginning" => Start::Beginning,
                    "now" => Start::Now,
                    _ => return Err(invalid(format!("from={value:?}: `beginning` or `now`"))),
                })
            }
            "limit" => {
                let limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|l| *l > 0)
                    .ok_or_else(|| invalid(format!("limit={value:?}: a whole number from 1")))?;
                parsed.limit = Some(limit);
            }
            // Unknown parameters are ignored, as caches and proxies add their own.
            _ => {}
        }
    }
    parsed.start = after.map(Start::After).or(since.map(Start::Since)).or(from);
    Ok(parsed)
}

/// `%XX` escapes and `+` as space; `None` for a broken escape or bytes that are not UTF-8.
fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_say_where_to_start() {
        let q = parse_query("since=2026-12-06T10%3A00%3A00Z&limit=5").expect("query");
        assert!(matches!(q.start, Some(Start::Since(us)) if us == 1_796_551_200_000_000));
        assert_eq!(q.limit, Some(5));
        assert!(matches!(
            parse_query("from=now").expect("query").start,
            Some(Start::Now)
        ));
        for bad in [
            "limit=0",
            "limit=x",
            "since=yesterday",
            "from=later",
            "after=zz",
            "since=%zz",
        ] {
            assert!(parse_query(bad).is_err(), "{bad}");
        }
        let cursor = Cursor::default().encode();
        let q = parse_query(&format!("after={cursor}&since=2026-12-06T10:00:00Z")).expect("query");
        assert!(matches!(q.start, Some(Start::After(_))), "after wins");
    }

    #[test]
    fn paths_and_accept_headers() {
        assert!(endpoint_path("/v1/stream/acme/live").is_ok());
        for bad in [
            "/v1/stream/acme",
            "/v1/stream/acme/live/x",
            "/v1/stream/../live",
            "/v1/stream/Acme/live",
        ] {
            assert!(endpoint_path(bad).is_err(), "{bad}");
        }
        let mut headers = HeaderMap::new();
        assert!(!wants_ndjson(&headers));
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/plain, application/x-ndjson;q=0.9"),
        );
        assert!(wants_ndjson(&headers));
    }
}
