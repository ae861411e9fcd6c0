//! The shipper: moves events from the WAL to Parquet files in the lake, then trims the WAL.
//!
//! It reads the log through a [`Tail`] (so a restart replays whatever is not uploaded yet),
//! keeps one open batch per (workspace, source) key, cuts a batch by rows, bytes, age or a
//! change of hour, encodes it as Parquet and uploads it. Per key, files are uploaded one at a
//! time in LSN order and the key's watermark is committed to [`Progress`] after each; together
//! with deterministic file names this gives exactly-once delivery (see [`crate::progress`]).
//!
//! Bounds: the bytes held in open batches and in files waiting for upload never exceed
//! `held_bytes_max`. When they would, the largest open batch is cut early; when uploads are
//! failing and the queue is full, the shipper stops reading and the WAL grows on disk until
//! its quota makes the front end refuse new events.
//!
//! It must never delete a WAL segment that holds a record not yet in object storage.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use bytes::Bytes;
use object_store::path::Path;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::commits;
use crate::event::IngestBatch;
use crate::lake::{Lake, LakeError};
use crate::layout;
use crate::metrics::{OutcomeLabel, StorageMetrics};
use crate::parquet_file::{self, BatchSize, FileShape, RowsBuilder, Select};
use crate::progress::{Progress, ProgressError};
use crate::shutdown::Shutdown;
use crate::wal::{Lsn, Segments, Tail, TailRecord, Wal, WalError};

/// Settings of the shipper.
#[derive(Debug, Clone)]
pub struct ShipperConfig {
    /// Names this node in object names (`<node>-<uuid>.parquet`); unique per node.
    pub node_id: String,
    /// A batch is cut once it holds this many events.
    pub batch_max_rows: usize,
    /// A batch is cut once its events take this many bytes in memory.
    pub batch_max_bytes: usize,
    /// A batch is cut this long after its first event arrived, however small.
    pub batch_max_age: Duration,
    /// Bytes held in open batches and files waiting for upload, all keys together.
    pub held_bytes_max: usize,
    /// Uploads running at once.
    pub uploads_max: usize,
    /// WAL bytes read per step.
    pub read_bytes_max: usize,
    /// One upload attempt (the object store's own retries included) is given up after this
    /// long and retried like a failed one: a store that never answers must not hold the key's
    /// files, and with them its WAL segments, forever.
    pub upload_timeout: Duration,
}

impl ShipperConfig {
    pub fn new(node_id: String) -> Self {
        ShipperConfig {
            node_id,
            batch_max_rows: 1_000_000,
            batch_max_bytes: 128 << 20,
            batch_max_age: Duration::from_secs(60),
            held_bytes_max: 512 << 20,
            uploads_max: 4,
            read_bytes_max: 8 << 20,
            upload_timeout: Duration::from_secs(300),
        }
    }
}

