//! Rebuilding what the agent loop needs from the log: the conversation to
//! send to the model, and where an unfinished turn stands.

use agentrt_types::{Event, EventData, Message, Outcome, ToolCall, TurnId};
use serde_json::Value;

/// Text the model sees for a call whose outcome is unknown.
pub const UNKNOWN_OUTCOME: &str =
    "outcome unknown: the runtime stopped while this call was in flight and it is not safe to repeat; it may or may not have taken effect";

/// The conversation as of the events seen so far.
#[derive(Default)]
pub struct Conversation {
    /// Shared with in-flight model requests; copied only if one is alive
    /// when a message is added.
    pub messages: std::sync::Arc<Vec<Message>>,
    inputs: std::collections::HashMap<TurnId, String>,
}

impl Conversation {
    /// Adds one event's contribution.
    pub fn apply(&mut self, event: &Event) {
        match &event.body.data {
            EventData::TurnSubmitted { turn_id, input, .. } => {
                self.inputs.insert(turn_id.clone(), input.clone());
            }
            EventData::TurnStarted { turn_id, .. } => {
                if let Some(input) = self.inputs.remove(turn_id) {
                    std::sync::Arc::make_mut(&mut self.messages).push(Message::User { content: input });
                }
            }
            EventData::ModelCompleted { content, tool_calls, .. } => std::sync::Arc::make_mut(&mut self.messages)
                .push(Message::Assistant { content: content.clone(), tool_calls: tool_calls.clone() }),
            EventData::ToolCompleted { call_id, tool, outcome, output, .. } => {
                std::sync::Arc::make_mut(&mut self.messages).push(Message::Tool {
                    tool_call_id: call_id.clone(),
                    name: tool.clone(),
                    content: tool_content(*outcome, output),
                    is_error: *outcome != Outcome::Ok,
                })
            }
            _ => {}
        }
    }
}

/// What the model is shown for a tool result.
pub fn tool_content(outcome: Outcome, output: &Value) -> String {
    match (outcome, output) {
        (Outcome::Unknown, _) => UNKNOWN_OUTCOME.to_owned(),
        (_, Value::String(s)) => s.clone(),
        (_, v) => v.to_string(),
    }
}

/// A tool call journaled as intent.
#[derive(Clone, Debug)]
pub struct OpenToolCall {
    pub step: u32,
    pub call: ToolCall,
    pub idempotent: bool,
    pub idempotency_key: String,
}

/// Where one turn stands, from its events.
#[derive(Default, Debug)]
pub struct TurnProgress {
    /// Highest step number used.
    pub last_step: u32,
    /// Steps completed (model and tool calls with a result).
    pub steps_done: u32,
    /// A model call with an intent and no result.
    pub open_model: Option<u32>,
    /// Tool calls with an intent and no result, in request order.
    pub open_tools: Vec<OpenToolCall>,
    pub usage: agentrt_types::Usage,
    pub cancel_requested: bool,
    pub started_ms: Option<i64>,
    pub ended: bool,
}

impl TurnProgress {
    /// Applies an event of this turn.
    pub fn apply(&mut self, event: &Event) {
        match &event.body.data {
            EventData::TurnStarted { .. } => self.started_ms = Some(event.body.ts),
            EventData::TurnCancelRequested { .. } => self.cancel_requested = true,
            EventData::ModelRequested { step, .. } => {
                self.last_step = self.last_step.max(*step);
                self.open_model = Some(*step);
            }
            EventData::ModelCompleted { usage, .. } => {
                self.open_model = None;
                self.steps_done += 1;
                self.usage.add(*usage);
            }
            EventData::ModelFailed { .. } => {
                self.open_model = None;
                self.steps_done += 1;
            }
            EventData::ToolRequested { step, call_id, tool, arguments, idempotent, idempotency_key, .. } => {
                self.last_step = self.last_step.max(*step);
                self.open_tools.push(OpenToolCall {
                    step: *step,
                    call: ToolCall { id: call_id.clone(), name: tool.clone(), arguments: arguments.clone() },
                    idempotent: *idempotent,
                    idempotency_key: idempotency_key.clone(),
                });
            }
            EventData::ToolCompleted { call_id, .. } => {
                self.open_tools.retain(|t| &t.call.id != call_id);
                self.steps_done += 1;
            }
            d if d.ends_turn() => self.ended = true,
            _ => {}
        }
    }
}
