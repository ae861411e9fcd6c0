//! Upload progress: per (workspace, source), the LSN of the last WAL record that is in object
//! storage.
//!
//! This is what makes delivery exactly-once across crashes. Records of one key are uploaded in
//! LSN order, one file at a time, and the watermark is committed after each upload. On restart
//! records at or below the watermark are skipped; the file that may have been uploaded without
//! its watermark is rebuilt from the same first record and so gets the same object name (see
//! [`crate::layout`]), replacing itself rather than duplicating.
//!
//! A watermark must therefore never be guessed. Too low, and records already in the lake are
//! cut into different files under new names (duplicates); too high, and records are skipped
//! (loss, and the WAL's LSNs jump past them). So this store refuses to open rather than
//! return watermarks it cannot vouch for:
//!
//! - redb does not check its pages' checksums when it opens a cleanly closed file, and a
//!   flipped byte can come back as a watermark that was never committed; each commit also
//!   updates a digest of every (key, watermark) pair (count and XOR of SHA-256 prefixes), and
//!   [`Progress::load`] checks it;
//! - redb panics on some damaged files (even in release builds: an unwrap on a key's UTF-8, a
//!   slice out of bounds); those panics are caught and reported as damage;
//! - an existing file is never initialised afresh (an empty file is damage, not a new store),
//!   and a missing one is created only when the WAL holds no record that may already have been
//!   uploaded.
//!
//! What it cannot catch: redb returning an older, self-consistent commit. Tests cutting and
//! flipping the file at every offset have not seen that happen past the first commit.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use sha2::{Digest, Sha256};

use crate::wal::Lsn;

const FLUSHED: TableDefinition<&str, u64> = TableDefinition::new("flushed_lsn");

/// One row, [`DIGEST_ROW`]: how many keys [`FLUSHED`] holds and the XOR of
/// [`pair_digest`] over them. Written in the same transaction as every watermark, and when the
/// store is created, so that an existing store without it is damaged or from before it.
const DIGEST: TableDefinition<&str, DigestRow> = TableDefinition::new("flushed_digest");
const DIGEST_ROW: &str = "all";

/// A [`DIGEST`] row: keys counted, XOR of their [`pair_digest`]s.
type DigestRow = (u64, u64);

/// What an operator can do about a store that does not open; in every message about it.
const WHAT_TO_DO: &str =
    "The node does not start: guessed watermarks could upload events twice or skip them. \
     Each Parquet file in the lake names the WAL records it holds (footer keys sluice.node, \
     sluice.wal.first_lsn, sluice.wal.last_lsn); see docs/parquet-layout.md#upload-watermark for \
     how to recover";

/// Errors of the progress store.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    #[error("upload progress database {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("upload progress database {path} is damaged: {reason}. {WHAT_TO_DO}")]
    Damaged { path: PathBuf, reason: String },
    #[error(
        "upload progress database {path} is missing, but the WAL in {wal} already holds records, \
         some of which may be in the lake. {WHAT_TO_DO}"
    )]
    Missing { path: PathBuf, wal: PathBuf },
    #[error("checking the WAL beside upload progress database {path}: {source}")]
    Wal {
        path: PathBuf,
        #[source]
        source: crate::wal::WalError,
    },
}

/// Watermarks per key (`"<workspace-id>/<source>"`).
pub struct Progress {
    /// Taken only by `drop`, which closes it under [`guard`]: redb writes its allocator state
    /// when it closes, and panics there on some damaged files.
    db: Option<Database>,
    path: PathBuf,
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            if let Err(err) = guard(&self.path, || drop(db)) {
                tracing::error!(error = %err, "closing the upload progress database failed");
            }
        }
    }
}

impl Progress {
    /// Opens the store at `path`, or creates it if it does not exist and the WAL in `wal_dir`
    /// holds no record yet. An existing file that redb cannot open, or that fails the digest,
    /// is [`ProgressError::Damaged`].
    pub fn open(path: &Path, wal_dir: &Path) -> Result<Self, ProgressError> {
        let exists = path.try_exists().map_err(|e| ProgressError::Db {
            path: path.to_path_buf(),
            source: redb::StorageError::Io(e).into(),
        })?;
        if !exists {
            let used = crate::wal::holds_records(wal_dir).map_err(|source| ProgressError::Wal {
                path: path.to_path_buf(),
                source,
            })?;
            if used {
                return Err(ProgressError::Missing {
                    path: path.to_path_buf(),
                    wal: wal_dir.to_path_buf(),
                });
            }
            let progress = Progress {
                db: Some(Database::create(path).map_err(db_err(path))?),
                path: path.to_path_buf(),
            };
            progress.write_digest(0, 0)?;
            return Ok(progress);
        }
        let progress = guard(path, || Database::open(path))?
            .map(|db| Progress {
                db: Some(db),
                path: path.to_path_buf(),
            })
            .map_err(|e| classify(path, e.into()))?;
        // Checked now so that a damaged store stops the start, not the first upload.
        progress.load()?;
        Ok(progress)
    }

