//! MQTT conformance: packets the specifications say how to answer, sent as raw bytes to a real
//! `sluice up`, each answer checked byte for byte, and whether the connection is then closed.
//! Every row names the section of the specification it checks: "5 §x" is OASIS MQTT Version
//! 5.0, "3.1.1 §x" OASIS MQTT Version 3.1.1. What must not be stored is then looked for in the
//! lake with DuckDB.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::mqtt::{connect_raw, mqtt_str, publish_raw, read_packet, remaining_length};
use common::{duckdb, wait_for, Sluice};
use serde_json::{json, Value};

/// `mqtt.receive_max`'s default.
const RECEIVE_MAX: u16 = 64;
/// How long an answer or a close may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// One row of the table.
struct Case {
    name: &'static str,
    /// The section (and normative statement) of the specification the row checks.
    spec: &'static str,
    /// The valid CONNECT sent first: 4 (3.1.1) or 5; `None` when the first step is the CONNECT.
    connect: Option<u8>,
    /// Bytes sent, each followed by the exact bytes that must come back.
    steps: Vec<(Vec<u8>, Vec<u8>)>,
    /// Whether the node must then close the connection (else it must still answer a PINGREQ).
    closed: bool,
}

/// A CONNECT with any protocol name and level (3.1.1 layout, plus the MQTT 5 properties
/// length when the level is 5 or more).
fn connect_named(name: &[u8], level: u8) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_str(&mut body, name);
    body.push(level);
    body.push(0b0000_0010); // clean start, no user name or password
    body.extend_from_slice(&30u16.to_be_bytes());
    if level >= 5 {
        body.push(0);
    }
    mqtt_str(&mut body, b"conformance");
    let mut packet = vec![0x10];
    remaining_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    packet
}

/// An MQTT 5 CONNECT asking for enhanced authentication (an Authentication Method property).
fn connect_with_auth_method() -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_str(&mut body, b"MQTT");
    body.push(5);
    body.push(0b0000_0010);
    body.extend_from_slice(&30u16.to_be_bytes());
    let mut props = vec![0x15];
    mqtt_str(&mut props, b"SCRAM-SHA-256");
    remaining_length(&mut body, props.len());
    body.extend_from_slice(&props);
    mqtt_str(&mut body, b"conformance-auth");
    let mut packet = vec![0x10];
    remaining_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    packet
}

/// UNSUBSCRIBE of one filter with packet id 3 (MQTT 5 with an empty property list).
fn unsubscribe(v5: bool) -> Vec<u8> {
    let mut body = vec![0x00, 0x03];
    if v5 {
        body.push(0);
    }
    mqtt_str(&mut body, b"some/filter");
    let mut packet = vec![0xA2];
    remaining_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    packet
}

/// A PUBLISH with a topic given as bytes (possibly not UTF-8), QoS from `first`.
fn publish_bytes(
    first: u8,
    topic: &[u8],
    packet_id: Option<u16>,
    v5: bool,
    payload: &str,
) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_str(&mut body, topic);
    if let Some(id) = packet_id {
        body.extend_from_slice(&id.to_be_bytes());
    }
    if v5 {
        body.push(0);
    }
    body.extend_from_slice(payload.as_bytes());
    let mut packet = vec![first];
    remaining_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    packet
}

