//! Budgets and the spend they are checked against. Turn and session spend
//! come from the turn and session folds; day and month spend from
//! `spend_daily`, one row per tenant, agent and UTC day, kept in step with
//! the log in the same transaction as the events that spend, for tenants
//! that have at least one budget (from the moment they have one). The check runs
//! inside the writer's transaction, so two appends can never both take the
//! last of a budget.

use agentrt_types::budget::month_start_day;
use agentrt_types::{Budget, BudgetBreach, BudgetId, BudgetPeriod, BudgetScope, SessionSummary, Spend, TurnSummary};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::schema::db;
use super::writer::to_json;
use crate::StoreError;

const DAY_MS: i64 = 86_400_000;

fn decode(text: String) -> Result<Budget, StoreError> {
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("budget: {e}")))
}

pub fn create(tx: &Transaction<'_>, budget: &Budget) -> Result<(), StoreError> {
    tx.execute("INSERT INTO budgets (id, tenant, body) VALUES (?1, ?2, ?3)", params![budget.id.as_str(), budget.tenant, to_json(budget)?])
        .map_err(db)?;
    Ok(())
}

pub fn get(conn: &Connection, id: &BudgetId) -> Result<Option<Budget>, StoreError> {
    let text: Option<String> =
        conn.query_row("SELECT body FROM budgets WHERE id = ?1", params![id.as_str()], |r| r.get(0)).optional().map_err(db)?;
    text.map(decode).transpose()
}

/// Whether the tenant has any budget.
pub fn tenant_has_any(conn: &Connection, tenant: &str) -> Result<bool, StoreError> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM budgets WHERE tenant = ?1)")
        .map_err(db)?
        .query_row(params![tenant], |r| r.get(0))
        .map_err(db)
}

/// A tenant's budgets, oldest first.
pub fn list(conn: &Connection, tenant: &str) -> Result<Vec<Budget>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT body FROM budgets WHERE tenant = ?1 ORDER BY id").map_err(db)?;
    let rows = stmt.query_map(params![tenant], |r| r.get::<_, String>(0)).map_err(db)?;
    rows.map(|r| r.map_err(db).and_then(decode)).collect()
}

/// Sets a tenant's budget's limit; `None` if the tenant has no such budget.
pub fn set_limit(
    tx: &Transaction<'_>,
    tenant: &str,
    id: &BudgetId,
    limit: f64,
    by: &str,
    now_ms: i64,
) -> Result<Option<Budget>, StoreError> {
    let Some(mut budget) = get(tx, id)?.filter(|b| b.tenant == tenant) else { return Ok(None) };
    budget.limit = limit;
    budget.updated_ms = now_ms;
    budget.updated_by = by.to_owned();
    tx.execute("UPDATE budgets SET body = ?2 WHERE id = ?1", params![id.as_str(), to_json(&budget)?]).map_err(db)?;
    Ok(Some(budget))
}

/// Deletes a tenant's budget; `None` if the tenant has no such budget.
pub fn delete(tx: &Transaction<'_>, tenant: &str, id: &BudgetId) -> Result<Option<Budget>, StoreError> {
    let Some(budget) = get(tx, id)?.filter(|b| b.tenant == tenant) else { return Ok(None) };
    tx.execute("DELETE FROM budgets WHERE id = ?1", params![id.as_str()]).map_err(db)?;
    Ok(Some(budget))
}

/// Adds `spend` to the day containing `ts_ms` of a tenant's agent.
pub fn add_daily(tx: &Transaction<'_>, tenant: &str, agent: &str, ts_ms: i64, spend: &Spend) -> Result<(), StoreError> {
    if spend.is_zero() {
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO spend_daily (tenant, day, agent, tokens, cost_usd, tool_calls, steps, sandbox_cpu_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (tenant, day, agent) DO UPDATE SET
           tokens = tokens + excluded.tokens, cost_usd = cost_usd + excluded.cost_usd,
           tool_calls = tool_calls + excluded.tool_calls, steps = steps + excluded.steps,
           sandbox_cpu_us = sandbox_cpu_us + excluded.sandbox_cpu_us",
    )
    .map_err(db)?
    .execute(params![
        tenant,
        ts_ms.div_euclid(DAY_MS),
        agent,
        spend.tokens as i64,
        spend.cost_usd,
        spend.tool_calls as i64,
        spend.steps as i64,
        spend.sandbox_cpu_us as i64
    ])
    .map_err(db)?;
    Ok(())
}

/// What a tenant (or one of its agents) spent in the day or month
/// containing `now_ms`; nothing for turn and session periods.
pub fn period_spend(conn: &Connection, tenant: &str, agent: Option<&str>, period: BudgetPeriod, now_ms: i64) -> Result<Spend, StoreError> {
    let today = now_ms.div_euclid(DAY_MS);
    let first = match period {
        BudgetPeriod::Day => today,
        BudgetPeriod::Month => month_start_day(now_ms),
        BudgetPeriod::Turn | BudgetPeriod::Session => return Ok(Spend::default()),
    };
    conn.prepare_cached(
        "SELECT COALESCE(SUM(tokens), 0), COALESCE(SUM(cost_usd), 0), COALESCE(SUM(tool_calls), 0), COALESCE(SUM(steps), 0),
                COALESCE(SUM(sandbox_cpu_us), 0)
         FROM spend_daily WHERE tenant = ?1 AND day >= ?2 AND day <= ?3 AND (?4 IS NULL OR agent = ?4)",
    )
    .map_err(db)?
    .query_row(params![tenant, first, today, agent], |r| {
        Ok(Spend {
            tokens: r.get::<_, i64>(0)? as u64,
            cost_usd: r.get(1)?,
            tool_calls: r.get::<_, i64>(2)? as u64,
            steps: r.get::<_, i64>(3)? as u64,
            sandbox_cpu_us: r.get::<_, i64>(4)? as u64,
        })
    })
    .map_err(db)
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
pub fn breach(conn: &Connection, who: &Spender<'_>, adding: &Spend, now_ms: i64) -> Result<Option<BudgetBreach>, StoreError> {
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
    conn: &Connection,
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
