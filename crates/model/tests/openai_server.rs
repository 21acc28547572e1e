//! `OpenAiProvider` against a real local OpenAI-compatible HTTP server.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use agentrt_model::openai::{request_body, OpenAiProvider};
use agentrt_model::{ModelError, ModelProvider, ModelRequest, ModelResponse};
use agentrt_types::{Message, ToolCall, ToolDef, Usage};
use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use common::{serve, spec, Recorder, KEY};
use futures_util::StreamExt;
use serde_json::{json, Value};

const HEADERS: &[&str] = &["authorization", "idempotency-key"];

fn kv_get() -> ToolDef {
    ToolDef {
        name: "kv.get".into(),
        description: "Reads a value.".into(),
        input_schema: json!({"type": "object", "properties": {"key": {"type": "string"}}}),
    }
}

fn request(content: &str, stream: bool) -> ModelRequest {
    ModelRequest {
        model: "test-model".into(),
        instructions: "Be brief.".into(),
        messages: vec![Message::User { content: content.into() }].into(),
        tools: vec![kv_get()],
        temperature: Some(0.0),
        max_tokens: None,
        stream,
        idempotency_key: "s1:t1:1".into(),
        traceparent: None,
    }
}

fn provider(base_url: &str, stream: bool) -> OpenAiProvider {
    OpenAiProvider::from_spec(&spec("openai", base_url, stream), reqwest::Client::new()).expect("spec is valid")
}

/// A `text/event-stream` response that sends `chunks` (then `[DONE]`) in
/// small byte pieces with pauses, so events and UTF-8 characters arrive split.
fn sse(chunks: Vec<Value>) -> Response {
    let mut text: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    text.push_str("data: [DONE]\n\n");
    let pieces: Vec<Vec<u8>> = text.into_bytes().chunks(13).map(<[u8]>::to_vec).collect();
    let body = futures_util::stream::iter(pieces).then(|piece| async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok::<_, Infallible>(piece)
    });
    ([(header::CONTENT_TYPE, "text/event-stream")], Body::from_stream(body)).into_response()
}

fn delta(d: Value) -> Value {
    json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": d, "finish_reason": null}]})
}

fn finish(reason: &str) -> Value {
    json!({"id": "chatcmpl-s", "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
}

#[tokio::test]
async fn tool_call_round_trip() {
    let recorder = Recorder::default();
    let seen = recorder.clone();
    let router = Router::new().route(
        "/v1/chat/completions",
        post(move |headers: HeaderMap, Json(body): Json<Value>| async move {
            seen.record(&headers, HEADERS, &body);
            let after_tool = body["messages"].as_array().and_then(|m| m.last()).is_some_and(|m| m["role"] == "tool");
            let message = if after_tool {
                json!({"role": "assistant", "content": "It says hello."})
            } else {
                json!({"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_7", "type": "function", "function": {"name": "kv__get", "arguments": "{\"key\": \"greeting\"}"}},
                ]})
            };
            Json(json!({"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "message": message}],
                "usage": {"prompt_tokens": if after_tool { 30 } else { 12 }, "completion_tokens": 9}}))
        }),
    );
    let server = serve(router).await;
    let provider = provider(&format!("{}/v1/", server.base_url), false);

    let mut request = request("What is stored under greeting?", false);
    let first = provider.complete(&request).await.expect("first call succeeds");
    let call = ToolCall { id: "call_7".into(), name: "kv.get".into(), arguments: json!({"key": "greeting"}) };
    let usage = Usage { input_tokens: 12, output_tokens: 9, ..Default::default() };
    assert_eq!(first, ModelResponse { content: None, tool_calls: vec![call.clone()], usage, billing: None });

    std::sync::Arc::make_mut(&mut request.messages).push(Message::Assistant { content: None, tool_calls: first.tool_calls });
    std::sync::Arc::make_mut(&mut request.messages).push(Message::Tool {
        tool_call_id: "call_7".into(),
        name: "kv.get".into(),
        content: "\"hello\"".into(),
        is_error: false,
    });
    request.idempotency_key = "s1:t1:2".into();
    let second = provider.complete(&request).await.expect("second call succeeds");
    let usage = Usage { input_tokens: 30, output_tokens: 9, ..Default::default() };
    assert_eq!(second, ModelResponse { content: Some("It says hello.".into()), tool_calls: vec![], usage, billing: None });

    let requests = recorder.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0]["authorization"], format!("Bearer {KEY}"));
    assert_eq!(requests[0]["idempotency-key"], "s1:t1:1");
    assert_eq!(requests[1]["idempotency-key"], "s1:t1:2");
    assert_eq!(
        requests[1]["body"],
        json!({
            "model": "test-model",
            "temperature": 0.0,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is stored under greeting?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_7", "type": "function", "function": {"name": "kv__get", "arguments": "{\"key\":\"greeting\"}"}},
                ]},
                {"role": "tool", "tool_call_id": "call_7", "content": "\"hello\""},
            ],
            "tools": [{"type": "function", "function": {
                "name": "kv__get",
                "description": "Reads a value.",
                "parameters": {"type": "object", "properties": {"key": {"type": "string"}}},
            }}],
        })
    );
}

