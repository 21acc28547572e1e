//! The Anthropic Messages API (`POST {base_url}/v1/messages`) with tools.
//! Streaming is not used: `ModelRequest::stream` is ignored.
//!
//! The conversions to and from the wire format are pure functions
//! ([`request_body`], [`parse_response`]) so they can be snapshot-tested.

use agentrt_types::spec::ModelSpec;
use agentrt_types::{Message, ToolCall, Usage};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::{from_wire_name, http, to_wire_name, ModelError, ModelProvider, ModelRequest, ModelResponse};

const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
const DEFAULT_KEY_ENV: &str = "ANTHROPIC_API_KEY";
const API_VERSION: &str = "2023-06-01";
/// The Messages API requires `max_tokens`; used when the spec sets none.
const DEFAULT_MAX_TOKENS: u32 = 4096;

/// Calls the Anthropic Messages API.
pub struct AnthropicProvider {
    endpoint: http::Endpoint,
}

impl AnthropicProvider {
    /// Builds the provider from an agent's model spec. The key comes from the
    /// variable `api_key_env` names (default `ANTHROPIC_API_KEY`); it may be
    /// missing only when `base_url` points somewhere else (a gateway).
    pub fn from_spec(spec: &ModelSpec, http: reqwest::Client) -> Result<Self, ModelError> {
        Ok(AnthropicProvider { endpoint: http::Endpoint::new(spec, http, DEFAULT_BASE_URL, "/v1/messages", DEFAULT_KEY_ENV)? })
    }
}

#[async_trait]
impl ModelProvider for AnthropicProvider {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    async fn complete(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        let body = serde_json::to_vec(&request_body(request)).expect("a serde_json::Value always serializes");
        let request_bytes = body.len();
        let mut call = self.endpoint.post_json(body, request.traceparent.as_deref()).header("anthropic-version", API_VERSION);
        if let Some(key) = &self.endpoint.api_key {
            call = call.header("x-api-key", key);
        }
        let response = http::check_status(call.send().await.map_err(http::transport)?).await?;
        let bytes = response.bytes().await.map_err(http::transport)?;
        parse_response(&bytes, request_bytes)
    }
}

/// The Messages API request body for `request`.
pub fn request_body(request: &ModelRequest) -> Value {
    let mut messages: Vec<Value> = Vec::with_capacity(request.messages.len());
    // Index in `messages` of the user message collecting the current run of
    // tool results: Anthropic wants all results of one assistant message in
    // the single user message that follows it.
    let mut results_at: Option<usize> = None;
    for message in request.messages.iter() {
        match message {
            Message::Tool { tool_call_id, content, is_error, .. } => {
                let mut block = json!({"type": "tool_result", "tool_use_id": tool_call_id, "content": content});
                if *is_error {
                    block["is_error"] = json!(true);
                }
                match results_at {
                    Some(i) => push_block(&mut messages[i], block),
                    None => {
                        results_at = Some(messages.len());
                        messages.push(json!({"role": "user", "content": [block]}));
                    }
                }
                continue;
            }
            Message::User { content } => messages.push(json!({"role": "user", "content": content})),
            Message::Assistant { content, tool_calls } => {
                // Empty text blocks are rejected, so only non-empty text is sent.
                let text = content.as_deref().filter(|t| !t.is_empty());
                let mut blocks: Vec<Value> = text.map(|t| json!({"type": "text", "text": t})).into_iter().collect();
                blocks.extend(
                    tool_calls.iter().map(|c| json!({"type": "tool_use", "id": c.id, "name": to_wire_name(&c.name), "input": c.arguments})),
                );
                // A message without content is rejected too; it carries nothing.
                if !blocks.is_empty() {
                    messages.push(json!({"role": "assistant", "content": blocks}));
                }
            }
        }
        results_at = None;
    }

    let mut body = Map::new();
    body.insert("model".into(), json!(request.model));
    body.insert("max_tokens".into(), json!(request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)));
    if !request.instructions.is_empty() {
        body.insert("system".into(), json!(request.instructions));
    }
    body.insert("messages".into(), Value::Array(messages));
    if !request.tools.is_empty() {
        let tools = request
            .tools
            .iter()
            .map(|t| json!({"name": to_wire_name(&t.name), "description": t.description, "input_schema": t.input_schema}));
        body.insert("tools".into(), tools.collect());
    }
    if let Some(t) = request.temperature {
        body.insert("temperature".into(), json!(t));
    }
    Value::Object(body)
}

