//! MQTT 3.1.1: CONNECT return codes, PUBLISH handling, SUBSCRIBE refused.
//!
//! 3.1.1 has no negative acknowledgement: a PUBLISH that is refused closes the connection (the
//! metric `sluice_mqtt_publishes_total{outcome=...}` and a log line say why), so the client
//! never mistakes a refusal for an ack.

use std::future::Future;
use std::sync::Arc;

use ntex_mqtt::v3;
use ntex_util::time::Seconds;

use super::connect;
use super::framing::{read_payload, PayloadRead};
use super::ingest::MqttIngest;
use super::sessions::{DeviceSession, Sessions};
use super::types::CloseReason;
use super::types::{publish_outcome, ConnectRefusal, Credentials, MqttError};
use super::watch::Closer;

struct V3Closer(v3::MqttSink);

impl Closer for V3Closer {
    fn close(&self, _reason: CloseReason) {
        // 3.1.1 servers have no DISCONNECT to send: closing the network connection is the
        // signal.
        self.0.close();
    }
}

pub async fn connect(
    ingest: Arc<MqttIngest>,
    sessions: Arc<Sessions>,
    connect: v3::Connect,
) -> Result<v3::ConnectAck<DeviceSession>, MqttError> {
    let packet = connect.packet();
    let creds = Credentials {
        username: packet.username.as_deref(),
        password: packet.password.as_deref(),
        client_id: &packet.client_id,
    };
    let keep_alive = connect::keep_alive(packet.keep_alive, ingest.limits.keep_alive_max_secs);
    let placed = !connect::lane_of(connect.io()).lacks_place();
    match ingest.authorize(&creds, placed) {
        Ok(device) => {
            let closer = V3Closer(connect.sink());
            let lane = connect::lane_of(connect.io());
            let conformance = connect::conformance_of(connect.io());
            let session =
                DeviceSession::start(&ingest, &sessions, device, closer, lane, conformance, false);
            // No session state is kept between connections (see docs/mqtt.md).
            Ok(connect
                .ack(session, false)
                .idle_timeout(Seconds(keep_alive.saturating_add(keep_alive / 2))))
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
            Ok(match refusal {
                ConnectRefusal::BadCredentials => connect.bad_username_or_pwd(),
                ConnectRefusal::NotAuthorized => connect.not_authorized(),
                ConnectRefusal::BadClientId => connect.identifier_rejected(),
                // 3.1.1 has no "busy": return code 3, server unavailable.
                ConnectRefusal::NotConfigured | ConnectRefusal::ServerBusy => {
                    connect.service_unavailable()
                }
            })
        }
    }
}

pub fn publish(
    session: &v3::Session<DeviceSession>,
    mut publish: v3::Publish,
) -> impl Future<Output = Result<(), MqttError>> + '_ {
    // Taken apart before the future, as in `v5::publish`: the packet is not kept in it.
    // As sent: ntex-mqtt is handed QoS 2 publishes as QoS 1 (see `conformance`).
    let qos = session.qos_sent(publish.qos(), publish.id());
    let read = read_payload(publish.take_payload());
    let topic = publish.packet().topic.clone();
    async move {
        let payload = match read {
            PayloadRead::Now(read) => read,
            PayloadRead::Later(reading) => reading.await,
        }
        .map_err(|_| MqttError::PayloadIncomplete)?;
        let stored = session.publish(&topic, &payload, qos).await;
        if qos == 0 {
            // Nothing to answer at QoS 0: a refusal is counted and logged only.
            return Ok(());
        }
        stored.map_err(|refusal| MqttError::PublishRefused(publish_outcome(&refusal)))
    }
}

/// SUBSCRIBE gets a SUBACK that fails every filter (0x80): this is an ingest-only endpoint.
pub async fn protocol(
    _session: &v3::Session<DeviceSession>,
    message: v3::ProtocolMessage,
) -> Result<v3::ProtocolMessageAck, MqttError> {
    Ok(match message {
        v3::ProtocolMessage::Subscribe(mut subscribe) => {
            for mut subscription in subscribe.iter_mut() {
                subscription.fail();
            }
            subscribe.ack()
        }
        v3::ProtocolMessage::Unsubscribe(unsubscribe) => unsubscribe.ack(),
        other => other.ack(),
    })
}

/// Connection events (write back-pressure, the end of a connection): ntex-mqtt's own handling
/// is what we want; this only keeps it from logging a warning for every one.
pub async fn control(
    session: &v3::Session<DeviceSession>,
    control: ntex_mqtt::Control<MqttError>,
) -> Result<Option<v3::codec::Encoded>, MqttError> {
    connect::log_stop(&session.device, &control);
    Ok(None)
}