fn payload(case: &str) -> String {
    format!(r#"{{"case": "{case}"}}"#)
}

const TOPIC: &str = "ingest/telemetry";
const PUBREL_7: [u8; 4] = [0x62, 0x02, 0x00, 0x07];
const PUBREC_7: [u8; 4] = [0x50, 0x02, 0x00, 0x07];
const PUBCOMP_7: [u8; 4] = [0x70, 0x02, 0x00, 0x07];
/// MQTT 5 acknowledgements as the node writes them: with the reason code and an empty
/// property list (5 §3.5.2.1 allows leaving both out on success; the node does not).
const PUBREC5_7: [u8; 6] = [0x50, 0x04, 0x00, 0x07, 0x00, 0x00];
const PUBCOMP5_7: [u8; 6] = [0x70, 0x04, 0x00, 0x07, 0x00, 0x00];

/// An MQTT 5 DISCONNECT with `reason` and no properties.
fn disconnect(reason: u8) -> Vec<u8> {
    vec![0xE0, 0x02, reason, 0x00]
}

fn table() -> Vec<Case> {
    // Publishes of QoS 1 (0x32), 2 (0x34), 2 resent (0x3C), "3" (0x36).
    let v3_q2 = |case: &str, dup: bool| {
        publish_raw(
            if dup { 0x3C } else { 0x34 },
            TOPIC,
            Some(7),
            None,
            payload(case).as_bytes(),
        )
    };
    let v5_q2 = |case: &str, id: u16, dup: bool| {
        publish_raw(
            if dup { 0x3C } else { 0x34 },
            TOPIC,
            Some(id),
            Some(&[]),
            payload(case).as_bytes(),
        )
    };
    vec![
        Case {
            name: "MQTT 3.1.1 client, protocol level 3 (MQTT 3.1)",
            spec: "3.1.1 §3.1.2.2 [MQTT-3.1.2-2]: CONNACK 0x01 unacceptable protocol level, then close",
            connect: None,
            steps: vec![(connect_named(b"MQTT", 3), vec![0x20, 0x02, 0x00, 0x01])],
            closed: true,
        },
        Case {
            name: "MQTT 3.1 client (protocol name MQIsdp, level 3)",
            spec: "3.1.1 §3.1.2.1, §3.1.2.2 [MQTT-3.1.2-2]: CONNACK 0x01, then close",
            connect: None,
            steps: vec![(connect_named(b"MQIsdp", 3), vec![0x20, 0x02, 0x00, 0x01])],
            closed: true,
        },
        Case {
            name: "protocol name not MQTT, level 4",
            spec: "3.1.1 §3.1.2.1 [MQTT-3.1.2-1]: not processed as MQTT; CONNACK 0x01, then close",
            connect: None,
            steps: vec![(connect_named(b"MQTX", 4), vec![0x20, 0x02, 0x00, 0x01])],
            closed: true,
        },
        Case {
            name: "protocol level 6 (newer than 5)",
            spec: "5 §3.1.2.2 [MQTT-3.1.2-2]: CONNACK 0x84 unsupported protocol version, then close",
            connect: None,
            steps: vec![(connect_named(b"MQTT", 6), vec![0x20, 0x03, 0x00, 0x84, 0x00])],
            closed: true,
        },
        Case {
            name: "protocol name not MQTT, level 5",
            spec: "5 §3.1.2.1 [MQTT-3.1.2-1], §3.1.2.2: CONNACK 0x84, then close",
            connect: None,
            steps: vec![(connect_named(b"MQTX", 5), vec![0x20, 0x03, 0x00, 0x84, 0x00])],
            closed: true,
        },
        Case {
            name: "3.1.1: a second CONNECT",
            spec: "3.1.1 §3.1 [MQTT-3.1.0-2]: a protocol violation, the connection is closed",
            connect: Some(4),
            steps: vec![(connect_raw(4, "second-v4", "x", "y", 30), vec![])],
            closed: true,
        },
        Case {
            name: "5: a second CONNECT",
            spec: "5 §3.1 [MQTT-3.1.0-2], §4.13.2: DISCONNECT 0x82 protocol error, then close",
            connect: Some(5),
            steps: vec![(connect_raw(5, "second-v5", "x", "y", 30), disconnect(0x82))],
            closed: true,
        },
        Case {
            name: "3.1.1: QoS 2 resent before PUBREL",
            spec: "3.1.1 §4.3.3 (Figure 4.3): PUBREC again, stored once; PUBREL gets PUBCOMP",
            connect: Some(4),
            steps: vec![
                (v3_q2("qos2-dup-v4", false), PUBREC_7.to_vec()),
                (v3_q2("qos2-dup-v4", true), PUBREC_7.to_vec()),
                (PUBREL_7.to_vec(), PUBCOMP_7.to_vec()),
            ],
            closed: false,
        },
        Case {
            name: "5: QoS 2 resent before PUBREL",
            spec: "5 §4.3.3 [MQTT-4.3.3-10]: PUBREC again (not PUBACK 0x91), stored once",
            connect: Some(5),
            steps: vec![
                (v5_q2("qos2-dup-v5", 7, false), PUBREC5_7.to_vec()),
                (v5_q2("qos2-dup-v5", 7, true), PUBREC5_7.to_vec()),
                (PUBREL_7.to_vec(), PUBCOMP5_7.to_vec()),
            ],
            closed: false,
        },
        Case {
            name: "5: QoS 2 packet id used again after PUBCOMP",
            spec: "5 §2.2.1 [MQTT-2.2.1-5], §4.3.3: the id is free after PUBCOMP; a new message",
            connect: Some(5),
            steps: vec![
                (v5_q2("qos2-reuse-v5-a", 7, false), PUBREC5_7.to_vec()),
                (PUBREL_7.to_vec(), PUBCOMP5_7.to_vec()),
                (v5_q2("qos2-reuse-v5-b", 7, false), PUBREC5_7.to_vec()),
                (PUBREL_7.to_vec(), PUBCOMP5_7.to_vec()),
            ],
            closed: false,
        },
        Case {
            name: "5: more QoS 2 messages on one connection than the receive maximum",
            spec: "5 §4.9: a QoS 2 message counts against Receive Maximum until PUBCOMP only",
            connect: Some(5),
            steps: (1..=RECEIVE_MAX + 1)
                .flat_map(|id| {
                    let [hi, lo] = id.to_be_bytes();
                    [
                        (v5_q2("qos2-window-v5", id, false), vec![0x50, 0x04, hi, lo, 0x00, 0x00]),
                        (vec![0x62, 0x02, hi, lo], vec![0x70, 0x04, hi, lo, 0x00, 0x00]),
                    ]
                })
                .collect(),
            closed: false,
        },
        Case {
            name: "5: PUBREL before PUBREC (sent in the same write as its PUBLISH)",
            spec: "5 §4.3.3: PUBREL answers a PUBREC; before it, DISCONNECT 0x82 protocol error",
            connect: Some(5),
            steps: vec![(
                [v5_q2("qos2-early-v5", 7, false), PUBREL_7.to_vec()].concat(),
                disconnect(0x82),
            )],
            closed: true,
        },
        Case {
            name: "3.1.1: PUBREL before PUBREC (sent in the same write as its PUBLISH)",
            spec: "3.1.1 §4.3.3: PUBREL answers a PUBREC; before it, the connection is closed",
            connect: Some(4),
            steps: vec![([v3_q2("qos2-early-v4", false), PUBREL_7.to_vec()].concat(), vec![])],
            closed: true,
        },
        Case {
            name: "3.1.1: PUBREL for an unknown packet id",
            spec: "3.1.1 §3.6.4 [MQTT-3.6.4-1]: PUBCOMP with the same packet id",
            connect: Some(4),
            steps: vec![(PUBREL_7.to_vec(), PUBCOMP_7.to_vec())],
            closed: false,
        },
        Case {
            name: "5: PUBREL for an unknown packet id",
            spec: "5 §3.7.2.1: PUBCOMP 0x92 packet identifier not found",
            connect: Some(5),
            steps: vec![(PUBREL_7.to_vec(), vec![0x70, 0x04, 0x00, 0x07, 0x92, 0x00])],
            closed: false,
        },
        Case {
            name: "5: topic not UTF-8",
            spec: "5 §1.5.4 [MQTT-1.5.4-1], §4.13.1: DISCONNECT 0x81 malformed packet",
            connect: Some(5),
            steps: vec![(
                publish_bytes(0x32, b"ingest/telemetry/\xff\xfe", Some(1), true, &payload("utf8-v5")),
                disconnect(0x81),
            )],
            closed: true,
        },
        Case {
            name: "5: QoS 3",
            spec: "5 §3.3.1.2 [MQTT-3.3.1-4]: DISCONNECT 0x81 malformed packet",
            connect: Some(5),
            steps: vec![(
                publish_raw(0x36, TOPIC, Some(1), Some(&[]), payload("qos3-v5").as_bytes()),
                disconnect(0x81),
            )],
            closed: true,
        },
        Case {
            name: "5: QoS 1 with packet id 0",
            spec: "5 §2.2.1 [MQTT-2.2.1-3]: DISCONNECT 0x81 malformed packet",
            connect: Some(5),
            steps: vec![(
                publish_raw(0x32, TOPIC, Some(0), Some(&[]), payload("pid0-v5").as_bytes()),
                disconnect(0x81),
            )],
            closed: true,
        },
        Case {
            name: "5: topic alias 0",
            spec: "5 §3.3.2.3.4 [MQTT-3.3.2-8]: DISCONNECT 0x94 topic alias invalid",
            connect: Some(5),
            steps: vec![(
                publish_raw(0x32, TOPIC, Some(1), Some(&[0x23, 0x00, 0x00]), payload("alias0-v5").as_bytes()),
                disconnect(0x94),
            )],
            closed: true,
        },
        Case {
            name: "5: QoS 1 topic with U+0000",
            spec: "5 §1.5.4 [MQTT-1.5.4-2]: DISCONNECT 0x81 malformed packet, nothing stored",
            connect: Some(5),
            steps: vec![(
                publish_bytes(0x32, b"ingest/telemetry/a\0b", Some(1), true, &payload("nul-q1-v5")),
                disconnect(0x81),
            )],
            closed: true,
        },
        Case {
            name: "5: QoS 0 topic with U+0000",
            spec: "5 §1.5.4 [MQTT-1.5.4-2]: DISCONNECT 0x81 malformed packet, nothing stored",
            connect: Some(5),
            steps: vec![(
                publish_bytes(0x30, b"ingest/telemetry/a\0b", None, true, &payload("nul-q0-v5")),
                disconnect(0x81),
            )],
            closed: true,
        },
        Case {
            name: "3.1.1: QoS 1 topic with U+0000",
            spec: "3.1.1 §1.5.3 [MQTT-1.5.3-2]: the connection is closed, nothing stored",
            connect: Some(4),
            steps: vec![(
                publish_bytes(0x32, b"ingest/telemetry/a\0b", Some(1), false, &payload("nul-q1-v4")),
                vec![],
            )],
            closed: true,
        },
        Case {
            name: "3.1.1: QoS 0 topic with U+0000",
            spec: "3.1.1 §1.5.3 [MQTT-1.5.3-2]: the connection is closed, nothing stored",
            connect: Some(4),
            steps: vec![(
                publish_bytes(0x30, b"ingest/telemetry/a\0b", None, false, &payload("nul-q0-v4")),
                vec![],
            )],
            closed: true,
        },
        Case {
            name: "3.1.1: topic not UTF-8",
            spec: "3.1.1 §1.5.3 [MQTT-1.5.3-1]: the connection is closed",
            connect: Some(4),
            steps: vec![(
                publish_bytes(0x32, b"ingest/telemetry/\xff\xfe", Some(1), false, &payload("utf8-v4")),
                vec![],
            )],
            closed: true,
        },
        Case {
            name: "3.1.1: QoS 3",
            spec: "3.1.1 §3.3.1.2 [MQTT-3.3.1-4]: the connection is closed",
            connect: Some(4),
            steps: vec![(
                publish_raw(0x36, TOPIC, Some(1), None, payload("qos3-v4").as_bytes()),
                vec![],
            )],
            closed: true,
        },
        Case {
            name: "5: enhanced authentication asked",
            spec: "5 §3.1.2.11.9, §4.12: CONNACK 0x8C bad authentication method, then close",
            connect: None,
            steps: vec![(connect_with_auth_method(), vec![0x20, 0x03, 0x00, 0x8C, 0x00])],
            closed: true,
        },
        Case {
            name: "5: a topic alias set up, then used alone",
            spec: "5 §3.3.2.3.4 [MQTT-3.3.2-12]: the alias stands for the topic; both stored",
            connect: Some(5),
            steps: vec![
                (
                    publish_raw(0x32, TOPIC, Some(1), Some(&[0x23, 0x00, 0x01]), payload("alias-v5").as_bytes()),
                    vec![0x40, 0x04, 0x00, 0x01, 0x00, 0x00],
                ),
                (
                    publish_raw(0x32, "", Some(2), Some(&[0x23, 0x00, 0x01]), payload("alias-v5").as_bytes()),
                    vec![0x40, 0x04, 0x00, 0x02, 0x00, 0x00],
                ),
            ],
            closed: false,
        },
        Case {
            name: "5: an unknown topic alias",
            spec: "5 §3.3.2.3.4: an alias with no topic set up; §4.13: DISCONNECT 0x94 topic alias invalid",
            connect: Some(5),
            steps: vec![(
                publish_raw(0x32, "", Some(1), Some(&[0x23, 0x00, 0x05]), payload("alias-unknown-v5").as_bytes()),
                disconnect(0x94),
            )],
            closed: true,
        },
        Case {
            name: "5: a topic alias over the maximum announced (32)",
            spec: "5 §3.3.2.3.4 [MQTT-3.3.2-9]: DISCONNECT 0x94 topic alias invalid",
            connect: Some(5),
            steps: vec![(
                publish_raw(0x32, TOPIC, Some(1), Some(&[0x23, 0x00, 33]), payload("alias-over-v5").as_bytes()),
                disconnect(0x94),
            )],
            closed: true,
        },
        Case {
            name: "5: a wildcard in a PUBLISH topic",
            spec: "5 §3.3.2.1 [MQTT-3.3.2-2]: DISCONNECT 0x90 topic name invalid, nothing stored",
            connect: Some(5),
            steps: vec![(
                publish_raw(0x32, "ingest/telemetry/#", Some(1), Some(&[]), payload("wildcard-v5").as_bytes()),
                disconnect(0x90),
            )],
            closed: true,
        },
        Case {
            name: "3.1.1: a wildcard in a PUBLISH topic",
            spec: "3.1.1 §3.3.2.1 [MQTT-3.3.2-2]: the connection is closed, nothing stored",
            connect: Some(4),
            steps: vec![(
                publish_raw(0x32, "ingest/telemetry/+", Some(1), None, payload("wildcard-v4").as_bytes()),
                vec![],
            )],
            closed: true,
        },
        Case {
            name: "5: UNSUBSCRIBE",
            spec: "5 §3.11: UNSUBACK, 0x11 no subscription existed",
            connect: Some(5),
            steps: vec![(unsubscribe(true), vec![0xB0, 0x04, 0x00, 0x03, 0x00, 0x11])],
            closed: false,
        },
        Case {
            name: "3.1.1: UNSUBSCRIBE",
            spec: "3.1.1 §3.10.4 [MQTT-3.10.4-4]: UNSUBACK with the same packet id",
            connect: Some(4),
            steps: vec![(unsubscribe(false), vec![0xB0, 0x02, 0x00, 0x03])],
            closed: false,
        },
        Case {
            name: "5: a PUBACK from the client (the node sends no PUBLISH)",
            spec: "5 §4.13.1: DISCONNECT 0x82 protocol error",
            connect: Some(5),
            steps: vec![(vec![0x40, 0x02, 0x00, 0x01], disconnect(0x82))],
            closed: true,
        },
        Case {
            name: "5: a packet over the maximum packet size after the CONNECT",
            spec: "5 §3.2.2.3.6 (Maximum Packet Size), §4.13: DISCONNECT 0x95 packet too large",
            connect: Some(5),
            // Declares 2 MiB; the node announced 1 MiB.
            steps: vec![(vec![0x30, 0x80, 0x80, 0x80, 0x01], disconnect(0x95))],
            closed: true,
        },
        Case {
            name: "5: DISCONNECT asking for a session expiry the CONNECT did not",
            spec: "5 §3.14.2.2.2 [MQTT-3.14.2-2]: DISCONNECT 0x82 protocol error",
            connect: Some(5),
            steps: vec![(
                vec![0xE0, 0x07, 0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x0A],
                disconnect(0x82),
            )],
            closed: true,
        },
        Case {
            name: "3.1.1: QoS 1 with packet id 0",
            spec: "3.1.1 §2.3.1 [MQTT-2.3.1-1]: a protocol violation, the connection is closed",
            connect: Some(4),
            steps: vec![(
                publish_raw(0x32, TOPIC, Some(0), None, payload("pid0-v4").as_bytes()),
                vec![],
            )],
            closed: true,
        },
    ]
}

/// Reads up to `want` bytes, fewer when the connection closes or nothing more comes within
/// [`ANSWER_WITHIN`].
fn read_answer(s: &mut TcpStream, want: usize) -> Vec<u8> {
    let mut got = vec![0u8; want];
    let mut at = 0;
    while at < want {
        match s.read(&mut got[at..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => at += n,
        }
    }
    got.truncate(at);
    got
}

/// `Ok(())` when the node closed the connection with nothing more sent, else what it did.
fn closed_quietly(s: &mut TcpStream) -> Result<(), String> {
    let mut rest = [0u8; 64];
    match s.read(&mut rest) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!("then sent {:02X?}", &rest[..n])),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Err("the connection stayed open".into())
        }
        Err(e) => Err(format!("read failed: {e}")),
    }
}

