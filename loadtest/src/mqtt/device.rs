//! One simulated device: its own connection, publishing at its rate within its in-flight
//! window, timing every acknowledgement.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};

use super::codec::{self, Incoming};
use super::{Counters, Plan};

/// Messages encoded into one write at most.
const WRITE_BATCH: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the end of a run waits for outstanding acknowledgements.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// QoS 0 runs send one message in this many at QoS 1 as a pacing marker...
const QOS0_MARKER_EVERY: u64 = 64;
/// ...with at most this many markers unacknowledged per device.
const QOS0_MARKERS_IN_FLIGHT: usize = 2;
/// A write blocked this long means the broker is stuck, not slow.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A write that gives up when the broker stops reading for good.
async fn send(writer: &mut tokio::net::tcp::OwnedWriteHalf, out: &[u8]) -> Result<()> {
    tokio::time::timeout(STALL_TIMEOUT, writer.write_all(out))
        .await
        .map_err(|_| anyhow!("the broker stopped reading for {STALL_TIMEOUT:?}"))?
        .context("sending")
}

/// Runs one device until `plan.stop` is set and its messages are acknowledged; returns its
/// publish-to-ack latencies (µs) measured inside the window.
pub async fn run(index: usize, plan: Arc<Plan>, counters: Arc<Counters>) -> Result<Histogram<u64>> {
    let mut histogram = Histogram::<u64>::new(3).context("histogram")?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(plan.addr))
        .await
        .map_err(|_| anyhow!("TCP connect timed out"))?
        .context("TCP connect")?;
    stream.set_nodelay(true).ok();
    let (mut reader, mut writer) = stream.into_split();
    let client_id = format!("{}-{index}", plan.client_id_prefix);
    let mut out = BytesMut::with_capacity(16 << 10);
    codec::connect(
        &mut out,
        plan.version,
        &client_id,
        plan.username.as_deref(),
        plan.password.as_deref(),
        plan.keep_alive_secs,
    );
    writer.write_all(&out).await.context("sending CONNECT")?;
    out.clear();
    let mut inbuf = BytesMut::with_capacity(16 << 10);
    let connack = tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            if let Some(packet) = codec::decode(&mut inbuf).map_err(|e| anyhow!(e))? {
                return Ok::<_, anyhow::Error>(packet);
            }
            if reader.read_buf(&mut inbuf).await? == 0 {
                bail!("closed before CONNACK");
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no CONNACK"))??;
    match connack {
        Incoming::ConnAck { code: 0 } => {}
        Incoming::ConnAck { code } => bail!("CONNECT refused with code {code}"),
        other => bail!("expected CONNACK, got {other:?}"),
    }
    counters.connected.fetch_add(1, Ordering::Relaxed);

    let window_size = if plan.qos == 0 {
        QOS0_MARKERS_IN_FLIGHT
    } else {
        plan.inflight.max(1)
    };
    // Send times by packet id, as many as the window allows; the reader frees window slots
    // as acks arrive.
    let sent_at: Arc<std::sync::Mutex<HashMap<u16, Instant>>> =
        Arc::new(std::sync::Mutex::new(HashMap::with_capacity(window_size)));
    let window = Arc::new(Semaphore::new(window_size));
    let (pubrel_tx, mut pubrel_rx) = mpsc::unbounded_channel::<u16>();
    let reader_task = {
        let sent_at = sent_at.clone();
        let window = window.clone();
        let counters = counters.clone();
        let plan = plan.clone();
        tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).expect("histogram");
            let result: Result<()> = async {
                loop {
                    while let Some(packet) = codec::decode(&mut inbuf).map_err(|e| anyhow!(e))? {
                        match packet {
                            Incoming::Ack {
                                packet_id,
                                code,
                                qos2,
                            } => {
                                let started =
                                    sent_at.lock().ok().and_then(|mut s| s.remove(&packet_id));
                                if code >= 0x80 {
                                    counters.refused.fetch_add(1, Ordering::Relaxed);
                                } else if let Some(started) = started {
                                    if plan.measuring.load(Ordering::Relaxed) {
                                        counters.acked.fetch_add(1, Ordering::Relaxed);
                                        let us = started.elapsed().as_micros() as u64;
                                        histogram.record(us.max(1)).ok();
                                    }
                                    counters.acked_total.fetch_add(1, Ordering::Relaxed);
                                }
                                if qos2 && code < 0x80 {
                                    let _ = pubrel_tx.send(packet_id);
                                } else {
                                    window.add_permits(1);
                                }
                            }
                            Incoming::PubComp { .. } => window.add_permits(1),
                            Incoming::Disconnect { code } => {
                                bail!("the server disconnected (reason {code:#x})")
                            }
                            Incoming::PingResp | Incoming::ConnAck { .. } | Incoming::Other => {}
                        }
                    }
                    if reader.read_buf(&mut inbuf).await? == 0 {
                        return Ok(());
                    }
                }
            }
            .await;
            (histogram, result)
        })
    };

    let mut packet_id: u16 = 0;
    let mut seq: u64 = 0;
    let period =
        (plan.rate_per_device > 0.0).then(|| Duration::from_secs_f64(1.0 / plan.rate_per_device));
    let mut next_due = Instant::now();
    let mut last_ping = Instant::now();
    let ping_every = Duration::from_secs(u64::from(plan.keep_alive_secs.max(2)) / 2);
    let mut payload = Vec::with_capacity(plan.payload_bytes + 64);
    while !plan.stop.load(Ordering::Relaxed) {
        if plan.idle {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if last_ping.elapsed() >= ping_every {
                codec::pingreq(&mut out);
                last_ping = Instant::now();
            }
        } else {
            let mut batch = 0;
            while batch < WRITE_BATCH {
                if let Some(period) = period {
                    let now = Instant::now();
                    if next_due > now {
                        if batch > 0 {
                            break;
                        }
                        tokio::time::sleep_until(next_due.into()).await;
                    }
                    next_due += period;
                }
                // QoS 0 has no acks to pace by: every `QOS0_MARKER_EVERY`th message goes at
                // QoS 1 as a marker, with few markers outstanding, so that what sits unread in
                // socket buffers stays small and "sent in the window" is what the broker took.
                let marker = plan.qos == 0 && seq % QOS0_MARKER_EVERY == QOS0_MARKER_EVERY - 1;
                let qos = if marker { 1 } else { plan.qos };
                if qos > 0 {
                    let permit = if batch == 0 || marker {
                        tokio::select! {
                            p = window.acquire() => p.ok(),
                            () = tokio::time::sleep(Duration::from_millis(100)) => None,
                        }
                    } else {
                        window.try_acquire().ok()
                    };
                    let Some(permit) = permit else { break };
                    permit.forget();
                    packet_id = packet_id.wrapping_add(1).max(1);
                    if let Ok(mut s) = sent_at.lock() {
                        s.insert(packet_id, Instant::now());
                    }
                }
                plan.payload
                    .render(&mut payload, &client_id, seq, plan.payload_bytes);
                codec::publish(
                    &mut out,
                    plan.version,
                    &plan.topic,
                    qos,
                    packet_id,
                    &payload,
                );
                seq += 1;
                batch += 1;
                if plan.measuring.load(Ordering::Relaxed) {
                    counters.sent.fetch_add(1, Ordering::Relaxed);
                }
                counters.sent_total.fetch_add(1, Ordering::Relaxed);
            }
        }
        while let Ok(id) = pubrel_rx.try_recv() {
            codec::pubrel(&mut out, id);
        }
        if !out.is_empty() {
            send(&mut writer, &out).await?;
            out.clear();
        }
        if reader_task.is_finished() {
            break;
        }
    }

    // The end: QoS 0 sends a QoS 1 fence (ordered after everything it sent), QoS 1 and 2 wait
    // for what is outstanding; then DISCONNECT.
    let drain_started = Instant::now();
    if !plan.idle && plan.qos == 0 && window.try_acquire().map(|p| p.forget()).is_ok() {
        packet_id = packet_id.wrapping_add(1).max(1);
        if let Ok(mut s) = sent_at.lock() {
            s.insert(packet_id, Instant::now());
        }
        codec::publish(
            &mut out,
            plan.version,
            &plan.topic,
            1,
            packet_id,
            b"{\"fence\":true}",
        );
    }
    let wanted = window_size;
    while drain_started.elapsed() < DRAIN_TIMEOUT
        && window.available_permits() < wanted
        && !reader_task.is_finished()
    {
        while let Ok(id) = pubrel_rx.try_recv() {
            codec::pubrel(&mut out, id);
        }
        if !out.is_empty() {
            send(&mut writer, &out).await?;
            out.clear();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    counters.drain_us_max.fetch_max(
        drain_started.elapsed().as_micros() as u64,
        Ordering::Relaxed,
    );
    codec::disconnect(&mut out);
    let _ = writer.write_all(&out).await;
    let _ = writer.shutdown().await;
    let (reader_histogram, result) = reader_task.await.context("reader task")?;
    histogram.add(reader_histogram).ok();
    result?;
    Ok(histogram)
}
