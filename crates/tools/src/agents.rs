//! `agents.handover`: the model passes its session to another agent. The
//! tool only declares itself here (name, schema, retry safety); the runtime
//! carries the call out, because it changes who runs the session.

use agentrt_types::spec::HANDOVER_TOOL;
use agentrt_types::ToolDef;
use async_trait::async_trait;
use serde_json::{json, Value};

use crate::{Tool, ToolContext, ToolError};

/// The handover tool of an agent allowed to hand over to `agents`.
pub struct HandoverTool {
    def: ToolDef,
}

impl HandoverTool {
    pub fn new(agents: &[String]) -> Self {
        let def = ToolDef {
            name: HANDOVER_TOOL.to_owned(),
            description: "Hand this conversation over to another agent for good: it sees everything so far, \
                          continues this turn with its own instructions and tools, and answers from now on."
                .to_owned(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "agent": {"type": "string", "enum": agents, "description": "The agent to hand over to."},
                    "reason": {"type": "string", "description": "Why, for the record and for the next agent."}
                },
                "required": ["agent"],
                "additionalProperties": false
            }),
        };
        HandoverTool { def }
    }
}

#[async_trait]
impl Tool for HandoverTool {
    fn def(&self) -> &ToolDef {
        &self.def
    }

    /// The call's result and the handover are one transaction: either
    /// both are in the log or neither, so it may be made again.
    fn idempotent(&self) -> bool {
        true
    }

    async fn call(&self, _ctx: &ToolContext, _args: Value) -> Result<Value, ToolError> {
        Err(ToolError::Failed(format!("{HANDOVER_TOOL} is carried out by the runtime")))
    }
}
