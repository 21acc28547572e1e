//! The single writer thread. Every write goes through one connection on one
//! dedicated thread; requests that queue up while a commit is in flight are
//! committed together (group commit), so many sessions share one fsync.
//! Each request runs in its own savepoint: one refused append does not undo
//! the others in its group. Replies are sent only after the commit.

use std::sync::mpsc;

use agentrt_types::event::{EventBody, GENESIS_HASH};
use agentrt_types::time::now_ms;
use agentrt_types::{AgentSpec, Event, EventData, NewEvent, SessionStatus, SessionSummary, Spend, TurnSummary, EVENT_SCHEMA_VERSION};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::Value;
use tokio::sync::oneshot;

use super::schema::db;
use crate::{AgentVersion, AppendRequest, Fence, NewSession, Precondition, StoreError, TransferRequest};

/// Most requests committed in one transaction.
const MAX_GROUP: usize = 512;

/// A write request with the channel its answer goes back on.
pub enum WriteOp {
    PutAgent {
        tenant: String,
        name: String,
        spec: Box<AgentSpec>,
        reply: oneshot::Sender<Result<AgentVersion, StoreError>>,
    },
    CreateSession {
        new: NewSession,
        reply: oneshot::Sender<Result<(SessionSummary, Event), StoreError>>,
    },
    Append {
        request: AppendRequest,
        reply: oneshot::Sender<Result<Vec<Event>, StoreError>>,
    },
    AcquireLease {
        session: agentrt_types::SessionId,
        holder: String,
        ttl_ms: i64,
        force: bool,
        reply: oneshot::Sender<Result<Option<u64>, StoreError>>,
    },
    ReleaseLease {
        session: agentrt_types::SessionId,
        holder: String,
        token: u64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    RenewLeases {
        holder: String,
        ttl_ms: i64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    KvSet {
        session: agentrt_types::SessionId,
        key: String,
        value: Value,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Any other write: runs inside the group's transaction and returns
    /// what sends its reply once the commit is known.
    Run(Box<dyn FnOnce(&Transaction<'_>) -> Reply + Send>),
}

/// Sends a [`WriteOp::Run`]'s reply, given the commit error if any.
pub type Reply = Box<dyn FnOnce(Option<&str>) + Send>;

impl WriteOp {
    /// A write running `f` in a savepoint, answered on `reply` after commit.
    pub fn run<T: Send + 'static>(
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
        reply: oneshot::Sender<Result<T, StoreError>>,
    ) -> WriteOp {
        WriteOp::Run(Box::new(move |tx| {
            let r = scoped(tx, f);
            Box::new(move |commit_err| drop(reply.send(pick(r, commit_err))))
        }))
    }
}

/// Result of one op, held until the group commits.
enum Done {
    PutAgent(oneshot::Sender<Result<AgentVersion, StoreError>>, Result<AgentVersion, StoreError>),
    CreateSession(oneshot::Sender<Result<(SessionSummary, Event), StoreError>>, Result<(SessionSummary, Event), StoreError>),
    Append(oneshot::Sender<Result<Vec<Event>, StoreError>>, Result<Vec<Event>, StoreError>),
    Lease(oneshot::Sender<Result<Option<u64>, StoreError>>, Result<Option<u64>, StoreError>),
    Unit(oneshot::Sender<Result<(), StoreError>>, Result<(), StoreError>),
    Count(oneshot::Sender<Result<u64, StoreError>>, Result<u64, StoreError>),
    Run(Reply),
}

impl Done {
    /// Sends the op's result, or `err` if the commit failed.
    fn send(self, commit_err: Option<&str>) {
        // A dropped receiver means the caller went away; nothing to do.
        match self {
            Done::PutAgent(tx, r) => drop(tx.send(pick(r, commit_err))),
            Done::CreateSession(tx, r) => drop(tx.send(pick(r, commit_err))),
            Done::Append(tx, r) => drop(tx.send(pick(r, commit_err))),
            Done::Lease(tx, r) => drop(tx.send(pick(r, commit_err))),
            Done::Unit(tx, r) => drop(tx.send(pick(r, commit_err))),
            Done::Count(tx, r) => drop(tx.send(pick(r, commit_err))),
            Done::Run(reply) => reply(commit_err),
        }
    }
}

/// The op's own result, or the commit's failure.
fn pick<T>(r: Result<T, StoreError>, e: Option<&str>) -> Result<T, StoreError> {
    match e {
        Some(msg) => Err(StoreError::Database(format!("commit failed: {msg}"))),
        None => r,
    }
}

/// Runs `f` in a savepoint, rolled back if it fails.
fn scoped<T>(tx: &Transaction<'_>, f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
    tx.execute_batch("SAVEPOINT op").map_err(db)?;
    let r = f(tx);
    let end = if r.is_ok() { "RELEASE op" } else { "ROLLBACK TO op; RELEASE op" };
    tx.execute_batch(end).map_err(db)?;
    r
}

/// How long the writer polls for the next request after a commit before it
/// sleeps. An executor usually sends its next append within this window;
/// catching it without a sleep/wake cycle saves a thread wake-up per step.
const LINGER: std::time::Duration = std::time::Duration::from_micros(200);

/// Next request: polls for [`LINGER`] first, then blocks.
fn next_op(rx: &mpsc::Receiver<WriteOp>) -> Option<WriteOp> {
    let until = std::time::Instant::now() + LINGER;
    loop {
        match rx.try_recv() {
            Ok(op) => return Some(op),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) if std::time::Instant::now() < until => std::hint::spin_loop(),
            Err(mpsc::TryRecvError::Empty) => return rx.recv().ok(),
        }
    }
}

/// Runs the writer loop until every sender is dropped.
pub fn run(mut conn: Connection, rx: mpsc::Receiver<WriteOp>) {
    while let Some(first) = next_op(&rx) {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        commit_group(&mut conn, group);
    }
}

fn commit_group(conn: &mut Connection, group: Vec<WriteOp>) {
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let msg = e.to_string();
            for op in group {
                fail(op, &msg);
            }
            return;
        }
    };
    let mut done = Vec::with_capacity(group.len());
    for op in group {
        done.push(apply_in_savepoint(&tx, op));
    }
    let commit_err = tx.commit().err().map(|e| e.to_string());
    if let Some(e) = &commit_err {
        tracing::error!(error = %e, "store commit failed");
    }
    for d in done {
        d.send(commit_err.as_deref());
    }
}

fn fail(op: WriteOp, msg: &str) {
    let e = || StoreError::Database(msg.to_owned());
    match op {
        WriteOp::PutAgent { reply, .. } => drop(reply.send(Err(e()))),
        WriteOp::CreateSession { reply, .. } => drop(reply.send(Err(e()))),
        WriteOp::Append { reply, .. } => drop(reply.send(Err(e()))),
        WriteOp::AcquireLease { reply, .. } => drop(reply.send(Err(e()))),
        WriteOp::ReleaseLease { reply, .. } => drop(reply.send(Err(e()))),
        WriteOp::RenewLeases { reply, .. } => drop(reply.send(Err(e()))),
        WriteOp::KvSet { reply, .. } => drop(reply.send(Err(e()))),
        WriteOp::Run(f) => drop(f),
    }
}

/// Runs one op inside a savepoint, rolled back if the op fails.
fn apply_in_savepoint(tx: &Transaction<'_>, op: WriteOp) -> Done {
    match op {
        WriteOp::Run(f) => Done::Run(f(tx)),
        WriteOp::PutAgent { tenant, name, spec, reply } => Done::PutAgent(reply, scoped(tx, |tx| put_agent(tx, &tenant, &name, &spec))),
        WriteOp::CreateSession { new, reply } => Done::CreateSession(reply, scoped(tx, |tx| create_session(tx, new))),
        WriteOp::Append { request, reply } => Done::Append(reply, scoped(tx, |tx| append(tx, request))),
        WriteOp::AcquireLease { session, holder, ttl_ms, force, reply } => {
            Done::Lease(reply, scoped(tx, |tx| acquire_lease(tx, &session, &holder, ttl_ms, force)))
        }
        WriteOp::ReleaseLease { session, holder, token, reply } => Done::Unit(
            reply,
            scoped(tx, |tx| {
                tx.execute(
                    "UPDATE sessions SET lease_holder = NULL, lease_expires_ms = 0 WHERE id = ?1 AND lease_holder = ?2 AND lease_token = ?3",
                    params![session.as_str(), holder, token as i64],
                )
                .map_err(db)?;
                Ok(())
            }),
        ),
        WriteOp::RenewLeases { holder, ttl_ms, reply } => Done::Count(
            reply,
            scoped(tx, |tx| {
                let n = tx
                    .execute("UPDATE sessions SET lease_expires_ms = ?2 WHERE lease_holder = ?1", params![holder, now_ms() + ttl_ms])
                    .map_err(db)?;
                Ok(n as u64)
            }),
        ),
        WriteOp::KvSet { session, key, value, reply } => Done::Unit(
            reply,
            scoped(tx, |tx| {
                tx.execute(
                    "INSERT INTO kv (session_id, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (session_id, key) DO UPDATE SET value = excluded.value",
                    params![session.as_str(), key, value.to_string()],
                )
                .map_err(db)?;
                Ok(())
            }),
        ),
    }
}

fn put_agent(tx: &Transaction<'_>, tenant: &str, name: &str, spec: &AgentSpec) -> Result<AgentVersion, StoreError> {
    let latest: Option<u32> =
        tx.query_row("SELECT MAX(version) FROM agents WHERE tenant = ?1 AND name = ?2", params![tenant, name], |r| r.get(0)).map_err(db)?;
    let version = latest.unwrap_or(0) + 1;
    let created_ms = now_ms();
    let text = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tx.execute(
        "INSERT INTO agents (tenant, name, version, spec, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![tenant, name, version, text, created_ms],
    )
    .map_err(db)?;
    Ok(AgentVersion { name: name.to_owned(), version, spec: spec.clone(), created_ms })
}

fn create_session(tx: &Transaction<'_>, new: NewSession) -> Result<(SessionSummary, Event), StoreError> {
    let body = EventBody {
        v: EVENT_SCHEMA_VERSION,
        seq: 1,
        session_id: new.id.clone(),
        ts: now_ms(),
        data: EventData::SessionCreated {
            agent: new.agent.clone(),
            agent_version: new.agent_version,
            metadata: new.metadata,
            tenant: new.tenant.clone(),
        },
    };
    let (event, text) = Event::seal(body, GENESIS_HASH);
    let summary = SessionSummary::from_created(&event).expect("event is session.created");
    insert_event(tx, &event, &text)?;
    tx.execute(
        "INSERT INTO sessions (id, agent, status, created_ms, summary, last_seq, last_hash, tenant) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![new.id.as_str(), new.agent, summary.status.as_str(), summary.created_ms, to_json(&summary)?, 1i64, event.hash, new.tenant],
    )
    .map_err(db)?;
    Ok((summary, event))
}

struct SessionRow {
    summary: SessionSummary,
    last_hash: String,
    lease_holder: Option<String>,
    lease_token: u64,
}

fn append(tx: &Transaction<'_>, req: AppendRequest) -> Result<Vec<Event>, StoreError> {
    let id = &req.session_id;
    let row = tx
        .prepare_cached("SELECT summary, last_hash, lease_holder, lease_token FROM sessions WHERE id = ?1")
        .map_err(db)?
        .query_row(params![id.as_str()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?, r.get::<_, i64>(3)?))
        })
        .optional()
        .map_err(db)?
        .ok_or_else(|| StoreError::SessionNotFound(id.clone()))?;
    let mut row = SessionRow {
        summary: serde_json::from_str(&row.0).map_err(|e| StoreError::Corrupt(format!("session summary: {e}")))?,
        last_hash: row.1,
        lease_holder: row.2,
        lease_token: row.3 as u64,
    };
    match &req.fence {
        Fence::Client => {
            if row.summary.status == SessionStatus::Terminated {
                return Err(StoreError::SessionTerminated(id.clone()));
            }
        }
        Fence::Lease { holder, token } => {
            if row.lease_holder.as_deref() != Some(holder.as_str()) || row.lease_token != *token {
                return Err(StoreError::StaleFence { session: id.clone(), token: *token, current: row.lease_token });
            }
        }
    }
    if let Some(Precondition::SessionIdle) = &req.precondition {
        if row.summary.status != SessionStatus::Idle {
            return Err(StoreError::PreconditionFailed(format!("session {id} is {}", row.summary.status.as_str())));
        }
    }
    if let Some(Precondition::TurnStatus(turn, want)) = &req.precondition {
        let status: Option<String> = tx
            .prepare_cached("SELECT status FROM turns WHERE session_id = ?1 AND turn_id = ?2")
            .map_err(db)?
            .query_row(params![id.as_str(), turn.as_str()], |r| r.get(0))
            .optional()
            .map_err(db)?;
        if status.as_deref() != Some(want.as_str()) {
            return Err(StoreError::PreconditionFailed(format!(
                "turn {turn} is {}, expected {}",
                status.as_deref().unwrap_or("missing"),
                want.as_str()
            )));
        }
    }
    if let Some(Precondition::ApprovalPending(approval)) = &req.precondition {
        super::approvals::check_pending(tx, id, approval)?;
    }
    if let Some(Precondition::AgentIs(agent) | Precondition::Owns(agent)) = &req.precondition {
        if &row.summary.agent != agent {
            return Err(StoreError::PreconditionFailed(format!("session {id} is run by agent {:?}, not {agent:?}", row.summary.agent)));
        }
    }
    if let (Some(Precondition::Owns(agent)), Some(lender)) = (&req.precondition, row.summary.lenders.first()) {
        return Err(StoreError::PreconditionFailed(format!(
            "session {id} is lent to agent {agent:?} by {lender:?} for a sub-task; it goes back when the sub-task ends"
        )));
    }
    let ts = now_ms();
    let mut spend = Spend::default();
    for e in &req.events {
        spend.add(Spend::of(&e.data));
    }
    // Tenants without budgets skip budget work (one indexed lookup): their
    // day and month spend is not kept, which keeps their commits small.
    let budgeted = !spend.is_zero() && super::budgets::tenant_has_any(tx, &row.summary.tenant)?;
    if budgeted && spend.steps > 0 {
        check_budgets(tx, &row.summary, &req.events, &spend, ts)?;
    }
    let mut out = Vec::with_capacity(req.events.len());
    for new in req.events {
        let body = EventBody { v: EVENT_SCHEMA_VERSION, seq: row.summary.last_seq + 1, session_id: id.clone(), ts, data: new.data };
        let (event, text) = Event::seal(body, &row.last_hash);
        insert_event(tx, &event, &text)?;
        apply_to_turn(tx, &event)?;
        super::approvals::apply(tx, &row.summary.tenant, &event)?;
        super::usage::apply(tx, &row.summary, &event)?;
        row.summary.apply(&event);
        row.last_hash = event.hash.clone();
        out.push(event);
    }
    if budgeted {
        super::budgets::add_daily(tx, &row.summary.tenant, &row.summary.agent, ts, &spend)?;
    }
    tx.prepare_cached("UPDATE sessions SET status = ?2, summary = ?3, last_seq = ?4, last_hash = ?5 WHERE id = ?1")
        .map_err(db)?
        .execute(params![id.as_str(), row.summary.status.as_str(), to_json(&row.summary)?, row.summary.last_seq as i64, row.last_hash])
        .map_err(db)?;
    Ok(out)
}

