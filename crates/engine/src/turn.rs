//! The durable agent loop of one turn.
//!
//! The loop is driven by the turn's own log: every model and tool call is
//! appended as intent before it runs and as result after, and where the turn
//! stands is always derived from those events ([`TurnProgress`]). A fresh
//! turn and a turn resumed after a crash take the same path: open tool
//! intents are re-run if idempotent (same idempotency key) or resolved as
//! `outcome: unknown`; an open model intent is re-run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentrt_model::{ModelError, ModelRequest, ModelResponse};
use agentrt_store::{AppendRequest, Fence, Precondition, StoreError};
use agentrt_tools::{ToolContext, ToolError};
use agentrt_types::event::BorrowStatus;
use agentrt_types::time::now_ms;
use agentrt_types::{Event, EventData, NewEvent, Outcome, SessionId, SessionSummary, TurnStatus, TurnSummary};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::agents::LoadedAgent;
use crate::executor::Slot;
use crate::history::{Conversation, OpenToolCall, TurnProgress};
use crate::{telemetry, Inner};

mod borrow;
mod budget;
mod gate;
mod handover;

/// Largest tool output kept in the log, in bytes of JSON.
pub const MAX_TOOL_OUTPUT: usize = 64 * 1024;
/// Attempts for a model call that fails transiently.
const MODEL_ATTEMPTS: u32 = 3;
/// Events read per page when loading a session's history.
const PAGE: usize = 2000;

/// Why a turn stopped without ending.
pub(crate) enum Abort {
    /// Another executor holds the lease now.
    Fenced,
    /// The node is shutting down; the turn resumes at the next start.
    Shutdown,
    Store(StoreError),
}

impl From<StoreError> for Abort {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::StaleFence { .. } => Abort::Fenced,
            other => Abort::Store(other),
        }
    }
}

/// How a turn run stopped without an abort.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TurnEnd {
    /// The turn ended (or there was nothing to run).
    Ended,
    /// The turn is paused until a human decides its approvals; it should be
    /// looked at again when one is decided or at `wake_at_ms` (an expiry).
    Waiting { wake_at_ms: Option<i64> },
}

/// Runs one turn to its end, until it waits for approval, or until aborted.
/// `fence` is the executor's; a handover during the turn moves it on.
pub(crate) async fn run(inner: &Arc<Inner>, id: &SessionId, fence: &mut Fence, slot: &Slot, turn: TurnSummary) -> Result<TurnEnd, Abort> {
    let session = inner.store.get_session(id).await?.ok_or_else(|| Abort::Store(StoreError::SessionNotFound(id.clone())))?;
    // The turn's span: every log line written while it runs carries its
    // session, turn and trace ids; model and tool spans are its children.
    let span = telemetry::turn_span(id.as_str(), turn.turn_id.as_str(), &session.agent, session.agent_version, turn.traceparent.as_deref());
    run_turn(inner, id, fence, slot, turn, session).instrument(span).await
}

async fn run_turn(
    inner: &Arc<Inner>,
    id: &SessionId,
    fence: &mut Fence,
    slot: &Slot,
    turn: TurnSummary,
    session: SessionSummary,
) -> Result<TurnEnd, Abort> {
    let turn_id = turn.turn_id.clone();
    let cancel = slot.register(&turn_id);
    let result = TurnRun::start(inner, id, fence, cancel, turn, session).await;
    let result = match result {
        Ok(Some(mut run)) => {
            let r = run.drive().await;
            *fence = run.fence.clone();
            if r.as_ref().is_ok_and(|end| *end == TurnEnd::Ended) {
                let p = &run.progress;
                tracing::info!(
                    steps = p.steps_done,
                    input_tokens = p.usage.input_tokens,
                    output_tokens = p.usage.output_tokens,
                    "turn ended"
                );
            }
            r
        }
        Ok(None) => Ok(TurnEnd::Ended),
        Err(e) => Err(e),
    };
    slot.unregister(&turn_id);
    result
}

