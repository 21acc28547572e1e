//! `AnthropicProvider` against a real local Messages API server.

mod common;

use agentrt_model::anthropic::AnthropicProvider;
use agentrt_model::{ModelProvider, ModelRequest, ModelResponse};
use agentrt_types::{Message, ToolCall, ToolDef, Usage};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use common::{serve, spec, Recorder, KEY};
use serde_json::{json, Value};

#[tokio::test]
async fn tool_use_round_trip() {
    let recorder = Recorder::default();
    let seen = recorder.clone();
    let router = Router::new().route(
        "/v1/messages",
        post(move |headers: HeaderMap, Json(body): Json<Value>| async move {
            seen.record(&headers, &["x-api-key", "anthropic-version"], &body);
            let last = &body["messages"][body["messages"].as_array().map_or(0, Vec::len).saturating_sub(1)];
            let after_tool = last["content"][0]["type"] == "tool_result";
            let (content, usage) = if after_tool {
                (
                    json!([{"type": "text", "text": "Greeting is hello; the clock failed."}]),
                    json!({"input_tokens": 90, "output_tokens": 11}),
                )
            } else {
                (
                    json!([
                        {"type": "text", "text": "Looking."},
                        {"type": "tool_use", "id": "toolu_1", "name": "kv__get", "input": {"key": "greeting"}},
                        {"type": "tool_use", "id": "toolu_2", "name": "clock__now", "input": {}},
                    ]),
                    json!({"input_tokens": 50, "output_tokens": 20}),
                )
            };
            Json(json!({"id": "msg_1", "type": "message", "role": "assistant", "content": content, "usage": usage}))
        }),
    );
    let server = serve(router).await;
    let provider =
        AnthropicProvider::from_spec(&spec("anthropic", &server.base_url, false), reqwest::Client::new()).expect("spec is valid");
    let tool =
        |name: &str| ToolDef { name: name.into(), description: format!("The {name} tool."), input_schema: json!({"type": "object"}) };
    let mut request = ModelRequest {
        model: "test-model".into(),
        instructions: "Be brief.".into(),
        messages: vec![Message::User { content: "Greeting and time?".into() }].into(),
        tools: vec![tool("kv.get"), tool("clock.now")],
        temperature: None,
        max_tokens: None,
        // Ignored: the Anthropic provider never streams.
        stream: true,
        idempotency_key: "s1:t1:1".into(),
        traceparent: None,
    };

    let first = provider.complete(&request).await.expect("first call succeeds");
    let calls = vec![
        ToolCall { id: "toolu_1".into(), name: "kv.get".into(), arguments: json!({"key": "greeting"}) },
        ToolCall { id: "toolu_2".into(), name: "clock.now".into(), arguments: json!({}) },
    ];
    let usage = Usage { input_tokens: 50, output_tokens: 20, ..Default::default() };
    assert_eq!(first, ModelResponse { content: Some("Looking.".into()), tool_calls: calls, usage, billing: None });

    std::sync::Arc::make_mut(&mut request.messages).push(Message::Assistant { content: first.content, tool_calls: first.tool_calls });
    for (id, name, content, is_error) in [("toolu_1", "kv.get", "\"hello\"", false), ("toolu_2", "clock.now", "clock unavailable", true)] {
        std::sync::Arc::make_mut(&mut request.messages).push(Message::Tool {
            tool_call_id: id.into(),
            name: name.into(),
            content: content.into(),
            is_error,
        });
    }
    let second = provider.complete(&request).await.expect("second call succeeds");
    let usage = Usage { input_tokens: 90, output_tokens: 11, ..Default::default() };
    assert_eq!(
        second,
        ModelResponse { content: Some("Greeting is hello; the clock failed.".into()), tool_calls: vec![], usage, billing: None }
    );

    let requests = recorder.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0]["x-api-key"], KEY);
    assert_eq!(requests[0]["anthropic-version"], "2023-06-01");
    assert_eq!(
        requests[1]["body"],
        json!({
            "model": "test-model",
            "max_tokens": 4096,
            "system": "Be brief.",
            "messages": [
                {"role": "user", "content": "Greeting and time?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Looking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "kv__get", "input": {"key": "greeting"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "clock__now", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "\"hello\""},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "clock unavailable", "is_error": true},
                ]},
            ],
            "tools": [
                {"name": "kv__get", "description": "The kv.get tool.", "input_schema": {"type": "object"}},
                {"name": "clock__now", "description": "The clock.now tool.", "input_schema": {"type": "object"}},
            ],
        })
    );
}
