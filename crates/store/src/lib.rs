//! Storage for agentrt: one [`Store`] trait over agents, sessions, the
//! append-only session log, turn and session folds, leases with fencing
//! tokens and the session key-value store; one [`StoreError`]. The embedded
//! implementation is [`sqlite::SqliteStore`].

pub mod sqlite;
mod types;

use agentrt_types::event::StoredRecord;
use agentrt_types::{AgentSpec, Event, SessionId, SessionSummary, TurnId, TurnSummary};
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
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
}

/// The storage interface every backend implements.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Registers a new immutable version of an agent.
    async fn put_agent(&self, name: &str, spec: &AgentSpec) -> Result<AgentVersion, StoreError>;
    /// One version of an agent, or its latest when `version` is `None`.
    async fn get_agent(&self, name: &str, version: Option<u32>) -> Result<Option<AgentVersion>, StoreError>;
    /// Every agent with its latest version number.
    async fn list_agents(&self) -> Result<Vec<AgentInfo>, StoreError>;

    /// Creates a session and appends its `session.created` event.
    async fn create_session(&self, new: NewSession) -> Result<(SessionSummary, Event), StoreError>;
    async fn get_session(&self, id: &SessionId) -> Result<Option<SessionSummary>, StoreError>;
    /// Sessions newest first, filtered, after the cursor.
    async fn list_sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionSummary>, StoreError>;

    /// How many sessions have each status.
    async fn count_sessions_by_status(&self) -> Result<Vec<(agentrt_types::SessionStatus, u64)>, StoreError>;

    /// Appends events atomically, after checking the fence and precondition.
    async fn append(&self, request: AppendRequest) -> Result<Vec<Event>, StoreError>;
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

    /// Takes the session's lease for `holder` if it is free, expired or
    /// `force` is set; returns the new fencing token, or `None` if another
    /// holder has it.
    async fn acquire_lease(&self, session: &SessionId, holder: &str, ttl_ms: i64, force: bool) -> Result<Option<u64>, StoreError>;
    /// Gives the lease up if `holder` still has it with `token`.
    async fn release_lease(&self, session: &SessionId, holder: &str, token: u64) -> Result<(), StoreError>;
    /// Extends every lease `holder` has; returns how many.
    async fn renew_leases(&self, holder: &str, ttl_ms: i64) -> Result<u64, StoreError>;

    async fn kv_get(&self, session: &SessionId, key: &str) -> Result<Option<Value>, StoreError>;
    async fn kv_set(&self, session: &SessionId, key: &str, value: &Value) -> Result<(), StoreError>;
}
