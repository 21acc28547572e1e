//! HTTP plumbing shared by the OpenAI and Anthropic providers: where to send,
//! which key to send, how to turn failures into [`ModelError`], and a usage
//! estimate for servers that report none.

use std::error::Error as _;

use agentrt_types::spec::ModelSpec;
use agentrt_types::Usage;
use serde_json::Value;

use crate::{ModelError, ModelResponse};

/// Where a provider sends its requests, and the key it authenticates with.
pub(crate) struct Endpoint {
    http: reqwest::Client,
    url: String,
    pub api_key: Option<String>,
}

impl Endpoint {
    /// `path` under the spec's base URL (or `default_base`), with the key from
    /// the spec's `api_key_env` (or `default_key_env`).
    pub fn new(spec: &ModelSpec, http: reqwest::Client, default_base: &str, path: &str, default_key_env: &str) -> Result<Self, ModelError> {
        let api_key = api_key(spec, default_key_env)?;
        Ok(Endpoint { http, url: format!("{}{path}", base_url(spec, default_base)), api_key })
    }

    /// A POST of a JSON body to the endpoint, carrying the trace context
    /// (authentication is the caller's).
    pub fn post_json(&self, body: Vec<u8>, traceparent: Option<&str>) -> reqwest::RequestBuilder {
        let req = self.http.post(&self.url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        match traceparent {
            Some(tp) => req.header("traceparent", tp),
            None => req,
        }
    }
}

/// The spec's base URL (or `default`) without a trailing slash, so paths can
/// be appended with `/`.
pub(crate) fn base_url(spec: &ModelSpec, default: &str) -> String {
    spec.base_url.as_deref().unwrap_or(default).trim_end_matches('/').to_owned()
}

/// Reads the API key from the environment variable the spec names (or
/// `default_env`). A missing key is only an error against the provider's own
/// endpoint: a custom base URL may be a local server that wants no key, or a
/// gateway that adds it.
pub(crate) fn api_key(spec: &ModelSpec, default_env: &str) -> Result<Option<String>, ModelError> {
    let var = spec.api_key_env.as_deref().unwrap_or(default_env);
    match std::env::var(var) {
        Ok(key) if !key.trim().is_empty() => Ok(Some(key.trim().to_owned())),
        _ if spec.base_url.is_some() => Ok(None),
        _ => Err(ModelError::Config(format!(
            "no API key for provider {:?}: set the environment variable {var} (or name another one in model.api_key_env)",
            spec.provider
        ))),
    }
}

/// A request that got no HTTP response, or whose body broke off.
pub(crate) fn transport(err: reqwest::Error) -> ModelError {
    // reqwest's own message ("error sending request for url ...") hides the
    // cause (connection refused, timeout), which lives in the source chain.
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    ModelError::Transport(message)
}

/// Passes a 2xx response through; turns any other into [`ModelError::Status`].
pub(crate) async fn check_status(response: reqwest::Response) -> Result<reqwest::Response, ModelError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    // The body is only used for the message; a body that breaks off still
    // leaves the status, which is what callers act on.
    let body = response.text().await.unwrap_or_default();
    Err(ModelError::Status { status: status.as_u16(), message: error_message(status, &body) })
}

/// The provider's own explanation of an error: `error.message` in the JSON
/// body (both OpenAI and Anthropic use it), else the start of the body.
pub(crate) fn error_message(status: reqwest::StatusCode, body: &str) -> String {
    const MAX_CHARS: usize = 500;
    let from_json =
        serde_json::from_str::<Value>(body).ok().and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(str::to_owned));
    if let Some(message) = from_json {
        return message;
    }
    let body = body.trim();
    if body.is_empty() {
        return status.canonical_reason().unwrap_or("no error message").to_owned();
    }
    body.chars().take(MAX_CHARS).collect()
}

/// The usage the server reported, or an estimate (about 4 bytes per token)
/// when it reported none: a model call is never recorded as free.
pub(crate) fn usage_or_estimate(reported: Option<Usage>, request_bytes: usize, response: &ModelResponse) -> Usage {
    match reported {
        // Some compatible servers send an all-zero usage object instead of none.
        Some(usage) if usage.input_tokens > 0 || usage.output_tokens > 0 => usage,
        _ => {
            let output_bytes = response.content.as_ref().map_or(0, String::len)
                + response.tool_calls.iter().map(|c| c.name.len() + c.arguments.to_string().len()).sum::<usize>();
            Usage { input_tokens: estimate_tokens(request_bytes), output_tokens: estimate_tokens(output_bytes), cached_tokens: 0 }
        }
    }
}

fn estimate_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4).max(1)
}

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;

    #[test]
    fn error_message_prefers_the_providers_message() {
        let body = r#"{"error": {"message": "Rate limit reached", "type": "requests"}}"#;
        assert_eq!(error_message(StatusCode::TOO_MANY_REQUESTS, body), "Rate limit reached");
        assert_eq!(error_message(StatusCode::BAD_GATEWAY, " upstream down \n"), "upstream down");
        assert_eq!(error_message(StatusCode::BAD_GATEWAY, ""), "Bad Gateway");
    }

    #[test]
    fn missing_key_is_an_error_only_without_base_url() {
        let mut spec = ModelSpec {
            provider: "openai".into(),
            model: "m".into(),
            base_url: None,
            api_key_env: Some("AGENTRT_TEST_KEY_THAT_IS_NEVER_SET".into()),
            temperature: None,
            max_tokens: None,
            stream: false,
            script: vec![],
        };
        let err = api_key(&spec, "UNUSED").unwrap_err();
        assert!(err.to_string().contains("AGENTRT_TEST_KEY_THAT_IS_NEVER_SET"), "{err}");
        spec.base_url = Some("http://127.0.0.1:8080/v1".into());
        assert_eq!(api_key(&spec, "UNUSED").unwrap(), None);
    }

    #[test]
    fn zero_usage_is_replaced_by_an_estimate() {
        let response = ModelResponse { content: Some("12345".into()), ..Default::default() };
        let usage = usage_or_estimate(Some(Usage::default()), 41, &response);
        assert_eq!((usage.input_tokens, usage.output_tokens), (11, 2));
        let reported = Usage { input_tokens: 7, output_tokens: 3, cached_tokens: 0 };
        assert_eq!(usage_or_estimate(Some(reported), 41, &response), reported);
    }
}
