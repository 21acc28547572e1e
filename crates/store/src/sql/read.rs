//! Read-side queries.

use agentrt_types::event::StoredRecord;
use agentrt_types::{Event, SessionId, SessionSummary, TurnId, TurnSummary};
use serde_json::Value;

use super::{args, parse, Db};
use crate::{AgentInfo, AgentVersion, SessionFilter, StoreError};

pub fn get_agent(conn: &dyn Db, tenant: &str, name: &str, version: Option<u32>) -> Result<Option<AgentVersion>, StoreError> {
    let row = conn.row(
        "SELECT version, spec, created_ms FROM agents WHERE tenant = ?1 AND name = ?2 AND (CAST(?3 AS BIGINT) IS NULL OR version = ?3)
         ORDER BY version DESC LIMIT 1",
        args![tenant, name, version],
    )?;
    row.map(|r| {
        Ok(AgentVersion { name: name.to_owned(), version: r.u32(0)?, spec: parse(&r.text(1)?, "agent spec")?, created_ms: r.int(2)? })
    })
    .transpose()
}

pub fn list_agents(conn: &dyn Db, tenant: &str) -> Result<Vec<AgentInfo>, StoreError> {
    let rows = conn.rows(
        "SELECT a.name, a.version, a.spec, f.first_ms, a.created_ms FROM agents a
         JOIN (SELECT name, MAX(version) AS v, MIN(created_ms) AS first_ms FROM agents WHERE tenant = ?1 GROUP BY name) f
           ON a.name = f.name AND a.version = f.v
         WHERE a.tenant = ?1
         ORDER BY a.name",
        args![tenant],
    )?;
    rows.iter()
        .map(|r| {
            let spec: agentrt_types::AgentSpec = parse(&r.text(2)?, "agent spec")?;
            Ok(AgentInfo {
                name: r.text(0)?,
                latest_version: r.u32(1)?,
                description: spec.description,
                created_ms: r.int(3)?,
                updated_ms: r.int(4)?,
            })
        })
        .collect()
}

pub fn get_session(conn: &dyn Db, id: &SessionId) -> Result<Option<SessionSummary>, StoreError> {
    conn.text("SELECT summary FROM sessions WHERE id = ?1", args![id.as_str()])?.map(|t| parse(&t, "session summary")).transpose()
}

pub fn list_sessions(conn: &dyn Db, f: &SessionFilter) -> Result<Vec<SessionSummary>, StoreError> {
    let rows = conn.rows(
        "SELECT summary FROM sessions
         WHERE (CAST(?1 AS TEXT) IS NULL OR agent = ?1) AND (CAST(?2 AS TEXT) IS NULL OR status = ?2)
           AND (CAST(?3 AS TEXT) IS NULL OR id < ?3) AND (CAST(?5 AS TEXT) IS NULL OR tenant = ?5)
         ORDER BY id DESC LIMIT ?4",
        args![f.agent.as_deref(), f.status.map(|s| s.as_str()), f.before.as_ref().map(|b| b.as_str()), f.limit, f.tenant.as_deref()],
    )?;
    rows.iter().map(|r| parse(&r.text(0)?, "session summary")).collect()
}

pub fn count_sessions_by_status(conn: &dyn Db) -> Result<Vec<(agentrt_types::SessionStatus, u64)>, StoreError> {
    let rows = conn.rows("SELECT status, COUNT(*) FROM sessions GROUP BY status", args![])?;
    rows.iter()
        .map(|r| {
            let status = r.text(0)?;
            let status =
                agentrt_types::SessionStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("bad status {status:?}")))?;
            Ok((status, r.int(1)? as u64))
        })
        .collect()
}

pub fn read_records(conn: &dyn Db, id: &SessionId, after: u64, limit: usize) -> Result<Vec<StoredRecord>, StoreError> {
    let rows = conn.rows(
        "SELECT seq, body, prev_hash, hash FROM events WHERE session_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        args![id.as_str(), after, limit],
    )?;
    rows.iter()
        .map(|r| Ok(StoredRecord { seq: r.int(0)? as u64, body_text: r.text(1)?, prev_hash: r.text(2)?, hash: r.text(3)? }))
        .collect()
}

pub fn read_events(conn: &dyn Db, id: &SessionId, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
    read_records(conn, id, after, limit)?
        .into_iter()
        .map(|r| Ok(Event { body: parse(&r.body_text, &format!("event {}", r.seq))?, prev_hash: r.prev_hash, hash: r.hash }))
        .collect()
}

pub fn get_turn(conn: &dyn Db, session: &SessionId, turn: &TurnId) -> Result<Option<TurnSummary>, StoreError> {
    conn.text("SELECT summary FROM turns WHERE session_id = ?1 AND turn_id = ?2", args![session.as_str(), turn.as_str()])?
        .map(|t| parse(&t, "turn summary"))
        .transpose()
}

pub fn find_turn_by_key(conn: &dyn Db, session: &SessionId, key: &str) -> Result<Option<TurnSummary>, StoreError> {
    conn.text("SELECT summary FROM turns WHERE session_id = ?1 AND idempotency_key = ?2", args![session.as_str(), key])?
        .map(|t| parse(&t, "turn summary"))
        .transpose()
}

pub fn unfinished_turns(conn: &dyn Db, session: &SessionId) -> Result<Vec<TurnSummary>, StoreError> {
    let rows = conn.rows(
        "SELECT summary FROM turns WHERE status IN ('queued', 'running') AND session_id = ?1 ORDER BY submitted_seq",
        args![session.as_str()],
    )?;
    rows.iter().map(|r| parse(&r.text(0)?, "turn summary")).collect()
}

pub fn sessions_with_unfinished_turns(conn: &dyn Db) -> Result<Vec<SessionId>, StoreError> {
    let rows = conn.rows("SELECT DISTINCT session_id FROM turns WHERE status IN ('queued', 'running') ORDER BY session_id", args![])?;
    rows.iter()
        .map(|r| {
            let raw = r.text(0)?;
            SessionId::parse(&raw).ok_or_else(|| StoreError::Corrupt(format!("bad session id {raw:?}")))
        })
        .collect()
}

pub fn claimable_sessions(conn: &dyn Db, now_ms: i64, limit: usize) -> Result<Vec<SessionId>, StoreError> {
    let rows = conn.rows(
        "SELECT id FROM sessions WHERE status = 'running' AND (lease_holder IS NULL OR lease_expires_ms <= ?1) ORDER BY id LIMIT ?2",
        args![now_ms, limit],
    )?;
    rows.iter()
        .map(|r| {
            let raw = r.text(0)?;
            SessionId::parse(&raw).ok_or_else(|| StoreError::Corrupt(format!("bad session id {raw:?}")))
        })
        .collect()
}

pub fn kv_get(conn: &dyn Db, session: &SessionId, key: &str) -> Result<Option<Value>, StoreError> {
    conn.text("SELECT value FROM kv WHERE session_id = ?1 AND key = ?2", args![session.as_str(), key])?
        .map(|t| parse(&t, "kv value"))
        .transpose()
}
