//! The configuration a node holds, indexed so that applying a delta costs what the delta
//! touches, not what the whole configuration holds.
//!
//! A node with 100,000 tokens must take a one-workspace delta without re-validating,
//! re-hashing or copying the other 99,900: on a small machine that work competes with the
//! ingest hot path. So the state keeps each workspace behind an `Arc` with its own content
//! hash (the snapshot hash combines them, see [`ConfigSnapshot::content_hash`]), plus the
//! global indexes validation needs (slug and token hash to workspace). A delta is validated
//! against those indexes, its result hash computed from per-workspace hashes, and only then
//! is anything changed: a refused delta leaves the state as it was.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use uuid::Uuid;

use crate::delta::{ConfigDelta, DeltaError};
use crate::hash::combine_hashes;
use crate::snapshot::{ConfigSnapshot, SnapshotError, WorkspaceConfig};

/// One workspace as held: shared with the [`ConfigChange`]s that mention it.
#[derive(Debug, Clone)]
struct Held {
    config: Arc<WorkspaceConfig>,
    /// [`WorkspaceConfig::content_hash`], kept so that no version rehashes it again.
    hash: [u8; 32],
}

/// A validated configuration version with the indexes that keep deltas cheap.
#[derive(Debug)]
pub struct ConfigState {
    version: u64,
    workspaces: BTreeMap<Uuid, Held>,
    /// Workspace slug to id.
    slugs: HashMap<String, Uuid>,
    /// Token SHA-256 to the id of the workspace that holds it.
    token_owners: HashMap<[u8; 32], Uuid>,
    hash: String,
}

/// What one applied delta changed, for those who keep copies of their own (the access table,
/// the redb cache) and want to update them in proportion to the change.
#[derive(Debug, Clone)]
pub struct ConfigChange {
    pub from: u64,
    pub to: u64,
    /// The previous copies of the workspaces removed or replaced.
    pub before: Vec<Arc<WorkspaceConfig>>,
    /// The workspaces added or replaced, as they are now.
    pub after: Vec<Arc<WorkspaceConfig>>,
}

impl ConfigState {
    /// Validates and indexes `snapshot`.
    pub fn new(snapshot: ConfigSnapshot) -> Result<Self, SnapshotError> {
        snapshot.validate()?;
        let mut state = ConfigState::empty();
        state.version = snapshot.version;
        for ws in snapshot.workspaces {
            state.insert(Arc::new(ws));
        }
        state.hash = state.combined_hash(state.version, &state.workspaces);
        Ok(state)
    }

