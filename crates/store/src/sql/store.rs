//! The [`Store`] over a SQL backend: writes go to the node's writer thread
//! (see [`super::writer`]), reads to a small pool of connections.

use std::sync::{mpsc, Arc, Mutex};

use agentrt_types::event::StoredRecord;
use agentrt_types::time::now_ms;
use agentrt_types::{
    AgentSpec, ApprovalId, Budget, BudgetBreach, BudgetId, BudgetPeriod, Event, KeyId, SessionId, SessionSummary, Spend, TurnId,
    TurnSummary,
};
use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::oneshot;

use super::writer::{self, WriteConn, WriteOp};
use super::{approvals, budgets, identity, nodes, read, usage, Db};
use crate::{
    AgentInfo, AgentVersion, ApiKey, AppendRequest, Approval, ApprovalFilter, NewSession, PolicyVersion, SessionFilter, Store, StoreError,
    Tenant, TransferRequest, UsageQuery, UsageRecord, UsageRow,
};

/// A read connection of some backend.
pub(crate) type ReadConn = Box<dyn Db + Send>;

/// Opens a read connection.
pub(crate) type OpenConn = Arc<dyn Fn() -> Result<ReadConn, StoreError> + Send + Sync>;

/// A pool of read connections, used on blocking threads.
#[derive(Clone)]
pub(crate) struct Readers {
    open: OpenConn,
    idle: Arc<Mutex<Vec<ReadConn>>>,
}

/// Read connections kept open when idle.
const MAX_IDLE: usize = 8;

impl Readers {
    pub fn new(open: OpenConn) -> Self {
        Readers { open, idle: Arc::new(Mutex::new(Vec::new())) }
    }

    /// Runs `f` with a read connection on a blocking thread. A connection
    /// whose query failed in the database is not kept.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Db) -> Result<T, StoreError> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match this.idle.lock().expect("reader pool lock poisoned").pop() {
                Some(c) => c,
                None => (this.open)()?,
            };
            let out = f(conn.as_ref());
            let mut idle = this.idle.lock().expect("reader pool lock poisoned");
            if idle.len() < MAX_IDLE && !matches!(out, Err(StoreError::Database(_))) {
                idle.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Database(format!("read task failed: {e}")))?
    }
}

/// A [`Store`] over SQL: SQLite (`crate::sqlite`) or PostgreSQL
/// (`crate::postgres`).
pub struct SqlStore {
    writer: mpsc::Sender<WriteOp>,
    readers: Readers,
    /// Starts listening to other nodes' appends (PostgreSQL).
    remote: Option<Listen>,
}

/// Starts listening to other nodes' appends.
pub(crate) type Listen = Box<dyn Fn() -> tokio::sync::mpsc::UnboundedReceiver<crate::RemoteAppend> + Send + Sync>;

