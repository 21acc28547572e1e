//! Folds over the session log: a session's and a turn's state are derived
//! from their events and nothing else. The store caches these folds for
//! listing and lookup; it never stores state the log does not imply.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::budget::{BudgetBreach, Spend};
use crate::event::{Event, EventData, Usage};
use crate::ids::{SessionId, TurnId};

/// Lifecycle of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    /// No turn queued or running.
    Idle,
    /// A turn is running or queued.
    Running,
    /// A turn is paused until a human decides one or more approvals.
    WaitingApproval,
    /// A turn is paused because a budget is spent, until it is raised,
    /// overridden or its period rolls over.
    WaitingBudget,
    /// Terminated: the log is kept, new input is refused.
    Terminated,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Idle => "idle",
            SessionStatus::Running => "running",
            SessionStatus::WaitingApproval => "waiting_approval",
            SessionStatus::WaitingBudget => "waiting_budget",
            SessionStatus::Terminated => "terminated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "idle" => Some(SessionStatus::Idle),
            "running" => Some(SessionStatus::Running),
            "waiting_approval" => Some(SessionStatus::WaitingApproval),
            "waiting_budget" => Some(SessionStatus::WaitingBudget),
            "terminated" => Some(SessionStatus::Terminated),
            _ => None,
        }
    }
}

/// A session's state, folded from its log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionSummary {
    pub id: SessionId,
    /// The tenant the session belongs to.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    pub agent: String,
    pub agent_version: u32,
    pub status: SessionStatus,
    pub metadata: Value,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Turns submitted so far.
    pub turn_count: u32,
    /// Tokens used by every model call of the session.
    pub usage: Usage,
    /// The turn being executed, if any.
    pub running_turn: Option<TurnId>,
    /// Turns accepted and not yet started.
    pub queued_turns: u32,
    /// Approvals of the running turn not decided yet.
    #[serde(default)]
    pub pending_approvals: u32,
    /// What the session has spent, as counted for budgets.
    #[serde(default)]
    pub spend: Spend,
    /// The budget the running turn is paused on, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_exceeded: Option<BudgetBreach>,
    /// The agents that lent the session out, the first lender first; empty
    /// when `agent` holds it for good.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lenders: Vec<String>,
    /// The workspace snapshot the session's next sandbox starts from, on
    /// whichever node it runs (several nodes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<SavedWorkspace>,
    /// Seq of the last event.
    pub last_seq: u64,
}

/// The latest saved snapshot of a session's workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedWorkspace {
    pub generation: u64,
    /// Its key in the workspace store.
    pub object: String,
}

fn default_tenant() -> String {
    crate::tenant::DEFAULT_TENANT.to_owned()
}

impl SessionSummary {
    /// Starts the fold from a `session.created` event.
    pub fn from_created(event: &Event) -> Option<Self> {
        let EventData::SessionCreated { agent, agent_version, metadata, tenant } = &event.body.data else {
            return None;
        };
        Some(SessionSummary {
            id: event.body.session_id.clone(),
            tenant: tenant.clone(),
            agent: agent.clone(),
            agent_version: *agent_version,
            status: SessionStatus::Idle,
            metadata: metadata.clone(),
            created_ms: event.body.ts,
            updated_ms: event.body.ts,
            turn_count: 0,
            usage: Usage::default(),
            running_turn: None,
            queued_turns: 0,
            pending_approvals: 0,
            spend: Spend::default(),
            budget_exceeded: None,
            lenders: vec![],
            workspace: None,
            last_seq: event.body.seq,
        })
    }

    /// Applies one more event of this session.
    pub fn apply(&mut self, event: &Event) {
        self.last_seq = event.body.seq;
        self.updated_ms = event.body.ts;
        match &event.body.data {
            EventData::SessionTerminated { .. } => self.status = SessionStatus::Terminated,
            EventData::TurnSubmitted { .. } => {
                self.turn_count += 1;
                self.queued_turns += 1;
            }
            EventData::TurnStarted { turn_id, agent_version, .. } => {
                self.queued_turns = self.queued_turns.saturating_sub(1);
                self.running_turn = Some(turn_id.clone());
                self.agent_version = *agent_version;
            }
            EventData::ModelCompleted { usage, .. } => self.usage.add(*usage),
            EventData::ApprovalRequested { .. } => self.pending_approvals += 1,
            EventData::ApprovalDecided { .. } => self.pending_approvals = self.pending_approvals.saturating_sub(1),
            EventData::BudgetExceeded { breach, .. } => self.budget_exceeded = Some(breach.clone()),
            EventData::BudgetResumed { .. } => self.budget_exceeded = None,
            EventData::HandoffCompleted { to_agent, to_version, .. } => {
                self.agent = to_agent.clone();
                self.agent_version = *to_version;
            }
            EventData::BorrowStarted { lender, borrower, borrower_version, .. } => {
                self.lenders.push(lender.clone());
                self.agent = borrower.clone();
                self.agent_version = *borrower_version;
            }
            EventData::BorrowCompleted { lender, lender_version, .. } => {
                self.lenders.pop();
                self.agent = lender.clone();
                self.agent_version = *lender_version;
            }
            EventData::WorkspaceSaved(saved) => {
                self.workspace = Some(SavedWorkspace { generation: saved.generation, object: saved.object.clone() });
            }
            EventData::TurnCompleted { turn_id, .. } | EventData::TurnFailed { turn_id, .. } | EventData::TurnCancelled { turn_id, .. } => {
                if self.running_turn.as_ref() == Some(turn_id) {
                    self.running_turn = None;
                    self.pending_approvals = 0;
                    self.budget_exceeded = None;
                } else {
                    self.queued_turns = self.queued_turns.saturating_sub(1);
                }
            }
            _ => {}
        }
        self.spend.add(Spend::of(&event.body.data));
        if self.status != SessionStatus::Terminated {
            self.status = if self.pending_approvals > 0 {
                SessionStatus::WaitingApproval
            } else if self.budget_exceeded.is_some() {
                SessionStatus::WaitingBudget
            } else if self.running_turn.is_some() || self.queued_turns > 0 {
                SessionStatus::Running
            } else {
                SessionStatus::Idle
            };
        }
    }
}

