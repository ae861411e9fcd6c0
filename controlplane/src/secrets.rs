//! Secrets the control plane must be able to read back (workspace SMTP passwords), encrypted at
//! rest with AES-256-GCM under a key from the node's configuration.
//!
//! A sealed value is `v1.<key id>.<nonce hex>.<ciphertext hex>`; the key id (the first 8 hex
//! digits of the key's SHA-256) says which key sealed it, so that keys can be rotated: the
//! current key seals, the current and the previous keys open, and values sealed with a
//! previous key are sealed again with the current one at start.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rand::Rng;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use sha2::{Digest, Sha256};

/// Why a key or a sealed value cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("a secret key must be 64 hex digits (32 bytes); {0}")]
    BadKey(String),
    #[error("reading or creating the secret key file {path}: {source}")]
    KeyFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("sealing a secret failed")]
    Seal,
    #[error("a sealed secret is malformed")]
    Malformed,
    #[error("a sealed secret was sealed with key {0}, which is not configured (set it in previous_secret_keys)")]
    UnknownKey(String),
    #[error("a sealed secret does not open: wrong key or tampered value")]
    Open,
}

struct Key {
    id: String,
    key: LessSafeKey,
}

impl Key {
    fn from_hex(hex_key: &str) -> Result<Key, SecretError> {
        let bytes = hex::decode(hex_key.trim())
            .map_err(|e| SecretError::BadKey(format!("not hex: {e}")))?;
        if bytes.len() != 32 {
            return Err(SecretError::BadKey(format!("got {} bytes", bytes.len())));
        }
        let id = hex::encode(&Sha256::digest(&bytes)[..4]);
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| SecretError::BadKey("rejected by AES-256-GCM".into()))?;
        Ok(Key {
            id,
            key: LessSafeKey::new(key),
        })
    }
}

/// The configured keys.
pub struct SecretBox {
    current: Key,
    previous: Vec<Key>,
}

impl SecretBox {
    /// Keys as 64 hex digits each.
    pub fn new(current: &str, previous: &[String]) -> Result<SecretBox, SecretError> {
        Ok(SecretBox {
            current: Key::from_hex(current)?,
            previous: previous
                .iter()
                .map(|k| Key::from_hex(k))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The key in `path`, created (random, mode 0600) when the file does not exist.
    pub fn key_from_file(path: &Path) -> Result<String, SecretError> {
        let io = |source| SecretError::KeyFile {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(key) => Ok(key.trim().to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = hex::encode(rand::rng().random::<[u8; 32]>());
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                file.write_all(key.as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(io)?;
                Ok(key)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Seals `plaintext`; `context` (e.g. the workspace id) must be given again to open it, so
    /// a sealed value copied to another record does not open.
    pub fn seal(&self, plaintext: &str, context: &str) -> Result<String, SecretError> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::rng().random();
        let mut data = plaintext.as_bytes().to_vec();
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .map_err(|_| SecretError::Seal)?;
        Ok(format!(
            "v1.{}.{}.{}",
            self.current.id,
            hex::encode(nonce_bytes),
            hex::encode(data)
        ))
    }

    /// Opens a value sealed with any configured key.
    pub fn open(&self, sealed: &str, context: &str) -> Result<String, SecretError> {
        let mut parts = sealed.split('.');
        let (Some("v1"), Some(id), Some(nonce), Some(data), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(SecretError::Malformed);
        };
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
            .ok_or_else(|| SecretError::UnknownKey(id.to_owned()))?;
        let nonce: [u8; NONCE_LEN] = hex::decode(nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or(SecretError::Malformed)?;
        let mut data = hex::decode(data).map_err(|_| SecretError::Malformed)?;
        let plain = key
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .map_err(|_| SecretError::Open)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretError::Malformed)
    }

    /// Whether `sealed` was sealed with another key than the current one.
    pub fn needs_resealing(&self, sealed: &str) -> bool {
        sealed.split('.').nth(1) != Some(self.current.id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "0101010101010101010101010101010101010101010101010101010101010101";
    const K2: &str = "0202020202020202020202020202020202020202020202020202020202020202";

    #[test]
    fn sealed_values_open_only_with_their_key_and_context_and_survive_rotation() {
        let old = SecretBox::new(K1, &[]).expect("keys");
        let sealed = old.seal("hunter2 is a password", "ws-1").expect("seal");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(
            old.open(&sealed, "ws-1").expect("opens"),
            "hunter2 is a password"
        );
        assert!(old.open(&sealed, "ws-2").is_err(), "bound to its record");
        assert_ne!(
            old.seal("same", "c").expect("seal"),
            old.seal("same", "c").expect("seal"),
            "fresh nonces"
        );

        let rotated = SecretBox::new(K2, &[K1.to_owned()]).expect("keys");
        assert!(rotated.needs_resealing(&sealed));
        assert_eq!(
            rotated.open(&sealed, "ws-1").expect("previous key opens"),
            "hunter2 is a password"
        );
        let resealed = rotated.seal("hunter2 is a password", "ws-1").expect("seal");
        assert!(!rotated.needs_resealing(&resealed));
        let forgotten = SecretBox::new(K2, &[]).expect("keys");
        assert!(matches!(
            forgotten.open(&sealed, "ws-1"),
            Err(SecretError::UnknownKey(_))
        ));
        let mut tampered = resealed.clone();
        tampered.pop();
        tampered.push(if resealed.ends_with('0') { '1' } else { '0' });
        assert!(rotated.open(&tampered, "ws-1").is_err());
        assert!(SecretBox::new("abc", &[]).is_err());
    }
}
