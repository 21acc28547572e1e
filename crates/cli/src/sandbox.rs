//! `agentrt sandbox …`: run commands in a session's sandbox, copy files in
//! and out, see its state, freeze and thaw it.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

use crate::commands::Ctx;
use crate::output;

#[derive(Subcommand)]
pub enum SandboxCommand {
    /// Run a command in the session's sandbox; exits with its exit code.
    Exec {
        session: String,
        /// Seconds before the command is killed.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// The program and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Copy a file into or out of a sandbox: `ID:path` names the sandbox
    /// side (relative to /workspace), the other side is local.
    Cp { from: String, to: String },
    /// The sandbox's state and resource use.
    Status { session: String },
    /// Freeze every process now.
    Standby { session: String },
    /// Thaw (or start) the sandbox now.
    Resume { session: String },
}

/// `ses_…:path` split, if it names a sandbox file.
fn remote(spec: &str) -> Option<(&str, &str)> {
    spec.split_once(':').filter(|(id, _)| id.starts_with("ses_"))
}

pub async fn sandbox(ctx: &Ctx, cmd: SandboxCommand) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    match cmd {
        SandboxCommand::Exec { session, timeout, command } => {
            let out =
                client.post(&format!("/v1/sessions/{session}/sandbox/exec"), &json!({"argv": command, "timeout_seconds": timeout})).await?;
            if ctx.json {
                output::json(&out);
                return Ok(ExitCode::SUCCESS);
            }
            let _ = std::io::stdout().write_all(out["stdout"].as_str().unwrap_or_default().as_bytes());
            let _ = std::io::stderr().write_all(out["stderr"].as_str().unwrap_or_default().as_bytes());
            if out["timed_out"].as_bool() == Some(true) {
                bail!("timed out after {timeout} s");
            }
            Ok(match out["exit_code"].as_i64() {
                Some(code) => ExitCode::from(code.clamp(0, 255) as u8),
                None => ExitCode::from(128 + out["signal"].as_i64().unwrap_or(0).clamp(0, 127) as u8),
            })
        }
        SandboxCommand::Cp { from, to } => {
            match (remote(&from), remote(&to)) {
                (Some((id, path)), None) => {
                    let resp =
                        client.request(Method::GET, &format!("/v1/sessions/{id}/files/{}", path.trim_start_matches('/'))).send().await?;
                    if !resp.status().is_success() {
                        let body: serde_json::Value = resp.json().await.unwrap_or_default();
                        bail!(
                            "{}: {}",
                            body["error"]["code"].as_str().unwrap_or("error"),
                            body["error"]["message"].as_str().unwrap_or("download failed")
                        );
                    }
                    let bytes = resp.bytes().await.context("read file")?;
                    std::fs::write(&to, &bytes).with_context(|| format!("write {to}"))?;
                }
                (None, Some((id, path))) => {
                    let bytes = std::fs::read(&from).with_context(|| format!("read {from}"))?;
                    let req = client.request(Method::PUT, &format!("/v1/sessions/{id}/files/{}", path.trim_start_matches('/'))).body(bytes);
                    client.send(req).await?;
                }
                _ => bail!("exactly one side must name a sandbox file as SESSION_ID:path (e.g. ses_…:src/main.py)"),
            }
            Ok(ExitCode::SUCCESS)
        }
        SandboxCommand::Status { session } => print(ctx, client.get(&format!("/v1/sessions/{session}/sandbox")).await?),
        SandboxCommand::Standby { session } => {
            print(ctx, client.post(&format!("/v1/sessions/{session}/sandbox/standby"), &json!({})).await?)
        }
        SandboxCommand::Resume { session } => print(ctx, client.post(&format!("/v1/sessions/{session}/sandbox/resume"), &json!({})).await?),
    }
}

fn print(ctx: &Ctx, v: serde_json::Value) -> anyhow::Result<ExitCode> {
    if ctx.json {
        output::json(&v);
    } else {
        let usage = &v["usage"];
        output::line(&format!(
            "{}  {}  memory {} MiB  cpu {:.2} s  pids {}  idle {:.0} s",
            v["state"].as_str().unwrap_or("?"),
            v["id"].as_str().unwrap_or("-"),
            usage["memory_bytes"].as_u64().unwrap_or(0) >> 20,
            usage["cpu_usec"].as_u64().unwrap_or(0) as f64 / 1e6,
            usage["pids"].as_u64().unwrap_or(0),
            v["idle_seconds"].as_f64().unwrap_or(0.0),
        ));
    }
    Ok(ExitCode::SUCCESS)
}
