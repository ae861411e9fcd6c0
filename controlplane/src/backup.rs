//! Backups of the control plane's store (`controlplane.redb`), taken while it runs, and their
//! restore while it is stopped.
//!
//! redb has no online backup and locks its file against a second process, so a backup is
//! taken by the running control plane itself: one read transaction (a consistent snapshot;
//! writers go on meanwhile) copied table by table into a new redb file. Every table is copied,
//! whatever its name, so a table added later cannot be left out by mistake; a table of
//! another key or value type than the store uses fails the backup rather than being skipped.
//!
//! A restore puts a backup in place of the store with the configuration version raised past
//! both the backup's and the replaced store's: data-plane nodes that saw later versions than
//! the backup then get the restored configuration as a new version (a snapshot), never a
//! version number they already hold with other content.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

/// The store's file in the control plane's data directory.
pub const STORE_FILE_NAME: &str = "controlplane.redb";

/// The one table whose values are not records: the configuration version.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CONFIG_VERSION: &str = "config_version";

/// Why a backup or a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("the store: {0}")]
    Db(#[from] redb::Error),
    #[error(
        "{0} is open in a running control plane: stop it first (a backup is taken from the \
         running one with `sluice controlplane backup`)"
    )]
    InUse(PathBuf),
    #[error("{path} is not a backup of a control-plane store: {reason}")]
    NotABackup { path: PathBuf, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the store holds multimap tables, which this release does not back up")]
    Multimap,
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for BackupError {
            fn from(e: $t) -> Self {
                BackupError::Db(e.into())
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

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let context = context.into();
    move |source| BackupError::Io { context, source }
}

/// Copies everything `db` holds, as of one read transaction, into a new redb file at `dest`
/// (which must not exist). Returns the configuration version copied.
pub(crate) fn copy(db: &Database, dest: &Path) -> Result<u64, BackupError> {
    let read = db.begin_read()?;
    if read.list_multimap_tables()?.next().is_some() {
        return Err(BackupError::Multimap);
    }
    // Never over an existing file: it may be an older backup someone keeps.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(io(format!("creating {}", dest.display())))?;
    let copy = Database::builder().create_with_backend(redb::backends::FileBackend::new(file)?)?;
    let write = copy.begin_write()?;
    let mut version = 0;
    for handle in read.list_tables()? {
        let name = handle.name().to_owned();
        if name == META.name() {
            let from = read.open_table(META)?;
            let mut to = write.open_table(META)?;
            for row in from.iter()? {
                let (key, value) = row?;
                to.insert(key.value(), value.value())?;
            }
            version = from.get(CONFIG_VERSION)?.map_or(0, |v| v.value());
        } else {
            let definition = TableDefinition::<&str, &[u8]>::new(&name);
            let from = read.open_table(definition)?;
            let mut to = write.open_table(definition)?;
            for row in from.iter()? {
                let (key, value) = row?;
                to.insert(key.value(), value.value())?;
            }
        }
    }
    write.commit()?;
    Ok(version)
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    /// The configuration version in the backup.
    pub backup_version: u64,
    /// The configuration version the restored store starts at.
    pub version: u64,
    /// Where the replaced store was moved, if there was one.
    pub previous: Option<PathBuf>,
}

/// Puts the backup at `backup` in place of the store in `data_dir`, whose control plane must
/// be stopped. The replaced store is kept beside it (`controlplane.redb.before-restore-<ms>`).
pub fn restore(backup: &Path, data_dir: &Path) -> Result<Restored, BackupError> {
    let target = data_dir.join(STORE_FILE_NAME);
    // The version of the store being replaced, and proof that no control plane has it open.
    let current_version = if target.exists() {
        match Database::open(&target) {
            Ok(db) => version_of(&db)?,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(BackupError::InUse(target))
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        0
    };
    std::fs::create_dir_all(data_dir).map_err(io(format!("creating {}", data_dir.display())))?;
    let staged = data_dir.join(format!("{STORE_FILE_NAME}.restoring"));
    let _ = std::fs::remove_file(&staged);
    std::fs::copy(backup, &staged).map_err(io(format!("copying {}", backup.display())))?;
    let not_a_backup = |reason: String| BackupError::NotABackup {
        path: backup.to_path_buf(),
        reason,
    };
    let (backup_version, version) = {
        let db = Database::open(&staged).map_err(|e| not_a_backup(e.to_string()))?;
        let backup_version = version_of(&db)?;
        // Past every version a node may hold from either store.
        let version = backup_version.max(current_version) + 1;
        let write = db.begin_write()?;
        write.open_table(META)?.insert(CONFIG_VERSION, version)?;
        write.commit()?;
        (backup_version, version)
    };
    // Every record must load as the control plane will load it, before anything is replaced.
    if let Err(e) = crate::store::Store::open(&staged) {
        let _ = std::fs::remove_file(&staged);
        return Err(not_a_backup(e.to_string()));
    }
    let previous = if target.exists() {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let previous = data_dir.join(format!("{STORE_FILE_NAME}.before-restore-{millis}"));
        std::fs::rename(&target, &previous)
            .map_err(io(format!("moving {} aside", target.display())))?;
        Some(previous)
    } else {
        None
    };
    std::fs::rename(&staged, &target).map_err(io(format!(
        "moving the restored store to {}",
        target.display()
    )))?;
    // The renames are durable before the command says it is done.
    if let Ok(dir) = std::fs::File::open(data_dir) {
        let _ = dir.sync_all();
    }
    Ok(Restored {
        backup_version,
        version,
        previous,
    })
}

fn version_of(db: &Database) -> Result<u64, BackupError> {
    let read = db.begin_read()?;
    match read.open_table(META) {
        Ok(meta) => Ok(meta.get(CONFIG_VERSION)?.map_or(0, |v| v.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Workspace;
    use crate::store::{Change, Store, StoreError};

    fn commit_workspace(store: &Store, slug: &str) {
        let ws = Workspace {
            id: uuid::Uuid::now_v7(),
            slug: slug.into(),
            name: slug.into(),
            created_by: uuid::Uuid::now_v7(),
            created_at: chrono::Utc::now(),
            enabled: true,
            cors_allowed_origins: vec![],
            asyncapi_public: false,
        };
        store
            .write(|_| Ok::<_, StoreError>((vec![Change::PutWorkspace(ws)], ())))
            .expect("write");
    }

    /// An output on a source of workspace `slug`, and an endpoint serving it; returns the
    /// output's id.
    fn commit_output(store: &Store, slug: &str) -> uuid::Uuid {
        let ws = store
            .read(|s| s.workspace(slug).map(|w| w.id))
            .expect("the workspace");
        let output = crate::model::Output {
            id: uuid::Uuid::now_v7(),
            workspace_id: ws,
            slug: "hot".into(),
            name: "hot".into(),
            source: "telemetry".into(),
            filter: Default::default(),
            fields: vec![],
            created_at: chrono::Utc::now(),
        };
        let endpoint = crate::model::ExportEndpoint {
            id: uuid::Uuid::now_v7(),
            workspace_id: ws,
            slug: "live".into(),
            name: "live".into(),
            output: "hot".into(),
            created_at: chrono::Utc::now(),
        };
        let id = output.id;
        store
            .write(|_| {
                Ok::<_, StoreError>((
                    vec![
                        Change::PutOutput(output),
                        Change::PutExportEndpoint(endpoint),
                    ],
                    (),
                ))
            })
            .expect("write");
        id
    }

    #[test]
    fn a_backup_restores_every_record_with_a_version_past_both_stores() {
        let dir = tempfile::tempdir().expect("tempdir");
        let live = dir.path().join("live");
        std::fs::create_dir_all(&live).expect("dir");
        let store = Store::open(&live.join(STORE_FILE_NAME)).expect("open");
        commit_workspace(&store, "plant");
        let output = commit_output(&store, "plant");
        let backup = dir.path().join("backup.redb");
        assert_eq!(store.backup_to(&backup).expect("backup"), 2);
        assert!(
            store.backup_to(&backup).is_err(),
            "never over an existing file"
        );
        // A later change, then the restore (refused while the store is open).
        commit_workspace(&store, "mill");
        assert!(matches!(
            restore(&backup, &live),
            Err(BackupError::InUse(_))
        ));
        drop(store);
        let restored = restore(&backup, &live).expect("restore");
        assert_eq!((restored.backup_version, restored.version), (2, 4));
        assert!(restored.previous.is_some_and(|p| p.exists()));
        let store = Store::open(&live.join(STORE_FILE_NAME)).expect("reopen");
        let slugs: Vec<String> = store.read(|s| s.slugs.keys().cloned().collect());
        assert_eq!(slugs, vec!["plant".to_owned()]);
        assert_eq!(store.read(|s| s.config_version), 4);
        assert_eq!(
            store.read(|s| s.outputs.get(&output).map(|o| o.slug.clone())),
            Some("hot".to_owned()),
            "outputs and export endpoints are in the backup"
        );
        assert_eq!(store.read(|s| s.export_endpoints.len()), 1);
        drop(store);

        std::fs::write(dir.path().join("junk"), b"not redb").expect("write");
        assert!(matches!(
            restore(&dir.path().join("junk"), &live),
            Err(BackupError::NotABackup { .. })
        ));
    }
}
