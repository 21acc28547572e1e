//! The cluster's nodes: who is up, how many sessions each holds, and
//! draining one before it is taken down. Admins of the default tenant only.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::{ApiError, AppState};

/// `GET /v1/nodes`.
pub async fn list(State(s): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_system_admin()?;
    Ok(Json(json!({"nodes": s.engine.nodes().await?})))
}

/// `POST /v1/nodes/{id}/drain`: its sessions move to other nodes at their
/// next turn boundary; it takes no new ones.
pub async fn drain(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    caller.require_system_admin()?;
    Ok(Json(json!(s.engine.drain_node(&id, true).await?)))
}

/// `DELETE /v1/nodes/{id}/drain`: the node takes sessions again.
pub async fn undrain(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    caller.require_system_admin()?;
    Ok(Json(json!(s.engine.drain_node(&id, false).await?)))
}
