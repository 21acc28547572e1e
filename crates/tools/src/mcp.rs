//! MCP client: an agent's `[[tools.mcp]]` servers, reached over streamable
//! HTTP or as stdio processes through the official Rust SDK (`rmcp`). Tools
//! are discovered when a turn first needs them, exposed as `{server}.{tool}`
//! with their input schemas, and re-listed after the server sends
//! `notifications/tools/list_changed`. A connection that breaks is dropped
//! and made again on the next call.
//!
//! A stdio server of an agent with a `[sandbox]` runs inside each session's
//! sandbox, one process per session, spoken to through a pipe the sandbox's
//! agent holds open ([`SessionSandbox::pipe`]); it is started again when the
//! sandbox is replaced. Without a sandbox a stdio server is a host process,
//! and only if the operator allows it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use agentrt_sandbox::manager::SessionSandbox;
use agentrt_sandbox::protocol::ProcessSpec;
use agentrt_types::spec::McpServerSpec;
use agentrt_types::ToolDef;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ElicitRequestParams, ElicitResult, ElicitationAction,
    ElicitationCapability, ErrorData, FormElicitationCapability, Implementation, ProtocolVersion,
};
use rmcp::service::{NotificationContext, RequestContext, RoleClient, RunningService, ServiceError};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, ServiceExt};
use serde_json::Value;

use crate::ToolError;

/// Receives server notifications for one connection.
struct Handler {
    changed: Arc<AtomicBool>,
}

impl ClientHandler for Handler {
    /// Pins the protocol revision to the newest one with an `initialize`
    /// handshake, which every server we meet speaks, and announces form
    /// elicitation (answered by [`answer_elicitation`]).
    fn get_info(&self) -> ClientConfig {
        let mut capabilities = ClientCapabilities::default();
        capabilities.elicitation = Some(ElicitationCapability::new().with_form(FormElicitationCapability::default()));
        ClientConfig::new(capabilities, Implementation::new("agentrt", env!("CARGO_PKG_VERSION")))
            .with_protocol_version(ProtocolVersion::V_2025_11_25)
    }

    fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> impl std::future::Future<Output = Result<ElicitResult, ErrorData>> + Send + '_ {
        std::future::ready(Ok(answer_elicitation(&request)))
    }

    fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) -> impl std::future::Future<Output = ()> + Send + '_ {
        self.changed.store(true, Ordering::SeqCst);
        std::future::ready(())
    }
}

/// An agent runs unattended, so no human can fill in a form a server asks
/// for mid-call. A form whose every required field has a default is accepted
/// with those defaults (SEP-1034); anything else is declined, which the
/// server reports back through the tool result.
fn answer_elicitation(request: &ElicitRequestParams) -> ElicitResult {
    let ElicitRequestParams::FormElicitationParams { requested_schema, .. } = request else {
        return ElicitResult::new(ElicitationAction::Decline);
    };
    let Ok(schema) = serde_json::to_value(requested_schema) else {
        return ElicitResult::new(ElicitationAction::Decline);
    };
    let mut content = serde_json::Map::new();
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, property) in properties {
            if let Some(default) = property.get("default") {
                content.insert(name.clone(), default.clone());
            }
        }
    }
    let required = schema.get("required").and_then(Value::as_array).cloned().unwrap_or_default();
    if required.iter().filter_map(Value::as_str).all(|name| content.contains_key(name)) {
        ElicitResult::new(ElicitationAction::Accept).with_content(Value::Object(content))
    } else {
        ElicitResult::new(ElicitationAction::Decline)
    }
}

type Client = RunningService<RoleClient, Handler>;

/// A tool a server offers.
#[derive(Clone, Debug)]
pub struct McpTool {
    /// `{server}.{tool}`.
    pub def: ToolDef,
    /// The server's own name for it.
    pub remote_name: String,
    /// `idempotentHint` or `readOnlyHint`: safe to retry.
    pub idempotent: bool,
    pub destructive: bool,
}