/// Runs one row; `Err` says how the node's behaviour differed.
fn run(case: &Case, port: u16, token: &str, n: usize) -> Result<(), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_nodelay(true).ok();
    s.set_read_timeout(Some(ANSWER_WITHIN)).ok();
    if let Some(version) = case.connect {
        s.write_all(&connect_raw(
            version,
            &format!("conformance-{n}"),
            "default",
            token,
            30,
        ))
        .map_err(|e| e.to_string())?;
        let (first, body) = read_packet(&mut s).map_err(|e| format!("no CONNACK: {e}"))?;
        if first != 0x20 || body.get(1) != Some(&0) {
            return Err(format!("CONNECT refused: {first:02X} {body:02X?}"));
        }
    }
    for (i, (send, expect)) in case.steps.iter().enumerate() {
        // The node may close at once; what it sent before is what counts.
        let _ = s.write_all(send);
        let got = read_answer(&mut s, expect.len());
        if &got != expect {
            return Err(format!("step {i}: expected {expect:02X?}, got {got:02X?}"));
        }
    }
    if case.closed {
        closed_quietly(&mut s)
    } else {
        // Still open, and nothing else was sent: a PINGREQ gets exactly a PINGRESP.
        s.write_all(&[0xC0, 0x00])
            .map_err(|e| format!("closed: {e}"))?;
        let got = read_answer(&mut s, 2);
        if got == [0xD0, 0x00] {
            Ok(())
        } else {
            Err(format!(
                "expected to stay open (PINGRESP D0 00), got {got:02X?}"
            ))
        }
    }
}

