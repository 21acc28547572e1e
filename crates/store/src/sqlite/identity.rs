//! Tenants, API keys (stored as hashes), policy versions and node settings.

use agentrt_types::time::now_ms;
use agentrt_types::{KeyId, Role};
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use super::schema::db;
use crate::{ApiKey, PolicyVersion, StoreError, Tenant};

pub fn create_tenant(tx: &Transaction<'_>, name: &str) -> Result<Tenant, StoreError> {
    let created_ms = now_ms();
    let n = tx
        .execute("INSERT INTO tenants (name, created_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING", params![name, created_ms])
        .map_err(db)?;
    if n == 0 {
        return Err(StoreError::Conflict(format!("tenant {name:?} already exists")));
    }
    Ok(Tenant { name: name.to_owned(), created_ms, tool_calls_per_second: None })
}

fn tenant_row(r: &Row<'_>) -> rusqlite::Result<Tenant> {
    Ok(Tenant { name: r.get(0)?, created_ms: r.get(1)?, tool_calls_per_second: r.get(2)? })
}

/// Sets a tenant's limits; `None` if there is no such tenant.
pub fn set_tenant_limits(tx: &Transaction<'_>, name: &str, tool_calls_per_second: Option<f64>) -> Result<Option<Tenant>, StoreError> {
    tx.execute("UPDATE tenants SET tool_calls_per_second = ?2 WHERE name = ?1", params![name, tool_calls_per_second]).map_err(db)?;
    get_tenant(tx, name)
}

pub fn get_tenant(conn: &Connection, name: &str) -> Result<Option<Tenant>, StoreError> {
    conn.prepare_cached("SELECT name, created_ms, tool_calls_per_second FROM tenants WHERE name = ?1")
        .map_err(db)?
        .query_row(params![name], tenant_row)
        .optional()
        .map_err(db)
}

pub fn list_tenants(conn: &Connection) -> Result<Vec<Tenant>, StoreError> {
    let mut stmt = conn.prepare("SELECT name, created_ms, tool_calls_per_second FROM tenants ORDER BY name").map_err(db)?;
    let rows = stmt.query_map([], tenant_row).map_err(db)?;
    rows.map(|r| r.map_err(db)).collect()
}

pub fn create_api_key(tx: &Transaction<'_>, key: &ApiKey, hash: &str) -> Result<(), StoreError> {
    if get_tenant(tx, &key.tenant)?.is_none() {
        return Err(StoreError::NotFound(format!("tenant {:?} not found", key.tenant)));
    }
    tx.execute(
        "INSERT INTO api_keys (id, tenant, name, role, hash, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![key.id.as_str(), key.tenant, key.name, key.role.as_str(), hash, key.created_ms],
    )
    .map_err(db)?;
    Ok(())
}

const KEY_COLUMNS: &str = "id, tenant, name, role, created_ms, revoked_ms";

fn key_row(r: &Row<'_>) -> rusqlite::Result<(String, String, String, String, i64, Option<i64>)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
}

fn to_key(
    (id, tenant, name, role, created_ms, revoked_ms): (String, String, String, String, i64, Option<i64>),
) -> Result<ApiKey, StoreError> {
    let id = KeyId::parse(&id).ok_or_else(|| StoreError::Corrupt(format!("bad key id {id:?}")))?;
    let role = Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("bad role {role:?}")))?;
    Ok(ApiKey { id, tenant, name, role, created_ms, revoked_ms })
}

pub fn api_key_by_hash(conn: &Connection, hash: &str) -> Result<Option<ApiKey>, StoreError> {
    let row = conn
        .prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = ?1"))
        .map_err(db)?
        .query_row(params![hash], key_row)
        .optional()
        .map_err(db)?;
    row.map(to_key).transpose()
}

pub fn list_api_keys(conn: &Connection, tenant: &str) -> Result<Vec<ApiKey>, StoreError> {
    let mut stmt = conn.prepare(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant = ?1 ORDER BY id")).map_err(db)?;
    let rows = stmt.query_map(params![tenant], key_row).map_err(db)?;
    rows.map(|r| to_key(r.map_err(db)?)).collect()
}

pub fn count_active_api_keys(conn: &Connection) -> Result<u64, StoreError> {
    conn.query_row("SELECT COUNT(*) FROM api_keys WHERE revoked_ms IS NULL", [], |r| r.get::<_, i64>(0)).map(|n| n as u64).map_err(db)
}

/// Revokes a key of `tenant`; `None` if the tenant has no such key.
pub fn revoke_api_key(tx: &Transaction<'_>, tenant: &str, id: &KeyId) -> Result<Option<ApiKey>, StoreError> {
    tx.execute(
        "UPDATE api_keys SET revoked_ms = ?3 WHERE tenant = ?1 AND id = ?2 AND revoked_ms IS NULL",
        params![tenant, id.as_str(), now_ms()],
    )
    .map_err(db)?;
    let row = tx
        .query_row(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant = ?1 AND id = ?2"), params![tenant, id.as_str()], key_row)
        .optional()
        .map_err(db)?;
    row.map(to_key).transpose()
}

pub fn put_policies(tx: &Transaction<'_>, tenant: &str, text: &str, schema: Option<&str>, by: &str) -> Result<PolicyVersion, StoreError> {
    let latest: Option<u32> =
        tx.query_row("SELECT MAX(version) FROM policies WHERE tenant = ?1", params![tenant], |r| r.get(0)).map_err(db)?;
    let p = PolicyVersion {
        tenant: tenant.to_owned(),
        version: latest.unwrap_or(0) + 1,
        text: text.to_owned(),
        schema: schema.map(str::to_owned),
        created_ms: now_ms(),
        created_by: by.to_owned(),
    };
    tx.execute(
        "INSERT INTO policies (tenant, version, text, schema, created_ms, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![p.tenant, p.version, p.text, p.schema, p.created_ms, p.created_by],
    )
    .map_err(db)?;
    Ok(p)
}

pub fn get_policies(conn: &Connection, tenant: &str, version: Option<u32>) -> Result<Option<PolicyVersion>, StoreError> {
    let sql = "SELECT version, text, schema, created_ms, created_by FROM policies WHERE tenant = ?1 AND (?2 IS NULL OR version = ?2)
               ORDER BY version DESC LIMIT 1";
    conn.prepare_cached(sql)
        .map_err(db)?
        .query_row(params![tenant, version], |r| {
            Ok(PolicyVersion {
                tenant: tenant.to_owned(),
                version: r.get(0)?,
                text: r.get(1)?,
                schema: r.get(2)?,
                created_ms: r.get(3)?,
                created_by: r.get(4)?,
            })
        })
        .optional()
        .map_err(db)
}

/// The setting's value, storing `init` first if it has none.
pub fn setting_or_init(tx: &Transaction<'_>, key: &str, init: &str) -> Result<String, StoreError> {
    tx.execute("INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT DO NOTHING", params![key, init]).map_err(db)?;
    tx.query_row("SELECT value FROM settings WHERE key = ?1", params![key], |r| r.get(0)).map_err(db)
}