/// Where a server runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Reached over HTTP.
    Remote,
    /// A stdio process on the host (the operator allowed it).
    Host,
    /// A stdio process in each session's sandbox.
    Sandbox,
    /// A stdio process with nowhere it may run.
    Refused,
}

/// A live connection: to a shared server (`sandbox: None`), or to one
/// session's process and the sandbox instance it runs in.
struct Connection {
    client: Arc<Client>,
    sandbox: Option<String>,
}

/// One configured MCP server and its live connections.
pub struct McpServer {
    pub spec: McpServerSpec,
    placement: Placement,
    /// By session for servers in sandboxes; under `""` otherwise.
    clients: tokio::sync::Mutex<HashMap<String, Connection>>,
    tools: RwLock<Option<Vec<McpTool>>>,
    changed: Arc<AtomicBool>,
}

impl McpServer {
    /// A server of an agent with (`in_sandbox`) or without a `[sandbox]`.
    pub fn new(spec: McpServerSpec, allow_host_stdio: bool, in_sandbox: bool) -> Self {
        let placement = match (&spec.command, in_sandbox, allow_host_stdio) {
            (None, _, _) => Placement::Remote,
            (Some(_), true, _) => Placement::Sandbox,
            (Some(_), false, true) => Placement::Host,
            (Some(_), false, false) => Placement::Refused,
        };
        McpServer { spec, placement, clients: Default::default(), tools: RwLock::new(None), changed: Arc::default() }
    }

    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// What the circuit breaker guards: the URL's `host:port`, or the stdio server.
    pub fn target(&self) -> String {
        match &self.spec.url {
            Some(url) => {
                let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
                rest.split(['/', '?', '#']).next().unwrap_or(rest).to_owned()
            }
            None => format!("stdio:{}", self.spec.name),
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.spec.timeout_seconds)
    }

    /// The tools last discovered (empty before discovery).
    pub fn tools(&self) -> Vec<McpTool> {
        self.tools.read().expect("mcp tools lock").clone().unwrap_or_default()
    }

    /// The remote name and retry safety of `{server}.{tool}`, if discovered.
    pub fn find(&self, name: &str) -> Option<(String, bool)> {
        let tools = self.tools.read().expect("mcp tools lock");
        tools.as_ref()?.iter().find(|t| t.def.name == name).map(|t| (t.remote_name.clone(), t.idempotent))
    }

    /// Forces the next [`McpServer::discover`] to list the tools again.
    pub fn mark_changed(&self) {
        self.changed.store(true, Ordering::SeqCst);
    }

