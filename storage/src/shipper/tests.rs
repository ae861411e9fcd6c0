//! The shipper against an object store that fails on purpose ([`FaultyStore`] over a real
//! local directory), with a real WAL and progress store: whatever the store does, every
//! appended event ends up in exactly one Parquet object, WAL segments stay while their records
//! are not uploaded, and no watermark is committed for an upload that did not succeed.
//! `tests/s3.rs` stops a real S3 server under a running node; these put precise faults at
//! precise uploads.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use arrow_array::{Array, StringArray};
use object_store::local::LocalFileSystem;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::*;
use crate::event::{event_id, Envelope, IngestBatch, Protocol};
use crate::lake::faults::{Fault, FaultyStore};
use crate::shutdown::ShutdownTrigger;
use crate::wal::WalConfig;

/// Events per WAL record; with `batch_max_rows` equal to it, one record is one file.
const EVENTS_PER_RECORD: usize = 20;

/// A data dir with a WAL, a progress store and a local lake reached through a
/// [`FaultyStore`].
struct Rig {
    dir: tempfile::TempDir,
    store: FaultyStore,
    lake: Lake,
    metrics: StorageMetrics,
    runtime: tokio::runtime::Runtime,
    workspaces: [Uuid; 2],
}

/// A running shipper and what stops it.
struct Running {
    handle: ShipperHandle,
    trigger: ShutdownTrigger,
}

impl Rig {
    /// `part_bytes`: files over twice that are uploaded in parts of that size.
    fn new(part_bytes: Option<usize>) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("lake");
        std::fs::create_dir_all(&root).expect("lake dir");
        let root = root.canonicalize().expect("canonical lake dir");
        let local = LocalFileSystem::new_with_prefix(&root).expect("local store");
        let store = FaultyStore::new(Arc::new(local));
        let (threshold, part) = match part_bytes {
            Some(part) => (2 * part, part),
            None => (usize::MAX, usize::MAX),
        };
        let lake = Lake::local_through(Arc::new(store.clone()), root, threshold, part);
        let rig = Rig {
            store,
            lake,
            metrics: StorageMetrics::default(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime"),
            workspaces: [Uuid::now_v7(), Uuid::now_v7()],
            dir,
        };
        // Created while the WAL is empty, as on a node's first start.
        drop(rig.progress());
        rig
    }

    fn wal_dir(&self) -> PathBuf {
        self.dir.path().join("wal")
    }

    fn progress(&self) -> Progress {
        Progress::open(&self.dir.path().join("progress.redb"), &self.wal_dir()).expect("progress")
    }

    fn wal(&self) -> Wal {
        let min_next_lsn = self
            .progress()
            .load()
            .expect("load")
            .values()
            .max()
            .map_or(1, |lsn| lsn + 1);
        let config = WalConfig {
            segment_bytes_max: 4096,
            ..WalConfig::new(self.wal_dir())
        };
        Wal::open(config, min_next_lsn, StorageMetrics::default()).expect("wal")
    }

