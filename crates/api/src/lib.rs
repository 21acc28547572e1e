//! The agentrt HTTP API: `fn router(state) -> Router` with the REST + SSE
//! endpoints under `/v1`, health checks and the OpenAPI document.

mod error;
mod extract;
mod handlers;
mod sandbox;
mod sse;

use std::time::Duration;

use agentrt_engine::Engine;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
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
}

/// Builds the API router.
pub fn router(state: AppState) -> Router {
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
        .route("/v1/sessions/{id}/events", get(sse::events))
        .route("/v1/sessions/{id}/verify", get(verify_session))
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
        .with_state(state)
}

#[cfg(test)]
mod tests;
