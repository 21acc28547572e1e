//! Model providers behind one trait. The agent loop builds a provider-neutral
//! [`ModelRequest`] and gets back a [`ModelResponse`]; each provider module
//! converts to and from its wire format.
//!
//! - `scripted`: deterministic and offline; replies come from the agent spec.
//! - `openai`: Chat Completions (tools, streaming) at any compatible base URL.
//! - `anthropic`: the Messages API with tools.

pub mod anthropic;
mod http;
pub mod openai;
pub mod scripted;
#[cfg(test)]
mod test_support;
mod wire_names;

use std::sync::Arc;

use agentrt_types::spec::ModelSpec;
use agentrt_types::{Message, ToolCall, ToolDef, Usage};
use async_trait::async_trait;

pub use wire_names::{from_wire_name, to_wire_name};

/// Everything a provider needs for one model call.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRequest {
    pub model: String,
    /// System instructions.
    pub instructions: String,
    /// Shared with the caller, so a long conversation is not copied per call.
    pub messages: Arc<Vec<Message>>,
    pub tools: Vec<ToolDef>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub stream: bool,
    /// `{session}:{turn}:{step}`; sent where the provider accepts one.
    pub idempotency_key: String,
    /// W3C trace context of the model-call span, sent as `traceparent`.
    pub traceparent: Option<String>,
}

/// What the model answered.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelResponse {
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
    /// Who answered and what it cost, when the provider priced the call
    /// itself (the gateway: the route that answered, with its price).
    pub billing: Option<agentrt_types::event::Billing>,
}

/// Why a model call failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The provider is misconfigured (missing key, bad URL).
    #[error("model provider misconfigured: {0}")]
    Config(String),
    /// The request did not get an HTTP response.
    #[error("model request failed: {0}")]
    Transport(String),
    /// The provider answered with an error status.
    #[error("model provider returned HTTP {status}: {message}")]
    Status { status: u16, message: String },
    /// The provider's answer could not be understood.
    #[error("model response could not be decoded: {0}")]
    Decode(String),
}

impl ModelError {
    /// Whether repeating the call may succeed (network errors, 429, 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            ModelError::Transport(_) => true,
            ModelError::Status { status, .. } => *status == 429 || *status >= 500,
            ModelError::Config(_) | ModelError::Decode(_) => false,
        }
    }
}

/// A model provider.
#[async_trait]
pub trait ModelProvider: Send + Sync {
    /// Short provider name recorded on `model.requested` events.
    fn name(&self) -> &'static str;
    /// Performs one model call.
    async fn complete(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError>;
}

/// Builds the provider an agent's model spec names.
pub fn provider_for(spec: &ModelSpec, http: reqwest::Client) -> Result<Arc<dyn ModelProvider>, ModelError> {
    match spec.provider.as_str() {
        "scripted" => Ok(Arc::new(scripted::ScriptedProvider::new(spec.script.clone()))),
        "openai" => Ok(Arc::new(openai::OpenAiProvider::from_spec(spec, http)?)),
        "anthropic" => Ok(Arc::new(anthropic::AnthropicProvider::from_spec(spec, http)?)),
        other => Err(ModelError::Config(format!("unknown provider {other:?}"))),
    }
}