    /// Every key's watermark, checked against the digest.
    pub fn load(&self) -> Result<HashMap<String, Lsn>, ProgressError> {
        let loaded = guard(&self.path, || self.read_all())?;
        let (watermarks, digest) = loaded.map_err(|e| classify(&self.path, e))?;
        let counted = (watermarks.len() as u64, xor_of(&watermarks));
        match digest {
            Some(digest) if digest == counted => Ok(watermarks),
            Some((count, _)) => Err(self.damaged(format!(
                "its {} watermarks do not match the digest committed with them ({count} keys)",
                watermarks.len()
            ))),
            // Only a store written before the digest existed has watermarks and no digest; it
            // was checked by nothing, so it is taken as it is and checked from now on.
            None if !watermarks.is_empty() => {
                tracing::warn!(path = %self.path.display(), keys = watermarks.len(), "upload progress has no digest yet; adding one");
                self.write_digest(counted.0, counted.1)?;
                Ok(watermarks)
            }
            None => Err(self.damaged(
                "it holds neither watermarks nor the digest every store starts with".into(),
            )),
        }
    }

    /// Records durably that `key`'s records up to `lsn` are in object storage.
    pub fn commit(&self, key: &str, lsn: Lsn) -> Result<(), ProgressError> {
        guard(&self.path, || self.commit_unguarded(key, lsn))?
    }

    fn db(&self) -> &Database {
        match &self.db {
            Some(db) => db,
            None => unreachable!("the database is taken only when the store is dropped"),
        }
    }

    fn commit_unguarded(&self, key: &str, lsn: Lsn) -> Result<(), ProgressError> {
        let path = self.path.as_path();
        let txn = self.db().begin_write().map_err(db_err(path))?;
        {
            let mut table = txn.open_table(FLUSHED).map_err(db_err(path))?;
            let old = table
                .insert(key, lsn)
                .map_err(db_err(path))?
                .map(|old| old.value());
            let mut digest = txn.open_table(DIGEST).map_err(db_err(path))?;
            let (mut count, mut xor) = digest
                .get(DIGEST_ROW)
                .map_err(db_err(path))?
                .map_or((0, 0), |row| row.value());
            match old {
                Some(old) => xor ^= pair_digest(key, old),
                None => count += 1,
            }
            xor ^= pair_digest(key, lsn);
            digest
                .insert(DIGEST_ROW, (count, xor))
                .map_err(db_err(path))?;
        }
        txn.commit().map_err(db_err(path))?;
        Ok(())
    }

