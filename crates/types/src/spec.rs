//! Agent specs: what an agent is (model, instructions, tools, limits), as
//! registered with `PUT /v1/agents/{name}` in TOML or JSON. Versions are
//! immutable; validation reports the path of every bad field.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Built-in tools every agent may use.
pub const BUILTIN_TOOLS: &[&str] = &["clock.now", "kv.get", "kv.set", "echo"];

/// Model providers this build knows.
/// `gateway`: the model is a route of the server's model gateway.
pub const PROVIDERS: &[&str] = &["scripted", "openai", "anthropic", "gateway"];

/// Upper bound on `limits.max_steps`.
pub const MAX_STEPS_CAP: u32 = 10_000;

/// A registered agent's definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// One line for humans.
    #[serde(default)]
    pub description: String,
    /// System instructions given to the model.
    #[serde(default)]
    pub instructions: String,
    pub model: ModelSpec,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub tools: ToolsSpec,
    /// Where model-written code runs; no sandbox tools without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<crate::sandbox::SandboxSpec>,
    /// Other agents this one may pass its session to.
    #[serde(default, skip_serializing_if = "AgentsSpec::is_empty")]
    pub agents: AgentsSpec,
}

/// The multi-agent tools an agent gets: `agents.handover` when it names
/// agents it may hand its session over to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsSpec {
    /// Agents of the same tenant this one may hand the session over to.
    #[serde(default)]
    pub handover: Vec<String>,
    /// Agents of the same tenant this one may give sub-tasks to, each in a
    /// child session of its own.
    #[serde(default)]
    pub delegate: Vec<String>,
    /// Agents of the same tenant this one may lend the session to for a
    /// sub-task; control comes back with the sub-task's result.
    #[serde(default)]
    pub borrow: Vec<String>,
}

impl AgentsSpec {
    pub fn is_empty(&self) -> bool {
        self.handover.is_empty() && self.delegate.is_empty() && self.borrow.is_empty()
    }
}

/// The tool an agent calls to hand its session over to another agent.
pub const HANDOVER_TOOL: &str = "agents.handover";
/// The tool an agent calls to run sub-tasks in child sessions, in parallel.
pub const DELEGATE_TOOL: &str = "agents.delegate";
/// The tool an agent calls to lend its session to another agent for one
/// sub-task and get the result back.
pub const BORROW_TOOL: &str = "agents.borrow";

/// Which model answers, and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// `scripted`, `openai` or `anthropic`.
    pub provider: String,
    /// Provider model name (required for `openai` and `anthropic`).
    #[serde(default)]
    pub model: String,
    /// Base URL of an API-compatible endpoint; the provider's own by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Environment variable holding the API key (keys never live in specs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Use the provider's streaming API.
    #[serde(default)]
    pub stream: bool,
    /// Replies of the `scripted` provider, in order; empty = the default script.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub script: Vec<ScriptStep>,
}

/// One scripted model reply. `{input}` in text is replaced by the turn's
/// input and `{tool_results}` by the results of the previous tool calls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptStep {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ScriptToolCall>,
    /// How many consecutive replies this step stands for.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub repeat: u32,
}

/// A tool call inside a scripted reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptToolCall {
    pub name: String,
    #[serde(default = "empty_object")]
    pub arguments: Value,
}

/// Stop conditions of a turn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Model and tool calls allowed in one turn.
    #[serde(default = "default_max_steps")]
    pub max_steps: u32,
    /// Wall-clock seconds allowed for one turn.
    #[serde(default = "default_max_turn_seconds")]
    pub max_turn_seconds: u64,
    /// Seconds a tool call waits for a human's approval before it is denied
    /// automatically; no expiry when absent. Time spent waiting does not
    /// count against `max_turn_seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_timeout_seconds: Option<u64>,
    /// Loop guard: the turn stops when the model asks for the same tool
    /// with the same arguments more than this many times (0 turns it off).
    #[serde(default = "default_loop_limit")]
    pub max_repeated_tool_calls: u32,
    /// Loop guard: the turn stops after this many model calls in a row that
    /// ask only for tool calls already made in the turn (0 turns it off).
    #[serde(default = "default_loop_limit")]
    pub max_model_calls_without_progress: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_steps: default_max_steps(),
            max_turn_seconds: default_max_turn_seconds(),
            approval_timeout_seconds: None,
            max_repeated_tool_calls: default_loop_limit(),
            max_model_calls_without_progress: default_loop_limit(),
        }
    }
}

