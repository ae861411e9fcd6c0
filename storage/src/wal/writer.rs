//! The WAL writer: one thread owns the active segment, takes appends from a bounded queue and
//! makes them durable in groups.
//!
//! Group commit: the thread takes every append waiting in the queue (up to
//! `group_commit_bytes_max`; after yielding the core once, so that a group being handed over
//! is not cut after its first append), writes them with one `pwrite`, syncs once with
//! `fdatasync`, then answers all of them. While it syncs, new appends queue up and form the
//! next group, so the number of syncs per second stays bounded however many requests arrive.
//!
//! Segments are preallocated with `fallocate`, so that a group commit writes into blocks the
//! file already has and its `fdatasync` has no file size to update. On ext4 an append that
//! grows the file makes every `fdatasync` wait for a journal commit (the jbd2 thread): with
//! both cores of a small machine busy, 19 KB appends took 3.5 ms a sync, into a preallocated
//! file 0.45 ms. (Writing the next segment full of zeros in the background would bring that to
//! 0.26 ms, but the 64 MiB of writes it costs showed up as 100 ms stalls in the ingest
//! benchmark; see docs/bench-log/http.md, "After the second profile".) A sealed segment is
//! cut back to its records. Recovery reads the zeros after the last record as the end of the
//! log: a frame of zeros fails its checksum and has LSN 0.
//!
//! Zeros ahead: preallocated blocks are "unwritten" until first written, and the first write
//! into them changes the file's extent map, so that group's `fdatasync` also writes the inode:
//! a second, serial device round trip on every small group. A small group therefore carries
//! [`ZEROS_AHEAD`] bytes of zeros after its records in the same `pwrite`; the next groups
//! overwrite blocks that are already written, and their syncs write data and flush only.
//! Measured on the 2-core VM (4.6 KB groups): 0.26 ms and 64-75 µs of CPU a sync without,
//! 0.15 ms and 37-41 µs with. Large groups skip it: one inode write is nothing next to them,
//! and zeros would double what they write.
//!
//! An `fdatasync` error poisons the log: after a failed sync Linux may have dropped the dirty
//! pages, so nothing written since the last good sync can be trusted and the node must restart
//! (recovery then cuts the log back to what is really on disk).

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use super::lane::{Lane, LaneBox, LaneTicket};

use super::{
    decode_frame, encode_frame, faults, io_err, sync_dir, DurableEnd, Frame, Lsn, Segments,
    WalError, RECORD_BYTES_MAX,
};
use crate::metrics::StorageMetrics;

/// Zeros written after a small group's records, so that the next groups land on written
/// blocks (see the module documentation). 256 KiB: about one group in sixty carries them on
/// single-event load, and its sync takes ~1 ms instead of ~0.15.
const ZEROS_AHEAD: usize = 256 << 10;

/// Settings of the write-ahead log.
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// Directory of the segment files.
    pub dir: PathBuf,
    /// A segment is sealed and a new one started once it holds this many bytes.
    pub segment_bytes_max: u64,
    /// Disk quota: appends are refused while the segments hold this many bytes.
    pub bytes_max: u64,
    /// Appends waiting for the writer; senders wait when it is full.
    pub queue_len: usize,
    /// Most bytes written and synced as one group.
    pub group_commit_bytes_max: usize,
}

impl WalConfig {
    pub fn new(dir: PathBuf) -> Self {
        WalConfig {
            dir,
            segment_bytes_max: 64 << 20,
            bytes_max: 4 << 30,
            queue_len: 8192,
            group_commit_bytes_max: 16 << 20,
        }
    }
}

struct Append {
    payload: Vec<u8>,
    done: Done,
}

/// Where an append's answer goes.
enum Done {
    /// Straight to the waiting task (a wake-up from the writer thread each).
    Task(oneshot::Sender<Result<Lsn, WalError>>),
    /// To its thread's lane, woken once per group ([`Lane`]).
    Lane(LaneTicket),
}