/// Passes control of a session and moves its fencing token on (see
/// [`TransferRequest`]).
pub fn transfer(tx: &Transaction<'_>, req: TransferRequest) -> Result<(Vec<Event>, u64), StoreError> {
    let (holder, token): (Option<String>, i64) = tx
        .query_row("SELECT lease_holder, lease_token FROM sessions WHERE id = ?1", params![req.session_id.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(db)?
        .ok_or_else(|| StoreError::SessionNotFound(req.session_id.clone()))?;
    let new_token = token as u64 + 1;
    let mut events = req.events;
    events.push(
        EventData::LeaseTransferred {
            turn_id: req.turn_id,
            holder,
            old_token: token as u64,
            new_token,
            from_agent: req.from_agent,
            to_agent: req.to_agent,
        }
        .into(),
    );
    let appended =
        append(tx, AppendRequest { session_id: req.session_id.clone(), fence: req.fence, precondition: Some(req.precondition), events })?;
    tx.execute("UPDATE sessions SET lease_token = ?2 WHERE id = ?1", params![req.session_id.as_str(), new_token as i64]).map_err(db)?;
    Ok((appended, new_token))
}

/// Refuses an append that starts model or tool calls a budget does not
/// allow; `spend` is what the append adds.
fn check_budgets(tx: &Transaction<'_>, session: &SessionSummary, events: &[NewEvent], spend: &Spend, ts: i64) -> Result<(), StoreError> {
    let turn = match events.iter().find_map(|e| e.data.turn_id()) {
        Some(t) => read_turn(tx, &session.id, t)?,
        None => None,
    };
    let who = super::budgets::Spender { tenant: &session.tenant, session: Some(session), turn: turn.as_ref() };
    match super::budgets::breach(tx, &who, spend, ts)? {
        Some(b) => Err(StoreError::BudgetExceeded(Box::new(b))),
        None => Ok(()),
    }
}

fn read_turn(
    tx: &Transaction<'_>,
    session: &agentrt_types::SessionId,
    turn: &agentrt_types::TurnId,
) -> Result<Option<TurnSummary>, StoreError> {
    let text: Option<String> = tx
        .prepare_cached("SELECT summary FROM turns WHERE session_id = ?1 AND turn_id = ?2")
        .map_err(db)?
        .query_row(params![session.as_str(), turn.as_str()], |r| r.get(0))
        .optional()
        .map_err(db)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("turn summary: {e}")))).transpose()
}

