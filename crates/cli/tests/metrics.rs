//! `/metrics` after a known workload, parsed by the official Prometheus
//! Python client (a real, independent parser).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

/// The Python with the test peers installed (set by scripts/test.sh).
fn python() -> String {
    std::env::var("AGENTRT_TEST_PYTHON")
        .expect("AGENTRT_TEST_PYTHON is not set: run the suite with ./scripts/test.sh, which installs the Python test peers")
}

fn parse(exposition: &str) -> Vec<Value> {
    let mut child = Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/peers/parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the Python parser");
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the Prometheus parser rejected /metrics: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn value(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .and_then(|s| s["value"].as_f64())
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}

#[tokio::test]
async fn metrics_reflect_a_known_workload() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.apply("assistant", include_str!("../../../examples/agents/assistant.toml")).await;
    let mut last = String::new();
    for i in 0..3 {
        let session = server.session("assistant").await;
        let turn = server.submit(&session, &format!("note {i}")).await;
        assert_eq!(server.wait_turn(&session, &turn).await["status"], "completed");
        last = session;
    }
    server.call(reqwest::Method::DELETE, &format!("/v1/sessions/{last}"), None).await;

    let resp = server.http.get(format!("{}/metrics", server.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("ses_"), "no session ids in labels");
    let s = parse(&text);
    assert_eq!(value(&s, "agentrt_turns_total", &[("event", "started")]), 3.0);
    assert_eq!(value(&s, "agentrt_turns_total", &[("event", "completed")]), 3.0);
    assert_eq!(value(&s, "agentrt_tool_calls_total", &[("tool", "kv.set"), ("outcome", "ok")]), 3.0);
    assert_eq!(value(&s, "agentrt_tool_calls_total", &[("tool", "clock.now"), ("outcome", "ok")]), 3.0);
    assert_eq!(value(&s, "agentrt_step_duration_seconds_count", &[("kind", "model")]), 6.0);
    assert_eq!(value(&s, "agentrt_step_duration_seconds_count", &[("kind", "tool")]), 6.0);
    assert!(value(&s, "agentrt_model_tokens_total", &[("agent", "assistant"), ("direction", "input")]) > 0.0);
    assert_eq!(value(&s, "agentrt_sessions", &[("status", "idle")]), 2.0);
    assert_eq!(value(&s, "agentrt_sessions", &[("status", "terminated")]), 1.0);
    // 3 × (submitted + 6 executor appends) + 3 creations are not appends; at least the turn appends:
    assert!(value(&s, "agentrt_store_append_duration_seconds_count", &[]) >= 21.0);
    assert_eq!(value(&s, "agentrt_sse_clients", &[]), 0.0);
}
