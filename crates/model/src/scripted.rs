//! The `scripted` provider: deterministic, offline replies from the agent
//! spec. Which reply comes next is derived from the conversation itself (the
//! number of model replies since the turn's input), so a resumed turn gets
//! the same reply it would have got before a crash.

use agentrt_types::spec::{ScriptStep, ScriptToolCall};
use agentrt_types::{Message, ToolCall, Usage};
use async_trait::async_trait;
use serde_json::{json, Value};

use crate::{ModelError, ModelProvider, ModelRequest, ModelResponse};

/// Replies from a script; see [`default_script`] for the script used when an
/// agent gives none.
pub struct ScriptedProvider {
    steps: Vec<ScriptStep>,
}

impl ScriptedProvider {
    pub fn new(script: Vec<ScriptStep>) -> Self {
        let steps = if script.is_empty() { default_script() } else { script };
        ScriptedProvider { steps }
    }

    fn step_at(&self, mut index: usize) -> Option<&ScriptStep> {
        for step in &self.steps {
            let n = step.repeat.max(1) as usize;
            if index < n {
                return Some(step);
            }
            index -= n;
        }
        None
    }
}

/// The script of an agent that gives none: look at the clock, remember the
/// input in the session's key-value store, then answer with what happened.
pub fn default_script() -> Vec<ScriptStep> {
    vec![
        ScriptStep {
            text: None,
            tool_calls: vec![
                ScriptToolCall { name: "clock.now".into(), arguments: json!({}) },
                ScriptToolCall { name: "kv.set".into(), arguments: json!({"key": "last_input", "value": "{input}"}) },
            ],
            repeat: 1,
        },
        ScriptStep { text: Some("You said: {input}. I noted it. Tool results: {tool_results}".into()), tool_calls: vec![], repeat: 1 },
    ]
}

#[async_trait]
impl ModelProvider for ScriptedProvider {
    fn name(&self) -> &'static str {
        "scripted"
    }

    async fn complete(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        let turn_start = request.messages.iter().rposition(|m| matches!(m, Message::User { .. }));
        let Some(turn_start) = turn_start else {
            return Err(ModelError::Decode("scripted model needs a user message".into()));
        };
        let Message::User { content: input } = &request.messages[turn_start] else { unreachable!("rposition matched a user message") };
        let turn = &request.messages[turn_start + 1..];
        let replies = turn.iter().filter(|m| matches!(m, Message::Assistant { .. })).count();
        let results: Vec<String> = turn
            .iter()
            .rev()
            .take_while(|m| matches!(m, Message::Tool { .. }))
            .filter_map(|m| match m {
                Message::Tool { name, content, .. } => Some(format!("{name} → {content}")),
                _ => None,
            })
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let fill = |s: &str| s.replace("{input}", input).replace("{tool_results}", &results.join("; "));
        let usage = Usage {
            input_tokens: request.messages.iter().map(approx_tokens).sum::<u64>() + approx_text(&request.instructions),
            output_tokens: 0,
            cached_tokens: 0,
        };
        let Some(step) = self.step_at(replies) else {
            let content = "(script finished)".to_owned();
            return Ok(ModelResponse {
                usage: Usage { output_tokens: approx_text(&content), ..usage },
                content: Some(content),
                tool_calls: vec![],
                billing: None,
            });
        };
        let content = step.text.as_deref().map(fill);
        let tool_calls: Vec<ToolCall> = step
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, c)| ToolCall {
                id: format!("call_{}_{}", replies + 1, i + 1),
                name: c.name.clone(),
                arguments: fill_value(&c.arguments, &fill),
            })
            .collect();
        let output_tokens = content.as_deref().map(approx_text).unwrap_or(0)
            + tool_calls.iter().map(|c| approx_text(&c.arguments.to_string()) + 1).sum::<u64>();
        Ok(ModelResponse { content, tool_calls, usage: Usage { output_tokens, ..usage }, billing: None })
    }
}

fn fill_value(v: &Value, fill: &dyn Fn(&str) -> String) -> Value {
    match v {
        Value::String(s) => Value::String(fill(s)),
        Value::Array(a) => Value::Array(a.iter().map(|x| fill_value(x, fill)).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (k.clone(), fill_value(x, fill))).collect()),
        other => other.clone(),
    }
}

/// A rough token count (4 bytes per token) so scripted usage is not zero.
fn approx_text(s: &str) -> u64 {
    (s.len() as u64).div_ceil(4)
}

fn approx_tokens(m: &Message) -> u64 {
    match m {
        Message::User { content } => approx_text(content),
        Message::Assistant { content, tool_calls } => {
            content.as_deref().map(approx_text).unwrap_or(0) + tool_calls.iter().map(|c| json_bytes(&c.arguments).div_ceil(4)).sum::<u64>()
        }
        Message::Tool { content, .. } => approx_text(content),
    }
}

/// Roughly the serialized size of a JSON value, without serializing it.
fn json_bytes(v: &Value) -> u64 {
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 5,
        Value::String(s) => s.len() as u64 + 2,
        Value::Array(a) => 2 + a.iter().map(json_bytes).sum::<u64>() + a.len() as u64,
        Value::Object(o) => 2 + o.iter().map(|(k, x)| k.len() as u64 + 4 + json_bytes(x)).sum::<u64>(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(messages: Vec<Message>) -> ModelRequest {
        ModelRequest {
            model: String::new(),
            instructions: String::new(),
            messages: messages.into(),
            tools: vec![],
            temperature: None,
            max_tokens: None,
            stream: false,
            idempotency_key: "k".into(),
            traceparent: None,
        }
    }

    #[tokio::test]
    async fn default_script_calls_tools_then_answers_with_their_results() {
        let p = ScriptedProvider::new(vec![]);
        let mut msgs = vec![Message::User { content: "hello".into() }];
        let first = p.complete(&request(msgs.clone())).await.unwrap();
        assert_eq!(first.tool_calls.len(), 2);
        assert_eq!(first.tool_calls[1].arguments, json!({"key": "last_input", "value": "hello"}));
        msgs.push(Message::Assistant { content: None, tool_calls: first.tool_calls.clone() });
        msgs.push(Message::Tool { tool_call_id: "call_1_1".into(), name: "clock.now".into(), content: "T".into(), is_error: false });
        let second = p.complete(&request(msgs)).await.unwrap();
        assert!(second.tool_calls.is_empty());
        assert_eq!(second.content.as_deref(), Some("You said: hello. I noted it. Tool results: clock.now → T"));
        assert!(second.usage.input_tokens > 0 && second.usage.output_tokens > 0);
    }

    #[tokio::test]
    async fn repeat_expands_steps() {
        let step = ScriptStep { text: Some("x".into()), tool_calls: vec![], repeat: 3 };
        let p = ScriptedProvider::new(vec![step]);
        assert!(p.step_at(2).is_some());
        assert!(p.step_at(3).is_none());
    }
}
