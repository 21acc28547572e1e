//! The session log's event schema and its hash chain.
//!
//! Every session has one append-only log numbered 1, 2, 3, … An event is
//! stored as its canonical JSON body (everything but the hashes); its hash is
//! `sha256(prev_hash_hex ‖ "\n" ‖ body)`, so any edit to a stored body or a
//! reordering breaks the chain at that event.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::budget::{BudgetBreach, HeldCall};
use crate::ids::{ApprovalId, BudgetId, SessionId, TurnId};
use crate::message::ToolCall;

/// Version of the event schema written by this build.
pub const EVENT_SCHEMA_VERSION: u32 = 1;

/// The hash that precedes a session's first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Token usage of one model call, or a sum of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Input tokens served from the provider's prompt cache (part of `input_tokens`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Usage {
    /// Adds another usage to this one.
    pub fn add(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cached_tokens += other.cached_tokens;
    }
}

/// USD per million tokens of one model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Price {
    #[serde(default)]
    pub input: f64,
    #[serde(default)]
    pub output: f64,
    /// Input tokens read from the provider's prompt cache.
    #[serde(default)]
    pub cached_input: f64,
}

impl Price {
    /// What `usage` costs at this price.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let cached = usage.cached_tokens.min(usage.input_tokens);
        ((usage.input_tokens - cached) as f64 * self.input + cached as f64 * self.cached_input + usage.output_tokens as f64 * self.output)
            / 1e6
    }
}

/// Who answered a model call and what it cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Billing {
    pub provider: String,
    pub model: String,
    /// Priced from the server's price table; 0 when the model has no price.
    pub cost_usd: f64,
}

/// How a tool call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The tool ran and returned a result.
    Ok,
    /// The tool ran (or was refused) and returned an error.
    Error,
    /// The call may or may not have taken effect: its intent was journaled but
    /// the runtime stopped before its result was, and it is not safe to repeat.
    Unknown,
}

/// How an approval was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalDecision {
    Approved,
    Denied,
    /// Nobody decided before the request expired: treated as denied.
    Expired,
}

impl ApprovalDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalDecision::Approved => "approved",
            ApprovalDecision::Denied => "denied",
            ApprovalDecision::Expired => "expired",
        }
    }
}

fn default_tenant() -> String {
    crate::tenant::DEFAULT_TENANT.to_owned()
}

/// A sandbox lifecycle transition and how long it took.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SandboxTransition {
    /// The sandbox instance (a session has a new one after each restart).
    pub sandbox: String,
    pub duration_ms: f64,
    /// Why, where it is not obvious (e.g. what killed the old sandbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A snapshot of a session's workspace, saved to the workspace store so
/// that the session's next sandbox, on any node, starts from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceSaved {
    /// 1 for the first snapshot of the session, then one more each time.
    pub generation: u64,
    /// Its key in the workspace store.
    pub object: String,
    /// Bytes stored (the workspace's data, without its free space).
    pub bytes: u64,
    /// Time to copy and upload it.
    pub duration_ms: f64,
    /// The node that saved it.
    pub node: String,
}

/// One sub-task given to another agent, and its child session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DelegatedTask {
    pub agent: String,
    pub session_id: SessionId,
}

/// How one delegated sub-task ended: `completed`, `failed`, `cancelled` or `timed_out`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DelegateOutcome {
    pub session_id: SessionId,
    pub status: String,
}

/// The terms of a loan of a session to another agent: who borrows it and
/// what it may spend on the sub-task before control comes back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BorrowTerms {
    /// The agent that runs the sub-task.
    pub agent: String,
    /// Steps (model and tool calls) the borrower may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u32>,
    /// Time the borrower has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

/// How a borrow ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BorrowStatus {
    /// The borrower answered; its answer is the result.
    Completed,
    /// The borrower's turn failed (a model error, a loop, the turn's limits).
    Failed,
    /// The borrower used the steps it was lent for.
    OutOfSteps,
    /// The borrower's time ran out.
    TimedOut,
    /// The runtime stopped while the borrower was working.
    Interrupted,
    /// The turn was cancelled.
    Cancelled,
}

