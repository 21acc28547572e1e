//! Request and row types of the [`crate::Store`] trait.

use agentrt_types::spec::AgentSpec;
use agentrt_types::{NewEvent, SessionId, SessionStatus, TurnId, TurnStatus};
use serde::Serialize;
use serde_json::Value;

/// One immutable version of an agent.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentVersion {
    pub name: String,
    pub version: u32,
    pub spec: AgentSpec,
    pub created_ms: i64,
}

/// An agent and its latest version.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentInfo {
    pub name: String,
    pub latest_version: u32,
    pub description: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A session to create.
#[derive(Clone, Debug)]
pub struct NewSession {
    pub id: SessionId,
    pub agent: String,
    pub agent_version: u32,
    pub metadata: Value,
}

/// Filters for listing sessions.
#[derive(Clone, Debug, Default)]
pub struct SessionFilter {
    pub agent: Option<String>,
    pub status: Option<SessionStatus>,
    /// Only sessions older than this id (the previous page's last id).
    pub before: Option<SessionId>,
    pub limit: usize,
}

/// Who is appending.
#[derive(Clone, Debug)]
pub enum Fence {
    /// A client write (input, cancel, terminate): no lease needed, refused on
    /// a terminated session.
    Client,
    /// An executor write: refused unless `holder` still holds the lease with
    /// exactly this token.
    Lease { holder: String, token: u64 },
}

/// A condition checked inside the append's transaction.
#[derive(Clone, Debug)]
pub enum Precondition {
    /// The turn must currently have this status.
    TurnStatus(TurnId, TurnStatus),
    /// The session must have no queued or running turn.
    SessionIdle,
}

/// Events to append to one session's log in one transaction.
#[derive(Clone, Debug)]
pub struct AppendRequest {
    pub session_id: SessionId,
    pub fence: Fence,
    pub precondition: Option<Precondition>,
    pub events: Vec<NewEvent>,
}
