//! The `agents.handover` tool inside the loop: its result and the handover
//! are appended in one transaction (see `crate::handover`), then the turn
//! goes on with the new agent, the executor holding the new fencing token.

use agentrt_store::{Fence, StoreError};
use agentrt_types::{Event, EventData, NewEvent, Outcome};
use serde_json::json;

use super::{load_agent, Abort, TurnRun};
use crate::handover::{hand_over, Handover};
use crate::history::OpenToolCall;
use crate::EngineError;

impl TurnRun {
    /// Carries out the first handover call of a batch (the others are
    /// refused); `carry` are results not yet appended. Answers what is left
    /// to append: nothing after a handover, the results with an error for
    /// the call otherwise.
    pub(super) async fn hand_over(&mut self, calls: &[OpenToolCall], mut carry: Vec<NewEvent>) -> Result<Vec<NewEvent>, Abort> {
        let (call, rest) = calls.split_first().expect("at least one handover call");
        for extra in rest {
            let error = json!({"error": "one handover per step: only the first one was carried out"});
            carry.push(self.completed(extra, Outcome::Error, error, 0, 0));
        }
        let to = call.call.arguments["agent"].as_str().unwrap_or_default().to_owned();
        let allowed = &self.agent().version.spec.agents.handover;
        if !allowed.contains(&to) {
            let error = json!({"error": format!("this agent may hand over only to: {}", allowed.join(", "))});
            carry.push(self.completed(call, Outcome::Error, error, 0, 0));
            return Ok(carry);
        }
        let from = self.agent_name.clone();
        let mut before = carry.clone();
        before.push(self.completed(call, Outcome::Ok, json!({"handed_over_to": to}), 0, 1));
        let handover = Handover {
            session: &self.session,
            tenant: &self.tenant,
            fence: self.fence.clone(),
            from_agent: &from,
            from_version: self.agent().version.version,
            to_agent: &to,
            turn_id: Some(self.turn.turn_id.clone()),
            by: agentrt_types::tenant::session_principal(&from, &self.session),
            reason: call.call.arguments["reason"].as_str().map(str::to_owned),
            before,
        };
        let events = match self.took_control(hand_over(&self.inner, handover).await)? {
            Ok(events) => events,
            Err(why) => {
                carry.push(self.completed(call, Outcome::Error, json!({"error": why}), 0, 1));
                return Ok(carry);
            }
        };
        let version = events.iter().find_map(|e| match &e.body.data {
            EventData::HandoffCompleted { to_version, .. } => Some(*to_version),
            _ => None,
        });
        tracing::info!(from, to, "session handed over");
        if let Err(message) = self.switch_agent(&to, version.unwrap_or(1)).await {
            self.fail(vec![], "agent_unavailable", &message).await?;
        }
        Ok(vec![])
    }

    /// The outcome of a change of control (a handover, a loan, a loan's
    /// return) for the loop: once it is done, its events are observed and
    /// the executor writes with the new token; a stale token or a store
    /// failure aborts the turn; any other refusal says why, for the agent.
    pub(super) fn took_control(&mut self, done: Result<(Vec<Event>, u64), EngineError>) -> Result<Result<Vec<Event>, String>, Abort> {
        let (events, token) = match done {
            Ok(done) => done,
            Err(EngineError::Store(StoreError::StaleFence { .. })) => return Err(Abort::Fenced),
            Err(EngineError::Store(e)) => return Err(Abort::Store(e)),
            Err(e) => return Ok(Err(e.to_string())),
        };
        for e in &events {
            self.observe(e);
        }
        if let Fence::Lease { holder, .. } = &self.fence {
            self.fence = Fence::Lease { holder: holder.clone(), token };
        }
        Ok(Ok(events))
    }

    /// Runs the rest of the turn as `name`, or says why that version
    /// cannot be loaded (the name changes either way: it is in control).
    pub(super) async fn switch_agent(&mut self, name: &str, version: u32) -> Result<(), String> {
        self.agent_name = name.to_owned();
        self.agent = Some(load_agent(&self.inner, &self.tenant, name, version).await?);
        Ok(())
    }
}
