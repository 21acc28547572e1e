//! Borrow inside the loop: an agent (through `agents.borrow`) or a client
//! (a turn submitted with `borrow`) lends the session to another agent for
//! one sub-task. Control passes both ways in a store transaction that moves
//! the fencing token on (see `crate::handover::transfer`), so the session
//! always has exactly one agent in control:
//!
//! - the loan: `borrow.started` + `lease.transferred`; the borrower runs
//!   the turn with its own instructions and tools, on a view of the
//!   conversation that ends with its sub-task;
//! - the return, when the borrower answers, fails, runs out of its steps or
//!   time, or the runtime stopped while it worked: the borrower's open calls
//!   closed, `borrow.completed`, the lender's call result (or, for a
//!   client's loan, the turn's end) + `lease.transferred`.
//!
//! Loans nest (a borrower may lend the session on); the chain is recorded
//! in every `borrow.started`.

use agentrt_store::{Precondition, StoreError, TransferRequest};
use agentrt_types::event::{BorrowStatus, BorrowTerms};
use agentrt_types::time::now_ms;
use agentrt_types::{EventData, NewEvent, Outcome};
use serde_json::json;

use super::{Abort, TurnRun};
use crate::handover::transfer;
use crate::history::{OpenBorrow, OpenToolCall};

/// Loans within loans, at most.
pub const MAX_BORROW_DEPTH: usize = 8;

/// How a loan ends, as the lender learns it.
pub(super) struct LoanEnd {
    pub status: BorrowStatus,
    pub output: Option<String>,
    pub error: Option<String>,
}

impl LoanEnd {
    pub fn failed(status: BorrowStatus, error: impl Into<String>) -> Self {
        LoanEnd { status, output: None, error: Some(error.into()) }
    }
}

impl TurnRun {
    /// Carries out the first borrow call of a batch (the others are
    /// refused); `carry` are results not yet appended. Answers what is left
    /// to append: nothing once the session is lent, the results with an
    /// error for the call otherwise.
    pub(super) async fn lend(&mut self, calls: &[OpenToolCall], mut carry: Vec<NewEvent>) -> Result<Vec<NewEvent>, Abort> {
        let (call, rest) = calls.split_first().expect("at least one borrow call");
        for extra in rest {
            let error = json!({"error": "one borrow per step: only the first one was carried out"});
            carry.push(self.completed(extra, Outcome::Error, error, 0, 0));
        }
        let args = &call.call.arguments;
        let terms = BorrowTerms {
            agent: args["agent"].as_str().unwrap_or_default().to_owned(),
            max_steps: args["max_steps"].as_u64().map(|n| n.min(u32::MAX as u64) as u32),
            timeout_seconds: args["timeout_seconds"].as_u64(),
        };
        let input = args["input"].as_str().unwrap_or_default().to_owned();
        let allowed = &self.agent().version.spec.agents.borrow;
        let refusal = if !allowed.contains(&terms.agent) {
            Some(format!("this agent may lend the session only to: {}", allowed.join(", ")))
        } else if self.chain().contains(&terms.agent) {
            Some(format!("agent {:?} already takes part in this loan ({})", terms.agent, self.chain().join(" → ")))
        } else if self.progress.borrows.len() >= MAX_BORROW_DEPTH {
            Some(format!("loans nest at most {MAX_BORROW_DEPTH} deep"))
        } else if input.trim().is_empty() {
            Some("input must say what the sub-task is".to_owned())
        } else {
            None
        };
        if let Some(why) = refusal {
            carry.push(self.completed(call, Outcome::Error, json!({"error": why}), 0, 0));
            return Ok(carry);
        }
        match self.open_loan(Some(&call.call.id), terms, input, carry.clone()).await? {
            Ok(()) => Ok(vec![]),
            Err(why) => {
                carry.push(self.completed(call, Outcome::Error, json!({"error": why}), 0, 1));
                Ok(carry)
            }
        }
    }

    /// Opens a client's loan at the start of its turn; a loan that cannot
    /// be made fails the turn.
    pub(super) async fn lend_for_client(&mut self, terms: BorrowTerms) -> Result<(), Abort> {
        let input = self.turn.input.clone();
        if let Err(why) = self.open_loan(None, terms, input, vec![]).await? {
            self.fail(vec![], "borrow_refused", &why).await?;
        }
        Ok(())
    }

    /// The agents from the first lender to the one in control.
    fn chain(&self) -> Vec<String> {
        let mut chain: Vec<String> = self.progress.borrows.iter().map(|b| b.lender.clone()).collect();
        chain.push(self.agent_name.clone());
        chain
    }

