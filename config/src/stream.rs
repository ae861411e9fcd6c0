//! The configuration stream's wire format, spoken by the control plane (`GET
//! /api/v1/cluster/config-stream`, `POST /api/v1/cluster/acks`) and by every data-plane node.
//!
//! The stream is NDJSON: one [`StreamMessage`] per line. A node asks for what it holds with
//! [`StreamQuery`] and answers each version with an [`Ack`]. Both planes use these types, so
//! neither can drift from the other by building JSON by hand.

use serde::{Deserialize, Serialize};

use crate::delta::ConfigDelta;
use crate::snapshot::ConfigSnapshot;

/// The path a node opens the stream on.
pub const STREAM_PATH: &str = "/api/v1/cluster/config-stream";
/// The path a node posts its [`Ack`]s to.
pub const ACKS_PATH: &str = "/api/v1/cluster/acks";

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
}
