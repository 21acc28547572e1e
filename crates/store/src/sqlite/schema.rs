//! Versioned schema migrations, applied at open. A database written by a
//! newer build is refused rather than guessed at.

use rusqlite::Connection;

use super::db;
use crate::StoreError;

/// Migrations in order; `user_version` records how many have run.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE agents (
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    spec        TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    PRIMARY KEY (name, version)
) WITHOUT ROWID;

CREATE TABLE sessions (
    id                TEXT PRIMARY KEY,
    agent             TEXT NOT NULL,
    status            TEXT NOT NULL,
    created_ms        INTEGER NOT NULL,
    summary           TEXT NOT NULL,
    last_seq          INTEGER NOT NULL,
    last_hash         TEXT NOT NULL,
    lease_holder      TEXT,
    lease_token       INTEGER NOT NULL DEFAULT 0,
    lease_expires_ms  INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX sessions_by_agent ON sessions (agent, id);
CREATE INDEX sessions_by_status ON sessions (status, id);

CREATE TABLE events (
    session_id  TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    body        TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;

CREATE TABLE turns (
    session_id       TEXT NOT NULL,
    turn_id          TEXT NOT NULL,
    status           TEXT NOT NULL,
    idempotency_key  TEXT,
    submitted_seq    INTEGER NOT NULL,
    summary          TEXT NOT NULL,
    PRIMARY KEY (session_id, turn_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX turns_by_key ON turns (session_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX turns_unfinished ON turns (status, session_id, submitted_seq) WHERE status IN ('queued', 'running');

CREATE TABLE kv (
    session_id  TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (session_id, key)
) WITHOUT ROWID;
"#,
    r#"
CREATE TABLE agents_v2 (
    tenant      TEXT NOT NULL,
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    spec        TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    PRIMARY KEY (tenant, name, version)
) WITHOUT ROWID;
INSERT INTO agents_v2 (tenant, name, version, spec, created_ms) SELECT 'default', name, version, spec, created_ms FROM agents;
DROP TABLE agents;
ALTER TABLE agents_v2 RENAME TO agents;

ALTER TABLE sessions ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
CREATE INDEX sessions_by_tenant ON sessions (tenant, id);

CREATE TABLE tenants (
    name        TEXT PRIMARY KEY,
    created_ms  INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO tenants (name, created_ms) VALUES ('default', CAST(strftime('%s', 'now') AS INTEGER) * 1000);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    created_ms  INTEGER NOT NULL,
    revoked_ms  INTEGER
) WITHOUT ROWID;

CREATE TABLE policies (
    tenant      TEXT NOT NULL,
    version     INTEGER NOT NULL,
    text        TEXT NOT NULL,
    schema      TEXT,
    created_ms  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    PRIMARY KEY (tenant, version)
) WITHOUT ROWID;

CREATE TABLE approvals (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    session_id  TEXT NOT NULL,
    turn_id     TEXT NOT NULL,
    status      TEXT NOT NULL,
    summary     TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX approvals_by_tenant ON approvals (tenant, status, id);
CREATE INDEX approvals_by_turn ON approvals (session_id, turn_id, status);

CREATE TABLE settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
) WITHOUT ROWID;
"#,
    r#"
ALTER TABLE tenants ADD COLUMN tool_calls_per_second REAL;
"#,
    r#"
CREATE TABLE model_usage (
    id             INTEGER PRIMARY KEY,
    ts_ms          INTEGER NOT NULL,
    tenant         TEXT NOT NULL,
    agent          TEXT NOT NULL,
    session_id     TEXT,
    turn_id        TEXT,
    source         TEXT NOT NULL,
    route          TEXT NOT NULL,
    provider       TEXT NOT NULL,
    model          TEXT NOT NULL,
    input_tokens   INTEGER NOT NULL,
    output_tokens  INTEGER NOT NULL,
    cached_tokens  INTEGER NOT NULL,
    cost_usd       REAL NOT NULL,
    latency_us     INTEGER NOT NULL,
    estimated      INTEGER NOT NULL
);
CREATE INDEX model_usage_by_tenant ON model_usage (tenant, ts_ms);
"#,
    r#"
CREATE TABLE budgets (
    id      TEXT PRIMARY KEY,
    tenant  TEXT NOT NULL,
    body    TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX budgets_by_tenant ON budgets (tenant, id);

CREATE TABLE spend_daily (
    tenant          TEXT NOT NULL,
    day             INTEGER NOT NULL,
    agent           TEXT NOT NULL,
    tokens          INTEGER NOT NULL,
    cost_usd        REAL NOT NULL,
    tool_calls      INTEGER NOT NULL,
    steps           INTEGER NOT NULL,
    sandbox_cpu_us  INTEGER NOT NULL,
    PRIMARY KEY (tenant, day, agent)
) WITHOUT ROWID;
"#,
    r#"
CREATE TABLE nodes (
    id            TEXT PRIMARY KEY,
    started_ms    INTEGER NOT NULL,
    heartbeat_ms  INTEGER NOT NULL,
    draining      INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
"#,
];
/// Brings the schema up to date.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(db)?;
    let supported = MIGRATIONS.len() as i64;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction().map_err(db)?;
        tx.execute_batch(sql).map_err(db)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64).map_err(db)?;
        tx.commit().map_err(db)?;
    }
    Ok(())
}

/// Connection settings shared by the writer and the readers.
pub fn configure(conn: &Connection, durability: super::Durability) -> Result<(), StoreError> {
    conn.pragma_update(None, "journal_mode", "WAL").map_err(db)?;
    // FULL: every commit is fsync'd, so an acknowledged append survives a
    // power loss, not just a process crash.
    let synchronous = match durability {
        super::Durability::Fsync => "FULL",
        super::Durability::OsBuffered => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous).map_err(db)?;
    conn.pragma_update(None, "busy_timeout", 5000).map_err(db)?;
    Ok(())
}
