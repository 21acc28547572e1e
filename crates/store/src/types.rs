//! Request and row types of the [`crate::Store`] trait.

use agentrt_types::event::ApprovalDecision;
use agentrt_types::spec::AgentSpec;
use agentrt_types::{ApprovalId, KeyId, NewEvent, Role, SessionId, SessionStatus, TurnId, TurnStatus};
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
    pub tenant: String,
    pub agent: String,
    pub agent_version: u32,
    pub metadata: Value,
}

/// Filters for listing sessions.
#[derive(Clone, Debug, Default)]
pub struct SessionFilter {
    /// Only this tenant's sessions (`None`: every tenant, for node-wide tools).
    pub tenant: Option<String>,
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
    /// The approval must still be pending (decided at most once).
    ApprovalPending(ApprovalId),
    /// The session must be run by this agent.
    AgentIs(String),
    /// The session must be run by this agent for good: not lent to it.
    Owns(String),
    /// The session's last saved workspace must be this generation (0: none
    /// saved yet), so that a node saves only over what it started from.
    WorkspaceGeneration(u64),
}

/// Events to append to one session's log in one transaction.
#[derive(Clone, Debug)]
pub struct AppendRequest {
    pub session_id: SessionId,
    pub fence: Fence,
    pub precondition: Option<Precondition>,
    pub events: Vec<NewEvent>,
}

/// A node of the cluster, as its heartbeats left it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeInfo {
    pub id: String,
    pub started_ms: i64,
    /// When it last said it was alive.
    pub heartbeat_ms: i64,
    /// Asked to give its sessions up at their next turn boundary and take
    /// no new ones.
    pub draining: bool,
    /// Sessions it holds a live lease on.
    pub leases: u64,
}

/// What other nodes appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteAppend {
    /// Events `first..=last` of a session.
    Appended { session: SessionId, first: u64, last: u64 },
    /// The listener was cut off and is back: appends made meanwhile were
    /// not announced.
    Missed,
}

/// Passes control of a session from one agent to another (a handover, a
/// loan to a borrower, or the loan's return): `events` (e.g.
/// `handoff.completed` and the result of the agent's call) and a
/// `lease.transferred` are appended in one transaction that also moves the
/// session's fencing token on, so that writes with the old token fail.
#[derive(Clone, Debug)]
pub struct TransferRequest {
    pub session_id: SessionId,
    pub fence: Fence,
    /// Who must be in control: `AgentIs` or `Owns` naming `from_agent`.
    pub precondition: Precondition,
    pub from_agent: String,
    pub to_agent: String,
    /// The turn during which control passes.
    pub turn_id: Option<TurnId>,
    pub events: Vec<NewEvent>,
}

/// One model call, for usage accounting: from the agent loop (projected
/// from its `model.completed` event) or through the gateway.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UsageRecord {
    pub ts_ms: i64,
    pub tenant: String,
    pub agent: String,
    pub session_id: Option<SessionId>,
    pub turn_id: Option<TurnId>,
    /// `loop` or `gateway`.
    pub source: String,
    /// The gateway route; the agent's provider for loop calls.
    pub route: String,
    pub provider: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub cost_usd: f64,
    pub latency_us: u64,
    /// Tokens counted locally: the provider reported none.
    pub estimated: bool,
}

/// What usage totals are grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageGroup {
    Tenant,
    Agent,
    Session,
    Route,
    Model,
}

/// A usage report request: calls with `from_ms <= ts < to_ms`.
#[derive(Clone, Debug)]
pub struct UsageQuery {
    /// Only this tenant (`None`: every tenant).
    pub tenant: Option<String>,
    pub group_by: UsageGroup,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// Totals of one group.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UsageRow {
    pub key: String,
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub cost_usd: f64,
    /// Calls whose tokens were counted locally.
    pub estimated_calls: u64,
}

/// A tenant: the unit of isolation between customers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tenant {
    pub name: String,
    pub created_ms: i64,
    /// Tool calls per second allowed over all of the tenant's sessions on
    /// a node (a token bucket); unlimited when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls_per_second: Option<f64>,
}

/// An API key as stored (its secret is kept only as a hash).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ApiKey {
    pub id: KeyId,
    pub tenant: String,
    /// A label chosen by whoever created the key.
    pub name: String,
    pub role: Role,
    pub created_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<i64>,
}

/// One version of a tenant's policy set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PolicyVersion {
    pub tenant: String,
    pub version: u32,
    /// Cedar policies.
    pub text: String,
    /// Extra Cedar schema declarations (e.g. actions of MCP tools).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    pub created_ms: i64,
    /// The principal that uploaded it.
    pub created_by: String,
}

/// Where an approval stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Denied,
    Expired,
    /// The turn ended (cancelled, failed, session terminated) first.
    Cancelled,
}

impl ApprovalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Denied => "denied",
            ApprovalStatus::Expired => "expired",
            ApprovalStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Approved, Self::Denied, Self::Expired, Self::Cancelled].into_iter().find(|v| v.as_str() == s)
    }
}

impl From<ApprovalDecision> for ApprovalStatus {
    fn from(d: ApprovalDecision) -> Self {
        match d {
            ApprovalDecision::Approved => ApprovalStatus::Approved,
            ApprovalDecision::Denied => ApprovalStatus::Denied,
            ApprovalDecision::Expired => ApprovalStatus::Expired,
        }
    }
}

/// A request for a human to approve one tool call; folded from the
/// `approval.*` events of its session.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Approval {
    pub id: ApprovalId,
    pub tenant: String,
    pub session_id: SessionId,
    pub turn_id: TurnId,
    pub call_id: String,
    pub tool: String,
    pub arguments: Value,
    pub reason: String,
    pub policies: Vec<String>,
    pub status: ApprovalStatus,
    pub requested_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Filters for listing approvals.
#[derive(Clone, Debug, Default)]
pub struct ApprovalFilter {
    pub tenant: String,
    pub status: Option<ApprovalStatus>,
    pub session: Option<SessionId>,
    pub limit: usize,
}
