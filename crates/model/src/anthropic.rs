//! Placeholder: being written.

use agentrt_types::spec::ModelSpec;
use async_trait::async_trait;

use crate::{ModelError, ModelProvider, ModelRequest, ModelResponse};

pub struct AnthropicProvider;

impl AnthropicProvider {
    pub fn from_spec(_spec: &ModelSpec, _http: reqwest::Client) -> Result<Self, ModelError> {
        Err(ModelError::Config("not built yet".into()))
    }
}

#[async_trait]
impl ModelProvider for AnthropicProvider {
    fn name(&self) -> &'static str {
        "anthropic"
    }
    async fn complete(&self, _request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        Err(ModelError::Config("not built yet".into()))
    }
}
