//! Mapping engine errors to HTTP. 4xx bodies say what to fix; 5xx bodies
//! say nothing internal (the cause is logged instead).

use agentrt_engine::EngineError;
use agentrt_store::StoreError;
use agentrt_types::spec::FieldError;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error response: `{"error": {"code", "message", "details"?}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Vec<FieldError>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), details: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(crate) fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error serving request");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the server log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(details) = self.details {
            error["details"] = json!(details);
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        use StatusCode as S;
        let msg = e.to_string();
        match e {
            EngineError::AgentNotFound(_) => ApiError::new(S::NOT_FOUND, "agent_not_found", msg),
            EngineError::AgentVersionNotFound(..) => ApiError::new(S::NOT_FOUND, "agent_version_not_found", msg),
            EngineError::InvalidAgentName(_) => ApiError::new(S::UNPROCESSABLE_ENTITY, "invalid_agent_name", msg),
            EngineError::InvalidSpec(spec) => {
                ApiError { status: S::UNPROCESSABLE_ENTITY, code: "invalid_spec", message: msg, details: Some(spec.errors) }
            }
            EngineError::SessionNotFound(_) => ApiError::new(S::NOT_FOUND, "session_not_found", msg),
            EngineError::TurnNotFound(_) => ApiError::new(S::NOT_FOUND, "turn_not_found", msg),
            EngineError::SessionTerminated(_) => ApiError::new(S::CONFLICT, "session_terminated", msg),
            EngineError::SessionBusy(_) => ApiError::new(S::CONFLICT, "session_busy", msg),
            EngineError::TurnFinished(..) => ApiError::new(S::CONFLICT, "turn_finished", msg),
            EngineError::InputTooLarge { .. } => ApiError::new(S::PAYLOAD_TOO_LARGE, "input_too_large", msg),
            EngineError::InvalidInput(_) => ApiError::new(S::UNPROCESSABLE_ENTITY, "invalid_input", msg),
            EngineError::Unauthorized(_) => ApiError::new(S::UNAUTHORIZED, "unauthorized", msg),
            EngineError::Forbidden(_) => ApiError::new(S::FORBIDDEN, "forbidden", msg),
            EngineError::NotFound(_) => ApiError::new(S::NOT_FOUND, "not_found", msg),
            EngineError::Conflict(_) => ApiError::new(S::CONFLICT, "conflict", msg),
            EngineError::InvalidPolicy(_) => ApiError::new(S::UNPROCESSABLE_ENTITY, "invalid_policy", msg),
            EngineError::Internal(_) => ApiError::internal(&msg),
            EngineError::Store(inner) => match inner {
                StoreError::Closed => ApiError::new(S::SERVICE_UNAVAILABLE, "shutting_down", "the server is shutting down; retry"),
                StoreError::SessionNotFound(_)
                | StoreError::SessionTerminated(_)
                | StoreError::StaleFence { .. }
                | StoreError::PreconditionFailed(_)
                | StoreError::BudgetExceeded(_)
                | StoreError::DuplicateIdempotencyKey(_)
                | StoreError::SchemaTooNew { .. }
                | StoreError::Corrupt(_)
                | StoreError::NotFound(_)
                | StoreError::Conflict(_)
                | StoreError::Database(_) => ApiError::internal(&inner),
            },
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = r.status();
        let code = match &r {
            JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
            JsonRejection::JsonSyntaxError(_) => "invalid_json",
            JsonRejection::JsonDataError(_) => "invalid_body",
            JsonRejection::BytesRejection(_) => "body_too_large",
            _ => "invalid_body",
        };
        let message = match &r {
            JsonRejection::MissingJsonContentType(_) => "send the body as JSON with Content-Type: application/json".to_owned(),
            other => other.body_text(),
        };
        ApiError::new(status, code, message)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request("invalid_query", r.body_text())
    }
}
