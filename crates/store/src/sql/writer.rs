//! The single writer thread of a node. Every write goes through one
//! connection on one dedicated thread; requests that queue up while a
//! commit is in flight are committed together (group commit), so many
//! sessions share one fsync. Each request runs in its own savepoint: one
//! refused append does not undo the others in its group. Replies are sent
//! only after the commit. The backend provides the connection
//! ([`WriteConn`]); everything else is shared.

use std::sync::mpsc;

use agentrt_types::event::{EventBody, GENESIS_HASH};
use agentrt_types::time::now_ms;
use agentrt_types::{AgentSpec, Event, EventData, NewEvent, SessionStatus, SessionSummary, Spend, TurnSummary, EVENT_SCHEMA_VERSION};
use serde_json::Value;
use tokio::sync::oneshot;

use super::{args, parse, to_json, Db, Dialect};
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
    /// what sends its reply once the commit is known. It changes the named
    /// session's row, if any.
    Run(Option<agentrt_types::SessionId>, Work),
}

/// The work of a [`WriteOp::Run`]: runs in the group's transaction (in a
/// savepoint unless it is alone in it); answers its reply and whether it
/// failed.
pub type Work = Box<dyn FnOnce(&dyn Db, bool) -> (Reply, bool) + Send>;

/// Sends a [`WriteOp::Run`]'s reply, given the commit error if any.
pub type Reply = Box<dyn FnOnce(Option<&str>) + Send>;

impl WriteOp {
    /// A write running `f` in a savepoint, answered on `reply` after commit.
    pub fn run<T: Send + 'static>(
        session: Option<agentrt_types::SessionId>,
        f: impl FnOnce(&dyn Db) -> Result<T, StoreError> + Send + 'static,
        reply: oneshot::Sender<Result<T, StoreError>>,
    ) -> WriteOp {
        WriteOp::Run(
            session,
            Box::new(move |tx, alone| {
                let r = scoped(tx, alone, f);
                let failed = r.is_err();
                (Box::new(move |commit_err| drop(reply.send(pick(r, commit_err)))), failed)
            }),
        )
    }
}