/// Handle to the write-ahead log; clones share one writer thread.
#[derive(Clone)]
pub struct Wal {
    tx: mpsc::Sender<Append>,
    segments: Arc<Segments>,
    durable: watch::Receiver<DurableEnd>,
    poisoned: Arc<AtomicBool>,
    bytes_max: u64,
}

impl Wal {
    /// Opens (or creates) the log in `config.dir`, cuts off a torn tail left by a crash, and
    /// starts the writer thread. `min_next_lsn` guards against LSN reuse should the segment
    /// files ever be lost while the upload progress survived.
    pub fn open(
        config: WalConfig,
        min_next_lsn: Lsn,
        metrics: StorageMetrics,
    ) -> Result<Wal, WalError> {
        std::fs::create_dir_all(&config.dir).map_err(io_err(&config.dir))?;
        let segments = Arc::new(Segments::new(config.dir.clone()));
        let (segment_first, segment_len, next_lsn) = recover_last_segment(&segments, min_next_lsn)?;
        let path = segments.path_of(segment_first);
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        // Counted before the active segment is filled: the quota counts records, not the
        // zeros reserved for them.
        segments.recount()?;
        reserve(&file, config.segment_bytes_max, &path);
        sync_dir(&config.dir)?;
        segments.set_active(segment_first);
        metrics.wal_bytes.set(segments.bytes() as i64);
        metrics.wal_segments.set(segments.count() as i64);

        let durable = DurableEnd {
            segment: segment_first,
            end: segment_len,
            next_lsn,
        };
        let (durable_tx, durable_rx) = watch::channel(durable);
        let (tx, rx) = mpsc::channel(config.queue_len.max(1));
        let poisoned = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            segments: segments.clone(),
            file,
            segment_first,
            segment_len,
            written_to: segment_len,
            next_lsn,
            segment_bytes_max: config.segment_bytes_max,
            group_commit_bytes_max: config.group_commit_bytes_max,
            poisoned: poisoned.clone(),
            metrics,
        };
        std::thread::Builder::new()
            .name("sluice-wal".into())
            .spawn(move || writer.run(rx, durable_tx))
            .map_err(io_err(&config.dir))?;
        info!(dir = %config.dir.display(), next_lsn, "WAL open");
        Ok(Wal {
            tx,
            segments,
            durable: durable_rx,
            poisoned,
            bytes_max: config.bytes_max,
        })
    }

    /// Appends one record and returns its LSN once it is durable on disk.
    pub async fn append(&self, payload: Vec<u8>) -> Result<Lsn, WalError> {
        self.check_record(&payload)?;
        let (done, rx) = oneshot::channel();
        self.submit(payload, Done::Task(done), rx).await
    }

    /// A lane for the calling thread's appends ([`Wal::append_in`]) and its dispatcher, which
    /// the caller spawns on the same thread (`tokio::task::spawn_local`).
    pub fn lane(&self) -> (Lane, impl std::future::Future<Output = ()>) {
        Lane::new()
    }

    /// [`append`](Self::append), answered through `lane`: the writer wakes the lane's thread
    /// once per group instead of once per append. Call on the lane's thread, with its
    /// dispatcher running there.
    pub async fn append_in(&self, lane: &Lane, payload: Vec<u8>) -> Result<Lsn, WalError> {
        // Checked before the ticket: a refused record leaves nothing waiting in the lane.
        self.check_record(&payload)?;
        let (ticket, rx) = lane.ticket();
        self.submit(payload, Done::Lane(ticket), rx).await
    }

    /// A record the log takes: not too large, and room for it on disk.
    fn check_record(&self, payload: &[u8]) -> Result<(), WalError> {
        if payload.len() > RECORD_BYTES_MAX {
            return Err(WalError::RecordTooLarge(payload.len()));
        }
        self.check_room(payload.len())
    }

    /// Hands the record to the writer thread and waits for `answer`, which `done` sends.
    async fn submit(
        &self,
        payload: Vec<u8>,
        done: Done,
        answer: oneshot::Receiver<Result<Lsn, WalError>>,
    ) -> Result<Lsn, WalError> {
        self.tx
            .send(Append { payload, done })
            .await
            .map_err(|_| WalError::Closed)?;
        answer.await.map_err(|_| WalError::Closed)?
    }

    /// Whether `bytes` more would still fit in the disk quota, and the log takes writes.
    pub fn check_room(&self, bytes: usize) -> Result<(), WalError> {
        if self.poisoned.load(Ordering::Relaxed) {
            return Err(WalError::Poisoned);
        }
        let on_disk = self.segments.bytes();
        if on_disk.saturating_add(bytes as u64) > self.bytes_max {
            return Err(WalError::QuotaExceeded {
                bytes: on_disk,
                quota: self.bytes_max,
            });
        }
        Ok(())
    }

    /// Whether the log still takes writes (false after an fsync failure).
    pub fn is_healthy(&self) -> bool {
        !self.poisoned.load(Ordering::Relaxed)
    }

    pub fn segments(&self) -> Arc<Segments> {
        self.segments.clone()
    }

    /// Follows the durable end of the log.
    pub fn durable(&self) -> watch::Receiver<DurableEnd> {
        self.durable.clone()
    }

    /// Configured disk quota in bytes.
    pub fn bytes_max(&self) -> u64 {
        self.bytes_max
    }
}

