//! The nodes of a cluster: each heartbeats its row; an operator can ask
//! one to drain.

use super::{args, Db, Row};
use crate::{NodeInfo, StoreError};

const COLUMNS: &str = "n.id, n.started_ms, n.heartbeat_ms, n.draining,
    (SELECT COUNT(*) FROM sessions s WHERE s.lease_holder = n.id AND s.lease_expires_ms > ?1)";

fn node(r: &Row) -> Result<NodeInfo, StoreError> {
    Ok(NodeInfo { id: r.text(0)?, started_ms: r.int(1)?, heartbeat_ms: r.int(2)?, draining: r.int(3)? != 0, leases: r.int(4)? as u64 })
}

fn get(conn: &dyn Db, id: &str, now_ms: i64) -> Result<Option<NodeInfo>, StoreError> {
    conn.row(&format!("SELECT {COLUMNS} FROM nodes n WHERE n.id = ?2"), args![now_ms, id])?.map(|r| node(&r)).transpose()
}

pub fn heartbeat(tx: &dyn Db, id: &str, started_ms: i64, now_ms: i64) -> Result<NodeInfo, StoreError> {
    tx.exec(
        "INSERT INTO nodes (id, started_ms, heartbeat_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms",
        args![id, started_ms, now_ms],
    )?;
    get(tx, id, now_ms)?.ok_or_else(|| StoreError::Database(format!("node {id:?} vanished")))
}

pub fn list(conn: &dyn Db, now_ms: i64) -> Result<Vec<NodeInfo>, StoreError> {
    conn.rows(&format!("SELECT {COLUMNS} FROM nodes n ORDER BY n.id"), args![now_ms])?.iter().map(node).collect()
}

pub fn set_draining(tx: &dyn Db, id: &str, draining: bool, now_ms: i64) -> Result<Option<NodeInfo>, StoreError> {
    tx.exec("UPDATE nodes SET draining = ?2 WHERE id = ?1", args![id, draining])?;
    get(tx, id, now_ms)
}