    /// Appends `records` records of [`EVENTS_PER_RECORD`] events for each workspace and
    /// returns the ids of their events.
    fn append(&self, wal: &Wal, records: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for r in 0..records {
            for workspace_id in self.workspaces {
                let (mut payloads, mut ends) = (Vec::new(), Vec::new());
                for i in 0..EVENTS_PER_RECORD {
                    // Little to compress: files big enough to go up in several parts.
                    let noise: u128 = rand::random();
                    payloads.extend_from_slice(
                        format!(r#"{{"r":{r},"i":{i},"n":"{noise:032x}"}}"#).as_bytes(),
                    );
                    ends.push(payloads.len() as u32);
                }
                let batch = IngestBatch {
                    envelope: Envelope {
                        first_event_id: Uuid::now_v7(),
                        // One hour for all: files are cut by rows only.
                        received_at_us: 1_764_000_000_000_000,
                        workspace_id,
                        source: "telemetry".into(),
                        device_id: None,
                        protocol: Protocol::Http,
                        topic: None,
                    },
                    payloads,
                    ends,
                    shaping: None,
                };
                for i in 0..EVENTS_PER_RECORD {
                    ids.push(event_id(batch.envelope.first_event_id, i as u32).to_string());
                }
                self.runtime
                    .block_on(wal.append(batch.encode_compact()))
                    .expect("append");
            }
        }
        ids.sort();
        ids
    }

    fn start(&self, wal: &Wal, upload_timeout: Duration) -> Running {
        let config = ShipperConfig {
            batch_max_rows: EVENTS_PER_RECORD,
            batch_max_age: Duration::from_millis(20),
            upload_timeout,
            ..ShipperConfig::new("node-1".into())
        };
        let trigger = ShutdownTrigger::new();
        let handle = start(
            config,
            wal,
            self.progress(),
            self.lake.clone(),
            self.metrics.clone(),
            trigger.signal(),
        )
        .expect("shipper");
        Running { handle, trigger }
    }

    /// Stops the shipper: the WAL's writer closes first, so it ends as soon as everything is
    /// uploaded, or at the deadline.
    fn stop(&self, running: Running, wal: Wal, grace: Duration) {
        drop(wal);
        running.trigger.trigger(Instant::now() + grace);
        running.handle.join();
    }

    /// Files in the lake directory: the Parquet objects and anything else left there.
    fn lake_files(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).expect("read lake dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut files = Vec::new();
        walk(self.lake.local_root().expect("local lake"), &mut files);
        files.sort();
        files
            .into_iter()
            .partition(|p| p.extension().is_some_and(|e| e == "parquet"))
    }

    /// The event ids of every Parquet object in the lake, sorted, duplicates kept.
    fn lake_event_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for file in self.lake_files().0 {
            let bytes = Bytes::from(std::fs::read(&file).expect("read object"));
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .expect("a Parquet file")
                .build()
                .expect("reader");
            for batch in reader {
                let batch = batch.expect("row group");
                let column = batch.column_by_name("event_id").expect("event_id column");
                let column = column
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("event ids are text");
                ids.extend((0..column.len()).map(|i| column.value(i).to_owned()));
            }
        }
        ids.sort();
        ids
    }

