//! Identity and governance endpoints: who am I, tenants, API keys, policies,
//! approvals, session credentials and audit export.

use agentrt_store::{ApprovalFilter, ApprovalStatus, UsageGroup, UsageQuery};
use agentrt_types::{ApprovalId, KeyId, Role};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Caller, TenantSession};
use crate::extract::{JsonBody, QueryArgs};
use crate::{ApiError, AppState};

pub async fn whoami(caller: Caller) -> Json<Value> {
    Json(json!({"principal": caller.0, "tenant": caller.tenant(), "display": caller.0.display()}))
}

// ----- tenants -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    name: String,
}

pub async fn create_tenant(State(s): State<AppState>, caller: Caller, JsonBody(b): JsonBody<NewTenant>) -> Result<Response, ApiError> {
    caller.require_system_admin()?;
    Ok((StatusCode::CREATED, Json(s.engine.create_tenant(&b.name).await?)).into_response())
}

pub async fn list_tenants(State(s): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_system_admin()?;
    Ok(Json(json!({"tenants": s.engine.list_tenants().await?})))
}

/// A tenant: its own admins and the default tenant's admins may read it.
pub async fn get_tenant(State(s): State<AppState>, caller: Caller, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    if name != caller.tenant() {
        caller.require_system_admin().map_err(|_| tenant_not_found(&name))?;
    }
    Ok(Json(json!(s.engine.get_tenant(&name).await?)))
}

fn tenant_not_found(name: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("tenant {name:?} not found"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    /// Tool calls per second over all the tenant's sessions; `null` lifts it.
    tool_calls_per_second: Option<f64>,
}

/// Sets a tenant's limits (admins of the default tenant).
pub async fn patch_tenant(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(b): JsonBody<TenantLimits>,
) -> Result<Json<Value>, ApiError> {
    caller.require_system_admin()?;
    Ok(Json(json!(s.engine.set_tenant_limits(&name, b.tool_calls_per_second).await?)))
}

// ----- API keys -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    name: String,
    role: String,
    /// Another tenant (default-tenant admins only).
    tenant: Option<String>,
}

/// The tenant a key request acts on: the caller's own, or (for admins of
/// the default tenant) the one named.
fn key_tenant<'a>(caller: &'a Caller, asked: Option<&'a str>) -> Result<&'a str, ApiError> {
    caller.require(Role::Admin)?;
    match asked {
        Some(t) if t != caller.tenant() => caller.require_system_admin().map(|_| t),
        _ => Ok(caller.tenant()),
    }
}

pub async fn create_key(State(s): State<AppState>, caller: Caller, JsonBody(b): JsonBody<NewKey>) -> Result<Response, ApiError> {
    let tenant = key_tenant(&caller, b.tenant.as_deref())?;
    let role = Role::parse(&b.role).ok_or_else(|| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", format!("role {:?} is not admin or operator", b.role))
    })?;
    Ok((StatusCode::CREATED, Json(s.engine.create_api_key(tenant, &b.name, role).await?)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysQuery {
    tenant: Option<String>,
}

pub async fn list_keys(State(s): State<AppState>, caller: Caller, QueryArgs(q): QueryArgs<KeysQuery>) -> Result<Json<Value>, ApiError> {
    let tenant = key_tenant(&caller, q.tenant.as_deref())?;
    Ok(Json(json!({"keys": s.engine.list_api_keys(tenant).await?})))
}

/// Revokes a key of the caller's tenant, or (`?tenant=`, default-tenant
/// admins only) of another tenant.
pub async fn revoke_key(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryArgs(q): QueryArgs<KeysQuery>,
) -> Result<Json<Value>, ApiError> {
    let tenant = key_tenant(&caller, q.tenant.as_deref())?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("API key {id:?} not found"));
    let key_id = KeyId::parse(&id).ok_or_else(not_found)?;
    Ok(Json(json!(s.engine.revoke_api_key(tenant, &key_id).await?)))
}

// ----- policies -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutPolicies {
    /// Cedar policies.
    policies: String,
    /// Extra Cedar schema declarations, e.g. actions of MCP tools.
    schema: Option<String>,
}

pub async fn put_policies(State(s): State<AppState>, caller: Caller, JsonBody(b): JsonBody<PutPolicies>) -> Result<Response, ApiError> {
    let by = caller.require(Role::Admin)?;
    let version = s.engine.put_policies(by, &b.policies, b.schema.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(version)).into_response())
}

pub async fn get_policies(State(s): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.engine.get_policies(caller.tenant(), None).await?)))
}

pub async fn get_policy_version(State(s): State<AppState>, caller: Caller, Path(v): Path<String>) -> Result<Json<Value>, ApiError> {
    let v: u32 = v.parse().map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("policy version {v:?} not found")))?;
    Ok(Json(json!(s.engine.get_policies(caller.tenant(), Some(v)).await?)))
}

