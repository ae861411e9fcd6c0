//! What MQTT 3.1.1 and 5 connections have in common around their CONNECT and their end: the
//! keep-alive granted, the connection's QoS 0 lane and conformance state, the delay of a refused CONNECT, and the
//! log line of a connection the node closed.

use std::net::IpAddr;
use std::rc::Rc;

use super::conformance::Conformance;
use super::ingest::MqttIngest;
use super::lane::Lane;
use super::types::{Device, MqttError};

/// Says why a connection ends when the node ended it.
pub fn log_stop(device: &Device, control: &ntex_mqtt::Control<MqttError>) {
    use ntex_mqtt::{Control, Reason};
    match control {
        Control::Stop(Reason::Error(err)) => tracing::info!(
            workspace = %device.workspace,
            device = %device.device_id,
            reason = err.get_ref().slug(),
            "MQTT connection closed"
        ),
        Control::Stop(Reason::Protocol(err)) => tracing::info!(
            workspace = %device.workspace,
            device = %device.device_id,
            error = %err.get_ref(),
            "MQTT connection closed: protocol error"
        ),
        _ => {}
    }
}

/// The QoS 0 lane of the connection behind `io`: its framing filter's, or a lane of its own
/// (never offered a packet) should the filter be missing.
pub fn lane_of(io: &ntex_io::IoBoxed) -> Rc<Lane> {
    io.query::<Rc<Lane>>().as_ref().cloned().unwrap_or_default()
}

/// The conformance state of the connection behind `io`: its framing filter's, or one of its
/// own (that never saw a packet) should the filter be missing.
pub fn conformance_of(io: &ntex_io::IoBoxed) -> Rc<Conformance> {
    io.query::<Rc<Conformance>>()
        .as_ref()
        .cloned()
        .unwrap_or_default()
}

/// Counts a refused CONNECT against the client's address and waits as long as the throttle
/// says before the refusal is answered.
pub async fn after_failed_connect(ingest: &MqttIngest, io: &ntex_io::IoBoxed) {
    let peer: Option<IpAddr> = io
        .query::<ntex_io::types::PeerAddr>()
        .get()
        .map(|peer| peer.0.ip());
    let delay = ingest.failures.record(peer);
    if !delay.is_zero() {
        ntex_util::time::sleep(delay).await;
    }
}

/// The keep-alive the node applies: the client's, capped; a client asking for none gets the
/// cap (a connection that never has to speak would hold its slot forever).
pub fn keep_alive(asked: u16, max: u16) -> u16 {
    let max = max.max(1);
    if asked == 0 {
        max
    } else {
        asked.min(max)
    }
}
