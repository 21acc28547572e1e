//! The embedded SQLite backend: WAL, every commit fsync'd
//! (`synchronous=FULL`) unless told otherwise, one writer connection and a
//! pool of read-only connections (WAL lets them read while the writer
//! commits).

mod conn;
mod schema;

use std::path::Path;
use std::sync::Arc;

use rusqlite::{Connection, OpenFlags};

pub(crate) use self::conn::db;
use crate::sql::writer::WriteConn;
use crate::sql::{Db, SqlStore};
use crate::StoreError;

/// The SQLite store (the embedded default).
pub type SqliteStore = SqlStore;

/// When a commit counts as durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Every commit is fsync'd (`synchronous=FULL`): survives power loss.
    #[default]
    Fsync,
    /// Commits reach the OS before they are acknowledged but are fsync'd
    /// only at checkpoints (`synchronous=NORMAL`): survives a crash or
    /// SIGKILL of agentrt, but the last commits can be lost on power loss.
    OsBuffered,
}

impl SqlStore {
    /// Opens (creating and migrating if needed) the database at `path`,
    /// fsyncing every commit.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        Self::open_with(path, Durability::Fsync)
    }

    /// Opens the database with the given durability.
    pub fn open_with(path: &Path, durability: Durability) -> Result<SqliteStore, StoreError> {
        let mut conn = Connection::open(path).map_err(db)?;
        schema::configure(&conn, durability)?;
        schema::migrate(&mut conn)?;
        let path = path.to_owned();
        let open = Arc::new(move || {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = Connection::open_with_flags(&path, flags).map_err(db)?;
            conn.pragma_update(None, "busy_timeout", 5000).map_err(db)?;
            Ok(Box::new(conn) as Box<dyn Db + Send>)
        });
        SqlStore::start(Writer(conn), open, None)
    }
}

/// The writer's connection: one immediate transaction per group.
struct Writer(Connection);

impl WriteConn for Writer {
    fn transact(&mut self, f: &mut dyn FnMut(&dyn Db) -> bool) -> Result<(), String> {
        let tx = self.0.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(|e| e.to_string())?;
        let keep = f(&*tx);
        if keep { tx.commit() } else { tx.rollback() }.map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests;
