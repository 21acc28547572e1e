//! Extractors that turn bad requests into structured [`ApiError`]s.

use agentrt_types::{SessionId, TurnId};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// `Json<T>` whose rejections are [`ApiError`]s.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(JsonBody(v))
    }
}

/// `Query<T>` whose rejections are [`ApiError`]s.
pub struct QueryArgs<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryArgs<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(v) = axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(QueryArgs(v))
    }
}

/// Parses a session id from the path.
pub fn session_id(raw: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(raw).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "session_not_found",
            format!("session {raw:?} not found (session ids look like ses_ followed by 32 hex digits)"),
        )
    })
}

/// Parses a turn id from the path.
pub fn turn_id(raw: &str) -> Result<TurnId, ApiError> {
    TurnId::parse(raw).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "turn_not_found",
            format!("turn {raw:?} not found (turn ids look like turn_ followed by 32 hex digits)"),
        )
    })
}
