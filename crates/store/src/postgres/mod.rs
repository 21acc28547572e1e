//! The PostgreSQL backend, for several nodes on one database: the same SQL
//! store as SQLite, with row locks where a node reads a session it is about
//! to change, and budget checks of a tenant serialized across nodes. The
//! node's writer runs on a thread with its own connection; readers borrow
//! pooled connections on blocking threads.

mod conn;
mod listen;
mod schema;
#[cfg(test)]
mod tests;

use std::sync::mpsc;
use std::sync::Arc;

use postgres::{Client, Config, NoTls};

use self::conn::{pg, PgConn, PgTx, Statements};
use crate::sql::writer::WriteConn;
use crate::sql::{Db, SqlStore};
use crate::StoreError;

/// Whether `url` names a PostgreSQL database (`postgres://…` or
/// `postgresql://…`).
pub fn is_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Creates the empty database `name` (letters, digits and `_`) on the
/// server of `admin_url` (a URL naming any database there); answers the new
/// database's URL. For tests, benchmarks and first installs.
pub fn create_database(admin_url: &str, name: &str) -> Result<String, StoreError> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(StoreError::Database(format!("{name:?} is not a database name (letters, digits and _)")));
    }
    let (base, _) = admin_url.rsplit_once('/').ok_or_else(|| StoreError::Database("the PostgreSQL URL names no database".into()))?;
    let config: Config = admin_url.parse().map_err(|e| StoreError::Database(format!("bad PostgreSQL URL: {e}")))?;
    let sql = format!("CREATE DATABASE {name}");
    // The client blocks on a runtime of its own: off any async thread.
    std::thread::spawn(move || config.connect(NoTls).and_then(|mut c| c.batch_execute(&sql)).map_err(pg))
        .join()
        .map_err(|_| StoreError::Database("create-database thread died".into()))??;
    Ok(format!("{base}/{name}"))
}

impl SqlStore {
    /// Connects to the PostgreSQL database at `url` (`postgres://user:pass@host:port/db`),
    /// creating or migrating its schema; refuses a schema newer than this
    /// build.
    pub fn connect_postgres(url: &str) -> Result<SqlStore, StoreError> {
        let config: Config = url.parse().map_err(|e| StoreError::Database(format!("bad PostgreSQL URL: {e}")))?;
        // The client blocks on a runtime of its own: connect off any async thread.
        let (ready_tx, ready_rx) = mpsc::channel();
        let named = |name: &str| {
            let mut c = config.clone();
            c.application_name(name);
            c
        };
        let writer_config = named("agentrt writer");
        std::thread::Builder::new()
            .name("pg-connect".into())
            .spawn(move || {
                let connected = writer_config.connect(NoTls).map_err(pg).and_then(|mut c| {
                    schema::migrate(&mut c)?;
                    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).map_err(pg)?.get(0);
                    Ok((c, pid))
                });
                let _ = ready_tx.send(connected.map(|(c, pid)| (Writer::new(c, writer_config), pid)));
            })
            .map_err(|e| StoreError::Database(format!("spawn connect thread: {e}")))?;
        let (writer, writer_pid) = ready_rx.recv().map_err(|_| StoreError::Database("connect thread died".into()))??;
        let listen_config = named("agentrt listener");
        let config = named("agentrt reader");
        let remote: crate::sql::Listen = Box::new(move || listen::spawn(listen_config.clone(), writer_pid));
        let open = Arc::new(move || Ok(Box::new(PgConn::new(config.connect(NoTls).map_err(pg)?)) as Box<dyn Db + Send>));
        SqlStore::start(writer, open, Some(remote))
    }
}

/// The writer's connection: one transaction per group; connected again
/// when the database went away (a restart, a failover).
struct Writer {
    client: Client,
    cache: Statements,
    config: Config,
}

impl Writer {
    fn new(client: Client, config: Config) -> Self {
        Writer { client, cache: Statements::default(), config }
    }
}

impl WriteConn for Writer {
    fn transact(&mut self, f: &mut dyn FnMut(&dyn Db) -> bool) -> Result<(), String> {
        if self.client.is_closed() {
            tracing::warn!("store connection lost; reconnecting");
            self.client = self.config.connect(NoTls).map_err(|e| pg(e).to_string())?;
            self.cache = Statements::default();
        }
        let tx = self.client.transaction().map_err(|e| pg(e).to_string())?;
        let db = PgTx { tx: std::cell::RefCell::new(tx), cache: &self.cache };
        let keep = f(&db);
        let tx = db.tx.into_inner();
        if keep { tx.commit() } else { tx.rollback() }.map_err(|e| pg(e).to_string())
    }
}
