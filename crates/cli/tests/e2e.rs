//! End to end through the real binary: agents, sessions, turns, the CLI,
//! idempotency keys, `on_busy`, and the OpenAI provider against a local
//! OpenAI-compatible server.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn example_agent_runs_a_turn_with_tools() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (code, out, err) = cli(&["agent", "apply", "-f", "../../examples/agents/assistant.toml"], Some(&server.url));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("agent assistant version 1 registered"), "{out}");

    let (code, out, err) = cli(&["run", "--agent", "assistant", "remember the milk"], Some(&server.url));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("You said: remember the milk. I noted it."), "{out}");
    assert!(out.contains("→ kv.set"), "{out}");

    let list = server.get("/v1/sessions").await;
    let session = list["sessions"][0]["id"].as_str().unwrap().to_owned();
    let events = server.events(&session).await;
    assert_eq!(
        types(&events),
        [
            "session.created",
            "turn.submitted",
            "turn.started",
            "model.requested",
            "model.completed",
            "tool.requested",
            "tool.requested",
            "tool.completed",
            "tool.completed",
            "model.requested",
            "model.completed",
            "message",
            "turn.completed"
        ]
    );
    assert_eq!(seqs(&events), (1..=13).collect::<Vec<_>>());
    for w in events.windows(2) {
        assert_eq!(w[1]["prev_hash"], w[0]["hash"]);
    }
    let s = server.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!((s["status"].as_str(), s["turn_count"].as_u64()), (Some("idle"), Some(1)));
    assert!(s["usage"]["input_tokens"].as_u64().unwrap() > 0);

    // The kv.set really stored the input, durably, for this session.
    let turn = server.submit(&session, "second").await;
    let t = server.wait_turn(&session, &turn).await;
    assert_eq!(t["status"], "completed");
    let (code, out, _) = cli(&["session", "get", &session], Some(&server.url));
    assert_eq!(code, 0);
    assert!(out.contains("turns:    2"), "{out}");
    let (code, out, _) = cli(&["--json", "session", "events", &session, "--after", "13"], Some(&server.url));
    assert_eq!(code, 0);
    let first: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!((first["seq"].as_u64(), first["type"].as_str()), (Some(14), Some("turn.submitted")));
}

#[tokio::test]
async fn cli_errors_are_one_line_and_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (code, out, err) = cli(&["session", "get", "ses_0000"], Some(&server.url));
    assert_ne!(code, 0);
    assert!(out.is_empty());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: session_not_found"), "{err}");
    let (code, _, err) = cli(&["agent", "list"], Some("http://127.0.0.1:9"));
    assert_ne!(code, 0);
    assert!(err.contains("cannot reach agentrt"), "{err}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[model]\nprovider = \"gpt\"\n").unwrap();
    let (code, _, err) = cli(&["agent", "apply", "-f", bad.to_str().unwrap()], Some(&server.url));
    assert_ne!(code, 0);
    assert!(err.contains("invalid_spec: model.provider"), "{err}");
}

const SLOW_AGENT: &str = r#"
[model]
provider = "scripted"
script = [
  { tool_calls = [{ name = "slow", arguments = { n = 1 } }] },
  { text = "done: {input}" },
]
[[tools.http]]
name = "slow"
url = "COUNTER/slow"
idempotent = true
"#;

#[tokio::test]
async fn idempotency_key_returns_the_same_turn() {
    let Rig { dir: _dir, counter, server, session } = rig("slow", SLOW_AGENT, None).await;
    let send = || {
        server
            .http
            .post(format!("{}/v1/sessions/{session}/turns", server.url))
            .header("idempotency-key", "order-42")
            .json(&json!({"input": "once"}))
            .send()
    };
    let a = send().await.unwrap();
    assert_eq!(a.status(), 202);
    assert!(a.headers().get("idempotent-replayed").is_none());
    let a: Value = a.json().await.unwrap();
    let b = send().await.unwrap();
    assert_eq!(b.headers()["idempotent-replayed"], "true");
    let b: Value = b.json().await.unwrap();
    assert_eq!(a["turn_id"], b["turn_id"]);
    server.wait_turn(&session, a["turn_id"].as_str().unwrap()).await;
    let c: Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(a["turn_id"], c["turn_id"]);
    assert_eq!(c["status"], "completed");
    let submitted = types(&server.events(&session).await).iter().filter(|t| *t == "turn.submitted").count();
    assert_eq!(submitted, 1);
    assert_eq!(counter.count("slow"), 1);
}

