//! Usage accounting: one row per model call, written in the same
//! transaction as the call's `model.completed` event (loop calls) or on its
//! own (gateway calls), and totals grouped for reports.

use agentrt_types::{Event, EventData, SessionSummary, TurnId, Usage};
use rusqlite::{params, Connection, Transaction};

use super::schema::db;
use crate::{StoreError, UsageGroup, UsageQuery, UsageRecord, UsageRow};

/// Records the usage of a model call of `session`: by its agent loop, or
/// through the gateway with its credential.
pub fn apply(tx: &Transaction<'_>, session: &SessionSummary, event: &Event) -> Result<(), StoreError> {
    let record = |turn_id: Option<&TurnId>, source: &str, route: &str, (provider, model): (&str, &str), usage: &Usage| UsageRecord {
        ts_ms: event.body.ts,
        tenant: session.tenant.clone(),
        agent: session.agent.clone(),
        session_id: Some(session.id.clone()),
        turn_id: turn_id.cloned(),
        source: source.into(),
        route: route.into(),
        provider: provider.into(),
        model: model.into(),
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cached_tokens: usage.cached_tokens,
        cost_usd: 0.0,
        latency_us: 0,
        estimated: false,
    };
    let row = match &event.body.data {
        EventData::GatewayCalled { route, provider, model, usage, cost_usd, latency_us, estimated } => UsageRecord {
            cost_usd: *cost_usd,
            latency_us: *latency_us,
            estimated: *estimated,
            ..record(None, "gateway", route, (provider, model), usage)
        },
        EventData::ModelCompleted { turn_id, usage, latency_us, billing: Some(b), .. } => UsageRecord {
            cost_usd: b.cost_usd,
            latency_us: *latency_us,
            ..record(Some(turn_id), "loop", &b.provider, (&b.provider, &b.model), usage)
        },
        _ => return Ok(()),
    };
    insert(tx, &row)
}

/// Records a gateway call made outside any session (with an API key),
/// counted toward its tenant's day and month budgets.
pub fn record(tx: &Transaction<'_>, r: &UsageRecord) -> Result<(), StoreError> {
    insert(tx, r)?;
    if !super::budgets::tenant_has_any(tx, &r.tenant)? {
        return Ok(());
    }
    let spend = agentrt_types::Spend { tokens: r.input_tokens + r.output_tokens, cost_usd: r.cost_usd, ..Default::default() };
    super::budgets::add_daily(tx, &r.tenant, &r.agent, r.ts_ms, &spend)
}

fn insert(tx: &Transaction<'_>, r: &UsageRecord) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO model_usage (ts_ms, tenant, agent, session_id, turn_id, source, route, provider, model,
                                  input_tokens, output_tokens, cached_tokens, cost_usd, latency_us, estimated)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )
    .map_err(db)?
    .execute(params![
        r.ts_ms,
        r.tenant,
        r.agent,
        r.session_id.as_ref().map(|s| s.as_str()),
        r.turn_id.as_ref().map(|t| t.as_str()),
        r.source,
        r.route,
        r.provider,
        r.model,
        r.input_tokens as i64,
        r.output_tokens as i64,
        r.cached_tokens as i64,
        r.cost_usd,
        r.latency_us as i64,
        r.estimated,
    ])
    .map_err(db)?;
    Ok(())
}

/// Totals per group, biggest cost first.
pub fn summary(conn: &Connection, q: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
    let key = match q.group_by {
        UsageGroup::Tenant => "tenant",
        UsageGroup::Agent => "tenant || '/' || agent",
        UsageGroup::Session => "COALESCE(session_id, '(none)')",
        UsageGroup::Route => "route",
        UsageGroup::Model => "provider || '/' || model",
    };
    let sql = format!(
        "SELECT {key}, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cached_tokens), SUM(cost_usd), SUM(estimated)
         FROM model_usage WHERE (?1 IS NULL OR tenant = ?1) AND ts_ms >= ?2 AND ts_ms < ?3
         GROUP BY 1 ORDER BY 6 DESC, 1"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(db)?;
    let rows = stmt
        .query_map(params![q.tenant, q.from_ms, q.to_ms], |r| {
            Ok(UsageRow {
                key: r.get(0)?,
                calls: r.get::<_, i64>(1)? as u64,
                input_tokens: r.get::<_, i64>(2)? as u64,
                output_tokens: r.get::<_, i64>(3)? as u64,
                cached_tokens: r.get::<_, i64>(4)? as u64,
                cost_usd: r.get(5)?,
                estimated_calls: r.get::<_, i64>(6)? as u64,
            })
        })
        .map_err(db)?;
    rows.map(|r| r.map_err(db)).collect()
}
