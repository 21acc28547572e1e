//! Tools an agent can call. Every tool implements [`Tool`]; a [`ToolSet`]
//! holds the tools one agent version may use, validates arguments against
//! each tool's JSON Schema, and runs calls with a timeout.

mod agents;
mod builtin;
mod http;
pub mod mcp;
mod mcp_sse;
pub mod rate;
pub mod router;
mod sandbox_tools;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agentrt_store::Store;
use agentrt_types::spec::{AgentSpec, BORROW_TOOL, DELEGATE_TOOL, HANDOVER_TOOL};
use agentrt_types::{SessionId, ToolDef, TurnId};
use async_trait::async_trait;
use serde_json::Value;

pub use builtin::builtin;
pub use http::HttpTool;
pub use sandbox_tools::{sandbox_tools, EXEC_OUTPUT_LIMIT};

/// What a tool call knows about where it runs.
#[derive(Clone)]
pub struct ToolContext {
    pub session_id: SessionId,
    pub turn_id: TurnId,
    pub step: u32,
    /// `{session}:{turn}:{step}`: the same on every retry of this call.
    pub idempotency_key: String,
    pub store: Arc<dyn Store>,
    pub http: reqwest::Client,
    /// W3C trace context of the tool-call span, for outgoing requests.
    pub traceparent: Option<String>,
    /// The session's sandbox, when the agent has one.
    pub sandbox: Option<Arc<agentrt_sandbox::SessionSandbox>>,
}

/// Why a tool call failed. The message is shown to the model.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("unknown tool {0:?}")]
    UnknownTool(String),
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    #[error("timed out after {} s", .0.as_secs_f64())]
    Timeout(Duration),
    /// The tool's server could not be reached or answered 429/5xx; a retry
    /// may succeed.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("rate limited: no capacity for {0} within {1} ms; try again later")]
    RateLimited(String, u64),
    #[error("circuit open for {target}: it failed {failures} times in a row; next try in {retry_in_s} s")]
    BreakerOpen { target: String, failures: u32, retry_in_s: u64 },
    #[error("{0}")]
    Failed(String),
}

impl ToolError {
    /// Whether the failure may go away on its own (worth a retry, and
    /// counted by the circuit breaker).
    pub fn is_transient(&self) -> bool {
        matches!(self, ToolError::Timeout(_) | ToolError::Unavailable(_))
    }
}

/// A tool.
#[async_trait]
pub trait Tool: Send + Sync {
    /// Name, description and input schema as offered to the model.
    fn def(&self) -> &ToolDef;
    /// Whether a call may be repeated after a crash without a second effect.
    fn idempotent(&self) -> bool;
    /// Longest a call may take.
    fn timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
    /// What the circuit breaker guards (e.g. an HTTP `host:port`); `None`
    /// for tools that run in-process.
    fn target(&self) -> Option<String> {
        None
    }
    /// Calls allowed per second, if the tool is rate limited.
    fn rate_per_second(&self) -> Option<f64> {
        None
    }
    /// Runs the tool.
    async fn call(&self, ctx: &ToolContext, args: Value) -> Result<Value, ToolError>;
}

/// A tool's schema did not compile.
#[derive(Debug, thiserror::Error)]
#[error("{path}: invalid JSON Schema: {message}")]
pub struct SchemaError {
    pub path: String,
    pub message: String,
}

struct Entry {
    tool: Arc<dyn Tool>,
    validator: jsonschema::Validator,
}

/// The tools of one agent version: built-ins, HTTP tools, and the tools its
/// MCP servers offer (known after [`ToolSet::discover`]).
pub struct ToolSet {
    tools: BTreeMap<String, Entry>,
    mcp: Vec<Arc<mcp::McpServer>>,
}

/// Every built-in and sandbox tool, with the server policies see it under
/// (`builtin` or `sandbox`); the same on every node and for every agent.
pub fn catalog() -> Vec<(ToolDef, &'static str)> {
    let builtins = agentrt_types::spec::BUILTIN_TOOLS.iter().filter_map(|n| builtin(n)).map(|t| (t.def().clone(), "builtin"));
    builtins.chain(sandbox_tools().into_iter().map(|t| (t.def().clone(), "sandbox"))).collect()
}

impl ToolSet {
    /// Builds the tool set an agent spec declares. Stdio MCP servers run as
    /// host processes only if `allow_host_stdio`.
    pub fn for_agent(spec: &AgentSpec, allow_host_stdio: bool) -> Result<ToolSet, SchemaError> {
        let mut tools: Vec<(String, Arc<dyn Tool>)> = Vec::new();
        for name in spec.tools.enabled_builtins() {
            if let Some(t) = builtin(&name) {
                tools.push((name.clone(), t));
            }
        }
        if spec.sandbox.is_some() {
            for tool in sandbox_tools() {
                tools.push((format!("sandbox tool {}", tool.def().name), tool));
            }
        }
        for (i, h) in spec.tools.http.iter().enumerate() {
            tools.push((format!("tools.http[{i}].input_schema"), Arc::new(HttpTool::new(h.clone()))));
        }
        if !spec.agents.handover.is_empty() {
            tools.push((HANDOVER_TOOL.to_owned(), Arc::new(agents::RuntimeTool::handover(&spec.agents.handover))));
        }
        if !spec.agents.borrow.is_empty() {
            tools.push((BORROW_TOOL.to_owned(), Arc::new(agents::RuntimeTool::borrow(&spec.agents.borrow))));
        }
        if !spec.agents.delegate.is_empty() {
            tools.push((DELEGATE_TOOL.to_owned(), Arc::new(agents::RuntimeTool::delegate(&spec.agents.delegate))));
        }
        let mut map = BTreeMap::new();
        for (path, tool) in tools {
            let validator =
                jsonschema::validator_for(&tool.def().input_schema).map_err(|e| SchemaError { path, message: e.to_string() })?;
            map.insert(tool.def().name.clone(), Entry { tool, validator });
        }
        let in_sandbox = spec.sandbox.is_some();
        let mcp = spec.tools.mcp.iter().map(|s| Arc::new(mcp::McpServer::new(s.clone(), allow_host_stdio, in_sandbox))).collect();
        Ok(ToolSet { tools: map, mcp })
    }