/// Scans the newest segment, cuts a torn tail, and says which segment to write next:
/// `(first_lsn, current_len, next_lsn)`.
fn recover_last_segment(
    segments: &Segments,
    min_next_lsn: Lsn,
) -> Result<(Lsn, u64, Lsn), WalError> {
    let min_next_lsn = min_next_lsn.max(1);
    let Some(&last) = segments.list()?.last() else {
        return Ok((min_next_lsn, 0, min_next_lsn));
    };
    let path = segments.path_of(last);
    let data = std::fs::read(&path).map_err(io_err(&path))?;
    let mut pos = 0;
    let mut expected = last;
    while let Frame::Record { lsn, len, .. } = decode_frame(&data[pos..]) {
        if lsn != expected {
            break;
        }
        pos += len;
        expected += 1;
    }
    if pos < data.len() {
        if data[pos..].iter().any(|b| *b != 0) {
            warn!(
                segment = %path.display(),
                valid_bytes = pos,
                cut_bytes = data.len() - pos,
                "cutting the unacknowledged torn tail of the WAL"
            );
        }
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.set_len(pos as u64).map_err(io_err(&path))?;
        file.sync_all().map_err(io_err(&path))?;
    }
    let next_lsn = expected.max(min_next_lsn);
    if pos == 0 && next_lsn == last {
        // An empty newest segment: keep writing into it.
        Ok((last, 0, next_lsn))
    } else {
        Ok((next_lsn, 0, next_lsn))
    }
}

