//! `agents.delegate`: sub-tasks run by other agents, each in a child session
//! of its own, in parallel; the call's result lists every outcome.
//!
//! The children are recorded in the parent's log (`delegate.started`)
//! before their turns are submitted (with the call's idempotency key), so a
//! call made again after a crash finds the same children there and waits
//! for them instead of starting new ones; a crash before that leaves only
//! child sessions without turns. Cancelling the parent's turn, or
//! terminating the parent, cancels the turns of the children its log names.

use std::sync::Arc;
use std::time::Duration;

use agentrt_tools::ToolError;
use agentrt_types::event::{DelegateOutcome, DelegatedTask};
use agentrt_types::{EventData, SessionId, TurnId, TurnStatus};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{Engine, Inner, OnBusy, SubmitTurn};

/// Events read per page when looking for a session's children.
const PAGE: usize = 1000;
/// Sub-tasks not done by then are cancelled, unless the call says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Deserialize)]
struct Args {
    tasks: Vec<Task>,
    #[serde(default)]
    wait: Option<String>,
    /// Wait for this many sub-tasks to end, not all.
    #[serde(default)]
    first: Option<usize>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
}

#[derive(Deserialize)]
struct Task {
    agent: String,
    input: String,
}

/// The call of `agents.delegate` being carried out.
pub(crate) struct Delegation<'a> {
    pub tenant: &'a str,
    pub parent: &'a SessionId,
    pub turn: &'a TurnId,
    pub call_id: &'a str,
    pub key: &'a str,
    pub allowed: &'a [String],
    /// The call's trace context: children's turns continue its trace.
    pub traceparent: Option<String>,
}

/// Runs the sub-tasks and answers `{"results": [...]}`, one per task in order.
pub(crate) async fn run(inner: &Arc<Inner>, d: Delegation<'_>, args: &Value) -> Result<Value, ToolError> {
    let engine = Engine { inner: inner.clone() };
    let args: Args = serde_json::from_value(args.clone()).map_err(|e| ToolError::InvalidArguments(e.to_string()))?;
    if let Some(t) = args.tasks.iter().find(|t| !d.allowed.contains(&t.agent)) {
        return Err(ToolError::InvalidArguments(format!("this agent may delegate only to: {} (not {:?})", d.allowed.join(", "), t.agent)));
    }
    let wanted = match (args.wait.as_deref(), args.first) {
        (None | Some("all"), None) => args.tasks.len(),
        (None | Some("first"), Some(n)) if (1..=args.tasks.len()).contains(&n) => n,
        (Some("first"), None) => 1,
        (_, Some(n)) => {
            return Err(ToolError::InvalidArguments(format!("first must be 1 to {} (the number of tasks), not {n}", args.tasks.len())))
        }
        (Some(other), None) => return Err(ToolError::InvalidArguments(format!("wait must be \"all\" or \"first\", not {other:?}"))),
    };
    let timeout = args.timeout_seconds.map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let children = children(&engine, &d, &args.tasks).await?;

    let mut turns = Vec::with_capacity(children.len());
    for (child, task) in children.iter().zip(&args.tasks) {
        let submit = SubmitTurn {
            input: task.input.clone(),
            on_busy: OnBusy::Queue,
            idempotency_key: Some(d.key.to_owned()),
            traceparent: d.traceparent.clone(),
            borrow: None,
        };
        let (turn, _) = engine.submit_turn(&child.session_id, submit).await.map_err(failed)?;
        turns.push(turn.turn_id);
    }
    let mut waiting: FuturesUnordered<_> = children
        .iter()
        .zip(&turns)
        .enumerate()
        .map(|(i, (c, t))| {
            let engine = engine.clone();
            async move { (i, engine.wait_turn(&c.session_id, t, timeout).await) }
        })
        .collect();
    let mut results: Vec<Option<Value>> = vec![None; children.len()];
    let mut ended = 0;
    while let Some((i, done)) = waiting.next().await {
        let turn = done.map_err(failed)?;
        if turn.status.is_final() {
            results[i] = Some(outcome(&children[i], &turn));
            ended += 1;
            if ended == wanted {
                break;
            }
        }
    }
    drop(waiting);
    // What is not done is cancelled: past the deadline, or once enough ended.
    let why = if ended == wanted { "cancelled" } else { "timed_out" };
    for (i, slot) in results.iter_mut().enumerate() {
        if slot.is_none() {
            let _ = engine.cancel_turn(&children[i].session_id, &turns[i]).await;
            *slot = Some(json!({"agent": children[i].agent, "session_id": children[i].session_id, "status": why}));
        }
    }
    let outcomes: Vec<DelegateOutcome> = results
        .iter()
        .flatten()
        .zip(&children)
        .map(|(r, c)| DelegateOutcome { session_id: c.session_id.clone(), status: r["status"].as_str().unwrap_or_default().to_owned() })
        .collect();
    let completed = EventData::DelegateCompleted { turn_id: d.turn.clone(), call_id: d.call_id.to_owned(), outcomes };
    engine.client_append(d.parent, None, vec![completed.into()]).await.map_err(failed)?;
    Ok(json!({"results": results}))
}

