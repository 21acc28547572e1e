//! Rebuilding what the agent loop needs from the log: the conversation to
//! send to the model, and where an unfinished turn stands.

use agentrt_types::event::ApprovalDecision;
use agentrt_types::{ApprovalId, Event, EventData, Message, Outcome, ToolCall, TurnId};
use serde_json::Value;

/// Text the model sees for a call whose outcome is unknown.
pub const UNKNOWN_OUTCOME: &str =
    "outcome unknown: the runtime stopped while this call was in flight and it is not safe to repeat; it may or may not have taken effect";

/// The conversation as of the events seen so far.
#[derive(Default)]
pub struct Conversation {
    /// Shared with in-flight model requests; copied only if one is alive
    /// when a message is added.
    pub messages: std::sync::Arc<Vec<Message>>,
    inputs: std::collections::HashMap<TurnId, String>,
    /// While the session is lent out: each lender's conversation, the first
    /// lender's first. A borrower sees its lender's conversation up to the
    /// call that lent the session, then its sub-task; the lender sees only
    /// the result.
    lenders: Vec<std::sync::Arc<Vec<Message>>>,
}

impl Conversation {
    /// Adds one event's contribution.
    pub fn apply(&mut self, event: &Event) {
        match &event.body.data {
            EventData::TurnSubmitted { turn_id, input, .. } => {
                self.inputs.insert(turn_id.clone(), input.clone());
            }
            EventData::TurnStarted { turn_id, .. } => {
                if let Some(input) = self.inputs.remove(turn_id) {
                    std::sync::Arc::make_mut(&mut self.messages).push(Message::User { content: input });
                }
            }
            EventData::BorrowStarted { call_id, input, .. } => {
                let lender = std::sync::Arc::clone(&self.messages);
                let mut view = match call_id {
                    // Up to the lender's answer that asked for the loan: its calls have no results in this view.
                    Some(id) => {
                        let asked = lender
                            .iter()
                            .rposition(|m| matches!(m, Message::Assistant { tool_calls, .. } if tool_calls.iter().any(|c| &c.id == id)));
                        let mut view = lender[..asked.unwrap_or(lender.len())].to_vec();
                        view.push(Message::User { content: input.clone() });
                        view
                    }
                    // A client's loan: the turn's input, already the last message, is the sub-task.
                    None => lender.to_vec(),
                };
                view.shrink_to_fit();
                self.lenders.push(lender);
                self.messages = std::sync::Arc::new(view);
            }
            EventData::BorrowCompleted { call_id, output, .. } => {
                if let Some(lender) = self.lenders.pop() {
                    self.messages = lender;
                }
                // A client's loan: the lender sees the answer the client got.
                if let (None, Some(output)) = (call_id, output) {
                    std::sync::Arc::make_mut(&mut self.messages)
                        .push(Message::Assistant { content: Some(output.clone()), tool_calls: vec![] });
                }
            }
            EventData::ModelCompleted { content, tool_calls, .. } => std::sync::Arc::make_mut(&mut self.messages)
                .push(Message::Assistant { content: content.clone(), tool_calls: tool_calls.clone() }),
            EventData::ToolCompleted { call_id, tool, outcome, output, .. } => {
                std::sync::Arc::make_mut(&mut self.messages).push(Message::Tool {
                    tool_call_id: call_id.clone(),
                    name: tool.clone(),
                    content: tool_content(*outcome, output),
                    is_error: *outcome != Outcome::Ok,
                })
            }
            _ => {}
        }
    }
}

/// A tool call's identity for the loop guard: its name and canonical arguments.
fn call_key(call: &ToolCall) -> (String, String) {
    (call.name.clone(), canonical(&call.arguments))
}

/// JSON text with object keys sorted, so argument order does not matter.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let inner: Vec<String> = entries.iter().map(|(k, v)| format!("{}:{}", Value::String((*k).clone()), canonical(v))).collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(canonical).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// What the model is shown for a tool result.
pub fn tool_content(outcome: Outcome, output: &Value) -> String {
    match (outcome, output) {
        (Outcome::Unknown, _) => UNKNOWN_OUTCOME.to_owned(),
        (_, Value::String(s)) => s.clone(),
        (_, v) => v.to_string(),
    }
}

/// A tool call journaled as intent.
#[derive(Clone, Debug)]
pub struct OpenToolCall {
    pub step: u32,
    pub call: ToolCall,
    pub idempotent: bool,
    pub idempotency_key: String,
}

/// A tool call held for a human's approval: no intent is journaled until
/// it is approved, so it can never have run.
#[derive(Clone, Debug)]
pub struct GatedCall {
    pub approval_id: ApprovalId,
    pub step: u32,
    pub call: ToolCall,
    pub expires_ms: Option<i64>,
    /// The decision, once made: how, by whom, with what comment.
    pub decision: Option<(ApprovalDecision, String, Option<String>)>,
}