    /// Version 0 with no workspace: every request refused.
    pub fn empty() -> Self {
        ConfigState {
            version: 0,
            workspaces: BTreeMap::new(),
            slugs: HashMap::new(),
            token_owners: HashMap::new(),
            hash: combine_hashes(0, std::iter::empty()),
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Equal to [`ConfigSnapshot::content_hash`] of [`snapshot`](Self::snapshot).
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The workspaces, in id order.
    pub fn workspaces(&self) -> impl Iterator<Item = &WorkspaceConfig> {
        self.workspaces.values().map(|held| held.config.as_ref())
    }

    /// A plain copy of the configuration.
    pub fn snapshot(&self) -> ConfigSnapshot {
        ConfigSnapshot {
            version: self.version,
            workspaces: self.workspaces().cloned().collect(),
        }
    }

    /// Applies `delta` if it follows this version, yields a valid configuration and hashes as
    /// the delta says; otherwise nothing changes.
    pub fn apply(&mut self, delta: &ConfigDelta) -> Result<ConfigChange, DeltaError> {
        if delta.from != self.version {
            return Err(DeltaError::Gap {
                current: self.version,
                from: delta.from,
            });
        }
        if delta.to <= delta.from {
            return Err(DeltaError::Backwards {
                from: delta.from,
                to: delta.to,
            });
        }
        self.check(delta)?;
        self.commit(
            delta.to,
            delta.upsert.clone(),
            &delta.remove,
            Some(&delta.hash),
        )
    }

    /// Makes `next` (a later version, validated here) the configuration, as the change from
    /// this one: what a node reading whole snapshots from a file does, so that the access
    /// table and the cache still change only where the configuration did.
    pub fn replace(&mut self, next: ConfigSnapshot) -> Result<ConfigChange, DeltaError> {
        if next.version <= self.version {
            return Err(DeltaError::Backwards {
                from: self.version,
                to: next.version,
            });
        }
        next.validate()?;
        let ids: HashSet<Uuid> = next.workspaces.iter().map(|w| w.id).collect();
        let remove: Vec<Uuid> = self
            .workspaces
            .keys()
            .filter(|id| !ids.contains(id))
            .copied()
            .collect();
        let upsert: Vec<WorkspaceConfig> = next
            .workspaces
            .into_iter()
            .filter(|ws| {
                self.workspaces
                    .get(&ws.id)
                    .is_none_or(|held| *held.config != *ws)
            })
            .collect();
        self.commit(next.version, upsert, &remove, None)
    }

    /// Moves to version `to` with `upsert` and `remove` (checked to fit) once the result hashes
    /// as `expected` (when given); otherwise nothing changes.
    fn commit(
        &mut self,
        to: u64,
        upsert: Vec<WorkspaceConfig>,
        remove: &[Uuid],
        expected: Option<&str>,
    ) -> Result<ConfigChange, DeltaError> {
        let upserted: Vec<Held> = upsert
            .into_iter()
            .map(|ws| Held {
                hash: ws.content_hash(),
                config: Arc::new(ws),
            })
            .collect();
        // The result's map shares every untouched workspace with this one: cloning it copies
        // one `Arc` per workspace, never a token.
        let mut next = self.workspaces.clone();
        for id in remove {
            next.remove(id);
        }
        for held in &upserted {
            next.insert(held.config.id, held.clone());
        }
        let got = self.combined_hash(to, &next);
        if let Some(expected) = expected.filter(|expected| *expected != got) {
            return Err(DeltaError::Drift {
                expected: expected.to_owned(),
                got,
            });
        }
        // Checked: commit. Everything touched leaves the indexes first, so a slug or token
        // that moves between touched workspaces is not removed after its new owner took it.
        let mut previous = std::mem::replace(&mut self.workspaces, next);
        let mut before = Vec::new();
        let upserted_ids = upserted.iter().map(|held| &held.config.id);
        for id in remove.iter().chain(upserted_ids) {
            if let Some(old) = previous.remove(id) {
                self.unindex(&old.config);
                before.push(old.config);
            }
        }
        let after: Vec<Arc<WorkspaceConfig>> =
            upserted.into_iter().map(|held| held.config).collect();
        for ws in &after {
            self.index(ws);
        }
        let from = self.version;
        self.version = to;
        self.hash = got;
        Ok(ConfigChange {
            from,
            to,
            before,
            after,
        })
    }

    /// The invariants of [`ConfigSnapshot::validate`] for the result of `delta`, checked on
    /// the workspaces it upserts only: alone, among themselves, and against the workspaces it
    /// leaves untouched.
    fn check(&self, delta: &ConfigDelta) -> Result<(), SnapshotError> {
        let touched: HashSet<Uuid> = delta
            .remove
            .iter()
            .chain(delta.upsert.iter().map(|w| &w.id))
            .copied()
            .collect();
        let held_by_untouched = |owner: Option<&Uuid>| owner.is_some_and(|o| !touched.contains(o));
        let mut ids = HashSet::new();
        let mut slugs = HashSet::new();
        let mut tokens = HashSet::new();
        for ws in &delta.upsert {
            ws.validate()?;
            if !ids.insert(ws.id)
                || !slugs.insert(ws.slug.as_str())
                || held_by_untouched(self.slugs.get(&ws.slug))
            {
                return Err(SnapshotError::Invalid(format!(
                    "workspace {:?} appears twice",
                    ws.slug
                )));
            }
            for token in &ws.tokens {
                let hash = token.hash_bytes().ok_or_else(|| {
                    SnapshotError::Invalid(format!("token {} has no valid hash", token.id))
                })?;
                if !tokens.insert(hash) || held_by_untouched(self.token_owners.get(&hash)) {
                    return Err(SnapshotError::duplicate_token(token));
                }
            }
        }
        Ok(())
    }

    fn combined_hash(&self, version: u64, workspaces: &BTreeMap<Uuid, Held>) -> String {
        combine_hashes(
            version,
            workspaces.iter().map(|(id, held)| (*id, &held.hash)),
        )
    }

    /// Adds a workspace known to fit (validated with the others).
    fn insert(&mut self, config: Arc<WorkspaceConfig>) {
        self.index(&config);
        let hash = config.content_hash();
        self.workspaces.insert(config.id, Held { config, hash });
    }

    fn index(&mut self, ws: &WorkspaceConfig) {
        self.slugs.insert(ws.slug.clone(), ws.id);
        for token in &ws.tokens {
            if let Some(hash) = token.hash_bytes() {
                self.token_owners.insert(hash, ws.id);
            }
        }
    }

    fn unindex(&mut self, ws: &WorkspaceConfig) {
        self.slugs.remove(&ws.slug);
        for token in &ws.tokens {
            if let Some(hash) = token.hash_bytes() {
                self.token_owners.remove(&hash);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{token, workspace};

    fn snapshot(version: u64, workspaces: Vec<WorkspaceConfig>) -> ConfigSnapshot {
        ConfigSnapshot {
            version,
            workspaces,
        }
    }

    /// Every step of a sequence of changes: the state after the delta equals the target, by
    /// content and by hash, and its indexes are those of a state built from the target.
    #[test]
    fn deltas_applied_in_place_match_the_snapshots_they_lead_to() {
        let a = workspace("a", &[1, 2]);
        let b = workspace("b", &[3]);
        let c = workspace("c", &[4]);
        let v1 = snapshot(1, vec![a.clone(), b.clone(), c.clone()]);
        let mut state = ConfigState::new(v1.clone()).expect("valid");
        assert_eq!(state.hash(), v1.content_hash());

        // A token moves from a to b, b is renamed to a's old slug and a to a new one: legal
        // only because both are touched by the same delta.
        let mut a2 = a.clone();
        a2.slug = "a-renamed".into();
        a2.tokens.retain(|t| t.sha256 != format!("{:064x}", 2));
        let mut b2 = b.clone();
        b2.slug = "a".into();
        b2.tokens.push(token(2));
        let v2 = snapshot(2, vec![a2, b2, c.clone()]);
        // Removed, and a new workspace takes its token.
        let d = workspace("d", &[4, 5]);
        let v3 = snapshot(
            3,
            vec![v2.workspaces[0].clone(), v2.workspaces[1].clone(), d],
        );
        // Everything removed.
        let v4 = snapshot(4, vec![]);

        let mut previous = v1;
        for target in [v2, v3, v4] {
            let delta = previous.delta_to(&target);
            let change = state.apply(&delta).expect("applies");
            assert_eq!((change.from, change.to), (previous.version, target.version));
            assert_eq!(state.version(), target.version);
            assert_eq!(state.hash(), target.content_hash());
            let fresh = ConfigState::new(target.clone()).expect("valid");
            assert_eq!(state.slugs, fresh.slugs);
            assert_eq!(state.token_owners, fresh.token_owners);
            assert_eq!(state.snapshot().content_hash(), target.content_hash());
            previous = target;
        }
    }

    #[test]
    fn a_refused_delta_changes_nothing() {
        let a = workspace("a", &[1]);
        let b = workspace("b", &[2]);
        let v1 = snapshot(1, vec![a.clone(), b.clone()]);
        let mut state = ConfigState::new(v1.clone()).expect("valid");
        let hash = state.hash().to_owned();

        let mut stealing_slug = b.clone();
        stealing_slug.slug = "a".into();
        let mut stealing_token = b.clone();
        stealing_token.tokens.push(token(1));
        let mut bad_slug = b.clone();
        bad_slug.slug = "../etc".into();
        for upsert in [stealing_slug, stealing_token, bad_slug] {
            let delta = ConfigDelta {
                from: 1,
                to: 2,
                upsert: vec![upsert],
                remove: vec![],
                hash: String::new(),
            };
            assert!(
                matches!(state.apply(&delta), Err(DeltaError::Invalid(_))),
                "{delta:?}"
            );
        }
        let mut renamed = b.clone();
        renamed.name = "B".into();
        let target = snapshot(2, vec![a, renamed]);
        let mut wrong_hash = v1.delta_to(&target);
        wrong_hash.hash = "0".repeat(64);
        assert!(matches!(
            state.apply(&wrong_hash),
            Err(DeltaError::Drift { .. })
        ));
        let gap = ConfigDelta {
            from: 5,
            ..v1.delta_to(&target)
        };
        assert!(matches!(state.apply(&gap), Err(DeltaError::Gap { .. })));

        assert_eq!(state.version(), 1);
        assert_eq!(state.hash(), hash);
        assert_eq!(state.snapshot().content_hash(), v1.content_hash());
        // And the good delta still applies after all those refusals.
        state.apply(&v1.delta_to(&target)).expect("applies");
        assert_eq!(state.hash(), target.content_hash());
    }

    #[test]
    fn the_hash_ignores_order_and_sees_every_field() {
        let mut a = workspace("a", &[1, 2]);
        a.tokens.push(token(3));
        let b = workspace("b", &[4]);
        let one = snapshot(1, vec![a.clone(), b.clone()]);
        let mut reordered = a.clone();
        reordered.tokens.reverse();
        let two = snapshot(1, vec![b.clone(), reordered]);
        assert_eq!(one.content_hash(), two.content_hash());

        let mut expiring = a.clone();
        expiring.tokens[0].expires_at = Some(chrono::Utc::now());
        let three = snapshot(1, vec![expiring, b.clone()]);
        assert_ne!(one.content_hash(), three.content_hash());
        assert_ne!(
            one.content_hash(),
            snapshot(2, vec![a, b]).content_hash(),
            "the version is part of the hash"
        );
    }

    /// A whole new snapshot replaces the state as a change of only what differs.
    #[test]
    fn replacing_with_a_whole_snapshot_changes_only_what_differs() {
        let (a, b, c) = (
            workspace("a", &[1]),
            workspace("b", &[2]),
            workspace("c", &[3]),
        );
        let v1 = snapshot(1, vec![a.clone(), b.clone(), c.clone()]);
        let mut state = ConfigState::new(v1).expect("valid");
        let mut b2 = b.clone();
        b2.enabled = false;
        let d = workspace("d", &[4]);
        let v2 = snapshot(2, vec![d.clone(), b2, a.clone()]);
        let change = state.replace(v2.clone()).expect("replaces");
        let ids = |list: &[Arc<WorkspaceConfig>]| {
            let mut ids: Vec<Uuid> = list.iter().map(|w| w.id).collect();
            ids.sort();
            ids
        };
        let mut before = vec![b.id, c.id];
        before.sort();
        let mut after = vec![b.id, d.id];
        after.sort();
        assert_eq!(ids(&change.before), before, "a is unchanged");
        assert_eq!(ids(&change.after), after);
        assert_eq!(state.hash(), v2.content_hash());
        let fresh = ConfigState::new(v2.clone()).expect("valid");
        assert_eq!(state.token_owners, fresh.token_owners);

        assert!(matches!(
            state.replace(v2.clone()),
            Err(DeltaError::Backwards { .. })
        ));
        let invalid = snapshot(3, vec![a.clone(), workspace("a", &[9])]);
        assert!(matches!(
            state.replace(invalid),
            Err(DeltaError::Invalid(_))
        ));
        assert_eq!(state.version(), 2, "refusals change nothing");
    }

    /// Fuzz: snapshots and deltas read from damaged JSON are refused or applied, never a panic,
    /// and an applied change leaves a state whose hash is its snapshot's
    /// (`SLUICE_FUZZ_MS` sets the run).
    #[test]
    fn fuzz_damaged_snapshots_and_deltas_are_refused_or_applied_whole() {
        use crate::delta::ConfigDelta;
        use crate::snapshot::ConfigSnapshot;
        let before = ConfigSnapshot {
            version: 1,
            workspaces: vec![workspace("a", &[1, 2]), workspace("b", &[3])],
        };
        let mut after = before.clone();
        after.version = 2;
        after.workspaces[1] = workspace("c", &[4]);
        let snapshot_json = serde_json::to_vec(&before).expect("json");
        let delta_json = serde_json::to_vec(&before.delta_to(&after)).expect("json");
        arbtest::arbtest(|u| {
            let mut bytes = if u.arbitrary()? {
                snapshot_json.clone()
            } else {
                delta_json.clone()
            };
            for _ in 0..u.int_in_range(1..=3u8)? {
                let at = u.choose_index(bytes.len())?;
                bytes[at] = *u.choose(br#"{}[]":,0123456789-abcdef \"#)?;
            }
            if let Ok(snapshot) = serde_json::from_slice::<ConfigSnapshot>(&bytes) {
                if let Ok(state) = ConfigState::new(snapshot.clone()) {
                    assert_eq!(state.hash(), snapshot.content_hash());
                }
            }
            if let Ok(delta) = serde_json::from_slice::<ConfigDelta>(&bytes) {
                let mut state = ConfigState::new(before.clone()).expect("state");
                if state.apply(&delta).is_ok() {
                    assert_eq!(state.hash(), state.snapshot().content_hash());
                }
            }
            Ok(())
        })
        .budget_ms(crate::test_fixtures::fuzz_budget_ms());
    }
}