/// State owned by the writer thread.
struct Writer {
    segments: Arc<Segments>,
    file: File,
    segment_first: Lsn,
    segment_len: u64,
    /// Bytes of the active segment written at least once (records or zeros ahead); beyond
    /// this its blocks are preallocated but unwritten.
    written_to: u64,
    next_lsn: Lsn,
    segment_bytes_max: u64,
    group_commit_bytes_max: usize,
    poisoned: Arc<AtomicBool>,
    metrics: StorageMetrics,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Append>, durable_tx: watch::Sender<DurableEnd>) {
        let mut group: Vec<Append> = Vec::new();
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
        while let Some(first) = rx.blocking_recv() {
            let mut bytes = first.payload.len();
            group.push(first);
            // Woken by the first append of a group, the writer lets the threads that are
            // handing over the rest of it (an HTTP thread working through a burst of
            // requests, on the same core as often as not) run before it takes the group: one
            // `sched_yield`, which returns at once when nothing else wants the core. Measured
            // on two cores, single-event POSTs: groups of ~31 requests instead of ~15 and
            // +18% requests/s (docs/bench-log/http.md, "Bigger groups"). Waiting on a timer
            // instead would add its delay to every acknowledgement, also when the node is idle.
            std::thread::yield_now();
            while bytes < self.group_commit_bytes_max {
                match rx.try_recv() {
                    Ok(next) => {
                        bytes += next.payload.len();
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            match self.commit(&group, &mut buf) {
                Ok(first_lsn) => {
                    durable_tx.send_replace(DurableEnd {
                        segment: self.segment_first,
                        end: self.segment_len,
                        next_lsn: self.next_lsn,
                    });
                    let mut lanes: Vec<Arc<LaneBox>> = Vec::new();
                    for (i, append) in group.drain(..).enumerate() {
                        answer(append.done, Ok(first_lsn + i as u64), &mut lanes);
                    }
                    for lane in lanes {
                        lane.wake();
                    }
                }
                Err(err) => {
                    error!(error = %err, records = group.len(), "WAL commit failed");
                    // One failure answers the whole group; each append gets it whole, kind
                    // and all.
                    let source = Arc::new(err);
                    let path = self.segments.path_of(self.segment_first);
                    let mut lanes: Vec<Arc<LaneBox>> = Vec::new();
                    for append in group.drain(..) {
                        let err = WalError::Commit {
                            path: path.clone(),
                            source: source.clone(),
                        };
                        answer(append.done, Err(err), &mut lanes);
                    }
                    for lane in lanes {
                        lane.wake();
                    }
                }
            }
            if buf.capacity() > 4 * self.group_commit_bytes_max {
                buf = Vec::with_capacity(1 << 20);
            }
        }
    }

    /// Writes and syncs one group; returns the LSN of its first record.
    fn commit(&mut self, group: &[Append], buf: &mut Vec<u8>) -> Result<Lsn, WalError> {
        if self.poisoned.load(Ordering::Relaxed) {
            return Err(WalError::Poisoned);
        }
        if self.segment_len >= self.segment_bytes_max {
            self.rotate()?;
        }
        buf.clear();
        let first = self.next_lsn;
        debug_assert!(first > 0, "LSN 0 marks the zeros after the last record");
        for (i, append) in group.iter().enumerate() {
            encode_frame(buf, first + i as u64, &append.payload);
        }
        let records_len = buf.len();
        let zeros = zeros_ahead(
            self.segment_len,
            records_len,
            self.written_to,
            self.segment_bytes_max,
        );
        buf.resize(records_len + zeros, 0);
        let path = self.segments.path_of(self.segment_first);
        let written = faults::write_all_at(&self.file, self.segments.dir(), buf, self.segment_len);
        buf.truncate(records_len);
        if let Err(err) = written {
            // Cut whatever part of the group reached the file; the LSNs are reused.
            let _ = self.file.set_len(self.segment_len);
            self.written_to = self.segment_len;
            return Err(io_err(&path)(err));
        }
        self.written_to = self
            .written_to
            .max(self.segment_len + (records_len + zeros) as u64);
        let started = Instant::now();
        if let Err(err) = faults::sync_data(&self.file, self.segments.dir()) {
            self.poisoned.store(true, Ordering::Relaxed);
            return Err(io_err(&path)(err));
        }
        self.metrics
            .wal_fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .wal_group_commit_records
            .observe(group.len() as f64);
        self.metrics.wal_records_total.inc_by(group.len() as u64);
        self.metrics
            .wal_appended_bytes_total
            .inc_by(buf.len() as u64);
        self.segment_len += buf.len() as u64;
        self.next_lsn += group.len() as u64;
        // LSNs are contiguous: this group took exactly the numbers after the last one.
        debug_assert_eq!(self.next_lsn, first + group.len() as u64);
        self.segments.add_bytes(buf.len() as u64);
        self.metrics.wal_bytes.set(self.segments.bytes() as i64);
        Ok(first)
    }

    /// Seals the active segment (already synced) and starts the next one.
    fn rotate(&mut self) -> Result<(), WalError> {
        // The sealed segment loses the zeros after its records, for readers that take a
        // sealed segment's length as its end; synced so that a crash cannot bring them back.
        let sealed = self.segments.path_of(self.segment_first);
        self.file
            .set_len(self.segment_len)
            .and_then(|()| self.file.sync_all())
            .map_err(io_err(&sealed))?;
        let path = self.segments.path_of(self.next_lsn);
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        reserve(&file, self.segment_bytes_max, &path);
        // A new, preallocated segment of zeros after a sealed one: recovery must take it as
        // empty and go on from the sealed one's last record.
        crate::chaos::point("wal-rotate");
        sync_dir(self.segments.dir())?;
        self.file = file;
        self.segment_first = self.next_lsn;
        self.segment_len = 0;
        self.written_to = 0;
        self.segments.set_active(self.segment_first);
        self.segments.add_segment();
        self.metrics.wal_segments.set(self.segments.count() as i64);
        Ok(())
    }
}

/// How many zeros to write after a group of `records_len` bytes written at `segment_len`:
/// enough to reach [`ZEROS_AHEAD`] past its end when it would end in unwritten blocks (beyond
/// `written_to`), never past the preallocated `reserved` length (zeros there would grow the
/// file), and none for a large group.
fn zeros_ahead(segment_len: u64, records_len: usize, written_to: u64, reserved: u64) -> usize {
    let end = segment_len + records_len as u64;
    if records_len >= ZEROS_AHEAD || end <= written_to {
        return 0;
    }
    let target = (end + ZEROS_AHEAD as u64).min(reserved);
    target.saturating_sub(end) as usize
}

/// Allocates `len` bytes of disk to `file` (unwritten extents: no data is written) and syncs
/// the allocation. Only a speed-up: when it fails (a full disk, a file system without
/// `fallocate`) the segment grows as it is written, with slower syncs, and the failure is
/// logged; a full disk then shows in the writes themselves.
fn reserve(file: &File, len: u64, path: &std::path::Path) {
    let reserved = rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len)
        .map_err(std::io::Error::from)
        .and_then(|()| file.sync_all());
    if let Err(err) = reserved {
        if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
            warn!(segment = %path.display(), error = %err, "preallocating the WAL segment failed; it grows as it is written");
        }
    }
}

