//! Reading an output from the lake: the source's commit logs of every node, merged, each
//! entry's file read back and put through the output.
//!
//! Entries are taken across nodes in the order of their files' earliest event, and each file's
//! rows in the order they were written (a device's events on one node are in the order the node
//! received them). A [`Cursor`] says where every node's log was left; it moves one row at a
//! time, so a reader that resumes from any event's cursor reads on from the next one.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use sluice_storage::commits::{self, CommitEntry, CommitError};
use sluice_storage::lake::Lake;
use sluice_storage::stored::{self, StoredError, StoredRows};
use uuid::Uuid;

use super::cursor::{Cursor, Position};
use super::output::CompiledOutput;

/// Entries listed per node at once.
const LIST_AHEAD: usize = 32;
/// Entries read at once (small JSON objects).
const ENTRY_READS: usize = 8;

/// Why an output could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error("reading {path}: {source}")]
    File {
        path: String,
        #[source]
        source: StoredError,
    },
    #[error(transparent)]
    Lake(#[from] sluice_storage::lake::LakeError),
    #[error("the file reading task failed: {0}")]
    Task(String),
}

/// What is read: one output of one workspace, from a point in time.
pub struct ReadSpec {
    pub workspace_id: Uuid,
    pub output: Arc<CompiledOutput>,
    /// Events received before this (µs since the epoch) are skipped.
    pub since_us: Option<i64>,
    /// Read only this node's log (a webhook delivers the events its node accepted).
    pub only_node: Option<String>,
}

/// One event as the output made it.
pub struct Exported<'a> {
    /// The object, as JSON text.
    pub json: &'a [u8],
    /// Where a reader resumes to read the events after this one.
    pub cursor: &'a Cursor,
}

/// A file being read.
struct Current {
    node: String,
    entry: CommitEntry,
    batches: Arc<Vec<StoredRows>>,
}

/// A decoded file: its path, its rows and their bytes.
type Cached = (String, Arc<Vec<StoredRows>>, usize);

/// Files decoded recently, shared by a node's readers: a reader paging through a file a page
/// at a time, or several readers of one source, would otherwise decode it again and again.
/// Bounded by bytes; the oldest file goes first.
pub struct FileCache {
    files: Mutex<VecDeque<Cached>>,
    bytes_max: usize,
}

impl FileCache {
    pub fn new(bytes_max: usize) -> FileCache {
        FileCache {
            files: Mutex::new(VecDeque::new()),
            bytes_max,
        }
    }

    fn get(&self, path: &str) -> Option<Arc<Vec<StoredRows>>> {
        let files = self.files.lock().ok()?;
        files
            .iter()
            .find(|(p, _, _)| p == path)
            .map(|(_, rows, _)| rows.clone())
    }

    fn put(&self, path: &str, rows: Arc<Vec<StoredRows>>) {
        let bytes: usize = rows.iter().map(StoredRows::bytes).sum();
        if bytes > self.bytes_max {
            return;
        }
        let Ok(mut files) = self.files.lock() else {
            return;
        };
        if files.iter().any(|(p, _, _)| p == path) {
            return;
        }
        let mut held: usize = files.iter().map(|(_, _, b)| b).sum();
        while held + bytes > self.bytes_max {
            match files.pop_front() {
                Some((_, _, b)) => held -= b,
                None => break,
            }
        }
        files.push_back((path.to_owned(), rows, bytes));
    }
}

pub struct Reader {
    lake: Lake,
    cache: Arc<FileCache>,
    spec: ReadSpec,
    cursor: Cursor,
    /// Listed, not yet read entries, per node.
    pending: BTreeMap<String, VecDeque<CommitEntry>>,
    current: Option<Current>,
    line: Vec<u8>,
}

impl Reader {
    pub fn new(lake: Lake, cache: Arc<FileCache>, spec: ReadSpec, cursor: Cursor) -> Self {
        Reader {
            lake,
            cache,
            spec,
            cursor,
            pending: BTreeMap::new(),
            current: None,
            line: Vec::with_capacity(1024),
        }
    }

    /// A cursor past every entry written so far: reading from it gives only files committed
    /// from now on (live).
    pub async fn end_cursor(
        lake: &Lake,
        workspace_id: Uuid,
        source: &str,
        only_node: Option<&str>,
    ) -> Result<Cursor, ReadError> {
        let mut cursor = Cursor::default();
        let nodes = match only_node {
            Some(node) => vec![node.to_owned()],
            None => commits::nodes(lake, workspace_id, source).await?,
        };
        for node in nodes {
            let next = commits::next_seq(lake, workspace_id, source, &node).await?;
            cursor.nodes.insert(node, Position { seq: next, row: 0 });
        }
        Ok(cursor)
    }

    pub fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    /// Reads on with `output`, changed since the reader started, from the next event. False
    /// (and nothing changed) when the output now reads another source: the cursor's
    /// positions mean nothing there.
    pub fn set_output(&mut self, output: Arc<CompiledOutput>) -> bool {
        if output.source != self.spec.output.source {
            return false;
        }
        self.spec.output = output;
        true
    }

