//! Wire-format tests of the OpenAI conversions.

use insta::{assert_debug_snapshot, assert_json_snapshot};
use serde_json::json;

use super::*;
use crate::test_support::full_request;

#[test]
fn request_with_history_and_tools() {
    // Key order of JSON objects depends on serde_json's `preserve_order`,
    // which another crate of the workspace turns on: compare sorted.
    insta::with_settings!({sort_maps => true}, { assert_json_snapshot!(request_body(&full_request())) });
}

#[test]
fn streaming_request_asks_for_usage() {
    let request = ModelRequest { instructions: String::new(), tools: vec![], stream: true, ..full_request() };
    let body = request_body(&request);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(body["messages"][0]["role"], "user", "no system message without instructions");
    assert!(body.get("tools").is_none());
}

#[test]
fn text_response() {
    let body = json!({
        "id": "chatcmpl-1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "It is noon."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 31, "completion_tokens": 4, "total_tokens": 35},
    });
    assert_debug_snapshot!(parse_response(body.to_string().as_bytes(), 1000).unwrap());
}

#[test]
fn tool_call_response() {
    let body = json!({
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant",
            "content": null,
            "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "kv__get", "arguments": "{\"key\":\"greeting\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "clock__now", "arguments": ""}},
            ],
        }}],
        "usage": {"prompt_tokens": 52, "completion_tokens": 18},
    });
    assert_debug_snapshot!(parse_response(body.to_string().as_bytes(), 1000).unwrap());
}

#[test]
fn unparsable_arguments_are_a_decode_error() {
    let body = json!({"choices": [{"message": {"tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "kv__get", "arguments": "{\"key\":"}},
    ]}}]});
    let err = parse_response(body.to_string().as_bytes(), 10).unwrap_err();
    assert!(matches!(err, ModelError::Decode(_)), "{err:?}");
    assert!(err.to_string().contains("arguments of tool call call_a (kv__get) are not valid JSON"), "{err}");
}

/// Chunks as OpenAI sends them: role first, content in pieces, two tool
/// calls whose arguments are split (and interleaved), then the usage chunk.
fn stream_chunks() -> Vec<Value> {
    let delta = |d: Value| json!({"choices": [{"index": 0, "delta": d, "finish_reason": null}], "usage": null});
    let call = |index: u32, rest: Value| {
        let mut c = json!({"index": index});
        c.as_object_mut().expect("object literal").extend(rest.as_object().expect("object literal").clone());
        delta(json!({"tool_calls": [c]}))
    };
    vec![
        delta(json!({"role": "assistant", "content": ""})),
        delta(json!({"content": "Checking"})),
        delta(json!({"content": " now."})),
        call(0, json!({"id": "call_a", "type": "function", "function": {"name": "kv__get", "arguments": ""}})),
        call(0, json!({"function": {"arguments": "{\"key\":"}})),
        call(1, json!({"id": "call_b", "type": "function", "function": {"name": "clock__now", "arguments": "{"}})),
        call(0, json!({"function": {"arguments": "\"greeting\"}"}})),
        call(1, json!({"function": {"arguments": "}"}})),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}], "usage": null}),
        json!({"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 21, "total_tokens": 61}}),
    ]
}

#[test]
fn assembled_stream() {
    let mut state = StreamState::default();
    for chunk in stream_chunks() {
        assert!(!state.push(&chunk.to_string()).unwrap());
    }
    assert!(state.push("[DONE]").unwrap());
    assert_debug_snapshot!(state.finish(1000).unwrap());
}

#[test]
fn stream_without_usage_is_estimated_and_cut_stream_fails() {
    let mut state = StreamState::default();
    for chunk in &stream_chunks()[..9] {
        state.push(&chunk.to_string()).unwrap();
    }
    let usage = state.finish(400).unwrap().usage;
    // 400 request bytes; "Checking now." + both calls' names and arguments = 48 bytes.
    assert_eq!((usage.input_tokens, usage.output_tokens), (100, 12));

    let mut cut = StreamState::default();
    for chunk in &stream_chunks()[..5] {
        cut.push(&chunk.to_string()).unwrap();
    }
    let err = cut.finish(400).unwrap_err();
    assert!(matches!(err, ModelError::Transport(_)), "{err:?}");
}
