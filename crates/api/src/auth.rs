//! Authentication and tenant scoping.
//!
//! Every request except the health checks and the OpenAPI document carries
//! `Authorization: Bearer <token>`: an API key (`art_…`) or a session
//! credential. The middleware puts the [`Principal`] in the request; the
//! [`Caller`] extractor hands it to handlers, and [`TenantSession`] resolves
//! a `{id}` path segment to a session of the caller's tenant — another
//! tenant's session is a 404, exactly like one that does not exist.

use agentrt_types::{Principal, Role, SessionId, SessionSummary};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::extract::session_id;
use crate::{ApiError, AppState};

/// Paths anyone may call.
const PUBLIC: &[&str] = &["/healthz", "/readyz", "/v1/openapi.json"];

/// Authenticates the request, or answers 401.
pub async fn authenticate(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    if PUBLIC.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let principal = if s.dev_mode {
        Principal::Dev
    } else {
        let Some(token) = bearer(&req) else {
            return unauthorized("send an API key or session credential as Authorization: Bearer <token>").into_response();
        };
        match s.engine.authenticate(token).await {
            Ok(p) => p,
            Err(e) => return ApiError::from(e).into_response(),
        }
    };
    if let Principal::Session { session_id, .. } = &principal {
        if !session_may(&principal, session_id, req.method(), req.uri().path()) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a session credential may only read its own session (GET /v1/sessions/{its id}/…), call the model gateway (POST /v1/gateway/…) and GET /v1/whoami",
            )
            .into_response();
        }
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// What a session credential may call: reads of its own session.
fn session_may(_p: &Principal, own: &SessionId, method: &Method, path: &str) -> bool {
    if path == "/v1/whoami" || (method == Method::POST && path.starts_with("/v1/gateway/")) {
        return true;
    }
    let own_prefix = format!("/v1/sessions/{own}");
    method == Method::GET && (path == own_prefix || path.starts_with(&format!("{own_prefix}/")))
}

/// The authenticated caller.
pub struct Caller(pub Principal);

impl Caller {
    /// Refuses unless the caller has at least `role`.
    pub fn require(&self, role: Role) -> Result<&Principal, ApiError> {
        if self.0.has_role(role) {
            Ok(&self.0)
        } else {
            Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("this needs a key with the {} role", role.as_str())))
        }
    }

    /// Refuses unless the caller is an admin of the default tenant.
    pub fn require_system_admin(&self) -> Result<&Principal, ApiError> {
        if self.0.is_system_admin() {
            Ok(&self.0)
        } else {
            Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this needs an admin key of the default tenant"))
        }
    }

    pub fn tenant(&self) -> &str {
        self.0.tenant()
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, ApiError> {
        parts.extensions.get::<Principal>().cloned().map(Caller).ok_or_else(|| unauthorized("not authenticated"))
    }
}

/// The `{id}` session of the path, owned by the caller's tenant.
pub struct TenantSession(pub SessionId, pub SessionSummary);

impl FromRequestParts<AppState> for TenantSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Caller(caller) = Caller::from_request_parts(parts, state).await?;
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))?;
        let raw = params.iter().find(|(k, _)| k == "id").map(|(_, v)| v.as_str()).unwrap_or_default();
        let id = session_id(raw)?;
        let summary = state.engine.session_of(caller.tenant(), &id).await?;
        Ok(TenantSession(id, summary))
    }
}
