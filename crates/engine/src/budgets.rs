//! Budgets: setting them, what has been spent against them, and waking the
//! turns they paused when they are raised, removed or overridden. The check
//! itself runs in the store, inside the append that starts a call.

use agentrt_gateway::CallRecord;
use agentrt_store::{Precondition, SessionFilter, StoreError, UsageRecord};
use agentrt_types::time::now_ms;
use agentrt_types::{
    Budget, BudgetBreach, BudgetId, BudgetMetric, BudgetPeriod, BudgetScope, EventData, Principal, SessionId, SessionStatus, Usage,
};
use serde::{Deserialize, Serialize};

use crate::{executor, Engine, EngineError};

/// Most paused sessions woken by one budget change; the rest wake at their
/// next timer or restart.
const MAX_WOKEN: usize = 10_000;

/// A budget to create.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBudget {
    pub scope: BudgetScope,
    #[serde(default)]
    pub target: Option<String>,
    pub metric: BudgetMetric,
    pub period: BudgetPeriod,
    pub limit: f64,
}

/// A budget with what has been spent against it in the current day or
/// month (turn and session budgets are per turn or session: see each
/// session's `spend`).
#[derive(Clone, Debug, Serialize)]
pub struct BudgetView {
    #[serde(flatten)]
    pub budget: Budget,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spent: Option<f64>,
}

impl Engine {
    /// Creates a budget for the caller's tenant.
    pub async fn create_budget(&self, by: &Principal, new: NewBudget) -> Result<BudgetView, EngineError> {
        if let Some(why) = Budget::invalid(new.scope, new.target.as_deref(), new.period, new.limit) {
            return Err(EngineError::InvalidInput(why));
        }
        let tenant = by.tenant();
        match (new.scope, new.target.as_deref()) {
            (BudgetScope::Agent, Some(agent)) if self.inner.store.get_agent(tenant, agent, None).await?.is_none() => {
                return Err(EngineError::InvalidInput(format!("agent {agent:?} not found; apply it first")));
            }
            (BudgetScope::Session, Some(raw)) => {
                let found = match SessionId::parse(raw) {
                    Some(id) => self.inner.store.get_session(&id).await?.filter(|s| s.tenant == tenant),
                    None => None,
                };
                if found.is_none() {
                    return Err(EngineError::InvalidInput(format!("session {raw:?} not found")));
                }
            }
            _ => {}
        }
        let now = now_ms();
        let budget = Budget {
            id: BudgetId::generate(),
            tenant: tenant.to_owned(),
            scope: new.scope,
            target: new.target,
            metric: new.metric,
            period: new.period,
            limit: new.limit,
            created_ms: now,
            updated_ms: now,
            updated_by: by.display(),
        };
        self.inner.store.create_budget(&budget).await?;
        self.inner.budget_tenants.clear();
        self.view(budget).await
    }

    pub async fn list_budgets(&self, tenant: &str) -> Result<Vec<BudgetView>, EngineError> {
        let mut out = Vec::new();
        for b in self.inner.store.list_budgets(tenant).await? {
            out.push(self.view(b).await?);
        }
        Ok(out)
    }

    /// A budget of the tenant; another tenant's is reported as not found.
    pub async fn get_budget(&self, tenant: &str, id: &BudgetId) -> Result<BudgetView, EngineError> {
        match self.inner.store.get_budget(id).await? {
            Some(b) if b.tenant == tenant => self.view(b).await,
            _ => Err(not_found(id)),
        }
    }

    /// Sets a budget's limit; turns it paused go on if it now allows them.
    pub async fn set_budget_limit(&self, by: &Principal, id: &BudgetId, limit: f64) -> Result<BudgetView, EngineError> {
        let current = self.get_budget(by.tenant(), id).await?.budget;
        if let Some(why) = Budget::invalid(current.scope, current.target.as_deref(), current.period, limit) {
            return Err(EngineError::InvalidInput(why));
        }
        let budget = self.inner.store.set_budget_limit(by.tenant(), id, limit, &by.display()).await?.ok_or_else(|| not_found(id))?;
        self.wake_paused(by.tenant()).await?;
        self.view(budget).await
    }

    /// Deletes a budget; turns it paused go on.
    pub async fn delete_budget(&self, by: &Principal, id: &BudgetId) -> Result<Budget, EngineError> {
        let budget = self.inner.store.delete_budget(by.tenant(), id).await?.ok_or_else(|| not_found(id))?;
        self.inner.budget_tenants.clear();
        self.wake_paused(by.tenant()).await?;
        Ok(budget)
    }