#[tokio::test]
async fn on_busy_reject_queue_and_interrupt() {
    let Rig { dir: _dir, counter, server, session } = rig("slow", SLOW_AGENT, Some("slow")).await;
    let first = server.submit(&session, "first").await;
    counter.wait_for("slow").await;

    let turns = format!("/v1/sessions/{session}/turns");
    let (s, v) = server.post(&turns, json!({"input": "nope", "on_busy": "reject"})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("session_busy")), "{v}");

    let (s, queued) = server.post(&turns, json!({"input": "second", "on_busy": "queue"})).await;
    assert_eq!((s, queued["status"].as_str()), (202, Some("queued")));
    let (s, interrupting) = server.post(&turns, json!({"input": "third", "on_busy": "interrupt"})).await;
    assert_eq!(s, 202);
    counter.release();

    let t1 = server.wait_turn(&session, &first).await;
    let t2 = server.wait_turn(&session, queued["turn_id"].as_str().unwrap()).await;
    let t3 = server.wait_turn(&session, interrupting["turn_id"].as_str().unwrap()).await;
    assert_eq!(t1["status"], "cancelled");
    assert_eq!(t2["status"], "cancelled");
    assert_eq!((t3["status"].as_str(), t3["output"].as_str()), (Some("completed"), Some("done: third")));
    let events = server.events(&session).await;
    // The interrupted tool call was closed in the log, not left dangling.
    let open = events.iter().filter(|e| e["type"] == "tool.requested").count();
    let closed = events.iter().filter(|e| e["type"] == "tool.completed").count();
    assert_eq!(open, closed);
    assert_log_verifies_remote(&server, &session).await;
}

async fn assert_log_verifies_remote(server: &Server, session: &str) {
    let v = server.get(&format!("/v1/sessions/{session}/verify")).await;
    assert_eq!(v["ok"], true, "{v}");
}

#[tokio::test]
async fn cancel_and_terminate() {
    let Rig { dir: _dir, counter, server, session } = rig("slow", SLOW_AGENT, Some("slow")).await;
    let turn = server.submit(&session, "x").await;
    counter.wait_for("slow").await;
    let (s, _) = server.post(&format!("/v1/sessions/{session}/turns/{turn}/cancel"), json!({})).await;
    assert_eq!(s, 202);
    let t = server.wait_turn(&session, &turn).await;
    assert_eq!(t["status"], "cancelled");
    let (s, v) = server.post(&format!("/v1/sessions/{session}/turns/{turn}/cancel"), json!({})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("turn_finished")));

    let (s, v) = server.call(reqwest::Method::DELETE, &format!("/v1/sessions/{session}"), None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("terminated")));
    let (s, v) = server.post(&format!("/v1/sessions/{session}/turns"), json!({"input": "more"})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("session_terminated")));
    counter.release();
}

#[tokio::test]
async fn wait_parameter_holds_until_the_turn_ends() {
    let Rig { dir: _dir, counter, server, session } = rig("slow", SLOW_AGENT, None).await;
    counter.delay("slow", Duration::from_millis(300));
    let (s, v) = server.post(&format!("/v1/sessions/{session}/turns?wait=30"), json!({"input": "w"})).await;
    assert_eq!((s, v["status"].as_str(), v["output"].as_str()), (200, Some("completed"), Some("done: w")));
    let (s, v) = server.post(&format!("/v1/sessions/{session}/turns?wait=0"), json!({"input": "w2"})).await;
    assert_eq!(s, 202, "{v}");
    assert!(["queued", "running"].contains(&v["status"].as_str().unwrap()), "{v}");
}

#[tokio::test]
async fn a_misconfigured_provider_fails_the_turn_once_and_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let spec = "[model]\nprovider = \"openai\"\nmodel = \"gpt-x\"\napi_key_env = \"AGENTRT_TEST_NO_SUCH_KEY\"\n";
    server.apply("nokey", spec).await;
    let session = server.session("nokey").await;
    let turn = server.submit(&session, "hi").await;
    let t = server.wait_turn(&session, &turn).await;
    assert_eq!((t["status"].as_str(), t["error"]["code"].as_str()), (Some("failed"), Some("model_error")), "{t}");
    let message = t["error"]["message"].as_str().unwrap();
    assert_eq!(message.matches("misconfigured").count(), 1, "{message}");
    assert!(message.contains("AGENTRT_TEST_NO_SUCH_KEY"), "{message}");
    let events = server.events(&session).await;
    assert_eq!(types(&events).iter().filter(|t| *t == "model.failed").count(), 1);
    let failed = events.iter().find(|e| e["type"] == "turn.failed").unwrap();
    assert_eq!(failed["steps"], t["steps"]);
}
