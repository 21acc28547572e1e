//! OpenAI Chat Completions (`POST {base_url}/chat/completions`) with tools
//! and optional streaming, against OpenAI or any compatible server.
//!
//! The conversions to and from the wire format are pure functions
//! ([`request_body`], [`parse_response`], [`StreamState`]) so they can be
//! snapshot-tested without a server.

use std::collections::BTreeMap;

use agentrt_types::spec::ModelSpec;
use agentrt_types::{Message, ToolCall, Usage};
use async_trait::async_trait;
use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::{from_wire_name, http, to_wire_name, ModelError, ModelProvider, ModelRequest, ModelResponse};

const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
const DEFAULT_KEY_ENV: &str = "OPENAI_API_KEY";

/// Calls an OpenAI-compatible Chat Completions endpoint.
pub struct OpenAiProvider {
    endpoint: http::Endpoint,
}

impl OpenAiProvider {
    /// Builds the provider from an agent's model spec. The key comes from the
    /// variable `api_key_env` names (default `OPENAI_API_KEY`); it may be
    /// missing only when `base_url` points somewhere else (a local server).
    pub fn from_spec(spec: &ModelSpec, http: reqwest::Client) -> Result<Self, ModelError> {
        Ok(OpenAiProvider { endpoint: http::Endpoint::new(spec, http, DEFAULT_BASE_URL, "/chat/completions", DEFAULT_KEY_ENV)? })
    }
}

#[async_trait]
impl ModelProvider for OpenAiProvider {
    fn name(&self) -> &'static str {
        "openai"
    }

    async fn complete(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        let body = serde_json::to_vec(&request_body(request)).expect("a serde_json::Value always serializes");
        let request_bytes = body.len();
        let mut call = self.endpoint.post_json(body, request.traceparent.as_deref()).header("Idempotency-Key", &request.idempotency_key);
        if let Some(key) = &self.endpoint.api_key {
            call = call.bearer_auth(key);
        }
        let response = http::check_status(call.send().await.map_err(http::transport)?).await?;
        if request.stream {
            return read_stream(response, request_bytes).await;
        }
        let bytes = response.bytes().await.map_err(http::transport)?;
        parse_response(&bytes, request_bytes)
    }
}

/// The Chat Completions request body for `request`.
pub fn request_body(request: &ModelRequest) -> Value {
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    if !request.instructions.is_empty() {
        messages.push(json!({"role": "system", "content": request.instructions}));
    }
    messages.extend(request.messages.iter().map(wire_message));

    let mut body = Map::new();
    body.insert("model".into(), json!(request.model));
    body.insert("messages".into(), Value::Array(messages));
    if !request.tools.is_empty() {
        let tools = request.tools.iter().map(|t| {
            json!({
                "type": "function",
                "function": {"name": to_wire_name(&t.name), "description": t.description, "parameters": t.input_schema},
            })
        });
        body.insert("tools".into(), tools.collect());
    }
    if let Some(t) = request.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(n) = request.max_tokens {
        body.insert("max_tokens".into(), json!(n));
    }
    if request.stream {
        body.insert("stream".into(), json!(true));
        // Without this the stream carries no token counts at all.
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(body)
}

fn wire_message(message: &Message) -> Value {
    match message {
        Message::User { content } => json!({"role": "user", "content": content}),
        Message::Assistant { content, tool_calls } if tool_calls.is_empty() => {
            // An assistant message needs content when it has no tool calls.
            json!({"role": "assistant", "content": content.as_deref().unwrap_or("")})
        }
        Message::Assistant { content, tool_calls } => {
            let calls: Vec<Value> = tool_calls
                .iter()
                .map(|c| {
                    json!({
                        "id": c.id,
                        "type": "function",
                        "function": {"name": to_wire_name(&c.name), "arguments": c.arguments.to_string()},
                    })
                })
                .collect();
            json!({"role": "assistant", "content": content, "tool_calls": calls})
        }
        // Chat Completions has no error flag for tool results; the content
        // is expected to say what went wrong.
        Message::Tool { tool_call_id, content, .. } => {
            json!({"role": "tool", "tool_call_id": tool_call_id, "content": content})
        }
    }
}

/// Decodes a non-streaming Chat Completions response. `request_bytes` (the
/// size of the request body) feeds the usage estimate when the server
/// reports no usage.
pub fn parse_response(body: &[u8], request_bytes: usize) -> Result<ModelResponse, ModelError> {
    decode(serde_json::from_slice(body), request_bytes)
}

/// Decodes a Chat Completions response already parsed as JSON (e.g. one the
/// model gateway answered).
pub fn parse_response_value(body: Value, request_bytes: usize) -> Result<ModelResponse, ModelError> {
    decode(serde_json::from_value(body), request_bytes)
}

fn decode(wire: Result<WireResponse, serde_json::Error>, request_bytes: usize) -> Result<ModelResponse, ModelError> {
    let wire = wire.map_err(|e| ModelError::Decode(format!("chat completion is not the expected JSON: {e}")))?;
    let Some(choice) = wire.choices.into_iter().next() else {
        return Err(ModelError::Decode("chat completion has no choices".into()));
    };
    let tool_calls = choice
        .message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .map(|c| tool_call(c.id, &c.function.name, &c.function.arguments))
        .collect::<Result<Vec<_>, _>>()?;
    let mut response = ModelResponse { content: choice.message.content, tool_calls, usage: Usage::default(), billing: None };
    response.usage = http::usage_or_estimate(wire.usage.map(Usage::from), request_bytes, &response);
    Ok(response)
}

/// Builds a [`ToolCall`] from wire parts: maps the name back and parses the
/// arguments, which OpenAI sends as a JSON-encoded string.
fn tool_call(id: String, wire_name: &str, arguments: &str) -> Result<ToolCall, ModelError> {
    // Some compatible servers send "" for a call without arguments.
    let arguments = if arguments.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        serde_json::from_str(arguments).map_err(|e| {
            let shown: String = arguments.chars().take(200).collect();
            ModelError::Decode(format!("arguments of tool call {id} ({wire_name}) are not valid JSON ({e}): {shown}"))
        })?
    };
    Ok(ToolCall { id, name: from_wire_name(wire_name), arguments })
}