/// A loan of the session open in a turn.
#[derive(Clone, Debug)]
pub struct OpenBorrow {
    /// The lender's `agents.borrow` call; `None` for a client's loan.
    pub call_id: Option<String>,
    pub lender: String,
    pub lender_version: u32,
    pub borrower: String,
    pub started_ms: i64,
    /// The borrower's steps are numbered from here on.
    pub first_step: u32,
    /// Steps done in the turn when the loan started.
    pub steps_before: u32,
    pub max_steps: Option<u32>,
    pub deadline_ms: Option<i64>,
}

/// Where one turn stands, from its events.
#[derive(Default, Debug)]
pub struct TurnProgress {
    /// Highest step number used.
    pub last_step: u32,
    /// Steps completed (model and tool calls with a result).
    pub steps_done: u32,
    /// A model call with an intent and no result.
    pub open_model: Option<u32>,
    /// Tool calls with an intent and no result, in request order.
    pub open_tools: Vec<OpenToolCall>,
    pub usage: agentrt_types::Usage,
    pub cancel_requested: bool,
    pub started_ms: Option<i64>,
    pub ended: bool,
    /// Calls waiting for (or just given) a human's decision.
    pub gated: Vec<GatedCall>,
    /// Whether a budget paused the turn (until `budget.resumed`).
    pub budget_paused: bool,
    /// Tool calls a budget held back; they get their intent on resume.
    pub held: Vec<agentrt_types::budget::HeldCall>,
    /// Since when the turn has been paused (approvals undecided or a
    /// budget spent), if it is.
    pub waiting_since: Option<i64>,
    /// Time spent paused before `waiting_since`; it does not count against
    /// the turn's time limit.
    pub waited_ms: i64,
    /// How often the model asked for each `(tool, arguments)` in this turn.
    pub call_counts: std::collections::HashMap<(String, String), u32>,
    /// Model answers in a row that asked only for calls already made.
    pub no_progress_streak: u32,
    /// Loans of the session open in this turn, the first one first.
    pub borrows: Vec<OpenBorrow>,
    /// Whether a client's loan of this turn has started.
    pub client_loan_started: bool,
    /// Whether the turn's last event paused it (an approval asked for, a
    /// budget spent) rather than recorded work: a borrower stopped there
    /// was waiting, not interrupted.
    pub stopped_waiting: bool,
}

impl TurnProgress {
    /// Applies an event of this turn.
    pub fn apply(&mut self, event: &Event) {
        let was_paused = self.paused();
        self.fold(event);
        match (was_paused, self.paused(), self.waiting_since) {
            (false, true, _) => self.waiting_since = Some(event.body.ts),
            (true, false, Some(since)) => {
                self.waited_ms += event.body.ts - since;
                self.waiting_since = None;
            }
            _ => {}
        }
    }

    /// Whether the turn waits for a human or a budget.
    fn paused(&self) -> bool {
        self.budget_paused || self.undecided() > 0
    }

