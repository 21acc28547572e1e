//! `agentrt usage`: model tokens and cost, grouped.

use std::process::ExitCode;

use clap::ValueEnum;

use crate::audit::parse_time;
use crate::commands::Ctx;
use crate::output;

/// What usage totals are grouped by.
#[derive(Clone, Copy, ValueEnum)]
pub enum GroupBy {
    Tenant,
    Agent,
    Session,
    Route,
    Model,
}

impl GroupBy {
    fn as_str(self) -> &'static str {
        match self {
            GroupBy::Tenant => "tenant",
            GroupBy::Agent => "agent",
            GroupBy::Session => "session",
            GroupBy::Route => "route",
            GroupBy::Model => "model",
        }
    }
}

/// Prints the totals between `since` and `until` (unix ms or RFC 3339).
pub async fn usage(ctx: &Ctx, group_by: GroupBy, since: Option<&str>, until: Option<&str>) -> anyhow::Result<ExitCode> {
    let mut path = format!("/v1/usage?group_by={}", group_by.as_str());
    if let Some(t) = since {
        path.push_str(&format!("&from={}", parse_time(t)?));
    }
    if let Some(t) = until {
        path.push_str(&format!("&to={}", parse_time(t)?));
    }
    let v = ctx.client()?.get(&path).await?;
    if ctx.json {
        output::json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = v["usage"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let n = |k: &str| r[k].as_u64().unwrap_or(0).to_string();
            let estimated = r["estimated_calls"].as_u64().unwrap_or(0);
            vec![
                r["key"].as_str().unwrap_or("").to_owned(),
                n("calls"),
                n("input_tokens"),
                n("cached_tokens"),
                n("output_tokens"),
                format!("{:.6}", r["cost_usd"].as_f64().unwrap_or(0.0)),
                if estimated > 0 { format!("{estimated} estimated") } else { String::new() },
            ]
        })
        .collect();
    output::table(&[group_by.as_str(), "CALLS", "INPUT", "CACHED", "OUTPUT", "COST USD", ""], &rows);
    Ok(ExitCode::SUCCESS)
}
