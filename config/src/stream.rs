//! The configuration stream's wire format, spoken by the control plane (`GET
//! /api/v1/cluster/config-stream`, `POST /api/v1/cluster/acks`) and by every data-plane node.
//!
//! The stream is NDJSON: one [`StreamMessage`] per line. A node asks for what it holds with
//! [`StreamQuery`] and answers each version with an [`Ack`]. Nodes also report what became of
//! their webhook deliveries with [`WebhookAttempts`]. Both planes use these types, so neither
//! can drift from the other by building JSON by hand.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::delta::ConfigDelta;
use crate::snapshot::ConfigSnapshot;

/// The path a node opens the stream on.
pub const STREAM_PATH: &str = "/api/v1/cluster/config-stream";
/// The path a node posts its [`Ack`]s to.
pub const ACKS_PATH: &str = "/api/v1/cluster/acks";
/// The path a node posts its [`WebhookAttempts`] to, with the cluster secret as bearer.
pub const WEBHOOK_ATTEMPTS_PATH: &str = "/api/v1/cluster/webhook-attempts";
/// Attempts one report holds at most; the control plane refuses more (`400 invalid-body`).
/// The request body is also bounded, by the control plane's `body_bytes_max` (1 MiB by
/// default): send more often rather than more at once.
pub const WEBHOOK_ATTEMPTS_PER_REPORT_MAX: usize = 1000;
/// Characters of an attempt's `error` the control plane keeps; longer text is cut, not
/// refused. `webhook_message_id` is cut at [`WEBHOOK_MESSAGE_ID_CHARS_MAX`].
pub const WEBHOOK_ERROR_CHARS_MAX: usize = 1024;
/// Characters of an attempt's `webhook_message_id` the control plane keeps.
pub const WEBHOOK_MESSAGE_ID_CHARS_MAX: usize = 128;

/// What a node tells the control plane when it opens the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct StreamQuery {
    /// The node's id.
    #[cfg_attr(feature = "openapi", param(pattern = r"^[!-~]{1,128}$"))]
    pub node: String,
    /// The node's HTTP ingest address, for the operator's list.
    #[serde(default)]
    pub addr: String,
    /// The configuration version the node holds (0: none).
    #[serde(default)]
    pub version: u64,
    /// The content hash of that version; empty forces a full snapshot.
    #[serde(default)]
    pub hash: String,
}

/// One line of the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamMessage {
    /// Replace the whole configuration.
    Snapshot {
        /// The content hash of `snapshot`.
        hash: String,
        #[cfg_attr(feature = "openapi", schema(value_type = Object))]
        snapshot: ConfigSnapshot,
    },
    /// Apply to the version `from`, giving `to`.
    Delta {
        #[cfg_attr(feature = "openapi", schema(value_type = Object))]
        delta: ConfigDelta,
    },
    /// The control plane's current version and hash.
    Heartbeat { version: u64, hash: String },
}

/// A node's answer to a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Ack {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[!-~]{1,128}$"))]
    pub node: String,
    pub version: u64,
    /// True: applied. False: refused, see `reason`; the node keeps its last good version.
    pub ok: bool,
    #[serde(default)]
    pub reason: Option<String>,
}

/// A node's report of webhook delivery attempts, `POST` to [`WEBHOOK_ATTEMPTS_PATH`]
/// (`Authorization: Bearer <cluster secret>`, answered `204`). Send attempts as they end,
/// batched (every few seconds, at most [`WEBHOOK_ATTEMPTS_PER_REPORT_MAX`] per report); a
/// report the control plane did not answer with `204` may be sent again, the logs then show
/// those attempts twice, which does no other harm.
///
/// The control plane keeps, per subscription, the 50 most recent attempts of every node (the
/// delivery log) and the 50 most recent `failed` ones (the failure log), and judges each
/// subscription's health from them: it disables a subscription that has not delivered for
/// its `disable_after_s` (nodes then get it with `enabled: false` in the next configuration
/// version). Attempts of a subscription it no longer has are dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookAttempts {
    /// The reporting node's id, as in [`StreamQuery::node`].
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[!-~]{1,128}$"))]
    pub node: String,
    /// At most [`WEBHOOK_ATTEMPTS_PER_REPORT_MAX`], in any order.
    pub attempts: Vec<WebhookAttempt>,
}

