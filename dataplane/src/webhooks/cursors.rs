//! Where each webhook subscription's deliveries from this node stand: one cursor per
//! subscription in `<data-dir>/webhooks.redb`, written after each batch the receiver took (or
//! that went to the failure log), so that a restart sends on from the next batch. Stored with
//! the source it is a position in: a subscription whose output moved to another source starts
//! that source from now.

use std::path::Path;

use redb::{Database, ReadableDatabase, TableDefinition};
use uuid::Uuid;

use crate::export::cursor::Cursor;

const CURSORS: TableDefinition<u128, &str> = TableDefinition::new("webhook_cursors");

#[derive(Debug, thiserror::Error)]
#[error("webhook cursors {path}: {source}")]
pub struct CursorError {
    path: String,
    #[source]
    source: redb::Error,
}

pub struct Cursors {
    db: Database,
    path: String,
}

impl Cursors {
    pub fn open(path: &Path) -> Result<Cursors, CursorError> {
        let display = path.display().to_string();
        let db = Database::create(path).map_err(|e| CursorError {
            path: display.clone(),
            source: e.into(),
        })?;
        Ok(Cursors { db, path: display })
    }

    fn err<E: Into<redb::Error>>(&self) -> impl FnOnce(E) -> CursorError + '_ {
        |e| CursorError {
            path: self.path.clone(),
            source: e.into(),
        }
    }

    /// The subscription's cursor in `source`; `None` before its first delivery from this node,
    /// when the stored one is of another source, or when it no longer decodes (each of which
    /// starts it over from now).
    pub fn load(&self, subscription: Uuid, source: &str) -> Result<Option<Cursor>, CursorError> {
        let txn = self.db.begin_read().map_err(self.err())?;
        let table = match txn.open_table(CURSORS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err()(e)),
        };
        let value = table.get(subscription.as_u128()).map_err(self.err())?;
        Ok(value.and_then(|v| {
            let (stored_source, cursor) = v.value().split_once(' ')?;
            (stored_source == source)
                .then(|| Cursor::decode(cursor).ok())
                .flatten()
        }))
    }

    /// Stores the subscription's cursor in `source` durably.
    pub fn save(
        &self,
        subscription: Uuid,
        source: &str,
        cursor: &Cursor,
    ) -> Result<(), CursorError> {
        let txn = self.db.begin_write().map_err(self.err())?;
        {
            let mut table = txn.open_table(CURSORS).map_err(self.err())?;
            table
                .insert(
                    subscription.as_u128(),
                    format!("{source} {}", cursor.encode()).as_str(),
                )
                .map_err(self.err())?;
        }
        txn.commit().map_err(self.err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::cursor::Position;

    #[test]
    fn cursors_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("webhooks.redb");
        let id = Uuid::now_v7();
        let mut cursor = Cursor::default();
        cursor
            .nodes
            .insert("n1".into(), Position { seq: 4, row: 7 });
        {
            let cursors = Cursors::open(&path).expect("open");
            assert_eq!(cursors.load(id, "telemetry").expect("load"), None);
            cursors.save(id, "telemetry", &cursor).expect("save");
        }
        let cursors = Cursors::open(&path).expect("reopen");
        assert_eq!(cursors.load(id, "telemetry").expect("load"), Some(cursor));
        assert_eq!(
            cursors.load(id, "other").expect("load"),
            None,
            "another source's"
        );
    }
}