fn push_block(message: &mut Value, block: Value) {
    if let Some(blocks) = message["content"].as_array_mut() {
        blocks.push(block);
    }
}

/// Decodes a Messages API response: text blocks are joined, `tool_use`
/// blocks become tool calls, other blocks (thinking) are skipped.
/// `request_bytes` feeds the usage estimate when the server reports none.
pub fn parse_response(body: &[u8], request_bytes: usize) -> Result<ModelResponse, ModelError> {
    let wire: WireResponse =
        serde_json::from_slice(body).map_err(|e| ModelError::Decode(format!("Anthropic message is not the expected JSON: {e}")))?;
    let mut content: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in wire.content {
        match block {
            WireBlock::Text { text } => content.get_or_insert_with(String::new).push_str(&text),
            WireBlock::ToolUse { id, name, input } => {
                tool_calls.push(ToolCall { id, name: from_wire_name(&name), arguments: input });
            }
            WireBlock::Other => {}
        }
    }
    let mut response = ModelResponse { content, tool_calls, usage: Usage::default(), billing: None };
    let reported = wire.usage.map(|u| Usage {
        // Cached prompt tokens are reported apart from `input_tokens`, but
        // they were still read by the model.
        input_tokens: u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens,
        output_tokens: u.output_tokens,
        cached_tokens: u.cache_read_input_tokens,
    });
    response.usage = http::usage_or_estimate(reported, request_bytes, &response);
    Ok(response)
}

#[derive(Deserialize)]
struct WireResponse {
    content: Vec<WireBlock>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    // Sent as null by some versions, hence not plain `default`.
    #[serde(default, deserialize_with = "null_as_zero")]
    cache_creation_input_tokens: u64,
    #[serde(default, deserialize_with = "null_as_zero")]
    cache_read_input_tokens: u64,
}

fn null_as_zero<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use insta::{assert_debug_snapshot, assert_json_snapshot};

    use super::*;
    use crate::test_support::full_request;

    #[test]
    fn request_with_history_and_tools() {
        // Key order of JSON objects depends on serde_json's `preserve_order`,
        // which another crate of the workspace turns on: compare sorted.
        insta::with_settings!({sort_maps => true}, { assert_json_snapshot!(request_body(&full_request())) });
    }

    #[test]
    fn max_tokens_defaults_and_system_is_omitted_when_empty() {
        let request = ModelRequest { instructions: String::new(), max_tokens: None, ..full_request() };
        let body = request_body(&request);
        assert_eq!(body["max_tokens"], 4096);
        assert!(body.get("system").is_none());
    }

    #[test]
    fn text_response() {
        let body = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "test-model",
            "content": [{"type": "text", "text": "It is noon."}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 25, "output_tokens": 6, "cache_creation_input_tokens": null, "cache_read_input_tokens": 100},
        });
        assert_debug_snapshot!(parse_response(body.to_string().as_bytes(), 1000).unwrap());
    }

    #[test]
    fn tool_use_response() {
        let body = json!({
            "id": "msg_2", "type": "message", "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "need the store", "signature": "sig"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_a", "name": "kv__get", "input": {"key": "greeting"}},
                {"type": "tool_use", "id": "toolu_b", "name": "clock__now", "input": {}},
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 80, "output_tokens": 40},
        });
        assert_debug_snapshot!(parse_response(body.to_string().as_bytes(), 1000).unwrap());
    }
}
