//! MQTT 5 QoS 1 devices of a chaos run: each publishes events with unique keys within a small
//! window of unacknowledged messages, reconnecting after every death of the node. A key counts
//! as acknowledged only when its PUBACK arrived with a reason code below 0x80; messages
//! outstanding when the connection drops are never sent again (they are unacknowledged, and a
//! second copy under the same key would be a duplicate the run made itself).

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;

use super::{key, Load, SplitMix};
use crate::mqtt::codec::{self, Incoming, Version};

/// Unacknowledged messages per device at most.
const WINDOW: usize = 16;
/// How long the end of the run waits for outstanding PUBACKs.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A read returns after this long without bytes, so the device sees `stop` and keeps sending.
const READ_TICK: Duration = Duration::from_millis(50);
/// A write blocked this long means the node is stuck (or gone without a reset).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// One device's connection settings.
pub struct Device {
    pub index: u64,
    pub addr: SocketAddr,
    pub workspace: String,
    pub token: String,
    pub topic: String,
}

/// Publishes until `load.stop` and its outstanding messages are answered; returns its
/// acknowledged keys.
pub fn device(dev: Device, load: Arc<Load>, seed: u64) -> Vec<u64> {
    let mut rng = SplitMix::new(seed);
    let mut acked = Vec::new();
    let mut seq = 0u64;
    while !load.stop.load(Ordering::Relaxed) {
        if let Err(err) = session(&dev, &load, &mut rng, &mut seq, &mut acked) {
            load.mqtt_sessions_lost.fetch_add(1, Ordering::Relaxed);
            // Connection refused while the node is down; reset when it is killed.
            let _ = err;
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    acked
}

/// One connection: CONNECT, publish, count PUBACKs; `Ok` after a clean end of the run.
fn session(
    dev: &Device,
    load: &Load,
    rng: &mut SplitMix,
    seq: &mut u64,
    acked: &mut Vec<u64>,
) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&dev.addr, CONNECT_TIMEOUT).context("connect")?;
    stream.set_nodelay(true).ok();
    stream.set_write_timeout(Some(WRITE_TIMEOUT)).ok();
    stream.set_read_timeout(Some(READ_TICK)).ok();
    let mut out = BytesMut::with_capacity(4096);
    codec::connect(
        &mut out,
        Version::V5,
        &format!("chaos-{}", dev.index),
        Some(&dev.workspace),
        Some(&dev.token),
        30,
    );
    stream.write_all(&out).context("sending CONNECT")?;
    out.clear();
    let mut inbuf = BytesMut::with_capacity(4096);
    let started = Instant::now();
    loop {
        match next_packet(&mut stream, &mut inbuf)? {
            Some(Incoming::ConnAck { code: 0 }) => break,
            Some(Incoming::ConnAck { code }) => bail!("CONNECT refused ({code:#x})"),
            Some(_) => bail!("expected CONNACK"),
            None if started.elapsed() > CONNECT_TIMEOUT => bail!("no CONNACK"),
            None => {}
        }
    }

    // Packet id -> key of each unacknowledged message.
    let mut pending: HashMap<u16, u64> = HashMap::with_capacity(WINDOW);
    let mut packet_id: u16 = 0;
    let mut payload = String::new();
    let mut drain_started: Option<Instant> = None;
    loop {
        let stopping = load.stop.load(Ordering::Relaxed);
        if stopping {
            let since = *drain_started.get_or_insert_with(Instant::now);
            if pending.is_empty() || since.elapsed() > DRAIN_TIMEOUT {
                codec::disconnect(&mut out);
                let _ = stream.write_all(&out);
                return Ok(());
            }
        } else {
            while pending.len() < WINDOW {
                packet_id = packet_id.wrapping_add(1).max(1);
                let k = key(dev.index, *seq);
                *seq += 1;
                payload.clear();
                use std::fmt::Write as _;
                let _ = write!(payload, r#"{{"k":{k},"v":{}}}"#, rng.next_u64() % 1000);
                codec::publish(
                    &mut out,
                    Version::V5,
                    &dev.topic,
                    1,
                    packet_id,
                    payload.as_bytes(),
                );
                pending.insert(packet_id, k);
            }
            if !out.is_empty() {
                stream.write_all(&out).context("publishing")?;
                out.clear();
            }
        }
        while let Some(packet) = next_packet(&mut stream, &mut inbuf)? {
            match packet {
                Incoming::Ack {
                    packet_id, code, ..
                } => {
                    let Some(k) = pending.remove(&packet_id) else {
                        continue;
                    };
                    if code < 0x80 {
                        acked.push(k);
                        load.mqtt_acked.fetch_add(1, Ordering::Relaxed);
                    } else {
                        load.mqtt_refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Incoming::Disconnect { code } => bail!("disconnected by the node ({code:#x})"),
                _ => {}
            }
            if inbuf.is_empty() {
                break;
            }
        }
    }
}

/// The next whole packet: from what is buffered, else from one read (at most one tick long).
fn next_packet(stream: &mut TcpStream, inbuf: &mut BytesMut) -> Result<Option<Incoming>> {
    if let Some(packet) = codec::decode(inbuf).map_err(|e| anyhow!(e))? {
        return Ok(Some(packet));
    }
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk) {
        Ok(0) => bail!("closed by the node"),
        Ok(n) => {
            inbuf.extend_from_slice(&chunk[..n]);
            codec::decode(inbuf).map_err(|e| anyhow!(e))
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(None),
        Err(e) => Err(e).context("reading"),
    }
}
