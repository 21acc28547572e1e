//! Usage accounting: one row per model call, written in the same
//! transaction as the call's `model.completed` event (loop calls) or on its
//! own (gateway calls), and totals grouped for reports.

use super::{args, Db};
use crate::{StoreError, UsageGroup, UsageQuery, UsageRecord, UsageRow};
use agentrt_types::{Event, EventData, SessionSummary, TurnId, Usage};

/// Records the usage of a model call of `session`: by its agent loop, or
/// through the gateway with its credential.
pub fn apply(tx: &dyn Db, session: &SessionSummary, event: &Event) -> Result<(), StoreError> {
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
pub fn record(tx: &dyn Db, r: &UsageRecord) -> Result<(), StoreError> {
    insert(tx, r)?;
    if !super::budgets::tenant_has_any(tx, &r.tenant)? {
        return Ok(());
    }
    let spend = agentrt_types::Spend { tokens: r.input_tokens + r.output_tokens, cost_usd: r.cost_usd, ..Default::default() };
    super::budgets::add_daily(tx, &r.tenant, &r.agent, r.ts_ms, &spend)
}

fn insert(tx: &dyn Db, r: &UsageRecord) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO model_usage (ts_ms, tenant, agent, session_id, turn_id, source, route, provider, model,
                                  input_tokens, output_tokens, cached_tokens, cost_usd, latency_us, estimated)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        args![
            r.ts_ms,
            r.tenant.as_str(),
            r.agent.as_str(),
            r.session_id.as_ref().map(|s| s.as_str()),
            r.turn_id.as_ref().map(|t| t.as_str()),
            r.source.as_str(),
            r.route.as_str(),
            r.provider.as_str(),
            r.model.as_str(),
            r.input_tokens,
            r.output_tokens,
            r.cached_tokens,
            r.cost_usd,
            r.latency_us,
            r.estimated,
        ],
    )?;
    Ok(())
}

/// Totals per group, biggest cost first.
pub fn summary(conn: &dyn Db, q: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
    let key = match q.group_by {
        UsageGroup::Tenant => "tenant",
        UsageGroup::Agent => "tenant || '/' || agent",
        UsageGroup::Session => "COALESCE(session_id, '(none)')",
        UsageGroup::Route => "route",
        UsageGroup::Model => "provider || '/' || model",
    };
    let sql = format!(
        "SELECT {key}, COUNT(*), CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT),
                CAST(SUM(cached_tokens) AS BIGINT), CAST(SUM(cost_usd) AS DOUBLE PRECISION), CAST(SUM(estimated) AS BIGINT)
         FROM model_usage WHERE (CAST(?1 AS TEXT) IS NULL OR tenant = ?1) AND ts_ms >= ?2 AND ts_ms < ?3
         GROUP BY 1 ORDER BY 6 DESC, 1"
    );
    let rows = conn.rows(&sql, args![q.tenant.as_deref(), q.from_ms, q.to_ms])?;
    rows.iter()
        .map(|r| {
            Ok(UsageRow {
                key: r.text(0)?,
                calls: r.int(1)? as u64,
                input_tokens: r.int(2)? as u64,
                output_tokens: r.int(3)? as u64,
                cached_tokens: r.int(4)? as u64,
                cost_usd: r.real(5)?,
                estimated_calls: r.int(6)? as u64,
            })
        })
        .collect()
}
