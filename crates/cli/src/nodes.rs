//! `agentrt node …`: the cluster's nodes, and draining one.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Value};

use crate::commands::Ctx;
use crate::governance::{print, text, time};
use crate::output;

#[derive(Subcommand)]
pub enum NodeCommand {
    /// List the nodes on this server's store, their leases and health.
    List,
    /// Drain a node: its sessions move to other nodes at their next turn
    /// boundary and it takes no new ones (before taking it down).
    Drain {
        id: String,
        /// Let the node take sessions again.
        #[arg(long)]
        undo: bool,
    },
}

fn row(n: &Value) -> Vec<String> {
    let this = if n["this_node"].as_bool() == Some(true) { " (this)" } else { "" };
    vec![
        format!("{}{this}", text(&n["id"])),
        text(&n["status"]).to_owned(),
        n["leases"].to_string(),
        time(&n["heartbeat_ms"]),
        time(&n["started_ms"]),
    ]
}

pub async fn node(ctx: &Ctx, cmd: NodeCommand) -> anyhow::Result<ExitCode> {
    let c = ctx.client()?;
    match cmd {
        NodeCommand::List => {
            let v = c.get("/v1/nodes").await?;
            print(ctx, &v, |v| {
                let rows: Vec<Vec<String>> = v["nodes"].as_array().into_iter().flatten().map(row).collect();
                output::table(&["NODE", "STATUS", "LEASES", "HEARTBEAT", "STARTED"], &rows);
            });
        }
        NodeCommand::Drain { id, undo } => {
            let path = format!("/v1/nodes/{id}/drain");
            let v = if undo { c.send(c.request(reqwest::Method::DELETE, &path)).await? } else { c.post(&path, &json!({})).await? };
            print(ctx, &v, |v| output::line(&format!("node {} is {} ({} leases)", text(&v["id"]), text(&v["status"]), v["leases"])));
        }
    }
    Ok(ExitCode::SUCCESS)
}