struct TurnRun {
    inner: Arc<Inner>,
    session: SessionId,
    fence: Fence,
    turn: TurnSummary,
    cancel: CancellationToken,
    conversation: Conversation,
    progress: TurnProgress,
    agent: Option<Arc<LoadedAgent>>,
    agent_name: String,
    tenant: String,
    /// The tenant's tool-call rate limit as of the turn's (re)start.
    tenant_rate: Option<f64>,
    /// The tenant's policies as of the turn's (re)start; `None`: no policies.
    policies: Option<Arc<crate::governance::Compiled>>,
    /// Tool intents that were open when the turn was loaded (crash recovery).
    recovering: bool,
    /// One span per open loan, the innermost last: a borrower's model and
    /// tool calls are traced under it.
    loan_spans: Vec<tracing::Span>,
}

impl TurnRun {
    /// Marks the turn started (or resumed) and loads its history.
    async fn start(
        inner: &Arc<Inner>,
        id: &SessionId,
        fence: &Fence,
        cancel: CancellationToken,
        turn: TurnSummary,
        session: SessionSummary,
    ) -> Result<Option<TurnRun>, Abort> {
        let executor = inner.config.node_id.clone();
        let turn_id = turn.turn_id.clone();
        let trace_id = turn.traceparent.as_deref().and_then(telemetry::trace_id_of);
        let first = match turn.status {
            TurnStatus::Queued if turn.cancel_requested => {
                let ev = EventData::TurnCancelled { turn_id: turn_id.clone(), reason: "cancelled before it started".into() };
                let pre = Precondition::TurnStatus(turn_id.clone(), TurnStatus::Queued);
                return match append_raw(inner, id, fence, Some(pre), vec![ev.into()], (&session.agent, "")).await {
                    Ok(_) | Err(Abort::Store(StoreError::PreconditionFailed(_))) => Ok(None),
                    Err(e) => Err(e),
                };
            }
            TurnStatus::Queued => {
                let ev = EventData::TurnStarted { turn_id: turn_id.clone(), agent_version: session.agent_version, executor, trace_id };
                (Some(Precondition::TurnStatus(turn_id.clone(), TurnStatus::Queued)), ev)
            }
            TurnStatus::Running => (
                Some(Precondition::TurnStatus(turn_id.clone(), TurnStatus::Running)),
                EventData::TurnResumed { turn_id: turn_id.clone(), executor, trace_id },
            ),
            _ => return Ok(None),
        };
        match append_raw(inner, id, fence, first.0, vec![first.1.into()], (&session.agent, "")).await {
            Ok(_) => {}
            Err(Abort::Store(StoreError::PreconditionFailed(_))) => return Ok(None),
            Err(e) => return Err(e),
        }
        let mut run = TurnRun {
            inner: inner.clone(),
            session: id.clone(),
            fence: fence.clone(),
            turn,
            cancel,
            conversation: Conversation::default(),
            progress: TurnProgress::default(),
            agent: None,
            agent_name: session.agent.clone(),
            tenant: session.tenant.clone(),
            policies: crate::governance::tenant_policies(inner, &session.tenant).await?,
            tenant_rate: inner.store.get_tenant(&session.tenant).await?.and_then(|t| t.tool_calls_per_second),
            recovering: false,
            loan_spans: Vec::new(),
        };
        let mut after = 0;
        loop {
            let page = inner.store.read_events(id, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.seq();
            for e in &page {
                run.observe(e);
            }
            if page.len() < PAGE {
                break;
            }
        }
        run.recovering = run.recovering_calls();
        for loan in run.progress.borrows.clone() {
            run.open_loan_span(&loan.borrower, &loan.lender);
        }
        run.agent = match load_agent(inner, &session.tenant, &session.agent, session.agent_version).await {
            Ok(a) => Some(a),
            Err(message) => {
                run.fail(vec![], "agent_unavailable", &message).await?;
                return Ok(None);
            }
        };
        Ok(Some(run))
    }

    /// Whether tool calls were left in flight (a lending call is not: it
    /// waits for its loan, not for a tool).
    fn recovering_calls(&self) -> bool {
        self.progress.open_tools.iter().any(|t| !self.progress.is_lending(&t.call.id))
    }

    fn observe(&mut self, e: &Event) {
        self.conversation.apply(e);
        if e.body.data.turn_id() == Some(&self.turn.turn_id) {
            self.progress.apply(e);
        }
    }

    fn agent(&self) -> &LoadedAgent {
        self.agent.as_deref().expect("agent is loaded before the loop runs")
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled() || self.progress.cancel_requested
    }

    /// When the turn's time is up, or the innermost loan's if sooner.
    fn deadline(&self) -> Instant {
        let started = self.progress.started_ms.unwrap_or_else(now_ms);
        let waited = self.progress.waited_ms(now_ms());
        let mut end_ms = started + waited + (self.agent().version.spec.limits.max_turn_seconds as i64) * 1000;
        if let Some(loan_end) = self.loan_deadline_ms() {
            end_ms = end_ms.min(loan_end);
        }
        Instant::now() + Duration::from_millis((end_ms - now_ms()).max(0) as u64)
    }

    /// Who answered the agent's model and what `usage` cost.
    fn billing(&self, usage: &agentrt_types::Usage) -> agentrt_types::event::Billing {
        let m = &self.agent().version.spec.model;
        let cost_usd = self.inner.config.prices.get(&m.model).map_or(0.0, |p| p.cost(usage));
        agentrt_types::event::Billing { provider: m.provider.clone(), model: m.model.clone(), cost_usd }
    }

    fn key(&self, step: u32) -> String {
        format!("{}:{}:{}", self.session, self.turn.turn_id, step)
    }

    async fn append(&mut self, events: Vec<NewEvent>) -> Result<(), Abort> {
        let model = self.agent.as_ref().map(|a| a.version.spec.model.model.clone()).unwrap_or_default();
        let labels = (self.agent_name.as_str(), model.as_str());
        let appended = append_raw(&self.inner, &self.session, &self.fence, None, events, labels).await?;
        for e in &appended {
            self.observe(e);
        }
        Ok(())
    }

    /// The loop: settled approvals, tools that are due, then the model,
    /// until the turn ends or waits for a human.
    async fn drive(&mut self) -> Result<TurnEnd, Abort> {
        let mut carry: Vec<NewEvent> = Vec::new();
        if let Some(end) = self.loan_interrupted() {
            self.give_back(end, vec![]).await?;
            self.recovering = self.recovering_calls();
        }
        if let (Some(terms), false) = (self.turn.borrow.clone(), self.progress.client_loan_started || self.progress.ended) {
            self.lend_for_client(terms).await?;
        }
        loop {
            if self.inner.shutdown.is_cancelled() {
                return Err(Abort::Shutdown);
            }
            if self.progress.ended {
                return Ok(TurnEnd::Ended);
            }
            if self.cancelled() {
                return self.end_cancelled(carry).await.map(|()| TurnEnd::Ended);
            }
            if self.loan_deadline_ms().is_some_and(|at| now_ms() >= at) {
                if let Some(end) = self.loan_over(0) {
                    self.give_back(end, std::mem::take(&mut carry)).await?;
                    continue;
                }
            }
            if Instant::now() >= self.deadline() {
                let secs = self.agent().version.spec.limits.max_turn_seconds;
                return self
                    .fail(carry, "max_turn_seconds", &format!("turn exceeded max_turn_seconds ({secs} s)"))
                    .await
                    .map(|()| TurnEnd::Ended);
            }
            let settled = self.settle_gated();
            if !settled.is_empty() {
                carry.extend(settled);
                if let Some(breach) = self.append_checked(std::mem::take(&mut carry)).await? {
                    return Ok(self.budget_wait(&breach));
                }
                continue;
            }
            if self.has_unrun_tools(&carry) {
                carry = self.run_tools(carry).await?;
                self.recovering = false;
                continue;
            }
            if !self.progress.held.is_empty() {
                carry.extend(self.held_intents());
                if let Some(breach) = self.append_checked(std::mem::take(&mut carry)).await? {
                    return Ok(self.budget_wait(&breach));
                }
                continue;
            }
            if self.progress.undecided() > 0 {
                self.append(std::mem::take(&mut carry)).await?;
                return Ok(TurnEnd::Waiting { wake_at_ms: self.next_expiry() });
            }
            let max_steps = self.agent().version.spec.limits.max_steps;
            let carried = carry.iter().filter(|e| matches!(e.data, EventData::ToolCompleted { .. })).count() as u32;
            if self.progress.open_model.is_none() {
                if let Some(end) = self.loan_over(carried) {
                    self.give_back(end, std::mem::take(&mut carry)).await?;
                    continue;
                }
            }
            if self.progress.borrows.is_empty() && self.progress.steps_done + carried >= max_steps {
                let why = format!("turn reached max_steps ({max_steps}) without a final answer");
                return self.fail(carry, "max_steps", &why).await.map(|()| TurnEnd::Ended);
            }
            let step = match self.progress.open_model {
                Some(step) => step,
                None => {
                    let step = self.progress.last_step + 1;
                    let agent = self.agent();
                    carry.push(
                        EventData::ModelRequested {
                            turn_id: self.turn.turn_id.clone(),
                            step,
                            provider: agent.version.spec.model.provider.clone(),
                            model: agent.version.spec.model.model.clone(),
                        }
                        .into(),
                    );
                    step
                }
            };
            if let Some(breach) = self.append_checked(std::mem::take(&mut carry)).await? {
                return Ok(self.budget_wait(&breach));
            }
            let started = Instant::now();
            let outcome = self.call_model(step).await?;
            let latency_us = started.elapsed().as_micros() as u64;
            let turn_id = self.turn.turn_id.clone();
            match outcome {
                ModelOutcome::Cancelled => continue,
                ModelOutcome::Deadline => continue,
                ModelOutcome::Failed(e) => {
                    let failed = EventData::ModelFailed { turn_id, step, error: e.to_string(), latency_us };
                    if !self.progress.borrows.is_empty() {
                        self.give_back(borrow::LoanEnd::failed(BorrowStatus::Failed, e.to_string()), vec![failed.into()]).await?;
                        continue;
                    }
                    return self.fail(vec![failed.into()], "model_error", &e.to_string()).await.map(|()| TurnEnd::Ended);
                }
                ModelOutcome::Answer(mut resp) => {
                    self.progress.make_ids_unique(&mut resp.tool_calls, step);
                    let final_answer = resp.tool_calls.is_empty();
                    let limits = &self.agent().version.spec.limits;
                    let looping = self.progress.loop_detected(
                        &resp.tool_calls,
                        limits.max_repeated_tool_calls,
                        limits.max_model_calls_without_progress,
                    );
                    let mut events: Vec<NewEvent> = vec![EventData::ModelCompleted {
                        turn_id: turn_id.clone(),
                        step,
                        content: resp.content.clone(),
                        tool_calls: resp.tool_calls.clone(),
                        usage: resp.usage,
                        latency_us,
                        billing: Some(resp.billing.clone().unwrap_or_else(|| self.billing(&resp.usage))),
                    }
                    .into()];
                    if let Some(why) = looping {
                        // Every requested call gets a result, so the conversation stays well formed.
                        for (i, call) in resp.tool_calls.iter().enumerate() {
                            events.push(self.refused(step + 1 + i as u32, call, format!("not run: {why}")));
                        }
                        if !self.progress.borrows.is_empty() {
                            self.give_back(borrow::LoanEnd::failed(BorrowStatus::Failed, why), events).await?;
                            continue;
                        }
                        return self.fail(events, "loop_detected", &why).await.map(|()| TurnEnd::Ended);
                    }
                    if final_answer && !self.progress.borrows.is_empty() {
                        let output = resp.content.clone().unwrap_or_default();
                        let end = borrow::LoanEnd { status: BorrowStatus::Completed, output: Some(output), error: None };
                        self.give_back(end, events).await?;
                        continue;
                    }
                    if final_answer {
                        let output = resp.content.unwrap_or_default();
                        let mut usage = self.progress.usage;
                        usage.add(resp.usage);
                        events.push(EventData::Message { turn_id: turn_id.clone(), content: output.clone() }.into());
                        record_usage(&tracing::Span::current(), usage);
                        events.push(EventData::TurnCompleted { turn_id, output, usage, steps: self.progress.steps_done + 1 }.into());
                    } else {
                        for (i, call) in resp.tool_calls.iter().enumerate() {
                            events.extend(self.gate(step + 1 + i as u32, call));
                        }
                    }
                    if let Some(breach) = self.append_checked(events).await? {
                        return Ok(self.budget_wait(&breach));
                    }
                    if final_answer {
                        return Ok(TurnEnd::Ended);
                    }
                }
            }
        }
    }

    async fn call_model(&self, step: u32) -> Result<ModelOutcome, Abort> {
        let agent = self.agent();
        let provider = match &agent.provider {
            Ok(p) => p.clone(),
            Err(msg) => return Ok(ModelOutcome::Failed(ModelError::Config(msg.clone()))),
        };
        let sandbox = self.inner.sandbox_for(&self.session, agent.version.spec.sandbox.as_ref());
        for (server, e) in agent.tools.discover(sandbox.as_ref()).await {
            tracing::warn!(server, error = %e, "MCP server unavailable; its tools are not offered this step");
        }
        let m = &agent.version.spec.model;
        let span = self.in_loan_span(|| telemetry::chat_span(&m.provider, &m.model, step));
        let request = ModelRequest {
            model: m.model.clone(),
            instructions: agent.version.spec.instructions.clone(),
            messages: self.conversation.messages.clone(),
            tools: agent.tools.defs(),
            temperature: m.temperature,
            max_tokens: m.max_tokens,
            stream: m.stream,
            idempotency_key: self.key(step),
            traceparent: telemetry::traceparent_of(&span),
        };
        let deadline = tokio::time::Instant::from_std(self.deadline());
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = tokio::select! {
                r = provider.complete(&request).instrument(span.clone()) => r,
                _ = self.cancel.cancelled() => return Ok(ModelOutcome::Cancelled),
                _ = tokio::time::sleep_until(deadline) => return Ok(ModelOutcome::Deadline),
                _ = self.inner.shutdown.cancelled() => return Err(Abort::Shutdown),
            };
            match result {
                Ok(resp) => {
                    span.record("gen_ai.usage.input_tokens", resp.usage.input_tokens as i64);
                    span.record("gen_ai.usage.output_tokens", resp.usage.output_tokens as i64);
                    if self.inner.config.capture_content {
                        span.record("gen_ai.output.messages", resp.content.as_deref().unwrap_or(""));
                    }
                    return Ok(ModelOutcome::Answer(resp));
                }
                Err(e) if e.is_transient() && attempt < MODEL_ATTEMPTS => {
                    tracing::warn!(session = %self.session, step, attempt, error = %e, "model call failed; retrying");
                    let backoff = Duration::from_millis(250 << (attempt - 1));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.cancel.cancelled() => return Ok(ModelOutcome::Cancelled),
                        _ = self.inner.shutdown.cancelled() => return Err(Abort::Shutdown),
                    }
                }
                Err(e) => {
                    span.record("error.type", "model_error");
                    span.record("otel.status_code", "ERROR");
                    return Ok(ModelOutcome::Failed(e));
                }
            }
        }
    }

    /// Runs the open tool calls in parallel. Each result is appended as it
    /// arrives, except the last, which is returned to travel with the next
    /// append (nothing happens in between, so it saves an fsync).
    async fn run_tools(&mut self, carry: Vec<NewEvent>) -> Result<Vec<NewEvent>, Abort> {
        if !carry.is_empty() {
            self.append(carry).await?;
        }
        let calls: Vec<OpenToolCall> = self.progress.open_tools.iter().filter(|t| !self.progress.is_lending(&t.call.id)).cloned().collect();
        let capture = self.inner.config.capture_content;
        let mut pending = FuturesUnordered::new();
        let mut immediate = Vec::new();
        // Carried out after the batch's other calls: they change who runs the session.
        let (mut handovers, mut loans) = (Vec::new(), Vec::new());
        for call in calls {
            if call.call.name == agentrt_types::spec::HANDOVER_TOOL {
                handovers.push(call);
                continue;
            }
            if call.call.name == agentrt_types::spec::BORROW_TOOL {
                loans.push(call);
                continue;
            }
            if self.recovering && !call.idempotent {
                immediate.push(self.completed(&call, Outcome::Unknown, json!({"error": crate::UNKNOWN_OUTCOME}), 0, 0));
                continue;
            }
            let span = self.in_loan_span(|| telemetry::tool_span(&call.call.name, &call.call.id, call.step, call.idempotent));
            if capture {
                span.record("gen_ai.tool.call.arguments", call.call.arguments.to_string());
            }
            let ctx = ToolContext {
                session_id: self.session.clone(),
                turn_id: self.turn.turn_id.clone(),
                step: call.step,
                idempotency_key: call.idempotency_key.clone(),
                store: self.inner.store.clone(),
                http: self.inner.http.clone(),
                traceparent: telemetry::traceparent_of(&span),
                sandbox: None,
            };
            let agent = self.agent.clone().expect("agent loaded");
            let ctx = ToolContext { sandbox: self.inner.sandbox_for(&self.session, agent.version.spec.sandbox.as_ref()), ..ctx };
            let (inner, tenant, tenant_rate) = (self.inner.clone(), self.tenant.clone(), self.tenant_rate);
            let (parent, turn_id, parent_trace) = (self.session.clone(), self.turn.turn_id.clone(), self.turn.traceparent.clone());
            pending.push(async move {
                let started = Instant::now();
                let wait = agent.router.rate_limit_wait();
                let delegated = call.call.name == agentrt_types::spec::DELEGATE_TOOL;
                let routed = match tenant_rate {
                    _ if delegated => {
                        let d = crate::delegate::Delegation {
                            tenant: &tenant,
                            parent: &parent,
                            turn: &turn_id,
                            call_id: &call.call.id,
                            key: &call.idempotency_key,
                            allowed: &agent.version.spec.agents.delegate,
                            // Without a tracer the call's span has no context: continue the turn's trace.
                            traceparent: ctx.traceparent.clone().or(parent_trace),
                        };
                        let result = crate::delegate::run(&inner, d, &call.call.arguments).instrument(span.clone()).await;
                        agentrt_tools::router::RoutedCall { result, attempts: 1, breaker_changes: vec![] }
                    }
                    Some(rate) if !inner.tenant_buckets.take(&tenant, rate, wait).await => agentrt_tools::router::RoutedCall {
                        result: Err(ToolError::RateLimited(format!("tenant {tenant}"), wait.as_millis() as u64)),
                        attempts: 0,
                        breaker_changes: vec![],
                    },
                    _ => agent.router.call(&agent.tools, &call.call.name, &ctx, call.call.arguments.clone()).instrument(span.clone()).await,
                };
                let r = routed.result;
                let cpu = match &ctx.sandbox {
                    Some(sandbox) if agent.tools.server_of(&call.call.name) == "sandbox" => Some(sandbox.take_cpu_usec().await),
                    _ => None,
                };
                match &r {
                    Ok(v) => {
                        span.record("agentrt.tool.outcome", "ok");
                        if capture {
                            span.record("gen_ai.tool.call.result", v.to_string());
                        }
                    }
                    Err(_) => {
                        span.record("agentrt.tool.outcome", "error");
                        span.record("error.type", "tool_error");
                        span.record("otel.status_code", "ERROR");
                    }
                }
                (call, r, started.elapsed().as_micros() as u64, routed.attempts, routed.breaker_changes, cpu)
            });
        }
        let deadline = tokio::time::Instant::from_std(self.deadline());
        let mut done: Vec<NewEvent> = immediate;
        while !pending.is_empty() {
            let next = tokio::select! {
                n = pending.next() => n,
                _ = self.cancel.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = self.inner.shutdown.cancelled() => return Err(Abort::Shutdown),
            };
            let Some((call, result, latency_us, attempts, breaker_changes, cpu)) = next else { break };
            let (outcome, output) = match result {
                Ok(v) => (Outcome::Ok, truncate(v)),
                Err(e) => (Outcome::Error, json!({"error": tool_error_text(&e)})),
            };
            for change in breaker_changes {
                let turn_id = self.turn.turn_id.clone();
                let (target, state, failures) = (change.target, change.state.as_str().to_owned(), change.failures);
                done.push(EventData::ToolBreaker { turn_id, target, state, failures }.into());
            }
            let mut completed = self.completed(&call, outcome, output, latency_us, attempts);
            if let EventData::ToolCompleted { sandbox_cpu_us, .. } = &mut completed.data {
                *sandbox_cpu_us = cpu;
            }
            done.push(completed);
            if !pending.is_empty() {
                self.append(std::mem::take(&mut done)).await?;
            }
        }
        if !pending.is_empty() || self.cancelled() {
            return Ok(done);
        }
        if !handovers.is_empty() {
            for call in &loans {
                done.push(self.completed(
                    call,
                    Outcome::Error,
                    json!({"error": "not run: the session was handed over in the same step"}),
                    0,
                    0,
                ));
            }
            return self.hand_over(&handovers, done).await;
        }
        if !loans.is_empty() {
            return self.lend(&loans, done).await;
        }
        Ok(done)
    }

    /// Whether some open tool intent has no result yet, neither in the log
    /// nor in `carry` (results waiting to be appended).
    fn has_unrun_tools(&self, carry: &[NewEvent]) -> bool {
        self.progress.open_tools.iter().any(|t| {
            !self.progress.is_lending(&t.call.id)
                && !carry.iter().any(|e| matches!(&e.data, EventData::ToolCompleted { call_id, .. } if *call_id == t.call.id))
        })
    }

    fn completed(&self, call: &OpenToolCall, outcome: Outcome, output: Value, latency_us: u64, attempts: u32) -> NewEvent {
        EventData::ToolCompleted {
            turn_id: self.turn.turn_id.clone(),
            step: call.step,
            call_id: call.call.id.clone(),
            tool: call.call.name.clone(),
            outcome,
            output,
            latency_us,
            attempts,
            sandbox_cpu_us: None,
        }
        .into()
    }

    /// Closes every open intent with an error so the log stays well formed,
    /// giving back every open loan with `status` on the way.
    fn close_open(&self, events: Vec<NewEvent>, why: &str, status: BorrowStatus) -> Vec<NewEvent> {
        let events = self.unwind(events, why, status);
        self.close_from(events, 0, why, false)
    }

    /// Closes the open intents of steps from `first_step` on that `events`
    /// does not close: with an error, or as `outcome: unknown` for tool
    /// calls that may have run (`unknown`).
    fn close_from(&self, mut events: Vec<NewEvent>, first_step: u32, why: &str, unknown: bool) -> Vec<NewEvent> {
        let closed: Vec<String> = events
            .iter()
            .filter_map(|e| match &e.data {
                EventData::ToolCompleted { call_id, .. } => Some(call_id.clone()),
                _ => None,
            })
            .collect();
        let model_closed = events.iter().any(|e| matches!(e.data, EventData::ModelFailed { .. } | EventData::ModelCompleted { .. }));
        if let (Some(step), false) = (self.progress.open_model.filter(|s| *s >= first_step), model_closed) {
            events.push(EventData::ModelFailed { turn_id: self.turn.turn_id.clone(), step, error: why.into(), latency_us: 0 }.into());
        }
        let open = |id: &String, step: u32| step >= first_step && !closed.contains(id);
        for call in self.progress.open_tools.iter().filter(|c| open(&c.call.id, c.step)) {
            events.push(match unknown {
                true => self.completed(call, Outcome::Unknown, json!({"error": crate::UNKNOWN_OUTCOME}), 0, 0),
                false => self.completed(call, Outcome::Error, json!({"error": why}), 0, 0),
            });
        }
        for g in self.progress.gated.iter().filter(|g| open(&g.call.id, g.step)) {
            events.push(self.refused(g.step, &g.call, why.to_owned()));
        }
        for h in self.progress.held.iter().filter(|h| open(&h.call.id, h.step)) {
            events.push(self.refused(h.step, &h.call, why.to_owned()));
        }
        events
    }

    /// Token usage and steps of the turn once `events` are appended.
    fn totals(&self, events: &[NewEvent]) -> (agentrt_types::Usage, u32) {
        let mut usage = self.progress.usage;
        let mut steps = self.progress.steps_done;
        for e in events {
            match &e.data {
                EventData::ModelCompleted { usage: u, .. } => {
                    usage.add(*u);
                    steps += 1;
                }
                EventData::ModelFailed { .. } | EventData::ToolCompleted { .. } => steps += 1,
                _ => {}
            }
        }
        (usage, steps)
    }

    async fn end_cancelled(&mut self, carry: Vec<NewEvent>) -> Result<(), Abort> {
        let mut events = self.close_open(carry, "cancelled", BorrowStatus::Cancelled);
        events.push(EventData::TurnCancelled { turn_id: self.turn.turn_id.clone(), reason: "cancel requested".into() }.into());
        self.append_end(events).await
    }

    async fn fail(&mut self, carry: Vec<NewEvent>, code: &str, message: &str) -> Result<(), Abort> {
        let mut events = self.close_open(carry, message, BorrowStatus::Failed);
        let (usage, steps) = self.totals(&events);
        let span = tracing::Span::current();
        record_usage(&span, usage);
        span.record("otel.status_code", "ERROR");
        events.push(
            EventData::TurnFailed { turn_id: self.turn.turn_id.clone(), code: code.into(), message: message.into(), usage, steps }.into(),
        );
        self.append_end(events).await
    }
}

