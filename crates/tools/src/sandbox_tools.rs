//! Tools that act in the session's sandbox: `shell.exec`, `process.*` and
//! `fs.*`. They reach the sandbox through [`ToolContext::sandbox`], which
//! starts, thaws or replaces it as needed. Paths are the sandbox's own
//! (relative ones start at `/workspace`), so no path can leave it.

use std::sync::Arc;
use std::time::Duration;

use agentrt_sandbox::protocol::{decode_text as text, ExecRequest, ProcessSpec, Request, Response};
use agentrt_sandbox::SandboxError;
use agentrt_types::sandbox::SANDBOX_TOOLS;
use agentrt_types::ToolDef;
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::{Tool, ToolContext, ToolError};

/// Bytes of stdout and of stderr a `shell.exec` result keeps.
pub const EXEC_OUTPUT_LIMIT: u64 = 64 * 1024;
/// Longest `shell.exec` a model may ask for.
const MAX_EXEC_SECONDS: u64 = 600;
const DEFAULT_EXEC_SECONDS: u64 = 30;
/// Bytes `fs.read` returns at most.
const READ_LIMIT: u64 = 256 * 1024;

#[derive(Clone, Copy)]
enum Kind {
    Exec,
    ProcessStart,
    ProcessStatus,
    ProcessOutput,
    ProcessKill,
    FsRead,
    FsWrite,
    FsEdit,
    FsList,
    FsDelete,
}

/// One sandbox tool.
pub struct SandboxTool {
    def: ToolDef,
    kind: Kind,
}

/// All sandbox tools.
pub fn sandbox_tools() -> Vec<Arc<dyn Tool>> {
    SANDBOX_TOOLS.iter().filter_map(|name| sandbox_tool(name)).collect()
}

fn sandbox_tool(name: &str) -> Option<Arc<dyn Tool>> {
    let obj = |props: Value, required: &[&str]| json!({"type": "object", "properties": props, "required": required, "additionalProperties": false});
    let command = json!({"type": "string", "minLength": 1, "description": "Run by /bin/sh -c."});
    let env = json!({"type": "object", "additionalProperties": {"type": "string"}});
    let path = json!({"type": "string", "minLength": 1, "description": "Relative paths start at /workspace."});
    let id = json!({"type": "integer", "minimum": 1});
    let (kind, description, schema) = match name {
        "shell.exec" => (
            Kind::Exec,
            "Run a shell command in the sandbox and wait for it. Returns exit_code, stdout and stderr (each cut at 64 KiB).",
            obj(
                json!({"command": command, "cwd": {"type": "string"}, "env": env, "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": MAX_EXEC_SECONDS}}),
                &["command"],
            ),
        ),
        "process.start" => (
            Kind::ProcessStart,
            "Start a long-running command in the background (a dev server, a test suite). Returns its id.",
            obj(json!({"command": command, "cwd": {"type": "string"}, "env": env}), &["command"]),
        ),
        "process.status" => {
            (Kind::ProcessStatus, "Whether a background process still runs, and how it ended.", obj(json!({"id": id}), &["id"]))
        }
        "process.output" => (
            Kind::ProcessOutput,
            "Output of a background process from the given offsets on; pass back the offsets it returns to read only new output.",
            obj(
                json!({"id": id, "stdout_offset": {"type": "integer", "minimum": 0}, "stderr_offset": {"type": "integer", "minimum": 0}}),
                &["id"],
            ),
        ),
        "process.kill" => (
            Kind::ProcessKill,
            "Signal a background process and its children (default SIGTERM = 15; SIGKILL = 9).",
            obj(json!({"id": id, "signal": {"type": "integer", "minimum": 1, "maximum": 64}}), &["id"]),
        ),
        "fs.read" => (Kind::FsRead, "Read a text file (up to 256 KiB).", obj(json!({"path": path}), &["path"])),
        "fs.write" => (
            Kind::FsWrite,
            "Write a text file, replacing it; parent directories are created.",
            obj(json!({"path": path, "content": {"type": "string"}}), &["path", "content"]),
        ),
        "fs.edit" => (
            Kind::FsEdit,
            "Replace the one exact occurrence of old_text in a file with new_text.",
            obj(
                json!({"path": path, "old_text": {"type": "string", "minLength": 1}, "new_text": {"type": "string"}}),
                &["path", "old_text", "new_text"],
            ),
        ),
        "fs.list" => (Kind::FsList, "List a directory (default /workspace).", obj(json!({"path": path}), &[])),
        "fs.delete" => (
            Kind::FsDelete,
            "Delete a file, or a directory with recursive: true.",
            obj(json!({"path": path, "recursive": {"type": "boolean"}}), &["path"]),
        ),
        _ => return None,
    };
    let def = ToolDef { name: name.to_owned(), description: description.to_owned(), input_schema: schema };
    Some(Arc::new(SandboxTool { def, kind }))
}