    /// Lets the session's running turn go past one budget (or every
    /// budget) until the turn ends, and wakes it.
    pub async fn override_budget(
        &self,
        by: &Principal,
        id: &SessionId,
        budget: Option<BudgetId>,
        comment: Option<String>,
    ) -> Result<agentrt_types::SessionSummary, EngineError> {
        let session = self.get_session(id).await?;
        if session.tenant != by.tenant() {
            return Err(EngineError::SessionNotFound(id.clone()));
        }
        if let Some(b) = &budget {
            self.get_budget(by.tenant(), b).await?;
        }
        let Some(turn) = session.running_turn.clone() else {
            return Err(EngineError::Conflict(format!("session {id} has no running turn to let past a budget")));
        };
        let event = EventData::BudgetOverridden { turn_id: turn.clone(), budget_id: budget, by: by.display(), comment };
        let pre = Precondition::TurnStatus(turn.clone(), agentrt_types::TurnStatus::Running);
        match self.client_append(id, Some(pre), vec![event.into()]).await {
            Ok(_) => {}
            Err(EngineError::Store(StoreError::PreconditionFailed(_))) => {
                return Err(EngineError::Conflict(format!("turn {turn} ended before the override")));
            }
            Err(e) => return Err(e),
        }
        executor::ensure_running(&self.inner, id);
        self.get_session(id).await
    }

    /// The budget that refuses a gateway call by `caller` now, if any.
    pub async fn gateway_breach(&self, caller: &Principal) -> Result<Option<BudgetBreach>, EngineError> {
        let tenant = caller.tenant();
        let has_budgets = match self.inner.budget_tenants.get(tenant) {
            Some(known) => known,
            None => {
                let has = !self.inner.store.list_budgets(tenant).await?.is_empty();
                self.inner.budget_tenants.insert(tenant, has);
                has
            }
        };
        if !has_budgets {
            return Ok(None);
        }
        let session = match caller {
            Principal::Session { session_id, .. } => Some(session_id),
            _ => None,
        };
        Ok(self.inner.store.gateway_breach(caller.tenant(), session).await?)
    }

    /// Records a gateway call: in the session's log (`gateway.called`) for
    /// a session credential, as the key's usage otherwise.
    pub async fn record_gateway_call(&self, caller: &Principal, call: CallRecord) -> Result<(), EngineError> {
        if let Principal::Session { session_id, .. } = caller {
            let usage = Usage { input_tokens: call.input_tokens, output_tokens: call.output_tokens, cached_tokens: call.cached_tokens };
            let event = EventData::GatewayCalled {
                route: call.route,
                provider: call.provider,
                model: call.model,
                usage,
                cost_usd: call.cost_usd,
                latency_us: call.latency_us,
                estimated: call.estimated,
            };
            self.client_append(session_id, None, vec![event.into()]).await?;
            return Ok(());
        }
        let agent = match caller {
            Principal::Key { name, .. } => format!("key:{name}"),
            _ => "dev".to_owned(),
        };
        let record = UsageRecord {
            ts_ms: now_ms(),
            tenant: caller.tenant().to_owned(),
            agent,
            session_id: None,
            turn_id: None,
            source: "gateway".into(),
            route: call.route,
            provider: call.provider,
            model: call.model,
            input_tokens: call.input_tokens,
            output_tokens: call.output_tokens,
            cached_tokens: call.cached_tokens,
            cost_usd: call.cost_usd,
            latency_us: call.latency_us,
            estimated: call.estimated,
        };
        Ok(self.inner.store.record_usage(&record).await?)
    }

    async fn view(&self, budget: Budget) -> Result<BudgetView, EngineError> {
        let spent = match budget.period {
            BudgetPeriod::Turn | BudgetPeriod::Session => None,
            period => Some(self.inner.store.period_spend(&budget.tenant, budget.counted_agent(), period).await?.get(budget.metric)),
        };
        Ok(BudgetView { spent, budget })
    }

    /// Gives every turn of the tenant paused by a budget another look.
    async fn wake_paused(&self, tenant: &str) -> Result<(), EngineError> {
        let filter = SessionFilter {
            tenant: Some(tenant.to_owned()),
            status: Some(SessionStatus::WaitingBudget),
            limit: MAX_WOKEN,
            ..Default::default()
        };
        for s in self.inner.store.list_sessions(&filter).await? {
            executor::ensure_running(&self.inner, &s.id);
        }
        Ok(())
    }
}

fn not_found(id: &BudgetId) -> EngineError {
    EngineError::NotFound(format!("budget {id} not found"))
}
