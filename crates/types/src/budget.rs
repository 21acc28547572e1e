//! Budgets: limits on what a session, an agent or a tenant may spend
//! (tokens, cost, tool calls, steps, sandbox CPU) per turn, session, day or
//! month, and the spend counters they are checked against. Days and months
//! are UTC calendar periods.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::{EventData, Usage};
use crate::ids::BudgetId;
use crate::message::ToolCall;

/// Whose spending a budget limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetScope {
    /// Every session of the tenant.
    Tenant,
    /// Every session of one agent (`target` is the agent's name).
    Agent,
    /// One session (`target` is its id).
    Session,
}

/// What a budget counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetMetric {
    /// Input plus output tokens of model calls.
    Tokens,
    /// Priced cost of model calls, in USD.
    CostUsd,
    /// Tool calls started.
    ToolCalls,
    /// Model calls and tool calls started.
    Steps,
    /// CPU time used by the session's sandbox while running tool calls, in seconds.
    SandboxCpuSeconds,
}

impl BudgetMetric {
    /// Counted when a call starts, so the check can include the call itself
    /// and such budgets are never exceeded. The others are known only once
    /// a call has ended and are checked against what was spent before it.
    pub fn counted_at_start(self) -> bool {
        matches!(self, BudgetMetric::ToolCalls | BudgetMetric::Steps)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BudgetMetric::Tokens => "tokens",
            BudgetMetric::CostUsd => "cost_usd",
            BudgetMetric::ToolCalls => "tool_calls",
            BudgetMetric::Steps => "steps",
            BudgetMetric::SandboxCpuSeconds => "sandbox_cpu_seconds",
        }
    }
}

/// Over which stretch of time a budget's spending is summed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    /// Each turn on its own.
    Turn,
    /// Each session on its own, over its whole life.
    Session,
    /// The current UTC day, over every session in scope.
    Day,
    /// The current UTC month, over every session in scope.
    Month,
}

impl BudgetPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Turn => "turn",
            BudgetPeriod::Session => "session",
            BudgetPeriod::Day => "day",
            BudgetPeriod::Month => "month",
        }
    }
}

/// One budget as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    pub id: BudgetId,
    pub tenant: String,
    pub scope: BudgetScope,
    /// The agent name or session id; absent for tenant budgets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub metric: BudgetMetric,
    pub period: BudgetPeriod,
    pub limit: f64,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// The principal that set the current limit.
    pub updated_by: String,
}

impl Budget {
    /// Why this combination cannot be a budget, if it cannot.
    pub fn invalid(scope: BudgetScope, target: Option<&str>, period: BudgetPeriod, limit: f64) -> Option<String> {
        if !(limit.is_finite() && limit >= 0.0) {
            return Some(format!("limit must be a number >= 0, not {limit}"));
        }
        match (scope, target) {
            (BudgetScope::Tenant, Some(_)) => return Some("a tenant budget has no target; leave it out".into()),
            (BudgetScope::Agent, None) => return Some("an agent budget needs a target: the agent's name".into()),
            (BudgetScope::Session, None) => return Some("a session budget needs a target: the session id".into()),
            _ => {}
        }
        if scope == BudgetScope::Session && matches!(period, BudgetPeriod::Day | BudgetPeriod::Month) {
            return Some("a session budget's period is turn or session; use an agent or tenant budget for day and month".into());
        }
        None
    }

    /// The agent whose day or month spend this budget counts: its target
    /// for an agent budget; `None` (every agent) otherwise.
    pub fn counted_agent(&self) -> Option<&str> {
        match self.scope {
            BudgetScope::Agent => self.target.as_deref(),
            BudgetScope::Tenant | BudgetScope::Session => None,
        }
    }

    /// This budget refusing a call, with `spent` in its period at `now_ms`.
    pub fn breach(&self, spent: f64, now_ms: i64) -> BudgetBreach {
        BudgetBreach {
            budget_id: self.id.clone(),
            scope: self.scope,
            target: self.target.clone(),
            metric: self.metric,
            period: self.period,
            limit: self.limit,
            spent,
            over_by: (spent - self.limit).max(0.0),
            resets_ms: period_end_ms(self.period, now_ms),
        }
    }

    /// Whether this budget applies to a session of `agent` with id `session`.
    pub fn applies_to(&self, agent: &str, session: &str) -> bool {
        match self.scope {
            BudgetScope::Tenant => true,
            BudgetScope::Agent => self.target.as_deref() == Some(agent),
            BudgetScope::Session => self.target.as_deref() == Some(session),
        }
    }
}

/// Spending, as counted for budgets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Spend {
    #[serde(default)]
    pub tokens: u64,
    #[serde(default)]
    pub cost_usd: f64,
    #[serde(default)]
    pub tool_calls: u64,
    #[serde(default)]
    pub steps: u64,
    #[serde(default)]
    pub sandbox_cpu_us: u64,
}

impl Spend {
    /// The spend one event adds.
    pub fn of(data: &EventData) -> Spend {
        match data {
            EventData::ModelRequested { .. } => Spend { steps: 1, ..Spend::default() },
            EventData::ToolRequested { .. } => Spend { steps: 1, tool_calls: 1, ..Spend::default() },
            EventData::ModelCompleted { usage, billing, .. } => {
                Spend { tokens: tokens(usage), cost_usd: billing.as_ref().map_or(0.0, |b| b.cost_usd), ..Spend::default() }
            }
            EventData::GatewayCalled { usage, cost_usd, .. } => Spend { tokens: tokens(usage), cost_usd: *cost_usd, ..Spend::default() },
            EventData::ToolCompleted { sandbox_cpu_us: Some(cpu), .. } => Spend { sandbox_cpu_us: *cpu, ..Spend::default() },
            _ => Spend::default(),
        }
    }

