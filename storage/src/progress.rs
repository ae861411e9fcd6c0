//! Upload progress: per (workspace, source), the LSN of the last WAL record that is in object
//! storage.
//!
//! This is what makes delivery exactly-once across crashes. Records of one key are uploaded in
//! LSN order, one file at a time, and the watermark is committed after each upload. On restart
//! records at or below the watermark are skipped; the file that may have been uploaded without
//! its watermark is rebuilt from the same first record and so gets the same object name (see
//! [`crate::layout`]), replacing itself rather than duplicating.

use std::collections::HashMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::wal::Lsn;

const FLUSHED: TableDefinition<&str, u64> = TableDefinition::new("flushed_lsn");

/// Errors of the progress store.
#[derive(Debug, thiserror::Error)]
#[error("upload progress database error: {0}")]
pub struct ProgressError(#[from] redb::Error);

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for ProgressError {
            fn from(e: $t) -> Self {
                ProgressError(e.into())
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

/// Watermarks per key (`"<workspace-id>/<source>"`).
pub struct Progress {
    db: Database,
}

impl Progress {
    pub fn open(path: &Path) -> Result<Self, ProgressError> {
        Ok(Progress {
            db: Database::create(path)?,
        })
    }

    /// Every key's watermark.
    pub fn load(&self) -> Result<HashMap<String, Lsn>, ProgressError> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(FLUSHED) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(HashMap::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = HashMap::new();
        for entry in table.iter()? {
            let (key, lsn) = entry?;
            out.insert(key.value().to_owned(), lsn.value());
        }
        Ok(out)
    }

    /// Records durably that `key`'s records up to `lsn` are in object storage.
    pub fn commit(&self, key: &str, lsn: Lsn) -> Result<(), ProgressError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(FLUSHED)?;
            table.insert(key, lsn)?;
        }
        txn.commit()?;
        Ok(())
    }
}
