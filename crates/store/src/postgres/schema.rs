//! Versioned schema migrations for PostgreSQL, applied at connect under an
//! advisory lock (nodes starting together migrate once). A database
//! migrated by a newer build is refused rather than guessed at.

use postgres::Client;

use super::conn::pg;
use crate::StoreError;

/// The advisory lock key migrations hold.
const MIGRATION_LOCK: i64 = 0x6167_656e_7472_7401;

/// Migrations in order; `agentrt_schema.version` records how many have run.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE agents (
    tenant      TEXT COLLATE "C" NOT NULL,
    name        TEXT COLLATE "C" NOT NULL,
    version     BIGINT NOT NULL,
    spec        TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    PRIMARY KEY (tenant, name, version)
);

CREATE TABLE sessions (
    id                TEXT COLLATE "C" PRIMARY KEY,
    tenant            TEXT COLLATE "C" NOT NULL,
    agent             TEXT COLLATE "C" NOT NULL,
    status            TEXT NOT NULL,
    created_ms        BIGINT NOT NULL,
    summary           TEXT NOT NULL,
    last_seq          BIGINT NOT NULL,
    last_hash         TEXT NOT NULL,
    lease_holder      TEXT,
    lease_token       BIGINT NOT NULL DEFAULT 0,
    lease_expires_ms  BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX sessions_by_agent ON sessions (agent, id);
CREATE INDEX sessions_by_status ON sessions (status, id);
CREATE INDEX sessions_by_tenant ON sessions (tenant, id);
CREATE INDEX sessions_by_lease ON sessions (lease_holder) WHERE lease_holder IS NOT NULL;

CREATE TABLE events (
    session_id  TEXT COLLATE "C" NOT NULL,
    seq         BIGINT NOT NULL,
    body        TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
);

CREATE TABLE turns (
    session_id       TEXT COLLATE "C" NOT NULL,
    turn_id          TEXT COLLATE "C" NOT NULL,
    status           TEXT NOT NULL,
    idempotency_key  TEXT,
    submitted_seq    BIGINT NOT NULL,
    summary          TEXT NOT NULL,
    PRIMARY KEY (session_id, turn_id)
);
CREATE UNIQUE INDEX turns_by_key ON turns (session_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX turns_unfinished ON turns (status, session_id, submitted_seq) WHERE status IN ('queued', 'running');

CREATE TABLE kv (
    session_id  TEXT COLLATE "C" NOT NULL,
    key         TEXT COLLATE "C" NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (session_id, key)
);

CREATE TABLE tenants (
    name                   TEXT COLLATE "C" PRIMARY KEY,
    created_ms             BIGINT NOT NULL,
    tool_calls_per_second  DOUBLE PRECISION
);
INSERT INTO tenants (name, created_ms) VALUES ('default', (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT);

CREATE TABLE api_keys (
    id          TEXT COLLATE "C" PRIMARY KEY,
    tenant      TEXT COLLATE "C" NOT NULL,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    created_ms  BIGINT NOT NULL,
    revoked_ms  BIGINT
);

CREATE TABLE policies (
    tenant      TEXT COLLATE "C" NOT NULL,
    version     BIGINT NOT NULL,
    text        TEXT NOT NULL,
    schema      TEXT,
    created_ms  BIGINT NOT NULL,
    created_by  TEXT NOT NULL,
    PRIMARY KEY (tenant, version)
);

CREATE TABLE approvals (
    id          TEXT COLLATE "C" PRIMARY KEY,
    tenant      TEXT COLLATE "C" NOT NULL,
    session_id  TEXT COLLATE "C" NOT NULL,
    turn_id     TEXT COLLATE "C" NOT NULL,
    status      TEXT NOT NULL,
    summary     TEXT NOT NULL
);
CREATE INDEX approvals_by_tenant ON approvals (tenant, status, id);
CREATE INDEX approvals_by_turn ON approvals (session_id, turn_id, status);

CREATE TABLE settings (
    key    TEXT COLLATE "C" PRIMARY KEY,
    value  TEXT NOT NULL
);

CREATE TABLE model_usage (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts_ms          BIGINT NOT NULL,
    tenant         TEXT COLLATE "C" NOT NULL,
    agent          TEXT COLLATE "C" NOT NULL,
    session_id     TEXT COLLATE "C",
    turn_id        TEXT COLLATE "C",
    source         TEXT NOT NULL,
    route          TEXT NOT NULL,
    provider       TEXT NOT NULL,
    model          TEXT NOT NULL,
    input_tokens   BIGINT NOT NULL,
    output_tokens  BIGINT NOT NULL,
    cached_tokens  BIGINT NOT NULL,
    cost_usd       DOUBLE PRECISION NOT NULL,
    latency_us     BIGINT NOT NULL,
    estimated      BIGINT NOT NULL
);
CREATE INDEX model_usage_by_tenant ON model_usage (tenant, ts_ms);

CREATE TABLE budgets (
    id      TEXT COLLATE "C" PRIMARY KEY,
    tenant  TEXT COLLATE "C" NOT NULL,
    body    TEXT NOT NULL
);
CREATE INDEX budgets_by_tenant ON budgets (tenant, id);

CREATE TABLE spend_daily (
    tenant          TEXT COLLATE "C" NOT NULL,
    day             BIGINT NOT NULL,
    agent           TEXT COLLATE "C" NOT NULL,
    tokens          BIGINT NOT NULL,
    cost_usd        DOUBLE PRECISION NOT NULL,
    tool_calls      BIGINT NOT NULL,
    steps           BIGINT NOT NULL,
    sandbox_cpu_us  BIGINT NOT NULL,
    PRIMARY KEY (tenant, day, agent)
);
"#,
    r#"
CREATE TABLE nodes (
    id            TEXT COLLATE "C" PRIMARY KEY,
    started_ms    BIGINT NOT NULL,
    heartbeat_ms  BIGINT NOT NULL,
    draining      BIGINT NOT NULL DEFAULT 0
);
"#,
];

/// Brings the schema up to date.
pub fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let supported = MIGRATIONS.len() as i64;
    let mut tx = client.transaction().map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).map_err(pg)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS agentrt_schema (version BIGINT NOT NULL)").map_err(pg)?;
    let found: i64 = match tx.query_opt("SELECT version FROM agentrt_schema", &[]).map_err(pg)? {
        Some(r) => r.get(0),
        None => {
            tx.execute("INSERT INTO agentrt_schema (version) VALUES (0)", &[]).map_err(pg)?;
            0
        }
    };
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(sql).map_err(pg)?;
        tx.execute("UPDATE agentrt_schema SET version = $1", &[&(i as i64 + 1)]).map_err(pg)?;
    }
    tx.commit().map_err(pg)
}