/// Puts a turn's token usage on its span.
fn record_usage(span: &tracing::Span, usage: agentrt_types::Usage) {
    span.record("gen_ai.usage.input_tokens", usage.input_tokens as i64);
    span.record("gen_ai.usage.output_tokens", usage.output_tokens as i64);
}

enum ModelOutcome {
    Answer(ModelResponse),
    Failed(ModelError),
    Cancelled,
    Deadline,
}

fn tool_error_text(e: &ToolError) -> String {
    e.to_string()
}

fn truncate(v: Value) -> Value {
    let text = v.to_string();
    if text.len() <= MAX_TOOL_OUTPUT {
        return v;
    }
    let mut cut = MAX_TOOL_OUTPUT;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    json!({"truncated": true, "original_bytes": text.len(), "preview": &text[..cut]})
}

/// Appends with the executor's fence; records metrics (labelled with the
/// agent and model) and publishes to live readers.
async fn append_raw(
    inner: &Inner,
    id: &SessionId,
    fence: &Fence,
    precondition: Option<Precondition>,
    events: Vec<NewEvent>,
    (agent, model): (&str, &str),
) -> Result<Vec<Event>, Abort> {
    if events.is_empty() {
        return Ok(vec![]);
    }
    let n = events.len();
    let req = AppendRequest { session_id: id.clone(), fence: fence.clone(), precondition, events };
    let started = Instant::now();
    let appended = inner.store.append(req).instrument(telemetry::append_span(n)).await?;
    inner.metrics.append(started.elapsed());
    inner.metrics.observe(&appended, agent, model);
    inner.hub.publish(id, &appended);
    Ok(appended)
}

