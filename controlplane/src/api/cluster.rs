//! The configuration stream to data-plane nodes, their acknowledgements, and the operator's
//! view of the nodes.
//!
//! A node opens `GET /api/v1/cluster/config-stream` with the cluster secret and says which
//! version it holds and that version's hash. The answer is a long-lived NDJSON stream: a full
//! snapshot when the node is new, behind a gap or drifted, else the deltas it missed; then
//! every new delta as it happens, and a heartbeat with the current version and hash every
//! [`HEARTBEAT`] so that the node notices a silent drift or a dead connection. The node
//! acknowledges (or refuses, with a reason) each version it applies with
//! `POST /api/v1/cluster/acks`, and reports how its webhook deliveries went with
//! `POST /api/v1/cluster/webhook-attempts` (kept and judged by `webhook_health`).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sluice_config::stream::{
    Ack, StreamMessage, StreamQuery, WebhookAttempts, WEBHOOK_ATTEMPTS_PER_REPORT_MAX,
};
use tokio::sync::mpsc;
use utoipa::ToSchema;

use super::{ApiJson, ApiQuery};
use crate::app::App;
use crate::auth::{require_operator, Caller};
use crate::cluster::{CatchUp, NodeView};
use crate::problem::{ApiError, ApiResult, ProblemType};

/// How often a stream says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// Longest node id.
const NODE_ID_CHARS_MAX: usize = 128;

/// Checks the cluster secret; nodes with another secret get nothing.
fn authorize_node(app: &App, headers: &HeaderMap) -> ApiResult<()> {
    let Some(secret) = &app.config.cluster_secret else {
        return Err(ApiError::new(
            ProblemType::ClusterDisabled,
            "this control plane streams no configuration: it has no cluster secret",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Compared as digests, so the time taken says nothing about the secret.
    if presented.is_empty()
        || Sha256::digest(presented.as_bytes()) != Sha256::digest(secret.as_bytes())
    {
        return Err(ApiError::unauthenticated(
            "the cluster secret is missing or wrong",
        ));
    }
    Ok(())
}

fn valid_node_id(id: &str) -> ApiResult<()> {
    if id.is_empty() || id.len() > NODE_ID_CHARS_MAX || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::new(
            ProblemType::InvalidNode,
            format!("node must be 1 to {NODE_ID_CHARS_MAX} visible ASCII characters"),
        ));
    }
    Ok(())
}

fn line(message: &StreamMessage) -> Bytes {
    let mut bytes = serde_json::to_vec(message).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// The lines that bring a node from (`version`, `hash`) to the current version; returns them
/// with the version and hash the node will hold.
fn catch_up(app: &App, version: u64, hash: &str) -> (Vec<Bytes>, u64, String) {
    match app.history.catch_up(version, hash) {
        CatchUp::Nothing => (Vec::new(), version, hash.to_owned()),
        CatchUp::Deltas(deltas) => {
            let (to, hash) = deltas
                .last()
                .map(|d| (d.to, d.hash.clone()))
                .unwrap_or((version, hash.to_owned()));
            let lines = deltas
                .into_iter()
                .map(|delta| line(&StreamMessage::Delta { delta }))
                .collect();
            (lines, to, hash)
        }
        CatchUp::Snapshot(snapshot_line, version, hash) => (vec![snapshot_line], version, hash),
    }
}

/// The configuration stream (NDJSON), for data-plane nodes holding the cluster secret.
#[utoipa::path(get, path = "/api/v1/cluster/config-stream", tag = "cluster", security(()),
    params(StreamQuery),
    responses((status = 200, description = "a long-lived stream of StreamMessage lines", body = StreamMessage, content_type = "application/x-ndjson"),
        (status = 400, description = "`invalid-node`: the node id is not 1 to 128 visible ASCII characters", body = crate::problem::ProblemBody),
        (status = 401, body = crate::problem::ProblemBody),
        (status = 404, description = "`cluster-disabled`: the control plane has no cluster secret", body = crate::problem::ProblemBody),
        (status = 503, body = crate::problem::ProblemBody)))]
