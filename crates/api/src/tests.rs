//! Router tests with `oneshot`: status codes and error bodies.

use std::sync::Arc;
use std::time::Duration;

use agentrt_engine::{Engine, EngineConfig};
use agentrt_store::sqlite::SqliteStore;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::{router, AppState};

struct Api {
    _dir: tempfile::TempDir,
    app: axum::Router,
}

fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("a.db")).unwrap());
    let engine = Engine::new(store, EngineConfig::default()).unwrap();
    let app =
        router(AppState { engine, shutdown: CancellationToken::new(), heartbeat: Duration::from_secs(15), dev_mode: true, gateway: None });
    Api { _dir: dir, app }
}

impl Api {
    async fn call(&self, method: &str, uri: &str, content_type: Option<&str>, body: &str) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = self.app.clone().oneshot(req.body(Body::from(body.to_owned())).unwrap()).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn json(&self, method: &str, uri: &str, body: Value) -> (StatusCode, Value) {
        self.call(method, uri, Some("application/json"), &body.to_string()).await
    }
}

const SPEC: &str = "[model]\nprovider = \"scripted\"\n";

#[tokio::test]
async fn agent_versions_are_created_and_read() {
    let api = api();
    let (s, v) = api.call("PUT", "/v1/agents/helper", Some("application/toml"), SPEC).await;
    assert_eq!((s, v["version"].clone()), (StatusCode::CREATED, json!(1)));
    let (s, v) = api.call("PUT", "/v1/agents/helper", None, SPEC).await;
    assert_eq!((s, v["version"].clone()), (StatusCode::CREATED, json!(2)));
    let (s, v) = api.call("GET", "/v1/agents/helper/versions/1", None, "").await;
    assert_eq!((s, v["spec"]["model"]["provider"].clone()), (StatusCode::OK, json!("scripted")));
    let (s, v) = api.call("GET", "/v1/agents", None, "").await;
    assert_eq!((s, v["agents"][0]["latest_version"].clone()), (StatusCode::OK, json!(2)));
    let (s, v) = api.call("GET", "/v1/agents/helper/versions/9", None, "").await;
    assert_eq!((s, v["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("agent_version_not_found")));
}

#[tokio::test]
async fn invalid_spec_lists_every_bad_field() {
    let api = api();
    let body = json!({"model": {"provider": "nope"}, "limits": {"max_steps": 0}});
    let (s, v) = api.json("PUT", "/v1/agents/x", body).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"]["code"], "invalid_spec");
    let paths: Vec<&str> = v["error"]["details"].as_array().unwrap().iter().map(|d| d["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["model.provider", "model.model", "limits.max_steps"]);
    let (s, v) = api.call("PUT", "/v1/agents/Bad%20Name", None, SPEC).await;
    assert_eq!((s, v["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_agent_name")));
}

#[tokio::test]
async fn bad_requests_get_structured_errors() {
    let api = api();
    let (s, v) = api.call("POST", "/v1/sessions", Some("application/json"), "{not json").await;
    assert_eq!((s, v["error"]["code"].clone()), (StatusCode::BAD_REQUEST, json!("invalid_json")));
    let (s, v) = api.call("POST", "/v1/sessions", None, "{}").await;
    assert_eq!((s, v["error"]["code"].clone()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, json!("unsupported_media_type")));
    let (s, v) = api.json("POST", "/v1/sessions", json!({"agent": "ghost"})).await;
    assert_eq!((s, v["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("agent_not_found")));
    let (s, v) = api.json("POST", "/v1/sessions", json!({"agnt": "x"})).await;
    assert_eq!((s, v["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_body")));
    let (s, v) = api.call("GET", "/v1/sessions/ses_nope", None, "").await;
    assert_eq!((s, v["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("session_not_found")));
    let (s, v) = api.call("GET", "/v1/sessions?status=sleeping", None, "").await;
    assert_eq!((s, v["error"]["code"].clone()), (StatusCode::BAD_REQUEST, json!("invalid_query")));
    let (s, v) = api.call("GET", "/v1/nope", None, "").await;
    assert_eq!((s, v["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("route_not_found")));
    let big = "x".repeat(crate::MAX_BODY_BYTES + 10);
    let (s, v) = api.call("PUT", "/v1/agents/x", None, &big).await;
    assert_eq!((s, v["error"]["code"].clone()), (StatusCode::PAYLOAD_TOO_LARGE, json!("body_too_large")));
    let (s, v) = api.call("PATCH", "/v1/sessions", None, "").await;
    assert_eq!((s, v["error"]["code"].clone()), (StatusCode::METHOD_NOT_ALLOWED, json!("method_not_allowed")));
    let (s, v) = api.call("GET", "/v1/sessions/ses_0190000000007000800000000000000a/events?after=5", None, "").await;
    assert_eq!((s, v["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("session_not_found")));
}

#[tokio::test]
async fn oversized_input_and_terminated_sessions_are_refused() {
    let api = api();
    api.call("PUT", "/v1/agents/a", None, SPEC).await;
    let (_, session) = api.json("POST", "/v1/sessions", json!({"agent": "a"})).await;
    let id = session["id"].as_str().unwrap().to_owned();
    let big = "x".repeat(300 * 1024);
    let (s, v) = api.json("POST", &format!("/v1/sessions/{id}/turns"), json!({"input": big})).await;
    assert_eq!((s, v["error"]["code"].clone()), (StatusCode::PAYLOAD_TOO_LARGE, json!("input_too_large")));
    let (s, v) = api.json("POST", &format!("/v1/sessions/{id}/turns"), json!({"input": "hi", "on_busy": "later"})).await;
    assert_eq!((s, v["error"]["code"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_body")));
    let (s, v) = api.call("DELETE", &format!("/v1/sessions/{id}"), None, "").await;
    assert_eq!((s, v["status"].clone()), (StatusCode::OK, json!("terminated")));
    let (s, v) = api.json("POST", &format!("/v1/sessions/{id}/turns"), json!({"input": "hi"})).await;
    assert_eq!((s, v["error"]["code"].clone()), (StatusCode::CONFLICT, json!("session_terminated")));
    let (s, v) = api.call("GET", &format!("/v1/sessions/{id}/events"), None, "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["events"][1]["type"], "session.terminated");
}

#[tokio::test]
async fn openapi_document_covers_every_route() {
    let api = api();
    let (s, doc) = api.call("GET", "/v1/openapi.json", None, "").await;
    assert_eq!(s, StatusCode::OK);
    let paths = doc["paths"].as_object().expect("paths object");
    for route in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/agents",
        "/v1/agents/{name}",
        "/v1/agents/{name}/versions/{version}",
        "/v1/sessions",
        "/v1/sessions/{id}",
        "/v1/sessions/{id}/turns",
        "/v1/sessions/{id}/turns/{turn_id}",
        "/v1/sessions/{id}/turns/{turn_id}/cancel",
        "/v1/sessions/{id}/events",
        "/v1/sessions/{id}/verify",
        "/v1/sessions/{id}/sandbox",
        "/v1/sessions/{id}/sandbox/exec",
        "/v1/sessions/{id}/sandbox/standby",
        "/v1/sessions/{id}/sandbox/resume",
        "/v1/sessions/{id}/files/{path}",
        "/v1/sessions/{id}/audit",
        "/v1/sessions/{id}/credentials",
        "/v1/whoami",
        "/v1/tenants",
        "/v1/tenants/{name}",
        "/v1/keys",
        "/v1/keys/{id}",
        "/v1/policies",
        "/v1/policies/schema",
        "/v1/policies/versions/{version}",
        "/v1/approvals",
        "/v1/approvals/{id}",
        "/v1/usage",
        "/v1/gateway/openai/v1/chat/completions",
        "/v1/budgets",
        "/v1/budgets/{id}",
        "/v1/sessions/{id}/budget-override",
        "/v1/sessions/{id}/handover",
        "/v1/nodes",
        "/v1/nodes/{id}/drain",
    ] {
        assert!(paths.contains_key(route), "openapi.json lacks {route}");
    }
}

#[tokio::test]
async fn the_gateway_takes_big_conversations_and_refuses_oversize_ones_in_json() {
    let api = api();
    let big = format!("{{\"model\":\"m\",\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}", "x".repeat(2 << 20));
    let (s, v) = api.call("POST", "/v1/gateway/openai/v1/chat/completions", Some("application/json"), &big).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("no_model_routes")), "a 2 MiB body is read: {v}");
    let huge = "x".repeat(crate::gateway::MAX_REQUEST_BYTES + 1);
    let (s, v) = api.call("POST", "/v1/gateway/openai/v1/chat/completions", Some("application/json"), &huge).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large")), "{v}");
}
