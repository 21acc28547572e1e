//! REST handlers. Each parses its input, calls the engine, and maps the
//! result; errors go through [`ApiError`].

use std::time::Duration;

use agentrt_engine::{OnBusy, SubmitTurn};
use agentrt_store::SessionFilter;
use agentrt_types::spec::SpecFormat;
use agentrt_types::{SessionId, SessionStatus, SessionSummary};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use agentrt_types::Role;

use crate::auth::{Caller, TenantSession};
use crate::extract::{turn_id, JsonBody, QueryArgs};
use crate::{ApiError, AppState, OPENAPI};

/// Longest `?wait=` honoured, in seconds.
const MAX_WAIT_SECONDS: f64 = 300.0;
/// Default and largest page size of session lists.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    s.engine.list_tenants().await?;
    Ok(Json(json!({"status": "ready", "node": s.engine.node_id()})))
}

pub async fn metrics(State(s): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require_system_admin()?;
    let text = s.engine.metrics_text().await?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
}

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not accept that method; see /v1/openapi.json")
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such endpoint; see /v1/openapi.json")
}

// ----- agents -----

pub async fn put_agent(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let body =
        body.map_err(|r| ApiError::new(r.status(), "body_too_large", format!("the spec must be at most {} bytes", crate::MAX_BODY_BYTES)))?;
    let text = std::str::from_utf8(&body).map_err(|_| ApiError::bad_request("invalid_body", "the spec must be UTF-8 text"))?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let format = if content_type.contains("json") {
        SpecFormat::Json
    } else if content_type.contains("toml") {
        SpecFormat::Toml
    } else if text.trim_start().starts_with('{') {
        SpecFormat::Json
    } else {
        SpecFormat::Toml
    };
    let version = s.engine.put_agent(caller.tenant(), &name, text, format).await?;
    Ok((StatusCode::CREATED, Json(version)).into_response())
}

pub async fn list_agents(State(s): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"agents": s.engine.list_agents(caller.tenant()).await?})))
}

pub async fn get_agent(State(s): State<AppState>, caller: Caller, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.engine.get_agent(caller.tenant(), &name, None).await?)))
}

pub async fn get_agent_version(
    State(s): State<AppState>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let v: u32 = version
        .parse()
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "agent_version_not_found", format!("version {version:?} is not a number")))?;
    Ok(Json(json!(s.engine.get_agent(caller.tenant(), &name, Some(v)).await?)))
}

// ----- sessions -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    agent: String,
    agent_version: Option<u32>,
    #[serde(default)]
    metadata: Value,
}

pub async fn create_session(
    State(s): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<CreateSession>,
) -> Result<Response, ApiError> {
    let session = s.engine.create_session(caller.tenant(), &req.agent, req.agent_version, req.metadata).await?;
    Ok((StatusCode::CREATED, Json(session)).into_response())
}

pub async fn get_session(TenantSession(_, summary): TenantSession) -> Json<Value> {
    Json(json!(summary))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListSessions {
    agent: Option<String>,
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

pub async fn list_sessions(
    State(s): State<AppState>,
    caller: Caller,
    QueryArgs(q): QueryArgs<ListSessions>,
) -> Result<Json<Value>, ApiError> {
    let status = match q.status.as_deref() {
        None => None,
        Some(raw) => Some(SessionStatus::parse(raw).ok_or_else(|| {
            ApiError::bad_request("invalid_query", format!("status {raw:?} is not one of idle, running, waiting_approval, terminated"))
        })?),
    };
    let before = match q.cursor.as_deref() {
        None => None,
        Some(raw) => Some(
            SessionId::parse(raw)
                .ok_or_else(|| ApiError::bad_request("invalid_cursor", "cursor must be a next_cursor value from a previous page"))?,
        ),
    };
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request("invalid_query", format!("limit must be between 1 and {MAX_PAGE}")));
    }
    let filter = SessionFilter { tenant: Some(caller.tenant().to_owned()), agent: q.agent, status, before, limit };
    let sessions = s.engine.list_sessions(&filter).await?;
    let next_cursor = if sessions.len() == limit { sessions.last().map(|l| l.id.to_string()) } else { None };
    Ok(Json(json!({"sessions": sessions, "next_cursor": next_cursor})))
}