fn default_loop_limit() -> u32 {
    10
}

/// Tools the agent may call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsSpec {
    /// Built-in tools to offer; all of them when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<Vec<String>>,
    /// HTTP tools: each call POSTs its arguments as JSON to a URL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpToolSpec>,
    /// MCP servers whose tools the agent may call, as `{server}.{tool}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp: Vec<McpServerSpec>,
    /// How the tool router retries, limits and breaks calls.
    #[serde(default)]
    pub router: RouterSpec,
}

/// An MCP server: streamable HTTP at `url`, or a stdio process `command`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerSpec {
    /// Prefix of the server's tools (`{name}.{tool}`).
    pub name: String,
    /// Streamable HTTP endpoint, e.g. `https://mcp.example.com/mcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Program of a stdio server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Request headers: header name → the name of the secret (an environment
    /// variable of the server) holding its value. Values never enter specs,
    /// events or logs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Only these of the server's tools are offered (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    #[serde(default = "default_tool_timeout")]
    pub timeout_seconds: u64,
}

/// Retries, rate-limit waits and circuit breaking of tool calls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSpec {
    /// Attempts per call, for idempotent tools and transient failures only.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// First retry delay; doubles each retry, with jitter, up to 2 s.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Consecutive transient failures of one target that open its circuit.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// Seconds an open circuit waits before letting one probe call through.
    #[serde(default = "default_breaker_cooldown")]
    pub breaker_cooldown_seconds: u64,
    /// Longest a call waits for rate-limit capacity before failing.
    #[serde(default = "default_rate_wait_ms")]
    pub rate_limit_wait_ms: u64,
}

impl Default for RouterSpec {
    fn default() -> Self {
        RouterSpec {
            max_attempts: default_attempts(),
            backoff_ms: default_backoff_ms(),
            breaker_failures: default_breaker_failures(),
            breaker_cooldown_seconds: default_breaker_cooldown(),
            rate_limit_wait_ms: default_rate_wait_ms(),
        }
    }
}

fn default_attempts() -> u32 {
    3
}
fn default_backoff_ms() -> u64 {
    100
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown() -> u64 {
    30
}
fn default_rate_wait_ms() -> u64 {
    1000
}

impl ToolsSpec {
    /// The built-in tools this spec enables.
    pub fn enabled_builtins(&self) -> Vec<String> {
        match &self.builtin {
            Some(list) => list.clone(),
            None => BUILTIN_TOOLS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// A tool implemented by an HTTP endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpToolSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub url: String,
    /// Safe to repeat with the same `Idempotency-Key` after a crash.
    #[serde(default)]
    pub idempotent: bool,
    #[serde(default = "default_tool_timeout")]
    pub timeout_seconds: u64,
    /// JSON Schema of the arguments object.
    #[serde(default = "object_schema")]
    pub input_schema: Value,
    /// Extra request headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Calls allowed per second (token bucket, burst = the rate rounded up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<f64>,
}

fn one() -> u32 {
    1
}
fn is_one(n: &u32) -> bool {
    *n == 1
}
fn empty_object() -> Value {
    Value::Object(Default::default())
}
fn object_schema() -> Value {
    serde_json::json!({"type": "object"})
}
fn default_max_steps() -> u32 {
    32
}
fn default_max_turn_seconds() -> u64 {
    300
}
fn default_tool_timeout() -> u64 {
    30
}

/// Format of a submitted spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecFormat {
    Json,
    Toml,
}

/// One bad field: where it is and what to fix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// Why a spec was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    pub errors: Vec<FieldError>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.errors.iter().map(|e| format!("{}: {}", e.path, e.message)).collect();
        write!(f, "invalid agent spec: {}", parts.join("; "))
    }
}

impl SpecError {
    fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError { errors: vec![FieldError { path: path.into(), message: message.into() }] }
    }
}

