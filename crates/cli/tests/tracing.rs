//! OpenTelemetry traces exported over OTLP (HTTP/protobuf and gRPC) to a
//! receiver built on the official OpenTelemetry protobuf package: the span
//! tree of a turn with a model call asking for two tools, GenAI attributes,
//! token counts, and W3C `traceparent` in and out.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const AGENT: &str = r#"
[model]
provider = "scripted"
script = [
  { tool_calls = [{ name = "echo", arguments = { x = 1 } }, { name = "probe", arguments = { secret = "s3cr3t" } }] },
  { text = "done" },
]
[[tools.http]]
name = "probe"
url = "COUNTER/probe"
idempotent = true
"#;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

struct Receiver {
    child: Child,
    port: u16,
    out: std::path::PathBuf,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn receiver(protocol: &str, dir: &std::path::Path) -> Receiver {
    let python = std::env::var("AGENTRT_TEST_PYTHON").expect("AGENTRT_TEST_PYTHON is not set: run the suite with ./scripts/test.sh");
    let out = dir.join(format!("spans-{protocol}.jsonl"));
    let mut child = Command::new(python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/peers/otlp_receiver.py"))
        .args(["--protocol", protocol, "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the OTLP receiver");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().strip_prefix("listening ").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("receiver said {line:?}"));
    Receiver { child, port, out }
}

/// Waits until the receiver has the turn's root span, then returns all spans.
async fn spans(r: &Receiver) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&r.out).unwrap_or_default();
        let spans: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if spans.iter().any(|s| s["name"] == "invoke_agent probed") && spans.iter().filter(|s| s["name"] == "chat").count() >= 2 {
            return spans;
        }
        assert!(Instant::now() < deadline, "spans did not arrive: {spans:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs one traced turn against a fresh receiver; returns its spans, the
/// turn, its events and the counter that served the HTTP tool.
async fn traced_turn(protocol: &str, otlp_protocol: &str, extra_env: &[(&str, &str)]) -> (Vec<Value>, Value, Vec<Value>, Counter, String) {
    let dir = tempfile::tempdir().unwrap();
    let r = receiver(protocol, dir.path());
    let counter = Counter::start().await;
    let endpoint = format!("http://127.0.0.1:{}", r.port);
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", otlp_protocol),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    env.extend_from_slice(extra_env);
    let server = Server::start_with_env(&dir.path().join("data"), &env);
    server.apply("probed", &AGENT.replace("COUNTER", &counter.url)).await;
    let session = server.session("probed").await;
    let resp = server
        .http
        .post(format!("{}/v1/sessions/{session}/turns?wait=30", server.url))
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .json(&json!({"input": "trace me"}))
        .send()
        .await
        .unwrap();
    let turn: Value = resp.json().await.unwrap();
    assert_eq!(turn["status"], "completed", "{turn}");
    let events = server.events(&session).await;
    (spans(&r).await, turn, events, counter, session)
}

async fn turn_span_tree(protocol: &str, otlp_protocol: &str) {
    let (spans, turn, events, counter, session) = traced_turn(protocol, otlp_protocol, &[]).await;
    let by_name = |n: &str| spans.iter().filter(|s| s["name"] == n).cloned().collect::<Vec<_>>();
    assert!(spans.iter().all(|s| s["trace_id"] == TRACE), "every span is in the client's trace");

    let root = by_name("invoke_agent probed");
    assert_eq!(root.len(), 1);
    let root = &root[0];
    assert_eq!(root["parent_span_id"], PARENT, "the turn continues the incoming traceparent");
    assert_eq!(root["attributes"]["gen_ai.operation.name"], "invoke_agent");
    assert_eq!(root["attributes"]["gen_ai.agent.name"], "probed");
    assert_eq!(root["attributes"]["gen_ai.conversation.id"], session.as_str());
    assert_eq!(root["attributes"]["gen_ai.usage.input_tokens"], turn["usage"]["input_tokens"]);

    let usage: Vec<&Value> = events.iter().filter(|e| e["type"] == "model.completed").map(|e| &e["usage"]).collect();
    let chats = by_name("chat");
    assert_eq!(chats.len(), 2);
    for (chat, usage) in chats.iter().zip(&usage) {
        assert_eq!(chat["parent_span_id"], root["span_id"]);
        assert_eq!(chat["kind"], 3, "chat spans are CLIENT spans");
        assert_eq!(chat["attributes"]["gen_ai.operation.name"], "chat");
        assert_eq!(chat["attributes"]["gen_ai.provider.name"], "scripted");
        assert_eq!(chat["attributes"]["gen_ai.usage.input_tokens"], usage["input_tokens"]);
        assert_eq!(chat["attributes"]["gen_ai.usage.output_tokens"], usage["output_tokens"]);
    }
    let tools: Vec<Value> = spans.iter().filter(|s| s["attributes"]["gen_ai.operation.name"] == "execute_tool").cloned().collect();
    for t in &tools {
        assert_eq!(t["name"], format!("execute_tool {}", t["attributes"]["gen_ai.tool.name"].as_str().unwrap()));
    }
    let mut names: Vec<&str> = tools.iter().map(|t| t["attributes"]["gen_ai.tool.name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["echo", "probe"]);
    for t in &tools {
        assert_eq!(t["parent_span_id"], root["span_id"]);
        assert_eq!(t["attributes"]["gen_ai.operation.name"], "execute_tool");
        assert_eq!(t["attributes"]["agentrt.tool.outcome"], "ok");
        assert!(t["attributes"].get("gen_ai.tool.call.arguments").is_none(), "content is off by default");
    }
    assert!(!by_name("store.append").is_empty());

    // traceparent out: the HTTP tool saw the probe span as its parent.
    let probe = tools.iter().find(|t| t["attributes"]["gen_ai.tool.name"] == "probe").unwrap();
    let sent = counter.traceparents("probe");
    assert_eq!(sent, [format!("00-{TRACE}-{}-01", probe["span_id"].as_str().unwrap())]);

    // The trace id is on the turn's events, to join logs, events and traces.
    let started = events.iter().find(|e| e["type"] == "turn.started").unwrap();
    assert_eq!(started["trace_id"], TRACE);
}

#[tokio::test]
async fn turn_spans_over_otlp_http() {
    turn_span_tree("http", "http/protobuf").await;
}

#[tokio::test]
async fn turn_spans_over_otlp_grpc() {
    turn_span_tree("grpc", "grpc").await;
}

#[tokio::test]
async fn content_goes_on_spans_only_when_the_operator_asks() {
    let (spans, ..) = traced_turn("http", "http/protobuf", &[("AGENTRT_OTEL_CAPTURE_CONTENT", "true")]).await;
    let probe = spans.iter().find(|s| s["attributes"]["gen_ai.tool.name"] == "probe").unwrap();
    assert_eq!(probe["attributes"]["gen_ai.tool.call.arguments"], r#"{"secret":"s3cr3t"}"#);
    assert!(probe["attributes"]["gen_ai.tool.call.result"].as_str().unwrap().contains("probe"));
}

#[tokio::test]
async fn json_log_lines_in_a_turn_carry_session_turn_and_trace_ids() {
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("log.jsonl")).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--log-format", "json", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    while !line.starts_with("agentrt listening on ") {
        line.clear();
        out.read_line(&mut line).unwrap();
    }
    let url = line.trim().strip_prefix("agentrt listening on ").unwrap().to_owned();
    let http = reqwest::Client::new();
    http.put(format!("{url}/v1/agents/a")).body(include_str!("../../../examples/agents/assistant.toml")).send().await.unwrap();
    let s: Value = http.post(format!("{url}/v1/sessions")).json(&json!({"agent": "a"})).send().await.unwrap().json().await.unwrap();
    let session = s["id"].as_str().unwrap().to_owned();
    let t: Value = http
        .post(format!("{url}/v1/sessions/{session}/turns?wait=30"))
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .json(&json!({"input": "log me"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(t["status"], "completed");
    let deadline = Instant::now() + Duration::from_secs(10);
    let ended = loop {
        let text = std::fs::read_to_string(dir.path().join("log.jsonl")).unwrap();
        let found = text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|v| v["fields"]["message"] == "turn ended");
        if let Some(v) = found {
            break v;
        }
        assert!(Instant::now() < deadline, "no 'turn ended' line in:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ended["span"]["session"], session.as_str(), "{ended}");
    assert_eq!(ended["span"]["turn"], t["turn_id"], "{ended}");
    assert_eq!(ended["span"]["trace_id"], TRACE, "{ended}");
    assert_eq!(ended["level"], "INFO");
}

#[tokio::test]
async fn a_borrowers_calls_are_traced_under_its_own_agent_span() {
    const LENDER: &str = r#"
[model]
provider = "scripted"
script = [{ tool_calls = [{ name = "agents.borrow", arguments = { agent = "helper", input = "look" } }] }, { text = "done" }]
[agents]
borrow = ["helper"]
"#;
    const HELPER: &str = r#"
[model]
provider = "scripted"
script = [{ tool_calls = [{ name = "probe", arguments = {} }] }, { text = "seen" }]
[[tools.http]]
name = "probe"
url = "COUNTER/probe"
"#;
    let dir = tempfile::tempdir().unwrap();
    let r = receiver("http", dir.path());
    let counter = Counter::start().await;
    let endpoint = format!("http://127.0.0.1:{}", r.port);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let server = Server::start_with_env(&dir.path().join("data"), &env);
    server.apply("lender", LENDER).await;
    server.apply("helper", &HELPER.replace("COUNTER", &counter.url)).await;
    let session = server.session("lender").await;
    let turn = server.submit(&session, "go").await;
    assert_eq!(server.wait_turn(&session, &turn).await["status"], "completed");

    let deadline = Instant::now() + Duration::from_secs(30);
    let spans: Vec<Value> = loop {
        let text = std::fs::read_to_string(&r.out).unwrap_or_default();
        let spans: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let named = |n: &str| spans.iter().filter(|s| s["name"] == n).count();
        if named("invoke_agent lender") == 1 && named("invoke_agent helper") == 1 && named("chat") == 4 && named("execute_tool probe") == 1
        {
            break spans;
        }
        assert!(Instant::now() < deadline, "spans did not arrive: {spans:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let one = |n: &str| spans.iter().find(|s| s["name"] == n).unwrap().clone();
    let (root, loan, probe) = (one("invoke_agent lender"), one("invoke_agent helper"), one("execute_tool probe"));
    assert_eq!(loan["parent_span_id"], root["span_id"], "the loan is traced under the lender's turn");
    assert_eq!(loan["attributes"]["agentrt.lender"], "lender");
    assert_eq!(loan["attributes"]["agentrt.borrow.status"], "completed");
    assert_eq!(probe["parent_span_id"], loan["span_id"], "the borrower's tool call is under its span");
    let parents: Vec<&Value> = spans.iter().filter(|s| s["name"] == "chat").map(|s| &s["parent_span_id"]).collect();
    assert_eq!(parents.iter().filter(|p| **p == &loan["span_id"]).count(), 2, "the borrower's two model calls");
    assert_eq!(parents.iter().filter(|p| **p == &root["span_id"]).count(), 2, "the lender's two model calls");
}