fn str_arg<'a>(args: &'a Value, key: &str) -> Option<&'a str> {
    args.get(key).and_then(Value::as_str)
}

fn process_spec(args: &Value) -> ProcessSpec {
    let env = args
        .get("env")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default();
    ProcessSpec {
        argv: vec!["/bin/sh".into(), "-c".into(), str_arg(args, "command").unwrap_or_default().to_owned()],
        cwd: str_arg(args, "cwd").map(str::to_owned),
        env,
    }
}

/// A sandbox failure as the model should read it.
fn sandbox_error(e: SandboxError) -> ToolError {
    match e {
        SandboxError::Gone(m) => ToolError::Unavailable(format!("sandbox: {m}")),
        other => ToolError::Failed(format!("sandbox: {other}")),
    }
}

/// The agent's error answer, or the response as JSON.
fn answer(response: Response) -> Result<Value, ToolError> {
    match response {
        Response::Error { message, .. } => Err(ToolError::Failed(message)),
        other => serde_json::to_value(other).map_err(|e| ToolError::Failed(e.to_string())),
    }
}

#[async_trait]
impl Tool for SandboxTool {
    fn def(&self) -> &ToolDef {
        &self.def
    }

    fn idempotent(&self) -> bool {
        matches!(self.kind, Kind::ProcessStatus | Kind::ProcessOutput | Kind::FsRead | Kind::FsList)
    }

    fn timeout(&self) -> Duration {
        match self.kind {
            Kind::Exec => Duration::from_secs(MAX_EXEC_SECONDS + 30),
            _ => Duration::from_secs(60),
        }
    }