pub async fn terminate_session(State(s): State<AppState>, TenantSession(id, _): TenantSession) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.engine.terminate_session(&id, "terminated by client").await?)))
}

pub async fn verify_session(State(s): State<AppState>, TenantSession(id, _): TenantSession) -> Result<Json<Value>, ApiError> {
    Ok(Json(match s.engine.verify(&id).await? {
        Ok((events, head_hash)) => json!({"session_id": id, "ok": true, "events": events, "head_hash": head_hash}),
        Err(e) => json!({"session_id": id, "ok": false, "error": e.to_string()}),
    }))
}

// ----- turns -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitTurnBody {
    input: String,
    #[serde(default)]
    on_busy: OnBusy,
    /// Lend the session to another agent for this turn (operators only).
    #[serde(default)]
    borrow: Option<agentrt_types::event::BorrowTerms>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    wait: Option<f64>,
}

fn wait_duration(q: &WaitQuery) -> Result<Option<Duration>, ApiError> {
    match q.wait {
        None => Ok(None),
        Some(w) if w.is_finite() && w >= 0.0 => Ok(Some(Duration::from_secs_f64(w.min(MAX_WAIT_SECONDS)))),
        Some(_) => Err(ApiError::bad_request("invalid_query", "wait must be a number of seconds >= 0")),
    }
}

pub async fn submit_turn(
    State(s): State<AppState>,
    caller: Caller,
    TenantSession(id, _): TenantSession,
    QueryArgs(q): QueryArgs<WaitQuery>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<SubmitTurnBody>,
) -> Result<Response, ApiError> {
    let wait = wait_duration(&q)?;
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            Some(v.to_str().map_err(|_| ApiError::bad_request("invalid_header", "Idempotency-Key must be visible ASCII"))?.to_owned())
        }
    };
    // An invalid traceparent is ignored, as W3C trace context asks.
    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned);
    if body.borrow.is_some() {
        caller.require(Role::Operator)?;
    }
    let submit = SubmitTurn { input: body.input, on_busy: body.on_busy, idempotency_key, traceparent, borrow: body.borrow };
    let (mut turn, created) = s.engine.submit_turn(&id, submit).await?;
    if let Some(wait) = wait {
        turn = s.engine.wait_turn(&id, &turn.turn_id, wait).await?;
    }
    let status = if turn.status.is_final() { StatusCode::OK } else { StatusCode::ACCEPTED };
    let mut resp = (status, Json(turn)).into_response();
    if !created {
        resp.headers_mut().insert("idempotent-replayed", "true".parse().expect("static header value"));
    }
    Ok(resp)
}

pub async fn get_turn(
    State(s): State<AppState>,
    TenantSession(id, _): TenantSession,
    Path((_, turn)): Path<(String, String)>,
    QueryArgs(q): QueryArgs<WaitQuery>,
) -> Result<Json<Value>, ApiError> {
    let turn = turn_id(&turn)?;
    let summary = match wait_duration(&q)? {
        Some(wait) => s.engine.wait_turn(&id, &turn, wait).await?,
        None => s.engine.get_turn(&id, &turn).await?,
    };
    Ok(Json(json!(summary)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoverBody {
    /// The agent to hand over to.
    agent: String,
    /// Only if this agent still runs the session.
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// Hands the session over to another agent of the tenant.
pub async fn handover(
    State(s): State<AppState>,
    caller: Caller,
    TenantSession(id, _): TenantSession,
    JsonBody(b): JsonBody<HandoverBody>,
) -> Result<Json<SessionSummary>, ApiError> {
    let by = caller.require(Role::Operator)?;
    Ok(Json(s.engine.hand_over(by, &id, &b.agent, b.from.as_deref(), b.reason).await?))
}

pub async fn cancel_turn(
    State(s): State<AppState>,
    TenantSession(id, _): TenantSession,
    Path((_, turn)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let turn = turn_id(&turn)?;
    let summary = s.engine.cancel_turn(&id, &turn).await?;
    Ok((StatusCode::ACCEPTED, Json(summary)).into_response())
}
