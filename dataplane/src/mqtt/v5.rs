//! MQTT 5: CONNACK reason codes, PUBACK/PUBREC reason codes for refusals, DISCONNECT with a
//! reason when the node closes a session, SUBSCRIBE refused.

use std::future::Future;
use std::sync::Arc;

use ntex_bytes::ByteString;
use ntex_mqtt::v5;
use ntex_mqtt::v5::codec::{
    ConnectAckReason, Disconnect, DisconnectReasonCode, PublishAckReason, SubscribeAckReason,
};

use super::connect;
use super::framing::{read_payload, PayloadRead};
use super::ingest::MqttIngest;
use super::sessions::{DeviceSession, Sessions};
use super::types::CloseReason;
use super::types::{describe, ConnectRefusal, Credentials, MqttError};
use super::watch::Closer;
use crate::admit::Refusal;

struct V5Closer(v5::MqttSink);

impl Closer for V5Closer {
    fn close(&self, reason: CloseReason) {
        let (reason_code, text) = match reason {
            CloseReason::TakenOver => (
                DisconnectReasonCode::SessionTakenOver,
                "another connection with this client id",
            ),
            CloseReason::NotAuthorized => (
                DisconnectReasonCode::NotAuthorized,
                "the token or workspace no longer allows ingest",
            ),
            CloseReason::ShuttingDown => (
                DisconnectReasonCode::ServerShuttingDown,
                "this node is shutting down; connect again",
            ),
        };
        self.0.close_with_reason(Disconnect {
            reason_code,
            reason_string: Some(ByteString::from_static(text)),
            ..Disconnect::default()
        });
    }
}

pub async fn connect(
    ingest: Arc<MqttIngest>,
    sessions: Arc<Sessions>,
    connect: v5::Connect,
) -> Result<v5::ConnectAck<DeviceSession>, MqttError> {
    let packet = connect.packet();
    let creds = Credentials {
        username: packet.username.as_deref(),
        password: packet.password.as_deref(),
        client_id: &packet.client_id,
    };
    let asked_keep_alive = packet.keep_alive;
    let keep_alive = connect::keep_alive(asked_keep_alive, ingest.limits.keep_alive_max_secs);
    let placed = !connect::lane_of(connect.io()).lacks_place();
    match ingest.authorize(&creds, placed) {
        Ok(device) => {
            let closer = V5Closer(connect.sink());
            let lane = connect::lane_of(connect.io());
            let conformance = connect::conformance_of(connect.io());
            let session =
                DeviceSession::start(&ingest, &sessions, device, closer, lane, conformance, true);
            Ok(connect.ack(session).keep_alive(keep_alive).with(|ack| {
                // Only tell the client a keep-alive when it differs from its own [MQTT-3.2.2-21].
                if keep_alive != asked_keep_alive {
                    ack.server_keepalive_sec = Some(keep_alive);
                }
                // Ingest only: nothing to subscribe to.
                ack.wildcard_subscription_available = false;
                ack.subscription_identifiers_available = false;
                ack.shared_subscription_available = false;
            }))
        }
        Err(refusal) => {
            // Not the client's failure: no throttle for a node without a configuration or
            // without room.
            if !matches!(
                refusal,
                ConnectRefusal::NotConfigured | ConnectRefusal::ServerBusy
            ) {
                connect::after_failed_connect(&ingest, connect.io()).await;
            }
            let code = match refusal {
                ConnectRefusal::BadCredentials => ConnectAckReason::BadUserNameOrPassword,
                ConnectRefusal::NotAuthorized => ConnectAckReason::NotAuthorized,
                ConnectRefusal::BadClientId => ConnectAckReason::ClientIdentifierNotValid,
                ConnectRefusal::NotConfigured => ConnectAckReason::ServerUnavailable,
                ConnectRefusal::ServerBusy => ConnectAckReason::ServerBusy,
            };
            Ok(connect.failed(code))
        }
    }
}

pub fn publish(
    session: &v5::Session<DeviceSession>,
    mut publish: v5::Publish,
) -> impl Future<Output = Result<v5::PublishAck, MqttError>> + '_ {
    // Taken apart before the future: it keeps the payload, the topic and the answer, not the
    // 264-byte packet, and ntex moves the future through each of its layers per PUBLISH.
    // As sent: ntex-mqtt is handed QoS 2 publishes as QoS 1 (see `conformance`).
    let qos = session.qos_sent(publish.qos(), publish.id());
    let read = read_payload(publish.take_payload());
    let topic = publish.packet().topic.clone();
    let ack = publish.ack();
    async move {
        let payload = match read {
            PayloadRead::Now(read) => read,
            PayloadRead::Later(reading) => reading.await,
        }
        .map_err(|_| MqttError::PayloadIncomplete)?;
        let stored = session.publish(&topic, &payload, qos).await;
        if qos == 0 {
            // Nothing to answer at QoS 0: a refusal is counted and logged only.
            return Ok(ack);
        }
        Ok(match stored {
            Ok(()) => ack,
            Err(refusal) => ack
                .reason_code(reason_code(&refusal))
                .reason(ByteString::from(describe(&refusal))),
        })
    }
}

/// The PUBACK or PUBREC reason code of a refused PUBLISH.
fn reason_code(refusal: &Refusal) -> PublishAckReason {
    use crate::access::Refusal as Access;
    match refusal {
        Refusal::TopicInvalid | Refusal::Access(Access::UnknownSource) => {
            PublishAckReason::TopicNameInvalid
        }
        Refusal::Access(_) => PublishAckReason::NotAuthorized,
        Refusal::Parse(_) | Refusal::InvalidEvents { .. } => PublishAckReason::PayloadFormatInvalid,
        Refusal::PayloadTooLarge { .. }
        | Refusal::RateLimited { .. }
        | Refusal::Overloaded
        | Refusal::StorageFull => PublishAckReason::QuotaExceeded,
        Refusal::RecordTooLarge | Refusal::StorageUnavailable => {
            PublishAckReason::ImplementationSpecificError
        }
    }
}

/// SUBSCRIBE gets a SUBACK refusing every filter with 0x87: this is an ingest-only endpoint.
pub async fn protocol(
    _session: &v5::Session<DeviceSession>,
    message: v5::ProtocolMessage,
) -> Result<v5::ProtocolMessageAck, MqttError> {
    Ok(match message {
        v5::ProtocolMessage::Subscribe(mut subscribe) => {
            for mut subscription in subscribe.iter_mut() {
                subscription.fail(SubscribeAckReason::NotAuthorized);
            }
            subscribe
                .ack_reason(ByteString::from_static(
                    "ingest only: publish to ingest/{source}",
                ))
                .ack()
        }
        other => other.ack(),
    })
}

/// Connection events (write back-pressure, the end of a connection): ntex-mqtt's own handling
/// (a DISCONNECT with the fitting reason code) is what we want; this only keeps it from
/// logging a warning for every one.
pub async fn control(
    session: &v5::Session<DeviceSession>,
    control: ntex_mqtt::Control<MqttError>,
) -> Result<Option<v5::codec::Encoded>, MqttError> {
    connect::log_stop(&session.device, &control);
    Ok(None)
}
