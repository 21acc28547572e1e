//! The store suite, run against both backends: a real SQLite file, and a
//! fresh database on a real PostgreSQL server (`AGENTRT_TEST_POSTGRES`, an
//! admin URL; `scripts/test.sh` starts one).

use agentrt_types::event::verify_chain;
use agentrt_types::spec::SpecFormat;
use agentrt_types::{AgentSpec, EventData, SessionId, SessionStatus, TurnId, TurnStatus};
use serde_json::json;

use super::SqlStore;
use crate::{AppendRequest, Fence, NewSession, Precondition, SessionFilter, Store, StoreError};

/// The backend a test runs on.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// Keeps a test's store alive: its SQLite directory.
pub(crate) struct Scratch(#[allow(dead_code)] Option<tempfile::TempDir>);

/// A fresh, empty store on `backend`.
pub(crate) async fn open(backend: Backend) -> (Scratch, SqlStore) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let store = SqlStore::open(&dir.path().join("agentrt.db")).unwrap();
            (Scratch(Some(dir)), store)
        }
        Backend::Postgres => {
            let url = fresh_pg_database();
            (Scratch(None), SqlStore::connect_postgres(&url).unwrap())
        }
    }
}

/// Creates an empty database on the test server; answers its URL.
pub(crate) fn fresh_pg_database() -> String {
    let admin = std::env::var("AGENTRT_TEST_POSTGRES")
        .expect("AGENTRT_TEST_POSTGRES is not set: run the suite with ./scripts/test.sh, which starts a PostgreSQL server");
    crate::postgres::create_database(&admin, &format!("t_{}", uuid::Uuid::new_v4().simple()))
        .expect("create a database on AGENTRT_TEST_POSTGRES")
}