pub async fn config_stream(
    State(app): State<App>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<StreamQuery>,
) -> ApiResult<Response> {
    authorize_node(&app, &headers)?;
    valid_node_id(&query.node)?;
    let permit = app.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            ProblemType::Overloaded,
            "too many configuration streams are open",
        )
        .retry_after(5)
    })?;
    if !app.nodes.connected(&query.node, &query.addr) {
        return Err(ApiError::new(
            ProblemType::Overloaded,
            "too many nodes are known to this control plane",
        )
        .retry_after(30));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let node = query.node.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let mut changes = app.history.subscribe();
        let mut stopping = app.stop_signal();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        // Marked seen before looking: a version published in between wakes the loop instead
        // of being lost.
        changes.borrow_and_update();
        let (mut pending, mut version, mut hash) = catch_up(&app, query.version, &query.hash);
        'stream: loop {
            for bytes in pending.drain(..) {
                // A node that stops reading holds at most 64 lines; then this waits, and the
                // send fails when it disconnects.
                if tx.send(bytes).await.is_err() {
                    break 'stream;
                }
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    changes.borrow_and_update();
                    (pending, version, hash) = catch_up(&app, version, &hash);
                }
                _ = heartbeat.tick() => {
                    let (current, current_hash) = app.history.current();
                    // The node compares with its own copy when it holds this version.
                    pending.push(line(&StreamMessage::Heartbeat {
                        version: current.version,
                        hash: current_hash,
                    }));
                    app.nodes.seen(&node);
                }
                _ = stopping.requested() => break,
            }
        }
        app.nodes.disconnected(&node);
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(bytes), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// A node acknowledges or refuses a version.
#[utoipa::path(post, path = "/api/v1/cluster/acks", tag = "cluster", security(()),
    request_body = Ack,
    responses((status = 204),
        (status = 400, description = "`invalid-node`: the node id is not 1 to 128 visible ASCII characters", body = crate::problem::ProblemBody),
        (status = 401, body = crate::problem::ProblemBody),
        (status = 404, description = "`cluster-disabled`: the control plane has no cluster secret", body = crate::problem::ProblemBody)))]
pub async fn ack(
    State(app): State<App>,
    headers: HeaderMap,
    ApiJson(ack): ApiJson<Ack>,
) -> ApiResult<StatusCode> {
    authorize_node(&app, &headers)?;
    valid_node_id(&ack.node)?;
    if ack.ok {
        app.nodes.acked(&ack.node, ack.version);
    } else {
        let reason: String = ack.reason.unwrap_or_default().chars().take(1024).collect();
        app.nodes.nacked(&ack.node, ack.version, reason);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A node reports how its webhook delivery attempts ended: kept in each webhook's delivery
/// and failure logs, and the health they show may disable a webhook (a new configuration
/// version) and mail the workspace's Admins.
#[utoipa::path(post, path = "/api/v1/cluster/webhook-attempts", tag = "cluster", security(()),
    request_body = WebhookAttempts,
    responses((status = 204),
        (status = 400, description = "`invalid-node`: the node id is not 1 to 128 visible ASCII characters; `invalid-body`, `malformed-json`: not a report of at most 1000 attempts", body = crate::problem::ProblemBody),
        (status = 401, body = crate::problem::ProblemBody),
        (status = 404, description = "`cluster-disabled`: the control plane has no cluster secret", body = crate::problem::ProblemBody)))]
