//! MCP end to end, against servers built with the official Python SDK
//! (`tests/peers/mcp_server.py`) over stdio and streamable HTTP: discovery,
//! structured results, errors, `tools/list_changed`, secrets in headers, a
//! slow tool timing out, and a server killed mid-call (the breaker opens,
//! then the call works again once the server is back).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn python() -> String {
    std::env::var("AGENTRT_TEST_PYTHON").expect("AGENTRT_TEST_PYTHON is not set: run the suite with ./scripts/test.sh")
}

const SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/peers/mcp_server.py");

/// A streamable-HTTP MCP server on `port` (0 = any); killed on drop.
struct HttpMcp {
    child: Child,
    port: u16,
}

impl HttpMcp {
    fn start(port: u16) -> HttpMcp {
        Self::start_with_env(port, &[])
    }

    fn start_with_env(port: u16, env: &[(&str, &str)]) -> HttpMcp {
        Self::start_transport("http", port, env)
    }

    fn start_transport(transport: &str, port: u16, env: &[(&str, &str)]) -> HttpMcp {
        let mut child = Command::new(python())
            .args([SERVER, "--transport", transport, "--port", &port.to_string()])
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the MCP server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port =
            line.trim().strip_prefix("listening ").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("MCP server said {line:?}"));
        HttpMcp { child, port }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HttpMcp {
    fn drop(&mut self) {
        self.kill();
    }
}

fn completed<'a>(events: &'a [Value], tool: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == "tool.completed" && e["tool"] == tool).collect()
}

async fn run_turn(server: &Server, agent: &str) -> (Value, Vec<Value>) {
    let session = server.session(agent).await;
    let turn = server.submit(&session, "go").await;
    let t = server.wait_turn(&session, &turn).await;
    (t, server.events(&session).await)
}

#[tokio::test]
async fn stdio_server_tools_are_discovered_called_and_refreshed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &[("AGENTRT_MCP_STDIO_ON_HOST", "true")]);
    let spec = format!(
        r#"
[model]
provider = "scripted"
script = [
  {{ tool_calls = [{{ name = "m.add", arguments = {{ a = 2, b = 3 }} }}, {{ name = "m.fail", arguments = {{ message = "boom" }} }}] }},
  {{ tool_calls = [{{ name = "m.add_tool", arguments = {{}} }}] }},
  {{ tool_calls = [{{ name = "m.late", arguments = {{ x = "hi" }} }}, {{ name = "m.count", arguments = {{}} }}] }},
  {{ text = "done" }},
]
[[tools.mcp]]
name = "m"
command = "{}"
args = ["{SERVER}", "--transport", "stdio"]
tools = ["add", "fail", "add_tool", "late"]
"#,
        python()
    );
    server.apply("stdio", &spec).await;
    let (t, events) = run_turn(&server, "stdio").await;
    assert_eq!(t["status"], "completed", "{t}");

    let add = completed(&events, "m.add");
    assert_eq!((add[0]["outcome"].as_str(), &add[0]["output"]), (Some("ok"), &json!({"sum": 5})));
    let requested = events.iter().find(|e| e["type"] == "tool.requested" && e["tool"] == "m.add").unwrap();
    assert_eq!(requested["idempotent"], true, "idempotentHint/readOnlyHint make a tool retry-safe");
    let fail = completed(&events, "m.fail");
    assert_eq!(fail[0]["outcome"], "error");
    assert!(fail[0]["output"]["error"].as_str().unwrap().contains("boom"), "{}", fail[0]);
    let late = completed(&events, "m.late");
    assert_eq!(
        (late[0]["outcome"].as_str(), &late[0]["output"]),
        (Some("ok"), &json!({"result": "HI"})),
        "a tool added at run time is callable"
    );
    let count = completed(&events, "m.count");
    assert_eq!(count[0]["output"]["error"], "unknown tool \"m.count\"", "tools outside the allow-list are not offered");
}

#[tokio::test]
async fn stdio_servers_need_the_operators_permission() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let spec = "[model]\nprovider = \"scripted\"\nscript = [{ text = \"x\" }]\n[[tools.mcp]]\nname = \"m\"\ncommand = \"python3\"\n";
    let resp = server.http.put(format!("{}/v1/agents/nope", server.url)).body(spec).send().await.unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["details"][0]["path"], "tools.mcp[0].command");
}

