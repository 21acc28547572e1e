//! A session's sandbox for clients: `POST …/sandbox/exec` (JSON, or SSE
//! output streaming with `Accept: text/event-stream`), `GET`/`PUT`/`DELETE
//! …/files/{path}` (a directory `GET` lists it), `GET …/sandbox` (state and
//! usage), `POST …/sandbox/standby` and `…/sandbox/resume`.

use std::collections::BTreeMap;
use std::convert::Infallible;

use agentrt_sandbox::protocol::{decode_text as text, ExecRequest, ProcessSpec, Request, Response as AgentResponse};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::TenantSession;
use crate::extract::JsonBody;
use crate::{ApiError, AppState};

/// Largest file `PUT` accepts (it travels base64-encoded in one frame).
pub const MAX_FILE_BYTES: usize = 32 << 20;

/// Longest exec a client may ask for.
const MAX_EXEC_SECONDS: u64 = 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exec {
    /// Run by `/bin/sh -c`.
    command: Option<String>,
    /// Run as is (instead of `command`).
    argv: Option<Vec<String>>,
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    timeout_seconds: Option<u64>,
    /// Text written to stdin.
    stdin: Option<String>,
}

/// The agent's error answer as an HTTP error.
fn agent_error(kind: &str, message: String) -> ApiError {
    let (status, code) = match kind {
        "not_found" => (StatusCode::NOT_FOUND, "not_found"),
        "invalid" | "not_a_directory" | "is_a_directory" | "exists" => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_path"),
        "permission_denied" => (StatusCode::FORBIDDEN, "permission_denied"),
        "no_space" => (StatusCode::INSUFFICIENT_STORAGE, "workspace_full"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "sandbox_error"),
    };
    ApiError::new(status, code, message)
}

fn expect_ok(response: AgentResponse) -> Result<AgentResponse, ApiError> {
    match response {
        AgentResponse::Error { kind, message } => Err(agent_error(&kind, message)),
        other => Ok(other),
    }
}

/// An exit as JSON with decoded output.
fn exited(response: AgentResponse) -> Result<Value, ApiError> {
    match expect_ok(response)? {
        AgentResponse::Exited { status, timed_out, stdout, stderr, truncated, duration_ms } => Ok(json!({
            "exit_code": status.code, "signal": status.signal, "timed_out": timed_out,
            "stdout": text(&stdout), "stderr": text(&stderr), "truncated": truncated, "duration_ms": duration_ms,
        })),
        other => Ok(json!(other)),
    }
}

pub async fn exec(
    State(s): State<AppState>,
    TenantSession(id, _): TenantSession,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Exec>,
) -> Result<Response, ApiError> {
    let argv = match (body.command, body.argv) {
        (Some(c), None) => vec!["/bin/sh".into(), "-c".into(), c],
        (None, Some(argv)) if !argv.is_empty() => argv,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                "give either \"command\" (a shell command) or \"argv\" (a non-empty list)",
            ))
        }
    };
    let seconds = body.timeout_seconds.unwrap_or(60);
    if seconds == 0 || seconds > MAX_EXEC_SECONDS {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            format!("timeout_seconds must be between 1 and {MAX_EXEC_SECONDS}"),
        ));
    }
    let stream = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/event-stream"));
    let request = Request::Exec(ExecRequest {
        process: ProcessSpec { argv, cwd: body.cwd, env: body.env },
        stdin: body.stdin.map(|t| B64.encode(t)),
        timeout_ms: Some(seconds * 1000),
        max_output: 1 << 20,
        stream,
    });
    if !stream {
        return Ok(Json(exited(s.engine.sandbox_call(&id, &request).await?)?).into_response());
    }
    let rx = s.engine.sandbox_stream(&id, &request).await?;
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        let event = match item {
            Ok(AgentResponse::Stdout { data }) => SseEvent::default().event("stdout").data(text(&data)),
            Ok(AgentResponse::Stderr { data }) => SseEvent::default().event("stderr").data(text(&data)),
            Ok(other) => match exited(other) {
                Ok(mut v) => {
                    // Output already went out as chunks.
                    if let Some(o) = v.as_object_mut() {
                        o.remove("stdout");
                        o.remove("stderr");
                    }
                    SseEvent::default().event("exit").data(v.to_string())
                }
                Err(e) => SseEvent::default().event("error").data(json!({"code": e.code, "message": e.message}).to_string()),
            },
            Err(e) => SseEvent::default().event("error").data(json!({"code": "sandbox_error", "message": e.to_string()}).to_string()),
        };
        Some((Ok::<_, Infallible>(event), rx))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

pub async fn get_file(
    State(s): State<AppState>,
    TenantSession(id, _): TenantSession,
    Path((_, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let path = workspace_path(&path)?;
    let stat = expect_ok(s.engine.sandbox_call(&id, &Request::FileStat { path: path.clone() }).await?)?;
    if let AgentResponse::Stat(st) = &stat {
        if st.kind == "dir" {
            let entries = expect_ok(s.engine.sandbox_call(&id, &Request::FileList { path }).await?)?;
            return Ok(Json(json!(entries)).into_response());
        }
    }
    match expect_ok(s.engine.sandbox_call(&id, &Request::FileRead { path, max_bytes: None }).await?)? {
        AgentResponse::File { data, .. } => {
            let bytes = B64.decode(data).map_err(|e| ApiError::internal(&e))?;
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
        }
        other => Ok(Json(json!(other)).into_response()),
    }
}

pub async fn put_file(
    State(s): State<AppState>,
    TenantSession(id, _): TenantSession,
    Path((_, path)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let request = Request::FileWrite { path: workspace_path(&path)?, data: B64.encode(&body), append: false, mode: None };
    Ok(Json(json!(expect_ok(s.engine.sandbox_call(&id, &request).await?)?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    recursive: Option<bool>,
}

pub async fn delete_file(
    State(s): State<AppState>,
    TenantSession(id, _): TenantSession,
    Path((_, path)): Path<(String, String)>,
    crate::extract::QueryArgs(q): crate::extract::QueryArgs<DeleteQuery>,
) -> Result<Json<Value>, ApiError> {
    let request = Request::FileDelete { path: workspace_path(&path)?, recursive: q.recursive.unwrap_or(false) };
    Ok(Json(json!(expect_ok(s.engine.sandbox_call(&id, &request).await?)?)))
}

/// URL paths are relative to `/workspace` and may not climb out of it with
/// `..`; the agent resolves them (and any symlink) inside the sandbox, where
/// nothing of the host is visible.
fn workspace_path(path: &str) -> Result<String, ApiError> {
    if path.split('/').any(|part| part == "..") {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_path",
            format!("{path:?}: paths are relative to /workspace and may not contain \"..\""),
        ));
    }
    Ok(format!("/workspace/{}", path.trim_start_matches('/')))
}

pub async fn status(State(s): State<AppState>, TenantSession(id, _): TenantSession) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.engine.sandbox_status(&id).await?)))
}

pub async fn standby(State(s): State<AppState>, TenantSession(id, _): TenantSession) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.engine.sandbox_standby(&id).await?)))
}

pub async fn resume(State(s): State<AppState>, TenantSession(id, _): TenantSession) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(s.engine.sandbox_resume(&id).await?)))
}
