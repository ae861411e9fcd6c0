//! The commit log: for each (workspace, source, node), the files that node uploaded, in order.
//!
//! ```text
//! <prefix>/workspace=<workspace-id>/_commits/source=<slug>/node=<node>/<seq / 10000, 10 digits>/<seq, 20 digits>.json
//! ```
//!
//! Entries go into directories of [`CHUNK_ENTRIES`], so that finding the newest, or the next
//! few after a position, lists one directory of a bounded size however long the log grows
//! (a local directory cannot be listed from an offset without reading it whole).
//!
//! After a file of accepted events is in the lake, and before its watermark is committed, the
//! shipper writes one small JSON entry ([`CommitEntry`]) naming it. Readers of export
//! endpoints list these entries instead of the lake: the entries of one node come in the
//! order its files were uploaded, so a reader's position is a sequence number per node
//! ([`crate::commits`] readers keep a map of them), which survives restarts of either side,
//! nodes joining, and nodes gone for good (their entries stay).
//!
//! Sequence numbers are reserved durably (in the node's progress store) before an entry is
//! written, so a number is never given to two entries, even across a crash; a crash between
//! the reservation and the entry only leaves a gap. A crash between the entry and the
//! watermark uploads the same file again (same name) and writes a second entry for it: a
//! reader may read those events twice (export delivery is at-least-once), never zero times.
//!
//! The entries live under `workspace=<id>/`, so deleting a workspace deletes them, and under
//! `_commits`, which no `source=*/**/*.parquet` glob of the lake matches.

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectStoreExt as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::lake::{Lake, LakeError};
use crate::layout;

/// One uploaded file, as its commit entry names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitEntry {
    /// This entry's number in its node's log; numbers grow, gaps are allowed.
    pub seq: u64,
    pub node: String,
    /// The object's full path in the store.
    pub path: String,
    pub rows: u64,
    pub first_event_id: Uuid,
    /// The earliest and latest `received_at` of the file's events (µs since the epoch).
    pub min_received_at_us: i64,
    pub max_received_at_us: i64,
    /// When the entry was written (µs since the epoch): `received_at` to here is the
    /// export lag this file had.
    pub committed_at_us: i64,
}

/// The directory of one source's commit logs (one subdirectory per node).
pub fn source_prefix(prefix: &Path, workspace_id: Uuid, source: &str) -> Path {
    layout::workspace_prefix(prefix, workspace_id)
        .join("_commits")
        .join(format!("source={source}"))
}

/// The directory of one node's log of one source.
pub fn node_prefix(prefix: &Path, workspace_id: Uuid, source: &str, node: &str) -> Path {
    source_prefix(prefix, workspace_id, source).join(format!("node={node}"))
}

/// Entries per directory of a node's log.
pub const CHUNK_ENTRIES: u64 = 10_000;

/// The directory of entry `seq`'s chunk.
fn chunk_prefix(prefix: &Path, workspace_id: Uuid, source: &str, node: &str, chunk: u64) -> Path {
    node_prefix(prefix, workspace_id, source, node).join(format!("{chunk:010}"))
}

/// Where entry `seq` of `node` goes. Zero-padded, so that names sort as numbers do.
pub fn entry_path(prefix: &Path, workspace_id: Uuid, source: &str, node: &str, seq: u64) -> Path {
    chunk_prefix(prefix, workspace_id, source, node, seq / CHUNK_ENTRIES)
        .join(format!("{seq:020}.json"))
}

/// The progress-store key that holds the next sequence number of a node's log of one source.
pub fn seq_key(workspace_id: Uuid, source: &str) -> String {
    format!("commit-seq/{workspace_id}/{source}")
}

/// Why the commit log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error("object storage: {0}")]
    Store(#[from] object_store::Error),
    #[error("commit entry {path} is not valid: {source}")]
    Invalid {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Writes `entry` into its node's log.
pub async fn append(
    lake: &Lake,
    workspace_id: Uuid,
    source: &str,
    entry: &CommitEntry,
) -> Result<(), CommitError> {
    let path = entry_path(lake.prefix(), workspace_id, source, &entry.node, entry.seq);
    // Serialising a plain struct cannot fail.
    let bytes = serde_json::to_vec(entry).unwrap_or_default();
    lake.put(&path, bytes.into()).await?;
    Ok(())
}

/// The nodes that have a log for this source, in name order.
pub async fn nodes(
    lake: &Lake,
    workspace_id: Uuid,
    source: &str,
) -> Result<Vec<String>, CommitError> {
    let prefix = source_prefix(lake.prefix(), workspace_id, source);
    let listing = lake.store().list_with_delimiter(Some(&prefix)).await?;
    let mut nodes: Vec<String> = listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename())
        .filter_map(|name| name.strip_prefix("node="))
        .filter(|node| layout::is_valid_node_id(node))
        .map(str::to_owned)
        .collect();
    nodes.sort();
    Ok(nodes)
}

/// The chunks of `node`'s log, in order.
async fn chunks(
    lake: &Lake,
    workspace_id: Uuid,
    source: &str,
    node: &str,
) -> Result<Vec<u64>, CommitError> {
    let prefix = node_prefix(lake.prefix(), workspace_id, source, node);
    let listing = lake.store().list_with_delimiter(Some(&prefix)).await?;
    let mut chunks: Vec<u64> = listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename()?.parse().ok())
        .collect();
    chunks.sort_unstable();
    Ok(chunks)
}