#[tokio::test]
async fn http_server_with_secret_header_and_timeout() {
    let marks = tempfile::tempdir().unwrap();
    let cancel_file = marks.path().join("cancelled");
    let mcp = HttpMcp::start_with_env(0, &[("MCP_CANCEL_FILE", cancel_file.to_str().unwrap())]);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &[("MCP_TEST_SECRET", "s3cret-value")]);
    let spec = format!(
        r#"
[model]
provider = "scripted"
script = [
  {{ tool_calls = [{{ name = "h.echo_header", arguments = {{ name = "x-api-key" }} }}, {{ name = "h.slow", arguments = {{ seconds = 5 }} }}] }},
  {{ text = "done" }},
]
[[tools.mcp]]
name = "h"
url = "http://127.0.0.1:{}/mcp"
headers = {{ "X-Api-Key" = "MCP_TEST_SECRET" }}
timeout_seconds = 1
[tools.router]
max_attempts = 1
"#,
        mcp.port
    );
    server.apply("web", &spec).await;
    let (t, events) = run_turn(&server, "web").await;
    assert_eq!(t["status"], "completed", "{t}");
    let echoed = completed(&events, "h.echo_header");
    assert_eq!(echoed[0]["output"], json!({"result": "s3cret-value"}), "the secret reached the server as a header");
    let spec_json = server.get("/v1/agents/web").await.to_string();
    assert!(!spec_json.contains("s3cret-value"), "secrets are referenced by name, never stored");
    let slow = completed(&events, "h.slow");
    assert_eq!(slow[0]["output"]["error"], "timed out after 1 s");
    // The timed-out call was cancelled on the server too (notifications/cancelled).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&cancel_file).unwrap_or_default().contains("cancelled") {
        assert!(Instant::now() < deadline, "the server never saw the cancellation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_server_killed_mid_call_opens_the_breaker_and_recovers() {
    let mut mcp = HttpMcp::start(0);
    let port = mcp.port;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let spec = format!(
        r#"
[model]
provider = "scripted"
script = [
  {{ tool_calls = [{{ name = "k.slow", arguments = {{ seconds = 3 }} }}] }},
  {{ tool_calls = [{{ name = "k.add", arguments = {{ a = 1, b = 1 }} }}] }},
  {{ text = "done" }},
]
[[tools.mcp]]
name = "k"
url = "http://127.0.0.1:{port}/mcp"
timeout_seconds = 10
[tools.router]
max_attempts = 1
breaker_failures = 1
breaker_cooldown_seconds = 1
"#
    );
    server.apply("killed", &spec).await;
    let session = server.session("killed").await;
    let turn = server.submit(&session, "go").await;
    // Kill the server once the slow call is in flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.events(&session).await.iter().any(|e| e["type"] == "tool.requested" && e["tool"] == "k.slow") {
        assert!(Instant::now() < deadline, "the slow call never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    mcp.kill();
    let t = server.wait_turn(&session, &turn).await;
    assert_eq!(t["status"], "completed", "the turn goes on: {t}");
    let events = server.events(&session).await;
    let slow = completed(&events, "k.slow");
    assert_eq!(slow[0]["outcome"], "error");
    assert!(slow[0]["output"]["error"].as_str().unwrap().starts_with("unavailable: MCP server k"), "{}", slow[0]);
    let add = completed(&events, "k.add");
    assert!(add[0]["output"]["error"].as_str().unwrap().starts_with("circuit open for 127.0.0.1:"), "{}", add[0]);

    // The server comes back on the same port; after the cool-down calls work again.
    let _back = HttpMcp::start(port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, ev) = run_turn(&server, "killed").await;
        if completed(&ev, "k.add").first().is_some_and(|c| c["outcome"] == "ok") {
            let states: Vec<&str> = ev.iter().filter(|e| e["type"] == "tool.breaker").map(|e| e["state"].as_str().unwrap()).collect();
            assert!(states.ends_with(&["closed"]), "{states:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the MCP tools never recovered");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_server_that_only_speaks_http_sse_is_reached_through_the_fallback() {
    let mcp = HttpMcp::start_transport("sse", 0, &[]);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let spec = format!(
        r#"
[model]
provider = "scripted"
script = [
  {{ tool_calls = [{{ name = "old.add", arguments = {{ a = 20, b = 22 }} }}] }},
  {{ text = "done" }},
]
[[tools.mcp]]
name = "old"
url = "http://127.0.0.1:{}/sse"
"#,
        mcp.port
    );
    server.apply("legacy", &spec).await;
    let (t, events) = run_turn(&server, "legacy").await;
    assert_eq!(t["status"], "completed", "{t}");
    let add = completed(&events, "old.add");
    assert_eq!((add[0]["outcome"].as_str(), &add[0]["output"]), (Some("ok"), &json!({"sum": 42})), "{}", add[0]);
}

#[tokio::test]
async fn one_turn_uses_two_mcp_servers_in_parallel() {
    let web = HttpMcp::start(0);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &[("AGENTRT_MCP_STDIO_ON_HOST", "true")]);
    let spec = format!(
        r#"
[model]
provider = "scripted"
script = [
  {{ tool_calls = [{{ name = "local.slow", arguments = {{ seconds = 1 }} }}, {{ name = "web.slow", arguments = {{ seconds = 1 }} }}] }},
  {{ text = "done" }},
]
[[tools.mcp]]
name = "local"
command = "{}"
args = ["{SERVER}", "--transport", "stdio"]
[[tools.mcp]]
name = "web"
url = "http://127.0.0.1:{}/mcp"
"#,
        python(),
        web.port
    );
    server.apply("both", &spec).await;
    let (t, events) = run_turn(&server, "both").await;
    assert_eq!(t["status"], "completed", "{t}");
    let local = completed(&events, "local.slow");
    let remote = completed(&events, "web.slow");
    assert_eq!((&local[0]["output"], &remote[0]["output"]), (&json!({"result": "slept"}), &json!({"result": "slept"})));
    // Both ran at once: the two one-second calls overlapped.
    let started = events.iter().find(|e| e["type"] == "tool.requested").unwrap()["ts"].as_i64().unwrap();
    let ended = events.iter().filter(|e| e["type"] == "tool.completed").map(|e| e["ts"].as_i64().unwrap()).max().unwrap();
    assert!(ended - started < 1900, "the calls ran one after the other: {} ms", ended - started);
}