/// Keeps the turn fold in step with the log.
fn apply_to_turn(tx: &Transaction<'_>, event: &Event) -> Result<(), StoreError> {
    let Some(turn_id) = event.body.data.turn_id() else { return Ok(()) };
    let sid = event.body.session_id.as_str();
    if let Some(turn) = TurnSummary::from_submitted(event) {
        let inserted = tx
            .prepare_cached(
                "INSERT INTO turns (session_id, turn_id, status, idempotency_key, submitted_seq, summary)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
            )
            .map_err(db)?
            .execute(params![sid, turn_id.as_str(), turn.status.as_str(), turn.idempotency_key, turn.submitted_seq as i64, to_json(&turn)?])
            .map_err(db)?;
        if inserted == 0 {
            let existing: String = tx
                .query_row(
                    "SELECT turn_id FROM turns WHERE session_id = ?1 AND idempotency_key = ?2",
                    params![sid, turn.idempotency_key],
                    |r| r.get(0),
                )
                .map_err(db)?;
            let existing =
                agentrt_types::TurnId::parse(&existing).ok_or_else(|| StoreError::Corrupt(format!("bad turn id {existing:?}")))?;
            return Err(StoreError::DuplicateIdempotencyKey(existing));
        }
        return Ok(());
    }
    let Some(mut turn) = read_turn(tx, &event.body.session_id, turn_id)? else {
        return Err(StoreError::PreconditionFailed(format!("turn {turn_id} was never submitted")));
    };
    turn.apply(event);
    tx.prepare_cached("UPDATE turns SET status = ?3, summary = ?4 WHERE session_id = ?1 AND turn_id = ?2")
        .map_err(db)?
        .execute(params![sid, turn_id.as_str(), turn.status.as_str(), to_json(&turn)?])
        .map_err(db)?;
    Ok(())
}