    /// Lists the server's tools if never listed, or if it said they changed.
    /// A server in sandboxes is listed in `sandbox`, the caller's session's.
    pub async fn discover(&self, sandbox: Option<&Arc<SessionSandbox>>) -> Result<(), ToolError> {
        let fresh = self.tools.read().expect("mcp tools lock").is_some();
        if fresh && !self.changed.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let client = self.client(sandbox).await?;
        let listed = match tokio::time::timeout(self.timeout(), client.list_all_tools()).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(self.fail(sandbox, e).await),
            Err(_) => return Err(ToolError::Timeout(self.timeout())),
        };
        let allowed = |name: &str| self.spec.tools.as_ref().is_none_or(|list| list.iter().any(|t| t == name));
        let tools = listed
            .into_iter()
            .filter(|t| allowed(&t.name))
            .map(|t| {
                let hints = t.annotations.as_ref();
                let hint = |f: fn(&rmcp::model::ToolAnnotations) -> Option<bool>| hints.and_then(f).unwrap_or(false);
                McpTool {
                    def: ToolDef {
                        name: format!("{}.{}", self.spec.name, t.name),
                        description: t.description.as_deref().unwrap_or_default().to_owned(),
                        input_schema: Value::Object((*t.input_schema).clone()),
                    },
                    remote_name: t.name.to_string(),
                    idempotent: hint(|a| a.idempotent_hint) || hint(|a| a.read_only_hint),
                    destructive: hint(|a| a.destructive_hint),
                }
            })
            .collect();
        *self.tools.write().expect("mcp tools lock") = Some(tools);
        Ok(())
    }

    /// Calls one of the server's tools by its own name; a server in
    /// sandboxes in `sandbox`, which is not frozen while the call runs.
    pub async fn call(&self, sandbox: Option<&Arc<SessionSandbox>>, remote_name: &str, args: Value) -> Result<Value, ToolError> {
        let _busy = sandbox.filter(|_| self.placement == Placement::Sandbox).map(|s| s.busy());
        let client = self.client(sandbox).await?;
        let arguments = match args {
            Value::Object(map) => Some(map),
            Value::Null => None,
            _ => return Err(ToolError::InvalidArguments("arguments must be an object".into())),
        };
        let mut params = CallToolRequestParams::new(remote_name.to_owned());
        params.arguments = arguments;
        match client.call_tool(params).await {
            Ok(result) => map_result(result),
            Err(e) => Err(self.fail(sandbox, e).await),
        }
    }

    /// Turns a protocol or transport error into a tool error; a broken
    /// connection is dropped so the next call reconnects.
    async fn fail(&self, sandbox: Option<&Arc<SessionSandbox>>, e: ServiceError) -> ToolError {
        match e {
            ServiceError::McpError(err) => ToolError::Failed(format!("MCP server {}: {}", self.spec.name, err.message)),
            other => {
                self.clients.lock().await.remove(&self.key(sandbox));
                ToolError::Unavailable(format!("MCP server {}: {other}", self.spec.name))
            }
        }
    }

    /// Which connection a caller uses: its session's for a server in sandboxes.
    fn key(&self, sandbox: Option<&Arc<SessionSandbox>>) -> String {
        match (self.placement, sandbox) {
            (Placement::Sandbox, Some(s)) => s.session().to_owned(),
            _ => String::new(),
        }
    }

    async fn client(&self, sandbox: Option<&Arc<SessionSandbox>>) -> Result<Arc<Client>, ToolError> {
        let unavailable = |e: &dyn std::fmt::Display| ToolError::Unavailable(format!("MCP server {}: {e}", self.spec.name));
        // The sandbox instance a server in sandboxes runs in now (started or
        // thawed as needed): a replaced sandbox took the old process with it.
        let instance = match (self.placement, sandbox) {
            (Placement::Sandbox, Some(s)) => Some(s.ready().await.map_err(|e| unavailable(&e))?.id().to_owned()),
            (Placement::Sandbox, None) => {
                return Err(ToolError::Failed(format!(
                    "MCP server {} runs in the session's sandbox, and this server has no sandbox driver",
                    self.spec.name
                )))
            }
            _ => None,
        };
        let key = self.key(sandbox);
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(&key) {
            if !c.client.is_closed() && c.sandbox == instance {
                return Ok(c.client.clone());
            }
        }
        let connect = self.connect(sandbox);
        let client = Arc::new(tokio::time::timeout(self.timeout(), connect).await.map_err(|_| ToolError::Timeout(self.timeout()))??);
        // A new session may offer other tools.
        self.changed.store(true, Ordering::SeqCst);
        clients.insert(key, Connection { client: client.clone(), sandbox: instance });
        Ok(client)
    }

    async fn connect(&self, sandbox: Option<&Arc<SessionSandbox>>) -> Result<Client, ToolError> {
        // The SDK's HTTP client needs a process-wide TLS crypto provider;
        // installing it twice is harmless (the first one stays).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let handler = Handler { changed: self.changed.clone() };
        let unavailable = |e: &dyn std::fmt::Display| ToolError::Unavailable(format!("MCP server {}: {e}", self.spec.name));
        if let Some(url) = &self.spec.url {
            let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
            let mut legacy_headers = reqwest::header::HeaderMap::new();
            for (header, secret) in &self.spec.headers {
                let value = std::env::var(secret).map_err(|_| {
                    ToolError::Failed(format!("MCP server {}: header {header} needs the secret {secret}, which is not set", self.spec.name))
                })?;
                let bad_name = || ToolError::Failed(format!("invalid header name {header:?}"));
                let bad_value = || ToolError::Failed(format!("secret {secret} is not a valid header value"));
                config.custom_headers.insert(header.parse().map_err(|_| bad_name())?, value.parse().map_err(|_| bad_value())?);
                legacy_headers.insert(
                    reqwest::header::HeaderName::from_bytes(header.as_bytes()).map_err(|_| bad_name())?,
                    reqwest::header::HeaderValue::from_str(&value).map_err(|_| bad_value())?,
                );
            }
            let transport = StreamableHttpClientTransport::from_config(config);
            let streamable = match handler.serve(transport).await {
                Ok(client) => return Ok(client),
                Err(e) => unavailable(&e),
            };
            // A server that does not speak streamable HTTP may speak the
            // older HTTP+SSE transport at the same URL.
            let Ok(parts) = crate::mcp_sse::connect(reqwest::Client::new(), url, legacy_headers).await else {
                return Err(streamable);
            };
            let handler = Handler { changed: self.changed.clone() };
            return handler.serve(parts).await.map_err(|e| unavailable(&e));
        }
        let command = self.spec.command.as_deref().expect("spec validation: url or command");
        match (self.placement, sandbox) {
            (Placement::Sandbox, Some(sandbox)) => {
                let mut argv = vec![command.to_owned()];
                argv.extend(self.spec.args.iter().cloned());
                let spec = ProcessSpec { argv, cwd: None, env: self.spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect() };
                let (stream, _) = sandbox.pipe(&spec).await.map_err(|e| unavailable(&e))?;
                return handler.serve(stream.into_split()).await.map_err(|e| unavailable(&e));
            }
            (Placement::Host, _) => {}
            _ => {
                return Err(ToolError::Failed(format!(
                    "MCP server {}: a stdio server runs in the session's sandbox (give the agent a [sandbox]), or as a host process when the operator allows it (mcp-stdio-on-host = true)",
                    self.spec.name
                )))
            }
        }
        let mut cmd = tokio::process::Command::new(command);
        cmd.args(&self.spec.args).envs(&self.spec.env).kill_on_drop(true);
        let transport = TokioChildProcess::new(cmd).map_err(|e| unavailable(&e))?;
        handler.serve(transport).await.map_err(|e| unavailable(&e))
    }
}

