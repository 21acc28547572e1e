//! Authorizes the tool calls of agents with [Cedar](https://www.cedarpolicy.com)
//! policies.
//!
//! A tenant uploads policies in Cedar syntax; [`Policies::compile`] parses
//! them and validates them (strict mode) against a schema generated from the
//! tools the agents can call ([`schema_text`]). Before each tool call the
//! engine asks [`Policies::decide`], which answers permit, forbid, require a
//! human's approval, or "no policy matched".
//!
//! The entity model: the principal is the session (`Session::"<id>"`, in
//! `Agent::"<name>"`, in `Tenant::"<name>"`), the action is the tool
//! (`Action::"payments.transfer"`, in `Action::"call_tool"`), the resource is
//! `Tool::"<name>"` in `ToolServer::"<server>"`, and the context carries the
//! call's arguments (`context.input`), the time and the turn's spend.

mod compile;
mod decide;
mod schema;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use serde::Serialize;

pub use schema::{schema_text, BASE_SCHEMA};

/// A tool the agent can call, as the policy schema sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolDecl {
    /// The tool's name, e.g. `payments.transfer`, `kv.set`, `shell.exec`;
    /// becomes `Action::"<name>"` and `Tool::"<name>"`.
    pub name: String,
    /// The MCP server's name, or `builtin` / `sandbox` / `http`.
    pub server: String,
    /// The JSON Schema of the tool's arguments; becomes `context.input`.
    pub input_schema: serde_json::Value,
}

/// Compiled, validated policies of one tenant (cheap to clone: an `Arc`
/// inside).
#[derive(Clone)]
pub struct Policies {
    inner: Arc<compile::Compiled>,
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policies").field("ids", &self.inner.ids).finish_non_exhaustive()
    }
}

/// What the turn has spent so far (its "budget state").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnState {
    /// Model and tool calls completed in this turn.
    pub steps: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// One tool call to decide.
#[derive(Clone, Copy, Debug)]
pub struct ToolCallRequest<'a> {
    pub tenant: &'a str,
    pub agent: &'a str,
    pub session_id: &'a str,
    /// The tool's name (the Cedar action and resource id).
    pub tool: &'a str,
    /// The tool's server (the resource's parent).
    pub server: &'a str,
    /// The call's arguments; become `context.input`.
    pub arguments: &'a serde_json::Value,
    /// The turn's spend so far ("budget state"): steps done, tokens used.
    pub turn: TurnState,
    /// Unix milliseconds; exposed to policies as `context.time`.
    pub now_ms: i64,
}

/// The answer for one tool call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// A permit policy matched and no forbid did. `policies`: the ids that
    /// permitted.
    Permit { policies: Vec<String> },
    /// A forbid policy matched (`policies`: the forbidding ids), or a forbid
    /// policy failed to evaluate (`policies`: its id; failing closed), or the
    /// call could not be evaluated at all (e.g. arguments that do not fit the
    /// tool's declared types: `policies` is empty). `reason` says which.
    Forbid { policies: Vec<String>, reason: String },
    /// A permit matched, no forbid did, and at least one permitting policy
    /// carries `@approval("reason")`: a human must approve the call.
    /// `policies`: the ids carrying `@approval`; `reason`: their texts, joined.
    RequireApproval { policies: Vec<String>, reason: String },
    /// No policy matched at all (Cedar's default deny with no determining
    /// policy): the caller applies its configured default.
    NoMatch,
}

/// Why a tenant's policies were rejected. The text is meant for the person
/// who uploaded them: Cedar's own messages, with policy ids and locations
/// (`line:column` in the uploaded text), and Cedar's hints.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy text is not valid Cedar.
    #[error("cannot parse the policies:\n{0}")]
    Syntax(String),
    /// The policies do not validate against the schema.
    #[error("the policies do not fit the schema:\n{0}")]
    Invalid(String),
    /// The extra schema fragment is not valid, or does not combine with the
    /// generated one (e.g. it declares a tool's action a second time).
    #[error("invalid schema:\n{0}")]
    Schema(String),
    /// Two policies carry the same `@id`, or one's `@id` equals another's
    /// default id (`policy<N>`).
    #[error("duplicate policy id `{0}`: every @id must be unique")]
    DuplicateId(String),
    /// An annotation is used in a way that has no meaning.
    #[error("policy `{id}`: {message}")]
    Annotation { id: String, message: String },
    /// The text contains a template (a policy with `?principal` or
    /// `?resource`); only static policies are supported.
    #[error("policy `{0}` is a template (it uses ?principal or ?resource); templates are not supported")]
    Template(String),
}
