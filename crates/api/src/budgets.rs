//! Budgets: `GET`/`POST /v1/budgets`, `GET`/`PATCH`/`DELETE
//! /v1/budgets/{id}`, and `POST /v1/sessions/{id}/budget-override`, which
//! lets a paused turn go past a budget.

use agentrt_engine::budgets::NewBudget;
use agentrt_types::{BudgetId, Role};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::extract::{session_id, JsonBody};
use crate::{ApiError, AppState};

fn parse_budget_id(raw: &str) -> Result<BudgetId, ApiError> {
    BudgetId::parse(raw).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("budget {raw:?} not found")))
}

pub async fn create(State(s): State<AppState>, caller: Caller, JsonBody(b): JsonBody<NewBudget>) -> Result<Response, ApiError> {
    let by = caller.require(Role::Admin)?;
    Ok((StatusCode::CREATED, Json(s.engine.create_budget(by, b).await?)).into_response())
}

pub async fn list(State(s): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"budgets": s.engine.list_budgets(caller.tenant()).await?})))
}

pub async fn get(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.engine.get_budget(caller.tenant(), &parse_budget_id(&id)?).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Patch {
    limit: f64,
}

/// Sets a budget's limit; turns it paused go on if it now allows them.
pub async fn patch(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<Patch>,
) -> Result<Json<Value>, ApiError> {
    let by = caller.require(Role::Admin)?;
    Ok(Json(json!(s.engine.set_budget_limit(by, &parse_budget_id(&id)?, b.limit).await?)))
}

pub async fn delete(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let by = caller.require(Role::Admin)?;
    Ok(Json(json!(s.engine.delete_budget(by, &parse_budget_id(&id)?).await?)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// The budget to go past; every budget when absent.
    budget_id: Option<String>,
    comment: Option<String>,
}

/// Lets the session's running turn go past a budget until it ends.
pub async fn override_session(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let by = caller.require(Role::Operator)?;
    let id = session_id(&id)?;
    let b: Override = if body.iter().all(u8::is_ascii_whitespace) {
        Override::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("invalid_body", format!("expected {{\"budget_id\"?, \"comment\"?}}: {e}")))?
    };
    let budget = b.budget_id.as_deref().map(parse_budget_id).transpose()?;
    Ok(Json(json!(s.engine.override_budget(by, &id, budget, b.comment).await?)))
}