    fn read_all(&self) -> Result<(HashMap<String, Lsn>, Option<DigestRow>), redb::Error> {
        let txn = self.db().begin_read()?;
        let mut watermarks = HashMap::new();
        match txn.open_table(FLUSHED) {
            Ok(table) => {
                for entry in table.iter()? {
                    let (key, lsn) = entry?;
                    watermarks.insert(key.value().to_owned(), lsn.value());
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let digest = match txn.open_table(DIGEST) {
            Ok(table) => table.get(DIGEST_ROW)?.map(|row| row.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        Ok((watermarks, digest))
    }

    fn write_digest(&self, count: u64, xor: u64) -> Result<(), ProgressError> {
        guard(&self.path, || self.write_digest_unguarded(count, xor))?
    }

    fn write_digest_unguarded(&self, count: u64, xor: u64) -> Result<(), ProgressError> {
        let path = self.path.as_path();
        let txn = self.db().begin_write().map_err(db_err(path))?;
        txn.open_table(FLUSHED).map_err(db_err(path))?;
        txn.open_table(DIGEST)
            .map_err(db_err(path))?
            .insert(DIGEST_ROW, (count, xor))
            .map_err(db_err(path))?;
        txn.commit().map_err(db_err(path))
    }

    fn damaged(&self, reason: String) -> ProgressError {
        ProgressError::Damaged {
            path: self.path.clone(),
            reason,
        }
    }
}

/// A 64-bit digest of one (key, watermark) pair; the store's digest is their XOR.
fn pair_digest(key: &str, lsn: Lsn) -> u64 {
    let hash = Sha256::new()
        .chain_update(key.as_bytes())
        .chain_update([0])
        .chain_update(lsn.to_le_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(first)
}

fn xor_of(watermarks: &HashMap<String, Lsn>) -> u64 {
    watermarks
        .iter()
        .fold(0, |xor, (key, lsn)| xor ^ pair_digest(key, *lsn))
}

/// Runs `f`, turning a panic inside redb (which some damaged files cause) into damage.
fn guard<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T, ProgressError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        ProgressError::Damaged {
            path: path.to_path_buf(),
            reason: format!("redb failed reading it: {what}"),
        }
    })
}

/// Corruption and short files are damage; anything else (permissions, a second process
/// holding the file) is an ordinary error.
fn classify(path: &Path, err: redb::Error) -> ProgressError {
    let damage = match &err {
        // Our tables' types never change: a mismatch is a damaged type record.
        redb::Error::Corrupted(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::TableIsMultimap(_) => true,
        redb::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
        ),
        _ => false,
    };
    if damage {
        ProgressError::Damaged {
            path: path.to_path_buf(),
            reason: err.to_string(),
        }
    } else {
        ProgressError::Db {
            path: path.to_path_buf(),
            source: err,
        }
    }
}

fn db_err<E: Into<redb::Error>>(path: &Path) -> impl FnOnce(E) -> ProgressError + '_ {
    move |e| ProgressError::Db {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::StorageMetrics;
    use crate::wal::{Wal, WalConfig};

    /// A store after twelve commits over three keys, closed; its bytes and its final
    /// watermarks.
    fn written_store() -> (Vec<u8>, HashMap<String, Lsn>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("progress.redb");
        let mut committed = HashMap::new();
        {
            let progress = Progress::open(&path, &dir.path().join("wal")).expect("create");
            for i in 1..=12u64 {
                let key = format!(
                    "0190f3a0-0000-7000-8000-00000000000{}/source-{}",
                    i % 3,
                    i % 3
                );
                progress.commit(&key, i * 10).expect("commit");
                committed.insert(key, i * 10);
            }
            assert_eq!(progress.load().expect("load"), committed);
        }
        (std::fs::read(&path).expect("read"), committed)
    }

    /// Opens a store whose file holds `bytes`, beside an empty WAL directory.
    fn reopen(bytes: &[u8]) -> Result<HashMap<String, Lsn>, ProgressError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("progress.redb");
        std::fs::write(&path, bytes).expect("write");
        Progress::open(&path, &dir.path().join("wal")).and_then(|p| p.load())
    }

    /// redb panics on some damaged files (debug assertions, and unwraps in release builds);
    /// `guard` turns them into errors, and this keeps their messages out of the test output.
    fn quiet_panics<T>(f: impl FnOnce() -> T) -> T {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let out = f();
        std::panic::set_hook(hook);
        out
    }

    /// The outcome a damaged store may have: refused as damaged (`Ok(false)`), or every
    /// watermark exactly as committed last (`Ok(true)`). Anything else (an older or
    /// never-committed watermark, a missing key) would make the shipper upload events twice or
    /// skip them. Not a panic: the panic hook is silenced while damaged stores are opened.
    fn check(
        outcome: Result<HashMap<String, Lsn>, ProgressError>,
        committed: &HashMap<String, Lsn>,
    ) -> Result<bool, String> {
        match outcome {
            Ok(watermarks) if &watermarks == committed => Ok(true),
            Ok(watermarks) => Err(format!("watermarks not as committed: {watermarks:?}")),
            Err(ProgressError::Damaged { .. }) => Ok(false),
            Err(other) => Err(format!("not reported as damage: {other}")),
        }
    }

    /// A store cut at any byte opens with every watermark as committed, or is refused as
    /// damaged; an empty file is damage, never a new store (redb's `Database::create` would
    /// initialise it: every watermark back to 0). Cut at every byte of the header page and the
    /// edges of every page, and every 61st byte elsewhere: redb compares the file's length with
    /// the layout its header records, so where inside a page the cut falls matters little, and
    /// every byte of the 72 KiB file takes a minute on a busy machine.
    #[test]
    fn a_store_cut_at_any_byte_has_every_watermark_or_is_refused() {
        let (bytes, committed) = written_store();
        let cuts: Vec<usize> = (0..=bytes.len())
            .filter(|cut| *cut < 4096 || cut % 4096 < 8 || cut % 4096 > 4088 || cut % 61 == 0)
            .chain([bytes.len()])
            .collect();
        let outcomes: Vec<Result<bool, String>> = quiet_panics(|| {
            cuts.iter()
                .map(|cut| check(reopen(&bytes[..*cut]), &committed))
                .collect()
        });
        for (cut, outcome) in cuts.iter().zip(&outcomes) {
            let whole = *cut == bytes.len();
            assert_eq!(outcome, &Ok(whole), "cut at {cut} of {}", bytes.len());
        }
        assert!(
            matches!(reopen(&[]), Err(ProgressError::Damaged { .. })),
            "an empty file"
        );
    }

    /// A byte flipped anywhere in the file's written pages never yields a watermark that was
    /// not committed, nor loses one: redb alone would (it does not check page checksums when it
    /// opens a cleanly closed file); the digest catches it. redb panics on some flips; they come
    /// back as damage.
    #[test]
    fn a_flipped_byte_never_yields_a_watermark_that_was_not_committed() {
        use rand::{Rng, SeedableRng};
        let (bytes, committed) = written_store();
        // Flips in all-zero pages (space redb has not used) are as likely as any but prove
        // little; most flips go where there is data.
        let written: Vec<usize> = bytes
            .chunks(4096)
            .enumerate()
            .filter(|(_, page)| page.iter().any(|b| *b != 0))
            .map(|(i, _)| i)
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let (mut refused, mut intact) = (0, 0);
        let mut wrong = Vec::new();
        quiet_panics(|| {
            for round in 0..1000 {
                let at = if round % 10 == 0 {
                    rng.random_range(0..bytes.len())
                } else {
                    written[rng.random_range(0..written.len())] * 4096 + rng.random_range(0..4096)
                };
                let mut damaged = bytes.clone();
                damaged[at] ^= rng.random_range(1..=255u8);
                match check(reopen(&damaged), &committed) {
                    Ok(true) => intact += 1,
                    Ok(false) => refused += 1,
                    Err(err) => wrong.push(format!("byte {at}: {err}")),
                }
            }
        });
        assert!(wrong.is_empty(), "{wrong:#?}");
        assert!(
            refused > 0 && intact > 0,
            "{refused} refused, {intact} intact"
        );
    }

    /// Without the store, which of the WAL's records are in the lake is unknown: a missing
    /// store beside a WAL holding records is refused (and stays refused: nothing is created),
    /// while beside a fresh WAL it is created.
    #[test]
    fn a_missing_store_beside_a_used_wal_is_refused_not_recreated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("progress.redb");
        let wal_dir = dir.path().join("wal");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let wal = Wal::open(
            WalConfig::new(wal_dir.clone()),
            1,
            StorageMetrics::default(),
        )
        .expect("wal");
        assert!(
            !crate::wal::holds_records(&wal_dir).expect("check"),
            "fresh WAL"
        );
        runtime
            .block_on(wal.append(b"an event".to_vec()))
            .expect("append");
        drop(wal);
        for _ in 0..2 {
            let refused = Progress::open(&path, &wal_dir);
            assert!(
                matches!(refused, Err(ProgressError::Missing { .. })),
                "{:?}",
                refused.err()
            );
            assert!(!path.exists(), "a refused store is not created");
        }
        let fresh = tempfile::tempdir().expect("tempdir");
        let progress = Progress::open(
            &fresh.path().join("progress.redb"),
            &fresh.path().join("wal"),
        )
        .expect("a new node creates its store");
        assert!(progress.load().expect("load").is_empty());
    }

    /// A store written before the digest existed opens with its watermarks and is checked
    /// from then on.
    #[test]
    fn a_store_from_before_the_digest_keeps_its_watermarks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("progress.redb");
        {
            let db = Database::create(&path).expect("create");
            let txn = db.begin_write().expect("txn");
            txn.open_table(FLUSHED)
                .expect("table")
                .insert("ws/source", 42)
                .expect("insert");
            txn.commit().expect("commit");
        }
        let progress = Progress::open(&path, &dir.path().join("wal")).expect("open");
        progress.commit("ws/other", 7).expect("commit");
        drop(progress);
        let progress = Progress::open(&path, &dir.path().join("wal")).expect("reopen");
        let expected = HashMap::from([("ws/source".to_owned(), 42), ("ws/other".to_owned(), 7)]);
        assert_eq!(progress.load().expect("load"), expected);
    }
}