impl AgentSpec {
    /// Parses and validates a spec.
    pub fn parse(text: &str, format: SpecFormat) -> Result<AgentSpec, SpecError> {
        let spec: AgentSpec = match format {
            SpecFormat::Json => {
                let de = &mut serde_json::Deserializer::from_str(text);
                serde_path_to_error::deserialize(de)
                    .map_err(|e| SpecError::one(display_path(&e.path().to_string()), e.inner().to_string()))?
            }
            SpecFormat::Toml => {
                let de = toml::Deserializer::parse(text).map_err(|e| SpecError::one("$", e.message().to_string()))?;
                serde_path_to_error::deserialize(de)
                    .map_err(|e| SpecError::one(display_path(&e.path().to_string()), e.inner().message().to_string()))?
            }
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the rules serde cannot express; reports every bad field.
    pub fn validate(&self) -> Result<(), SpecError> {
        let mut errors = Vec::new();
        let mut bad = |path: String, message: String| errors.push(FieldError { path, message });
        let m = &self.model;
        if !PROVIDERS.contains(&m.provider.as_str()) {
            bad("model.provider".into(), format!("unknown provider {:?}; use one of {}", m.provider, PROVIDERS.join(", ")));
        }
        if m.provider != "scripted" && m.model.trim().is_empty() {
            bad("model.model".into(), format!("provider {:?} needs a model name", m.provider));
        }
        if m.provider != "scripted" && !m.script.is_empty() {
            bad("model.script".into(), "a script is only used by the scripted provider".into());
        }
        if let Some(url) = &m.base_url {
            if !is_http_url(url) {
                bad("model.base_url".into(), "must be an http:// or https:// URL".into());
            }
        }
        if let Some(t) = m.temperature {
            if !(0.0..=2.0).contains(&t) {
                bad("model.temperature".into(), "must be between 0 and 2".into());
            }
        }
        if self.limits.max_steps == 0 || self.limits.max_steps > MAX_STEPS_CAP {
            bad("limits.max_steps".into(), format!("must be between 1 and {MAX_STEPS_CAP}"));
        }
        let r = &self.tools.router;
        if r.max_attempts == 0 || r.max_attempts > 10 {
            bad("tools.router.max_attempts".into(), "must be between 1 and 10".into());
        }
        if r.breaker_failures == 0 {
            bad("tools.router.breaker_failures".into(), "must be at least 1".into());
        }
        let mut sandbox_errors = Vec::new();
        if let Some(sandbox) = &self.sandbox {
            sandbox.check(&mut sandbox_errors);
        }
        for e in sandbox_errors {
            bad(e.path, e.message);
        }
        if self.limits.approval_timeout_seconds == Some(0) {
            bad("limits.approval_timeout_seconds".into(), "must be at least 1 (leave it out for no expiry)".into());
        }
        if self.limits.max_turn_seconds == 0 {
            bad("limits.max_turn_seconds".into(), "must be at least 1".into());
        }
        let builtins = self.tools.enabled_builtins();
        for (i, name) in builtins.iter().enumerate() {
            if !BUILTIN_TOOLS.contains(&name.as_str()) {
                bad(format!("tools.builtin[{i}]"), format!("unknown built-in tool {name:?}; use one of {}", BUILTIN_TOOLS.join(", ")));
            }
        }
        let mut names: Vec<&str> = builtins.iter().map(String::as_str).collect();
        if self.sandbox.is_some() {
            names.extend(crate::sandbox::SANDBOX_TOOLS);
        }
        if !self.agents.handover.is_empty() {
            names.push(HANDOVER_TOOL);
        }
        if !self.agents.delegate.is_empty() {
            names.push(DELEGATE_TOOL);
        }
        if !self.agents.borrow.is_empty() {
            names.push(BORROW_TOOL);
        }
        for (list, agents) in [("handover", &self.agents.handover), ("delegate", &self.agents.delegate), ("borrow", &self.agents.borrow)] {
            for (i, agent) in agents.iter().enumerate() {
                if !is_agent_name(agent) {
                    bad(format!("agents.{list}[{i}]"), format!("{agent:?} is not an agent name"));
                }
            }
        }
        for (i, t) in self.tools.http.iter().enumerate() {
            let p = format!("tools.http[{i}]");
            if !is_tool_name(&t.name) {
                bad(
                    format!("{p}.name"),
                    "use lowercase letters, digits, '_' and '.' (e.g. \"orders.create\"), at most 64 characters".into(),
                );
            } else if names.contains(&t.name.as_str()) || BUILTIN_TOOLS.contains(&t.name.as_str()) {
                bad(format!("{p}.name"), format!("tool name {:?} is already used", t.name));
            }
            names.push(&t.name);
            if !is_http_url(&t.url) {
                bad(format!("{p}.url"), "must be an http:// or https:// URL".into());
            }
            if t.timeout_seconds == 0 || t.timeout_seconds > 3600 {
                bad(format!("{p}.timeout_seconds"), "must be between 1 and 3600".into());
            }
            if t.rate_per_second.is_some_and(|r| !(r > 0.0 && r <= 1e6)) {
                bad(format!("{p}.rate_per_second"), "must be a number above 0".into());
            }
            if !t.input_schema.is_object() {
                bad(format!("{p}.input_schema"), "must be a JSON Schema object".into());
            }
        }
        if m.provider == "scripted" && m.script.is_empty() {
            let missing: Vec<&str> = ["clock.now", "kv.set"].into_iter().filter(|t| !names.contains(t)).collect();
            if !missing.is_empty() {
                bad(
                    "model.script".into(),
                    format!("the default script calls {}; enable it in tools.builtin or give a script", missing.join(" and ")),
                );
            }
        }
        let mut servers: Vec<&str> = Vec::new();
        for (i, s) in self.tools.mcp.iter().enumerate() {
            let p = format!("tools.mcp[{i}]");
            if !s.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') || s.name.is_empty() || s.name.len() > 32
            {
                bad(format!("{p}.name"), "use 1-32 lowercase letters, digits and '_'".into());
            } else if servers.contains(&s.name.as_str()) {
                bad(format!("{p}.name"), format!("server name {:?} is already used", s.name));
            }
            servers.push(&s.name);
            match (&s.url, &s.command) {
                (Some(url), None) if !is_http_url(url) => bad(format!("{p}.url"), "must be an http:// or https:// URL".into()),
                (Some(_), None) | (None, Some(_)) => {}
                _ => bad(p.clone(), "give exactly one of url (streamable HTTP) or command (stdio)".into()),
            }
            if s.timeout_seconds == 0 || s.timeout_seconds > 3600 {
                bad(format!("{p}.timeout_seconds"), "must be between 1 and 3600".into());
            }
        }
        let names_mcp = |name: &str| servers.iter().any(|s| name.strip_prefix(s).is_some_and(|rest| rest.starts_with('.')));
        for (i, step) in m.script.iter().enumerate() {
            let p = format!("model.script[{i}]");
            if step.text.is_none() && step.tool_calls.is_empty() {
                bad(p.clone(), "give text, tool_calls, or both".into());
            }
            if step.repeat == 0 {
                bad(format!("{p}.repeat"), "must be at least 1".into());
            }
            for (j, call) in step.tool_calls.iter().enumerate() {
                if !names.contains(&call.name.as_str()) && !names_mcp(&call.name) {
                    bad(format!("{p}.tool_calls[{j}].name"), format!("tool {:?} is not enabled for this agent", call.name));
                }
                if !call.arguments.is_object() {
                    bad(format!("{p}.tool_calls[{j}].arguments"), "must be an object".into());
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(SpecError { errors })
        }
    }
}

/// Whether `name` is a valid agent or tool name.
pub fn is_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.split('.').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
}

/// Whether `name` is a valid agent name: lowercase letters, digits, `-`, `_`.
pub fn is_agent_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn is_http_url(url: &str) -> bool {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    matches!(rest, Some(r) if !r.is_empty() && !r.starts_with('/'))
}

fn display_path(path: &str) -> String {
    if path.is_empty() || path == "." {
        "$".into()
    } else {
        path.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_toml_spec_parses_with_defaults() {
        let spec = AgentSpec::parse("[model]\nprovider = \"scripted\"\n", SpecFormat::Toml).unwrap();
        assert_eq!(spec.limits.max_steps, 32);
        assert_eq!(spec.tools.enabled_builtins().len(), BUILTIN_TOOLS.len());
    }

    #[test]
    fn unknown_field_names_its_path() {
        let err = AgentSpec::parse(r#"{"model": {"provider": "scripted", "modle": "x"}}"#, SpecFormat::Json).unwrap_err();
        assert_eq!(err.errors[0].path, "model.modle");
        assert!(err.errors[0].message.contains("modle"), "{err}");
    }

    #[test]
    fn every_semantic_error_is_reported() {
        let text = r#"
            [model]
            provider = "openai"
            [limits]
            max_steps = 0
            [[tools.http]]
            name = "Bad Name"
            url = "ftp://x"
        "#;
        let err = AgentSpec::parse(text, SpecFormat::Toml).unwrap_err();
        let paths: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["model.model", "limits.max_steps", "tools.http[0].name", "tools.http[0].url"]);
    }

    #[test]
    fn script_must_name_enabled_tools() {
        let text = r#"
            [model]
            provider = "scripted"
            script = [{ tool_calls = [{ name = "nope" }] }]
        "#;
        let err = AgentSpec::parse(text, SpecFormat::Toml).unwrap_err();
        assert_eq!(err.errors[0].path, "model.script[0].tool_calls[0].name");
    }
}
