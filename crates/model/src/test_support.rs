//! Fixtures shared by the providers' wire-format tests.

use agentrt_types::{Message, ToolCall, ToolDef};
use serde_json::json;

use crate::ModelRequest;

/// A request with everything a provider has to convert: instructions, a user
/// message, an assistant message with text and two tool calls, one good and
/// one failed tool result, and two tools.
pub(crate) fn full_request() -> ModelRequest {
    ModelRequest {
        model: "test-model".into(),
        instructions: "You are terse.".into(),
        messages: std::sync::Arc::new(vec![
            Message::User { content: "What is stored under greeting, and what time is it?".into() },
            Message::Assistant {
                content: Some("Let me look.".into()),
                tool_calls: vec![
                    ToolCall { id: "call_1".into(), name: "kv.get".into(), arguments: json!({"key": "greeting"}) },
                    ToolCall { id: "call_2".into(), name: "clock.now".into(), arguments: json!({}) },
                ],
            },
            Message::Tool { tool_call_id: "call_1".into(), name: "kv.get".into(), content: "\"hello\"".into(), is_error: false },
            Message::Tool { tool_call_id: "call_2".into(), name: "clock.now".into(), content: "clock unavailable".into(), is_error: true },
        ]),
        tools: vec![
            ToolDef {
                name: "kv.get".into(),
                description: "Reads a value from the session's key-value store.".into(),
                input_schema: json!({"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}),
            },
            ToolDef { name: "clock.now".into(), description: "The current time.".into(), input_schema: json!({"type": "object"}) },
        ],
        temperature: Some(0.25),
        max_tokens: Some(256),
        stream: false,
        idempotency_key: "s1:t1:1".into(),
        traceparent: None,
    }
}