/// The Cedar schema policies are validated against, as text.
pub async fn policy_schema(State(s): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let extra = match s.engine.get_policies(caller.tenant(), None).await {
        Ok(p) => p.schema,
        Err(_) => None,
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], s.engine.policy_schema(extra.as_deref())).into_response())
}

// ----- approvals -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsQuery {
    status: Option<String>,
    session: Option<String>,
    limit: Option<usize>,
}

pub async fn list_approvals(
    State(s): State<AppState>,
    caller: Caller,
    QueryArgs(q): QueryArgs<ApprovalsQuery>,
) -> Result<Json<Value>, ApiError> {
    let status = match q.status.as_deref() {
        None => None,
        Some(raw) => Some(ApprovalStatus::parse(raw).ok_or_else(|| {
            ApiError::bad_request("invalid_query", format!("status {raw:?} is not one of pending, approved, denied, expired, cancelled"))
        })?),
    };
    let session = match q.session.as_deref() {
        None => None,
        Some(raw) => Some(crate::extract::session_id(raw)?),
    };
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("invalid_query", "limit must be between 1 and 1000"));
    }
    let filter = ApprovalFilter { tenant: caller.tenant().to_owned(), status, session, limit };
    Ok(Json(json!({"approvals": s.engine.list_approvals(&filter).await?})))
}

fn approval_id(raw: &str) -> Result<ApprovalId, ApiError> {
    ApprovalId::parse(raw).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("approval {raw:?} not found")))
}

pub async fn get_approval(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.engine.get_approval(caller.tenant(), &approval_id(&id)?).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decide {
    decision: String,
    comment: Option<String>,
}

pub async fn decide_approval(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<Decide>,
) -> Result<Json<Value>, ApiError> {
    let by = caller.require(Role::Operator)?;
    let approve = match b.decision.as_str() {
        "approve" => true,
        "deny" => false,
        other => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                format!("decision {other:?} is not \"approve\" or \"deny\""),
            ))
        }
    };
    Ok(Json(json!(s.engine.decide_approval(by, &approval_id(&id)?, approve, b.comment).await?)))
}

// ----- usage -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageArgs {
    group_by: Option<String>,
    /// Unix ms, inclusive.
    from: Option<i64>,
    /// Unix ms, exclusive.
    to: Option<i64>,
}

/// Model usage totals of the caller's tenant (every tenant's for admins of
/// the default tenant grouping by tenant).
pub async fn usage(State(s): State<AppState>, caller: Caller, QueryArgs(q): QueryArgs<UsageArgs>) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Operator)?;
    let raw = q.group_by.as_deref().unwrap_or("agent");
    let group_by: UsageGroup = serde_json::from_value(json!(raw)).map_err(|_| {
        ApiError::bad_request("invalid_query", format!("group_by {raw:?} is not one of tenant, agent, session, route, model"))
    })?;
    let all_tenants = group_by == UsageGroup::Tenant && caller.0.is_system_admin();
    let query = UsageQuery {
        tenant: (!all_tenants).then(|| caller.tenant().to_owned()),
        group_by,
        from_ms: q.from.unwrap_or(0),
        to_ms: q.to.unwrap_or(i64::MAX),
    };
    if query.from_ms >= query.to_ms {
        return Err(ApiError::bad_request("invalid_query", "from must be before to (both unix milliseconds)"));
    }
    Ok(Json(json!({"group_by": raw, "usage": s.engine.usage(&query).await?})))
}

// ----- session credentials and audit -----

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CredentialRequest {
    ttl_seconds: Option<u64>,
}

pub async fn issue_credential(
    State(s): State<AppState>,
    caller: Caller,
    TenantSession(id, _): TenantSession,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    let ttl = if body.is_empty() {
        None
    } else {
        let b: CredentialRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("invalid_body", format!("expected {{\"ttl_seconds\": N}}: {e}")))?;
        b.ttl_seconds
    };
    Ok((StatusCode::CREATED, Json(s.engine.issue_session_credential(&id, ttl).await?)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Unix milliseconds: start at the first event at or after this time.
    since: Option<i64>,
}

/// The session's log with its hash chain, as JSON Lines.
pub async fn audit(
    State(s): State<AppState>,
    TenantSession(id, _): TenantSession,
    QueryArgs(q): QueryArgs<AuditQuery>,
) -> Result<Response, ApiError> {
    let mut out = String::new();
    for record in s.engine.audit_records(&id, q.since).await? {
        out.push_str(&serde_json::to_string(&record).map_err(|e| ApiError::internal(&e))?);
        out.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from(out)).into_response())
}
