//! Budgets and the spend they are checked against. Turn and session spend
//! come from the turn and session folds; day and month spend from
//! `spend_daily`, one row per tenant, agent and UTC day, kept in step with
//! the log in the same transaction as the events that spend, for tenants
//! that have at least one budget (from the moment they have one). The check runs
//! inside the writer's transaction, so two appends can never both take the
//! last of a budget.

use super::{args, parse, to_json, Db, Dialect};
use crate::StoreError;
use agentrt_types::budget::month_start_day;
use agentrt_types::{Budget, BudgetBreach, BudgetId, BudgetPeriod, BudgetScope, SessionSummary, Spend, TurnSummary};

const DAY_MS: i64 = 86_400_000;

pub fn create(tx: &dyn Db, budget: &Budget) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO budgets (id, tenant, body) VALUES (?1, ?2, ?3)",
        args![budget.id.as_str(), budget.tenant.as_str(), to_json(budget)?],
    )?;
    Ok(())
}

pub fn get(conn: &dyn Db, id: &BudgetId) -> Result<Option<Budget>, StoreError> {
    conn.text("SELECT body FROM budgets WHERE id = ?1", args![id.as_str()])?.map(|t| parse(&t, "budget")).transpose()
}

/// Whether the tenant has any budget.
pub fn tenant_has_any(conn: &dyn Db, tenant: &str) -> Result<bool, StoreError> {
    Ok(conn.row("SELECT 1 FROM budgets WHERE tenant = ?1 LIMIT 1", args![tenant])?.is_some())
}

/// Makes budget checks of a tenant wait for each other across nodes, so
/// that two nodes cannot both take the last of a budget (one writer per
/// node already serializes them within a node).
pub fn lock_tenant(tx: &dyn Db, tenant: &str) -> Result<(), StoreError> {
    if tx.dialect() == Dialect::Postgres {
        tx.rows("SELECT pg_advisory_xact_lock(hashtext(?1))::text", args![tenant])?;
    }
    Ok(())
}

/// A tenant's budgets, oldest first.
pub fn list(conn: &dyn Db, tenant: &str) -> Result<Vec<Budget>, StoreError> {
    let rows = conn.rows("SELECT body FROM budgets WHERE tenant = ?1 ORDER BY id", args![tenant])?;
    rows.iter().map(|r| parse(&r.text(0)?, "budget")).collect()
}

/// Sets a tenant's budget's limit; `None` if the tenant has no such budget.
pub fn set_limit(tx: &dyn Db, tenant: &str, id: &BudgetId, limit: f64, by: &str, now_ms: i64) -> Result<Option<Budget>, StoreError> {
    let Some(mut budget) = get(tx, id)?.filter(|b| b.tenant == tenant) else { return Ok(None) };
    budget.limit = limit;
    budget.updated_ms = now_ms;
    budget.updated_by = by.to_owned();
    tx.exec("UPDATE budgets SET body = ?2 WHERE id = ?1", args![id.as_str(), to_json(&budget)?])?;
    Ok(Some(budget))
}

/// Deletes a tenant's budget; `None` if the tenant has no such budget.
pub fn delete(tx: &dyn Db, tenant: &str, id: &BudgetId) -> Result<Option<Budget>, StoreError> {
    let Some(budget) = get(tx, id)?.filter(|b| b.tenant == tenant) else { return Ok(None) };
    tx.exec("DELETE FROM budgets WHERE id = ?1", args![id.as_str()])?;
    Ok(Some(budget))
}

/// Adds `spend` to the day containing `ts_ms` of a tenant's agent.
pub fn add_daily(tx: &dyn Db, tenant: &str, agent: &str, ts_ms: i64, spend: &Spend) -> Result<(), StoreError> {
    if spend.is_zero() {
        return Ok(());
    }
    tx.exec(
        "INSERT INTO spend_daily (tenant, day, agent, tokens, cost_usd, tool_calls, steps, sandbox_cpu_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (tenant, day, agent) DO UPDATE SET
           tokens = spend_daily.tokens + excluded.tokens, cost_usd = spend_daily.cost_usd + excluded.cost_usd,
           tool_calls = spend_daily.tool_calls + excluded.tool_calls, steps = spend_daily.steps + excluded.steps,
           sandbox_cpu_us = spend_daily.sandbox_cpu_us + excluded.sandbox_cpu_us",
        args![tenant, ts_ms.div_euclid(DAY_MS), agent, spend.tokens, spend.cost_usd, spend.tool_calls, spend.steps, spend.sandbox_cpu_us],
    )?;
    Ok(())
}

