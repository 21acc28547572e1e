//! Budgets in the turn: every append that starts a model or tool call is
//! checked by the store in the same transaction. When a budget refuses it,
//! the turn pauses instead of failing: tool calls are held (their intent is
//! journaled once the budget allows), `budget.exceeded` says which budget
//! and by how much, and the turn waits until a budget is raised, removed or
//! overridden, or its period rolls over.

use agentrt_store::StoreError;
use agentrt_types::budget::HeldCall;
use agentrt_types::{BudgetBreach, EventData, NewEvent, ToolCall};

use super::{Abort, TurnEnd, TurnRun};

impl TurnRun {
    /// Appends `events`; if they start calls and a budget refuses them,
    /// appends the rest with the calls held instead and returns the breach.
    pub(super) async fn append_checked(&mut self, events: Vec<NewEvent>) -> Result<Option<BudgetBreach>, Abort> {
        let starts = events.iter().any(|e| matches!(e.data, EventData::ModelRequested { .. } | EventData::ToolRequested { .. }));
        if !starts {
            self.append(events).await?;
            return Ok(None);
        }
        let mut attempt = Vec::with_capacity(events.len() + 1);
        if self.progress.budget_paused {
            attempt.push(EventData::BudgetResumed { turn_id: self.turn.turn_id.clone() }.into());
        }
        attempt.extend(events.iter().cloned());
        let breach = match self.append(attempt).await {
            Ok(()) => return Ok(None),
            Err(Abort::Store(StoreError::BudgetExceeded(b))) => *b,
            Err(e) => return Err(e),
        };
        let mut kept = Vec::with_capacity(events.len() + 1);
        let mut held = Vec::new();
        for e in events {
            match e.data {
                EventData::ToolRequested { step, call_id, tool, arguments, .. } => {
                    if !self.progress.held.iter().any(|h| h.call.id == call_id) {
                        held.push(HeldCall { step, call: ToolCall { id: call_id, name: tool, arguments } });
                    }
                }
                EventData::ModelRequested { .. } => {}
                _ => kept.push(e),
            }
        }
        if !held.is_empty() || !self.progress.budget_paused {
            tracing::info!(budget = %breach.budget_id, held = held.len(), "{breach}; turn paused");
            kept.push(EventData::BudgetExceeded { turn_id: self.turn.turn_id.clone(), breach: breach.clone(), held }.into());
        }
        self.append(kept).await?;
        Ok(Some(breach))
    }

    /// Intents for the calls a budget held back.
    pub(super) fn held_intents(&self) -> Vec<NewEvent> {
        self.progress.held.iter().map(|h| self.requested(h.step, &h.call)).collect()
    }

    /// How a turn paused by `breach` waits: until its period rolls over or
    /// an approval expires, whichever comes first, or until woken.
    pub(super) fn budget_wait(&self, breach: &BudgetBreach) -> TurnEnd {
        let wake_at_ms = match (breach.resets_ms, self.next_expiry()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        TurnEnd::Waiting { wake_at_ms }
    }
}