impl BorrowStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BorrowStatus::Completed => "completed",
            BorrowStatus::Failed => "failed",
            BorrowStatus::OutOfSteps => "out_of_steps",
            BorrowStatus::TimedOut => "timed_out",
            BorrowStatus::Interrupted => "interrupted",
            BorrowStatus::Cancelled => "cancelled",
        }
    }
}

/// The typed payload of an event; `type` names it on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum EventData {
    #[serde(rename = "session.created")]
    SessionCreated {
        agent: String,
        agent_version: u32,
        metadata: Value,
        /// The tenant the session belongs to (logs written before tenants
        /// existed belong to the default tenant).
        #[serde(default = "default_tenant")]
        tenant: String,
    },
    #[serde(rename = "session.terminated")]
    SessionTerminated { reason: String },
    /// A client's input was accepted; the turn is queued.
    #[serde(rename = "turn.submitted")]
    TurnSubmitted {
        turn_id: TurnId,
        input: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
        /// W3C trace context the turn's trace continues (the client's
        /// `traceparent`, or one the runtime made), kept across restarts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
        /// A client lends the session out for this turn: `input` is the
        /// borrower's sub-task, and control comes back when it ends.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        borrow: Option<BorrowTerms>,
    },
    #[serde(rename = "turn.started")]
    TurnStarted {
        turn_id: TurnId,
        agent_version: u32,
        executor: String,
        /// Trace id of the turn's trace, to join logs, events and traces.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace_id: Option<String>,
    },
    /// An executor picked up an unfinished turn after a restart or takeover.
    #[serde(rename = "turn.resumed")]
    TurnResumed {
        turn_id: TurnId,
        executor: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace_id: Option<String>,
    },
    #[serde(rename = "turn.cancel_requested")]
    TurnCancelRequested { turn_id: TurnId, reason: String },
    /// Intent of a model call.
    #[serde(rename = "model.requested")]
    ModelRequested { turn_id: TurnId, step: u32, provider: String, model: String },
    /// Result of a model call.
    #[serde(rename = "model.completed")]
    ModelCompleted {
        turn_id: TurnId,
        step: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
        usage: Usage,
        latency_us: u64,
        /// Who answered and what it cost, for usage accounting (absent in
        /// logs written before accounting existed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        billing: Option<Billing>,
    },
    #[serde(rename = "model.failed")]
    ModelFailed { turn_id: TurnId, step: u32, error: String, latency_us: u64 },
    /// Intent of a tool call.
    #[serde(rename = "tool.requested")]
    ToolRequested { turn_id: TurnId, step: u32, call_id: String, tool: String, arguments: Value, idempotent: bool, idempotency_key: String },
    /// Result of a tool call.
    #[serde(rename = "tool.completed")]
    ToolCompleted {
        turn_id: TurnId,
        step: u32,
        call_id: String,
        tool: String,
        outcome: Outcome,
        output: Value,
        latency_us: u64,
        attempts: u32,
        /// CPU time the session's sandbox used while the call ran.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sandbox_cpu_us: Option<u64>,
    },
    /// A tool target's circuit breaker changed state (`open`, `half_open`, `closed`).
    #[serde(rename = "tool.breaker")]
    ToolBreaker { turn_id: TurnId, target: String, state: String, failures: u32 },
    /// The session's sandbox started (cold, on a new or kept workspace).
    #[serde(rename = "sandbox.created")]
    SandboxCreated(SandboxTransition),
    /// Idle: every process frozen.
    #[serde(rename = "sandbox.standby")]
    SandboxStandby(SandboxTransition),
    /// Thawed after standby.
    #[serde(rename = "sandbox.resumed")]
    SandboxResumed(SandboxTransition),
    /// Idle for long: processes stopped, workspace kept.
    #[serde(rename = "sandbox.hibernated")]
    SandboxHibernated(SandboxTransition),
    /// Found dead (crash, OOM of PID 1, server restart) and started again.
    #[serde(rename = "sandbox.restarted")]
    SandboxRestarted(SandboxTransition),
    /// Stopped for good with its session.
    #[serde(rename = "sandbox.destroyed")]
    SandboxDestroyed(SandboxTransition),
    /// The workspace was saved to the workspace store (several nodes only).
    #[serde(rename = "workspace.saved")]
    WorkspaceSaved(WorkspaceSaved),
    /// The tenant's policies decided a tool call (only when the tenant has
    /// policies). `decision` is `permit`, `forbid` or `require_approval`;
    /// `policies` are the ids that decided, empty when none matched and the
    /// configured default applied (`default: true`).
    #[serde(rename = "policy.decided")]
    PolicyDecided {
        turn_id: TurnId,
        call_id: String,
        tool: String,
        decision: String,
        policies: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        default: bool,
        /// Version of the tenant's policy set that decided.
        policy_version: u32,
    },
    /// A tool call waits for a human: the turn pauses until it is decided.
    #[serde(rename = "approval.requested")]
    ApprovalRequested {
        approval_id: ApprovalId,
        turn_id: TurnId,
        step: u32,
        call_id: String,
        tool: String,
        arguments: Value,
        reason: String,
        policies: Vec<String>,
        /// Unix ms after which the request is denied automatically.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_ms: Option<i64>,
    },
    /// A human (or expiry) decided an approval: `approved`, `denied` or `expired`.
    #[serde(rename = "approval.decided")]
    ApprovalDecided {
        approval_id: ApprovalId,
        turn_id: TurnId,
        call_id: String,
        decision: ApprovalDecision,
        /// Who decided: the approver's principal, or `system:expiry`.
        approver: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
    /// A budget refused a model or tool call: the turn pauses until the
    /// budget is raised, removed, overridden or its period rolls over.
    /// `held` are the tool calls that run once it may go on.
    #[serde(rename = "budget.exceeded")]
    BudgetExceeded {
        turn_id: TurnId,
        breach: BudgetBreach,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        held: Vec<HeldCall>,
    },
    /// The budgets allow the paused turn again; it goes on.
    #[serde(rename = "budget.resumed")]
    BudgetResumed { turn_id: TurnId },
    /// An operator let the turn go past a budget (`budget_id`), or past
    /// every budget (`budget_id` absent), until the turn ends.
    #[serde(rename = "budget.overridden")]
    BudgetOverridden {
        turn_id: TurnId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        budget_id: Option<BudgetId>,
        by: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
    /// A model call made through the gateway with the session's credential
    /// (e.g. by code in its sandbox).
    #[serde(rename = "gateway.called")]
    GatewayCalled {
        route: String,
        provider: String,
        model: String,
        usage: Usage,
        cost_usd: f64,
        latency_us: u64,
        /// Tokens counted locally: the provider reported none.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        estimated: bool,
    },
    /// Control of the session passed from one agent to another, in the same
    /// transaction as a new fencing token (`lease.transferred`): from here
    /// on the session runs `to_agent`, and writes of the old holder fail.
    #[serde(rename = "handoff.completed")]
    HandoffCompleted {
        /// The turn during which an agent handed over (absent when a client did).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        turn_id: Option<TurnId>,
        from_agent: String,
        from_version: u32,
        to_agent: String,
        to_version: u32,
        /// The agent's principal, or the client's.
        by: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The session's fencing token moved on: writes with `old_token` fail.
    #[serde(rename = "lease.transferred")]
    LeaseTransferred {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        turn_id: Option<TurnId>,
        /// The executor holding the lease (absent when no one does).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        holder: Option<String>,
        old_token: u64,
        new_token: u64,
        /// The agent in control before and after.
        from_agent: String,
        to_agent: String,
    },
    /// The session is lent to `borrower` for a sub-task, in the same
    /// transaction as a new fencing token (`lease.transferred`): the
    /// borrower runs the turn until it answers, fails or runs out of what it
    /// was lent, and then control comes back to `lender` (`borrow.completed`).
    #[serde(rename = "borrow.started")]
    BorrowStarted {
        turn_id: TurnId,
        /// The lender's `agents.borrow` call (absent when a client lent the
        /// session: the turn's input is the sub-task).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call_id: Option<String>,
        lender: String,
        lender_version: u32,
        borrower: String,
        borrower_version: u32,
        input: String,
        /// The agents from the first lender to this borrower.
        chain: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_steps: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline_ms: Option<i64>,
    },
    /// Control came back to the lender with the sub-task's outcome, in the
    /// same transaction as the lender's call result and a new fencing token.
    #[serde(rename = "borrow.completed")]
    BorrowCompleted {
        turn_id: TurnId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call_id: Option<String>,
        lender: String,
        lender_version: u32,
        borrower: String,
        status: BorrowStatus,
        /// Steps the borrower took.
        steps: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// An agent gave sub-tasks to other agents (`agents.delegate`): each
    /// runs in the child session named here.
    #[serde(rename = "delegate.started")]
    DelegateStarted { turn_id: TurnId, call_id: String, children: Vec<DelegatedTask> },
    /// The sub-tasks of an `agents.delegate` call ended (or were given up
    /// on): each child's status. Their outputs are in the call's result.
    #[serde(rename = "delegate.completed")]
    DelegateCompleted { turn_id: TurnId, call_id: String, outcomes: Vec<DelegateOutcome> },
    /// Assistant output shown to the user.
    #[serde(rename = "message")]
    Message { turn_id: TurnId, content: String },
    #[serde(rename = "turn.completed")]
    TurnCompleted { turn_id: TurnId, output: String, usage: Usage, steps: u32 },
    #[serde(rename = "turn.failed")]
    TurnFailed { turn_id: TurnId, code: String, message: String, usage: Usage, steps: u32 },
    #[serde(rename = "turn.cancelled")]
    TurnCancelled { turn_id: TurnId, reason: String },
}

impl EventData {
    /// The wire name of this event type, e.g. `tool.completed`.
    pub fn kind(&self) -> &'static str {
        match self {
            EventData::SessionCreated { .. } => "session.created",
            EventData::SessionTerminated { .. } => "session.terminated",
            EventData::TurnSubmitted { .. } => "turn.submitted",
            EventData::TurnStarted { .. } => "turn.started",
            EventData::TurnResumed { .. } => "turn.resumed",
            EventData::TurnCancelRequested { .. } => "turn.cancel_requested",
            EventData::ModelRequested { .. } => "model.requested",
            EventData::ModelCompleted { .. } => "model.completed",
            EventData::ModelFailed { .. } => "model.failed",
            EventData::ToolRequested { .. } => "tool.requested",
            EventData::ToolCompleted { .. } => "tool.completed",
            EventData::ToolBreaker { .. } => "tool.breaker",
            EventData::SandboxCreated(_) => "sandbox.created",
            EventData::SandboxStandby(_) => "sandbox.standby",
            EventData::SandboxResumed(_) => "sandbox.resumed",
            EventData::SandboxHibernated(_) => "sandbox.hibernated",
            EventData::SandboxRestarted(_) => "sandbox.restarted",
            EventData::SandboxDestroyed(_) => "sandbox.destroyed",
            EventData::WorkspaceSaved(_) => "workspace.saved",
            EventData::PolicyDecided { .. } => "policy.decided",
            EventData::ApprovalRequested { .. } => "approval.requested",
            EventData::ApprovalDecided { .. } => "approval.decided",
            EventData::BudgetExceeded { .. } => "budget.exceeded",
            EventData::BudgetResumed { .. } => "budget.resumed",
            EventData::BudgetOverridden { .. } => "budget.overridden",
            EventData::GatewayCalled { .. } => "gateway.called",
            EventData::HandoffCompleted { .. } => "handoff.completed",
            EventData::LeaseTransferred { .. } => "lease.transferred",
            EventData::BorrowStarted { .. } => "borrow.started",
            EventData::BorrowCompleted { .. } => "borrow.completed",
            EventData::DelegateStarted { .. } => "delegate.started",
            EventData::DelegateCompleted { .. } => "delegate.completed",
            EventData::Message { .. } => "message",
            EventData::TurnCompleted { .. } => "turn.completed",
            EventData::TurnFailed { .. } => "turn.failed",
            EventData::TurnCancelled { .. } => "turn.cancelled",
        }
    }

    /// The turn this event belongs to, if any.
    pub fn turn_id(&self) -> Option<&TurnId> {
        match self {
            EventData::SessionCreated { .. }
            | EventData::SessionTerminated { .. }
            | EventData::SandboxCreated(_)
            | EventData::SandboxStandby(_)
            | EventData::SandboxResumed(_)
            | EventData::SandboxHibernated(_)
            | EventData::SandboxRestarted(_)
            | EventData::SandboxDestroyed(_)
            | EventData::WorkspaceSaved(_)
            | EventData::GatewayCalled { .. } => None,
            EventData::HandoffCompleted { turn_id, .. } | EventData::LeaseTransferred { turn_id, .. } => turn_id.as_ref(),
            EventData::TurnSubmitted { turn_id, .. }
            | EventData::TurnStarted { turn_id, .. }
            | EventData::TurnResumed { turn_id, .. }
            | EventData::TurnCancelRequested { turn_id, .. }
            | EventData::ModelRequested { turn_id, .. }
            | EventData::ModelCompleted { turn_id, .. }
            | EventData::ModelFailed { turn_id, .. }
            | EventData::ToolRequested { turn_id, .. }
            | EventData::ToolCompleted { turn_id, .. }
            | EventData::ToolBreaker { turn_id, .. }
            | EventData::PolicyDecided { turn_id, .. }
            | EventData::ApprovalRequested { turn_id, .. }
            | EventData::ApprovalDecided { turn_id, .. }
            | EventData::BudgetExceeded { turn_id, .. }
            | EventData::BudgetResumed { turn_id }
            | EventData::BudgetOverridden { turn_id, .. }
            | EventData::BorrowStarted { turn_id, .. }
            | EventData::BorrowCompleted { turn_id, .. }
            | EventData::DelegateStarted { turn_id, .. }
            | EventData::DelegateCompleted { turn_id, .. }
            | EventData::Message { turn_id, .. }
            | EventData::TurnCompleted { turn_id, .. }
            | EventData::TurnFailed { turn_id, .. }
            | EventData::TurnCancelled { turn_id, .. } => Some(turn_id),
        }
    }

    /// Whether this event ends its turn.
    pub fn ends_turn(&self) -> bool {
        matches!(self, EventData::TurnCompleted { .. } | EventData::TurnFailed { .. } | EventData::TurnCancelled { .. })
    }
}

/// An event a writer asks the store to append; the store assigns the rest.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub data: EventData,
}

impl From<EventData> for NewEvent {
    fn from(data: EventData) -> Self {
        NewEvent { data }
    }
}

/// The body of an event: what is hashed and stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventBody {
    /// Schema version.
    pub v: u32,
    pub seq: u64,
    pub session_id: SessionId,
    /// Unix milliseconds when the event was appended.
    pub ts: i64,
    #[serde(flatten)]
    pub data: EventData,
}

