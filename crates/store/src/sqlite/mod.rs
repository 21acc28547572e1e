//! The embedded SQLite store: one writer thread with group commit (WAL,
//! `synchronous=FULL`), and a pool of read connections.

mod read;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use agentrt_types::event::StoredRecord;
use agentrt_types::{AgentSpec, Event, SessionId, SessionSummary, TurnId, TurnSummary};
use async_trait::async_trait;
use rusqlite::Connection;
use serde_json::Value;
use tokio::sync::oneshot;

use self::read::Readers;
use self::schema::db;
use self::writer::WriteOp;
use crate::{AgentInfo, AgentVersion, AppendRequest, NewSession, SessionFilter, Store, StoreError};

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

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    writer: mpsc::Sender<WriteOp>,
    readers: Readers,
    path: PathBuf,
}

impl SqliteStore {
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
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer::run(conn, rx))
            .map_err(|e| StoreError::Database(format!("spawn writer thread: {e}")))?;
        Ok(SqliteStore { writer: tx, readers: Readers::new(path.to_owned()), path: path.to_owned() })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteOp) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer.send(make(tx)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn put_agent(&self, name: &str, spec: &AgentSpec) -> Result<AgentVersion, StoreError> {
        let (name, spec) = (name.to_owned(), Box::new(spec.clone()));
        self.write(|reply| WriteOp::PutAgent { name, spec, reply }).await
    }

    async fn get_agent(&self, name: &str, version: Option<u32>) -> Result<Option<AgentVersion>, StoreError> {
        let name = name.to_owned();
        self.readers.run(move |c| read::get_agent(c, &name, version)).await
    }

    async fn list_agents(&self) -> Result<Vec<AgentInfo>, StoreError> {
        self.readers.run(read::list_agents).await
    }

    async fn create_session(&self, new: NewSession) -> Result<(SessionSummary, Event), StoreError> {
        self.write(|reply| WriteOp::CreateSession { new, reply }).await
    }

    async fn get_session(&self, id: &SessionId) -> Result<Option<SessionSummary>, StoreError> {
        let id = id.clone();
        self.readers.run(move |c| read::get_session(c, &id)).await
    }

    async fn list_sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionSummary>, StoreError> {
        let filter = filter.clone();
        self.readers.run(move |c| read::list_sessions(c, &filter)).await
    }

    async fn count_sessions_by_status(&self) -> Result<Vec<(agentrt_types::SessionStatus, u64)>, StoreError> {
        self.readers.run(read::count_sessions_by_status).await
    }

    async fn append(&self, request: AppendRequest) -> Result<Vec<Event>, StoreError> {
        self.write(|reply| WriteOp::Append { request, reply }).await
    }

    async fn read_events(&self, id: &SessionId, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let id = id.clone();
        self.readers.run(move |c| read::read_events(c, &id, after, limit)).await
    }

    async fn read_records(&self, id: &SessionId) -> Result<Vec<StoredRecord>, StoreError> {
        let id = id.clone();
        self.readers.run(move |c| read::read_records(c, &id, 0, usize::MAX >> 1)).await
    }

    async fn get_turn(&self, session: &SessionId, turn: &TurnId) -> Result<Option<TurnSummary>, StoreError> {
        let (session, turn) = (session.clone(), turn.clone());
        self.readers.run(move |c| read::get_turn(c, &session, &turn)).await
    }

    async fn find_turn_by_key(&self, session: &SessionId, key: &str) -> Result<Option<TurnSummary>, StoreError> {
        let (session, key) = (session.clone(), key.to_owned());
        self.readers.run(move |c| read::find_turn_by_key(c, &session, &key)).await
    }

    async fn unfinished_turns(&self, session: &SessionId) -> Result<Vec<TurnSummary>, StoreError> {
        let session = session.clone();
        self.readers.run(move |c| read::unfinished_turns(c, &session)).await
    }

    async fn sessions_with_unfinished_turns(&self) -> Result<Vec<SessionId>, StoreError> {
        self.readers.run(read::sessions_with_unfinished_turns).await
    }

    async fn acquire_lease(&self, session: &SessionId, holder: &str, ttl_ms: i64, force: bool) -> Result<Option<u64>, StoreError> {
        let (session, holder) = (session.clone(), holder.to_owned());
        self.write(|reply| WriteOp::AcquireLease { session, holder, ttl_ms, force, reply }).await
    }

    async fn release_lease(&self, session: &SessionId, holder: &str, token: u64) -> Result<(), StoreError> {
        let (session, holder) = (session.clone(), holder.to_owned());
        self.write(|reply| WriteOp::ReleaseLease { session, holder, token, reply }).await
    }

    async fn renew_leases(&self, holder: &str, ttl_ms: i64) -> Result<u64, StoreError> {
        let holder = holder.to_owned();
        self.write(|reply| WriteOp::RenewLeases { holder, ttl_ms, reply }).await
    }

    async fn kv_get(&self, session: &SessionId, key: &str) -> Result<Option<Value>, StoreError> {
        let (session, key) = (session.clone(), key.to_owned());
        self.readers.run(move |c| read::kv_get(c, &session, &key)).await
    }

    async fn kv_set(&self, session: &SessionId, key: &str, value: &Value) -> Result<(), StoreError> {
        let (session, key, value) = (session.clone(), key.to_owned(), value.clone());
        self.write(|reply| WriteOp::KvSet { session, key, value, reply }).await
    }
}

#[cfg(test)]
mod tests;
