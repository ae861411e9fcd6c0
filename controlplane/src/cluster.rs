//! What the configuration stream to data-plane nodes serves from: the recent history of
//! configuration versions (the current snapshot and the deltas that led to it), and the nodes
//! that are or were connected, with the version each acknowledged.
//!
//! The history keeps [`DELTAS_KEPT`] deltas; a node further behind, or whose copy hashes
//! differently, gets a full snapshot. Nothing here is persisted: after a restart every node
//! that reconnects is compared by hash and gets a snapshot if it differs.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use axum::body::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sluice_config::delta::ConfigDelta;
use sluice_config::snapshot::ConfigSnapshot;
use tokio::sync::watch;
use utoipa::ToSchema;

/// Deltas kept for catching up.
pub const DELTAS_KEPT: usize = 1024;
/// Tokens and sources carried by the kept deltas together at most (a source weighs one more
/// per KiB of its schema, a workspace one per tag rule): a delta holds whole workspaces, so a
/// count of deltas alone would not bound memory (a node further behind gets a snapshot).
pub const DELTA_ITEMS_KEPT: usize = 200_000;

fn items(delta: &ConfigDelta) -> usize {
    delta
        .upsert
        .iter()
        .map(|w| {
            let schemas: usize = w
                .sources
                .iter()
                .filter_map(|x| x.schema.as_ref())
                .map(|schema| serde_json::to_vec(schema).map_or(0, |b| b.len()) >> 10)
                .sum();
            1 + w.tokens.len() + w.sources.len() + schemas + w.tag_rules.len()
        })
        .sum::<usize>()
        + delta.remove.len()
}
/// Nodes remembered at most.
const NODES_MAX: usize = 10_000;

struct History {
    current: Arc<ConfigSnapshot>,
    hash: String,
    /// The stream line that carries `current` whole, serialised once per version rather than
    /// once per node that needs it.
    snapshot_line: Bytes,
    /// A chain: each delta's `from` is the previous one's `to`; the last one's `to` is current.
    deltas: VecDeque<ConfigDelta>,
    /// Hash of the snapshot the oldest delta starts from.
    oldest_hash: String,
    /// [`items`] of all kept deltas.
    items: usize,
}

/// The versions the stream serves.
pub struct ConfigHistory {
    inner: RwLock<History>,
    changed: watch::Sender<u64>,
}

/// What a node must receive to reach the current version.
pub enum CatchUp {
    /// It is current.
    Nothing,
    Deltas(Vec<ConfigDelta>),
    /// The stream line with the whole current snapshot, its version and hash.
    Snapshot(Bytes, u64, String),
}

/// The stream line of a full snapshot: `{"type":"snapshot","hash":…,"snapshot":…}` and a
/// newline.
pub fn snapshot_line(snapshot: &ConfigSnapshot, hash: &str) -> Bytes {
    #[derive(Serialize)]
    struct Line<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        hash: &'a str,
        snapshot: &'a ConfigSnapshot,
    }
    let mut bytes = serde_json::to_vec(&Line {
        kind: "snapshot",
        hash,
        snapshot,
    })
    .unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

impl ConfigHistory {
    pub fn new(initial: ConfigSnapshot) -> Self {
        let hash = initial.content_hash();
        let version = initial.version;
        ConfigHistory {
            inner: RwLock::new(History {
                snapshot_line: snapshot_line(&initial, &hash),
                current: Arc::new(initial),
                oldest_hash: hash.clone(),
                hash,
                deltas: VecDeque::new(),
                items: 0,
            }),
            changed: watch::Sender::new(version),
        }
    }

