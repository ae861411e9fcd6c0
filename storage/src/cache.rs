//! The node's redb cache of the last-known-good configuration.
//!
//! A node that restarts while its configuration source is away serves from this copy. Only
//! validated configurations are stored. Each workspace is a row of its own, so a delta
//! rewrites the workspaces it touches, not the whole configuration (100,000 tokens are about
//! 20 MB of JSON).

use std::collections::HashSet;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use sluice_config::snapshot::{ConfigSnapshot, SnapshotError, WorkspaceConfig};
use sluice_config::state::ConfigChange;

/// Workspace id to the workspace's JSON.
const WORKSPACES: TableDefinition<u128, &[u8]> = TableDefinition::new("config_workspaces");
/// `version`: the version the rows make up.
const META: TableDefinition<&str, u64> = TableDefinition::new("config_meta");
const VERSION: &str = "version";
/// The whole snapshot as one JSON value, as nodes before per-workspace rows kept it; read
/// when nothing newer is stored, dropped at the next store.
const LEGACY_SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("config_snapshot");
const LEGACY_CURRENT: &str = "current";

/// Errors of the config cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("config cache database error: {0}")]
    Db(#[from] redb::Error),
    #[error("cached snapshot is unreadable: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error(transparent)]
    Invalid(#[from] SnapshotError),
    #[error("the cache holds version {cached:?}, not the version {from} a change starts from")]
    NotAtBase { cached: Option<u64>, from: u64 },
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

/// The redb-backed configuration cache.
pub struct ConfigCache {
    db: Database,
}

impl ConfigCache {
    pub fn open(path: &Path) -> Result<Self, CacheError> {
        Ok(ConfigCache {
            db: Database::create(path)?,
        })
    }

    /// The stored configuration, if any.
    pub fn load(&self) -> Result<Option<ConfigSnapshot>, CacheError> {
        let txn = self.db.begin_read()?;
        let version = match txn.open_table(META) {
            Ok(meta) => meta.get(VERSION)?.map(|v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(version) = version else {
            return self.load_legacy(&txn);
        };
        let mut workspaces = Vec::new();
        match txn.open_table(WORKSPACES) {
            Ok(table) => {
                for row in table.iter()? {
                    let (_, json) = row?;
                    workspaces.push(serde_json::from_slice::<WorkspaceConfig>(json.value())?);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Some(ConfigSnapshot {
            version,
            workspaces,
        }))
    }

    fn load_legacy(
        &self,
        txn: &redb::ReadTransaction,
    ) -> Result<Option<ConfigSnapshot>, CacheError> {
        let table = match txn.open_table(LEGACY_SNAPSHOT) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match table.get(LEGACY_CURRENT)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Validates and stores `snapshot` in place of whatever was stored. Rows that would not
    /// change are left alone: a configuration file of 100,000 tokens rewritten for one
    /// workspace writes one row.
    pub fn store(&self, snapshot: &ConfigSnapshot) -> Result<(), CacheError> {
        snapshot.validate()?;
        let ids: HashSet<u128> = snapshot.workspaces.iter().map(|w| w.id.as_u128()).collect();
        let txn = self.db.begin_write()?;
        txn.delete_table(LEGACY_SNAPSHOT)?;
        {
            let mut table = txn.open_table(WORKSPACES)?;
            table.retain(|id, _| ids.contains(&id))?;
            for ws in &snapshot.workspaces {
                let json = serde_json::to_vec(ws)?;
                let unchanged = table
                    .get(ws.id.as_u128())?
                    .is_some_and(|row| row.value() == json.as_slice());
                if !unchanged {
                    table.insert(ws.id.as_u128(), json.as_slice())?;
                }
            }
            txn.open_table(META)?.insert(VERSION, snapshot.version)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Stores what `change` changed, on top of the version it starts from (validated by
    /// [`sluice_config::state::ConfigState::apply`]). A cache at another version (a store
    /// failed earlier) refuses with [`CacheError::NotAtBase`]; store the whole configuration
    /// then.
    pub fn store_change(&self, change: &ConfigChange) -> Result<(), CacheError> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let cached = meta.get(VERSION)?.map(|v| v.value());
            if cached != Some(change.from) {
                return Err(CacheError::NotAtBase {
                    cached,
                    from: change.from,
                });
            }
            let mut table = txn.open_table(WORKSPACES)?;
            for ws in &change.before {
                table.remove(ws.id.as_u128())?;
            }
            for ws in &change.after {
                table.insert(ws.id.as_u128(), serde_json::to_vec(ws.as_ref())?.as_slice())?;
            }
            meta.insert(VERSION, change.to)?;
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_config::state::ConfigState;
    use sluice_config::test_fixtures::workspace;

    #[test]
    fn stored_snapshot_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cache.redb");
        let snapshot = ConfigSnapshot {
            version: 7,
            workspaces: vec![workspace("a", &[1]), workspace("b", &[2])],
        };
        {
            let cache = ConfigCache::open(&path).expect("open");
            assert_eq!(cache.load().expect("load"), None);
            cache.store(&snapshot).expect("store");
        }
        let cache = ConfigCache::open(&path).expect("reopen");
        let loaded = cache.load().expect("load").expect("stored");
        assert_eq!(loaded.content_hash(), snapshot.content_hash());
    }

    /// A delta rewrites only its workspaces, the result reads back as the new version, and a
    /// change that does not start where the cache is gets refused, not half-applied.
    #[test]
    fn changes_apply_on_top_of_the_version_they_start_from() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ConfigCache::open(&dir.path().join("cache.redb")).expect("open");
        let (a, b, c) = (
            workspace("a", &[1]),
            workspace("b", &[2]),
            workspace("c", &[3]),
        );
        let v1 = ConfigSnapshot {
            version: 1,
            workspaces: vec![a.clone(), b.clone()],
        };
        cache.store(&v1).expect("store");
        let mut a2 = a.clone();
        a2.enabled = false;
        let v2 = ConfigSnapshot {
            version: 2,
            workspaces: vec![a2, c],
        };
        let mut state = ConfigState::new(v1.clone()).expect("valid");
        let change = state.apply(&v1.delta_to(&v2)).expect("applies");
        cache.store_change(&change).expect("stored");
        let loaded = cache.load().expect("load").expect("stored");
        assert_eq!(loaded.version, 2);
        assert_eq!(loaded.content_hash(), v2.content_hash());

        // The same change again: the cache is at 2 now, not 1.
        assert!(matches!(
            cache.store_change(&change),
            Err(CacheError::NotAtBase {
                cached: Some(2),
                from: 1
            })
        ));
        assert_eq!(
            cache.load().expect("load").expect("stored").content_hash(),
            v2.content_hash()
        );
    }

    /// A data directory from before per-workspace rows still starts with its configuration.
    #[test]
    fn a_whole_snapshot_row_from_an_older_node_is_read_and_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cache.redb");
        let old = ConfigSnapshot {
            version: 3,
            workspaces: vec![workspace("a", &[1])],
        };
        {
            let db = Database::create(&path).expect("create");
            let txn = db.begin_write().expect("txn");
            {
                let mut table = txn.open_table(LEGACY_SNAPSHOT).expect("table");
                let json = serde_json::to_vec(&old).expect("json");
                table
                    .insert(LEGACY_CURRENT, json.as_slice())
                    .expect("insert");
            }
            txn.commit().expect("commit");
        }
        let cache = ConfigCache::open(&path).expect("open");
        assert_eq!(cache.load().expect("load"), Some(old.clone()));
        let new = ConfigSnapshot {
            version: 4,
            workspaces: vec![workspace("b", &[2])],
        };
        cache.store(&new).expect("store");
        assert_eq!(cache.load().expect("load"), Some(new));
    }
}