/// One HTTP request of one batch to one subscription's URL, as it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookAttempt {
    /// The subscription's `id` (`WebhookConfig::id`).
    pub webhook_id: Uuid,
    /// When the request was sent (RFC 3339). A time in the future is taken as the time the
    /// report arrives: the control plane judges health by these times, so keep the node's
    /// clock right.
    pub at: DateTime<Utc>,
    pub outcome: WebhookOutcome,
    /// The receiver's HTTP status; absent when there was no answer (connection refused,
    /// timeout, TLS failure, address refused by the outbound policy).
    #[serde(default)]
    pub status: Option<u16>,
    /// Events in the batch.
    pub events: u64,
    /// The batch's first and last event ids (the events' UUIDv7 `event_id`).
    #[serde(default)]
    pub first_event_id: Option<Uuid>,
    #[serde(default)]
    pub last_event_id: Option<Uuid>,
    /// From sending the request to the end of the answer, or to the failure.
    pub duration_ms: u64,
    /// What went wrong, for people: the connection error, or the status and the start of
    /// the answer's body. Cut at [`WEBHOOK_ERROR_CHARS_MAX`] characters.
    #[serde(default)]
    pub error: Option<String>,
    /// The `webhook-id` header of the request (the same for every attempt of one batch, so
    /// that receivers can drop duplicates). Cut at [`WEBHOOK_MESSAGE_ID_CHARS_MAX`].
    pub webhook_message_id: String,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum WebhookOutcome {
    /// A 2xx answer: the batch is delivered; the subscription is healthy again.
    Delivered,
    /// No answer, 408, 429 or 5xx: the node sends the same batch again later.
    Retrying,
    /// Any other status: another 4xx (the receiver refuses this batch and would refuse it
    /// again) or a redirect (never followed: its target was not checked against the outbound
    /// address policy). The node gives the batch up (the control plane's failure log keeps
    /// it) and goes on with the next one.
    Failed,
}

impl WebhookOutcome {
    /// The outcome of an answer with HTTP `status`: the rule both planes follow.
    pub fn of_status(status: u16) -> WebhookOutcome {
        match status {
            200..=299 => WebhookOutcome::Delivered,
            408 | 429 | 500..=599 => WebhookOutcome::Retrying,
            _ => WebhookOutcome::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_lines_and_read_back_as_written() {
        let heartbeat = StreamMessage::Heartbeat {
            version: 7,
            hash: "ab".into(),
        };
        let line = serde_json::to_string(&heartbeat).expect("json");
        assert_eq!(line, r#"{"type":"heartbeat","version":7,"hash":"ab"}"#);
        let back: StreamMessage = serde_json::from_str(&line).expect("parse");
        assert_eq!(back, heartbeat);
    }

    #[test]
    fn an_ack_without_reason_reads_and_unknown_fields_are_refused() {
        let ack: Ack = serde_json::from_str(r#"{"node":"n","version":3,"ok":true}"#).expect("ack");
        assert_eq!(ack.reason, None);
        assert!(
            serde_json::from_str::<Ack>(r#"{"node":"n","version":3,"ok":true,"x":1}"#).is_err()
        );
    }

    #[test]
    fn a_webhook_report_reads_with_optional_fields_absent_and_outcomes_follow_the_status() {
        let report: WebhookAttempts = serde_json::from_str(
            r#"{"node":"n1","attempts":[{"webhook_id":"0193a4b0-0000-7000-8000-000000000001",
                "at":"2026-12-06T10:00:00Z","outcome":"retrying","events":3,"duration_ms":12,
                "webhook_message_id":"msg_1"}]}"#,
        )
        .expect("report");
        assert_eq!(report.attempts[0].outcome, WebhookOutcome::Retrying);
        assert_eq!(report.attempts[0].status, None);
        for (status, outcome) in [
            (200, WebhookOutcome::Delivered),
            (204, WebhookOutcome::Delivered),
            (301, WebhookOutcome::Failed),
            (400, WebhookOutcome::Failed),
            (410, WebhookOutcome::Failed),
            (408, WebhookOutcome::Retrying),
            (429, WebhookOutcome::Retrying),
            (503, WebhookOutcome::Retrying),
        ] {
            assert_eq!(WebhookOutcome::of_status(status), outcome, "{status}");
        }
    }
}