    /// Moves to `next` (a later version), remembering the delta. An invalid configuration is
    /// not published (nodes would refuse it and stall behind it); the error is logged.
    pub fn advance(&self, next: ConfigSnapshot) {
        let version = next.version;
        if let Err(e) = next.validate() {
            tracing::error!(version, error = %e, "not publishing an invalid configuration version");
            return;
        }
        // The diff and the hash take time on a large configuration: computed before taking
        // the write lock, so readers (streams, the node list) never wait for them.
        let current = self
            .inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .current
            .clone();
        if next.version <= current.version {
            return;
        }
        let delta = current.delta_to(&next);
        let line = snapshot_line(&next, &delta.hash);
        {
            let mut h = self.inner.write().unwrap_or_else(|e| e.into_inner());
            if h.current.version != current.version {
                // Another advance won the race (only one publisher runs; kept for safety).
                return;
            }
            h.hash = delta.hash.clone();
            h.snapshot_line = line;
            h.items += items(&delta);
            h.deltas.push_back(delta);
            h.current = Arc::new(next);
            while h.deltas.len() > DELTAS_KEPT || (h.items > DELTA_ITEMS_KEPT && h.deltas.len() > 1)
            {
                if let Some(dropped) = h.deltas.pop_front() {
                    h.items -= items(&dropped);
                    h.oldest_hash = dropped.hash;
                }
            }
        }
        self.changed.send_replace(version);
    }

    /// The current version and its hash.
    pub fn current(&self) -> (Arc<ConfigSnapshot>, String) {
        let h = self.inner.read().unwrap_or_else(|e| e.into_inner());
        (h.current.clone(), h.hash.clone())
    }

    /// What a node at `version` whose copy hashes to `hash` needs.
    pub fn catch_up(&self, version: u64, hash: &str) -> CatchUp {
        let h = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if version == h.current.version && hash == h.hash {
            return CatchUp::Nothing;
        }
        let start = h.deltas.iter().position(|d| d.from == version);
        if let Some(start) = start {
            let hash_at_version = match start {
                0 => &h.oldest_hash,
                n => &h.deltas[n - 1].hash,
            };
            if hash_at_version == hash {
                return CatchUp::Deltas(h.deltas.iter().skip(start).cloned().collect());
            }
        }
        CatchUp::Snapshot(h.snapshot_line.clone(), h.current.version, h.hash.clone())
    }

    /// Wakes when the history moves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// A data-plane node as the control plane sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NodeView {
    pub id: String,
    /// The HTTP address the node reported.
    pub addr: String,
    pub connected: bool,
    pub last_seen: DateTime<Utc>,
    /// The last version it acknowledged.
    pub acked_version: Option<u64>,
    /// The current version minus the acknowledged one.
    pub lag: Option<u64>,
    /// The last version it refused, and why.
    pub last_nack: Option<Nack>,
}

/// A refused version.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Nack {
    pub version: u64,
    pub reason: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct NodeState {
    addr: String,
    streams: usize,
    last_seen: DateTime<Utc>,
    acked_version: Option<u64>,
    last_nack: Option<Nack>,
}

/// The nodes that connected since the control plane started.
#[derive(Default)]
pub struct Nodes {
    nodes: Mutex<HashMap<String, NodeState>>,
}

