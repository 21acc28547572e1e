//! Placeholder: being written.

use agentrt_types::spec::ModelSpec;
use async_trait::async_trait;

use crate::{ModelError, ModelProvider, ModelRequest, ModelResponse};

pub struct OpenAiProvider;

impl OpenAiProvider {
    pub fn from_spec(_spec: &ModelSpec, _http: reqwest::Client) -> Result<Self, ModelError> {
        Err(ModelError::Config("not built yet".into()))
    }
}

#[async_trait]
impl ModelProvider for OpenAiProvider {
    fn name(&self) -> &'static str {
        "openai"
    }
    async fn complete(&self, _request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        Err(ModelError::Config("not built yet".into()))
    }
}
