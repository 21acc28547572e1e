//! `POST /v1/gateway/openai/v1/chat/completions`: the model gateway's
//! OpenAI-compatible endpoint. Code inside a sandbox (the official `openai`
//! SDK, LangGraph, the OpenAI Agents SDK…) sets its base URL to
//! `…/v1/gateway/openai/v1` and its API key to its session credential; the
//! `model` it asks for names a route of the server config. Every call is
//! priced and recorded as the caller's usage (for a session credential, as
//! a `gateway.called` event in the session's log). A call that a budget
//! refuses is answered 429 `budget_exceeded`, naming the budget.

use agentrt_gateway::{CallRecord, GatewayError, Reply};
use agentrt_types::Principal;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::{ApiError, AppState};

/// Largest request accepted: long conversations and inline images are big.
pub const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;

pub async fn chat_completions(
    State(s): State<AppState>,
    caller: Caller,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body =
        body.map_err(|r| ApiError::new(r.status(), "body_too_large", format!("the request must be at most {MAX_REQUEST_BYTES} bytes")))?;
    let Some(gateway) = s.gateway.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_model_routes",
            "this server has no model routes; add [models.NAME] tables to its config file",
        ));
    };
    let request: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body must be a Chat Completions request in JSON: {e}")))?;
    if let Some(breach) = s.engine.gateway_breach(&caller.0).await? {
        let body = json!({"error": {"code": "budget_exceeded", "message": breach.to_string(), "budget": breach}});
        return Ok((StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response());
    }
    match gateway.chat(request).await {
        Ok(Reply::Json { body, record }) => {
            let route = record.route.clone();
            record_usage(&s, &caller.0, async move { Some(record) });
            Ok(([("x-agentrt-route", route)], Json(body)).into_response())
        }
        Ok(Reply::Stream { status, bytes, record }) => {
            record_usage(&s, &caller.0, async move { record.await.ok() });
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            Ok((status, [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], Body::from_stream(bytes))
                .into_response())
        }
        Err(GatewayError::NoRoute(name)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("no model route named {name:?}; this server has: {}", gateway.route_names().join(", ")),
        )),
        Err(e @ GatewayError::BadRequest(_)) => Err(ApiError::bad_request("invalid_request", e.to_string())),
        Err(GatewayError::Upstream { status, body, .. }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        Err(GatewayError::Exhausted { attempts }) => {
            let all_cooling = attempts.iter().all(|a| a.outcome.starts_with("skipped"));
            let status = if all_cooling { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::BAD_GATEWAY };
            let message = format!("every model route failed: {}", attempts.iter().map(|a| a.to_string()).collect::<Vec<_>>().join("; "));
            Ok((status, Json(json!({"error": {"code": "upstream_unavailable", "message": message, "attempts": attempts}}))).into_response())
        }
        Err(e @ GatewayError::Config(_)) => Err(ApiError::internal(&e)),
    }
}

/// Records a gateway call as the caller's usage once `record` is known,
/// off the response path (the write waits for a commit). A failure is
/// logged: the answer has already gone to the caller.
fn record_usage(s: &AppState, caller: &Principal, record: impl std::future::Future<Output = Option<CallRecord>> + Send + 'static) {
    let (s, caller) = (s.clone(), caller.clone());
    tokio::spawn(async move {
        if let Some(record) = record.await {
            save_usage(&s, &caller, record).await;
        }
    });
}

async fn save_usage(s: &AppState, caller: &Principal, record: CallRecord) {
    let route = record.route.clone();
    if let Err(e) = s.engine.record_gateway_call(caller, record).await {
        tracing::error!(error = %e, route = %route, "could not record a gateway call's usage");
    }
}