    pub fn add(&mut self, other: Spend) {
        self.tokens += other.tokens;
        self.cost_usd += other.cost_usd;
        self.tool_calls += other.tool_calls;
        self.steps += other.steps;
        self.sandbox_cpu_us += other.sandbox_cpu_us;
    }

    pub fn is_zero(&self) -> bool {
        *self == Spend::default()
    }

    /// The amount of `metric`, in the budget's unit.
    pub fn get(&self, metric: BudgetMetric) -> f64 {
        match metric {
            BudgetMetric::Tokens => self.tokens as f64,
            BudgetMetric::CostUsd => self.cost_usd,
            BudgetMetric::ToolCalls => self.tool_calls as f64,
            BudgetMetric::Steps => self.steps as f64,
            BudgetMetric::SandboxCpuSeconds => self.sandbox_cpu_us as f64 / 1e6,
        }
    }
}

fn tokens(u: &Usage) -> u64 {
    u.input_tokens + u.output_tokens
}

/// A budget that refused a call: which one and by how much.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BudgetBreach {
    pub budget_id: BudgetId,
    pub scope: BudgetScope,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub metric: BudgetMetric,
    pub period: BudgetPeriod,
    pub limit: f64,
    /// Spent in the period, counting the refused call for metrics counted
    /// when a call starts.
    pub spent: f64,
    /// How far `spent` is past `limit` (0 when it is exactly at it).
    pub over_by: f64,
    /// When the period rolls over and the budget frees up by itself (day
    /// and month budgets), Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_ms: Option<i64>,
}

impl fmt::Display for BudgetBreach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whose = match (&self.scope, &self.target) {
            (BudgetScope::Tenant, _) => "tenant".to_owned(),
            (scope, Some(t)) => format!("{} {t}", if *scope == BudgetScope::Agent { "agent" } else { "session" }),
            (_, None) => "session".to_owned(),
        };
        write!(
            f,
            "budget {} ({whose}, {} per {}) exceeded: limit {}, spent {} (over by {})",
            self.budget_id,
            self.metric.as_str(),
            self.period.as_str(),
            self.limit,
            round(self.spent),
            round(self.over_by)
        )
    }
}

fn round(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// A tool call held back by a budget: it gets its intent once the budget
/// allows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldCall {
    pub step: u32,
    pub call: ToolCall,
}

/// Unix ms at which the UTC day or month containing `now_ms` ends.
pub fn period_end_ms(period: BudgetPeriod, now_ms: i64) -> Option<i64> {
    const DAY_MS: i64 = 86_400_000;
    match period {
        BudgetPeriod::Turn | BudgetPeriod::Session => None,
        BudgetPeriod::Day => Some((now_ms.div_euclid(DAY_MS) + 1) * DAY_MS),
        BudgetPeriod::Month => {
            let (y, m, _) = civil_from_days(now_ms.div_euclid(DAY_MS));
            let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            Some(days_from_civil(y, m, 1) * DAY_MS)
        }
    }
}

/// Days since 1970-01-01 of the first day of the UTC month containing `now_ms`.
pub fn month_start_day(now_ms: i64) -> i64 {
    let (y, m, _) = civil_from_days(now_ms.div_euclid(86_400_000));
    days_from_civil(y, m, 1)
}

/// Year, month, day of a day number (days since 1970-01-01), proleptic
/// Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Day number of a calendar date; the inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_round_trips_and_periods_end_at_utc_boundaries() {
        for z in [-1000, 0, 59, 60, 365, 11_016, 20_000, 20_784] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        // 2026-11-27T05:00:00Z
        let now = 1_795_755_600_000;
        assert_eq!(civil_from_days(now / 86_400_000), (2026, 11, 27));
        assert_eq!(period_end_ms(BudgetPeriod::Day, now), Some(1_795_824_000_000)); // 2026-11-28
        assert_eq!(period_end_ms(BudgetPeriod::Month, now), Some(1_796_083_200_000)); // 2026-12-01
        assert_eq!(month_start_day(now), days_from_civil(2026, 11, 1));
        // December rolls into January.
        let dec = days_from_civil(2026, 12, 31) * 86_400_000;
        assert_eq!(period_end_ms(BudgetPeriod::Month, dec), Some(days_from_civil(2027, 1, 1) * 86_400_000));
        assert_eq!(period_end_ms(BudgetPeriod::Turn, now), None);
    }

    #[test]
    fn invalid_budgets_are_explained() {
        assert!(Budget::invalid(BudgetScope::Tenant, None, BudgetPeriod::Day, 10.0).is_none());
        assert!(Budget::invalid(BudgetScope::Tenant, None, BudgetPeriod::Day, -1.0).unwrap().contains(">= 0"));
        assert!(Budget::invalid(BudgetScope::Agent, None, BudgetPeriod::Day, 1.0).unwrap().contains("agent's name"));
        assert!(Budget::invalid(BudgetScope::Session, Some("ses_x"), BudgetPeriod::Month, 1.0).unwrap().contains("turn or session"));
    }
}