/// The call's child sessions: found again after a crash, made otherwise.
async fn children(engine: &Engine, d: &Delegation<'_>, tasks: &[Task]) -> Result<Vec<DelegatedTask>, ToolError> {
    let started = delegations(engine, d.parent).await.map_err(failed)?;
    if let Some((_, _, known)) = started.into_iter().find(|(turn, call, _)| turn == d.turn && call == d.call_id) {
        return Ok(known);
    }
    let mut children = Vec::with_capacity(tasks.len());
    for task in tasks {
        let metadata = json!({"parent_session": d.parent, "parent_turn": d.turn, "parent_call": d.call_id});
        let child = engine.create_session(d.tenant, &task.agent, None, metadata).await.map_err(failed)?;
        children.push(DelegatedTask { agent: task.agent.clone(), session_id: child.id });
    }
    let started = EventData::DelegateStarted { turn_id: d.turn.clone(), call_id: d.call_id.to_owned(), children: children.clone() };
    engine.client_append(d.parent, None, vec![started.into()]).await.map_err(failed)?;
    Ok(children)
}

/// Every `delegate.started` of a session's log: turn, call and children.
async fn delegations(engine: &Engine, id: &SessionId) -> Result<Vec<(TurnId, String, Vec<DelegatedTask>)>, crate::EngineError> {
    let mut found = Vec::new();
    let mut after = 0;
    loop {
        let page = engine.inner.store.read_events(id, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq();
        for e in &page {
            if let EventData::DelegateStarted { turn_id, call_id, children } = &e.body.data {
                found.push((turn_id.clone(), call_id.clone(), children.clone()));
            }
        }
        if page.len() < PAGE {
            break;
        }
    }
    Ok(found)
}

fn outcome(child: &DelegatedTask, turn: &agentrt_types::TurnSummary) -> Value {
    let mut v = json!({"agent": child.agent, "session_id": child.session_id, "status": turn.status.as_str()});
    match turn.status {
        TurnStatus::Completed => v["output"] = json!(turn.output),
        _ => v["error"] = json!(turn.error.as_ref().map(|e| e.message.clone())),
    }
    v
}

fn failed(e: impl std::fmt::Display) -> ToolError {
    ToolError::Failed(e.to_string())
}

impl Engine {
    /// Cancels the unfinished turns of the sessions the session delegated
    /// to, and of theirs.
    pub(crate) async fn cancel_children(&self, parent: &SessionId) {
        let mut parents = vec![parent.clone()];
        while let Some(p) = parents.pop() {
            let Ok(started) = delegations(self, &p).await else { continue };
            for child in started.into_iter().flat_map(|(_, _, children)| children).map(|c| c.session_id) {
                for turn in self.inner.store.unfinished_turns(&child).await.unwrap_or_default() {
                    if !turn.cancel_requested {
                        let _ = self.request_cancel(&child, &turn.turn_id, "parent cancelled").await;
                    }
                }
                parents.push(child);
            }
        }
    }
}
