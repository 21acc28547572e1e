//! The agentrt HTTP API: `fn router(state) -> Router` with the REST + SSE
//! endpoints under `/v1`, health checks and the OpenAPI document.

mod auth;
mod budgets;
mod error;
mod extract;
mod gateway;
mod governance;
mod handlers;
mod nodes;
mod sandbox;
mod sse;

use std::time::Duration;

use agentrt_engine::Engine;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;

/// The OpenAPI document served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    /// Ends open SSE streams when the server shuts down.
    pub shutdown: CancellationToken,
    /// Interval of SSE heartbeat comments.
    pub heartbeat: Duration,
    /// `serve --dev`: authentication off, every request is an admin of the
    /// default tenant (the server refuses to listen beyond loopback).
    pub dev_mode: bool,
    /// The model gateway, when the server config has model routes.
    pub gateway: Option<std::sync::Arc<agentrt_gateway::Gateway>>,
}

/// Builds the API router.
pub fn router(state: AppState) -> Router {
    use governance as gov;
    use handlers::*;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/agents", get(list_agents))
        .route("/v1/agents/{name}", get(get_agent).put(put_agent))
        .route("/v1/agents/{name}/versions/{version}", get(get_agent_version))
        .route("/v1/sessions", get(list_sessions).post(create_session))
        .route("/v1/sessions/{id}", get(get_session).delete(terminate_session))
        .route("/v1/sessions/{id}/turns", post(submit_turn))
        .route("/v1/sessions/{id}/turns/{turn_id}", get(get_turn))
        .route("/v1/sessions/{id}/turns/{turn_id}/cancel", post(cancel_turn))
        .route("/v1/sessions/{id}/handover", post(handover))
        .route("/v1/sessions/{id}/events", get(sse::events))
        .route("/v1/sessions/{id}/verify", get(verify_session))
        .route("/v1/sessions/{id}/audit", get(gov::audit))
        .route("/v1/sessions/{id}/credentials", post(gov::issue_credential))
        .route("/v1/whoami", get(gov::whoami))
        .route("/v1/nodes", get(nodes::list))
        .route("/v1/nodes/{id}/drain", post(nodes::drain).delete(nodes::undrain))
        .route("/v1/tenants", get(gov::list_tenants).post(gov::create_tenant))
        .route("/v1/tenants/{name}", get(gov::get_tenant).patch(gov::patch_tenant))
        .route("/v1/keys", get(gov::list_keys).post(gov::create_key))
        .route("/v1/keys/{id}", delete(gov::revoke_key))
        .route("/v1/policies", get(gov::get_policies).put(gov::put_policies))
        .route("/v1/policies/schema", get(gov::policy_schema))
        .route("/v1/policies/versions/{version}", get(gov::get_policy_version))
        .route("/v1/usage", get(gov::usage))
        .route(GATEWAY_PATH, post(gateway::chat_completions).layer(DefaultBodyLimit::max(gateway::MAX_REQUEST_BYTES)))
        .route("/v1/budgets", get(budgets::list).post(budgets::create))
        .route("/v1/budgets/{id}", get(budgets::get).patch(budgets::patch).delete(budgets::delete))
        .route("/v1/sessions/{id}/budget-override", post(budgets::override_session))
        .route("/v1/approvals", get(gov::list_approvals))
        .route("/v1/approvals/{id}", get(gov::get_approval).post(gov::decide_approval))
        .route("/v1/sessions/{id}/sandbox", get(sandbox::status))
        .route("/v1/sessions/{id}/sandbox/exec", post(sandbox::exec))
        .route("/v1/sessions/{id}/sandbox/standby", post(sandbox::standby))
        .route("/v1/sessions/{id}/sandbox/resume", post(sandbox::resume))
        .route(
            "/v1/sessions/{id}/files/{*path}",
            get(sandbox::get_file)
                .put(sandbox::put_file)
                .delete(sandbox::delete_file)
                .layer(DefaultBodyLimit::max(sandbox::MAX_FILE_BYTES)),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .with_state(state)
}

/// Where the model gateway's Chat Completions endpoint is.
const GATEWAY_PATH: &str = "/v1/gateway/openai/v1/chat/completions";

/// The model gateway as code in a session's sandbox sees it, served on
/// the sandbox's own socket: every call is the session's (the socket
/// identifies it), at `/v1/chat/completions` under the base URL the sandbox
/// is given, and at the usual path.
pub fn sandbox_gateway(state: AppState, session: agentrt_types::Principal) -> Router {
    let handler = || post(gateway::chat_completions).layer(DefaultBodyLimit::max(gateway::MAX_REQUEST_BYTES));
    Router::new()
        .route("/v1/chat/completions", handler())
        .route(GATEWAY_PATH, handler())
        .fallback(handlers::not_found)
        .layer(axum::middleware::from_fn(move |mut req: axum::extract::Request, next: axum::middleware::Next| {
            req.extensions_mut().insert(session.clone());
            next.run(req)
        }))
        .with_state(state)
}

#[cfg(test)]
mod tests;
