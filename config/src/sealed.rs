//! Secrets that travel in the configuration (webhook signing secrets): data-plane nodes must
//! read them back to sign, but the configuration is also written to each node's cache and to
//! snapshot files, so they travel sealed with AES-256-GCM under a key derived from the cluster
//! secret, which only the control plane and its nodes hold.
//!
//! A sealed value is `s1.<nonce hex>.<ciphertext hex>`.

use rand::Rng;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use sha2::{Digest, Sha256};

/// Why a sealed value does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("a sealed secret is malformed")]
    Malformed,
    #[error(
        "a sealed secret does not open with this cluster secret (another cluster's, or tampered)"
    )]
    Open,
    #[error("sealing failed")]
    Seal,
}

/// What this module's key is derived for: another use of the cluster secret gets another key.
const CONTEXT: &[u8] = b"sluice configuration secrets v1\0";

fn key(cluster_secret: &str) -> Result<LessSafeKey, SealError> {
    let digest = Sha256::new()
        .chain_update(CONTEXT)
        .chain_update(cluster_secret.as_bytes())
        .finalize();
    let unbound = UnboundKey::new(&AES_256_GCM, &digest).map_err(|_| SealError::Seal)?;
    Ok(LessSafeKey::new(unbound))
}

/// Seals `plaintext` under `cluster_secret`.
pub fn seal(cluster_secret: &str, plaintext: &str) -> Result<String, SealError> {
    let key = key(cluster_secret)?;
    let nonce_bytes: [u8; NONCE_LEN] = rand::rng().random();
    let mut data = plaintext.as_bytes().to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce_bytes),
        Aad::empty(),
        &mut data,
    )
    .map_err(|_| SealError::Seal)?;
    Ok(format!(
        "s1.{}.{}",
        hex::encode(nonce_bytes),
        hex::encode(data)
    ))
}

/// Opens a value [`seal`] made with the same cluster secret.
pub fn open(cluster_secret: &str, sealed: &str) -> Result<String, SealError> {
    let mut parts = sealed.split('.');
    let (Some("s1"), Some(nonce), Some(data), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SealError::Malformed);
    };
    let mut nonce_bytes = [0u8; NONCE_LEN];
    hex::decode_to_slice(nonce, &mut nonce_bytes).map_err(|_| SealError::Malformed)?;
    let mut data = hex::decode(data).map_err(|_| SealError::Malformed)?;
    let plain = key(cluster_secret)?
        .open_in_place(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::empty(),
            &mut data,
        )
        .map_err(|_| SealError::Open)?;
    String::from_utf8(plain.to_vec()).map_err(|_| SealError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_cluster_secret() {
        let sealed = seal("cluster-one-secret", "whsec_abc").expect("seal");
        assert!(sealed.starts_with("s1."));
        assert!(!sealed.contains("whsec_abc"));
        assert_eq!(
            open("cluster-one-secret", &sealed).as_deref(),
            Ok("whsec_abc")
        );
        assert_eq!(open("cluster-two-secret", &sealed), Err(SealError::Open));
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('0') { '1' } else { '0' });
        assert_eq!(open("cluster-one-secret", &tampered), Err(SealError::Open));
        for bad in ["", "s1", "s2.00.00", "s1.zz.00", "s1.00.00.00"] {
            assert_eq!(
                open("cluster-one-secret", bad),
                Err(SealError::Malformed),
                "{bad}"
            );
        }
        assert_ne!(
            sealed,
            seal("cluster-one-secret", "whsec_abc").expect("seal")
        );
    }
}