/// Makes a test of each of the suite's tests for each backend:
/// `name::sqlite` and `name::postgres`; the body sees `backend`.
macro_rules! on_both {
    ($(#[$meta:meta])* async fn $name:ident($backend:ident) $body:block) => {
        mod $name {
            use super::*;
            async fn run($backend: Backend) $body
            $(#[$meta])* async fn sqlite() { run(Backend::Sqlite).await }
            $(#[$meta])* async fn postgres() { run(Backend::Postgres).await }
        }
    };
}

pub(crate) async fn session(store: &SqlStore) -> SessionId {
    let id = SessionId::generate();
    store
        .create_session(NewSession { id: id.clone(), tenant: "default".into(), agent: "a".into(), agent_version: 1, metadata: json!({}) })
        .await
        .unwrap();
    id
}

pub(crate) fn submit(turn: &TurnId, key: Option<&str>) -> agentrt_types::NewEvent {
    EventData::TurnSubmitted {
        turn_id: turn.clone(),
        input: "hi".into(),
        idempotency_key: key.map(Into::into),
        traceparent: None,
        borrow: None,
    }
    .into()
}

pub(crate) fn client(id: &SessionId, events: Vec<agentrt_types::NewEvent>) -> AppendRequest {
    AppendRequest { session_id: id.clone(), fence: Fence::Client, precondition: None, events }
}

on_both! {
#[tokio::test]
async fn a_workspace_is_saved_only_over_the_generation_it_started_from(backend) {
    let (_d, store) = open(backend).await;
    let id = session(&store).await;
    let save = |base: u64, generation: u64, node: &str| AppendRequest {
        precondition: Some(Precondition::WorkspaceGeneration(base)),
        ..client(&id, vec![EventData::WorkspaceSaved(agentrt_types::event::WorkspaceSaved {
            generation,
            object: format!("ws/{generation}-{node}"),
            bytes: 1,
            duration_ms: 1.0,
            node: node.into(),
        })
        .into()])
    };
    store.append(save(0, 1, "a")).await.unwrap();
    // Two nodes both started from generation 1: the first to record wins.
    store.append(save(1, 2, "a")).await.unwrap();
    let err = store.append(save(1, 2, "b")).await.unwrap_err();
    assert!(matches!(err, StoreError::PreconditionFailed(_)), "{err}");
    let saved = store.get_session(&id).await.unwrap().unwrap().workspace.unwrap();
    assert_eq!((saved.generation, saved.object.as_str()), (2, "ws/2-a"));
}}

on_both! {
#[tokio::test]
async fn agent_versions_are_immutable_and_numbered(backend) {
    let (_d, store) = open(backend).await;
    let spec = AgentSpec::parse("[model]\nprovider = \"scripted\"", SpecFormat::Toml).unwrap();
    assert_eq!(store.put_agent("default", "x", &spec).await.unwrap().version, 1);
    assert_eq!(store.put_agent("default", "x", &spec).await.unwrap().version, 2);
    assert_eq!(store.get_agent("default", "x", None).await.unwrap().unwrap().version, 2);
    assert_eq!(store.get_agent("default", "x", Some(1)).await.unwrap().unwrap().version, 1);
    assert!(store.get_agent("default", "x", Some(3)).await.unwrap().is_none());
    let list = store.list_agents("default").await.unwrap();
    assert_eq!((list.len(), list[0].latest_version), (1, 2));
}}

on_both! {
#[tokio::test]
async fn appends_chain_and_fold_into_summaries(backend) {
    let (_d, store) = open(backend).await;
    let id = session(&store).await;
    let turn = TurnId::generate();
    let events = store.append(client(&id, vec![submit(&turn, Some("k1"))])).await.unwrap();
    assert_eq!(events[0].seq(), 2);
    let s = store.get_session(&id).await.unwrap().unwrap();
    assert_eq!((s.status, s.turn_count, s.queued_turns), (SessionStatus::Running, 1, 1));
    assert_eq!(store.unfinished_turns(&id).await.unwrap().len(), 1);
    assert_eq!(store.sessions_with_unfinished_turns().await.unwrap(), vec![id.clone()]);
    assert_eq!(verify_chain(store.read_records(&id).await.unwrap()), Ok(2));
    let read = store.read_events(&id, 1, 10).await.unwrap();
    assert_eq!(read, events);
}}

on_both! {
#[tokio::test]
async fn duplicate_idempotency_key_names_the_first_turn_and_writes_nothing(backend) {
    let (_d, store) = open(backend).await;
    let id = session(&store).await;
    let first = TurnId::generate();
    store.append(client(&id, vec![submit(&first, Some("k"))])).await.unwrap();
    let err = store.append(client(&id, vec![submit(&TurnId::generate(), Some("k"))])).await.unwrap_err();
    assert!(matches!(err, StoreError::DuplicateIdempotencyKey(t) if t == first));
    assert_eq!(store.get_session(&id).await.unwrap().unwrap().last_seq, 2);
}}

on_both! {
#[tokio::test]
async fn stale_fencing_token_is_rejected(backend) {
    let (_d, store) = open(backend).await;
    let id = session(&store).await;
    let old = store.acquire_lease(&id, "node-a", 60_000, false).await.unwrap().unwrap();
    assert_eq!(store.acquire_lease(&id, "node-b", 60_000, false).await.unwrap(), None);
    let new = store.acquire_lease(&id, "node-b", 60_000, true).await.unwrap().unwrap();
    assert!(new > old);
    let turn = TurnId::generate();
    store.append(client(&id, vec![submit(&turn, None)])).await.unwrap();
    let started = |holder: &str, token| AppendRequest {
        session_id: id.clone(),
        fence: Fence::Lease { holder: holder.into(), token },
        precondition: Some(Precondition::TurnStatus(turn.clone(), TurnStatus::Queued)),
        events: vec![EventData::TurnStarted { turn_id: turn.clone(), agent_version: 1, executor: holder.into(), trace_id: None }.into()],
    };
    let err = store.append(started("node-a", old)).await.unwrap_err();
    assert!(matches!(err, StoreError::StaleFence { .. }), "{err}");
    store.append(started("node-b", new)).await.unwrap();
    // The precondition now fails: the turn is running.
    let err = store.append(started("node-b", new)).await.unwrap_err();
    assert!(matches!(err, StoreError::PreconditionFailed(_)), "{err}");
}}

on_both! {
#[tokio::test]
async fn terminated_session_refuses_client_input(backend) {
    let (_d, store) = open(backend).await;
    let id = session(&store).await;
    store.append(client(&id, vec![EventData::SessionTerminated { reason: "done".into() }.into()])).await.unwrap();
    let err = store.append(client(&id, vec![submit(&TurnId::generate(), None)])).await.unwrap_err();
    assert!(matches!(err, StoreError::SessionTerminated(_)));
}}

on_both! {
#[tokio::test]
async fn list_sessions_pages_newest_first_with_filters(backend) {
    let (_d, store) = open(backend).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(session(&store).await);
    }
    let page1 = store.list_sessions(&SessionFilter { limit: 3, ..Default::default() }).await.unwrap();
    let got: Vec<_> = page1.iter().map(|s| s.id.clone()).collect();
    assert_eq!(got, vec![ids[4].clone(), ids[3].clone(), ids[2].clone()]);
    let page2 = store.list_sessions(&SessionFilter { limit: 3, before: Some(ids[2].clone()), ..Default::default() }).await.unwrap();
    assert_eq!(page2.len(), 2);
    let none = store.list_sessions(&SessionFilter { limit: 3, agent: Some("other".into()), ..Default::default() }).await.unwrap();
    assert!(none.is_empty());
}}

on_both! {
#[tokio::test]
async fn concurrent_appends_group_commit_without_losing_any(backend) {
    let (_d, store) = open(backend).await;
    let store = std::sync::Arc::new(store);
    let ids: Vec<SessionId> = {
        let mut v = Vec::new();
        for _ in 0..20 {
            v.push(session(&store).await);
        }
        v
    };
    let mut tasks = Vec::new();
    for id in ids.clone() {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                store.append(client(&id, vec![submit(&TurnId::generate(), None)])).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for id in ids {
        assert_eq!(verify_chain(store.read_records(&id).await.unwrap()), Ok(26));
    }
}}

on_both! {
#[tokio::test]
async fn tenants_see_only_their_agents_and_sessions(backend) {
    let (_d, store) = open(backend).await;
    store.create_tenant("acme").await.unwrap();
    assert!(matches!(store.create_tenant("acme").await, Err(StoreError::Conflict(_))));
    let spec = AgentSpec::parse("[model]\nprovider = \"scripted\"", SpecFormat::Toml).unwrap();
    store.put_agent("acme", "x", &spec).await.unwrap();
    assert!(store.get_agent("default", "x", None).await.unwrap().is_none());
    assert_eq!(store.put_agent("default", "x", &spec).await.unwrap().version, 1, "versions are numbered per tenant");
    assert_eq!(store.list_agents("acme").await.unwrap().len(), 1);
    let id = SessionId::generate();
    let new = NewSession { id: id.clone(), tenant: "acme".into(), agent: "x".into(), agent_version: 1, metadata: json!({}) };
    store.create_session(new).await.unwrap();
    assert_eq!(store.get_session(&id).await.unwrap().unwrap().tenant, "acme");
    let mine = SessionFilter { tenant: Some("acme".into()), limit: 10, ..Default::default() };
    assert_eq!(store.list_sessions(&mine).await.unwrap().len(), 1);
    let theirs = SessionFilter { tenant: Some("default".into()), limit: 10, ..Default::default() };
    assert!(store.list_sessions(&theirs).await.unwrap().is_empty());
}}

on_both! {
#[tokio::test]
async fn api_keys_are_found_by_hash_and_revoked_per_tenant(backend) {
    let (_d, store) = open(backend).await;
    let key = crate::ApiKey {
        id: agentrt_types::KeyId::generate(),
        tenant: "default".into(),
        name: "ci".into(),
        role: agentrt_types::Role::Operator,
        created_ms: 1,
        revoked_ms: None,
    };
    let missing_tenant = crate::ApiKey { tenant: "nope".into(), id: agentrt_types::KeyId::generate(), ..key.clone() };
    assert!(matches!(store.create_api_key(&missing_tenant, "h0").await, Err(StoreError::NotFound(_))));
    store.create_api_key(&key, "h1").await.unwrap();
    assert_eq!(store.api_key_by_hash("h1").await.unwrap(), Some(key.clone()));
    assert_eq!(store.count_active_api_keys().await.unwrap(), 1);
    assert_eq!(store.revoke_api_key("other", &key.id).await.unwrap(), None, "another tenant cannot revoke it");
    let revoked = store.revoke_api_key("default", &key.id).await.unwrap().unwrap();
    assert!(revoked.revoked_ms.is_some());
    assert_eq!(store.count_active_api_keys().await.unwrap(), 0);
}}

on_both! {
#[tokio::test]
async fn approvals_follow_their_events_and_are_decided_once(backend) {
    use agentrt_types::event::ApprovalDecision;
    use agentrt_types::ApprovalId;
    let (_d, store) = open(backend).await;
    let id = session(&store).await;
    let turn = TurnId::generate();
    let approval = ApprovalId::generate();
    let requested = EventData::ApprovalRequested {
        approval_id: approval.clone(),
        turn_id: turn.clone(),
        step: 2,
        call_id: "c1".into(),
        tool: "pay".into(),
        arguments: json!({"amount": 5}),
        reason: "r".into(),
        policies: vec!["p".into()],
        expires_ms: None,
    };
    store.append(client(&id, vec![submit(&turn, None), requested.into()])).await.unwrap();
    assert_eq!(store.get_session(&id).await.unwrap().unwrap().status, SessionStatus::WaitingApproval);
    let pending =
        crate::ApprovalFilter { tenant: "default".into(), status: Some(crate::ApprovalStatus::Pending), limit: 10, ..Default::default() };
    assert_eq!(store.list_approvals(&pending).await.unwrap().len(), 1);
    let decide = |d| AppendRequest {
        session_id: id.clone(),
        fence: Fence::Client,
        precondition: Some(Precondition::ApprovalPending(approval.clone())),
        events: vec![EventData::ApprovalDecided {
            approval_id: approval.clone(),
            turn_id: turn.clone(),
            call_id: "c1".into(),
            decision: d,
            approver: "me".into(),
            comment: None,
        }
        .into()],
    };
    store.append(decide(ApprovalDecision::Approved)).await.unwrap();
    assert!(matches!(store.append(decide(ApprovalDecision::Denied)).await, Err(StoreError::PreconditionFailed(_))));
    let a = store.get_approval(&approval).await.unwrap().unwrap();
    assert_eq!((a.status, a.approver.as_deref()), (crate::ApprovalStatus::Approved, Some("me")));
    assert_eq!(store.get_session(&id).await.unwrap().unwrap().status, SessionStatus::Running);
    let other = crate::ApprovalFilter { tenant: "acme".into(), limit: 10, ..Default::default() };
    assert!(store.list_approvals(&other).await.unwrap().is_empty());
}}

on_both! {
#[tokio::test]
async fn model_calls_are_accounted_with_their_event_and_grouped(backend) {
    use agentrt_types::event::Billing;
    let (_d, store) = open(backend).await;
    let id = session(&store).await;
    let turn = TurnId::generate();
    let completed = EventData::ModelCompleted {
        turn_id: turn.clone(),
        step: 1,
        content: Some("hi".into()),
        tool_calls: vec![],
        usage: agentrt_types::Usage { input_tokens: 1000, output_tokens: 10, cached_tokens: 400 },
        latency_us: 5,
        billing: Some(Billing { provider: "openai".into(), model: "m".into(), cost_usd: 0.25 }),
    };
    store.append(client(&id, vec![submit(&turn, None), completed.into()])).await.unwrap();
    let gateway = crate::UsageRecord {
        ts_ms: agentrt_types::time::now_ms(),
        tenant: "acme".into(),
        agent: "x".into(),
        session_id: None,
        turn_id: None,
        source: "gateway".into(),
        route: "fast".into(),
        provider: "openai".into(),
        model: "m".into(),
        input_tokens: 7,
        output_tokens: 3,
        cached_tokens: 0,
        cost_usd: 0.5,
        latency_us: 9,
        estimated: true,
    };
    store.record_usage(&gateway).await.unwrap();
    let q = |tenant: Option<&str>, group_by| crate::UsageQuery { tenant: tenant.map(Into::into), group_by, from_ms: 0, to_ms: i64::MAX };
    let all = store.usage_summary(&q(None, crate::UsageGroup::Tenant)).await.unwrap();
    assert_eq!(all.iter().map(|r| (r.key.as_str(), r.calls, r.cost_usd)).collect::<Vec<_>>(), [("acme", 1, 0.5), ("default", 1, 0.25)]);
    let mine = store.usage_summary(&q(Some("default"), crate::UsageGroup::Session)).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!((mine[0].key.as_str(), mine[0].input_tokens, mine[0].cached_tokens), (id.as_str(), 1000, 400));
    let later = crate::UsageQuery { from_ms: i64::MAX - 1, ..q(None, crate::UsageGroup::Tenant) };
    assert!(store.usage_summary(&later).await.unwrap().is_empty());
    assert_eq!(store.usage_summary(&q(None, crate::UsageGroup::Route)).await.unwrap()[0].estimated_calls, 1);
}}

fn budget(
    scope: agentrt_types::BudgetScope,
    target: Option<&str>,
    metric: agentrt_types::BudgetMetric,
    period: agentrt_types::BudgetPeriod,
    limit: f64,
) -> agentrt_types::Budget {
    agentrt_types::Budget {
        id: agentrt_types::BudgetId::generate(),
        tenant: "default".into(),
        scope,
        target: target.map(Into::into),
        metric,
        period,
        limit,
        created_ms: 0,
        updated_ms: 0,
        updated_by: "test".into(),
    }
}

fn model_requested(turn: &TurnId, step: u32) -> agentrt_types::NewEvent {
    EventData::ModelRequested { turn_id: turn.clone(), step, provider: "p".into(), model: "m".into() }.into()
}

on_both! {
#[tokio::test]
async fn concurrent_appends_never_take_more_than_a_budget_allows(backend) {
    use agentrt_types::{BudgetMetric, BudgetPeriod, BudgetScope};
    let (_d, store) = open(backend).await;
    let daily = budget(BudgetScope::Tenant, None, BudgetMetric::Steps, BudgetPeriod::Day, 7.0);
    store.create_budget(&daily).await.unwrap();
    let store = std::sync::Arc::new(store);
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let id = session(&store).await;
        let turn = TurnId::generate();
        store.append(client(&id, vec![submit(&turn, None)])).await.unwrap();
        sessions.push((id, turn));
    }
    // 3 sessions × 5 model calls each race for 7 steps.
    let mut tasks = Vec::new();
    for (id, turn) in &sessions {
        for step in 1..=5 {
            let (store, id, turn) = (store.clone(), id.clone(), turn.clone());
            tasks.push(tokio::spawn(async move { store.append(client(&id, vec![model_requested(&turn, step)])).await }));
        }
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::BudgetExceeded(b)) => {
                assert_eq!((b.budget_id.clone(), b.limit, b.spent), (daily.id.clone(), 7.0, 8.0));
                assert!(b.resets_ms.is_some(), "a day budget says when it frees up");
                refused += 1;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!((ok, refused), (7, 8));
    let spent = store.period_spend("default", None, BudgetPeriod::Day).await.unwrap();
    assert_eq!(spent.steps, 7);
    assert_eq!(store.period_spend("default", Some("a"), BudgetPeriod::Month).await.unwrap().steps, 7);

    // Raising the limit lets the next call through; an override of the turn does too.
    store.set_budget_limit("default", &daily.id, 8.0, "ops").await.unwrap().unwrap();
    let (id, turn) = &sessions[0];
    store.append(client(id, vec![model_requested(turn, 9)])).await.unwrap();
    assert!(matches!(store.append(client(id, vec![model_requested(turn, 10)])).await, Err(StoreError::BudgetExceeded(_))));
    let overridden =
        EventData::BudgetOverridden { turn_id: turn.clone(), budget_id: Some(daily.id.clone()), by: "ops".into(), comment: None };
    store.append(client(id, vec![overridden.into()])).await.unwrap();
    store.append(client(id, vec![model_requested(turn, 10)])).await.unwrap();
    let total: u64 = total_steps(&store, &sessions).await;
    assert_eq!(total, 9, "7 allowed, 1 after the raise, 1 overridden");
}}

on_both! {
#[tokio::test]
async fn token_budgets_refuse_once_reached_and_count_gateway_calls(backend) {
    use agentrt_types::{BudgetMetric, BudgetPeriod, BudgetScope, Usage};
    let (_d, store) = open(backend).await;
    let id = session(&store).await;
    let per_session = budget(BudgetScope::Session, Some(id.as_str()), BudgetMetric::Tokens, BudgetPeriod::Session, 100.0);
    store.create_budget(&per_session).await.unwrap();
    let turn = TurnId::generate();
    store.append(client(&id, vec![submit(&turn, None), model_requested(&turn, 1)])).await.unwrap();
    let gateway = EventData::GatewayCalled {
        route: "r".into(),
        provider: "openai".into(),
        model: "m".into(),
        usage: Usage { input_tokens: 60, output_tokens: 40, cached_tokens: 0 },
        cost_usd: 0.5,
        latency_us: 1,
        estimated: false,
    };
    assert_eq!(store.gateway_breach("default", Some(&id)).await.unwrap(), None);
    store.append(client(&id, vec![gateway.into()])).await.unwrap();
    let breach = store.gateway_breach("default", Some(&id)).await.unwrap().expect("100 of 100 tokens spent");
    assert_eq!((breach.spent, breach.over_by, breach.resets_ms), (100.0, 0.0, None));
    let Err(StoreError::BudgetExceeded(b)) = store.append(client(&id, vec![model_requested(&turn, 2)])).await else {
        panic!("the model call is refused")
    };
    assert_eq!(b.budget_id, per_session.id);
    let rows = store
        .usage_summary(&crate::UsageQuery { tenant: None, group_by: crate::UsageGroup::Session, from_ms: 0, to_ms: i64::MAX })
        .await
        .unwrap();
    assert_eq!((rows[0].key.as_str(), rows[0].input_tokens, rows[0].cost_usd), (id.as_str(), 60, 0.5));
    // Another session of the tenant is not bound by it.
    let other = session(&store).await;
    let t2 = TurnId::generate();
    store.append(client(&other, vec![submit(&t2, None), model_requested(&t2, 1)])).await.unwrap();
    assert_eq!(store.delete_budget("other-tenant", &per_session.id).await.unwrap(), None);
    store.delete_budget("default", &per_session.id).await.unwrap().unwrap();
    store.append(client(&id, vec![model_requested(&turn, 2)])).await.unwrap();
}}

async fn total_steps(store: &SqlStore, sessions: &[(SessionId, TurnId)]) -> u64 {
    let mut total = 0;
    for (id, _) in sessions {
        total += store.get_session(id).await.unwrap().unwrap().spend.steps;
    }
    total
}

on_both! {
/// Handovers race executors writing with the token they hold, loans of the
/// session that start and come back (made, like an executor makes them,
/// with the token it holds), duplicate handovers and client input, over
/// several randomized runs. Read back, the log must show one agent in
/// control at every point: each handover starts from the agent in control
/// and never while the session is lent, each loan starts from the agent in
/// control and comes back from its borrower to its lender; tokens move on
/// by one per transfer, and no executor write is accepted with a token that
/// was not the current one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_racing_writers_never_let_a_stale_token_write(backend) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const AGENTS: [&str; 4] = ["a", "b", "c", "d"];
    // Over all runs, every kind of contender must have won and lost at least once.
    let mut raced = [0usize; 5];
    for run in 0..8u64 {
        let (_d, store) = open(backend).await;
        let store = Arc::new(store);
        let id = session(&store).await;
        let turn = TurnId::generate();
        store.append(client(&id, vec![submit(&turn, None)])).await.unwrap();
        let token = store.acquire_lease(&id, "node", 60_000, false).await.unwrap().unwrap();
        let counters: Arc<[AtomicUsize; 5]> = Arc::new(Default::default());
        let (transferred, refused, stale, lent, returned) = (0, 1, 2, 3, 4);
        let mut tasks = Vec::new();
        for w in 0..3u64 {
            let (store, id, turn, counters) = (store.clone(), id.clone(), turn.clone(), counters.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(run * 100 + w);
                let mut mine = token;
                for _ in 0..40 {
                    let event = EventData::Message { turn_id: turn.clone(), content: format!("token {mine}") };
                    match store.append(lease_append(&id, mine, vec![event.into()])).await {
                        Ok(_) => {}
                        Err(StoreError::StaleFence { current, .. }) => {
                            counters[stale].fetch_add(1, Ordering::SeqCst);
                            // The new holder's token, as a taking-over executor would learn it.
                            mine = current;
                        }
                        Err(e) => panic!("{e}"),
                    }
                    if rng.bool() {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        for h in 0..3u64 {
            let (store, id, counters) = (store.clone(), id.clone(), counters.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(run * 1000 + h);
                for _ in 0..15 {
                    let i = rng.usize(..AGENTS.len());
                    let (from, to) = (AGENTS[i], AGENTS[(i + 1 + rng.usize(..AGENTS.len() - 1)) % AGENTS.len()]);
                    let handoff = EventData::HandoffCompleted {
                        turn_id: None,
                        from_agent: from.into(),
                        from_version: 1,
                        to_agent: to.into(),
                        to_version: 1,
                        by: format!("racer {h}"),
                        reason: None,
                    };
                    let req = crate::TransferRequest {
                        session_id: id.clone(),
                        fence: Fence::Client,
                        precondition: Precondition::Owns(from.into()),
                        from_agent: from.into(),
                        to_agent: to.into(),
                        turn_id: None,
                        events: vec![handoff.into()],
                    };
                    match store.transfer(req).await {
                        Ok(_) => counters[transferred].fetch_add(1, Ordering::SeqCst),
                        Err(StoreError::PreconditionFailed(_)) => counters[refused].fetch_add(1, Ordering::SeqCst),
                        Err(e) => panic!("{e}"),
                    };
                }
            }));
        }
        for b in 0..2u64 {
            let (store, id, turn, counters) = (store.clone(), id.clone(), turn.clone(), counters.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(run * 10_000 + b);
                for _ in 0..25 {
                    // The token first: a transfer after it makes the loan stale, whatever the state read next says.
                    let held = current_token(&store, &id, &turn).await;
                    let now = store.get_session(&id).await.unwrap().unwrap();
                    let (events, to) = match now.lenders.last() {
                        Some(lender) if rng.bool() => {
                            let back = EventData::BorrowCompleted {
                                turn_id: turn.clone(),
                                call_id: None,
                                lender: lender.clone(),
                                lender_version: 1,
                                borrower: now.agent.clone(),
                                status: agentrt_types::event::BorrowStatus::Completed,
                                steps: 0,
                                output: Some("done".into()),
                                error: None,
                            };
                            (vec![back.into()], lender.clone())
                        }
                        _ => {
                            let mut chain = now.lenders.clone();
                            chain.push(now.agent.clone());
                            let Some(to) = AGENTS.iter().find(|a| !chain.iter().any(|c| c == *a)).map(|a| a.to_string()) else { continue };
                            chain.push(to.clone());
                            let lend = EventData::BorrowStarted {
                                turn_id: turn.clone(),
                                call_id: None,
                                lender: now.agent.clone(),
                                lender_version: 1,
                                borrower: to.clone(),
                                borrower_version: 1,
                                input: "sub-task".into(),
                                chain,
                                max_steps: None,
                                deadline_ms: None,
                            };
                            (vec![lend.into()], to)
                        }
                    };
                    let req = crate::TransferRequest {
                        session_id: id.clone(),
                        fence: Fence::Lease { holder: "node".into(), token: held },
                        precondition: Precondition::AgentIs(now.agent.clone()),
                        from_agent: now.agent.clone(),
                        to_agent: to,
                        turn_id: Some(turn.clone()),
                        events,
                    };
                    match store.transfer(req).await {
                        Ok((appended, _)) => {
                            let loan = appended.iter().any(|e| matches!(e.body.data, EventData::BorrowStarted { .. }));
                            counters[if loan { lent } else { returned }].fetch_add(1, Ordering::SeqCst)
                        }
                        Err(StoreError::StaleFence { .. }) => counters[stale].fetch_add(1, Ordering::SeqCst),
                        Err(StoreError::PreconditionFailed(_)) => counters[refused].fetch_add(1, Ordering::SeqCst),
                        Err(e) => panic!("{e}"),
                    };
                }
            }));
        }
        {
            let (store, id) = (store.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..20 {
                    store.append(client(&id, vec![submit(&TurnId::generate(), None)])).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let n: Vec<usize> = counters.iter().map(|c| c.load(Ordering::SeqCst)).collect();
        for (total, this) in raced.iter_mut().zip(&n) {
            *total += this;
        }

        let (mut agent, mut lenders, mut current) = ("a".to_owned(), Vec::<String>::new(), token);
        let (mut accepted, mut transfers) = (0, 0);
        for e in store.read_events(&id, 0, 100_000).await.unwrap() {
            let seq = e.seq();
            match &e.body.data {
                EventData::HandoffCompleted { from_agent, to_agent, .. } => {
                    assert_eq!(from_agent, &agent, "run {run}: seq {seq} handed over from an agent not in control");
                    assert!(lenders.is_empty(), "run {run}: seq {seq} handed over a lent session");
                    agent = to_agent.clone();
                    transfers += 1;
                }
                EventData::BorrowStarted { lender, borrower, chain, .. } => {
                    assert_eq!(lender, &agent, "run {run}: seq {seq} lent by an agent not in control");
                    lenders.push(lender.clone());
                    agent = borrower.clone();
                    let mut expected = lenders.clone();
                    expected.push(agent.clone());
                    assert_eq!(chain, &expected, "run {run}: seq {seq} chain");
                    transfers += 1;
                }
                EventData::BorrowCompleted { lender, borrower, .. } => {
                    assert_eq!(borrower, &agent, "run {run}: seq {seq} given back by an agent not in control");
                    assert_eq!(Some(lender), lenders.last(), "run {run}: seq {seq} given back to an agent that did not lend it");
                    agent = lenders.pop().unwrap();
                    transfers += 1;
                }
                EventData::LeaseTransferred { old_token, new_token, to_agent, .. } => {
                    assert_eq!((*old_token, *new_token), (current, current + 1), "run {run}: seq {seq}");
                    assert_eq!(to_agent, &agent, "run {run}: seq {seq}");
                    current = *new_token;
                }
                EventData::Message { content, .. } => {
                    assert_eq!(content, &format!("token {current}"), "run {run}: seq {seq} was written with a stale token");
                    accepted += 1;
                }
                _ => {}
            }
        }
        assert_eq!(transfers, n[transferred] + n[lent] + n[returned], "run {run}: one event per accepted transfer");
        assert_eq!(current, token + transfers as u64, "run {run}");
        let summary = store.get_session(&id).await.unwrap().unwrap();
        assert_eq!((summary.agent, summary.lenders), (agent, lenders));
        assert!(accepted > 0);
    }
    assert!(raced.iter().all(|c| *c > 0), "the race did not happen (handed over, refused, stale, lent, returned: {raced:?})");
}}

fn lease_append(id: &SessionId, token: u64, events: Vec<agentrt_types::NewEvent>) -> AppendRequest {
    AppendRequest { session_id: id.clone(), fence: Fence::Lease { holder: "node".into(), token }, precondition: None, events }
}

/// The session's fencing token, as an executor learns it: from the store's
/// refusal of a write with a token that cannot be current.
async fn current_token(store: &SqlStore, id: &SessionId, turn: &TurnId) -> u64 {
    let probe = EventData::Message { turn_id: turn.clone(), content: "probe".into() };
    match store.append(lease_append(id, u64::MAX, vec![probe.into()])).await {
        Err(StoreError::StaleFence { current, .. }) => current,
        other => panic!("the probe was not refused: {other:?}"),
    }
}
