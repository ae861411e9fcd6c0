//! The token index of a configuration view: token hash to token, in shards copied on write.
//!
//! Every version of the configuration is a new immutable view, and most versions change a few
//! tokens of many. Sharding lets the next view share every shard the change does not touch: a
//! one-workspace change to a configuration of 100,000 tokens copies a few thousand pointers,
//! not the whole index.

use std::collections::HashMap;
use std::sync::Arc;

use crate::access::TokenView;

/// Shards of the token index. A new version copies only the shards its changes touch: a
/// one-workspace change to a configuration of 100,000 tokens copies a few thousand pointers,
/// not the whole index.
const TOKEN_SHARD_BITS: u32 = 12;
const TOKEN_SHARDS: usize = 1 << TOKEN_SHARD_BITS;

/// Token hash to token, sharded for copy-on-write.
#[derive(Debug, Clone)]
pub struct TokenTable {
    shards: Vec<Arc<HashMap<[u8; 32], Arc<TokenView>>>>,
}

impl Default for TokenTable {
    fn default() -> Self {
        let empty = Arc::new(HashMap::new());
        TokenTable {
            shards: vec![empty; TOKEN_SHARDS],
        }
    }
}

impl TokenTable {
    /// Folds the whole hash and mixes it (Fibonacci hashing, top bits), so that even made-up
    /// hashes that differ only in a few bytes (as test and benchmark snapshots have) spread
    /// over the shards.
    fn shard(hash: &[u8; 32]) -> usize {
        let folded = hash
            .chunks_exact(8)
            .map(|word| u64::from_le_bytes(word.try_into().unwrap_or_default()))
            .fold(0, |acc, word| acc ^ word);
        (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - TOKEN_SHARD_BITS)) as usize
    }

    pub fn get(&self, hash: &[u8; 32]) -> Option<&TokenView> {
        self.shards[Self::shard(hash)].get(hash).map(Arc::as_ref)
    }

    pub fn insert(&mut self, hash: [u8; 32], token: TokenView) {
        Arc::make_mut(&mut self.shards[Self::shard(&hash)]).insert(hash, Arc::new(token));
    }

    pub fn remove(&mut self, hash: &[u8; 32]) {
        Arc::make_mut(&mut self.shards[Self::shard(hash)]).remove(hash);
    }
}
