//! Access-token secrets: how they look and how they are stored.
//!
//! A secret is shown once, when it is minted; nodes and caches keep only its SHA-256. The fixed
//! prefix lets secret scanners recognise a leaked Sluice token.

use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};

/// Every Sluice access token starts with this.
pub const TOKEN_PREFIX: &str = "sluice_";

/// Random characters after the prefix (62^40 ≈ 2^238).
const SECRET_CHARS: usize = 40;

/// Mints a new token secret.
pub fn generate() -> String {
    let mut secret = String::with_capacity(TOKEN_PREFIX.len() + SECRET_CHARS);
    secret.push_str(TOKEN_PREFIX);
    Alphanumeric.append_string(&mut rand::rng(), &mut secret, SECRET_CHARS);
    secret
}

/// SHA-256 of a secret, the only form in which tokens are stored or shipped.
pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// [`hash`] as lowercase hex, as it appears in config snapshots.
pub fn hash_hex(secret: &str) -> String {
    hex::encode(hash(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_random_and_hash_stably() {
        let a = generate();
        let b = generate();
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + SECRET_CHARS);
        assert_ne!(a, b);
        assert_eq!(hash_hex(&a), hash_hex(&a));
        assert_ne!(hash_hex(&a), hash_hex(&b));
        assert_eq!(hash_hex(&a).len(), 64);
    }
}