fn acquire_lease(
    tx: &Transaction<'_>,
    session: &agentrt_types::SessionId,
    holder: &str,
    ttl_ms: i64,
    force: bool,
) -> Result<Option<u64>, StoreError> {
    let now = now_ms();
    let row: Option<(Option<String>, i64, i64)> = tx
        .query_row("SELECT lease_holder, lease_token, lease_expires_ms FROM sessions WHERE id = ?1", params![session.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()
        .map_err(db)?;
    let Some((current, token, expires)) = row else {
        return Err(StoreError::SessionNotFound(session.clone()));
    };
    let free = current.is_none() || expires <= now || current.as_deref() == Some(holder);
    if !free && !force {
        return Ok(None);
    }
    let token = token + 1;
    tx.execute(
        "UPDATE sessions SET lease_holder = ?2, lease_token = ?3, lease_expires_ms = ?4 WHERE id = ?1",
        params![session.as_str(), holder, token, now + ttl_ms],
    )
    .map_err(db)?;
    Ok(Some(token as u64))
}

fn insert_event(tx: &Transaction<'_>, event: &Event, text: &str) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO events (session_id, seq, body, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5)")
        .map_err(db)?
        .execute(params![event.body.session_id.as_str(), event.body.seq as i64, text, event.prev_hash, event.hash])
        .map_err(db)?;
    Ok(())
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}
