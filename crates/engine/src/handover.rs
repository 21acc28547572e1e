//! Handover: a session passes from one agent to another for good. The
//! store appends `handoff.completed` and `lease.transferred` and moves the
//! session's fencing token on in one transaction, so the session is never
//! without a holder, and a write of the old holder (an executor still
//! running the old agent's step) fails: it steps back, and the turn goes on
//! under the new agent from the log. The conversation, workspace and sandbox
//! stay with the session; the new agent's instructions and tools apply from
//! its first step.
//!
//! A client hands over through the API; an agent through the
//! `agents.handover` tool, whose result is part of the same transaction.
//! Loans of a session (borrow) pass control the same way; see
//! `crate::turn::borrow`.

use agentrt_store::{Fence, Precondition, StoreError, TransferRequest};
use agentrt_types::event::BorrowTerms;
use agentrt_types::{Event, EventData, Principal, SessionId, SessionSummary, TurnId};

use crate::{executor, Engine, EngineError, Inner};

/// Longest loan a client may ask for.
pub const MAX_LOAN_SECONDS: u64 = 86_400;

/// Who hands a session over, to whom.
pub(crate) struct Handover<'a> {
    pub session: &'a SessionId,
    pub tenant: &'a str,
    pub fence: Fence,
    pub from_agent: &'a str,
    pub from_version: u32,
    pub to_agent: &'a str,
    pub turn_id: Option<TurnId>,
    pub by: String,
    pub reason: Option<String>,
    pub before: Vec<agentrt_types::NewEvent>,
}

/// Carries a handover out; answers the appended events and the new token.
/// `Conflict` if the session is no longer run by `from_agent`, `NotFound`
/// if there is no such agent.
pub(crate) async fn hand_over(inner: &Inner, h: Handover<'_>) -> Result<(Vec<Event>, u64), EngineError> {
    if h.from_agent == h.to_agent {
        return Err(EngineError::InvalidInput(format!("the session is already run by agent {:?}", h.to_agent)));
    }
    let target = inner
        .store
        .get_agent(h.tenant, h.to_agent, None)
        .await?
        .ok_or_else(|| EngineError::NotFound(format!("agent {:?} not found", h.to_agent)))?;
    let mut events = h.before;
    events.push(
        EventData::HandoffCompleted {
            turn_id: h.turn_id.clone(),
            from_agent: h.from_agent.to_owned(),
            from_version: h.from_version,
            to_agent: h.to_agent.to_owned(),
            to_version: target.version,
            by: h.by,
            reason: h.reason,
        }
        .into(),
    );
    let request = TransferRequest {
        session_id: h.session.clone(),
        fence: h.fence,
        precondition: Precondition::Owns(h.from_agent.to_owned()),
        from_agent: h.from_agent.to_owned(),
        to_agent: h.to_agent.to_owned(),
        turn_id: h.turn_id,
        events,
    };
    transfer(inner, request).await
}

/// Passes control of a session (see [`TransferRequest`]) and publishes
/// the events; a failed precondition is a `Conflict`.
pub(crate) async fn transfer(inner: &Inner, request: TransferRequest) -> Result<(Vec<Event>, u64), EngineError> {
    let (session, agent) = (request.session_id.clone(), request.from_agent.clone());
    let (events, token) = inner.store.transfer(request).await.map_err(|e| match e {
        StoreError::PreconditionFailed(m) => EngineError::Conflict(m),
        other => other.into(),
    })?;
    inner.metrics.observe(&events, &agent, "");
    inner.hub.publish(&session, &events);
    Ok((events, token))
}

impl Engine {
    /// Hands a session over to another agent of its tenant. With `from`,
    /// only if that agent still runs the session (so that of two racing
    /// handovers, one wins and the other gets `Conflict`). A turn that is
    /// running goes on under the new agent.
    pub async fn hand_over(
        &self,
        by: &Principal,
        id: &SessionId,
        to: &str,
        from: Option<&str>,
        reason: Option<String>,
    ) -> Result<SessionSummary, EngineError> {
        let session = self.get_session(id).await?;
        if session.tenant != by.tenant() {
            return Err(EngineError::SessionNotFound(id.clone()));
        }
        let handover = Handover {
            session: id,
            tenant: &session.tenant,
            fence: Fence::Client,
            from_agent: from.unwrap_or(&session.agent),
            from_version: session.agent_version,
            to_agent: to,
            turn_id: None,
            by: by.display(),
            reason,
            before: vec![],
        };
        hand_over(&self.inner, handover).await?;
        // An executor running the old agent's step is fenced off at its next
        // write; make sure one picks the turn up again.
        executor::ensure_running(&self.inner, id);
        self.get_session(id).await
    }
}

impl Engine {
    /// Checks the terms of a client's loan before its turn is accepted.
    pub(crate) async fn check_loan(&self, tenant: &str, terms: &BorrowTerms) -> Result<(), EngineError> {
        if self.inner.store.get_agent(tenant, &terms.agent, None).await?.is_none() {
            return Err(EngineError::InvalidInput(format!("borrow.agent: there is no agent {:?}", terms.agent)));
        }
        if terms.max_steps == Some(0) {
            return Err(EngineError::InvalidInput("borrow.max_steps must be at least 1 (leave it out for the agent's own limit)".into()));
        }
        if terms.timeout_seconds.is_some_and(|s| s == 0 || s > MAX_LOAN_SECONDS) {
            return Err(EngineError::InvalidInput(format!("borrow.timeout_seconds must be 1 to {MAX_LOAN_SECONDS}")));
        }
        Ok(())
    }
}