/// An event as stored and served: body plus hash chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(flatten)]
    pub body: EventBody,
    /// Hash of the previous event of the session (hex).
    pub prev_hash: String,
    /// Hash of this event (hex).
    pub hash: String,
}

impl Event {
    /// Seals a body onto the chain after `prev_hash`, returning the event and
    /// the canonical body text that must be stored verbatim.
    pub fn seal(body: EventBody, prev_hash: &str) -> (Event, String) {
        let text = serde_json::to_string(&body).expect("event bodies always serialize");
        let hash = chain_hash(prev_hash, &text);
        (Event { body, prev_hash: prev_hash.to_owned(), hash }, text)
    }

    pub fn seq(&self) -> u64 {
        self.body.seq
    }
}

/// `sha256(prev_hash ‖ "\n" ‖ body_text)` as lowercase hex.
pub fn chain_hash(prev_hash: &str, body_text: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(body_text.as_bytes());
    hex::encode(h.finalize())
}

/// One stored event row as verification sees it.
#[derive(Clone, Debug)]
pub struct StoredRecord {
    pub seq: u64,
    pub body_text: String,
    pub prev_hash: String,
    pub hash: String,
}

/// One line of an audit export (JSON Lines): a stored event with its place
/// in the hash chain. `event` is the stored body verbatim, so the chain can
/// be recomputed from the file alone.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditRecord {
    pub session_id: SessionId,
    pub seq: u64,
    pub prev_hash: String,
    pub hash: String,
    pub event: Box<serde_json::value::RawValue>,
}