    /// Lists and reads entries of every node whose queue is empty. Returns whether any entry
    /// is waiting to be read.
    async fn refill(&mut self) -> Result<bool, ReadError> {
        let (ws, source) = (self.spec.workspace_id, self.spec.output.source.clone());
        let nodes = match &self.spec.only_node {
            Some(node) => vec![node.clone()],
            None => commits::nodes(&self.lake, ws, &source).await?,
        };
        for node in nodes {
            let queue = self.pending.entry(node.clone()).or_default();
            if !queue.is_empty() {
                continue;
            }
            let from = self.cursor.position(&node).seq;
            let seqs = commits::seqs_from(&self.lake, ws, &source, &node, from, LIST_AHEAD).await?;
            let lake = &self.lake;
            let entries: Vec<CommitEntry> = futures::stream::iter(seqs)
                .map(|seq| commits::read(lake, ws, &source, &node, seq))
                .buffered(ENTRY_READS)
                .try_collect()
                .await?;
            queue.extend(entries);
        }
        Ok(self.pending.values().any(|q| !q.is_empty()))
    }

    /// The next entry to read: of every node's first, the one whose file starts earliest.
    fn take_next(&mut self) -> Option<(String, CommitEntry)> {
        let node = self
            .pending
            .iter()
            .filter_map(|(node, q)| q.front().map(|e| (e.min_received_at_us, node)))
            .min()
            .map(|(_, node)| node.clone())?;
        let entry = self.pending.get_mut(&node)?.pop_front()?;
        Some((node, entry))
    }

    /// Opens the next file to read, skipping those wholly before `since`. Returns false when
    /// nothing is committed past the cursor yet.
    async fn open_next(&mut self) -> Result<bool, ReadError> {
        loop {
            if self.pending.values().all(VecDeque::is_empty) && !self.refill().await? {
                return Ok(false);
            }
            let Some((node, entry)) = self.take_next() else {
                return Ok(false);
            };
            let position = self.cursor.position(&node);
            let before_since = self
                .spec
                .since_us
                .is_some_and(|since| entry.max_received_at_us < since);
            if before_since || position.row >= entry.rows && position.seq == entry.seq {
                self.finish_entry(&node, &entry);
                continue;
            }
            let batches = match self.cache.get(&entry.path) {
                Some(batches) => batches,
                None => {
                    let path = object_store::path::Path::from(entry.path.as_str());
                    let bytes = self.lake.get(&path).await?;
                    // Decoding takes milliseconds per file: off the runtime's workers.
                    let batches = tokio::task::spawn_blocking(move || stored::read_file(bytes))
                        .await
                        .map_err(|e| ReadError::Task(e.to_string()))?
                        .map_err(|source| ReadError::File {
                            path: entry.path.clone(),
                            source,
                        })?;
                    let batches = Arc::new(batches);
                    self.cache.put(&entry.path, batches.clone());
                    batches
                }
            };
            if position.seq != entry.seq {
                // A new entry: its rows are read from the first.
                self.cursor.nodes.insert(
                    node.clone(),
                    Position {
                        seq: entry.seq,
                        row: 0,
                    },
                );
            }
            self.current = Some(Current {
                node,
                entry,
                batches,
            });
            return Ok(true);
        }
    }

    fn finish_entry(&mut self, node: &str, entry: &CommitEntry) {
        self.cursor.nodes.insert(
            node.to_owned(),
            Position {
                seq: entry.seq + 1,
                row: 0,
            },
        );
    }

    /// Reads up to `max_events` events that are committed past the cursor, handing each to
    /// `emit`, and returns how many were emitted. Returns early (with fewer) when nothing more
    /// is committed yet, or when `emit` returns false (the event is taken; stop after it).
    pub async fn read(
        &mut self,
        max_events: usize,
        mut emit: impl FnMut(Exported<'_>) -> bool,
    ) -> Result<usize, ReadError> {
        let mut emitted = 0;
        while emitted < max_events {
            if self.current.is_none() && !self.open_next().await? {
                break;
            }
            let Some(current) = self.current.as_ref() else {
                break;
            };
            let node = current.node.clone();
            let (seq, total) = (current.entry.seq, current.entry.rows);
            let mut row = self.cursor.position(&node).row;
            let mut stop = false;
            // Rows are numbered across the file's record batches.
            let mut base = 0u64;
            for batch in current.batches.iter() {
                let len = batch.len() as u64;
                while row < base + len && emitted < max_events && !stop {
                    let i = (row - base) as usize;
                    row += 1;
                    if self
                        .spec
                        .since_us
                        .is_some_and(|since| batch.received_at_us(i) < since)
                    {
                        continue;
                    }
                    self.line.clear();
                    if !self.spec.output.render(batch, i, &mut self.line) {
                        continue;
                    }
                    self.cursor
                        .nodes
                        .insert(node.clone(), Position { seq, row });
                    emitted += 1;
                    stop = !emit(Exported {
                        json: &self.line,
                        cursor: &self.cursor,
                    });
                }
                base += len;
            }
            self.cursor
                .nodes
                .insert(node.clone(), Position { seq, row });
            if row >= total.min(base) {
                self.current = None;
                self.cursor.nodes.insert(
                    node,
                    Position {
                        seq: seq + 1,
                        row: 0,
                    },
                );
            }
            if stop {
                break;
            }
        }
        Ok(emitted)
    }
}
