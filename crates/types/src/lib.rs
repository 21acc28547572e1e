//! Domain types shared by every agentrt crate: ids, agent specs, the
//! session event schema, conversation messages and the folds that derive a
//! session's state from its log. This crate does no I/O.

pub mod budget;
pub mod event;
pub mod ids;
pub mod message;
pub mod sandbox;
pub mod spec;
pub mod state;
pub mod tenant;
pub mod time;

pub use budget::{Budget, BudgetBreach, BudgetMetric, BudgetPeriod, BudgetScope, Spend};
pub use event::{Event, EventData, NewEvent, Outcome, Usage, EVENT_SCHEMA_VERSION};
pub use ids::{ApprovalId, BudgetId, KeyId, SessionId, TurnId};
pub use message::{Message, ToolCall, ToolDef};
pub use spec::{AgentSpec, SpecError};
pub use state::{SessionStatus, SessionSummary, TurnStatus, TurnSummary};
pub use tenant::{Principal, Role, DEFAULT_TENANT};