/// What a tenant (or one of its agents) spent in the day or month
/// containing `now_ms`; nothing for turn and session periods.
pub fn period_spend(conn: &dyn Db, tenant: &str, agent: Option<&str>, period: BudgetPeriod, now_ms: i64) -> Result<Spend, StoreError> {
    let today = now_ms.div_euclid(DAY_MS);
    let first = match period {
        BudgetPeriod::Day => today,
        BudgetPeriod::Month => month_start_day(now_ms),
        BudgetPeriod::Turn | BudgetPeriod::Session => return Ok(Spend::default()),
    };
    let r = conn
        .row(
            "SELECT CAST(COALESCE(SUM(tokens), 0) AS BIGINT), CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION),
                    CAST(COALESCE(SUM(tool_calls), 0) AS BIGINT), CAST(COALESCE(SUM(steps), 0) AS BIGINT),
                    CAST(COALESCE(SUM(sandbox_cpu_us), 0) AS BIGINT)
             FROM spend_daily WHERE tenant = ?1 AND day >= ?2 AND day <= ?3 AND (CAST(?4 AS TEXT) IS NULL OR agent = ?4)",
            args![tenant, first, today, agent],
        )?
        .ok_or_else(|| StoreError::Database("an aggregate answered no row".into()))?;
    Ok(Spend {
        tokens: r.int(0)? as u64,
        cost_usd: r.real(1)?,
        tool_calls: r.int(2)? as u64,
        steps: r.int(3)? as u64,
        sandbox_cpu_us: r.int(4)? as u64,
    })
}

/// Who is about to spend: a session (and its turn, when it has one), or a
/// tenant's API key calling the gateway directly.
pub struct Spender<'a> {
    pub tenant: &'a str,
    pub session: Option<&'a SessionSummary>,
    pub turn: Option<&'a TurnSummary>,
}

/// The first budget that refuses a call, if any, given `adding`: what the
/// write that starts the call spends (the call's own count, and e.g. the
/// tokens of the model answer that asked for it). Metrics counted when a
/// call starts refuse when the call would take them past the limit; the
/// others refuse once what was spent before the call has reached it.
pub fn breach(conn: &dyn Db, who: &Spender<'_>, adding: &Spend, now_ms: i64) -> Result<Option<BudgetBreach>, StoreError> {
    let budgets = list(conn, who.tenant)?;
    for b in budgets {
        let applies = match who.session {
            Some(s) => b.applies_to(&s.agent, s.id.as_str()),
            None => b.scope == BudgetScope::Tenant && matches!(b.period, BudgetPeriod::Day | BudgetPeriod::Month),
        };
        if !applies || who.turn.is_some_and(|t| t.overrides(&b.id)) {
            continue;
        }
        let before = match (b.period, b.scope) {
            (BudgetPeriod::Turn, _) => match who.turn {
                Some(t) => t.spend,
                None => continue,
            },
            (BudgetPeriod::Session, _) => match who.session {
                Some(s) => s.spend,
                None => continue,
            },
            (period, _) => period_spend(conn, who.tenant, b.counted_agent(), period, now_ms)?,
        };
        let (adding, spent) = (adding.get(b.metric), before.get(b.metric) + adding.get(b.metric));
        let refused = if b.metric.counted_at_start() { adding > 0.0 && spent > b.limit } else { spent >= b.limit };
        if refused {
            return Ok(Some(b.breach(spent, now_ms)));
        }
    }
    Ok(None)
}

/// The budget that refuses a gateway call now, if any: by a session (its
/// running turn's budgets included), or by the tenant's API key.
pub fn gateway_breach(
    conn: &dyn Db,
    tenant: &str,
    session: Option<&agentrt_types::SessionId>,
    now_ms: i64,
) -> Result<Option<BudgetBreach>, StoreError> {
    let summary = match session {
        Some(id) => super::read::get_session(conn, id)?,
        None => None,
    };
    let turn = match summary.as_ref().and_then(|s| s.running_turn.as_ref().map(|t| (&s.id, t))) {
        Some((sid, t)) => super::read::get_turn(conn, sid, t)?,
        None => None,
    };
    let who = Spender { tenant, session: summary.as_ref(), turn: turn.as_ref() };
    breach(conn, &who, &Spend::default(), now_ms)
}