    /// Lends the session: `before`, `borrow.started` and the lease in one
    /// transaction; the borrower is in control after. `Ok(Err)` says why
    /// the loan could not be made.
    async fn open_loan(
        &mut self,
        call_id: Option<&str>,
        terms: BorrowTerms,
        input: String,
        before: Vec<NewEvent>,
    ) -> Result<Result<(), String>, Abort> {
        let borrower = match self.inner.store.get_agent(&self.tenant, &terms.agent, None).await? {
            Some(v) => v,
            None => return Ok(Err(format!("agent {:?} not found", terms.agent))),
        };
        let mut chain = self.chain();
        chain.push(terms.agent.clone());
        let mut events = before;
        events.push(
            EventData::BorrowStarted {
                turn_id: self.turn.turn_id.clone(),
                call_id: call_id.map(str::to_owned),
                lender: self.agent_name.clone(),
                lender_version: self.agent().version.version,
                borrower: terms.agent.clone(),
                borrower_version: borrower.version,
                input,
                chain,
                max_steps: terms.max_steps,
                deadline_ms: terms
                    .timeout_seconds
                    .map(|s| now_ms().saturating_add((s.min(crate::handover::MAX_LOAN_SECONDS) * 1000) as i64)),
            }
            .into(),
        );
        let from = self.agent_name.clone();
        if let Err(why) = self.pass_control(Precondition::AgentIs(from), &terms.agent, events).await? {
            return Ok(Err(why));
        }
        let lender = self.progress.borrows.last().map(|b| b.lender.clone()).unwrap_or_default();
        tracing::info!(%lender, borrower = %terms.agent, "session lent");
        self.open_loan_span(&terms.agent, &lender);
        if let Err(why) = self.switch_agent(&terms.agent, borrower.version).await {
            // The loan is on record: end it the same way, so the lender learns why.
            self.give_back(LoanEnd::failed(BorrowStatus::Failed, why), vec![]).await?;
        }
        Ok(Ok(()))
    }

    /// Gives the session back to the lender of the innermost loan, with
    /// `end` as the result of the lender's call (or, for a client's loan,
    /// as the end of the turn). `carry` are the borrower's events not yet
    /// appended (e.g. its final answer).
    pub(super) async fn give_back(&mut self, end: LoanEnd, carry: Vec<NewEvent>) -> Result<(), Abort> {
        let loan = self.progress.borrows.last().cloned().expect("a loan is open");
        let why = end.error.clone().unwrap_or_default();
        let unknown = end.status == BorrowStatus::Interrupted;
        let mut events = self.close_from(carry, loan.first_step, &why, unknown);
        let (usage, steps) = self.totals(&events);
        events.push(self.loan_completed(&loan, &end, steps));
        match &loan.call_id {
            Some(_) => events.push(self.loan_result(&loan, &end, steps)),
            None => {
                let turn_id = self.turn.turn_id.clone();
                match (&end.status, end.output.clone()) {
                    (BorrowStatus::Completed, Some(output)) => {
                        events.push(EventData::Message { turn_id: turn_id.clone(), content: output.clone() }.into());
                        events.push(EventData::TurnCompleted { turn_id, output, usage, steps }.into());
                    }
                    (status, _) => {
                        let code = format!("borrow_{}", status.as_str());
                        events.push(EventData::TurnFailed { turn_id, code, message: why.clone(), usage, steps }.into());
                    }
                }
            }
        }
        let from = self.agent_name.clone();
        match self.pass_control(Precondition::AgentIs(from.clone()), &loan.lender, events).await? {
            Ok(()) => {}
            // Only an executor holding the current token gets here, and a
            // borrowed session cannot be handed over: the store is inconsistent.
            Err(why) => return Err(Abort::Store(StoreError::Corrupt(why))),
        }
        tracing::info!(lender = %loan.lender, borrower = %from, status = end.status.as_str(), "session given back");
        if let Some(span) = self.loan_spans.pop() {
            span.record("agentrt.borrow.status", end.status.as_str());
        }
        if let Err(why) = self.switch_agent(&loan.lender, loan.lender_version).await {
            self.fail(vec![], "agent_unavailable", &why).await?;
        }
        Ok(())
    }

    /// Closes every open loan of a turn that ends (`events` end it): each
    /// loan's open calls, its `borrow.completed` with `status`, and the
    /// lender's call result, innermost first, so that each lender's
    /// conversation stays well formed.
    pub(super) fn unwind(&self, mut events: Vec<NewEvent>, why: &str, status: BorrowStatus) -> Vec<NewEvent> {
        let end = LoanEnd::failed(status, why);
        for loan in self.progress.borrows.iter().rev() {
            events = self.close_from(events, loan.first_step, why, false);
            let (_, steps) = self.totals(&events);
            events.push(self.loan_completed(loan, &end, steps));
            if loan.call_id.is_some() {
                events.push(self.loan_result(loan, &end, steps));
            }
        }
        events
    }

    /// Appends the events that end a turn; if the session is lent, in the
    /// transaction that gives it back to the first lender.
    pub(super) async fn append_end(&mut self, events: Vec<NewEvent>) -> Result<(), Abort> {
        let Some(first) = self.progress.borrows.first().cloned() else {
            return self.append(events).await;
        };
        let from = self.agent_name.clone();
        if let Err(why) = self.pass_control(Precondition::AgentIs(from), &first.lender, events).await? {
            return Err(Abort::Store(StoreError::Corrupt(why)));
        }
        self.agent_name = first.lender;
        Ok(())
    }