impl AuditRecord {
    /// The export line of a stored record.
    pub fn new(session_id: &SessionId, r: StoredRecord) -> Result<AuditRecord, serde_json::Error> {
        let event = serde_json::value::RawValue::from_string(r.body_text)?;
        Ok(AuditRecord { session_id: session_id.clone(), seq: r.seq, prev_hash: r.prev_hash, hash: r.hash, event })
    }

    /// Back to the stored form, for verification.
    pub fn into_stored(self) -> StoredRecord {
        StoredRecord { seq: self.seq, body_text: self.event.get().to_owned(), prev_hash: self.prev_hash, hash: self.hash }
    }
}

/// Verifies consecutive records that may start after the first event (an
/// export `--since` a time): links and hashes are checked from the first
/// record on, and from genesis when it is event 1. Returns the first and
/// last seq checked.
pub fn verify_segment(records: Vec<StoredRecord>) -> Result<(u64, u64), ChainError> {
    let Some(first) = records.first() else { return Ok((0, 0)) };
    let (start, mut prev_hash) = (first.seq, first.prev_hash.clone());
    if start == 1 && prev_hash != GENESIS_HASH {
        return Err(ChainError::BrokenLink { seq: 1, prev: 0 });
    }
    let mut expected = start;
    for r in records {
        if r.seq != expected {
            return Err(ChainError::Gap { seq: r.seq, expected });
        }
        if r.prev_hash != prev_hash {
            return Err(ChainError::BrokenLink { seq: r.seq, prev: r.seq - 1 });
        }
        if chain_hash(&r.prev_hash, &r.body_text) != r.hash {
            return Err(ChainError::Tampered { seq: r.seq });
        }
        match serde_json::from_str::<EventBody>(&r.body_text) {
            Ok(body) if body.seq == r.seq => {}
            _ => return Err(ChainError::Malformed { seq: r.seq }),
        }
        prev_hash = r.hash;
        expected += 1;
    }
    Ok((start, expected - 1))
}

