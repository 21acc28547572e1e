//! Provider-neutral conversation messages and tool definitions: what the
//! agent loop hands to a model provider and gets back.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One tool call requested by the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Provider-assigned (or runtime-assigned) id that links the result back.
    pub id: String,
    /// Tool name as agentrt knows it, e.g. `clock.now`.
    pub name: String,
    /// Arguments as a JSON object.
    pub arguments: Value,
}

/// One message of the conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Message {
    /// Input from the user (a turn's input).
    User { content: String },
    /// Output from the model: text, tool calls, or both.
    Assistant {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    /// The result of one tool call.
    Tool {
        tool_call_id: String,
        /// Tool name, needed by providers that do not link by id alone.
        name: String,
        content: String,
        #[serde(default)]
        is_error: bool,
    },
}

/// A tool as offered to the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolDef {
    pub name: String,
    pub description: String,
    /// JSON Schema of the tool's input object.
    pub input_schema: Value,
}
