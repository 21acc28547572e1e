//! `agentrt budgets …`: set, list, raise and remove budgets, and let a
//! paused turn go past one.

use std::process::ExitCode;

use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use crate::commands::Ctx;
use crate::governance::{print, text};
use crate::output;

#[derive(Subcommand)]
pub enum BudgetsCommand {
    /// List the tenant's budgets with what was spent this day or month.
    List,
    /// Create a budget.
    Create {
        /// tenant, agent or session.
        #[arg(long)]
        scope: String,
        /// The agent name (agent scope) or session id (session scope).
        #[arg(long)]
        target: Option<String>,
        /// tokens, cost_usd, tool_calls, steps or sandbox_cpu_seconds.
        #[arg(long)]
        metric: String,
        /// turn, session, day or month.
        #[arg(long)]
        period: String,
        #[arg(long, allow_negative_numbers = true)]
        limit: f64,
    },
    /// Change a budget's limit; turns it paused go on if it now allows them.
    Set {
        id: String,
        #[arg(long, allow_negative_numbers = true)]
        limit: f64,
    },
    /// Remove a budget; turns it paused go on.
    Delete { id: String },
    /// Let a session's running turn go past a budget (every budget without
    /// --budget) until the turn ends.
    Override {
        session: String,
        #[arg(long)]
        budget: Option<String>,
        #[arg(long)]
        comment: Option<String>,
    },
}

pub async fn budgets(ctx: &Ctx, cmd: BudgetsCommand) -> anyhow::Result<ExitCode> {
    let c = ctx.client()?;
    let v = match cmd {
        BudgetsCommand::List => {
            let v = c.get("/v1/budgets").await?;
            print(ctx, &v, |v| {
                let rows: Vec<Vec<String>> = v["budgets"].as_array().into_iter().flatten().map(row).collect();
                output::table(&["ID", "SCOPE", "TARGET", "METRIC", "PERIOD", "LIMIT", "SPENT"], &rows);
            });
            return Ok(ExitCode::SUCCESS);
        }
        BudgetsCommand::Create { scope, target, metric, period, limit } => {
            let body = json!({"scope": scope, "target": target, "metric": metric, "period": period, "limit": limit});
            c.post("/v1/budgets", &body).await?
        }
        BudgetsCommand::Set { id, limit } => {
            c.send(c.request(Method::PATCH, &format!("/v1/budgets/{id}")).json(&json!({"limit": limit}))).await?
        }
        BudgetsCommand::Delete { id } => c.send(c.request(Method::DELETE, &format!("/v1/budgets/{id}"))).await?,
        BudgetsCommand::Override { session, budget, comment } => {
            let body = json!({"budget_id": budget, "comment": comment});
            let v = c.post(&format!("/v1/sessions/{session}/budget-override"), &body).await?;
            let what = budget.as_deref().map_or_else(|| "every budget".to_owned(), |b| format!("budget {b}"));
            print(ctx, &v, |v| {
                output::line(&format!("turn {} of session {} may go past {what} until it ends", text(&v["running_turn"]), text(&v["id"])))
            });
            return Ok(ExitCode::SUCCESS);
        }
    };
    print(ctx, &v, |v| output::table(&["ID", "SCOPE", "TARGET", "METRIC", "PERIOD", "LIMIT", "SPENT"], &[row(v)]));
    Ok(ExitCode::SUCCESS)
}

fn row(b: &Value) -> Vec<String> {
    let num = |v: &Value| v.as_f64().map_or("-".to_owned(), |n| format!("{}", (n * 1e6).round() / 1e6));
    vec![
        text(&b["id"]).to_owned(),
        text(&b["scope"]).to_owned(),
        text(&b["target"]).to_owned(),
        text(&b["metric"]).to_owned(),
        text(&b["period"]).to_owned(),
        num(&b["limit"]),
        num(&b["spent"]),
    ]
}
