//! The multi-agent tools, `agents.handover`, `agents.borrow` and
//! `agents.delegate`. They
//! only declare themselves here (name, schema, retry safety); the runtime
//! carries the calls out, because they change or create sessions.

use agentrt_types::spec::{BORROW_TOOL, DELEGATE_TOOL, HANDOVER_TOOL};
use agentrt_types::ToolDef;
use async_trait::async_trait;
use serde_json::{json, Value};

use crate::{Tool, ToolContext, ToolError};

/// A tool the runtime carries out itself.
pub struct RuntimeTool {
    def: ToolDef,
}

impl RuntimeTool {
    /// Hands the session over to one of `agents`.
    pub fn handover(agents: &[String]) -> Self {
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
        RuntimeTool { def }
    }

    /// Lends the session to one of `agents` for a sub-task.
    pub fn borrow(agents: &[String]) -> Self {
        let def = ToolDef {
            name: BORROW_TOOL.to_owned(),
            description: "Lend this conversation to another agent for one sub-task: it sees everything so far and the sub-task, \
                          works on it with its own instructions and tools in the same workspace, and its answer (or why it failed) \
                          comes back as this call's result; then you are in control again."
                .to_owned(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "agent": {"type": "string", "enum": agents, "description": "The agent to lend the session to."},
                    "input": {"type": "string", "description": "The sub-task: what the agent is asked to do and answer."},
                    "max_steps": {"type": "integer", "minimum": 1, "maximum": 1000, "description": "Model and tool calls the agent may make (default: its own limit)."},
                    "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": 3600, "description": "Time the agent has (default: the rest of the turn's)."}
                },
                "required": ["agent", "input"],
                "additionalProperties": false
            }),
        };
        RuntimeTool { def }
    }

    /// Runs sub-tasks with `agents`, each in a child session, in parallel.
    pub fn delegate(agents: &[String]) -> Self {
        let def = ToolDef {
            name: DELEGATE_TOOL.to_owned(),
            description: "Give independent sub-tasks to other agents. Each runs in a session of its own, in parallel; \
                          the result lists every sub-task's outcome (completed with its output, failed, timed_out or cancelled)."
                .to_owned(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "tasks": {
                        "type": "array", "minItems": 1, "maxItems": 50,
                        "items": {
                            "type": "object",
                            "properties": {
                                "agent": {"type": "string", "enum": agents},
                                "input": {"type": "string", "description": "What the agent is asked."}
                            },
                            "required": ["agent", "input"],
                            "additionalProperties": false
                        }
                    },
                    "wait": {"type": "string", "enum": ["all", "first"], "description": "Wait for every sub-task (default), or for the first to end; the others are cancelled."},
                    "first": {"type": "integer", "minimum": 1, "maximum": 50, "description": "Wait for this many sub-tasks to end; the others are cancelled."},
                    "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": 3600, "description": "Sub-tasks not done by then are cancelled (default 300)."}
                },
                "required": ["tasks"],
                "additionalProperties": false
            }),
        };
        RuntimeTool { def }
    }
}

#[async_trait]
impl Tool for RuntimeTool {
    fn def(&self) -> &ToolDef {
        &self.def
    }

    /// Handover and borrow: the result and the change of control are one
    /// transaction. Delegate: a repeated call finds the child sessions of
    /// the first one.
    fn idempotent(&self) -> bool {
        true
    }

    /// Delegated sub-tasks bring their own deadline.
    fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(3700)
    }

    async fn call(&self, _ctx: &ToolContext, _args: Value) -> Result<Value, ToolError> {
        Err(ToolError::Failed(format!("{} is carried out by the runtime", self.def.name)))
    }
}
