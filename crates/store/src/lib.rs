//! Storage for agentrt: one [`Store`] trait over agents, sessions, the
//! append-only session log, turn and session folds, leases with fencing
//! tokens and the session key-value store; one [`StoreError`]. One SQL
//! implementation ([`sql::SqlStore`]) runs on the embedded SQLite backend
//! ([`sqlite::SqliteStore`]) or on PostgreSQL ([`postgres`]).

pub mod postgres;
pub mod sql;
pub mod sqlite;
mod types;

use agentrt_types::event::StoredRecord;
use agentrt_types::{
    AgentSpec, ApprovalId, Budget, BudgetBreach, BudgetId, BudgetPeriod, Event, KeyId, SessionId, SessionSummary, Spend, TurnId,
    TurnSummary,
};
use async_trait::async_trait;
use serde_json::Value;

pub use types::*;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session {0} not found")]
    SessionNotFound(SessionId),
    #[error("session {0} is terminated")]
    SessionTerminated(SessionId),
    /// The writer's fencing token is no longer the session's: another
    /// executor took the lease. The writer must stop.
    #[error("stale fencing token {token} for session {session} (current {current})")]
    StaleFence { session: SessionId, token: u64, current: u64 },
    /// An append's precondition did not hold; nothing was written.
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// A turn with this idempotency key already exists.
    #[error("idempotency key already used by turn {0}")]
    DuplicateIdempotencyKey(TurnId),
    /// The store's schema is newer than this build understands.
    #[error("store schema version {found} is newer than this build supports ({supported}); upgrade agentrt")]
    SchemaTooNew { found: i64, supported: i64 },
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(String),
    /// A budget refuses the model or tool call the append starts; nothing
    /// was written.
    #[error("{0}")]
    BudgetExceeded(Box<agentrt_types::BudgetBreach>),
    /// A named object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The object already exists.
    #[error("{0}")]
    Conflict(String),
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
}

