//! The cluster secret `sluice up` makes for itself when none is configured, kept in
//! `<data-dir>/cluster-secret`.
//!
//! In `sluice up` the node follows the snapshot file and needs no secret to reach the control
//! plane, but webhook signing secrets travel in the configuration sealed with the cluster
//! secret (`sluice_config::sealed`), so both planes need the same one. It is made once, random,
//! and read again at every start: a new one at each start would make every sealed secret in
//! the node's cached configuration unreadable until the control plane seals them again.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// File name under the data dir.
pub const FILE_NAME: &str = "cluster-secret";
/// Random bytes in a made secret (written as hex).
const SECRET_BYTES: usize = 32;

/// The secret in `<data_dir>/cluster-secret`, made (random, mode 0600) when the file does not
/// exist.
pub fn read_or_create(data_dir: &Path) -> Result<String> {
    let path: PathBuf = data_dir.join(FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(secret) if !secret.trim().is_empty() => return Ok(secret.trim().to_owned()),
        Ok(_) => anyhow::bail!(
            "{} is empty: delete it to have a new cluster secret made, or write one (16 \
             characters or more) into it",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut bytes = [0u8; SECRET_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("reading random bytes for the cluster secret")?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(secret.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "made a cluster secret for this installation");
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_made_secret_is_private_and_the_same_at_the_next_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = read_or_create(dir.path()).expect("made");
        assert_eq!(first.len(), 2 * SECRET_BYTES);
        let mode = std::fs::metadata(dir.path().join(FILE_NAME))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_or_create(dir.path()).expect("read"), first);
    }
}