pub async fn webhook_attempts(
    State(app): State<App>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<StatusCode> {
    // The secret first: a body from anyone else is not even parsed.
    authorize_node(&app, &headers)?;
    let report: WebhookAttempts = serde_json::from_slice(&body).map_err(|e| {
        let kind = if e.is_syntax() || e.is_eof() {
            ProblemType::MalformedJson
        } else {
            ProblemType::InvalidBody
        };
        ApiError::new(kind, format!("the body is not a report of attempts: {e}"))
    })?;
    valid_node_id(&report.node)?;
    if report.attempts.len() > WEBHOOK_ATTEMPTS_PER_REPORT_MAX {
        return Err(ApiError::new(
            ProblemType::InvalidBody,
            format!(
                "a report holds at most {WEBHOOK_ATTEMPTS_PER_REPORT_MAX} attempts (this one {}): \
                 report more often",
                report.attempts.len()
            ),
        ));
    }
    if report.attempts.is_empty() {
        return Ok(StatusCode::NO_CONTENT);
    }
    // Mail is reserved before the change, as everywhere: a full queue refuses the report
    // whole (the node sends it again) instead of disabling a webhook without telling anyone.
    let mailer = app.mailer.clone();
    let disabled = app
        .write(move |s| {
            let (changes, disabled) = crate::webhook_health::report_changes(
                s,
                &report.node,
                &report.attempts,
                chrono::Utc::now(),
            );
            let mut mails = Vec::new();
            for d in disabled {
                let slots = d
                    .admins
                    .iter()
                    .map(|admin| Ok((mailer.reserve()?, admin.clone())))
                    .collect::<ApiResult<Vec<_>>>()?;
                mails.push((d, slots));
            }
            Ok((changes, mails))
        })
        .await?;
    let public_url = app.config.public_url();
    for (d, slots) in disabled {
        tracing::warn!(
            workspace = %d.workspace.slug,
            webhook = %d.webhook.slug,
            reason = d.webhook.disabled.as_ref().map(|x| x.reason.as_str()).unwrap_or_default(),
            "webhook disabled after failing; mailing the workspace's Admins"
        );
        for (slot, admin) in slots {
            slot.send(crate::webhook_health::disabled_mail(
                &d,
                &admin,
                &public_url,
            ));
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The data-plane nodes, their acknowledged version and lag. Operators only.
#[utoipa::path(get, path = "/api/v1/operator/nodes", tag = "operator",
    responses((status = 200, body = NodesView), (status = 403, body = crate::problem::ProblemBody)))]
pub async fn list_nodes(State(app): State<App>, caller: Caller) -> ApiResult<Json<NodesView>> {
    require_operator(&caller)?;
    let (current, hash) = app.history.current();
    Ok(Json(NodesView {
        version: current.version,
        hash,
        nodes: app.nodes.list(current.version),
    }))
}

/// The current configuration version and every node.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodesView {
    pub version: u64,
    pub hash: String,
    pub nodes: Vec<NodeView>,
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus metrics of the configuration stream: the current version and, per node, the
/// acknowledged version, the lag and whether it is connected. Scrape with the cluster secret
/// or an operator's token as bearer.
#[utoipa::path(get, path = "/metrics", tag = "cluster", security(()),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"),
        (status = 401, body = crate::problem::ProblemBody)))]
pub async fn metrics(State(app): State<App>, headers: HeaderMap) -> ApiResult<Response> {
    if authorize_node(&app, &headers).is_err() {
        let operator = crate::auth::presented_secret_from_headers(&headers)
            .and_then(|secret| Caller::from_secret(&app, &secret))
            .is_some_and(|caller| caller.user.operator);
        if !operator {
            return Err(ApiError::unauthenticated(
                "send the cluster secret or an operator's token as bearer",
            ));
        }
    }
    let (current, _) = app.history.current();
    let nodes = app.nodes.list(current.version);
    let mut text = String::new();
    let mut gauge = |name: &str, help: &str, rows: Vec<(Option<&str>, u64)>| {
        text.push_str(&format!("# HELP sluice_controlplane_{name} {help}\n"));
        text.push_str(&format!("# TYPE sluice_controlplane_{name} gauge\n"));
        for (node, value) in rows {
            match node {
                Some(node) => text.push_str(&format!(
                    "sluice_controlplane_{name}{{node=\"{}\"}} {value}\n",
                    escape_label(node)
                )),
                None => text.push_str(&format!("sluice_controlplane_{name} {value}\n")),
            }
        }
    };
    gauge(
        "config_version",
        "Current configuration version",
        vec![(None, current.version)],
    );
    gauge(
        "nodes_connected",
        "Nodes with an open configuration stream",
        vec![(None, nodes.iter().filter(|n| n.connected).count() as u64)],
    );
    gauge(
        "node_acked_version",
        "Last configuration version a node acknowledged",
        nodes
            .iter()
            .filter_map(|n| n.acked_version.map(|v| (Some(n.id.as_str()), v)))
            .collect(),
    );
    gauge(
        "node_lag",
        "Current version minus the version a node acknowledged",
        nodes
            .iter()
            .filter_map(|n| n.lag.map(|v| (Some(n.id.as_str()), v)))
            .collect(),
    );
    gauge(
        "node_connected",
        "1 while a node's configuration stream is open",
        nodes
            .iter()
            .map(|n| (Some(n.id.as_str()), u64::from(n.connected)))
            .collect(),
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_config::snapshot::ConfigSnapshot;

    #[test]
    fn the_cached_snapshot_line_is_the_documented_message() {
        let snapshot = ConfigSnapshot::empty();
        let hash = snapshot.content_hash();
        let cached: serde_json::Value =
            serde_json::from_slice(&crate::cluster::snapshot_line(&snapshot, &hash)).expect("json");
        let documented =
            serde_json::to_value(StreamMessage::Snapshot { hash, snapshot }).expect("json");
        assert_eq!(cached, documented);
    }
}
