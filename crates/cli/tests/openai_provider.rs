//! The `openai` provider end to end: the real binary drives a turn against
//! a local OpenAI-compatible server (streaming, with a tool call round trip).

mod common;

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use common::*;
use serde_json::{json, Value};

/// Requests seen by the fake OpenAI server.
type Seen = Arc<Mutex<Vec<Value>>>;

async fn completions(State(seen): State<Seen>, Json(body): Json<Value>) -> impl IntoResponse {
    seen.lock().unwrap().push(body.clone());
    let after_tool = body["messages"].as_array().and_then(|m| m.last()).is_some_and(|m| m["role"] == "tool");
    let chunk = |delta: Value, finish: Value| json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    let mut chunks = if after_tool {
        vec![chunk(json!({"role": "assistant", "content": "Stored "}), Value::Null), chunk(json!({"content": "it."}), json!("stop"))]
    } else {
        vec![
            chunk(
                json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "kv__set", "arguments": "{\"key\":\"k\","}}]}),
                Value::Null,
            ),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"value\":\"v\"}"}}]}), json!("tool_calls")),
        ]
    };
    chunks.push(json!({"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}));
    let mut sse = String::new();
    for c in chunks {
        sse.push_str(&format!("data: {c}\n\n"));
    }
    sse.push_str("data: [DONE]\n\n");
    ([(header::CONTENT_TYPE, "text/event-stream")], sse)
}

#[tokio::test]
async fn streaming_tool_call_round_trip_through_the_runtime() {
    let seen = Seen::default();
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(completions)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let spec = format!(
        "instructions = \"Be brief.\"\n[model]\nprovider = \"openai\"\nmodel = \"gpt-test\"\nbase_url = \"{base}\"\nstream = true\n[tools]\nbuiltin = [\"kv.set\"]\n"
    );
    server.apply("oai", &spec).await;
    let session = server.session("oai").await;
    let turn = server.submit(&session, "store k=v").await;
    let t = server.wait_turn(&session, &turn).await;
    assert_eq!((t["status"].as_str(), t["output"].as_str()), (Some("completed"), Some("Stored it.")), "{t}");
    assert_eq!(t["usage"], json!({"input_tokens": 22, "output_tokens": 14}));

    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0]["model"], "gpt-test");
    assert_eq!(requests[0]["stream"], true);
    assert_eq!(requests[0]["messages"][0], json!({"role": "system", "content": "Be brief."}));
    assert_eq!(requests[0]["tools"][0]["function"]["name"], "kv__set");
    let tool_msg = requests[1]["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((tool_msg["role"].as_str(), tool_msg["tool_call_id"].as_str()), (Some("tool"), Some("call_a")));

    let events = server.events(&session).await;
    let req = events.iter().find(|e| e["type"] == "tool.requested").unwrap();
    assert_eq!((req["tool"].as_str(), &req["arguments"]), (Some("kv.set"), &json!({"key": "k", "value": "v"})));
    let done = events.iter().find(|e| e["type"] == "tool.completed").unwrap();
    assert_eq!(done["outcome"], "ok");
}