/// Lifecycle of a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl TurnStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TurnStatus::Queued => "queued",
            TurnStatus::Running => "running",
            TurnStatus::Completed => "completed",
            TurnStatus::Failed => "failed",
            TurnStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "queued" => Some(TurnStatus::Queued),
            "running" => Some(TurnStatus::Running),
            "completed" => Some(TurnStatus::Completed),
            "failed" => Some(TurnStatus::Failed),
            "cancelled" => Some(TurnStatus::Cancelled),
            _ => None,
        }
    }

    /// Whether the turn has ended.
    pub fn is_final(self) -> bool {
        matches!(self, TurnStatus::Completed | TurnStatus::Failed | TurnStatus::Cancelled)
    }
}

/// Why a turn failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TurnError {
    pub code: String,
    pub message: String,
}

/// A turn's state, folded from the events that carry its id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TurnSummary {
    pub turn_id: TurnId,
    pub session_id: SessionId,
    pub status: TurnStatus,
    pub input: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// W3C trace context of the turn's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<TurnError>,
    pub usage: Usage,
    /// Model and tool calls completed so far.
    pub steps: u32,
    pub cancel_requested: bool,
    /// Approvals of this turn not decided yet; the turn is paused while > 0.
    #[serde(default)]
    pub pending_approvals: u32,
    /// What the turn has spent, as counted for budgets.
    #[serde(default)]
    pub spend: Spend,
    /// The budget the turn is paused on, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_exceeded: Option<BudgetBreach>,
    /// Budgets an operator let this turn go past (`*`: every budget).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budget_overrides: Vec<String>,
    /// The loan the turn runs as, when a client lent the session out for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub borrow: Option<crate::event::BorrowTerms>,
    /// Seq of the `turn.submitted` event; orders the queue.
    pub submitted_seq: u64,
    pub created_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<i64>,
}

impl TurnSummary {
    /// Starts the fold from a `turn.submitted` event.
    pub fn from_submitted(event: &Event) -> Option<Self> {
        let EventData::TurnSubmitted { turn_id, input, idempotency_key, traceparent, borrow } = &event.body.data else {
            return None;
        };
        Some(TurnSummary {
            turn_id: turn_id.clone(),
            session_id: event.body.session_id.clone(),
            status: TurnStatus::Queued,
            input: input.clone(),
            idempotency_key: idempotency_key.clone(),
            traceparent: traceparent.clone(),
            output: None,
            error: None,
            usage: Usage::default(),
            steps: 0,
            cancel_requested: false,
            pending_approvals: 0,
            spend: Spend::default(),
            budget_exceeded: None,
            budget_overrides: Vec::new(),
            borrow: borrow.clone(),
            submitted_seq: event.body.seq,
            created_ms: event.body.ts,
            started_ms: None,
            ended_ms: None,
        })
    }

    /// Whether an operator let this turn go past `budget`.
    pub fn overrides(&self, budget: &crate::ids::BudgetId) -> bool {
        self.budget_overrides.iter().any(|b| b == "*" || b == budget.as_str())
    }

    /// Applies one more event of this turn.
    pub fn apply(&mut self, event: &Event) {
        let ts = event.body.ts;
        match &event.body.data {
            EventData::TurnStarted { .. } => {
                self.status = TurnStatus::Running;
                self.started_ms = Some(ts);
            }
            EventData::TurnCancelRequested { .. } => self.cancel_requested = true,
            EventData::ModelCompleted { usage, .. } => {
                self.usage.add(*usage);
                self.steps += 1;
            }
            EventData::ModelFailed { .. } | EventData::ToolCompleted { .. } => self.steps += 1,
            EventData::ApprovalRequested { .. } => self.pending_approvals += 1,
            EventData::ApprovalDecided { .. } => self.pending_approvals = self.pending_approvals.saturating_sub(1),
            EventData::BudgetExceeded { breach, .. } => self.budget_exceeded = Some(breach.clone()),
            EventData::BudgetResumed { .. } => self.budget_exceeded = None,
            EventData::BudgetOverridden { budget_id, .. } => {
                self.budget_overrides.push(budget_id.as_ref().map_or_else(|| "*".to_owned(), |b| b.to_string()))
            }
            EventData::TurnCompleted { output, .. } => {
                self.status = TurnStatus::Completed;
                self.output = Some(output.clone());
                self.ended_ms = Some(ts);
            }
            EventData::TurnFailed { code, message, .. } => {
                self.status = TurnStatus::Failed;
                self.error = Some(TurnError { code: code.clone(), message: message.clone() });
                self.ended_ms = Some(ts);
            }
            EventData::TurnCancelled { reason, .. } => {
                self.status = TurnStatus::Cancelled;
                self.error = Some(TurnError { code: "cancelled".into(), message: reason.clone() });
                self.ended_ms = Some(ts);
            }
            _ => {}
        }
        self.spend.add(Spend::of(&event.body.data));
        if self.status.is_final() {
            self.pending_approvals = 0;
            self.budget_exceeded = None;
        }
    }
}