    async fn call(&self, ctx: &ToolContext, args: Value) -> Result<Value, ToolError> {
        let sandbox = ctx.sandbox.as_ref().ok_or_else(|| ToolError::Failed("this agent has no [sandbox]".into()))?;
        let call = |request: Request| async move { sandbox.call(&request).await.map_err(sandbox_error) };
        let path = || str_arg(&args, "path").unwrap_or(".").to_owned();
        let id = || args.get("id").and_then(Value::as_u64).unwrap_or(0);
        match self.kind {
            Kind::Exec => {
                let seconds = args.get("timeout_seconds").and_then(Value::as_u64).unwrap_or(DEFAULT_EXEC_SECONDS).min(MAX_EXEC_SECONDS);
                let request = ExecRequest {
                    process: process_spec(&args),
                    stdin: None,
                    timeout_ms: Some(seconds * 1000),
                    max_output: EXEC_OUTPUT_LIMIT,
                    stream: false,
                };
                let (response, killed_by) = call(Request::Exec(request)).await?;
                exec_result(response, killed_by, seconds)
            }
            Kind::ProcessStart => answer(call(Request::ProcessStart(process_spec(&args))).await?.0),
            Kind::ProcessStatus => answer(call(Request::ProcessStatus { id: id() }).await?.0),
            Kind::ProcessOutput => {
                let offset = |k: &str| args.get(k).and_then(Value::as_u64).unwrap_or(0);
                let request =
                    Request::ProcessOutput { id: id(), stdout_offset: offset("stdout_offset"), stderr_offset: offset("stderr_offset") };
                match call(request).await?.0 {
                    Response::ProcessOutput { stdout, stderr, stdout_offset, stderr_offset, dropped, info } => Ok(json!({
                        "stdout": text(&stdout), "stderr": text(&stderr),
                        "stdout_offset": stdout_offset, "stderr_offset": stderr_offset,
                        "dropped_bytes": dropped, "running": info.running, "exit": info.exit,
                    })),
                    other => answer(other),
                }
            }
            Kind::ProcessKill => {
                let signal = args.get("signal").and_then(Value::as_i64).unwrap_or(15) as i32;
                answer(call(Request::ProcessSignal { id: id(), signal }).await?.0)
            }
            Kind::FsRead => match call(Request::FileRead { path: path(), max_bytes: Some(READ_LIMIT) }).await?.0 {
                Response::File { data, size, truncated } => Ok(json!({"content": text(&data), "size": size, "truncated": truncated})),
                other => answer(other),
            },
            Kind::FsWrite => {
                let data = B64.encode(str_arg(&args, "content").unwrap_or_default());
                answer(call(Request::FileWrite { path: path(), data, append: false, mode: None }).await?.0)
            }
            Kind::FsEdit => {
                let (old, new) = (str_arg(&args, "old_text").unwrap_or_default(), str_arg(&args, "new_text").unwrap_or_default());
                let content = match call(Request::FileRead { path: path(), max_bytes: None }).await?.0 {
                    Response::File { data, .. } => B64.decode(data).map_err(|e| ToolError::Failed(e.to_string()))?,
                    other => return answer(other),
                };
                let content = String::from_utf8(content).map_err(|_| ToolError::Failed(format!("{} is not UTF-8 text", path())))?;
                match content.matches(old).count() {
                    1 => {}
                    0 => return Err(ToolError::Failed(format!("old_text was not found in {}", path()))),
                    n => {
                        return Err(ToolError::Failed(format!(
                            "old_text occurs {n} times in {}; include more context so it occurs once",
                            path()
                        )))
                    }
                }
                let data = B64.encode(content.replacen(old, new, 1));
                answer(call(Request::FileWrite { path: path(), data, append: false, mode: None }).await?.0)
            }
            Kind::FsList => answer(call(Request::FileList { path: path() }).await?.0),
            Kind::FsDelete => {
                let recursive = args.get("recursive").and_then(Value::as_bool).unwrap_or(false);
                answer(call(Request::FileDelete { path: path(), recursive }).await?.0)
            }
        }
    }
}

/// A finished command as the model sees it; a timeout or an OOM kill is a
/// tool error naming the cause.
fn exec_result(response: Response, killed_by: Option<String>, seconds: u64) -> Result<Value, ToolError> {
    let Response::Exited { status, timed_out, stdout, stderr, truncated, duration_ms } = response else {
        return answer(response);
    };
    let (mut stdout, mut stderr) = (text(&stdout), text(&stderr));
    if truncated {
        let marker = format!("\n[output truncated: each stream keeps its first {} KiB]", EXEC_OUTPUT_LIMIT / 1024);
        stdout.push_str(&marker);
        stderr.push_str(&marker);
    }
    if timed_out {
        return Err(ToolError::Failed(format!("timed out after {seconds} s; stdout so far: {}", tail(&stdout))));
    }
    // SIGKILL, seen directly or through a shell's exit code 137.
    let killed = status.signal == Some(9) || status.code == Some(137);
    if let (Some(cause), true) = (killed_by, killed) {
        return Err(ToolError::Failed(cause));
    }
    Ok(json!({"exit_code": status.code, "signal": status.signal, "stdout": stdout, "stderr": stderr, "duration_ms": duration_ms}))
}

fn tail(s: &str) -> &str {
    let start = s.len().saturating_sub(2000);
    let start = (start..s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(s.len());
    &s[start..]
}
