//! The API's listener: accepts connections up to `connections_max`, serves each with hyper's
//! HTTP/1.1 under the idle timeout, and stops on the shutdown signal.
//!
//! Why not `axum::serve`: it has no connection cap and no timeouts, and every connection holds
//! a file descriptor of the process. In `sluice up` that is the process of the WAL, the lake
//! and both data-plane listeners too: 20,000 idle API connections used up its descriptors and
//! ingest, `/healthz` and uploads all failed together (issue 16). Here the API holds at most
//! `connections_max` descriptors for connections, plus one for an instant while it refuses one.
//!
//! Past the cap a connection is accepted, answered `503 overloaded` with `Retry-After: 1` and
//! `Connection: close`, and closed, without reading its request: the client learns at once
//! why, where a listener that stops accepting would leave it waiting in the kernel's backlog
//! until its own timeout. The refusal is written inline, never in a task of its own, so a
//! flood of refused connections holds no descriptor past the accept loop's next turn.
//!
//! This module never reads a request: the router and `request_body` do.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use sluice_storage::shutdown::Shutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::problem::{ProblemBody, ProblemType};

/// How the listener treats connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    /// Connections open at once; more are refused with `503`.
    pub connections_max: usize,
    /// A connection waiting this long for a request head (idle between requests, or sending
    /// one slowly) is closed.
    pub idle_timeout: Duration,
}

/// How often at most a warning says that connections are being refused: a flood must not
/// become a flood of log lines.
const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Accepting failed for a reason that may pass (out of descriptors, out of memory): wait this
/// long before the next try instead of spinning on the error.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `stop` is requested, then stops accepting, lets each
/// connection finish the request it is in, and waits for them until `deadline(stop)`.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    mut stop: Shutdown,
    deadline: impl FnOnce(Instant) -> Instant,
) {
    let connections_max = limits.connections_max.clamp(1, Semaphore::MAX_PERMITS);
    let open = Arc::new(Semaphore::new(connections_max));
    let refusal = refusal_response();
    let mut refused = Refused::default();
    let requested = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match open.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(serve_connection(
                            stream,
                            peer,
                            router.clone(),
                            limits.idle_timeout,
                            stop.clone(),
                            permit,
                        ));
                    }
                    Err(_) => {
                        refuse(stream, &refusal);
                        refused.count(connections_max);
                    }
                },
                // The connection was reset before it was accepted: nothing to wait for.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an API connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            requested = stop.requested() => break requested,
        }
    };
    // Closing the listener first: new connections are refused by the kernel from here on.
    drop(listener);
    let deadline = tokio::time::Instant::from_std(deadline(requested));
    let all = u32::try_from(connections_max).unwrap_or(u32::MAX);
    if tokio::time::timeout_at(deadline, open.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections_max - open.available_permits(),
            "API connections still open at the stop deadline are cut off"
        );
    }
}

/// One connection: HTTP/1.1 with keep-alive until the idle timeout, the client's address
/// given to handlers as `ConnectInfo`, its place among the open connections held by `permit`.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    idle_timeout: Duration,
    mut stop: Shutdown,
    permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move {
            let response = tower::ServiceExt::oneshot(router, request).await;
            Ok::<_, Infallible>(match response {
                Ok(response) => response,
                Err(never) => match never {},
            })
        }
    });
    // hyper's head timeout runs whenever the connection waits for a request head: from the
    // accept until the first head is in, and again after each response. So it closes idle
    // keep-alive connections and slow heads alike, and never runs during a response (the
    // configuration stream is one long response).
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Some(idle_timeout))
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        _ = stop.requested() => {
            // Ends an idle connection now, one in a request after its response.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "API connection ended with an error");
    }
    drop(permit);
}

/// The bytes of the answer to a connection over the cap.
fn refusal_response() -> Vec<u8> {
    let kind = ProblemType::Overloaded;
    let body = ProblemBody {
        kind: kind.uri(),
        title: kind.title().to_owned(),
        status: kind.status().as_u16(),
        detail: "the control plane has too many open connections; retry shortly".to_owned(),
        errors: Vec::new(),
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let mut response = format!(
        "HTTP/1.1 503 Service Unavailable\r\n\
         content-type: application/problem+json\r\n\
         retry-after: 1\r\n\
         connection: close\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    response
}

/// Answers a connection over the cap and closes it, without waiting: the answer is far smaller
/// than a fresh socket's send buffer, so it is written whole or (the client already gone) not
/// at all.
fn refuse(stream: TcpStream, response: &[u8]) {
    // A request already received but unread would make the close a reset, which may discard
    // the answer on the client's side before it reads it: read what has arrived.
    let mut scratch = [0u8; 4096];
    let _ = stream.try_read(&mut scratch);
    let _ = stream.try_write(response);
}

/// Counts refused connections for the rate-limited warning.
#[derive(Default)]
struct Refused {
    since_warning: u64,
    warned_at: Option<Instant>,
}

impl Refused {
    fn count(&mut self, connections_max: usize) {
        self.since_warning += 1;
        let now = Instant::now();
        if self
            .warned_at
            .is_some_and(|at| now.duration_since(at) < REFUSED_LOG_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            connections_max,
            refused = self.since_warning,
            "the API is at its connection limit (controlplane.connections_max); refusing new connections with 503"
        );
        self.since_warning = 0;
        self.warned_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_complete_problem_response() {
        let response = refusal_response();
        let text = String::from_utf8(response).expect("text");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(head.contains("retry-after: 1"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(body["type"], "urn:sluice:problem:overloaded");
        assert_eq!(body["status"], 503);
    }
}