    /// Lists the tools of MCP servers not yet listed or that announced a
    /// change; servers in sandboxes in `sandbox`, the session's. A server
    /// that cannot be reached is reported and skipped.
    pub async fn discover(&self, sandbox: Option<&Arc<agentrt_sandbox::manager::SessionSandbox>>) -> Vec<(String, ToolError)> {
        let mut failed = Vec::new();
        for server in &self.mcp {
            if let Err(e) = server.discover(sandbox).await {
                failed.push((server.spec.name.clone(), e));
            }
        }
        failed
    }

    /// Definitions to offer the model.
    pub fn defs(&self) -> Vec<ToolDef> {
        let mut defs: Vec<ToolDef> = self.tools.values().map(|e| e.tool.def().clone()).collect();
        for server in &self.mcp {
            defs.extend(server.tools().into_iter().map(|t| t.def));
        }
        defs
    }

    /// The MCP server behind `{server}.{tool}`, with the tool's remote name
    /// and retry safety.
    fn mcp_tool(&self, name: &str) -> Option<(&Arc<mcp::McpServer>, (String, bool))> {
        let (server, _) = name.split_once('.')?;
        let server = self.mcp.iter().find(|s| s.spec.name == server)?;
        Some((server, server.find(name)?))
    }

    /// Where the named tool lives, as policies see it: `builtin`, `sandbox`,
    /// `http`, or the name of its MCP server.
    pub fn server_of(&self, name: &str) -> String {
        if agentrt_types::spec::BUILTIN_TOOLS.contains(&name) {
            "builtin".into()
        } else if [HANDOVER_TOOL, BORROW_TOOL, DELEGATE_TOOL].contains(&name) {
            "agents".into()
        } else if agentrt_types::sandbox::SANDBOX_TOOLS.contains(&name) {
            "sandbox".into()
        } else if self.tools.contains_key(name) {
            "http".into()
        } else {
            name.split_once('.').map(|(server, _)| server.to_owned()).unwrap_or_default()
        }
    }

    /// The breaker target of the named tool.
    pub fn target(&self, name: &str) -> Option<String> {
        match self.tools.get(name) {
            Some(e) => e.tool.target(),
            None => self.mcp_tool(name).map(|(s, _)| s.target()),
        }
    }

    /// The rate limit of the named tool.
    pub fn rate_per_second(&self, name: &str) -> Option<f64> {
        self.tools.get(name).and_then(|e| e.tool.rate_per_second())
    }

    /// Whether the named tool is idempotent (`false` for unknown tools).
    pub fn is_idempotent(&self, name: &str) -> bool {
        match self.tools.get(name) {
            Some(e) => e.tool.idempotent(),
            None => self.mcp_tool(name).is_some_and(|(_, (_, idempotent))| idempotent),
        }
    }

    /// Validates the arguments, then runs the tool under its timeout.
    pub async fn call(&self, name: &str, ctx: &ToolContext, args: Value) -> Result<Value, ToolError> {
        let Some(entry) = self.tools.get(name) else {
            // A tool the server added since the last listing: list again once.
            if self.mcp_tool(name).is_none() {
                if let Some(server) = name.split_once('.').and_then(|(s, _)| self.mcp.iter().find(|m| m.spec.name == s)) {
                    server.mark_changed();
                    server.discover(ctx.sandbox.as_ref()).await?;
                }
            }
            // MCP servers validate their own input schemas.
            let (server, (remote_name, _)) = self.mcp_tool(name).ok_or_else(|| ToolError::UnknownTool(name.to_owned()))?;
            let limit = server.timeout();
            return match tokio::time::timeout(limit, server.call(ctx.sandbox.as_ref(), &remote_name, args)).await {
                Ok(r) => r,
                Err(_) => Err(ToolError::Timeout(limit)),
            };
        };
        let problems: Vec<String> = entry
            .validator
            .iter_errors(&args)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{at}: {e}")
                }
            })
            .collect();
        if !problems.is_empty() {
            return Err(ToolError::InvalidArguments(problems.join("; ")));
        }
        let limit = entry.tool.timeout();
        match tokio::time::timeout(limit, entry.tool.call(ctx, args)).await {
            Ok(r) => r,
            Err(_) => Err(ToolError::Timeout(limit)),
        }
    }
}

#[cfg(test)]
mod tests;
