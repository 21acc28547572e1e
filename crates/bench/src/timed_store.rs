//! A [`Store`] wrapper that records when each append committed, so the
//! benchmark can measure append-to-client latency precisely.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use agentrt_store::{
    AgentInfo, AgentVersion, ApiKey, AppendRequest, Approval, ApprovalFilter, NewSession, PolicyVersion, SessionFilter, Store, StoreError,
    Tenant, UsageQuery, UsageRecord, UsageRow,
};
use agentrt_types::event::StoredRecord;
use agentrt_types::{
    AgentSpec, ApprovalId, Budget, BudgetBreach, BudgetId, BudgetPeriod, Event, KeyId, SessionId, SessionSummary, Spend, TurnId,
    TurnSummary,
};
use async_trait::async_trait;
use serde_json::Value;

/// Commit instants by (session, seq).
pub type Commits = Arc<Mutex<HashMap<(SessionId, u64), Instant>>>;

pub struct TimedStore {
    pub inner: Arc<dyn Store>,
    pub commits: Commits,
}

#[async_trait]
impl Store for TimedStore {
    async fn append(&self, request: AppendRequest) -> Result<Vec<Event>, StoreError> {
        let events = self.inner.append(request).await?;
        let now = Instant::now();
        let mut c = self.commits.lock().expect("commits lock");
        for e in &events {
            c.insert((e.body.session_id.clone(), e.seq()), now);
        }
        Ok(events)
    }
    async fn put_agent(&self, tenant: &str, name: &str, spec: &AgentSpec) -> Result<AgentVersion, StoreError> {
        self.inner.put_agent(tenant, name, spec).await
    }
    async fn get_agent(&self, tenant: &str, name: &str, version: Option<u32>) -> Result<Option<AgentVersion>, StoreError> {
        self.inner.get_agent(tenant, name, version).await
    }
    async fn list_agents(&self, tenant: &str) -> Result<Vec<AgentInfo>, StoreError> {
        self.inner.list_agents(tenant).await
    }
    async fn create_session(&self, new: NewSession) -> Result<(SessionSummary, Event), StoreError> {
        self.inner.create_session(new).await
    }
    async fn get_session(&self, id: &SessionId) -> Result<Option<SessionSummary>, StoreError> {
        self.inner.get_session(id).await
    }
    async fn count_sessions_by_status(&self) -> Result<Vec<(agentrt_types::SessionStatus, u64)>, StoreError> {
        self.inner.count_sessions_by_status().await
    }
    async fn list_sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionSummary>, StoreError> {
        self.inner.list_sessions(filter).await
    }
    async fn read_events(&self, id: &SessionId, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.inner.read_events(id, after, limit).await
    }
    async fn read_records(&self, id: &SessionId) -> Result<Vec<StoredRecord>, StoreError> {
        self.inner.read_records(id).await
    }
    async fn get_turn(&self, session: &SessionId, turn: &TurnId) -> Result<Option<TurnSummary>, StoreError> {
        self.inner.get_turn(session, turn).await
    }
    async fn find_turn_by_key(&self, session: &SessionId, key: &str) -> Result<Option<TurnSummary>, StoreError> {
        self.inner.find_turn_by_key(session, key).await
    }
    async fn unfinished_turns(&self, session: &SessionId) -> Result<Vec<TurnSummary>, StoreError> {
        self.inner.unfinished_turns(session).await
    }
    async fn sessions_with_unfinished_turns(&self) -> Result<Vec<SessionId>, StoreError> {
        self.inner.sessions_with_unfinished_turns().await
    }
    async fn node_heartbeat(&self, node: &str, started_ms: i64, now_ms: i64) -> Result<agentrt_store::NodeInfo, StoreError> {
        self.inner.node_heartbeat(node, started_ms, now_ms).await
    }
    async fn list_nodes(&self, now_ms: i64) -> Result<Vec<agentrt_store::NodeInfo>, StoreError> {
        self.inner.list_nodes(now_ms).await
    }
    async fn set_node_draining(&self, node: &str, draining: bool, now_ms: i64) -> Result<Option<agentrt_store::NodeInfo>, StoreError> {
        self.inner.set_node_draining(node, draining, now_ms).await
    }
    async fn claimable_sessions(&self, now_ms: i64, limit: usize) -> Result<Vec<SessionId>, StoreError> {
        self.inner.claimable_sessions(now_ms, limit).await
    }
    async fn acquire_lease(&self, session: &SessionId, holder: &str, ttl_ms: i64, force: bool) -> Result<Option<u64>, StoreError> {
        self.inner.acquire_lease(session, holder, ttl_ms, force).await
    }
    async fn release_lease(&self, session: &SessionId, holder: &str, token: u64) -> Result<(), StoreError> {
        self.inner.release_lease(session, holder, token).await
    }
    async fn renew_leases(&self, holder: &str, ttl_ms: i64) -> Result<u64, StoreError> {
        self.inner.renew_leases(holder, ttl_ms).await
    }
    async fn kv_get(&self, session: &SessionId, key: &str) -> Result<Option<Value>, StoreError> {
        self.inner.kv_get(session, key).await
    }
    async fn kv_set(&self, session: &SessionId, key: &str, value: &Value) -> Result<(), StoreError> {
        self.inner.kv_set(session, key, value).await
    }
    async fn create_tenant(&self, name: &str) -> Result<Tenant, StoreError> {
        self.inner.create_tenant(name).await
    }
    async fn get_tenant(&self, name: &str) -> Result<Option<Tenant>, StoreError> {
        self.inner.get_tenant(name).await
    }
    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        self.inner.list_tenants().await
    }
    async fn set_tenant_limits(&self, name: &str, tool_calls_per_second: Option<f64>) -> Result<Option<Tenant>, StoreError> {
        self.inner.set_tenant_limits(name, tool_calls_per_second).await
    }
    async fn create_api_key(&self, key: &ApiKey, hash: &str) -> Result<(), StoreError> {
        self.inner.create_api_key(key, hash).await
    }
    async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        self.inner.api_key_by_hash(hash).await
    }
    async fn list_api_keys(&self, tenant: &str) -> Result<Vec<ApiKey>, StoreError> {
        self.inner.list_api_keys(tenant).await
    }
    async fn count_active_api_keys(&self) -> Result<u64, StoreError> {
        self.inner.count_active_api_keys().await
    }
    async fn revoke_api_key(&self, tenant: &str, id: &KeyId) -> Result<Option<ApiKey>, StoreError> {
        self.inner.revoke_api_key(tenant, id).await
    }
    async fn put_policies(&self, tenant: &str, text: &str, schema: Option<&str>, by: &str) -> Result<PolicyVersion, StoreError> {
        self.inner.put_policies(tenant, text, schema, by).await
    }
    async fn get_policies(&self, tenant: &str, version: Option<u32>) -> Result<Option<PolicyVersion>, StoreError> {
        self.inner.get_policies(tenant, version).await
    }
    async fn get_approval(&self, id: &ApprovalId) -> Result<Option<Approval>, StoreError> {
        self.inner.get_approval(id).await
    }
    async fn list_approvals(&self, filter: &ApprovalFilter) -> Result<Vec<Approval>, StoreError> {
        self.inner.list_approvals(filter).await
    }
    async fn record_usage(&self, record: &UsageRecord) -> Result<(), StoreError> {
        self.inner.record_usage(record).await
    }
    async fn usage_summary(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        self.inner.usage_summary(query).await
    }
    async fn create_budget(&self, budget: &Budget) -> Result<(), StoreError> {
        self.inner.create_budget(budget).await
    }
    async fn get_budget(&self, id: &BudgetId) -> Result<Option<Budget>, StoreError> {
        self.inner.get_budget(id).await
    }
    async fn list_budgets(&self, tenant: &str) -> Result<Vec<Budget>, StoreError> {
        self.inner.list_budgets(tenant).await
    }
    async fn set_budget_limit(&self, tenant: &str, id: &BudgetId, limit: f64, by: &str) -> Result<Option<Budget>, StoreError> {
        self.inner.set_budget_limit(tenant, id, limit, by).await
    }
    async fn delete_budget(&self, tenant: &str, id: &BudgetId) -> Result<Option<Budget>, StoreError> {
        self.inner.delete_budget(tenant, id).await
    }
    async fn period_spend(&self, tenant: &str, agent: Option<&str>, period: BudgetPeriod) -> Result<Spend, StoreError> {
        self.inner.period_spend(tenant, agent, period).await
    }
    async fn gateway_breach(&self, tenant: &str, session: Option<&SessionId>) -> Result<Option<BudgetBreach>, StoreError> {
        self.inner.gateway_breach(tenant, session).await
    }
    async fn transfer(&self, request: agentrt_store::TransferRequest) -> Result<(Vec<Event>, u64), StoreError> {
        self.inner.transfer(request).await
    }
    async fn setting_or_init(&self, key: &str, init: &str) -> Result<String, StoreError> {
        self.inner.setting_or_init(key, init).await
    }
}
