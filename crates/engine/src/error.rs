//! The engine's error type.

use agentrt_store::StoreError;
use agentrt_types::spec::SpecError;
use agentrt_types::{SessionId, TurnId};

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("agent {0:?} not found")]
    AgentNotFound(String),
    #[error("agent {0:?} has no version {1}")]
    AgentVersionNotFound(String, u32),
    #[error("invalid agent name {0:?}: use 1-64 lowercase letters, digits, '-' or '_'")]
    InvalidAgentName(String),
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
    #[error("session {0} not found")]
    SessionNotFound(SessionId),
    #[error("turn {0} not found")]
    TurnNotFound(TurnId),
    #[error("session {0} is terminated; create a new session")]
    SessionTerminated(SessionId),
    #[error("session {0} is busy with another turn; retry later or use on_busy \"queue\" or \"interrupt\"")]
    SessionBusy(SessionId),
    #[error("turn {0} has already ended ({1})")]
    TurnFinished(TurnId, &'static str),
    #[error("input is {got} bytes; the limit is {limit} bytes")]
    InputTooLarge { limit: usize, got: usize },
    #[error("{0}")]
    InvalidInput(String),
    /// No or bad credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// The principal may not do this.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A policy set that does not parse or validate (Cedar's message).
    #[error("{0}")]
    InvalidPolicy(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::SessionNotFound(id) => EngineError::SessionNotFound(id),
            StoreError::SessionTerminated(id) => EngineError::SessionTerminated(id),
            other => EngineError::Store(other),
        }
    }
}