/// Why a chain does not verify, naming the first bad event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("event {seq}: expected seq {expected} (events missing or reordered)")]
    Gap { seq: u64, expected: u64 },
    #[error("event {seq}: prev_hash does not match the hash of event {prev}")]
    BrokenLink { seq: u64, prev: u64 },
    #[error("event {seq}: content does not match its hash (event was modified)")]
    Tampered { seq: u64 },
    #[error("event {seq}: body does not parse as an event or names another seq")]
    Malformed { seq: u64 },
    #[error("events {from} to {to} are missing at the end of the log (truncated)")]
    Truncated { from: u64, to: u64 },
}

/// Verifies a session's chain from its first event; returns the number of
/// events checked or the first broken event.
pub fn verify_chain(records: impl IntoIterator<Item = StoredRecord>) -> Result<u64, ChainError> {
    let records: Vec<StoredRecord> = records.into_iter().collect();
    if let Some(first) = records.first().filter(|r| r.seq != 1) {
        return Err(ChainError::Gap { seq: first.seq, expected: 1 });
    }
    verify_segment(records).map(|(_, last)| last)
}

/// Verifies a session's chain and that it reaches `last_seq`, the seq the
/// session's state says its log ends at (so a cut-off tail is caught too).
pub fn verify_chain_to(records: impl IntoIterator<Item = StoredRecord>, last_seq: u64) -> Result<u64, ChainError> {
    let n = verify_chain(records)?;
    if n < last_seq {
        return Err(ChainError::Truncated { from: n + 1, to: last_seq });
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_off_tail_is_named() {
        let mut c = chain(5);
        c.truncate(3);
        assert_eq!(verify_chain_to(c, 5), Err(ChainError::Truncated { from: 4, to: 5 }));
        assert_eq!(verify_chain_to(chain(5), 5), Ok(5));
    }

    fn chain(n: u64) -> Vec<StoredRecord> {
        let session_id = SessionId::generate();
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let body = EventBody {
                    v: EVENT_SCHEMA_VERSION,
                    seq,
                    session_id: session_id.clone(),
                    ts: 1_700_000_000_000,
                    data: EventData::SessionTerminated { reason: format!("r{seq}") },
                };
                let (event, text) = Event::seal(body, &prev);
                prev = event.hash.clone();
                StoredRecord { seq, body_text: text, prev_hash: event.prev_hash, hash: event.hash }
            })
            .collect()
    }

    #[test]
    fn a_segment_verifies_from_its_first_link_and_names_edits() {
        let c = chain(6);
        assert_eq!(verify_segment(c[2..].to_vec()), Ok((3, 6)));
        assert_eq!(verify_segment(c.clone()), Ok((1, 6)));
        let mut edited = c[2..].to_vec();
        edited[1].body_text = edited[1].body_text.replace("r4", "rX");
        assert_eq!(verify_segment(edited), Err(ChainError::Tampered { seq: 4 }));
        let mut gap = c[2..].to_vec();
        gap.remove(1);
        assert_eq!(verify_segment(gap), Err(ChainError::Gap { seq: 5, expected: 4 }));
        let mut forged_start = c.clone();
        forged_start[0].prev_hash = "f".repeat(64);
        assert_eq!(verify_segment(forged_start), Err(ChainError::BrokenLink { seq: 1, prev: 0 }));
        assert_eq!(verify_chain(c[2..].to_vec()), Err(ChainError::Gap { seq: 3, expected: 1 }), "a full chain starts at 1");
    }

    #[test]
    fn audit_records_keep_the_stored_body_verbatim() {
        let c = chain(2);
        let id = SessionId::generate();
        let line = serde_json::to_string(&AuditRecord::new(&id, c[1].clone()).unwrap()).unwrap();
        let back: AuditRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back.into_stored().body_text, c[1].body_text);
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify_chain(chain(5)), Ok(5));
    }

    #[test]
    fn edited_body_is_named() {
        let mut c = chain(5);
        c[2].body_text = c[2].body_text.replace("r3", "rX");
        assert_eq!(verify_chain(c), Err(ChainError::Tampered { seq: 3 }));
    }

    #[test]
    fn rehashed_edit_breaks_the_next_link() {
        let mut c = chain(5);
        c[2].body_text = c[2].body_text.replace("r3", "rX");
        c[2].hash = chain_hash(&c[2].prev_hash, &c[2].body_text);
        assert_eq!(verify_chain(c), Err(ChainError::BrokenLink { seq: 4, prev: 3 }));
    }

    #[test]
    fn deleted_event_is_a_gap() {
        let mut c = chain(5);
        c.remove(1);
        assert_eq!(verify_chain(c), Err(ChainError::Gap { seq: 3, expected: 2 }));
    }

    #[test]
    fn event_json_shape() {
        let body = EventBody {
            v: 1,
            seq: 7,
            session_id: SessionId::parse("ses_0190000000007000800000000000000a").unwrap(),
            ts: 1_700_000_000_000,
            data: EventData::ToolRequested {
                turn_id: TurnId::parse("turn_0190000000007000800000000000000b").unwrap(),
                step: 2,
                call_id: "call_1".into(),
                tool: "kv.set".into(),
                arguments: serde_json::json!({"key": "a", "value": "b"}),
                idempotent: true,
                idempotency_key: "k".into(),
            },
        };
        let (event, _) = Event::seal(body, GENESIS_HASH);
        insta::assert_json_snapshot!(event);
    }
}
