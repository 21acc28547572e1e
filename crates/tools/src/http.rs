//! HTTP tools declared in an agent spec: each call POSTs the arguments as
//! JSON to the tool's URL with `Idempotency-Key: {session}:{turn}:{step}`,
//! so an endpoint can recognise a repeat after a crash.

use std::time::Duration;

use agentrt_types::spec::HttpToolSpec;
use agentrt_types::ToolDef;
use async_trait::async_trait;
use serde_json::Value;

use crate::{Tool, ToolContext, ToolError};

/// Longest response body kept, in bytes.
const MAX_BODY: usize = 1 << 20;

/// A tool backed by an HTTP endpoint.
pub struct HttpTool {
    spec: HttpToolSpec,
    def: ToolDef,
}

impl HttpTool {
    pub fn new(spec: HttpToolSpec) -> Self {
        let def = ToolDef { name: spec.name.clone(), description: spec.description.clone(), input_schema: spec.input_schema.clone() };
        HttpTool { spec, def }
    }
}

#[async_trait]
impl Tool for HttpTool {
    fn def(&self) -> &ToolDef {
        &self.def
    }

    fn idempotent(&self) -> bool {
        self.spec.idempotent
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.spec.timeout_seconds)
    }

    fn target(&self) -> Option<String> {
        let rest = self.spec.url.split_once("://").map(|(_, r)| r)?;
        Some(rest.split(['/', '?', '#']).next().unwrap_or(rest).to_owned())
    }

    fn rate_per_second(&self) -> Option<f64> {
        self.spec.rate_per_second
    }

    async fn call(&self, ctx: &ToolContext, args: Value) -> Result<Value, ToolError> {
        let mut req = ctx.http.post(&self.spec.url).header("Idempotency-Key", &ctx.idempotency_key).json(&args);
        if let Some(tp) = &ctx.traceparent {
            req = req.header("traceparent", tp);
        }
        for (k, v) in &self.spec.headers {
            req = req.header(k, v);
        }
        let resp =
            req.send().await.map_err(|e| ToolError::Unavailable(format!("request to {} failed: {}", self.spec.url, root_cause(&e))))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ToolError::Failed(format!("reading response failed: {e}")))?;
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_BODY)]).into_owned();
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(ToolError::Unavailable(format!("HTTP {}: {}", status.as_u16(), text.trim())));
        }
        if !status.is_success() {
            return Err(ToolError::Failed(format!("HTTP {}: {}", status.as_u16(), text.trim())));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

/// The innermost cause of a request error ("connection refused"), which
/// reqwest's own message hides.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
