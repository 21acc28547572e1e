//! `agentrt approvals …`: list the tool calls waiting for a human, look at
//! one, approve or deny it.

use std::process::ExitCode;

use agentrt_types::time::now_ms;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use crate::commands::Ctx;
use crate::governance::{age, clip, print, text, time};
use crate::output;

#[derive(Subcommand)]
pub enum ApprovalsCommand {
    /// List approvals, newest first.
    List {
        /// pending, approved, denied, expired, cancelled, or all.
        #[arg(long, default_value = "pending")]
        status: String,
        /// Only this session's.
        #[arg(long)]
        session: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one approval with the call's arguments.
    Show { id: String },
    /// Let the call run.
    Approve {
        id: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Refuse the call; the model is told it was denied.
    Deny {
        id: String,
        #[arg(long)]
        comment: Option<String>,
    },
}

pub async fn approvals(ctx: &Ctx, cmd: ApprovalsCommand) -> anyhow::Result<ExitCode> {
    let c = ctx.client()?;
    let (id, decision, comment) = match cmd {
        ApprovalsCommand::List { status, session, limit } => {
            let mut req = c.request(Method::GET, "/v1/approvals").query(&[("limit", limit.to_string())]);
            if status != "all" {
                req = req.query(&[("status", status)]);
            }
            if let Some(s) = session {
                req = req.query(&[("session", s)]);
            }
            let v = c.send(req).await?;
            print(ctx, &v, |v| {
                let now = now_ms();
                let rows: Vec<Vec<String>> = v["approvals"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        vec![
                            text(&a["id"]).to_owned(),
                            text(&a["session_id"]).to_owned(),
                            clip(text(&a["tool"]), 40),
                            clip(text(&a["reason"]), 60),
                            text(&a["status"]).to_owned(),
                            age(&a["requested_ms"], now),
                        ]
                    })
                    .collect();
                output::table(&["ID", "SESSION", "TOOL", "REASON", "STATUS", "AGE"], &rows);
            });
            return Ok(ExitCode::SUCCESS);
        }
        ApprovalsCommand::Show { id } => {
            let v = c.get(&format!("/v1/approvals/{id}")).await?;
            print(ctx, &v, show);
            return Ok(ExitCode::SUCCESS);
        }
        ApprovalsCommand::Approve { id, comment } => (id, "approve", comment),
        ApprovalsCommand::Deny { id, comment } => (id, "deny", comment),
    };
    let v = c.post(&format!("/v1/approvals/{id}"), &json!({"decision": decision, "comment": comment})).await?;
    print(ctx, &v, |v| output::line(&format!("approval {} {}: {}", text(&v["id"]), text(&v["status"]), text(&v["tool"]))));
    Ok(ExitCode::SUCCESS)
}

fn show(a: &Value) {
    let now = now_ms();
    let field = |name: &str, value: &str| output::line(&format!("{:<10} {value}", format!("{name}:")));
    field("id", text(&a["id"]));
    field("status", text(&a["status"]));
    field("session", text(&a["session_id"]));
    field("turn", text(&a["turn_id"]));
    field("tool", &format!("{} (call {})", text(&a["tool"]), text(&a["call_id"])));
    field("arguments", &a["arguments"].to_string());
    field("reason", text(&a["reason"]));
    let policies: Vec<&str> = a["policies"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    field("policies", &if policies.is_empty() { "-".to_owned() } else { policies.join(", ") });
    field("requested", &format!("{} ({} ago)", time(&a["requested_ms"]), age(&a["requested_ms"], now)));
    if !a["expires_ms"].is_null() {
        field("expires", &time(&a["expires_ms"]));
    }
    if !a["decided_ms"].is_null() {
        field("decided", &format!("{} by {}", time(&a["decided_ms"]), text(&a["approver"])));
    }
    if let Some(comment) = a["comment"].as_str() {
        field("comment", comment);
    }
}
