//! Tenants, API keys (stored as hashes), policy versions and node settings.

use agentrt_types::time::now_ms;
use agentrt_types::{KeyId, Role};

use super::{args, Db, Row};
use crate::{ApiKey, PolicyVersion, StoreError, Tenant};

pub fn create_tenant(tx: &dyn Db, name: &str) -> Result<Tenant, StoreError> {
    let created_ms = now_ms();
    let n = tx.exec("INSERT INTO tenants (name, created_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING", args![name, created_ms])?;
    if n == 0 {
        return Err(StoreError::Conflict(format!("tenant {name:?} already exists")));
    }
    Ok(Tenant { name: name.to_owned(), created_ms, tool_calls_per_second: None })
}

fn tenant_row(r: &Row) -> Result<Tenant, StoreError> {
    Ok(Tenant { name: r.text(0)?, created_ms: r.int(1)?, tool_calls_per_second: r.opt_real(2)? })
}

/// Sets a tenant's limits; `None` if there is no such tenant.
pub fn set_tenant_limits(tx: &dyn Db, name: &str, tool_calls_per_second: Option<f64>) -> Result<Option<Tenant>, StoreError> {
    tx.exec("UPDATE tenants SET tool_calls_per_second = ?2 WHERE name = ?1", args![name, tool_calls_per_second])?;
    get_tenant(tx, name)
}

pub fn get_tenant(conn: &dyn Db, name: &str) -> Result<Option<Tenant>, StoreError> {
    conn.row("SELECT name, created_ms, tool_calls_per_second FROM tenants WHERE name = ?1", args![name])?
        .map(|r| tenant_row(&r))
        .transpose()
}

pub fn list_tenants(conn: &dyn Db) -> Result<Vec<Tenant>, StoreError> {
    conn.rows("SELECT name, created_ms, tool_calls_per_second FROM tenants ORDER BY name", args![])?.iter().map(tenant_row).collect()
}

pub fn create_api_key(tx: &dyn Db, key: &ApiKey, hash: &str) -> Result<(), StoreError> {
    if get_tenant(tx, &key.tenant)?.is_none() {
        return Err(StoreError::NotFound(format!("tenant {:?} not found", key.tenant)));
    }
    tx.exec(
        "INSERT INTO api_keys (id, tenant, name, role, hash, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        args![key.id.as_str(), key.tenant.as_str(), key.name.as_str(), key.role.as_str(), hash, key.created_ms],
    )?;
    Ok(())
}

const KEY_COLUMNS: &str = "id, tenant, name, role, created_ms, revoked_ms";

fn to_key(r: &Row) -> Result<ApiKey, StoreError> {
    let (id, role) = (r.text(0)?, r.text(3)?);
    let id = KeyId::parse(&id).ok_or_else(|| StoreError::Corrupt(format!("bad key id {id:?}")))?;
    let role = Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("bad role {role:?}")))?;
    Ok(ApiKey { id, tenant: r.text(1)?, name: r.text(2)?, role, created_ms: r.int(4)?, revoked_ms: r.opt_int(5)? })
}

pub fn api_key_by_hash(conn: &dyn Db, hash: &str) -> Result<Option<ApiKey>, StoreError> {
    conn.row(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = ?1"), args![hash])?.map(|r| to_key(&r)).transpose()
}

pub fn list_api_keys(conn: &dyn Db, tenant: &str) -> Result<Vec<ApiKey>, StoreError> {
    conn.rows(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant = ?1 ORDER BY id"), args![tenant])?.iter().map(to_key).collect()
}

pub fn count_active_api_keys(conn: &dyn Db) -> Result<u64, StoreError> {
    let row = conn.row("SELECT COUNT(*) FROM api_keys WHERE revoked_ms IS NULL", args![])?;
    Ok(row.map(|r| r.int(0)).transpose()?.unwrap_or(0) as u64)
}

/// Revokes a key of `tenant`; `None` if the tenant has no such key.
pub fn revoke_api_key(tx: &dyn Db, tenant: &str, id: &KeyId) -> Result<Option<ApiKey>, StoreError> {
    tx.exec(
        "UPDATE api_keys SET revoked_ms = ?3 WHERE tenant = ?1 AND id = ?2 AND revoked_ms IS NULL",
        args![tenant, id.as_str(), now_ms()],
    )?;
    tx.row(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant = ?1 AND id = ?2"), args![tenant, id.as_str()])?
        .map(|r| to_key(&r))
        .transpose()
}

pub fn put_policies(tx: &dyn Db, tenant: &str, text: &str, schema: Option<&str>, by: &str) -> Result<PolicyVersion, StoreError> {
    let latest = tx.row("SELECT MAX(version) FROM policies WHERE tenant = ?1", args![tenant])?.map(|r| r.opt_int(0)).transpose()?.flatten();
    let p = PolicyVersion {
        tenant: tenant.to_owned(),
        version: latest.unwrap_or(0) as u32 + 1,
        text: text.to_owned(),
        schema: schema.map(str::to_owned),
        created_ms: now_ms(),
        created_by: by.to_owned(),
    };
    tx.exec(
        "INSERT INTO policies (tenant, version, text, schema, created_ms, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        args![p.tenant.as_str(), p.version, p.text.as_str(), p.schema.as_deref(), p.created_ms, p.created_by.as_str()],
    )?;
    Ok(p)
}

pub fn get_policies(conn: &dyn Db, tenant: &str, version: Option<u32>) -> Result<Option<PolicyVersion>, StoreError> {
    let sql = "SELECT version, text, schema, created_ms, created_by FROM policies WHERE tenant = ?1 AND (CAST(?2 AS BIGINT) IS NULL OR version = ?2)
               ORDER BY version DESC LIMIT 1";
    conn.row(sql, args![tenant, version])?
        .map(|r| {
            Ok(PolicyVersion {
                tenant: tenant.to_owned(),
                version: r.u32(0)?,
                text: r.text(1)?,
                schema: r.opt_text(2)?,
                created_ms: r.int(3)?,
                created_by: r.text(4)?,
            })
        })
        .transpose()
}

/// The setting's value, storing `init` first if it has none.
pub fn setting_or_init(tx: &dyn Db, key: &str, init: &str) -> Result<String, StoreError> {
    tx.exec("INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT DO NOTHING", args![key, init])?;
    tx.text("SELECT value FROM settings WHERE key = ?1", args![key])?
        .ok_or_else(|| StoreError::Database(format!("setting {key:?} vanished")))
}
