//! Read-side queries, run on a small pool of read-only connections (WAL
//! lets them proceed while the writer commits).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use agentrt_types::event::StoredRecord;
use agentrt_types::{Event, SessionId, SessionSummary, TurnId, TurnSummary};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::Value;

use super::schema::db;
use crate::{AgentInfo, AgentVersion, SessionFilter, StoreError};

/// A pool of read connections.
#[derive(Clone)]
pub struct Readers {
    path: PathBuf,
    idle: Arc<Mutex<Vec<Connection>>>,
}

const MAX_IDLE: usize = 8;

impl Readers {
    pub fn new(path: PathBuf) -> Self {
        Readers { path, idle: Arc::new(Mutex::new(Vec::new())) }
    }

    /// Runs `f` with a read connection on a blocking thread.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match this.idle.lock().expect("reader pool lock poisoned").pop() {
                Some(c) => c,
                None => this.open()?,
            };
            let out = f(&conn);
            let mut idle = this.idle.lock().expect("reader pool lock poisoned");
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Database(format!("read task failed: {e}")))?
    }

    fn open(&self) -> Result<Connection, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(db)?;
        conn.pragma_update(None, "busy_timeout", 5000).map_err(db)?;
        Ok(conn)
    }
}

fn parse<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

pub fn get_agent(conn: &Connection, tenant: &str, name: &str, version: Option<u32>) -> Result<Option<AgentVersion>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT version, spec, created_ms FROM agents WHERE tenant = ?1 AND name = ?2 AND (?3 IS NULL OR version = ?3)
             ORDER BY version DESC LIMIT 1",
        )
        .map_err(db)?
        .query_row(params![tenant, name, version], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))
        .optional()
        .map_err(db)?;
    row.map(|(version, spec, created_ms)| {
        Ok(AgentVersion { name: name.to_owned(), version, spec: parse(&spec, "agent spec")?, created_ms })
    })
    .transpose()
}

pub fn list_agents(conn: &Connection, tenant: &str) -> Result<Vec<AgentInfo>, StoreError> {
    let mut stmt = conn
        .prepare(
            "SELECT a.name, a.version, a.spec, f.first_ms, a.created_ms FROM agents a
             JOIN (SELECT name, MAX(version) AS v, MIN(created_ms) AS first_ms FROM agents WHERE tenant = ?1 GROUP BY name) f
               ON a.name = f.name AND a.version = f.v
             WHERE a.tenant = ?1
             ORDER BY a.name",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map(params![tenant], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?, r.get::<_, i64>(4)?))
        })
        .map_err(db)?;
    let mut out = Vec::new();
    for row in rows {
        let (name, latest_version, spec, created_ms, updated_ms) = row.map_err(db)?;
        let spec: agentrt_types::AgentSpec = parse(&spec, "agent spec")?;
        out.push(AgentInfo { name, latest_version, description: spec.description, created_ms, updated_ms });
    }
    Ok(out)
}

pub fn get_session(conn: &Connection, id: &SessionId) -> Result<Option<SessionSummary>, StoreError> {
    let text: Option<String> =
        conn.query_row("SELECT summary FROM sessions WHERE id = ?1", params![id.as_str()], |r| r.get(0)).optional().map_err(db)?;
    text.map(|t| parse(&t, "session summary")).transpose()
}

pub fn list_sessions(conn: &Connection, f: &SessionFilter) -> Result<Vec<SessionSummary>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT summary FROM sessions
             WHERE (?1 IS NULL OR agent = ?1) AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR id < ?3)
               AND (?5 IS NULL OR tenant = ?5)
             ORDER BY id DESC LIMIT ?4",
        )
        .map_err(db)?;
    let args = params![f.agent, f.status.map(|s| s.as_str()), f.before.as_ref().map(|b| b.as_str()), f.limit as i64, f.tenant];
    let rows = stmt.query_map(args, |r| r.get::<_, String>(0)).map_err(db)?;
    rows.map(|r| parse(&r.map_err(db)?, "session summary")).collect()
}

pub fn count_sessions_by_status(conn: &Connection) -> Result<Vec<(agentrt_types::SessionStatus, u64)>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT status, COUNT(*) FROM sessions GROUP BY status").map_err(db)?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))).map_err(db)?;
    rows.map(|r| {
        let (status, n) = r.map_err(db)?;
        let status = agentrt_types::SessionStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("bad status {status:?}")))?;
        Ok((status, n as u64))
    })
    .collect()
}

pub fn read_records(conn: &Connection, id: &SessionId, after: u64, limit: usize) -> Result<Vec<StoredRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT seq, body, prev_hash, hash FROM events WHERE session_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3")
        .map_err(db)?;
    let rows = stmt
        .query_map(params![id.as_str(), after as i64, limit as i64], |r| {
            Ok(StoredRecord { seq: r.get::<_, i64>(0)? as u64, body_text: r.get(1)?, prev_hash: r.get(2)?, hash: r.get(3)? })
        })
        .map_err(db)?;
    rows.map(|r| r.map_err(db)).collect()
}

pub fn read_events(conn: &Connection, id: &SessionId, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
    read_records(conn, id, after, limit)?
        .into_iter()
        .map(|r| Ok(Event { body: parse(&r.body_text, &format!("event {}", r.seq))?, prev_hash: r.prev_hash, hash: r.hash }))
        .collect()
}

pub fn get_turn(conn: &Connection, session: &SessionId, turn: &TurnId) -> Result<Option<TurnSummary>, StoreError> {
    let text: Option<String> = conn
        .query_row("SELECT summary FROM turns WHERE session_id = ?1 AND turn_id = ?2", params![session.as_str(), turn.as_str()], |r| {
            r.get(0)
        })
        .optional()
        .map_err(db)?;
    text.map(|t| parse(&t, "turn summary")).transpose()
}

pub fn find_turn_by_key(conn: &Connection, session: &SessionId, key: &str) -> Result<Option<TurnSummary>, StoreError> {
    let text: Option<String> = conn
        .query_row("SELECT summary FROM turns WHERE session_id = ?1 AND idempotency_key = ?2", params![session.as_str(), key], |r| r.get(0))
        .optional()
        .map_err(db)?;
    text.map(|t| parse(&t, "turn summary")).transpose()
}

pub fn unfinished_turns(conn: &Connection, session: &SessionId) -> Result<Vec<TurnSummary>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT summary FROM turns WHERE status IN ('queued', 'running') AND session_id = ?1 ORDER BY submitted_seq")
        .map_err(db)?;
    let rows = stmt.query_map(params![session.as_str()], |r| r.get::<_, String>(0)).map_err(db)?;
    rows.map(|r| parse(&r.map_err(db)?, "turn summary")).collect()
}

pub fn sessions_with_unfinished_turns(conn: &Connection) -> Result<Vec<SessionId>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT DISTINCT session_id FROM turns WHERE status IN ('queued', 'running') ORDER BY session_id").map_err(db)?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(db)?;
    rows.map(|r| {
        let raw = r.map_err(db)?;
        SessionId::parse(&raw).ok_or_else(|| StoreError::Corrupt(format!("bad session id {raw:?}")))
    })
    .collect()
}

pub fn kv_get(conn: &Connection, session: &SessionId, key: &str) -> Result<Option<Value>, StoreError> {
    let text: Option<String> = conn
        .query_row("SELECT value FROM kv WHERE session_id = ?1 AND key = ?2", params![session.as_str(), key], |r| r.get(0))
        .optional()
        .map_err(db)?;
    text.map(|t| parse(&t, "kv value")).transpose()
}