#[test]
fn every_case_is_answered_as_the_specifications_say_and_malformed_topics_are_not_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sluice = Sluice::start(&dir.path().join("data"), &["--batch-max-age-ms", "300"]);
    let token = sluice.bootstrap()["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let port = sluice.mqtt_port;
    // The node serves the bootstrap configuration once a CONNECT with its token is accepted.
    assert!(
        wait_for(Duration::from_secs(10), || {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                return false;
            };
            s.set_read_timeout(Some(ANSWER_WITHIN)).ok();
            let _ = s.write_all(&connect_raw(4, "conformance-ready", "default", &token, 30));
            read_answer(&mut s, 4) == [0x20, 0x02, 0x00, 0x00]
        }),
        "the node never accepted the bootstrap token over MQTT"
    );

    let failures: Vec<String> = table()
        .iter()
        .enumerate()
        .filter_map(|(n, case)| {
            run(case, port, &token, n)
                .err()
                .map(|why| format!("{} ({}): {why}", case.name, case.spec))
        })
        .collect();

    // The refused enhanced authentication is counted like any refused CONNECT.
    let metrics = sluice.metrics();
    let mut failures = failures;
    if !metrics.contains(r#"sluice_mqtt_connects_total{outcome="bad-authentication-method"} 1"#) {
        failures.push("the 0x8C refusal is not counted in sluice_mqtt_connects_total".into());
    }

    // What reached the lake: each QoS 2 message once, nothing with a U+0000 topic or from a
    // packet the node refused as malformed.
    sluice.stop();
    let rows = duckdb(
        &sluice.data_dir.join("lake"),
        "SELECT payload->>'case', count(*) FROM {lake} WHERE payload->>'case' IS NOT NULL \
         GROUP BY ALL ORDER BY ALL",
    );
    let nul = duckdb(
        &sluice.data_dir.join("lake"),
        "SELECT count(*) FROM {lake} WHERE contains(topic, chr(0))",
    );
    let expected: Vec<Vec<Value>> = [
        ("alias-v5", 2),
        ("qos2-dup-v4", 1),
        ("qos2-dup-v5", 1),
        // Stored, though its connection was closed before the PUBREC.
        ("qos2-early-v4", 1),
        ("qos2-early-v5", 1),
        ("qos2-reuse-v5-a", 1),
        ("qos2-reuse-v5-b", 1),
        ("qos2-window-v5", u64::from(RECEIVE_MAX) + 1),
    ]
    .iter()
    .map(|(case, n)| vec![json!(case), json!(n)])
    .collect();
    let mut problems = failures;
    if rows != expected {
        problems.push(format!("the lake holds {rows:?}, expected {expected:?}"));
    }
    if nul != vec![vec![json!(0)]] {
        problems.push(format!(
            "events with U+0000 in their topic were stored: {nul:?}"
        ));
    }
    assert!(
        problems.is_empty(),
        "{} rows failed:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
