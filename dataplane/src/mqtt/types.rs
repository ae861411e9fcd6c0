//! The types the MQTT front end's modules share: who a connection speaks for, and why a
//! CONNECT, a PUBLISH or a session is refused or closed.

use uuid::Uuid;

use crate::access::{self, ConfigView, Refusal as AccessRefusal};
use crate::admit::Refusal;

/// The CONNECT fields that decide who the client is.
pub struct Credentials<'a> {
    /// The workspace slug.
    pub username: Option<&'a str>,
    /// An ingest token of that workspace.
    pub password: Option<&'a [u8]>,
    /// The device id.
    pub client_id: &'a str,
    /// MQTT 5: an authentication method, asking for enhanced authentication (refused: the
    /// token is the password).
    pub enhanced_auth: bool,
}

/// Who an accepted connection speaks for. The token is kept as its hash only, and every
/// PUBLISH is checked again against the configuration in force at that moment.
#[derive(Debug, Clone)]
pub struct Device {
    pub workspace: String,
    pub workspace_id: Uuid,
    pub token_hash: [u8; 32],
    pub device_id: String,
    pub expires_at_us: Option<i64>,
    /// The [`ConfigView::generation`] the CONNECT was checked against.
    pub checked_generation: u64,
}

impl Device {
    /// Whether this device may still be connected under `view`, at `now_us`.
    pub fn still_allowed(&self, view: &ConfigView, now_us: i64) -> Result<(), AccessRefusal> {
        view.check_session(&self.token_hash, &self.workspace, &self.device_id, now_us)
            .map(|_| ())
    }
}

/// Why a CONNECT is refused. Every refusal looks the same to the client whatever the detail,
/// so that a wrong guess learns nothing about which workspaces or tokens exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// No or wrong workspace/token pair, or an expired token.
    BadCredentials,
    /// Valid credentials that may not ingest now: disabled workspace, no ingest scope, a token
    /// bound to another device.
    NotAuthorized,
    /// Empty or unusable client id (it is the device id).
    BadClientId,
    /// The node follows a control plane it has not heard from yet and had nothing cached: it
    /// does not know any token, so it cannot tell (server unavailable; try another node).
    NotConfigured,
    /// `mqtt.connecting_max` connections were authenticating for as long as this one waited
    /// for a place among them (the connect timeout): server busy, try again later.
    ServerBusy,
    /// MQTT 5 enhanced authentication (an authentication method in the CONNECT), which the
    /// node does not offer: workspace and token go in the user name and password.
    BadAuthenticationMethod,
}

impl ConnectRefusal {
    pub fn slug(self) -> &'static str {
        match self {
            ConnectRefusal::BadCredentials => "bad-credentials",
            ConnectRefusal::NotAuthorized => "not-authorized",
            ConnectRefusal::BadClientId => "bad-client-id",
            ConnectRefusal::NotConfigured => "not-configured",
            ConnectRefusal::ServerBusy => "server-busy",
            ConnectRefusal::BadAuthenticationMethod => "bad-authentication-method",
        }
    }
}

/// Why the node closes a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Another CONNECT with the same client id.
    TakenOver,
    /// Token revoked or expired, workspace disabled or deleted, device binding changed.
    NotAuthorized,
    /// The node is shutting down (SIGTERM): reconnect, through the balancer, to another node.
    ShuttingDown,
}

impl CloseReason {
    pub fn slug(self) -> &'static str {
        match self {
            CloseReason::TakenOver => "taken-over",
            CloseReason::NotAuthorized => "not-authorized",
            CloseReason::ShuttingDown => "shutting-down",
        }
    }
}

/// The MQTT outcome label of a refused PUBLISH (`sluice_mqtt_publishes_total{outcome}`).
/// MQTT's labels predate the shared refusal type and are part of the documented metrics.
pub fn publish_outcome(refusal: &Refusal) -> &'static str {
    match refusal {
        Refusal::TopicInvalid => "topic-invalid",
        Refusal::Access(access::Refusal::UnknownSource) => "unknown-source",
        Refusal::Access(_) => "not-authorized",
        Refusal::PayloadTooLarge { .. } => "payload-too-large",
        Refusal::Parse(_) => "payload-invalid",
        Refusal::InvalidEvents { .. } => "invalid-events",
        Refusal::RateLimited { .. } | Refusal::Overloaded | Refusal::StorageFull => {
            "quota-exceeded"
        }
        Refusal::RecordTooLarge | Refusal::StorageUnavailable => "unavailable",
    }
}

/// A line for the client (MQTT 5 reason string) and the log.
pub fn describe(refusal: &Refusal) -> String {
    match refusal {
        Refusal::TopicInvalid => {
            "publish to ingest/{source} or ingest/{source}/..., source a lowercase slug".into()
        }
        Refusal::Access(access::Refusal::UnknownSource) => {
            "no such source in this workspace".into()
        }
        Refusal::Access(r) => format!("not authorized: {r:?}"),
        Refusal::PayloadTooLarge { bytes, .. } => {
            format!("payload of {bytes} bytes is over the limit")
        }
        Refusal::Parse(e) => e.to_string(),
        Refusal::InvalidEvents { .. } => refusal.to_string(),
        Refusal::RateLimited { .. } | Refusal::Overloaded | Refusal::StorageFull => {
            "over the workspace's rate or the node's disk quota; retry later".into()
        }
        Refusal::RecordTooLarge | Refusal::StorageUnavailable => {
            "the node cannot store events right now".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::ParseError;

    /// The outcome labels are the documented metric labels of docs/mqtt.md.
    #[test]
    fn refusals_keep_their_documented_mqtt_outcomes() {
        let cases = [
            (Refusal::TopicInvalid, "topic-invalid"),
            (
                Refusal::Access(access::Refusal::UnknownSource),
                "unknown-source",
            ),
            (
                Refusal::Access(access::Refusal::MissingScope),
                "not-authorized",
            ),
            (
                Refusal::PayloadTooLarge { bytes: 2, max: 1 },
                "payload-too-large",
            ),
            (Refusal::Parse(ParseError::TooLarge), "payload-invalid"),
            (Refusal::RateLimited { retry_after_s: 1 }, "quota-exceeded"),
            (Refusal::Overloaded, "quota-exceeded"),
            (Refusal::StorageFull, "quota-exceeded"),
            (Refusal::StorageUnavailable, "unavailable"),
        ];
        let doc = include_str!("../../../docs/mqtt.md");
        for (refusal, outcome) in cases {
            assert_eq!(publish_outcome(&refusal), outcome, "{refusal:?}");
            assert!(
                doc.contains(&format!("`{outcome}`")),
                "{outcome} is not in docs/mqtt.md"
            );
        }
    }
}
