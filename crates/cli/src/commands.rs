//! Client commands: agents, sessions, turns, events, `run`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Client;
use crate::{output, render};

/// Global options every client command sees.
pub struct Ctx {
    pub server: String,
    /// Bearer token sent with every request.
    pub api_key: Option<String>,
    pub json: bool,
}

impl Ctx {
    pub fn client(&self) -> anyhow::Result<Client> {
        Client::new(&self.server, self.api_key.as_deref())
    }

    fn print_json_or(&self, v: &Value, readable: impl FnOnce(&Value)) {
        if self.json {
            output::json(v)
        } else {
            readable(v)
        }
    }
}

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Register a new version of an agent from a TOML or JSON spec file.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Agent name [default: the file name without extension].
        #[arg(long)]
        name: Option<String>,
    },
    /// List agents.
    List,
    /// Show an agent's latest (or given) version.
    Get {
        name: String,
        #[arg(long)]
        version: Option<u32>,
    },
}

#[derive(Subcommand)]
pub enum SessionCommand {
    /// Create a session.
    Create {
        #[arg(long)]
        agent: String,
        #[arg(long)]
        agent_version: Option<u32>,
        /// Metadata as a JSON object.
        #[arg(long)]
        metadata: Option<String>,
    },
    /// Show a session.
    Get { id: String },
    /// List sessions, newest first.
    List {
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Send input to a session (starts a turn).
    Send {
        id: String,
        text: String,
        /// Stream progress and print the answer.
        #[arg(long)]
        follow: bool,
        /// queue, reject or interrupt.
        #[arg(long, default_value = "queue")]
        on_busy: String,
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Lend the session to this agent for the turn: it answers, then
        /// control comes back (operators only).
        #[arg(long, value_name = "AGENT")]
        borrow: Option<String>,
        /// With --borrow: model and tool calls the borrower may make.
        #[arg(long, requires = "borrow")]
        max_steps: Option<u32>,
        /// With --borrow: seconds the borrower has.
        #[arg(long, requires = "borrow")]
        timeout: Option<u64>,
    },
    /// Print a session's events.
    Events {
        id: String,
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Keep streaming new events.
        #[arg(long)]
        follow: bool,
    },
    /// Cancel a turn.
    Cancel { id: String, turn_id: String },
    /// Terminate a session (its log is kept).
    Terminate { id: String },
    /// Hand a session over to another agent for good (a running turn goes
    /// on under it).
    Handover {
        id: String,
        /// The agent to hand over to.
        #[arg(long)]
        to: String,
        /// Only if this agent still runs the session.
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Issue a short-lived credential that may read only this session;
    /// prints the token alone (`TOKEN=$(agentrt session credential ID)`).
    Credential {
        id: String,
        /// Seconds until it expires [default: the server's].
        #[arg(long)]
        ttl: Option<u64>,
    },
}

pub async fn agent(ctx: &Ctx, cmd: AgentCommand) -> anyhow::Result<ExitCode> {
    let c = ctx.client()?;
    match cmd {
        AgentCommand::Apply { file, name } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
            let name = match name {
                Some(n) => n,
                None => file.file_stem().and_then(|s| s.to_str()).map(str::to_owned).ok_or_else(|| anyhow!("give --name"))?,
            };
            let content_type = if file.extension().is_some_and(|e| e == "json") { "application/json" } else { "application/toml" };
            let req = c.request(Method::PUT, &format!("/v1/agents/{name}")).header("content-type", content_type).body(text);
            let v = c.send(req).await?;
            ctx.print_json_or(&v, |v| output::line(&format!("agent {} version {} registered", name, v["version"])));
        }
        AgentCommand::List => {
            let v = c.get("/v1/agents").await?;
            ctx.print_json_or(&v, |v| {
                let rows: Vec<Vec<String>> = v["agents"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        vec![
                            a["name"].as_str().unwrap_or("").to_owned(),
                            a["latest_version"].to_string(),
                            a["description"].as_str().unwrap_or("").to_owned(),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "VERSION", "DESCRIPTION"], &rows);
            });
        }
        AgentCommand::Get { name, version } => {
            let path = match version {
                Some(v) => format!("/v1/agents/{name}/versions/{v}"),
                None => format!("/v1/agents/{name}"),
            };
            output::json(&c.get(&path).await?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn session(ctx: &Ctx, cmd: SessionCommand) -> anyhow::Result<ExitCode> {
    let c = ctx.client()?;
    match cmd {
        SessionCommand::Create { agent, agent_version, metadata } => {
            let metadata: Value = match metadata {
                Some(m) => serde_json::from_str(&m).context("--metadata must be a JSON object")?,
                None => json!({}),
            };
            let v = c.post("/v1/sessions", &json!({"agent": agent, "agent_version": agent_version, "metadata": metadata})).await?;
            ctx.print_json_or(&v, |v| output::line(v["id"].as_str().unwrap_or("")));
        }
        SessionCommand::Get { id } => {
            let v = c.get(&format!("/v1/sessions/{id}")).await?;
            ctx.print_json_or(&v, |v| {
                output::line(&format!("id:       {}", v["id"].as_str().unwrap_or("")));
                output::line(&format!("agent:    {} v{}", v["agent"].as_str().unwrap_or(""), v["agent_version"]));
                output::line(&format!("status:   {}", v["status"].as_str().unwrap_or("")));
                output::line(&format!("turns:    {}", v["turn_count"]));
                output::line(&format!("tokens:   {} in, {} out", v["usage"]["input_tokens"], v["usage"]["output_tokens"]));
                output::line(&format!("events:   {}", v["last_seq"]));
            });
        }
        SessionCommand::List { agent, status, limit, cursor } => {
            let mut req = c.request(Method::GET, "/v1/sessions").query(&[("limit", limit.to_string())]);
            for (k, v) in [("agent", agent), ("status", status), ("cursor", cursor)] {
                if let Some(v) = v {
                    req = req.query(&[(k, v)]);
                }
            }
            let v = c.send(req).await?;
            ctx.print_json_or(&v, |v| {
                let rows: Vec<Vec<String>> = v["sessions"].as_array().into_iter().flatten().map(render::session_row).collect();
                output::table(&["ID", "AGENT", "STATUS", "TURNS", "TOKENS"], &rows);
                if let Some(next) = v["next_cursor"].as_str() {
                    output::line(&format!("more: --cursor {next}"));
                }
            });
        }
        SessionCommand::Send { id, text, follow, on_busy, idempotency_key, borrow, max_steps, timeout } => {
            let after = if follow { c.get(&format!("/v1/sessions/{id}")).await?["last_seq"].as_u64().unwrap_or(0) } else { 0 };
            let mut body = json!({"input": text, "on_busy": on_busy});
            if let Some(agent) = borrow {
                body["borrow"] = json!({"agent": agent, "max_steps": max_steps, "timeout_seconds": timeout});
            }
            let mut req = c.request(Method::POST, &format!("/v1/sessions/{id}/turns")).json(&body);
            if let Some(k) = idempotency_key {
                req = req.header("idempotency-key", k);
            }
            let turn = c.send(req).await?;
            if !follow {
                ctx.print_json_or(&turn, |t| output::line(t["turn_id"].as_str().unwrap_or("")));
                return Ok(ExitCode::SUCCESS);
            }
            return follow_turn(ctx, &c, &id, &turn, after).await;
        }
        SessionCommand::Events { id, after, follow } => {
            if follow {
                c.follow(&id, after, |e| {
                    if ctx.json {
                        output::json_line(e)
                    } else {
                        output::line(&render::event_line(e))
                    }
                    true
                })
                .await?;
            } else {
                let mut after = after;
                loop {
                    let page = c.get(&format!("/v1/sessions/{id}/events?after={after}&limit=1000")).await?;
                    let events = page["events"].as_array().cloned().unwrap_or_default();
                    for e in &events {
                        if ctx.json {
                            output::json_line(e)
                        } else {
                            output::line(&render::event_line(e))
                        }
                    }
                    match events.last().and_then(|e| e["seq"].as_u64()) {
                        Some(seq) if events.len() == 1000 => after = seq,
                        _ => break,
                    }
                }
            }
        }
        SessionCommand::Cancel { id, turn_id } => {
            let v = c.post(&format!("/v1/sessions/{id}/turns/{turn_id}/cancel"), &json!({})).await?;
            ctx.print_json_or(&v, |v| output::line(&format!("turn {} cancel requested ({})", turn_id, v["status"].as_str().unwrap_or(""))));
        }
        SessionCommand::Terminate { id } => {
            let v = c.send(c.request(Method::DELETE, &format!("/v1/sessions/{id}"))).await?;
            ctx.print_json_or(&v, |v| output::line(&format!("session {} {}", id, v["status"].as_str().unwrap_or(""))));
        }
        SessionCommand::Handover { id, to, from, reason } => {
            let v = c.post(&format!("/v1/sessions/{id}/handover"), &json!({"agent": to, "from": from, "reason": reason})).await?;
            ctx.print_json_or(&v, |v| {
                output::line(&format!("session {id} is now run by {} v{}", v["agent"].as_str().unwrap_or(""), v["agent_version"]))
            });
        }
        SessionCommand::Credential { id, ttl } => {
            let v = c.post(&format!("/v1/sessions/{id}/credentials"), &json!({"ttl_seconds": ttl})).await?;
            ctx.print_json_or(&v, |v| output::line(v["token"].as_str().unwrap_or("")));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Streams a turn's events until it ends; prints the answer.
async fn follow_turn(ctx: &Ctx, c: &Client, session: &str, turn: &Value, after: u64) -> anyhow::Result<ExitCode> {
    let turn_id = turn["turn_id"].as_str().unwrap_or("").to_owned();
    let mut end: Option<Value> = None;
    c.follow(session, after, |e| {
        if e["turn_id"].as_str() != Some(turn_id.as_str()) {
            return true;
        }
        if ctx.json {
            output::json_line(e);
        } else if e["type"] == "message" {
            output::line(e["content"].as_str().unwrap_or(""));
        } else if let Some(line) = render::progress_line(e) {
            output::line(&line);
        }
        let done = matches!(e["type"].as_str(), Some("turn.completed" | "turn.failed" | "turn.cancelled"));
        if done {
            end = Some(e.clone());
        }
        !done
    })
    .await?;
    Ok(match end {
        Some(e) if e["type"] == "turn.completed" => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

pub async fn run(ctx: &Ctx, agent: &str, text: &str) -> anyhow::Result<ExitCode> {
    let c = ctx.client()?;
    let session = c.post("/v1/sessions", &json!({"agent": agent})).await?;
    let id = session["id"].as_str().ok_or_else(|| anyhow!("server returned a session without an id"))?.to_owned();
    if !ctx.json {
        output::line(&format!("session {id}"));
    }
    let after = session["last_seq"].as_u64().unwrap_or(0);
    let turn = c.post(&format!("/v1/sessions/{id}/turns"), &json!({"input": text})).await?;
    follow_turn(ctx, &c, &id, &turn, after).await
}