/// The storage interface every backend implements.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Registers a new immutable version of a tenant's agent.
    async fn put_agent(&self, tenant: &str, name: &str, spec: &AgentSpec) -> Result<AgentVersion, StoreError>;
    /// One version of a tenant's agent, or its latest when `version` is `None`.
    async fn get_agent(&self, tenant: &str, name: &str, version: Option<u32>) -> Result<Option<AgentVersion>, StoreError>;
    /// Every agent of a tenant with its latest version number.
    async fn list_agents(&self, tenant: &str) -> Result<Vec<AgentInfo>, StoreError>;

    /// Creates a session and appends its `session.created` event.
    async fn create_session(&self, new: NewSession) -> Result<(SessionSummary, Event), StoreError>;
    async fn get_session(&self, id: &SessionId) -> Result<Option<SessionSummary>, StoreError>;
    /// Sessions newest first, filtered, after the cursor.
    async fn list_sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionSummary>, StoreError>;

    /// How many sessions have each status.
    async fn count_sessions_by_status(&self) -> Result<Vec<(agentrt_types::SessionStatus, u64)>, StoreError>;

    /// Appends events atomically, after checking the fence and precondition.
    async fn append(&self, request: AppendRequest) -> Result<Vec<Event>, StoreError>;
    /// Passes control of the session to another agent and moves its fencing
    /// token on, atomically; returns the appended events and the new token.
    async fn transfer(&self, request: TransferRequest) -> Result<(Vec<Event>, u64), StoreError>;
    /// Events with `seq > after`, in order, at most `limit`.
    async fn read_events(&self, id: &SessionId, after: u64, limit: usize) -> Result<Vec<Event>, StoreError>;
    /// Raw stored records of a session, for chain verification.
    async fn read_records(&self, id: &SessionId) -> Result<Vec<StoredRecord>, StoreError>;

    async fn get_turn(&self, session: &SessionId, turn: &TurnId) -> Result<Option<TurnSummary>, StoreError>;
    /// The turn submitted with this idempotency key, if any.
    async fn find_turn_by_key(&self, session: &SessionId, key: &str) -> Result<Option<TurnSummary>, StoreError>;
    /// Turns of a session that have not ended, oldest first.
    async fn unfinished_turns(&self, session: &SessionId) -> Result<Vec<TurnSummary>, StoreError>;
    /// Sessions that have at least one turn that has not ended.
    async fn sessions_with_unfinished_turns(&self) -> Result<Vec<SessionId>, StoreError>;
    /// Sessions with a turn to run (not waiting for a human or a budget)
    /// that no node holds: no lease, or one expired before `now_ms`; at
    /// most `limit`, oldest id first.
    async fn claimable_sessions(&self, now_ms: i64, limit: usize) -> Result<Vec<SessionId>, StoreError>;
    /// Appends committed by other nodes' writers, as they commit; `None`
    /// when no other node can write (SQLite). Call once.
    fn remote_appends(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<RemoteAppend>> {
        None
    }

    /// Takes the session's lease for `holder` if it is free, expired or
    /// `force` is set; returns the new fencing token, or `None` if another
    /// holder has it.
    async fn acquire_lease(&self, session: &SessionId, holder: &str, ttl_ms: i64, force: bool) -> Result<Option<u64>, StoreError>;
    /// Records that `node` is alive at `now_ms` (registering it, from
    /// `started_ms`, the first time); answers its row, drain flag included.
    async fn node_heartbeat(&self, node: &str, started_ms: i64, now_ms: i64) -> Result<NodeInfo, StoreError>;
    /// Every node that ever heartbeat, with the live leases it holds at `now_ms`.
    async fn list_nodes(&self, now_ms: i64) -> Result<Vec<NodeInfo>, StoreError>;
    /// Sets a node's drain flag; `None` if there is no such node.
    async fn set_node_draining(&self, node: &str, draining: bool, now_ms: i64) -> Result<Option<NodeInfo>, StoreError>;
    /// Gives the lease up if `holder` still has it with `token`.
    async fn release_lease(&self, session: &SessionId, holder: &str, token: u64) -> Result<(), StoreError>;
    /// Extends every lease `holder` has; returns how many.
    async fn renew_leases(&self, holder: &str, ttl_ms: i64) -> Result<u64, StoreError>;

    async fn kv_get(&self, session: &SessionId, key: &str) -> Result<Option<Value>, StoreError>;
    async fn kv_set(&self, session: &SessionId, key: &str, value: &Value) -> Result<(), StoreError>;

    // ----- identity and governance -----

    /// Creates a tenant; `Conflict` if the name is taken.
    async fn create_tenant(&self, name: &str) -> Result<Tenant, StoreError>;
    async fn get_tenant(&self, name: &str) -> Result<Option<Tenant>, StoreError>;
    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError>;
    /// Sets a tenant's limits; `None` if there is no such tenant.
    async fn set_tenant_limits(&self, name: &str, tool_calls_per_second: Option<f64>) -> Result<Option<Tenant>, StoreError>;
    /// Stores a key with the hash of its secret; `NotFound` if the tenant is missing.
    async fn create_api_key(&self, key: &ApiKey, hash: &str) -> Result<(), StoreError>;
    /// The key whose secret hashes to `hash` (revoked keys included).
    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>, StoreError>;
    async fn list_api_keys(&self, tenant: &str) -> Result<Vec<ApiKey>, StoreError>;
    /// Keys not revoked, over every tenant.
    async fn count_active_api_keys(&self) -> Result<u64, StoreError>;
    /// Revokes a tenant's key; `None` if the tenant has no such key.
    async fn revoke_api_key(&self, tenant: &str, id: &KeyId) -> Result<Option<ApiKey>, StoreError>;
    /// Stores the next version of a tenant's policies.
    async fn put_policies(&self, tenant: &str, text: &str, schema: Option<&str>, by: &str) -> Result<PolicyVersion, StoreError>;
    /// One version of a tenant's policies, or the latest.
    async fn get_policies(&self, tenant: &str, version: Option<u32>) -> Result<Option<PolicyVersion>, StoreError>;
    async fn get_approval(&self, id: &ApprovalId) -> Result<Option<Approval>, StoreError>;
    async fn list_approvals(&self, filter: &ApprovalFilter) -> Result<Vec<Approval>, StoreError>;
    /// Records one model call made through the gateway.
    async fn record_usage(&self, record: &UsageRecord) -> Result<(), StoreError>;
    /// Usage totals, grouped.
    async fn usage_summary(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError>;
    /// Stores a new budget.
    async fn create_budget(&self, budget: &Budget) -> Result<(), StoreError>;
    async fn get_budget(&self, id: &BudgetId) -> Result<Option<Budget>, StoreError>;
    /// A tenant's budgets, oldest first.
    async fn list_budgets(&self, tenant: &str) -> Result<Vec<Budget>, StoreError>;
    /// Sets a tenant's budget's limit; `None` if the tenant has no such budget.
    async fn set_budget_limit(&self, tenant: &str, id: &BudgetId, limit: f64, by: &str) -> Result<Option<Budget>, StoreError>;
    /// Deletes a tenant's budget; `None` if the tenant has no such budget.
    async fn delete_budget(&self, tenant: &str, id: &BudgetId) -> Result<Option<Budget>, StoreError>;
    /// What the tenant (or one agent of it) spent in the current day or month.
    async fn period_spend(&self, tenant: &str, agent: Option<&str>, period: BudgetPeriod) -> Result<Spend, StoreError>;
    /// The budget that refuses a gateway call by the session (or, without
    /// one, by the tenant's API key) now, if any.
    async fn gateway_breach(&self, tenant: &str, session: Option<&SessionId>) -> Result<Option<BudgetBreach>, StoreError>;
    /// A node-wide setting, initialised to `init` by the first caller.
    async fn setting_or_init(&self, key: &str, init: &str) -> Result<String, StoreError>;
}