impl Nodes {
    fn with<T>(&self, id: &str, f: impl FnOnce(&mut NodeState) -> T) -> Option<T> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if !nodes.contains_key(id) {
            if nodes.len() >= NODES_MAX {
                nodes.retain(|_, n| n.streams > 0);
                if nodes.len() >= NODES_MAX {
                    return None;
                }
            }
            nodes.insert(
                id.to_owned(),
                NodeState {
                    addr: String::new(),
                    streams: 0,
                    last_seen: Utc::now(),
                    acked_version: None,
                    last_nack: None,
                },
            );
        }
        nodes.get_mut(id).map(|n| {
            n.last_seen = Utc::now();
            f(n)
        })
    }

    /// A stream from `id` opened; false when no more nodes can be tracked.
    pub fn connected(&self, id: &str, addr: &str) -> bool {
        self.with(id, |n| {
            n.streams += 1;
            n.addr = addr.to_owned();
        })
        .is_some()
    }

    pub fn disconnected(&self, id: &str) {
        self.with(id, |n| n.streams = n.streams.saturating_sub(1));
    }

    pub fn seen(&self, id: &str) {
        self.with(id, |_| ());
    }

    pub fn acked(&self, id: &str, version: u64) {
        self.with(id, |n| {
            n.acked_version = Some(n.acked_version.map_or(version, |v| v.max(version)));
            // A later version applied: the refusal is history.
            if n.last_nack
                .as_ref()
                .is_some_and(|nack| nack.version <= version)
            {
                n.last_nack = None;
            }
        });
    }

    pub fn nacked(&self, id: &str, version: u64, reason: String) {
        tracing::warn!(node = id, version, %reason, "a node refused a configuration version");
        self.with(id, |n| {
            n.last_nack = Some(Nack {
                version,
                reason,
                at: Utc::now(),
            })
        });
    }

    /// Every node, with its lag behind `current`.
    pub fn list(&self, current: u64) -> Vec<NodeView> {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<NodeView> = nodes
            .iter()
            .map(|(id, n)| NodeView {
                id: id.clone(),
                addr: n.addr.clone(),
                connected: n.streams > 0,
                last_seen: n.last_seen,
                acked_version: n.acked_version,
                lag: n.acked_version.map(|v| current.saturating_sub(v)),
                last_nack: n.last_nack.clone(),
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_config::snapshot::WorkspaceConfig;
    use uuid::Uuid;

    fn snapshot(version: u64, slugs: &[&str]) -> ConfigSnapshot {
        ConfigSnapshot {
            version,
            workspaces: slugs
                .iter()
                .map(|s| WorkspaceConfig {
                    // A stable id per slug, so "a" is the same workspace in every version.
                    id: Uuid::from_u128(u128::from(s.as_bytes()[0])),
                    slug: (*s).into(),
                    name: String::new(),
                    enabled: true,
                    events_per_second_max: None,
                    cors_origins: Vec::new(),
                    sources: vec![],
                    tokens: vec![],
                    tag_rules: Vec::new(),
                    outputs: Vec::new(),
                    export_endpoints: Vec::new(),
                    webhooks: Vec::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn nodes_get_the_deltas_they_missed_or_a_snapshot() {
        let v1 = snapshot(1, &["a"]);
        let history = ConfigHistory::new(v1.clone());
        history.advance(snapshot(2, &["a", "b"]));
        history.advance(snapshot(5, &["b"]));
        let (current, hash) = history.current();
        assert_eq!(current.version, 5);
        assert!(matches!(history.catch_up(5, &hash), CatchUp::Nothing));
        match history.catch_up(1, &v1.content_hash()) {
            CatchUp::Deltas(deltas) => {
                let mut copy = v1.clone();
                for d in &deltas {
                    copy = copy.apply(d).expect("applies");
                }
                assert_eq!(copy.content_hash(), hash);
            }
            _ => panic!("deltas expected"),
        }
        assert!(
            matches!(history.catch_up(1, "drifted"), CatchUp::Snapshot(..)),
            "a copy that hashes differently gets a snapshot"
        );
        assert!(
            matches!(history.catch_up(3, "x"), CatchUp::Snapshot(..)),
            "an unknown version gets a snapshot"
        );
        assert!(
            matches!(history.catch_up(5, "x"), CatchUp::Snapshot(..)),
            "the current version with another hash gets a snapshot"
        );
    }

    #[test]
    fn deltas_beyond_the_memory_budget_are_dropped_and_replaced_by_a_snapshot() {
        use sluice_config::snapshot::{Scope, TokenConfig};
        let v1 = snapshot(1, &["a"]);
        let history = ConfigHistory::new(v1.clone());
        let big = |version: u64, offset: usize| {
            let mut s = snapshot(version, &["a"]);
            s.workspaces[0].tokens = (0..DELTA_ITEMS_KEPT / 2 + 1)
                .map(|n| TokenConfig {
                    id: Uuid::from_u128((offset + n) as u128),
                    name: String::new(),
                    sha256: format!("{:064x}", offset + n),
                    scopes: vec![Scope::Ingest],
                    sources: None,
                    device_id: None,
                    expires_at: None,
                    endpoints: None,
                })
                .collect();
            s
        };
        history.advance(big(2, 0));
        assert!(matches!(
            history.catch_up(1, &v1.content_hash()),
            CatchUp::Deltas(_)
        ));
        history.advance(big(3, 1_000_000));
        assert!(
            matches!(
                history.catch_up(1, &v1.content_hash()),
                CatchUp::Snapshot(..)
            ),
            "the first delta fell out of the budget"
        );
    }
}