/// Reads a streamed response to the end and assembles it.
async fn read_stream(response: reqwest::Response, request_bytes: usize) -> Result<ModelResponse, ModelError> {
    let mut events = response.bytes_stream().eventsource();
    let mut state = StreamState::default();
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| match e {
            EventStreamError::Transport(e) => http::transport(e),
            EventStreamError::Utf8(e) => ModelError::Decode(format!("event stream is not UTF-8: {e}")),
            EventStreamError::Parser(e) => ModelError::Decode(format!("malformed event stream: {e}")),
        })?;
        if state.push(&event.data)? {
            break;
        }
    }
    state.finish(request_bytes)
}

/// A streamed response being assembled from its chunks: content deltas are
/// appended, tool-call deltas are merged by their index (id and name arrive
/// in the first delta, the arguments string in pieces).
#[derive(Debug, Default)]
pub struct StreamState {
    content: Option<String>,
    calls: BTreeMap<u32, PartialCall>,
    usage: Option<Usage>,
    finish_reason: Option<String>,
    done: bool,
}

#[derive(Debug, Default)]
struct PartialCall {
    id: Option<String>,
    name: Option<String>,
    arguments: String,
}

impl StreamState {
    /// Adds the data of one server-sent event. Returns `true` at
    /// `data: [DONE]`, after which nothing more is expected.
    pub fn push(&mut self, data: &str) -> Result<bool, ModelError> {
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(true);
        }
        if data.is_empty() {
            return Ok(false);
        }
        let chunk: WireChunk =
            serde_json::from_str(data).map_err(|e| ModelError::Decode(format!("stream chunk is not the expected JSON ({e}): {data}")))?;
        if let Some(error) = chunk.error {
            // An error inside a 200 stream is the server giving up mid-answer
            // (overload, timeout); treat it like a dropped connection.
            let message = error.pointer("/message").and_then(Value::as_str).map_or_else(|| error.to_string(), str::to_owned);
            return Err(ModelError::Transport(format!("provider failed mid-stream: {message}")));
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage.into());
        }
        // Only one completion is requested, so only choice 0 matters.
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason);
            }
            let Some(delta) = choice.delta else { continue };
            if let Some(text) = delta.content {
                self.content.get_or_insert_with(String::new).push_str(&text);
            }
            for d in delta.tool_calls.unwrap_or_default() {
                let call = self.calls.entry(d.index).or_default();
                if let Some(id) = d.id.filter(|s| !s.is_empty()) {
                    call.id = Some(id);
                }
                if let Some(f) = d.function {
                    if let Some(name) = f.name.filter(|s| !s.is_empty()) {
                        call.name = Some(name);
                    }
                    call.arguments.push_str(f.arguments.as_deref().unwrap_or(""));
                }
            }
        }
        Ok(false)
    }

    /// The assembled response. Fails if the stream broke off before the
    /// model finished or a tool call lacks its id or name.
    pub fn finish(self, request_bytes: usize) -> Result<ModelResponse, ModelError> {
        if !self.done && self.finish_reason.is_none() {
            return Err(ModelError::Transport("event stream ended before the response was complete".into()));
        }
        let tool_calls = self
            .calls
            .into_iter()
            .map(|(index, c)| {
                let missing = |what: &str| ModelError::Decode(format!("streamed tool call {index} has no {what}"));
                let id = c.id.ok_or_else(|| missing("id"))?;
                let name = c.name.ok_or_else(|| missing("function name"))?;
                tool_call(id, &name, &c.arguments)
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Servers open with an empty content delta even when the answer is
        // only tool calls; that is no text.
        let content = self.content.filter(|c| !c.is_empty());
        let mut response = ModelResponse { content, tool_calls, usage: Usage::default(), billing: None };
        response.usage = http::usage_or_estimate(self.usage, request_bytes, &response);
        Ok(response)
    }
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    choices: Vec<WireChoice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireMessage,
}

#[derive(Deserialize)]
struct WireMessage {
    content: Option<String>,
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Deserialize)]
struct WireToolCall {
    id: String,
    function: WireFunction,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<WirePromptDetails>,
}

#[derive(Deserialize)]
struct WirePromptDetails {
    #[serde(default)]
    cached_tokens: u64,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Usage {
        let cached_tokens = u.prompt_tokens_details.map_or(0, |d| d.cached_tokens);
        Usage { input_tokens: u.prompt_tokens, output_tokens: u.completion_tokens, cached_tokens }
    }
}

#[derive(Deserialize)]
struct WireChunk {
    #[serde(default)]
    choices: Vec<WireChunkChoice>,
    usage: Option<WireUsage>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WireChunkChoice {
    #[serde(default)]
    index: u32,
    delta: Option<WireDelta>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireDelta {
    content: Option<String>,
    tool_calls: Option<Vec<WireToolCallDelta>>,
}

#[derive(Deserialize)]
struct WireToolCallDelta {
    index: u32,
    id: Option<String>,
    function: Option<WireFunctionDelta>,
}

#[derive(Deserialize)]
struct WireFunctionDelta {
    name: Option<String>,
    arguments: Option<String>,
}

#[cfg(test)]
#[path = "openai_tests.rs"]
mod tests;
