//! `agentrt`: the runtime server and its command-line client in one binary.

mod approvals;
mod audit;
mod budgets;
mod client;
mod commands;
mod config;
mod governance;
mod mcp;
mod nodes;
mod output;
mod render;
mod sandbox;
mod serve;
mod telemetry;
mod usage;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat, Overrides};

#[derive(Parser)]
#[command(name = "agentrt", version, about = "A durable runtime for AI agents: server and client.")]
struct Cli {
    /// Server URL for client commands.
    #[arg(long, global = true, env = "AGENTRT_URL", default_value = "http://127.0.0.1:7700")]
    server: String,
    /// API key (art_…) or session credential for client commands.
    #[arg(long, global = true, env = "AGENTRT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Print JSON instead of readable text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// Server settings shared by `serve` and `config dump`.
#[derive(clap::Args)]
struct ServerArgs {
    /// Address to listen on [default: 127.0.0.1:7700].
    #[arg(long, env = "AGENTRT_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory [default: $XDG_DATA_HOME/agentrt or ~/.local/share/agentrt].
    #[arg(long, env = "AGENTRT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where sessions are stored: empty for SQLite in the data directory,
    /// or a PostgreSQL URL (`postgres://user:password@host:5432/db`).
    #[arg(long, env = "AGENTRT_STORE")]
    store: Option<String>,
    /// TOML config file.
    #[arg(long, env = "AGENTRT_CONFIG")]
    config: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, env = "AGENTRT_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Turn authentication off (every request is an admin of the default
    /// tenant); only on a loopback address. For trying agentrt out.
    #[arg(long)]
    dev: bool,
}

impl ServerArgs {
    fn load(self) -> anyhow::Result<Config> {
        Config::load(
            self.config.as_deref(),
            Overrides { listen: self.listen, data_dir: self.data_dir, store: self.store, log_format: self.log_format, dev_mode: self.dev },
        )
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the runtime server.
    Serve(ServerArgs),
    /// Inspect the effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Register and inspect agents.
    #[command(subcommand)]
    Agent(commands::AgentCommand),
    /// Create, drive and inspect sessions.
    #[command(subcommand)]
    Session(commands::SessionCommand),
    /// Create a session, send TEXT, stream progress and print the answer.
    Run {
        #[arg(long)]
        agent: String,
        text: String,
    },
    /// Verify the tamper-evident event log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// List or call an MCP server's tools with agentrt's MCP client.
    #[command(subcommand)]
    Mcp(mcp::McpCommand),
    /// Run commands and copy files in a session's sandbox.
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
    /// Show who the API key (or session credential) in use belongs to.
    Whoami,
    /// Create and list tenants (admins of the default tenant).
    #[command(subcommand)]
    Tenants(governance::TenantsCommand),
    /// List the cluster's nodes, or drain one (admins of the default tenant).
    #[command(subcommand)]
    Node(nodes::NodeCommand),
    /// Create, list and revoke API keys.
    #[command(subcommand)]
    Keys(governance::KeysCommand),
    /// Upload and read the tenant's Cedar policies.
    #[command(subcommand)]
    Policies(governance::PoliciesCommand),
    /// Model tokens and cost, grouped by tenant, agent, session, route or model.
    Usage {
        #[arg(long, value_enum, default_value = "agent")]
        group_by: usage::GroupBy,
        /// From this time (unix ms or RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Until this time (unix ms or RFC 3339), exclusive.
        #[arg(long)]
        until: Option<String>,
    },
    /// List, approve and deny tool calls waiting for a human.
    #[command(subcommand)]
    Approvals(approvals::ApprovalsCommand),
    /// Limits on tokens, cost, tool calls, steps and sandbox CPU.
    #[command(subcommand)]
    Budgets(budgets::BudgetsCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective server configuration as TOML.
    Dump(ServerArgs),
}

/// Hidden first argument that makes this binary the in-sandbox agent, for
/// when `agentrt-sandbox-agent` is not installed beside it.
pub const SANDBOX_AGENT_ARG: &str = "__sandbox-agent";

fn main() -> ExitCode {
    // Before any thread exists: the agent forks.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(SANDBOX_AGENT_ARG) {
        return agentrt_sandbox_agent::run(&args[2..]);
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            output::error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            output::error(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ctx = commands::Ctx { server: cli.server, api_key: cli.api_key, json: cli.json };
    match cli.command {
        Command::Serve(args) => serve::serve(args.load()?).await.map(|_| ExitCode::SUCCESS),
        Command::Config(ConfigCommand::Dump(args)) => {
            let config = args.load()?;
            let mut table = toml::Table::try_from(&config)?;
            // Provider keys and the store's password never leave the config file.
            if let Some(toml::Value::String(url)) = table.get_mut("store") {
                *url = redact_password(url);
            }
            if let Some(toml::Value::Table(models)) = table.get_mut("models") {
                for (_, route) in models.iter_mut() {
                    if let Some(key) = route.get_mut("api-key") {
                        *key = toml::Value::String("<redacted>".into());
                    }
                }
            }
            output::partial(&toml::to_string_pretty(&table)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent(c) => commands::agent(&ctx, c).await,
        Command::Session(c) => commands::session(&ctx, c).await,
        Command::Run { agent, text } => commands::run(&ctx, &agent, &text).await,
        Command::Audit(c) => audit::audit(&ctx, c).await,
        Command::Mcp(c) => mcp::mcp(&ctx, c).await,
        Command::Sandbox(c) => sandbox::sandbox(&ctx, c).await,
        Command::Whoami => governance::whoami(&ctx).await,
        Command::Tenants(c) => governance::tenants(&ctx, c).await,
        Command::Node(c) => nodes::node(&ctx, c).await,
        Command::Keys(c) => governance::keys(&ctx, c).await,
        Command::Policies(c) => governance::policies(&ctx, c).await,
        Command::Approvals(c) => approvals::approvals(&ctx, c).await,
        Command::Budgets(c) => budgets::budgets(&ctx, c).await,
        Command::Usage { group_by, since, until } => usage::usage(&ctx, group_by, since.as_deref(), until.as_deref()).await,
    }
}

/// A URL with its password (`scheme://user:password@host…`) replaced.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    match rest.split_once('@') {
        Some((user, host)) if user.contains(':') => {
            format!("{scheme}://{}:<redacted>@{host}", user.split_once(':').map_or(user, |(u, _)| u))
        }
        _ => url.to_owned(),
    }
}