impl SqlStore {
    /// Starts the writer thread on `conn`, reading through `open`.
    pub(crate) fn start(conn: impl WriteConn, open: OpenConn, remote: Option<Listen>) -> Result<SqlStore, StoreError> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer::run(conn, rx))
            .map_err(|e| StoreError::Database(format!("spawn writer thread: {e}")))?;
        Ok(SqlStore { writer: tx, readers: Readers::new(open), remote })
    }

    async fn write<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteOp) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer.send(make(tx)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on the writer thread inside the group transaction.
    async fn write_with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Db) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.write(|reply| WriteOp::run(None, f, reply)).await
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn put_agent(&self, tenant: &str, name: &str, spec: &AgentSpec) -> Result<AgentVersion, StoreError> {
        let (tenant, name, spec) = (tenant.to_owned(), name.to_owned(), Box::new(spec.clone()));
        self.write(|reply| WriteOp::PutAgent { tenant, name, spec, reply }).await
    }

    async fn get_agent(&self, tenant: &str, name: &str, version: Option<u32>) -> Result<Option<AgentVersion>, StoreError> {
        let (tenant, name) = (tenant.to_owned(), name.to_owned());
        self.readers.run(move |c| read::get_agent(c, &tenant, &name, version)).await
    }

    async fn list_agents(&self, tenant: &str) -> Result<Vec<AgentInfo>, StoreError> {
        let tenant = tenant.to_owned();
        self.readers.run(move |c| read::list_agents(c, &tenant)).await
    }

    async fn create_session(&self, new: NewSession) -> Result<(SessionSummary, Event), StoreError> {
        self.write(|reply| WriteOp::CreateSession { new, reply }).await
    }

    async fn get_session(&self, id: &SessionId) -> Result<Option<SessionSummary>, StoreError> {
        let id = id.clone();
        self.readers.run(move |c| read::get_session(c, &id)).await
    }

    async fn list_sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionSummary>, StoreError> {
        let filter = filter.clone();
        self.readers.run(move |c| read::list_sessions(c, &filter)).await
    }

    async fn count_sessions_by_status(&self) -> Result<Vec<(agentrt_types::SessionStatus, u64)>, StoreError> {
        self.readers.run(read::count_sessions_by_status).await
    }

    async fn append(&self, request: AppendRequest) -> Result<Vec<Event>, StoreError> {
        self.write(|reply| WriteOp::Append { request, reply }).await
    }

    async fn transfer(&self, request: TransferRequest) -> Result<(Vec<Event>, u64), StoreError> {
        let session = Some(request.session_id.clone());
        self.write(|reply| WriteOp::run(session, move |tx| writer::transfer(tx, request), reply)).await
    }

    async fn read_events(&self, id: &SessionId, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let id = id.clone();
        self.readers.run(move |c| read::read_events(c, &id, after, limit)).await
    }

    async fn read_records(&self, id: &SessionId) -> Result<Vec<StoredRecord>, StoreError> {
        let id = id.clone();
        self.readers.run(move |c| read::read_records(c, &id, 0, usize::MAX >> 1)).await
    }

    async fn get_turn(&self, session: &SessionId, turn: &TurnId) -> Result<Option<TurnSummary>, StoreError> {
        let (session, turn) = (session.clone(), turn.clone());
        self.readers.run(move |c| read::get_turn(c, &session, &turn)).await
    }

    async fn find_turn_by_key(&self, session: &SessionId, key: &str) -> Result<Option<TurnSummary>, StoreError> {
        let (session, key) = (session.clone(), key.to_owned());
        self.readers.run(move |c| read::find_turn_by_key(c, &session, &key)).await
    }

    async fn unfinished_turns(&self, session: &SessionId) -> Result<Vec<TurnSummary>, StoreError> {
        let session = session.clone();
        self.readers.run(move |c| read::unfinished_turns(c, &session)).await
    }

    async fn sessions_with_unfinished_turns(&self) -> Result<Vec<SessionId>, StoreError> {
        self.readers.run(read::sessions_with_unfinished_turns).await
    }

    async fn claimable_sessions(&self, now_ms: i64, limit: usize) -> Result<Vec<SessionId>, StoreError> {
        self.readers.run(move |c| read::claimable_sessions(c, now_ms, limit)).await
    }

    fn remote_appends(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<crate::RemoteAppend>> {
        self.remote.as_ref().map(|listen| listen())
    }

    async fn node_heartbeat(&self, node: &str, started_ms: i64, now_ms: i64) -> Result<crate::NodeInfo, StoreError> {
        let node = node.to_owned();
        self.write_with(move |tx| nodes::heartbeat(tx, &node, started_ms, now_ms)).await
    }

    async fn list_nodes(&self, now_ms: i64) -> Result<Vec<crate::NodeInfo>, StoreError> {
        self.readers.run(move |c| nodes::list(c, now_ms)).await
    }

    async fn set_node_draining(&self, node: &str, draining: bool, now_ms: i64) -> Result<Option<crate::NodeInfo>, StoreError> {
        let node = node.to_owned();
        self.write_with(move |tx| nodes::set_draining(tx, &node, draining, now_ms)).await
    }

    async fn acquire_lease(&self, session: &SessionId, holder: &str, ttl_ms: i64, force: bool) -> Result<Option<u64>, StoreError> {
        let (session, holder) = (session.clone(), holder.to_owned());
        self.write(|reply| WriteOp::AcquireLease { session, holder, ttl_ms, force, reply }).await
    }

    async fn release_lease(&self, session: &SessionId, holder: &str, token: u64) -> Result<(), StoreError> {
        let (session, holder) = (session.clone(), holder.to_owned());
        self.write(|reply| WriteOp::ReleaseLease { session, holder, token, reply }).await
    }

    async fn renew_leases(&self, holder: &str, ttl_ms: i64) -> Result<u64, StoreError> {
        let holder = holder.to_owned();
        self.write(|reply| WriteOp::RenewLeases { holder, ttl_ms, reply }).await
    }

    async fn kv_get(&self, session: &SessionId, key: &str) -> Result<Option<Value>, StoreError> {
        let (session, key) = (session.clone(), key.to_owned());
        self.readers.run(move |c| read::kv_get(c, &session, &key)).await
    }

    async fn kv_set(&self, session: &SessionId, key: &str, value: &Value) -> Result<(), StoreError> {
        let (session, key, value) = (session.clone(), key.to_owned(), value.clone());
        self.write(|reply| WriteOp::KvSet { session, key, value, reply }).await
    }

    async fn create_tenant(&self, name: &str) -> Result<Tenant, StoreError> {
        let name = name.to_owned();
        self.write_with(move |tx| identity::create_tenant(tx, &name)).await
    }

    async fn get_tenant(&self, name: &str) -> Result<Option<Tenant>, StoreError> {
        let name = name.to_owned();
        self.readers.run(move |c| identity::get_tenant(c, &name)).await
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        self.readers.run(identity::list_tenants).await
    }

    async fn set_tenant_limits(&self, name: &str, tool_calls_per_second: Option<f64>) -> Result<Option<Tenant>, StoreError> {
        let name = name.to_owned();
        self.write_with(move |tx| identity::set_tenant_limits(tx, &name, tool_calls_per_second)).await
    }

    async fn create_api_key(&self, key: &ApiKey, hash: &str) -> Result<(), StoreError> {
        let (key, hash) = (key.clone(), hash.to_owned());
        self.write_with(move |tx| identity::create_api_key(tx, &key, &hash)).await
    }

    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let hash = hash.to_owned();
        self.readers.run(move |c| identity::api_key_by_hash(c, &hash)).await
    }

    async fn list_api_keys(&self, tenant: &str) -> Result<Vec<ApiKey>, StoreError> {
        let tenant = tenant.to_owned();
        self.readers.run(move |c| identity::list_api_keys(c, &tenant)).await
    }

    async fn count_active_api_keys(&self) -> Result<u64, StoreError> {
        self.readers.run(identity::count_active_api_keys).await
    }

    async fn revoke_api_key(&self, tenant: &str, id: &KeyId) -> Result<Option<ApiKey>, StoreError> {
        let (tenant, id) = (tenant.to_owned(), id.clone());
        self.write_with(move |tx| identity::revoke_api_key(tx, &tenant, &id)).await
    }

    async fn put_policies(&self, tenant: &str, text: &str, schema: Option<&str>, by: &str) -> Result<PolicyVersion, StoreError> {
        let (tenant, text, schema, by) = (tenant.to_owned(), text.to_owned(), schema.map(str::to_owned), by.to_owned());
        self.write_with(move |tx| identity::put_policies(tx, &tenant, &text, schema.as_deref(), &by)).await
    }

    async fn get_policies(&self, tenant: &str, version: Option<u32>) -> Result<Option<PolicyVersion>, StoreError> {
        let tenant = tenant.to_owned();
        self.readers.run(move |c| identity::get_policies(c, &tenant, version)).await
    }

    async fn get_approval(&self, id: &ApprovalId) -> Result<Option<Approval>, StoreError> {
        let id = id.clone();
        self.readers.run(move |c| approvals::get(c, &id)).await
    }

    async fn list_approvals(&self, filter: &ApprovalFilter) -> Result<Vec<Approval>, StoreError> {
        let filter = filter.clone();
        self.readers.run(move |c| approvals::list(c, &filter)).await
    }

    async fn record_usage(&self, record: &UsageRecord) -> Result<(), StoreError> {
        let record = record.clone();
        self.write_with(move |tx| usage::record(tx, &record)).await
    }

    async fn usage_summary(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let query = query.clone();
        self.readers.run(move |c| usage::summary(c, &query)).await
    }

    async fn create_budget(&self, budget: &Budget) -> Result<(), StoreError> {
        let budget = budget.clone();
        self.write_with(move |tx| budgets::create(tx, &budget)).await
    }

    async fn get_budget(&self, id: &BudgetId) -> Result<Option<Budget>, StoreError> {
        let id = id.clone();
        self.readers.run(move |c| budgets::get(c, &id)).await
    }

    async fn list_budgets(&self, tenant: &str) -> Result<Vec<Budget>, StoreError> {
        let tenant = tenant.to_owned();
        self.readers.run(move |c| budgets::list(c, &tenant)).await
    }

    async fn set_budget_limit(&self, tenant: &str, id: &BudgetId, limit: f64, by: &str) -> Result<Option<Budget>, StoreError> {
        let (tenant, id, by) = (tenant.to_owned(), id.clone(), by.to_owned());
        self.write_with(move |tx| budgets::set_limit(tx, &tenant, &id, limit, &by, now_ms())).await
    }

    async fn delete_budget(&self, tenant: &str, id: &BudgetId) -> Result<Option<Budget>, StoreError> {
        let (tenant, id) = (tenant.to_owned(), id.clone());
        self.write_with(move |tx| budgets::delete(tx, &tenant, &id)).await
    }

    async fn period_spend(&self, tenant: &str, agent: Option<&str>, period: BudgetPeriod) -> Result<Spend, StoreError> {
        let (tenant, agent) = (tenant.to_owned(), agent.map(str::to_owned));
        self.readers.run(move |c| budgets::period_spend(c, &tenant, agent.as_deref(), period, now_ms())).await
    }

    async fn gateway_breach(&self, tenant: &str, session: Option<&SessionId>) -> Result<Option<BudgetBreach>, StoreError> {
        let (tenant, session) = (tenant.to_owned(), session.cloned());
        self.readers.run(move |c| budgets::gateway_breach(c, &tenant, session.as_ref(), now_ms())).await
    }

    async fn setting_or_init(&self, key: &str, init: &str) -> Result<String, StoreError> {
        let (key, init) = (key.to_owned(), init.to_owned());
        self.write_with(move |tx| identity::setting_or_init(tx, &key, &init)).await
    }
}
