//! Built-in tools: `clock.now`, session-scoped durable `kv.get` / `kv.set`,
//! and `echo` (returns its arguments; a no-op for benchmarks and tests).

use std::sync::Arc;
use std::time::SystemTime;

use agentrt_types::ToolDef;
use async_trait::async_trait;
use serde_json::{json, Value};

use crate::{Tool, ToolContext, ToolError};

/// The built-in tool with this name, if there is one.
pub fn builtin(name: &str) -> Option<Arc<dyn Tool>> {
    let def = |name: &str, description: &str, input_schema: Value| ToolDef {
        name: name.to_owned(),
        description: description.to_owned(),
        input_schema,
    };
    let tool: Arc<dyn Tool> = match name {
        "clock.now" => Arc::new(ClockNow(def(
            name,
            "Current date and time (UTC, RFC 3339) and Unix milliseconds.",
            json!({"type": "object", "properties": {}, "additionalProperties": false}),
        ))),
        "kv.get" => Arc::new(KvGet(def(
            name,
            "Read a value this session stored with kv.set.",
            json!({"type": "object", "properties": {"key": {"type": "string", "minLength": 1}}, "required": ["key"], "additionalProperties": false}),
        ))),
        "kv.set" => Arc::new(KvSet(def(
            name,
            "Store a JSON value under a key, durably, for the rest of this session.",
            json!({"type": "object", "properties": {"key": {"type": "string", "minLength": 1}, "value": {}}, "required": ["key", "value"], "additionalProperties": false}),
        ))),
        "echo" => Arc::new(Echo(def(name, "Return the arguments unchanged.", json!({"type": "object"})))),
        _ => return None,
    };
    Some(tool)
}

struct ClockNow(ToolDef);
struct KvGet(ToolDef);
struct KvSet(ToolDef);
struct Echo(ToolDef);

fn key_of(args: &Value) -> Result<&str, ToolError> {
    args.get("key").and_then(Value::as_str).ok_or_else(|| ToolError::InvalidArguments("key must be a string".into()))
}

#[async_trait]
impl Tool for ClockNow {
    fn def(&self) -> &ToolDef {
        &self.0
    }
    fn idempotent(&self) -> bool {
        true
    }
    async fn call(&self, _ctx: &ToolContext, _args: Value) -> Result<Value, ToolError> {
        let now = SystemTime::now();
        let unix_ms = agentrt_types::time::now_ms();
        Ok(json!({"now": humantime::format_rfc3339_millis(now).to_string(), "unix_ms": unix_ms}))
    }
}

#[async_trait]
impl Tool for KvGet {
    fn def(&self) -> &ToolDef {
        &self.0
    }
    fn idempotent(&self) -> bool {
        true
    }
    async fn call(&self, ctx: &ToolContext, args: Value) -> Result<Value, ToolError> {
        let key = key_of(&args)?;
        let value = ctx.store.kv_get(&ctx.session_id, key).await.map_err(|e| ToolError::Failed(e.to_string()))?;
        Ok(json!({"key": key, "found": value.is_some(), "value": value}))
    }
}

#[async_trait]
impl Tool for KvSet {
    fn def(&self) -> &ToolDef {
        &self.0
    }
    /// Setting a key to the same value twice leaves the same state.
    fn idempotent(&self) -> bool {
        true
    }
    async fn call(&self, ctx: &ToolContext, args: Value) -> Result<Value, ToolError> {
        let key = key_of(&args)?;
        let value = args.get("value").cloned().unwrap_or(Value::Null);
        ctx.store.kv_set(&ctx.session_id, key, &value).await.map_err(|e| ToolError::Failed(e.to_string()))?;
        Ok(json!({"key": key, "stored": true}))
    }
}

#[async_trait]
impl Tool for Echo {
    fn def(&self) -> &ToolDef {
        &self.0
    }
    fn idempotent(&self) -> bool {
        true
    }
    async fn call(&self, _ctx: &ToolContext, args: Value) -> Result<Value, ToolError> {
        Ok(args)
    }
}