pub(super) async fn load_agent(inner: &Inner, tenant: &str, name: &str, version: u32) -> Result<Arc<LoadedAgent>, String> {
    if let Some(a) = inner.agents.get(tenant, name, version) {
        return Ok(a);
    }
    let v = inner
        .store
        .get_agent(tenant, name, Some(version))
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("agent {name:?} version {version} not found"))?;
    let tools = agentrt_tools::ToolSet::for_agent(&v.spec, inner.config.mcp_stdio_on_host).map_err(|e| e.to_string())?;
    // Keep the bare reason: the model step wraps it as a configuration error.
    let provider = match (v.spec.model.provider.as_str(), &inner.config.gateway) {
        ("gateway", Some(gateway)) => {
            Ok(Arc::new(crate::gateway_model::GatewayModel { gateway: gateway.clone(), route: v.spec.model.model.clone() })
                as Arc<dyn agentrt_model::ModelProvider>)
        }
        ("gateway", None) => Err("this server has no model routes for the gateway provider".to_owned()),
        _ => agentrt_model::provider_for(&v.spec.model, inner.http.clone()).map_err(|e| match e {
            agentrt_model::ModelError::Config(reason) => reason,
            other => other.to_string(),
        }),
    };
    let router = agentrt_tools::router::ToolRouter::new(v.spec.tools.router.clone());
    Ok(inner.agents.insert(tenant, LoadedAgent { version: v, provider, tools, router }))
}