/// The sequence numbers in one chunk of `node`'s log from `from` on, in order.
async fn seqs_in_chunk(
    lake: &Lake,
    workspace_id: Uuid,
    source: &str,
    node: &str,
    chunk: u64,
    from: u64,
) -> Result<Vec<u64>, CommitError> {
    let prefix = chunk_prefix(lake.prefix(), workspace_id, source, node, chunk);
    let listed: Vec<_> = if from == 0 || from <= chunk * CHUNK_ENTRIES {
        lake.store().list(Some(&prefix)).try_collect().await?
    } else {
        // Everything after the entry before `from`, by name: a store that can skips the rest.
        let offset = entry_path(lake.prefix(), workspace_id, source, node, from - 1);
        lake.store()
            .list_with_offset(Some(&prefix), &offset)
            .try_collect()
            .await?
    };
    let mut seqs: Vec<u64> = listed
        .iter()
        .filter_map(|meta| meta.location.filename())
        .filter_map(|name| name.strip_suffix(".json"))
        .filter_map(|seq| seq.parse::<u64>().ok())
        .filter(|seq| *seq >= from)
        .collect();
    seqs.sort_unstable();
    Ok(seqs)
}

/// Up to `limit` sequence numbers of `node`'s log from `from` on (inclusive), in order.
pub async fn seqs_from(
    lake: &Lake,
    workspace_id: Uuid,
    source: &str,
    node: &str,
    from: u64,
    limit: usize,
) -> Result<Vec<u64>, CommitError> {
    let mut seqs = Vec::new();
    for chunk in chunks(lake, workspace_id, source, node).await? {
        if chunk < from / CHUNK_ENTRIES {
            continue;
        }
        seqs.extend(seqs_in_chunk(lake, workspace_id, source, node, chunk, from).await?);
        if seqs.len() >= limit {
            break;
        }
    }
    seqs.truncate(limit);
    Ok(seqs)
}

/// The number after the newest entry of `node`'s log (0 for an empty log).
pub async fn next_seq(
    lake: &Lake,
    workspace_id: Uuid,
    source: &str,
    node: &str,
) -> Result<u64, CommitError> {
    for chunk in chunks(lake, workspace_id, source, node)
        .await?
        .into_iter()
        .rev()
    {
        let seqs = seqs_in_chunk(lake, workspace_id, source, node, chunk, 0).await?;
        if let Some(last) = seqs.last() {
            return Ok(last + 1);
        }
    }
    Ok(0)
}

/// Reads entry `seq` of `node`'s log.
pub async fn read(
    lake: &Lake,
    workspace_id: Uuid,
    source: &str,
    node: &str,
    seq: u64,
) -> Result<CommitEntry, CommitError> {
    let path = entry_path(lake.prefix(), workspace_id, source, node, seq);
    let bytes = lake.store().get(&path).await?.bytes().await?;
    serde_json::from_slice(&bytes).map_err(|source| CommitError::Invalid {
        path: path.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(node: &str, seq: u64) -> CommitEntry {
        CommitEntry {
            seq,
            node: node.into(),
            path: format!("x/{seq}.parquet"),
            rows: 1,
            first_event_id: Uuid::nil(),
            min_received_at_us: 0,
            max_received_at_us: 0,
            committed_at_us: 0,
        }
    }

    #[tokio::test]
    async fn entries_list_per_node_in_number_order_from_any_point() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open(&dir.path().display().to_string()).expect("lake");
        let ws = Uuid::now_v7();
        for seq in [0, 1, 2, 9, 10, 11, 100, 9_999, 10_000, 25_001] {
            append(&lake, ws, "telemetry", &entry("node-a", seq))
                .await
                .expect("append");
        }
        append(&lake, ws, "telemetry", &entry("node-b", 5))
            .await
            .expect("append");
        append(&lake, ws, "other", &entry("node-c", 0))
            .await
            .expect("append");
        assert_eq!(
            nodes(&lake, ws, "telemetry").await.expect("nodes"),
            ["node-a", "node-b"]
        );
        let all = seqs_from(&lake, ws, "telemetry", "node-a", 0, 100).await;
        assert_eq!(
            all.expect("list"),
            [0, 1, 2, 9, 10, 11, 100, 9_999, 10_000, 25_001]
        );
        let across = seqs_from(&lake, ws, "telemetry", "node-a", 101, 2).await;
        assert_eq!(across.expect("list"), [9_999, 10_000], "across chunks");
        let next = seqs_from(&lake, ws, "telemetry", "node-a", 10_001, 5).await;
        assert_eq!(next.expect("list"), [25_001]);
        assert_eq!(
            next_seq(&lake, ws, "telemetry", "node-a")
                .await
                .expect("next"),
            25_002
        );
        assert_eq!(
            next_seq(&lake, ws, "telemetry", "node-b")
                .await
                .expect("next"),
            6
        );
        assert_eq!(
            next_seq(&lake, ws, "telemetry", "node-z")
                .await
                .expect("next"),
            0
        );
        let later = seqs_from(&lake, ws, "telemetry", "node-a", 3, 2).await;
        assert_eq!(later.expect("list"), [9, 10]);
        let exact = seqs_from(&lake, ws, "telemetry", "node-a", 11, 100).await;
        assert_eq!(exact.expect("list"), [11, 100, 9_999, 10_000, 25_001]);
        let read_back = read(&lake, ws, "telemetry", "node-a", 9)
            .await
            .expect("read");
        assert_eq!(read_back, entry("node-a", 9));
        assert!(seqs_from(&lake, ws, "telemetry", "node-z", 0, 10)
            .await
            .expect("list")
            .is_empty());
    }
}
