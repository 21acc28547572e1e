//! Tenants, API keys and authentication.
//!
//! An API key is `art_` followed by 64 hex digits of randomness, shown once
//! when created; the store keeps only its SHA-256 (a fast hash is enough for
//! a 256-bit random secret, and lets a key be found by its hash).

use agentrt_store::{ApiKey, StoreError, Tenant};
use agentrt_types::tenant::is_tenant_name;
use agentrt_types::time::now_ms;
use agentrt_types::{KeyId, Principal, Role, DEFAULT_TENANT};
use sha2::{Digest, Sha256};

use crate::{Engine, EngineError};

/// Prefix of every API key secret.
pub const KEY_PREFIX: &str = "art_";

/// A key just created, with its secret (shown once, never stored).
#[derive(Clone, Debug, serde::Serialize)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: ApiKey,
    pub secret: String,
}

/// `n` bytes from the OS's secure random source, as hex.
pub(crate) fn random_hex(n: usize) -> Result<String, EngineError> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| EngineError::Internal(format!("no secure randomness: {e}")))?;
    Ok(hex::encode(buf))
}

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl Engine {
    /// Creates a tenant.
    pub async fn create_tenant(&self, name: &str) -> Result<Tenant, EngineError> {
        if !is_tenant_name(name) {
            return Err(EngineError::InvalidInput(format!("invalid tenant name {name:?}: use 1-64 lowercase letters, digits, '-' or '_'")));
        }
        self.inner.store.create_tenant(name).await.map_err(|e| match e {
            StoreError::Conflict(m) => EngineError::Conflict(m),
            other => other.into(),
        })
    }

    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, EngineError> {
        Ok(self.inner.store.list_tenants().await?)
    }

    pub async fn get_tenant(&self, name: &str) -> Result<Tenant, EngineError> {
        self.inner.store.get_tenant(name).await?.ok_or_else(|| EngineError::NotFound(format!("tenant {name:?} not found")))
    }

    /// Sets how many tool calls per second a tenant's sessions may make
    /// together on this node; `None` lifts the limit. Applies from the
    /// next turn (or resume) of each session.
    pub async fn set_tenant_limits(&self, name: &str, tool_calls_per_second: Option<f64>) -> Result<Tenant, EngineError> {
        if tool_calls_per_second.is_some_and(|r| !r.is_finite() || r <= 0.0) {
            return Err(EngineError::InvalidInput("tool_calls_per_second must be a number above 0, or null for no limit".into()));
        }
        self.inner
            .store
            .set_tenant_limits(name, tool_calls_per_second)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("tenant {name:?} not found")))
    }

    /// Creates an API key for a tenant; the secret is in the result only.
    pub async fn create_api_key(&self, tenant: &str, name: &str, role: Role) -> Result<CreatedKey, EngineError> {
        if name.trim().is_empty() || name.len() > 100 {
            return Err(EngineError::InvalidInput("key name must be 1 to 100 characters".into()));
        }
        let secret = format!("{KEY_PREFIX}{}", random_hex(32)?);
        let key = ApiKey {
            id: KeyId::generate(),
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            role,
            created_ms: now_ms(),
            revoked_ms: None,
        };
        self.inner.store.create_api_key(&key, &hash_secret(&secret)).await.map_err(|e| match e {
            StoreError::NotFound(m) => EngineError::NotFound(m),
            other => other.into(),
        })?;
        Ok(CreatedKey { key, secret })
    }

    pub async fn list_api_keys(&self, tenant: &str) -> Result<Vec<ApiKey>, EngineError> {
        Ok(self.inner.store.list_api_keys(tenant).await?)
    }

    /// Revokes a tenant's key; it stops working at once.
    pub async fn revoke_api_key(&self, tenant: &str, id: &KeyId) -> Result<ApiKey, EngineError> {
        let revoked = self.inner.store.revoke_api_key(tenant, id).await?;
        self.inner.key_cache.clear();
        revoked.ok_or_else(|| EngineError::NotFound(format!("API key {id} not found")))
    }

    /// On a store with no usable key, creates an admin key of the default
    /// tenant and returns its secret, so a fresh install can be used at once.
    pub async fn bootstrap_admin_key(&self) -> Result<Option<CreatedKey>, EngineError> {
        if self.inner.store.count_active_api_keys().await? > 0 {
            return Ok(None);
        }
        Ok(Some(self.create_api_key(DEFAULT_TENANT, "bootstrap admin", Role::Admin).await?))
    }

    /// Who presents this bearer token: an API key, or a session credential.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, EngineError> {
        if token.starts_with(KEY_PREFIX) {
            let hash = hash_secret(token);
            if let Some(known) = self.inner.key_cache.get(&hash) {
                return Ok(known);
            }
            let key = self.inner.store.api_key_by_hash(&hash).await?;
            return match key {
                Some(k) if k.revoked_ms.is_none() => {
                    let principal = Principal::Key { tenant: k.tenant, key_id: k.id, name: k.name, role: k.role };
                    self.inner.key_cache.insert(&hash, principal.clone());
                    Ok(principal)
                }
                Some(_) => Err(EngineError::Unauthorized("this API key has been revoked".into())),
                None => Err(EngineError::Unauthorized("unknown API key".into())),
            };
        }
        self.verify_session_credential(token).await
    }
}