#[tokio::test]
async fn streamed_content_and_tool_calls_are_assembled() {
    let recorder = Recorder::default();
    let seen = recorder.clone();
    let router = Router::new().route(
        "/chat/completions",
        post(move |headers: HeaderMap, Json(body): Json<Value>| async move {
            seen.record(&headers, HEADERS, &body);
            sse(vec![
                delta(json!({"role": "assistant", "content": ""})),
                delta(json!({"content": "Café "})),
                delta(json!({"content": "☕ first."})),
                delta(json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "kv__get", "arguments": ""}}]})),
                delta(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"ke"}}]})),
                delta(json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "kv__get", "arguments": "{\"key\":"}}]})),
                delta(json!({"tool_calls": [{"index": 0, "function": {"arguments": "y\":\"a\"}"}}]})),
                delta(json!({"tool_calls": [{"index": 1, "function": {"arguments": "\"b\"}"}}]})),
                finish("tool_calls"),
                json!({"id": "chatcmpl-s", "choices": [], "usage": {"prompt_tokens": 44, "completion_tokens": 23, "total_tokens": 67}}),
            ])
        }),
    );
    let server = serve(router).await;
    let response = provider(&server.base_url, true).complete(&request("Read a and b.", true)).await.expect("stream succeeds");

    let call = |id: &str, key: &str| ToolCall { id: id.into(), name: "kv.get".into(), arguments: json!({"key": key}) };
    let expected = ModelResponse {
        content: Some("Café ☕ first.".into()),
        tool_calls: vec![call("call_a", "a"), call("call_b", "b")],
        usage: Usage { input_tokens: 44, output_tokens: 23, ..Default::default() },
        billing: None,
    };
    assert_eq!(response, expected);
    let body = &recorder.requests()[0]["body"];
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
}

#[tokio::test]
async fn error_statuses_carry_the_providers_message() {
    let router = Router::new()
        .route(
            "/limited/chat/completions",
            post(|| async {
                let body =
                    json!({"error": {"message": "Rate limit reached for test-model", "type": "requests", "code": "rate_limit_exceeded"}});
                (StatusCode::TOO_MANY_REQUESTS, Json(body))
            }),
        )
        .route("/broken/chat/completions", post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded") }));
    let server = serve(router).await;

    for (path, status, message) in [("limited", 429, "Rate limit reached for test-model"), ("broken", 500, "upstream exploded")] {
        let provider = provider(&format!("{}/{path}", server.base_url), false);
        let err = provider.complete(&request("hi", false)).await.expect_err("the server fails");
        match &err {
            ModelError::Status { status: s, message: m } => assert_eq!((*s, m.as_str()), (status, message)),
            other => panic!("expected a status error, got {other:?}"),
        }
        assert!(err.is_transient(), "{path}: {err}");
    }
}

#[tokio::test]
async fn stream_without_usage_gets_an_estimate() {
    let router =
        Router::new().route("/chat/completions", post(|| async { sse(vec![delta(json!({"content": "Twelve bytes"})), finish("stop")]) }));
    let server = serve(router).await;
    let request = request("Say something.", true);
    let response = provider(&server.base_url, true).complete(&request).await.expect("stream succeeds");

    assert_eq!(response.content.as_deref(), Some("Twelve bytes"));
    // About four bytes per token, of the request body sent and the text received.
    let request_bytes = serde_json::to_vec(&request_body(&request)).expect("serializes").len() as u64;
    assert_eq!(response.usage, Usage { input_tokens: request_bytes.div_ceil(4), output_tokens: 3, ..Default::default() });
    assert!(response.usage.input_tokens > 10);
}