    /// Why the innermost loan is over, if it is: its time or steps are used.
    pub(super) fn loan_over(&self, carried_steps: u32) -> Option<LoanEnd> {
        let loan = self.progress.borrows.last()?;
        if loan.deadline_ms.is_some_and(|at| now_ms() >= at) {
            let secs = (loan.deadline_ms.unwrap_or(0) - loan.started_ms + 500) / 1000;
            return Some(LoanEnd::failed(BorrowStatus::TimedOut, format!("agent {:?} ran out of time ({secs} s)", loan.borrower)));
        }
        let used = self.progress.steps_done + carried_steps - loan.steps_before;
        // The borrower's own step limit applies to its part of the turn.
        let own = self.agent().version.spec.limits.max_steps;
        match loan.max_steps.map_or(own, |m| m.min(own)) {
            max if used >= max => {
                Some(LoanEnd::failed(BorrowStatus::OutOfSteps, format!("agent {:?} used its {max} steps without an answer", loan.borrower)))
            }
            _ => None,
        }
    }

    /// When the innermost loan's time is up, if it has a limit.
    pub(super) fn loan_deadline_ms(&self) -> Option<i64> {
        self.progress.borrows.last().and_then(|b| b.deadline_ms)
    }

    /// Whether the turn was loaded with a borrower at work (not waiting for
    /// a human or a budget): the runtime stopped under it.
    pub(super) fn loan_interrupted(&self) -> Option<LoanEnd> {
        let loan = self.progress.borrows.last()?;
        if self.progress.stopped_waiting {
            return None;
        }
        Some(LoanEnd::failed(
            BorrowStatus::Interrupted,
            format!(
                "the runtime stopped while agent {:?} worked on the sub-task; calls it had in flight have an unknown outcome",
                loan.borrower
            ),
        ))
    }

    fn loan_completed(&self, loan: &OpenBorrow, end: &LoanEnd, steps: u32) -> NewEvent {
        EventData::BorrowCompleted {
            turn_id: self.turn.turn_id.clone(),
            call_id: loan.call_id.clone(),
            lender: loan.lender.clone(),
            lender_version: loan.lender_version,
            borrower: loan.borrower.clone(),
            status: end.status,
            steps: steps - loan.steps_before,
            output: end.output.clone(),
            error: end.error.clone(),
        }
        .into()
    }

    /// The result of the lender's `agents.borrow` call.
    fn loan_result(&self, loan: &OpenBorrow, end: &LoanEnd, steps: u32) -> NewEvent {
        let call_id = loan.call_id.as_deref().unwrap_or_default();
        let call = self.progress.open_tools.iter().find(|t| t.call.id == call_id).cloned().unwrap_or_else(|| OpenToolCall {
            step: loan.first_step.saturating_sub(1),
            call: agentrt_types::ToolCall {
                id: call_id.to_owned(),
                name: agentrt_types::spec::BORROW_TOOL.to_owned(),
                arguments: json!({}),
            },
            idempotent: true,
            idempotency_key: String::new(),
        });
        let mut output = json!({"agent": loan.borrower, "status": end.status.as_str(), "steps": steps - loan.steps_before});
        let outcome = match (&end.output, &end.error) {
            (Some(text), _) if end.status == BorrowStatus::Completed => {
                output["output"] = json!(text);
                Outcome::Ok
            }
            (_, error) => {
                output["error"] = json!(error);
                Outcome::Error
            }
        };
        let latency_us = ((now_ms() - loan.started_ms).max(0) as u64) * 1000;
        self.completed(&call, outcome, output, latency_us, 1)
    }

    /// Opens the span of `borrower`'s part of the turn, under the lender's.
    pub(super) fn open_loan_span(&mut self, borrower: &str, lender: &str) {
        let span = self.in_loan_span(|| crate::telemetry::loan_span(borrower, lender));
        self.loan_spans.push(span);
    }

    /// Makes a span as a child of the innermost loan's span (or of the
    /// turn's, when the session is not lent).
    pub(super) fn in_loan_span(&self, make: impl FnOnce() -> tracing::Span) -> tracing::Span {
        let _entered = self.loan_spans.last().map(|s| s.enter());
        make()
    }

    /// Passes control to `to` with `events` and takes the new token.
    async fn pass_control(&mut self, precondition: Precondition, to: &str, events: Vec<NewEvent>) -> Result<Result<(), String>, Abort> {
        let request = TransferRequest {
            session_id: self.session.clone(),
            fence: self.fence.clone(),
            precondition,
            from_agent: self.agent_name.clone(),
            to_agent: to.to_owned(),
            turn_id: Some(self.turn.turn_id.clone()),
            events,
        };
        Ok(self.took_control(transfer(&self.inner, request).await)?.map(drop))
    }
}