    fn fold(&mut self, event: &Event) {
        self.stopped_waiting = matches!(
            event.body.data,
            EventData::ApprovalRequested { .. }
                | EventData::BudgetExceeded { .. }
                | EventData::ApprovalDecided { .. }
                | EventData::BudgetResumed { .. }
        ) || (self.stopped_waiting && matches!(event.body.data, EventData::TurnResumed { .. }));
        match &event.body.data {
            EventData::TurnStarted { .. } => self.started_ms = Some(event.body.ts),
            EventData::TurnCancelRequested { .. } => self.cancel_requested = true,
            EventData::ModelRequested { step, .. } => {
                self.last_step = self.last_step.max(*step);
                self.open_model = Some(*step);
            }
            EventData::ModelCompleted { usage, tool_calls, .. } => {
                self.open_model = None;
                self.steps_done += 1;
                self.usage.add(*usage);
                self.count_calls(tool_calls);
            }
            EventData::ModelFailed { .. } => {
                self.open_model = None;
                self.steps_done += 1;
            }
            EventData::ToolRequested { step, call_id, tool, arguments, idempotent, idempotency_key, .. } => {
                self.last_step = self.last_step.max(*step);
                self.gated.retain(|g| &g.call.id != call_id);
                self.held.retain(|h| &h.call.id != call_id);
                self.open_tools.push(OpenToolCall {
                    step: *step,
                    call: ToolCall { id: call_id.clone(), name: tool.clone(), arguments: arguments.clone() },
                    idempotent: *idempotent,
                    idempotency_key: idempotency_key.clone(),
                });
            }
            EventData::ToolCompleted { step, call_id, .. } => {
                // A call refused by policy has a result and no intent.
                self.last_step = self.last_step.max(*step);
                self.open_tools.retain(|t| &t.call.id != call_id);
                self.gated.retain(|g| &g.call.id != call_id);
                self.held.retain(|h| &h.call.id != call_id);
                self.steps_done += 1;
            }
            EventData::ApprovalRequested { approval_id, step, call_id, tool, arguments, expires_ms, .. } => {
                self.last_step = self.last_step.max(*step);
                self.gated.push(GatedCall {
                    approval_id: approval_id.clone(),
                    step: *step,
                    call: ToolCall { id: call_id.clone(), name: tool.clone(), arguments: arguments.clone() },
                    expires_ms: *expires_ms,
                    decision: None,
                });
            }
            EventData::ApprovalDecided { approval_id, decision, approver, comment, .. } => {
                if let Some(g) = self.gated.iter_mut().find(|g| &g.approval_id == approval_id) {
                    g.decision = Some((*decision, approver.clone(), comment.clone()));
                }
            }
            EventData::BudgetExceeded { held, .. } => {
                self.budget_paused = true;
                for h in held {
                    self.last_step = self.last_step.max(h.step);
                    self.held.push(h.clone());
                }
            }
            EventData::BudgetResumed { .. } => self.budget_paused = false,
            EventData::BorrowStarted { call_id, lender, lender_version, borrower, max_steps, deadline_ms, .. } => {
                self.client_loan_started |= call_id.is_none();
                self.borrows.push(OpenBorrow {
                    call_id: call_id.clone(),
                    lender: lender.clone(),
                    lender_version: *lender_version,
                    borrower: borrower.clone(),
                    started_ms: event.body.ts,
                    first_step: self.last_step + 1,
                    steps_before: self.steps_done,
                    max_steps: *max_steps,
                    deadline_ms: *deadline_ms,
                });
            }
            EventData::BorrowCompleted { .. } => {
                self.borrows.pop();
            }
            d if d.ends_turn() => self.ended = true,
            _ => {}
        }
    }

    /// Counts the tool calls of one model answer for the loop guard.
    pub fn count_calls(&mut self, calls: &[ToolCall]) {
        let mut repeats_only = !calls.is_empty();
        for call in calls {
            let n = self.call_counts.entry(call_key(call)).or_insert(0);
            repeats_only &= *n > 0;
            *n += 1;
        }
        self.no_progress_streak = if repeats_only { self.no_progress_streak + 1 } else { 0 };
    }

    /// Why the turn is looping, if these calls of the next model answer
    /// cross a limit (0 = off).
    pub fn loop_detected(&self, calls: &[ToolCall], max_repeats: u32, max_no_progress: u32) -> Option<String> {
        let mut after =
            TurnProgress { call_counts: self.call_counts.clone(), no_progress_streak: self.no_progress_streak, ..Default::default() };
        after.count_calls(calls);
        if max_repeats > 0 {
            if let Some(call) = calls.iter().find(|c| after.call_counts[&call_key(c)] > max_repeats) {
                return Some(format!(
                    "loop detected: the model asked for {} with the same arguments more than {max_repeats} times in this turn (limits.max_repeated_tool_calls)",
                    call.name
                ));
            }
        }
        if max_no_progress > 0 && after.no_progress_streak >= max_no_progress {
            return Some(format!(
                "loop detected: {max_no_progress} model calls in a row asked only for tool calls already made in this turn (limits.max_model_calls_without_progress)"
            ));
        }
        None
    }

    /// Renames calls of a model answer (at `step`) whose ids are taken by
    /// a call still open in the turn, or by an earlier call of the answer:
    /// a borrower's model knows nothing of its lender's open call, and some
    /// models number their calls.
    pub fn make_ids_unique(&self, calls: &mut [ToolCall], step: u32) {
        let mut taken: Vec<String> = self.open_tools.iter().map(|t| t.call.id.clone()).collect();
        for (i, call) in calls.iter_mut().enumerate() {
            if taken.contains(&call.id) {
                call.id = format!("{}~{step}.{i}", call.id);
            }
            taken.push(call.id.clone());
        }
    }

    /// Whether the call lent the session out and waits for it to come back.
    pub fn is_lending(&self, call_id: &str) -> bool {
        self.borrows.iter().any(|b| b.call_id.as_deref() == Some(call_id))
    }

    /// Approvals not decided yet.
    pub fn undecided(&self) -> usize {
        self.gated.iter().filter(|g| g.decision.is_none()).count()
    }

    /// Milliseconds spent waiting for approvals up to `now`.
    pub fn waited_ms(&self, now: i64) -> i64 {
        self.waited_ms + self.waiting_since.map_or(0, |since| (now - since).max(0))
    }
}