    /// Waits until the lake holds at least `count` events (or fails the test after 30 s).
    fn wait_for_events(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.lake_event_ids().len() < count {
            assert!(
                Instant::now() < deadline,
                "{} of {count} events in the lake after 30 s; attempts: {:#?}",
                self.lake_event_ids().len(),
                self.store.attempts()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every event exactly once; nothing but Parquet objects (no part of an aborted upload)
    /// and commit entries, which name every file and only files that exist.
    fn assert_exactly_once(&self, expected: &[String]) {
        let stored = self.lake_event_ids();
        assert_eq!(stored.len(), expected.len(), "events stored vs appended");
        assert_eq!(stored, expected, "every appended event exactly once");
        let (parquet, other) = self.lake_files();
        let (entries, other): (Vec<PathBuf>, Vec<PathBuf>) = other.into_iter().partition(|p| {
            p.extension().is_some_and(|e| e == "json")
                && p.components().any(|c| c.as_os_str() == "_commits")
        });
        assert!(other.is_empty(), "left in the lake: {other:?}");
        let root = self.lake.local_root().expect("local lake");
        let named: std::collections::HashSet<PathBuf> = entries
            .iter()
            .map(|p| {
                let entry: crate::commits::CommitEntry =
                    serde_json::from_slice(&std::fs::read(p).expect("read entry"))
                        .expect("a commit entry");
                root.join(entry.path)
            })
            .collect();
        for file in &parquet {
            assert!(named.contains(file), "{file:?} is in no commit entry");
        }
        for file in &named {
            assert!(
                file.exists(),
                "a commit entry names {file:?}, which is not there"
            );
        }
    }
}

/// While every upload fails, nothing is committed and no WAL segment is deleted; a node
/// stopped during the outage uploads everything after its restart, once. Were a watermark
/// committed before (or without) its upload, the restarted shipper would skip those records;
/// were a segment trimmed, its records would be gone.
#[test]
fn an_outage_keeps_records_in_the_wal_and_uncommitted_until_uploads_succeed() {
    let rig = Rig::new(None);
    rig.store.set_down(true);
    let wal = rig.wal();
    let expected = rig.append(&wal, 6);
    let segments = wal.segments();
    let before = segments.list().expect("segments");
    assert!(before.len() >= 3, "several segments: {before:?}");

    let running = rig.start(&wal, Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(30);
    // Two keys, each retried after 100, 200, 400 ms: a few rounds of failures.
    while rig.store.attempts().len() < 6 {
        assert!(Instant::now() < deadline, "no upload attempts");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(segments.list().expect("segments"), before, "segments kept");
    assert!(rig.lake_event_ids().is_empty());
    assert!(running.handle.status().failing.load(Ordering::Relaxed));
    rig.stop(running, wal, Duration::from_millis(200));
    assert!(
        rig.progress().load().expect("load").is_empty(),
        "no watermark without an upload"
    );
    assert!(rig.metrics.upload_errors_total.get() >= 6);

    rig.store.set_down(false);
    let wal = rig.wal();
    let segments = wal.segments();
    let reopened = segments.list().expect("segments");
    assert!(
        before.iter().all(|s| reopened.contains(s)),
        "segments kept: {before:?} then {reopened:?}"
    );
    let running = rig.start(&wal, Duration::from_secs(5));
    rig.wait_for_events(expected.len());
    rig.stop(running, wal, Duration::from_secs(10));
    rig.assert_exactly_once(&expected);
    // Each key's watermark is its last record: 2 keys, 6 records each, LSNs interleaved.
    let watermarks = rig.progress().load().expect("load");
    let mut marks: Vec<Lsn> = watermarks
        .iter()
        .filter(|(key, _)| !key.starts_with("commit-seq/"))
        .map(|(_, lsn)| *lsn)
        .collect();
    marks.sort();
    assert_eq!(marks, [11, 12]);
    assert!(
        segments.list().expect("segments").len() < before.len(),
        "uploaded segments trimmed"
    );
}

/// Errors, a slow answer, a hang past the upload timeout and answers lost after the object was
/// written: each file is retried under its own name until it is in, and ends up there once.
/// Were a retried file re-cut under a new name, the lost answers would leave a second copy;
/// without the timeout the hang would hold its key forever.
#[test]
fn errors_slowness_hangs_and_lost_answers_end_in_one_object_per_file() {
    let rig = Rig::new(None);
    rig.store.plan_faults([
        Fault::Fail,
        Fault::LoseAnswer,
        Fault::Slow(Duration::from_millis(200)),
        Fault::Hang,
        Fault::Fail,
        Fault::LoseAnswer,
        Fault::Hang,
        Fault::Fail,
    ]);
    let wal = rig.wal();
    let expected = rig.append(&wal, 5);
    let running = rig.start(&wal, Duration::from_millis(500));
    rig.wait_for_events(expected.len());
    rig.stop(running, wal, Duration::from_secs(10));
    rig.assert_exactly_once(&expected);

    assert_eq!(rig.store.faults_left(), 0, "every fault met");
    let attempts = rig.store.attempts();
    for (i, attempt) in attempts.iter().enumerate() {
        if matches!(
            attempt.fault,
            Some(Fault::LoseAnswer | Fault::Hang | Fault::Fail)
        ) {
            assert!(
                attempts[i + 1..].iter().any(|a| a.path == attempt.path),
                "{:?} at {} not retried under the same name",
                attempt.fault,
                attempt.path
            );
        }
    }
    let objects = rig.lake_files().0.len();
    let names: std::collections::HashSet<_> = attempts.iter().map(|a| &a.path).collect();
    assert_eq!(objects, names.len(), "one object per name tried");
    assert_eq!(objects, 10, "one object per record");
    // The faults other than the slow answer.
    assert_eq!(rig.metrics.upload_errors_total.get(), 7);
}

/// A multipart upload that fails at a part is aborted (no part is left in the lake, no object
/// appears) and retried; one whose completion answer is lost is retried under the same name.
#[test]
fn a_multipart_upload_failing_midway_leaves_nothing_and_is_retried() {
    let rig = Rig::new(Some(1024));
    rig.store.plan_faults([
        Fault::FailPart(1),
        Fault::LoseAnswer,
        Fault::FailPart(0),
        Fault::Fail,
    ]);
    let wal = rig.wal();
    let expected = rig.append(&wal, 3);
    let running = rig.start(&wal, Duration::from_secs(5));
    rig.wait_for_events(expected.len());
    rig.stop(running, wal, Duration::from_secs(10));
    rig.assert_exactly_once(&expected);
    let attempts = rig.store.attempts();
    assert!(
        attempts.iter().all(|a| a.multipart),
        "files of several parts: {attempts:#?}"
    );
    assert_eq!(rig.store.faults_left(), 0, "every fault met");
    assert_eq!(rig.metrics.upload_errors_total.get(), 4);
}