impl WriteOp {
    /// The session whose row the op locks and changes, if it is one.
    fn session(&self) -> Option<&str> {
        match self {
            WriteOp::CreateSession { new, .. } => Some(new.id.as_str()),
            WriteOp::Append { request, .. } => Some(request.session_id.as_str()),
            WriteOp::AcquireLease { session, .. } | WriteOp::ReleaseLease { session, .. } | WriteOp::KvSet { session, .. } => {
                Some(session.as_str())
            }
            WriteOp::Run(session, _) => session.as_ref().map(|s| s.as_str()),
            WriteOp::PutAgent { .. } | WriteOp::RenewLeases { .. } => None,
        }
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
    Run(Reply, bool),
}

impl Done {
    /// Whether the op failed (and wrote nothing).
    fn failed(&self) -> bool {
        match self {
            Done::PutAgent(_, r) => r.is_err(),
            Done::CreateSession(_, r) => r.is_err(),
            Done::Append(_, r) => r.is_err(),
            Done::Lease(_, r) => r.is_err(),
            Done::Unit(_, r) => r.is_err(),
            Done::Count(_, r) => r.is_err(),
            Done::Run(_, failed) => *failed,
        }
    }

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
            Done::Run(reply, _) => reply(commit_err),
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

/// Runs `f` in a savepoint, rolled back if it fails; an op `alone` in its
/// transaction needs none (the whole transaction is rolled back instead),
/// which saves two round trips on a database server.
fn scoped<T>(tx: &dyn Db, alone: bool, f: impl FnOnce(&dyn Db) -> Result<T, StoreError>) -> Result<T, StoreError> {
    if alone {
        return f(tx);
    }
    tx.batch("SAVEPOINT op")?;
    let r = f(tx);
    let end = if r.is_ok() { "RELEASE SAVEPOINT op" } else { "ROLLBACK TO SAVEPOINT op; RELEASE SAVEPOINT op" };
    tx.batch(end)?;
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

/// The writer's connection, as its backend opens transactions on it.
pub trait WriteConn: Send + 'static {
    /// Opens a transaction, runs `f` in it, and commits it if `f` says so
    /// (else rolls it back). An error says why the transaction could not be
    /// opened (`f` did not run) or committed.
    fn transact(&mut self, f: &mut dyn FnMut(&dyn Db) -> bool) -> Result<(), String>;
}

/// Runs the writer loop until every sender is dropped.
pub fn run(mut conn: impl WriteConn, rx: mpsc::Receiver<WriteOp>) {
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

fn commit_group(conn: &mut impl WriteConn, mut group: Vec<WriteOp>) {
    // Session rows are locked in one order (by id) by every node's groups,
    // so that two groups never wait for each other. The sort is stable:
    // the ops of one session keep their order.
    group.sort_by(|a, b| a.session().cmp(&b.session()));
    let mut done = Vec::with_capacity(group.len());
    let alone = group.len() == 1;
    let mut todo = Some(group);
    let result = conn.transact(&mut |tx| {
        for op in todo.take().unwrap_or_default() {
            done.push(apply(tx, op, alone));
        }
        // An op alone ran without a savepoint: if it failed, none of it stays.
        !(alone && done.iter().any(Done::failed))
    });
    let commit_err = result.err();
    if let Some(e) = &commit_err {
        tracing::error!(error = %e, "store commit failed");
        for op in todo.into_iter().flatten() {
            fail(op, e);
        }
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
        WriteOp::Run(_, f) => drop(f),
    }
}

/// Runs one op inside a savepoint (unless `alone`), rolled back if the op fails.
fn apply(tx: &dyn Db, op: WriteOp, alone: bool) -> Done {
    match op {
        WriteOp::Run(_, f) => {
            let (reply, failed) = f(tx, alone);
            Done::Run(reply, failed)
        }
        WriteOp::PutAgent { tenant, name, spec, reply } => {
            Done::PutAgent(reply, scoped(tx, alone, |tx| put_agent(tx, &tenant, &name, &spec)))
        }
        WriteOp::CreateSession { new, reply } => Done::CreateSession(reply, scoped(tx, alone, |tx| create_session(tx, new))),
        WriteOp::Append { request, reply } => Done::Append(reply, scoped(tx, alone, |tx| append(tx, request))),
        WriteOp::AcquireLease { session, holder, ttl_ms, force, reply } => {
            Done::Lease(reply, scoped(tx, alone, |tx| acquire_lease(tx, &session, &holder, ttl_ms, force)))
        }
        WriteOp::ReleaseLease { session, holder, token, reply } => Done::Unit(
            reply,
            scoped(tx, alone, |tx| {
                tx.exec(
                    "UPDATE sessions SET lease_holder = NULL, lease_expires_ms = 0 WHERE id = ?1 AND lease_holder = ?2 AND lease_token = ?3",
                    args![session.as_str(), holder, token],
                )?;
                Ok(())
            }),
        ),
        WriteOp::RenewLeases { holder, ttl_ms, reply } => Done::Count(
            reply,
            scoped(tx, alone, |tx| {
                // Rows locked in id order, as every group locks them.
                let sql = format!(
                    "UPDATE sessions SET lease_expires_ms = ?2 WHERE id IN (SELECT id FROM sessions WHERE lease_holder = ?1 ORDER BY id{})",
                    tx.for_update()
                );
                tx.exec(&sql, args![holder, now_ms() + ttl_ms])
            }),
        ),
        WriteOp::KvSet { session, key, value, reply } => Done::Unit(
            reply,
            scoped(tx, alone, |tx| {
                tx.exec(
                    "INSERT INTO kv (session_id, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (session_id, key) DO UPDATE SET value = excluded.value",
                    args![session.as_str(), key, value.to_string()],
                )?;
                Ok(())
            }),
        ),
    }
}

fn put_agent(tx: &dyn Db, tenant: &str, name: &str, spec: &AgentSpec) -> Result<AgentVersion, StoreError> {
    let latest = tx.row("SELECT MAX(version) FROM agents WHERE tenant = ?1 AND name = ?2", args![tenant, name])?;
    let version = latest.map(|r| r.opt_int(0)).transpose()?.flatten().unwrap_or(0) as u32 + 1;
    let created_ms = now_ms();
    tx.exec(
        "INSERT INTO agents (tenant, name, version, spec, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        args![tenant, name, version, to_json(spec)?, created_ms],
    )?;
    Ok(AgentVersion { name: name.to_owned(), version, spec: spec.clone(), created_ms })
}

fn create_session(tx: &dyn Db, new: NewSession) -> Result<(SessionSummary, Event), StoreError> {
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
    insert_events(tx, std::slice::from_ref(&event), &[text])?;
    tx.exec(
        "INSERT INTO sessions (id, agent, status, created_ms, summary, last_seq, last_hash, tenant) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        args![new.id.as_str(), new.agent, summary.status.as_str(), summary.created_ms, to_json(&summary)?, 1i64, event.hash.as_str(), new.tenant],
    )?;
    Ok((summary, event))
}

struct SessionRow {
    summary: SessionSummary,
    last_hash: String,
    lease_holder: Option<String>,
    lease_token: u64,
}

fn append(tx: &dyn Db, req: AppendRequest) -> Result<Vec<Event>, StoreError> {
    let id = &req.session_id;
    // Whether the tenant has budgets comes with the row: one round trip.
    let sql = format!(
        "SELECT s.summary, s.last_hash, s.lease_holder, s.lease_token, EXISTS (SELECT 1 FROM budgets b WHERE b.tenant = s.tenant)
         FROM sessions s WHERE s.id = ?1{}",
        tx.for_update()
    );
    let found = tx.row(&sql, args![id.as_str()])?.ok_or_else(|| StoreError::SessionNotFound(id.clone()))?;
    let mut row = SessionRow {
        summary: parse(&found.text(0)?, "session summary")?,
        last_hash: found.text(1)?,
        lease_holder: found.opt_text(2)?,
        lease_token: found.int(3)? as u64,
    };
    let tenant_has_budgets = found.int(4)? != 0;
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
        let status = tx.text("SELECT status FROM turns WHERE session_id = ?1 AND turn_id = ?2", args![id.as_str(), turn.as_str()])?;
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
    if let Some(Precondition::WorkspaceGeneration(want)) = &req.precondition {
        let saved = row.summary.workspace.as_ref().map_or(0, |w| w.generation);
        if saved != *want {
            return Err(StoreError::PreconditionFailed(format!("session {id} has workspace generation {saved}, not {want}")));
        }
    }
    let ts = now_ms();
    let mut spend = Spend::default();
    for e in &req.events {
        spend.add(Spend::of(&e.data));
    }
    // Tenants without budgets skip budget work: their day and month spend
    // is not kept, which keeps their commits small.
    let budgeted = !spend.is_zero() && tenant_has_budgets;
    if budgeted {
        super::budgets::lock_tenant(tx, &row.summary.tenant)?;
    }
    if budgeted && spend.steps > 0 {
        check_budgets(tx, &row.summary, &req.events, &spend, ts)?;
    }
    let mut out = Vec::with_capacity(req.events.len());
    let mut texts = Vec::with_capacity(req.events.len());
    let mut turns = TurnFolds::default();
    for new in req.events {
        let body = EventBody { v: EVENT_SCHEMA_VERSION, seq: row.summary.last_seq + 1, session_id: id.clone(), ts, data: new.data };
        let (event, text) = Event::seal(body, &row.last_hash);
        turns.apply(tx, &event)?;
        super::approvals::apply(tx, &row.summary.tenant, &event)?;
        super::usage::apply(tx, &row.summary, &event)?;
        row.summary.apply(&event);
        row.last_hash = event.hash.clone();
        out.push(event);
        texts.push(text);
    }
    insert_events(tx, &out, &texts)?;
    turns.write(tx)?;
    if budgeted {
        super::budgets::add_daily(tx, &row.summary.tenant, &row.summary.agent, ts, &spend)?;
    }
    if let (Dialect::Postgres, Some(first), Some(last)) = (tx.dialect(), out.first(), out.last()) {
        // Wakes other nodes' readers of the session when the group commits.
        let note = format!("{id} {} {}", first.seq(), last.seq());
        tx.rows("SELECT pg_notify('agentrt_events', ?1)", args![note])?;
    }
    tx.exec(
        "UPDATE sessions SET status = ?2, summary = ?3, last_seq = ?4, last_hash = ?5 WHERE id = ?1",
        args![id.as_str(), row.summary.status.as_str(), to_json(&row.summary)?, row.summary.last_seq, row.last_hash],
    )?;
    Ok(out)
}

/// Passes control of a session and moves its fencing token on (see
/// [`TransferRequest`]).
pub fn transfer(tx: &dyn Db, req: TransferRequest) -> Result<(Vec<Event>, u64), StoreError> {
    let sql = format!("SELECT lease_holder, lease_token FROM sessions WHERE id = ?1{}", tx.for_update());
    let row = tx.row(&sql, args![req.session_id.as_str()])?.ok_or_else(|| StoreError::SessionNotFound(req.session_id.clone()))?;
    let (holder, token) = (row.opt_text(0)?, row.int(1)?);
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
    tx.exec("UPDATE sessions SET lease_token = ?2 WHERE id = ?1", args![req.session_id.as_str(), new_token])?;
    Ok((appended, new_token))
}

/// Refuses an append that starts model or tool calls a budget does not
/// allow; `spend` is what the append adds.
fn check_budgets(tx: &dyn Db, session: &SessionSummary, events: &[NewEvent], spend: &Spend, ts: i64) -> Result<(), StoreError> {
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

fn read_turn(tx: &dyn Db, session: &agentrt_types::SessionId, turn: &agentrt_types::TurnId) -> Result<Option<TurnSummary>, StoreError> {
    super::read::get_turn(tx, session, turn)
}

/// The turn folds an append changes: read once, written once at its end.
#[derive(Default)]
struct TurnFolds(Vec<(TurnSummary, bool)>);

impl TurnFolds {
    /// Keeps the turn fold in step with the log.
    fn apply(&mut self, tx: &dyn Db, event: &Event) -> Result<(), StoreError> {
        let Some(turn_id) = event.body.data.turn_id() else { return Ok(()) };
        if let Some(turn) = TurnSummary::from_submitted(event) {
            insert_turn(tx, &turn)?;
            self.0.push((turn, false));
            return Ok(());
        }
        let i = match self.0.iter().position(|(t, _)| &t.turn_id == turn_id) {
            Some(i) => i,
            None => {
                let Some(turn) = read_turn(tx, &event.body.session_id, turn_id)? else {
                    return Err(StoreError::PreconditionFailed(format!("turn {turn_id} was never submitted")));
                };
                self.0.push((turn, false));
                self.0.len() - 1
            }
        };
        self.0[i].0.apply(event);
        self.0[i].1 = true;
        Ok(())
    }

    fn write(self, tx: &dyn Db) -> Result<(), StoreError> {
        for (turn, _) in self.0.into_iter().filter(|(_, changed)| *changed) {
            tx.exec(
                "UPDATE turns SET status = ?3, summary = ?4 WHERE session_id = ?1 AND turn_id = ?2",
                args![turn.session_id.as_str(), turn.turn_id.as_str(), turn.status.as_str(), to_json(&turn)?],
            )?;
        }
        Ok(())
    }
}

/// Starts the fold of a submitted turn; refuses a second turn with the
/// same idempotency key.
fn insert_turn(tx: &dyn Db, turn: &TurnSummary) -> Result<(), StoreError> {
    let (sid, turn_id, key) = (turn.session_id.as_str(), &turn.turn_id, turn.idempotency_key.as_deref());
    let inserted = tx.exec(
        "INSERT INTO turns (session_id, turn_id, status, idempotency_key, submitted_seq, summary)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
        args![sid, turn_id.as_str(), turn.status.as_str(), key, turn.submitted_seq, to_json(turn)?],
    )?;
    if inserted == 1 {
        return Ok(());
    }
    let existing = tx
        .text("SELECT turn_id FROM turns WHERE session_id = ?1 AND idempotency_key = ?2", args![sid, key])?
        .ok_or_else(|| StoreError::Corrupt(format!("turn {turn_id} was refused but no turn has its key")))?;
    let existing = agentrt_types::TurnId::parse(&existing).ok_or_else(|| StoreError::Corrupt(format!("bad turn id {existing:?}")))?;
    Err(StoreError::DuplicateIdempotencyKey(existing))
}

fn acquire_lease(
    tx: &dyn Db,
    session: &agentrt_types::SessionId,
    holder: &str,
    ttl_ms: i64,
    force: bool,
) -> Result<Option<u64>, StoreError> {
    let now = now_ms();
    let sql = format!("SELECT lease_holder, lease_token, lease_expires_ms FROM sessions WHERE id = ?1{}", tx.for_update());
    let Some(row) = tx.row(&sql, args![session.as_str()])? else {
        return Err(StoreError::SessionNotFound(session.clone()));
    };
    let (current, token, expires) = (row.opt_text(0)?, row.int(1)?, row.int(2)?);
    let free = current.is_none() || expires <= now || current.as_deref() == Some(holder);
    if !free && !force {
        return Ok(None);
    }
    let token = token + 1;
    tx.exec(
        "UPDATE sessions SET lease_holder = ?2, lease_token = ?3, lease_expires_ms = ?4 WHERE id = ?1",
        args![session.as_str(), holder, token, now + ttl_ms],
    )?;
    Ok(Some(token as u64))
}

/// Inserts events (with their stored text) in as few statements as can be.
fn insert_events(tx: &dyn Db, events: &[Event], texts: &[String]) -> Result<(), StoreError> {
    const ROWS: usize = 50;
    for (events, texts) in events.chunks(ROWS).zip(texts.chunks(ROWS)) {
        let values: Vec<String> = (0..events.len())
            .map(|i| format!("(?{}, ?{}, ?{}, ?{}, ?{})", 5 * i + 1, 5 * i + 2, 5 * i + 3, 5 * i + 4, 5 * i + 5))
            .collect();
        let sql = format!("INSERT INTO events (session_id, seq, body, prev_hash, hash) VALUES {}", values.join(", "));
        let mut values = Vec::with_capacity(5 * events.len());
        for (e, text) in events.iter().zip(texts) {
            values.extend([
                e.body.session_id.as_str().into(),
                e.body.seq.into(),
                text.as_str().into(),
                e.prev_hash.as_str().into(),
                e.hash.as_str().into(),
            ]);
        }
        tx.exec(&sql, &values)?;
    }
    Ok(())
}