/// Errors that stop the shipper from starting.
#[derive(Debug, thiserror::Error)]
pub enum ShipperError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Progress(#[from] ProgressError),
    #[error("starting the shipper thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// What the shipper reports to health checks.
#[derive(Debug, Default)]
pub struct ShipperStatus {
    /// True while the newest upload attempt failed.
    pub failing: AtomicBool,
    /// The newest upload error, for `/readyz` detail.
    pub last_error: Mutex<Option<String>>,
    /// Woken after each commit-log entry this node writes: readers of the node's own log
    /// (webhook deliveries, live streams) look at once instead of at their next poll.
    pub committed: tokio::sync::Notify,
}

/// A running shipper. On the shutdown signal it cuts every open batch and uploads until the
/// WAL's writer has closed and everything is in object storage, or the signal's deadline;
/// whatever is not uploaded by then stays in the WAL for the next start.
pub struct ShipperHandle {
    thread: JoinHandle<()>,
    status: Arc<ShipperStatus>,
}

impl ShipperHandle {
    pub fn status(&self) -> Arc<ShipperStatus> {
        self.status.clone()
    }

    /// Waits for the shipper's thread to end (after the shutdown signal).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Starts the shipper on its own thread and runtime.
pub fn start(
    config: ShipperConfig,
    wal: &Wal,
    progress: Progress,
    lake: Lake,
    metrics: StorageMetrics,
    shutdown: Shutdown,
) -> Result<ShipperHandle, ShipperError> {
    let tail = Tail::new(wal.segments(), wal.durable(), metrics.clone())?;
    let flushed = progress.load()?;
    let status = Arc::new(ShipperStatus::default());
    let shipper = Shipper {
        keys: HashMap::new(),
        flushed_at_start: flushed,
        tail,
        segments: wal.segments(),
        progress: Arc::new(progress),
        lake,
        config,
        metrics,
        status: status.clone(),
        uploads: JoinSet::new(),
        upload_keys: HashMap::new(),
        held_bytes: 0,
        open_bytes: 0,
        trimmed_below: 0,
        commit_seqs: HashMap::new(),
    };
    let thread = std::thread::Builder::new()
        .name("sluice-shipper".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .max_blocking_threads(4)
                .thread_name("sluice-shipper-rt")
                .enable_all()
                .build();
            match runtime {
                Ok(runtime) => runtime.block_on(shipper.run(shutdown)),
                Err(err) => error!(error = %err, "cannot start the shipper runtime"),
            }
        })?;
    Ok(ShipperHandle { thread, status })
}

/// A batch still taking events.
struct OpenBatch {
    rows: RowsBuilder,
    workspace_id: Uuid,
    source: String,
    /// Quarantine files get their own name in the same partition.
    quarantine: bool,
    first_lsn: Lsn,
    last_lsn: Lsn,
    first_event_id: Uuid,
    first_received_at_us: i64,
    last_received_at_us: i64,
    hour: i64,
    opened: Instant,
}

/// Cheap to clone: both forms share their buffers.
#[derive(Clone)]
enum FileData {
    Rows(RecordBatch),
    Encoded(Bytes),
}

/// A cut batch on its way to the lake.
struct CutFile {
    path: Path,
    /// What its commit entry says; `None` for quarantine files, which export readers skip.
    commit: Option<Committed>,
    first_lsn: Lsn,
    last_lsn: Lsn,
    rows: usize,
    /// Memory it holds, counted in `held_bytes`.
    held: usize,
    data: FileData,
}

/// What a file of accepted events puts in its node's commit log ([`crate::commits`]).
#[derive(Clone)]
struct Committed {
    workspace_id: Uuid,
    source: String,
    first_event_id: Uuid,
    min_received_at_us: i64,
    max_received_at_us: i64,
}

#[derive(Default)]
struct KeyState {
    open: Option<OpenBatch>,
    queue: VecDeque<CutFile>,
    /// The file being uploaded; kept here (the task works on a cheap clone) so that a failed
    /// or even panicked upload is retried rather than lost.
    uploading: Option<CutFile>,
    /// Every record of this key up to here is in the lake.
    flushed: Lsn,
    failures: u32,
    retry_at: Option<Instant>,
    /// The size of the last batch cut, to size the next one.
    last_size: BatchSize,
}

struct UploadDone {
    key: String,
    /// The encoded file when encoding succeeded (kept so a retry does not encode again), and
    /// whether the upload succeeded.
    encoded: Option<Bytes>,
    result: Result<usize, UploadError>,
    elapsed: Duration,
}

/// Why a file did not reach object storage (it is retried with backoff either way).
#[derive(Debug, thiserror::Error)]
enum UploadError {
    #[error("encoding Parquet: {0}")]
    Encode(#[source] parquet::errors::ParquetError),
    #[error("uploading: {0}")]
    Store(#[source] LakeError),
    #[error("uploading: no answer from object storage within {0:?}")]
    TimedOut(Duration),
    #[error("writing the commit log: {0}")]
    Commit(#[source] commits::CommitError),
    #[error("recording the upload's progress: {0}")]
    Progress(#[source] ProgressError),
    #[error("the {0} task failed: {1}")]
    Task(&'static str, #[source] tokio::task::JoinError),
}

struct Shipper {
    keys: HashMap<String, KeyState>,
    flushed_at_start: HashMap<String, Lsn>,
    tail: Tail,
    segments: Arc<Segments>,
    progress: Arc<Progress>,
    lake: Lake,
    config: ShipperConfig,
    metrics: StorageMetrics,
    status: Arc<ShipperStatus>,
    uploads: JoinSet<UploadDone>,
    /// Key of each running upload task, to recover from a task that panicked.
    upload_keys: HashMap<tokio::task::Id, String>,
    /// Bytes in open batches plus files not yet uploaded.
    held_bytes: usize,
    /// Bytes in open batches only.
    open_bytes: usize,
    /// Low-water mark at the last WAL trim.
    trimmed_below: Lsn,
    /// Next commit-log number per [`commits::seq_key`], once reserved since start.
    commit_seqs: HashMap<String, u64>,
}

impl Shipper {
    async fn run(mut self, mut shutdown: Shutdown) {
        info!(lake = self.lake.url(), node = %self.config.node_id, "shipper started");
        let mut writer_gone = false;
        loop {
            let deadline = shutdown.deadline();
            let stopping = deadline.is_some();
            while let Some(done) = self.uploads.try_join_next_with_id() {
                self.finish_upload(done).await;
            }
            let mut read_any = false;
            if self.held_bytes < self.config.held_bytes_max {
                match self.tail.read(self.config.read_bytes_max) {
                    Ok(records) => {
                        read_any = !records.is_empty();
                        for record in records {
                            self.add_record(record);
                        }
                    }
                    Err(err) => error!(error = %err, "reading the WAL failed; retrying"),
                }
            }
            let now = Instant::now();
            self.cut_due(now, stopping);
            self.start_uploads(now);
            self.trim_wal();
            self.metrics.builder_bytes.set(self.open_bytes as i64);
            self.metrics
                .pending_upload_bytes
                .set((self.held_bytes - self.open_bytes) as i64);

            if let Some(deadline) = deadline {
                let drained = self
                    .keys
                    .values()
                    .all(|k| k.open.is_none() && k.queue.is_empty() && k.uploading.is_none());
                // Done once the front ends are (the WAL's writer closes after its last
                // append) and all they appended is uploaded.
                let finished = drained && self.tail.caught_up() && self.tail.writer_closed();
                if finished || now >= deadline {
                    if !drained {
                        warn!("shipper stopped before every batch was uploaded; the WAL keeps them for the next start");
                    }
                    break;
                }
            }
            if read_any && self.held_bytes < self.config.held_bytes_max {
                tokio::task::yield_now().await;
                continue;
            }
            let wake_at = self.next_wake(now, deadline);
            tokio::select! {
                open = self.tail.changed(), if !writer_gone => {
                    // A closed writer (shutdown) would wake this forever; stop listening.
                    writer_gone = !open;
                }
                Some(done) = self.uploads.join_next_with_id(), if !self.uploads.is_empty() => {
                    self.finish_upload(done).await;
                }
                _ = tokio::time::sleep_until(wake_at.into()) => {}
                _ = shutdown.requested(), if deadline.is_none() => {}
            }
        }
        // Uploads still running are abandoned; their files are rebuilt from the WAL next time.
        self.uploads.abort_all();
        info!("shipper stopped");
    }

    /// When the loop must look again even if nothing arrives: the oldest open batch's age limit
    /// or the next retry, at most a second away.
    fn next_wake(&self, now: Instant, deadline: Option<Instant>) -> Instant {
        let mut wake = now + Duration::from_secs(1);
        for state in self.keys.values() {
            if let Some(open) = &state.open {
                wake = wake.min(open.opened + self.config.batch_max_age);
            }
            if let Some(retry) = state.retry_at {
                if !state.queue.is_empty() {
                    wake = wake.min(retry);
                }
            }
        }
        if let Some(deadline) = deadline {
            wake = wake.min(deadline.max(now + Duration::from_millis(10)));
        }
        wake.max(now + Duration::from_millis(1))
    }

    fn add_record(&mut self, record: TailRecord) {
        let batch = match IngestBatch::decode(&record.payload) {
            Ok(batch) => batch,
            Err(err) => {
                self.metrics.wal_corrupt_records_total.inc();
                error!(lsn = record.lsn, error = %err, "undecodable WAL record; it goes to quarantine");
                self.segments
                    .quarantine(&format!("record-{:020}.bin", record.lsn), &record.payload);
                return;
            }
        };
        if batch.is_empty() {
            return;
        }
        match batch.shaping.as_deref() {
            None => self.add_events(
                record.lsn,
                &batch,
                key_of(&batch, None),
                FileShape::Plain,
                None,
            ),
            Some(shaping) => {
                // One record may hold events of two datasets: the accepted ones and, under
                // `on_invalid = quarantine`, the refused ones. Each key keeps its own
                // watermark, so each takes the record once.
                let quarantined = !shaping.quarantined.is_empty();
                let shape = FileShape::Shaped {
                    schema_version: shaping.schema_version.clone(),
                    columns: shaping.columns.clone(),
                    keep_payload: shaping.keep_payload,
                };
                if shaping.quarantined.len() < batch.len() {
                    let indexes =
                        quarantined.then(|| parquet_file::selected(&batch, Select::Valid));
                    self.add_events(
                        record.lsn,
                        &batch,
                        key_of(&batch, Some(&shape)),
                        shape,
                        indexes,
                    );
                }
                if quarantined {
                    let indexes = parquet_file::selected(&batch, Select::Quarantined);
                    self.add_events(
                        record.lsn,
                        &batch,
                        key_of(&batch, Some(&FileShape::Quarantine)),
                        FileShape::Quarantine,
                        Some(indexes),
                    );
                }
            }
        }
    }

    /// Adds the events of `batch` at `indexes` (all of them when `None`) to the open batch of
    /// `key`, whose files have `shape`.
    fn add_events(
        &mut self,
        lsn: Lsn,
        batch: &IngestBatch,
        key: String,
        shape: FileShape,
        indexes: Option<Vec<u32>>,
    ) {
        let env = &batch.envelope;
        let events = indexes.as_ref().map_or(batch.len(), Vec::len);
        let first_index = indexes
            .as_ref()
            .and_then(|i| i.first().copied())
            .unwrap_or(0);
        let flushed_at_start = &self.flushed_at_start;
        let state = self.keys.entry(key.clone()).or_insert_with(|| KeyState {
            flushed: flushed_at_start.get(&key).copied().unwrap_or(0),
            ..KeyState::default()
        });
        if lsn <= state.flushed {
            // Already in the lake before the last restart.
            return;
        }
        let hour = layout::hour_of(env.received_at_us);
        let must_cut_first = state.open.as_ref().is_some_and(|open| {
            open.hour != hour || open.rows.rows() + events > self.config.batch_max_rows
        });
        if must_cut_first {
            self.cut(&key);
        }
        let Some(state) = self.keys.get_mut(&key) else {
            return;
        };
        // Sized like the key's last batch, at most half of what the memory budget has left:
        // a key whose traffic fell should not reserve a large batch it will not fill.
        let expected = state
            .last_size
            .capped(self.config.held_bytes_max.saturating_sub(self.held_bytes) / 2);
        let open = state.open.get_or_insert_with(|| OpenBatch {
            rows: RowsBuilder::shaped(&shape, expected),
            workspace_id: env.workspace_id,
            source: env.source.clone(),
            quarantine: shape == FileShape::Quarantine,
            first_lsn: lsn,
            last_lsn: lsn,
            // The file's first event names it: the same after a replay from the WAL.
            first_event_id: crate::event::event_id(env.first_event_id, first_index),
            first_received_at_us: env.received_at_us,
            last_received_at_us: env.received_at_us,
            hour,
            opened: Instant::now(),
        });
        let before = open.rows.bytes();
        let bad = match &indexes {
            None => open.rows.append(batch),
            Some(indexes) => open.rows.append_events(batch, indexes),
        };
        if bad > 0 {
            warn!(lsn, bad, "payloads that are not UTF-8 stored as null");
        }
        // A key's records arrive in LSN order, after what is already in the lake.
        debug_assert!(lsn > state.flushed && lsn >= open.last_lsn);
        open.last_lsn = lsn;
        open.last_received_at_us = open.last_received_at_us.max(env.received_at_us);
        let grown = open.rows.bytes() - before;
        self.held_bytes += grown;
        self.open_bytes += grown;
        debug_assert!(
            self.open_bytes <= self.held_bytes,
            "open batches are part of what is held"
        );
        let full = open.rows.rows() >= self.config.batch_max_rows
            || open.rows.bytes() >= self.config.batch_max_bytes;
        if full {
            self.cut(&key);
        }
    }

    /// Cuts batches that are old enough (or all of them when stopping), and the largest one
    /// when memory is over its bound.
    fn cut_due(&mut self, now: Instant, stopping: bool) {
        let due: Vec<String> = self
            .keys
            .iter()
            .filter(|(_, state)| {
                state.open.as_ref().is_some_and(|open| {
                    stopping || now.duration_since(open.opened) >= self.config.batch_max_age
                })
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in due {
            self.cut(&key);
        }
        while self.held_bytes >= self.config.held_bytes_max {
            let largest = self
                .keys
                .iter()
                .filter_map(|(key, state)| state.open.as_ref().map(|o| (o.rows.bytes(), key)))
                .max()
                .map(|(_, key)| key.clone());
            match largest {
                Some(key) => self.cut(&key),
                None => break,
            }
        }
    }

    fn cut(&mut self, key: &str) {
        let Some(state) = self.keys.get_mut(key) else {
            return;
        };
        let Some(open) = state.open.take() else {
            return;
        };
        state.last_size = open.rows.size();
        let held = open.rows.bytes();
        let rows = open.rows.rows();
        debug_assert!(held <= self.open_bytes, "a cut batch was counted as open");
        self.open_bytes -= held;
        let path = layout::file_path(
            self.lake.prefix(),
            open.workspace_id,
            &open.source,
            open.first_received_at_us,
            &self.config.node_id,
            open.first_event_id,
            open.quarantine,
        );
        debug!(%path, rows, first_lsn = open.first_lsn, last_lsn = open.last_lsn, "batch cut");
        let commit = (!open.quarantine).then(|| Committed {
            workspace_id: open.workspace_id,
            source: open.source.clone(),
            first_event_id: open.first_event_id,
            min_received_at_us: open.first_received_at_us,
            max_received_at_us: open.last_received_at_us,
        });
        state.queue.push_back(CutFile {
            path,
            commit,
            first_lsn: open.first_lsn,
            last_lsn: open.last_lsn,
            rows,
            held,
            data: FileData::Rows(open.rows.finish()),
        });
    }

    fn start_uploads(&mut self, now: Instant) {
        for (key, state) in self.keys.iter_mut() {
            if self.uploads.len() >= self.config.uploads_max {
                break;
            }
            if state.uploading.is_some() || state.retry_at.is_some_and(|at| at > now) {
                continue;
            }
            let Some(file) = state.queue.pop_front() else {
                continue;
            };
            let job = UploadJob {
                key: key.clone(),
                path: file.path.clone(),
                data: file.data.clone(),
                first_lsn: file.first_lsn,
                last_lsn: file.last_lsn,
                node: self.config.node_id.clone(),
                timeout: self.config.upload_timeout,
            };
            state.uploading = Some(file);
            let lake = self.lake.clone();
            let handle = self.uploads.spawn(async move { upload(job, lake).await });
            self.upload_keys.insert(handle.id(), key.clone());
        }
    }

    async fn finish_upload(
        &mut self,
        done: Result<(tokio::task::Id, UploadDone), tokio::task::JoinError>,
    ) {
        let (key, encoded, result, elapsed) = match done {
            Ok((id, done)) => {
                self.upload_keys.remove(&id);
                (done.key, done.encoded, done.result, done.elapsed)
            }
            Err(err) => {
                let Some(key) = self.upload_keys.remove(&err.id()) else {
                    error!(error = %err, "upload task of an unknown key failed");
                    return;
                };
                (
                    key,
                    None,
                    Err(UploadError::Task("upload", err)),
                    Duration::ZERO,
                )
            }
        };
        let Some(state) = self.keys.get_mut(&key) else {
            return;
        };
        let Some(mut file) = state.uploading.take() else {
            return;
        };
        if let Some(bytes) = encoded {
            file.data = FileData::Encoded(bytes);
        }
        let result = match result {
            Ok(bytes) => match self.append_commit(&file).await {
                Ok(()) => Ok(bytes),
                Err(err) => Err(err),
            },
            Err(err) => Err(err),
        };
        let result = match result {
            Ok(bytes) => {
                let progress = self.progress.clone();
                let (k, lsn) = (key.clone(), file.last_lsn);
                match tokio::task::spawn_blocking(move || progress.commit(&k, lsn)).await {
                    Ok(Ok(())) => Ok(bytes),
                    Ok(Err(err)) => Err(UploadError::Progress(err)),
                    Err(err) => Err(UploadError::Task("progress commit", err)),
                }
            }
            Err(err) => Err(err),
        };
        let Some(state) = self.keys.get_mut(&key) else {
            return;
        };
        match result {
            Ok(bytes) => {
                debug_assert!(
                    file.last_lsn > state.flushed,
                    "the watermark only moves forward"
                );
                debug_assert!(
                    file.held <= self.held_bytes,
                    "an uploaded file was counted as held"
                );
                state.flushed = file.last_lsn;
                state.failures = 0;
                state.retry_at = None;
                self.held_bytes -= file.held;
                self.metrics
                    .flushes_total
                    .get_or_create(&OutcomeLabel { outcome: "ok" })
                    .inc();
                self.metrics.flush_seconds.observe(elapsed.as_secs_f64());
                self.metrics.flushed_rows_total.inc_by(file.rows as u64);
                self.metrics.flushed_bytes_total.inc_by(bytes as u64);
                self.status.failing.store(false, Ordering::Relaxed);
                debug!(path = %file.path, rows = file.rows, bytes, ?elapsed, "file uploaded");
            }
            Err(err) => {
                state.failures = state.failures.saturating_add(1);
                let backoff = backoff(state.failures);
                state.retry_at = Some(Instant::now() + backoff);
                warn!(path = %file.path, error = %err, retry_in = ?backoff, "upload failed");
                self.metrics.upload_errors_total.inc();
                self.metrics
                    .flushes_total
                    .get_or_create(&OutcomeLabel { outcome: "error" })
                    .inc();
                self.status.failing.store(true, Ordering::Relaxed);
                if let Ok(mut last) = self.status.last_error.lock() {
                    *last = Some(err.to_string());
                }
                state.queue.push_front(file);
            }
        }
    }

    /// Writes `file`'s entry into this node's commit log of its source, after reserving its
    /// sequence number durably (see [`crate::commits`]): a number is never reused, even when
    /// the process dies between the reservation and the entry. Called from the one loop that
    /// finishes uploads, so a source's entries are written one at a time, in number order.
    async fn append_commit(&mut self, file: &CutFile) -> Result<(), UploadError> {
        let Some(commit) = &file.commit else {
            return Ok(());
        };
        let key = commits::seq_key(commit.workspace_id, &commit.source);
        let seq = match self.commit_seqs.get(&key) {
            Some(next) => *next,
            None => self.flushed_at_start.get(&key).copied().unwrap_or(0),
        };
        let progress = self.progress.clone();
        let reserved = key.clone();
        match tokio::task::spawn_blocking(move || progress.commit(&reserved, seq + 1)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(UploadError::Progress(err)),
            Err(err) => return Err(UploadError::Task("commit number reservation", err)),
        }
        self.commit_seqs.insert(key, seq + 1);
        let entry = commits::CommitEntry {
            seq,
            node: self.config.node_id.clone(),
            path: file.path.to_string(),
            rows: file.rows as u64,
            first_event_id: commit.first_event_id,
            min_received_at_us: commit.min_received_at_us,
            max_received_at_us: commit.max_received_at_us,
            committed_at_us: chrono::Utc::now().timestamp_micros(),
        };
        let append = commits::append(&self.lake, commit.workspace_id, &commit.source, &entry);
        match tokio::time::timeout(self.config.upload_timeout, append).await {
            Ok(Ok(())) => {
                // The entry exists and the file's watermark is not committed: a restart
                // uploads the file again and writes a second entry for it.
                crate::chaos::point("commit-entry");
                self.status.committed.notify_waiters();
                Ok(())
            }
            Ok(Err(err)) => Err(UploadError::Commit(err)),
            Err(_) => Err(UploadError::TimedOut(self.config.upload_timeout)),
        }
    }

    /// Deletes WAL segments whose records are all in the lake.
    fn trim_wal(&mut self) {
        let mut low_water = self.tail.next_lsn();
        for state in self.keys.values() {
            let pending = state
                .uploading
                .as_ref()
                .map(|f| f.first_lsn)
                .into_iter()
                .chain(state.queue.front().map(|f| f.first_lsn))
                .chain(state.open.as_ref().map(|o| o.first_lsn));
            for lsn in pending {
                low_water = low_water.min(lsn);
            }
        }
        if low_water <= self.trimmed_below {
            return;
        }
        match self.segments.remove_below(low_water) {
            Ok(removed) => {
                self.trimmed_below = low_water;
                if removed > 0 {
                    debug!(removed, low_water, "WAL segments removed");
                }
                self.metrics.wal_bytes.set(self.segments.bytes() as i64);
                self.metrics.wal_segments.set(self.segments.count() as i64);
            }
            Err(err) => error!(error = %err, "removing uploaded WAL segments failed"),
        }
    }
}

/// The key of `batch`'s events in a file of `shape` (`None`: a source without shaping). The
/// key names the watermark in `progress.redb`: a plain source's key is `<workspace>/<source>`
/// as it always was; a shaped one adds the schema version and payload setting, so that a
/// file holds one schema version, and quarantine has its own.
fn key_of(batch: &IngestBatch, shape: Option<&FileShape>) -> String {
    let env = &batch.envelope;
    match shape {
        None | Some(FileShape::Plain) => format!("{}/{}", env.workspace_id, env.source),
        Some(FileShape::Quarantine) => format!("{}/{}#quarantine", env.workspace_id, env.source),
        Some(FileShape::Shaped {
            schema_version,
            keep_payload,
            ..
        }) => format!(
            "{}/{}#schema={}{}",
            env.workspace_id,
            env.source,
            schema_version.as_deref().unwrap_or("none"),
            if *keep_payload { "" } else { ",no-payload" }
        ),
    }
}

/// Retry delay after `failures` failed attempts: 100 ms doubling to 30 s, with jitter so that
/// many keys (or nodes) do not retry in lockstep.
fn backoff(failures: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << failures.min(9)).min(30_000);
    let jitter = rand::random_range(0..=base / 4);
    Duration::from_millis(base + jitter)
}

/// What an upload task needs: a clone of the file's data and where it goes.
struct UploadJob {
    key: String,
    path: Path,
    data: FileData,
    first_lsn: Lsn,
    last_lsn: Lsn,
    node: String,
    timeout: Duration,
}

#[cfg(test)]
mod tests;

async fn upload(job: UploadJob, lake: Lake) -> UploadDone {
    let started = Instant::now();
    let encoded = match job.data {
        FileData::Encoded(bytes) => Ok(bytes),
        FileData::Rows(batch) => {
            let metadata = vec![
                ("sluice.node".to_owned(), job.node),
                ("sluice.wal.first_lsn".to_owned(), job.first_lsn.to_string()),
                ("sluice.wal.last_lsn".to_owned(), job.last_lsn.to_string()),
            ];
            match tokio::task::spawn_blocking(move || parquet_file::encode(&batch, metadata)).await
            {
                Ok(Ok(bytes)) => Ok(Bytes::from(bytes)),
                Ok(Err(err)) => Err(UploadError::Encode(err)),
                Err(err) => Err(UploadError::Task("Parquet encoding", err)),
            }
        }
    };
    let (encoded, result) = match encoded {
        Ok(bytes) => {
            let len = bytes.len();
            // A put given up may still land later; it writes the same bytes under the same
            // name as the retry, so it cannot add a copy.
            let result =
                match tokio::time::timeout(job.timeout, lake.put(&job.path, bytes.clone())).await {
                    Ok(put) => put.map(|()| len).map_err(UploadError::Store),
                    Err(_) => Err(UploadError::TimedOut(job.timeout)),
                };
            if result.is_ok() {
                // The object exists and its watermark is not committed: a restart must
                // rebuild the same file under the same name, not a second copy.
                crate::chaos::point("upload");
            }
            (Some(bytes), result)
        }
        Err(err) => (None, Err(err)),
    };
    UploadDone {
        key: job.key,
        encoded,
        result,
        elapsed: started.elapsed(),
    }
}