/// A call result as the model sees it: structured content when the server
/// gave some, else the content blocks; `isError` results become errors
/// carrying the server's text.
fn map_result(r: CallToolResult) -> Result<Value, ToolError> {
    let text: Vec<String> = r.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect();
    if r.is_error == Some(true) {
        return Err(ToolError::Failed(if text.is_empty() { "the tool reported an error".into() } else { text.join("\n") }));
    }
    if let Some(structured) = r.structured_content {
        return Ok(structured);
    }
    match text.as_slice() {
        [one] if r.content.len() == 1 => Ok(Value::String(one.clone())),
        _ => Ok(serde_json::to_value(&r.content).unwrap_or(Value::Null)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn form(schema: Value) -> ElicitRequestParams {
        serde_json::from_value(json!({"mode": "form", "message": "details?", "requestedSchema": schema})).expect("form elicitation")
    }

    #[test]
    fn elicitation_is_accepted_with_the_defaults() {
        let request = form(json!({"type": "object", "properties": {
            "name": {"type": "string", "default": "ada"},
            "age": {"type": "integer", "default": 36},
            "note": {"type": "string"}
        }, "required": ["name"]}));
        let answer = answer_elicitation(&request);
        assert_eq!(answer.action, ElicitationAction::Accept);
        assert_eq!(answer.content, Some(json!({"name": "ada", "age": 36})));
    }

    #[test]
    fn elicitation_without_a_default_for_a_required_field_is_declined() {
        let request = form(json!({"type": "object", "properties": {"token": {"type": "string"}}, "required": ["token"]}));
        let answer = answer_elicitation(&request);
        assert_eq!(answer.action, ElicitationAction::Decline);
        assert_eq!(answer.content, None);
    }
}
