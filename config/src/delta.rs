//! Changes between two configuration snapshots.
//!
//! The control plane streams a full [`ConfigSnapshot`] to a node that is new, behind a gap or
//! has drifted, and otherwise the [`ConfigDelta`]s it missed: whole workspaces replaced or
//! removed (a workspace is small; finer deltas are not worth their complexity). Every delta
//! carries the hash ([`crate::hash`]) of the snapshot it produces, so a node that
//! applies it and gets another hash knows its copy drifted and asks for a full snapshot.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::snapshot::{ConfigSnapshot, SnapshotError, WorkspaceConfig};
use crate::state::ConfigState;

/// From one version to a later one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDelta {
    /// The version this delta applies to.
    pub from: u64,
    /// The version it produces.
    pub to: u64,
    /// Workspaces added or changed, whole.
    pub upsert: Vec<WorkspaceConfig>,
    /// Ids of workspaces removed.
    pub remove: Vec<Uuid>,
    /// [`ConfigSnapshot::content_hash`] of the result.
    pub hash: String,
}

/// Why a delta cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeltaError {
    #[error("delta from version {from} does not follow version {current}")]
    Gap { current: u64, from: u64 },
    #[error("delta goes from {from} back to {to}")]
    Backwards { from: u64, to: u64 },
    #[error(transparent)]
    Invalid(#[from] SnapshotError),
    #[error(
        "the result's hash {got} differs from the control plane's {expected}: this copy drifted"
    )]
    Drift { expected: String, got: String },
}

impl ConfigSnapshot {
    /// The delta that turns `self` into `next`.
    pub fn delta_to(&self, next: &ConfigSnapshot) -> ConfigDelta {
        let before: BTreeMap<Uuid, &WorkspaceConfig> =
            self.workspaces.iter().map(|w| (w.id, w)).collect();
        let after: BTreeSet<Uuid> = next.workspaces.iter().map(|w| w.id).collect();
        ConfigDelta {
            from: self.version,
            to: next.version,
            upsert: next
                .workspaces
                .iter()
                .filter(|w| before.get(&w.id).is_none_or(|old| *old != *w))
                .cloned()
                .collect(),
            remove: before
                .keys()
                .filter(|id| !after.contains(id))
                .copied()
                .collect(),
            hash: next.content_hash(),
        }
    }

    /// The snapshot `delta` produces from `self`, validated and checked against its hash:
    /// what a node does with [`ConfigState::apply`], for whoever holds a plain snapshot.
    pub fn apply(&self, delta: &ConfigDelta) -> Result<ConfigSnapshot, DeltaError> {
        let mut state = ConfigState::new(self.clone())?;
        state.apply(delta)?;
        Ok(state.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::workspace;

    #[test]
    fn a_delta_turns_one_snapshot_into_the_next_and_nothing_else() {
        let a = workspace("a", &[0xa]);
        let b = workspace("b", &[0xb]);
        let d = workspace("d", &[0xd]);
        let v1 = ConfigSnapshot {
            version: 1,
            workspaces: vec![a.clone(), b.clone(), d.clone()],
        };
        let mut a2 = a.clone();
        a2.enabled = false;
        let c = workspace("c", &[0xc]);
        let v3 = ConfigSnapshot {
            version: 3,
            workspaces: vec![c.clone(), a2.clone(), b.clone()],
        };
        let delta = v1.delta_to(&v3);
        assert_eq!(delta.remove, vec![d.id]);
        assert_eq!(
            delta.upsert.len(),
            2,
            "changed a and new c, not unchanged b"
        );
        let applied = v1.apply(&delta).expect("applies");
        assert_eq!(applied.version, 3);
        assert_eq!(
            applied.content_hash(),
            v3.content_hash(),
            "order does not matter"
        );

        let v2 = ConfigSnapshot {
            version: 2,
            ..v1.clone()
        };
        assert!(matches!(v2.apply(&delta), Err(DeltaError::Gap { .. })));

        let mut drifted = v1.clone();
        drifted.workspaces[1].name = "b changed behind our back".into();
        assert!(matches!(
            drifted.apply(&delta),
            Err(DeltaError::Drift { .. })
        ));

        let mut invalid = delta.clone();
        invalid.upsert.push(workspace("b", &[0xe]));
        assert!(matches!(v1.apply(&invalid), Err(DeltaError::Invalid(_))));
    }
}
