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
    let (kind, def) = match name {
        "clock.now" => (
            Kind::ClockNow,
            def(
                name,
                "Current date and time (UTC, RFC 3339) and Unix milliseconds.",
                json!({"type": "object", "properties": {}, "additionalProperties": false}),
            ),
        ),
        "kv.get" => (
            Kind::KvGet,
            def(
                name,
                "Read a value this session stored with kv.set.",
                json!({"type": "object", "properties": {"key": {"type": "string", "minLength": 1}}, "required": ["key"], "additionalProperties": false}),
            ),
        ),
        "kv.set" => (
            Kind::KvSet,
            def(
                name,
                "Store a JSON value under a key, durably, for the rest of this session.",
                json!({"type": "object", "properties": {"key": {"type": "string", "minLength": 1}, "value": {}}, "required": ["key", "value"], "additionalProperties": false}),
            ),
        ),
        "echo" => (Kind::Echo, def(name, "Return the arguments unchanged.", json!({"type": "object"}))),
        _ => return None,
    };
    Some(Arc::new(Builtin { def, kind }))
}

/// Which built-in a [`Builtin`] is.
#[derive(Clone, Copy)]
enum Kind {
    ClockNow,
    KvGet,
    KvSet,
    Echo,
}

/// A built-in tool. All of them are idempotent: reading the clock or a key,
/// echoing, and setting a key to the same value again leave the same state.
struct Builtin {
    def: ToolDef,
    kind: Kind,
}

fn key_of(args: &Value) -> Result<&str, ToolError> {
    args.get("key").and_then(Value::as_str).ok_or_else(|| ToolError::InvalidArguments("key must be a string".into()))
}

#[async_trait]
impl Tool for Builtin {
    fn def(&self) -> &ToolDef {
        &self.def
    }

    fn idempotent(&self) -> bool {
        true
    }

    async fn call(&self, ctx: &ToolContext, args: Value) -> Result<Value, ToolError> {
        let store_err = |e: agentrt_store::StoreError| ToolError::Failed(e.to_string());
        match self.kind {
            Kind::ClockNow => {
                let now = SystemTime::now();
                Ok(json!({"now": humantime::format_rfc3339_millis(now).to_string(), "unix_ms": agentrt_types::time::now_ms()}))
            }
            Kind::KvGet => {
                let key = key_of(&args)?;
                let value = ctx.store.kv_get(&ctx.session_id, key).await.map_err(store_err)?;
                Ok(json!({"key": key, "found": value.is_some(), "value": value}))
            }
            Kind::KvSet => {
                let key = key_of(&args)?;
                let value = args.get("value").cloned().unwrap_or(Value::Null);
                ctx.store.kv_set(&ctx.session_id, key, &value).await.map_err(store_err)?;
                Ok(json!({"key": key, "stored": true}))
            }
            Kind::Echo => Ok(args),
        }
    }
}
