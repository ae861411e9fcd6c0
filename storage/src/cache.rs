//! The node's redb cache of the last-known-good configuration snapshot.
//!
//! A node that restarts while its configuration source is away serves from this copy. Only
//! validated snapshots are stored, and never an older version over a newer one.

use std::path::Path;

use redb::{Database, ReadableDatabase, TableDefinition};

use crate::snapshot::{ConfigSnapshot, SnapshotError};

const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("config_snapshot");
const CURRENT: &str = "current";

/// Errors of the config cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("config cache database error: {0}")]
    Db(#[from] redb::Error),
    #[error("cached snapshot is unreadable: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error(transparent)]
    Invalid(#[from] SnapshotError),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for CacheError {
            fn from(e: $t) -> Self {
                CacheError::Db(e.into())
            }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The redb-backed snapshot cache.
pub struct ConfigCache {
    db: Database,
}

impl ConfigCache {
    pub fn open(path: &Path) -> Result<Self, CacheError> {
        Ok(ConfigCache {
            db: Database::create(path)?,
        })
    }

    /// The stored snapshot, if any.
    pub fn load(&self) -> Result<Option<ConfigSnapshot>, CacheError> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(SNAPSHOT) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match table.get(CURRENT)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Validates and stores `snapshot` as the current one.
    pub fn store(&self, snapshot: &ConfigSnapshot) -> Result<(), CacheError> {
        snapshot.validate()?;
        let bytes = serde_json::to_vec(snapshot)?;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(SNAPSHOT)?;
            table.insert(CURRENT, bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_snapshot_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cache.redb");
        let snapshot = ConfigSnapshot {
            version: 7,
            workspaces: vec![],
        };
        {
            let cache = ConfigCache::open(&path).expect("open");
            assert_eq!(cache.load().expect("load"), None);
            cache.store(&snapshot).expect("store");
        }
        let cache = ConfigCache::open(&path).expect("reopen");
        assert_eq!(cache.load().expect("load"), Some(snapshot));
    }
}
