//! The `gateway` model provider: the agent loop's model calls go through a
//! route of the server's model gateway (`[model] provider = "gateway"`,
//! `model = "<route>"`), with its fallbacks, cooldowns, concurrency limit,
//! provider key and price, exactly like calls from code in a sandbox.

use std::sync::Arc;

use agentrt_gateway::{Gateway, GatewayError, Reply};
use agentrt_model::{openai, ModelError, ModelProvider, ModelRequest, ModelResponse};
use agentrt_types::event::Billing;
use agentrt_types::Usage;
use async_trait::async_trait;
use serde_json::Value;

/// Calls one gateway route in the OpenAI Chat Completions format.
pub struct GatewayModel {
    pub gateway: Arc<Gateway>,
    pub route: String,
}

#[async_trait]
impl ModelProvider for GatewayModel {
    fn name(&self) -> &'static str {
        "gateway"
    }

    async fn complete(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        let mut body = openai::request_body(request);
        if let Some(o) = body.as_object_mut() {
            // The route names the upstream model; the loop reads whole answers.
            o.insert("model".into(), Value::String(self.route.clone()));
            o.insert("stream".into(), Value::Bool(false));
            o.remove("stream_options");
        }
        let (answer, record) = match self.gateway.chat(body).await {
            Ok(Reply::Json { body, record }) => (body, record),
            Ok(Reply::Stream { .. }) => return Err(ModelError::Decode("the gateway streamed an answer the loop asked for whole".into())),
            Err(e) => return Err(model_error(e)),
        };
        // No local estimate is needed (request size 0): the gateway's record,
        // estimated there if the upstream sent no usage, is what was priced.
        let mut response = openai::parse_response_value(answer, 0)?;
        response.usage =
            Usage { input_tokens: record.input_tokens, output_tokens: record.output_tokens, cached_tokens: record.cached_tokens };
        response.billing = Some(Billing { provider: format!("gateway:{}", record.route), model: record.model, cost_usd: record.cost_usd });
        Ok(response)
    }
}

fn model_error(e: GatewayError) -> ModelError {
    match e {
        GatewayError::NoRoute(_) | GatewayError::Config(_) | GatewayError::BadRequest(_) => ModelError::Config(e.to_string()),
        GatewayError::Upstream { status, body, .. } => {
            ModelError::Status { status, message: String::from_utf8_lossy(&body).chars().take(500).collect() }
        }
        // Every route failed retryably: worth the loop's own retries.
        GatewayError::Exhausted { .. } => ModelError::Transport(e.to_string()),
    }
}
