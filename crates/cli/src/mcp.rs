//! `agentrt mcp`: talk to an MCP server with the same client the runtime
//! uses, to check a server before giving it to an agent (and to run the MCP
//! conformance suite against agentrt's client).

use std::process::ExitCode;

use agentrt_tools::mcp::McpServer;
use agentrt_types::spec::McpServerSpec;
use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::commands::Ctx;
use crate::output;

#[derive(Subcommand)]
pub enum McpCommand {
    /// List a server's tools.
    Tools {
        /// Streamable HTTP (or HTTP+SSE) endpoint.
        url: String,
    },
    /// Call one tool and print its result.
    Call {
        url: String,
        tool: String,
        /// Arguments as a JSON object.
        #[arg(default_value = "{}")]
        arguments: String,
    },
}

fn server(url: &str) -> McpServer {
    let spec = McpServerSpec {
        name: "cli".into(),
        url: Some(url.to_owned()),
        command: None,
        args: vec![],
        env: Default::default(),
        headers: Default::default(),
        tools: None,
        timeout_seconds: 30,
    };
    McpServer::new(spec, false, false)
}

pub async fn mcp(ctx: &Ctx, cmd: McpCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        McpCommand::Tools { url } => {
            let s = server(&url);
            s.discover(None).await.map_err(|e| anyhow!("{e}"))?;
            let tools: Vec<Value> = s
                .tools()
                .iter()
                .map(|t| json!({"name": t.remote_name, "description": t.def.description, "idempotent": t.idempotent, "destructive": t.destructive, "input_schema": t.def.input_schema}))
                .collect();
            if ctx.json {
                output::json(&json!({ "tools": tools }));
            } else {
                let rows: Vec<Vec<String>> = s
                    .tools()
                    .iter()
                    .map(|t| {
                        vec![
                            t.remote_name.clone(),
                            if t.idempotent { "yes".into() } else { "no".into() },
                            t.def.description.lines().next().unwrap_or("").to_owned(),
                        ]
                    })
                    .collect();
                output::table(&["TOOL", "RETRY-SAFE", "DESCRIPTION"], &rows);
            }
        }
        McpCommand::Call { url, tool, arguments } => {
            let args: Value = serde_json::from_str(&arguments).context("arguments must be a JSON object")?;
            // Discover first, as a turn does: a wrong name fails with the list
            // of what the server offers instead of a bare protocol error.
            let s = server(&url);
            s.discover(None).await.map_err(|e| anyhow!("{e}"))?;
            if !s.tools().iter().any(|t| t.remote_name == tool) {
                let offered: Vec<String> = s.tools().into_iter().map(|t| t.remote_name).collect();
                bail!("the server offers no tool named {tool:?}; it offers: {}", offered.join(", "));
            }
            let result = s.call(None, &tool, args).await.map_err(|e| anyhow!("{e}"))?;
            output::json(&result);
        }
    }
    Ok(ExitCode::SUCCESS)
}
