//! MQTT helpers: the Paho client of `tests/mqtt_client.py` (installed by `scripts/test.sh`),
//! run to completion or kept running in the background, and raw packets for hostile input.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use super::python;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mqtt_client.py")
}

fn command(port: u16, args: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(script())
        .args(args)
        .arg("--port")
        .arg(port.to_string());
    cmd
}

/// Runs the Paho client to the end; returns its JSON lines.
pub fn paho(port: u16, args: &[&str]) -> Vec<Value> {
    let out = command(port, args)
        .stderr(Stdio::inherit())
        .output()
        .expect("running the Paho client (scripts/test.sh installs paho-mqtt)");
    assert!(out.status.success(), "the Paho client failed: {args:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line from the Paho client"))
        .collect()
}

/// The line with `"event": event`.
pub fn event<'a>(lines: &'a [Value], event: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["event"] == event)
        .unwrap_or_else(|| panic!("no {event} in {lines:?}"))
}

/// A Paho client running in the background, its lines arriving on a channel.
pub struct Background {
    child: Child,
    pub lines: mpsc::Receiver<Value>,
}

impl Background {
    pub fn start(port: u16, args: &[&str]) -> Background {
        let mut child = command(port, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the Paho client");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str(&line) {
                    if tx.send(value).is_err() {
                        break;
                    }
                }
            }
        });
        Background { child, lines }
    }

    /// The next line, within `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<Value> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Every line until the client exits (or `timeout`).
    pub fn finish(mut self, timeout: Duration) -> Vec<Value> {
        let deadline = std::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        {
            out.push(line);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        out
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An MQTT string: two-byte length and the bytes.
pub fn mqtt_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// The remaining-length varint.
pub fn remaining_length(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

/// A raw MQTT 3.1.1 CONNECT with username and password.
pub fn connect_v311(client_id: &str, username: &str, password: &str) -> Vec<u8> {
    connect_raw(4, client_id, username, password, 30)
}

/// A raw CONNECT of `version` (4 = 3.1.1, 5) with username, password and keep-alive.
pub fn connect_raw(
    version: u8,
    client_id: &str,
    username: &str,
    password: &str,
    keep_alive_secs: u16,
) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_str(&mut body, b"MQTT");
    body.push(version);
    body.push(0b1100_0010); // username, password, clean start
    body.extend_from_slice(&keep_alive_secs.to_be_bytes());
    if version == 5 {
        body.push(0); // no properties
    }
    mqtt_str(&mut body, client_id.as_bytes());
    mqtt_str(&mut body, username.as_bytes());
    mqtt_str(&mut body, password.as_bytes());
    let mut packet = vec![0x10];
    remaining_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    packet
}

/// A raw PUBLISH: `first` is the fixed header's first byte (type, DUP, QoS, RETAIN),
/// `props` the MQTT 5 properties (`None` for 3.1.1).
pub fn publish_raw(
    first: u8,
    topic: &str,
    packet_id: Option<u16>,
    props: Option<&[u8]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_str(&mut body, topic.as_bytes());
    if let Some(id) = packet_id {
        body.extend_from_slice(&id.to_be_bytes());
    }
    if let Some(props) = props {
        remaining_length(&mut body, props.len());
        body.extend_from_slice(props);
    }
    body.extend_from_slice(payload);
    let mut packet = vec![first];
    remaining_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    packet
}

/// Reads one packet: its first byte and the rest after the remaining length.
pub fn read_packet(s: &mut impl std::io::Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut byte = [0u8; 1];
    s.read_exact(&mut byte)?;
    let first = byte[0];
    let (mut len, mut shift) = (0usize, 0);
    loop {
        s.read_exact(&mut byte)?;
        len |= usize::from(byte[0] & 0x7F) << shift;
        shift += 7;
        if byte[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok((first, body))
}

/// A raw QoS 0 PUBLISH with a topic given as bytes (which may be invalid UTF-8).
pub fn publish_qos0(topic: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_str(&mut body, topic);
    body.extend_from_slice(payload);
    let mut packet = vec![0x30];
    remaining_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    packet
}

/// A raw QoS 1 PUBLISH (MQTT 3.1.1).
pub fn publish_qos1(topic: &str, packet_id: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_str(&mut body, topic.as_bytes());
    body.extend_from_slice(&packet_id.to_be_bytes());
    body.extend_from_slice(payload);
    let mut packet = vec![0x32];
    remaining_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    packet
}

/// A raw QoS 2 PUBLISH (MQTT 3.1.1), optionally marked as a duplicate.
pub fn publish_qos2(topic: &str, packet_id: u16, payload: &[u8], dup: bool) -> Vec<u8> {
    let mut packet = publish_qos1(topic, packet_id, payload);
    packet[0] = 0x34 | if dup { 0x08 } else { 0 };
    packet
}

/// Opens a raw MQTT 3.1.1 connection, sends CONNECT and returns the stream with the CONNACK's
/// four bytes (`20 02 00 <return code>`).
pub fn raw_connect(
    port: u16,
    client_id: &str,
    username: &str,
    password: &str,
) -> (std::net::TcpStream, [u8; 4]) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).ok();
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    s.write_all(&connect_v311(client_id, username, password))
        .expect("CONNECT");
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).expect("CONNACK");
    (s, connack)
}