/// Gives `result` to an append: its task directly, or its lane's box (noting the lane in
/// `lanes`, to be woken once after the whole group).
fn answer(done: Done, result: Result<Lsn, WalError>, lanes: &mut Vec<Arc<LaneBox>>) {
    match done {
        Done::Task(task) => {
            let _ = task.send(result);
        }
        Done::Lane(ticket) => {
            if !lanes.iter().any(|l| Arc::ptr_eq(l, &ticket.lane)) {
                lanes.push(ticket.lane.clone());
            }
            ticket.answer(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{Segments, Tail, FRAME_HEADER_LEN};

    fn config(dir: &std::path::Path) -> WalConfig {
        WalConfig {
            segment_bytes_max: 4096,
            ..WalConfig::new(dir.to_path_buf())
        }
    }

    fn read_all(wal: &Wal) -> Vec<(Lsn, Vec<u8>)> {
        let mut tail =
            Tail::new(wal.segments(), wal.durable(), StorageMetrics::default()).expect("tail");
        tail.read(usize::MAX)
            .expect("read")
            .into_iter()
            .map(|r| (r.lsn, r.payload))
            .collect()
    }

    /// Appends through a lane, many at once from one thread, each get their own record's LSN
    /// once it is durable, like appends answered one by one; the log holds them all.
    #[test]
    fn appends_through_a_lane_are_answered_with_their_own_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let wal = Wal::open(config(dir.path()), 1, StorageMetrics::default()).expect("open");
        let local = tokio::task::LocalSet::new();
        let answered = local.block_on(&runtime, async {
            let (lane, dispatcher) = wal.lane();
            tokio::task::spawn_local(dispatcher);
            let lane = std::rc::Rc::new(lane);
            let tasks: Vec<_> = (0..200u32)
                .map(|i| {
                    let (wal, lane) = (wal.clone(), lane.clone());
                    let payload = format!("lane record {i}").into_bytes();
                    tokio::task::spawn_local(async move {
                        let lsn = wal.append_in(&lane, payload.clone()).await.expect("append");
                        (lsn, payload)
                    })
                })
                .collect();
            let mut answered = Vec::new();
            for task in tasks {
                answered.push(task.await.expect("task"));
            }
            // One answered the plain way in between: both kinds share the writer.
            let plain = b"plain".to_vec();
            answered.push((wal.append(plain.clone()).await.expect("append"), plain));
            answered
        });
        let mut by_lsn = answered.clone();
        by_lsn.sort();
        assert_eq!(read_all(&wal), by_lsn, "every answer names its own record");
    }

    /// A small group that would end in unwritten blocks carries zeros up to `ZEROS_AHEAD`
    /// past its end, capped at the preallocated length; a group inside written blocks, or a
    /// large one, carries none.
    #[test]
    fn small_groups_write_zeros_ahead_within_the_reservation() {
        let zeros = ZEROS_AHEAD as u64;
        let reserved = 64 << 20;
        assert_eq!(zeros_ahead(0, 100, 0, reserved), ZEROS_AHEAD);
        assert_eq!(zeros_ahead(100, 200, 100 + zeros, reserved), 0);
        assert_eq!(
            zeros_ahead(zeros, 200, zeros + 100, reserved),
            ZEROS_AHEAD,
            "crossing the written end starts a new run of zeros"
        );
        assert_eq!(zeros_ahead(reserved - 300, 200, 0, reserved), 100);
        assert_eq!(
            zeros_ahead(reserved, 200, 0, reserved),
            0,
            "past the reservation"
        );
        assert_eq!(zeros_ahead(0, ZEROS_AHEAD, 0, reserved), 0, "a large group");
    }

    /// Records survive a crash (no clean close) and reopening across rotations; the zeros a
    /// preallocated segment holds after its last record are never read as records, and the
    /// quota counts records, not reserved space.
    #[test]
    fn preallocated_segments_read_back_exactly_across_rotation_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut written = Vec::new();
        for round in 0..3u64 {
            let wal = Wal::open(config(dir.path()), 1, StorageMetrics::default()).expect("open");
            for i in 0..40u64 {
                let payload = format!("round {round} record {i} {}", "x".repeat(100)).into_bytes();
                let lsn = runtime
                    .block_on(wal.append(payload.clone()))
                    .expect("append");
                written.push((lsn, payload));
            }
            assert_eq!(read_all(&wal), written, "round {round}");
            let records: u64 = written.iter().map(|(_, p)| (p.len() + 16) as u64).sum();
            assert!(
                wal.segments().bytes() <= records,
                "{} bytes counted for {records} bytes of records",
                wal.segments().bytes()
            );
            // Dropped without any shutdown, as after kill -9 (the writer thread just ends).
        }
        let lsns: Vec<Lsn> = written.iter().map(|(lsn, _)| *lsn).collect();
        assert_eq!(
            lsns,
            (1..=120).collect::<Vec<_>>(),
            "no LSN reused or skipped"
        );
    }

    /// Records of several sizes, durable in one segment; returns them and the segment's bytes
    /// up to the end of the last record.
    fn written_log(dir: &std::path::Path) -> (Vec<(Lsn, Vec<u8>)>, Vec<u8>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let wal = Wal::open(config(dir), 1, StorageMetrics::default()).expect("open");
        let mut written = Vec::new();
        for (i, size) in [0usize, 1, 7, 16, 17, 100, 255, 300, 31]
            .into_iter()
            .enumerate()
        {
            let payload: Vec<u8> = (0..size).map(|b| (b * 31 + i) as u8).collect();
            let lsn = runtime
                .block_on(wal.append(payload.clone()))
                .expect("append");
            written.push((lsn, payload));
        }
        let path = wal.segments().path_of(1);
        drop(wal);
        let records: usize = written
            .iter()
            .map(|(_, p)| p.len() + FRAME_HEADER_LEN)
            .sum();
        let mut bytes = std::fs::read(path).expect("segment");
        bytes.truncate(records);
        (written, bytes)
    }

    /// Reopens a log whose only segment holds `bytes` and reads back what it recovers.
    fn recover(bytes: &[u8]) -> Vec<(Lsn, Vec<u8>)> {
        let dir = tempfile::tempdir().expect("tempdir");
        let segments = Segments::new(dir.path().to_path_buf());
        std::fs::write(segments.path_of(1), bytes).expect("write segment");
        let wal = Wal::open(config(dir.path()), 1, StorageMetrics::default()).expect("reopen");
        read_all(&wal)
    }

    /// A crash may cut the log at any byte: every record wholly before the cut comes back,
    /// exactly, and no part of the torn one does.
    #[test]
    fn a_log_cut_at_any_byte_recovers_every_record_before_the_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (written, bytes) = written_log(dir.path());
        for cut in 0..=bytes.len() {
            let mut end = 0;
            let whole: Vec<_> = written
                .iter()
                .take_while(|(_, p)| {
                    end += p.len() + FRAME_HEADER_LEN;
                    end <= cut
                })
                .cloned()
                .collect();
            assert_eq!(recover(&bytes[..cut]), whole, "cut at byte {cut}");
        }
    }

    /// A damaged byte anywhere is never replayed as a record: what comes back is the records
    /// before the damage, exactly; recovery never panics.
    #[test]
    fn a_flipped_byte_is_never_replayed() {
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().expect("tempdir");
        let (written, bytes) = written_log(dir.path());
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        for _ in 0..300 {
            let at = rng.random_range(0..bytes.len());
            let mut damaged = bytes.clone();
            damaged[at] ^= rng.random_range(1..=255u8);
            let back = recover(&damaged);
            let mut start = 0;
            let before: Vec<_> = written
                .iter()
                .take_while(|(_, p)| {
                    let end = start + p.len() + FRAME_HEADER_LEN;
                    let keep = end <= at;
                    start = end;
                    keep
                })
                .cloned()
                .collect();
            assert!(back.len() <= written.len(), "byte {at}");
            assert_eq!(
                back[..before.len().min(back.len())],
                before[..before.len().min(back.len())],
                "byte {at}"
            );
            assert_eq!(
                back.len(),
                before.len(),
                "byte {at}: only the records before it"
            );
        }
    }

    /// `fdatasync` failing (EIO) poisons the log: the append is refused, and so is every one
    /// after, even once the disk would sync again (the page cache may have dropped the
    /// unsynced pages: a retried sync that succeeds proves nothing).
    #[test]
    fn a_failed_fdatasync_is_never_retried_and_believed() {
        use super::faults::{inject, Fault};
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let wal = Wal::open(config(dir.path()), 1, StorageMetrics::default()).expect("open");
        runtime
            .block_on(wal.append(b"before".to_vec()))
            .expect("append");
        inject(dir.path(), Fault::SyncIo, 1);
        let failed = runtime.block_on(wal.append(b"during".to_vec()));
        assert!(matches!(failed, Err(WalError::Commit { .. })), "{failed:?}");
        assert!(!wal.is_healthy());
        let after = runtime.block_on(wal.append(b"after".to_vec()));
        assert!(matches!(after, Err(WalError::Poisoned)), "{after:?}");
        assert_eq!(read_all(&wal), vec![(1, b"before".to_vec())]);
    }

    /// A full disk (ENOSPC on write) refuses the appends it hits, writes nothing of them, and
    /// the log goes on when space returns, without a gap or a reused acknowledged LSN.
    #[test]
    fn a_full_disk_refuses_appends_until_space_returns() {
        use super::faults::{inject, Fault};
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let wal = Wal::open(config(dir.path()), 1, StorageMetrics::default()).expect("open");
        let first = runtime
            .block_on(wal.append(b"one".to_vec()))
            .expect("append");
        inject(dir.path(), Fault::WriteNoSpace, 2);
        for _ in 0..2 {
            let full = runtime.block_on(wal.append(b"refused".to_vec()));
            assert!(matches!(full, Err(WalError::Commit { .. })), "{full:?}");
        }
        assert!(wal.is_healthy(), "a full disk is not a failed sync");
        let second = runtime
            .block_on(wal.append(b"two".to_vec()))
            .expect("space again");
        assert_eq!(second, first + 1);
        assert_eq!(
            read_all(&wal),
            vec![(first, b"one".to_vec()), (second, b"two".to_vec())]
        );
    }
}
