//! The hash that proves two copies of a configuration equal.
//!
//! SHA-256 over the version and each workspace's own SHA-256 (of its JSON with sources and
//! tokens in id order), in workspace id order. Per-workspace hashes let a node that applies a
//! delta rehash only the workspaces the delta carries ([`crate::state`]). The control
//! plane and its nodes must hash alike: run them from the same release.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::snapshot::{ConfigSnapshot, WorkspaceConfig};

/// Names the hash scheme, so that a scheme change can never hash equal to an older one.
const HASH_SCHEME: &[u8] = b"sluice-config-hash/2\n";

/// The snapshot hash of `version` and its workspaces' hashes, given in workspace id order.
pub(crate) fn combine_hashes<'a>(
    version: u64,
    workspaces: impl Iterator<Item = (Uuid, &'a [u8; 32])>,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(HASH_SCHEME);
    hasher.update(version.to_be_bytes());
    for (id, hash) in workspaces {
        hasher.update(id.as_bytes());
        hasher.update(hash);
    }
    hex::encode(hasher.finalize())
}

/// Feeds serialised JSON straight into a hash, without a buffer.
struct Digesting(Sha256);

impl std::io::Write for Digesting {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl WorkspaceConfig {
    /// SHA-256 of the workspace's JSON with its sources and tokens in id order, so that equal
    /// workspaces hash equal however they were built.
    pub fn content_hash(&self) -> [u8; 32] {
        let mut digest = Digesting(Sha256::new());
        let in_order =
            self.sources.is_sorted_by_key(|s| s.id) && self.tokens.is_sorted_by_key(|t| t.id);
        // Serialising a workspace cannot fail (string keys, no maps with other keys).
        let _ = if in_order {
            serde_json::to_writer(&mut digest, self)
        } else {
            let mut canonical = self.clone();
            canonical.sources.sort_by_key(|s| s.id);
            canonical.tokens.sort_by_key(|t| t.id);
            serde_json::to_writer(&mut digest, &canonical)
        };
        digest.0.finalize().into()
    }
}

impl ConfigSnapshot {
    /// The hash that proves two copies equal: SHA-256 (hex) over the version and each
    /// workspace's [`WorkspaceConfig::content_hash`] in id order. Per-workspace hashes let a
    /// node that applies a delta rehash only the workspaces the delta touches
    /// ([`crate::state::ConfigState`]).
    pub fn content_hash(&self) -> String {
        let mut hashes: Vec<(Uuid, [u8; 32])> = self
            .workspaces
            .iter()
            .map(|w| (w.id, w.content_hash()))
            .collect();
        hashes.sort_by_key(|(id, _)| *id);
        combine_hashes(self.version, hashes.iter().map(|(id, hash)| (*id, hash)))
    }
}
