//! Identity and governance commands: `whoami`, `tenants`, `keys` and
//! `policies`. Approvals are in `approvals.rs`.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use clap::{Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{json, Value};

use crate::commands::Ctx;
use crate::output;

#[derive(Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant (admins of the default tenant only).
    Create { name: String },
    /// List tenants (admins of the default tenant only).
    List,
    /// Limit a tenant's tool calls per second, over all its sessions
    /// (admins of the default tenant only).
    SetLimit {
        name: String,
        /// Calls per second; leave out to lift the limit.
        #[arg(long)]
        tool_calls_per_second: Option<f64>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum KeyRole {
    /// Manage agents, keys and policies, and everything an operator may.
    Admin,
    /// Run sessions, read logs, decide approvals.
    Operator,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create an API key; its secret is printed only this once.
    Create {
        /// A label for the key, e.g. who or what uses it.
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: KeyRole,
        /// Create it in another tenant (admins of the default tenant only).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List API keys of your tenant, or of another one.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke an API key; it stops working at once.
    Revoke {
        id: String,
        /// The key's tenant, if not yours (admins of the default tenant).
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum PoliciesCommand {
    /// Upload Cedar policies from FILE (`-` for stdin) as the tenant's next version.
    Put {
        file: String,
        /// Extra Cedar schema declarations (e.g. actions of MCP tools) from this file.
        #[arg(long)]
        schema: Option<String>,
    },
    /// Print the tenant's current (or given) policies.
    Get {
        #[arg(long)]
        version: Option<u32>,
    },
    /// Print the Cedar schema policies are validated against.
    Schema,
}

/// Prints the API's JSON with `--json`, else the readable form.
pub fn print(ctx: &Ctx, v: &Value, readable: impl FnOnce(&Value)) {
    if ctx.json {
        output::json(v)
    } else {
        readable(v)
    }
}

/// A string field, or `-` when absent.
pub fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// `s` cut to `max` characters.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(max.saturating_sub(1)).collect::<String>())
    }
}

/// Unix milliseconds as an RFC 3339 time (UTC), or `-`.
pub fn time(ms: &Value) -> String {
    match ms.as_u64() {
        Some(ms) => humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string(),
        None => "-".into(),
    }
}

/// How long ago unix milliseconds `ms` was: `42s`, `5m`, `3h`, `2d`.
pub fn age(ms: &Value, now_ms: i64) -> String {
    let Some(ms) = ms.as_i64() else { return "-".into() };
    let s = (now_ms - ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

pub async fn whoami(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let v = ctx.client()?.get("/v1/whoami").await?;
    print(ctx, &v, |v| {
        let p = &v["principal"];
        let role = match p["kind"].as_str() {
            Some("session") => "none (session credential: reads only its own session, may call the model gateway)",
            Some("dev") => "admin (serve --dev: authentication is off)",
            _ => text(&p["role"]),
        };
        output::line(&format!("principal: {}", text(&v["display"])));
        output::line(&format!("tenant:    {}", text(&v["tenant"])));
        output::line(&format!("role:      {role}"));
    });
    Ok(ExitCode::SUCCESS)
}

pub async fn tenants(ctx: &Ctx, cmd: TenantsCommand) -> anyhow::Result<ExitCode> {
    let c = ctx.client()?;
    match cmd {
        TenantsCommand::Create { name } => {
            let v = c.post("/v1/tenants", &json!({"name": name})).await?;
            print(ctx, &v, |v| output::line(&format!("tenant {} created", text(&v["name"]))));
        }
        TenantsCommand::List => {
            let v = c.get("/v1/tenants").await?;
            print(ctx, &v, |v| {
                let rows: Vec<Vec<String>> = v["tenants"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| vec![text(&t["name"]).to_owned(), time(&t["created_ms"]), limit(&t["tool_calls_per_second"])])
                    .collect();
                output::table(&["NAME", "CREATED", "TOOL CALLS/S"], &rows);
            });
        }
        TenantsCommand::SetLimit { name, tool_calls_per_second } => {
            let req = c
                .request(reqwest::Method::PATCH, &format!("/v1/tenants/{name}"))
                .json(&json!({"tool_calls_per_second": tool_calls_per_second}));
            let v = c.send(req).await?;
            print(ctx, &v, |v| {
                output::line(&format!("tenant {}: tool calls per second {}", text(&v["name"]), limit(&v["tool_calls_per_second"])))
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn limit(v: &Value) -> String {
    v.as_f64().map_or_else(|| "unlimited".to_owned(), |r| r.to_string())
}

pub async fn keys(ctx: &Ctx, cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    let c = ctx.client()?;
    match cmd {
        KeysCommand::Create { name, role, tenant } => {
            let role = match role {
                KeyRole::Admin => "admin",
                KeyRole::Operator => "operator",
            };
            let v = c.post("/v1/keys", &json!({"name": name, "role": role, "tenant": tenant})).await?;
            print(ctx, &v, |v| {
                output::line(&format!(
                    "created {} key {} ({}) in tenant {}",
                    text(&v["role"]),
                    text(&v["id"]),
                    text(&v["name"]),
                    text(&v["tenant"])
                ));
                output::line("");
                output::line(&format!("    {}", text(&v["secret"])));
                output::line("");
                output::line("This secret is shown only once: store it now (e.g. export AGENTRT_API_KEY=…).");
            });
        }
        KeysCommand::List { tenant } => {
            let mut req = c.request(Method::GET, "/v1/keys");
            if let Some(t) = tenant {
                req = req.query(&[("tenant", t)]);
            }
            let v = c.send(req).await?;
            print(ctx, &v, |v| {
                let rows: Vec<Vec<String>> = v["keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|k| {
                        let status =
                            if k["revoked_ms"].is_null() { "active".into() } else { format!("revoked {}", time(&k["revoked_ms"])) };
                        vec![
                            text(&k["id"]).to_owned(),
                            clip(text(&k["name"]), 40),
                            text(&k["role"]).to_owned(),
                            time(&k["created_ms"]),
                            status,
                        ]
                    })
                    .collect();
                output::table(&["ID", "NAME", "ROLE", "CREATED", "STATUS"], &rows);
            });
        }
        KeysCommand::Revoke { id, tenant } => {
            let path = match tenant {
                Some(t) => format!("/v1/keys/{id}?tenant={t}"),
                None => format!("/v1/keys/{id}"),
            };
            let v = c.send(c.request(Method::DELETE, &path)).await?;
            print(ctx, &v, |v| output::line(&format!("key {} ({}) revoked", text(&v["id"]), text(&v["name"]))));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads FILE, or stdin for `-`.
fn read_input(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("read policies from stdin")?;
        return Ok(s);
    }
    std::fs::read_to_string(Path::new(file)).with_context(|| format!("read {file}"))
}

pub async fn policies(ctx: &Ctx, cmd: PoliciesCommand) -> anyhow::Result<ExitCode> {
    let c = ctx.client()?;
    match cmd {
        PoliciesCommand::Put { file, schema } => {
            let policies = read_input(&file)?;
            let schema = match schema {
                Some(f) if f == "-" && file == "-" => return Err(anyhow!("only one of FILE and --schema can be `-` (stdin)")),
                Some(f) => Some(read_input(&f)?),
                None => None,
            };
            let req = c.request(Method::PUT, "/v1/policies").json(&json!({"policies": policies, "schema": schema}));
            let v = c.send(req).await?;
            print(ctx, &v, |v| output::line(&format!("policies version {} stored for tenant {}", v["version"], text(&v["tenant"]))));
        }
        PoliciesCommand::Get { version } => {
            let path = match version {
                Some(n) => format!("/v1/policies/versions/{n}"),
                None => "/v1/policies".to_owned(),
            };
            let v = c.get(&path).await?;
            // The Cedar text alone, so `policies get > p.cedar` round-trips.
            print(ctx, &v, |v| output::partial(&with_newline(text(&v["text"]))));
        }
        PoliciesCommand::Schema => output::partial(&with_newline(&c.get_text("/v1/policies/schema").await?)),
    }
    Ok(ExitCode::SUCCESS)
}

fn with_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_owned()
    } else {
        format!("{s}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_clips_read_well() {
        let now = 10_000_000;
        assert_eq!(age(&json!(now - 42_000), now), "42s");
        assert_eq!(age(&json!(now - 7_200_000), now), "2h");
        assert_eq!(age(&Value::Null, now), "-");
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
        assert_eq!(time(&json!(0)), "1970-01-01T00:00:00Z");
    }
}
