//! A local OpenAI-compatible upstream for gateway tests: answers
//! `hello from {model}` with usage 12 in / 5 out (3 cached), plain or as
//! SSE; or always fails with a given status.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

#[derive(Clone)]
struct Upstream {
    calls: Arc<AtomicUsize>,
    fail_with: Option<u16>,
}

async fn completions(State(up): State<Upstream>, Json(body): Json<Value>) -> Response {
    up.calls.fetch_add(1, Ordering::SeqCst);
    if let Some(status) = up.fail_with {
        return (StatusCode::from_u16(status).unwrap(), Json(json!({"error": {"message": "upstream down"}}))).into_response();
    }
    let model = body["model"].as_str().unwrap_or("?").to_owned();
    let usage = json!({"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17, "prompt_tokens_details": {"cached_tokens": 3}});
    if body["stream"] == true {
        let chunk = |delta: Value, usage: Value| {
            let c = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": if usage.is_null() { json!([{"index": 0, "delta": delta, "finish_reason": null}]) } else { json!([]) },
                "usage": usage});
            format!("data: {c}\n\n")
        };
        let sse = [
            chunk(json!({"role": "assistant", "content": "hello "}), Value::Null),
            chunk(json!({"content": format!("from {model}")}), Value::Null),
            chunk(Value::Null, usage),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat();
        return ([("content-type", "text/event-stream")], sse).into_response();
    }
    Json(json!({
        "id": "c1", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("hello from {model}")}, "finish_reason": "stop"}],
        "usage": usage,
    }))
    .into_response()
}

/// Starts one; returns its base URL (`…/v1`) and a count of the calls it got.
pub async fn upstream(fail_with: Option<u16>) -> (String, Arc<AtomicUsize>) {
    let up = Upstream { calls: Arc::new(AtomicUsize::new(0)), fail_with };
    let calls = up.calls.clone();
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(completions)).with_state(up);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}
