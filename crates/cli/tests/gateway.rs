//! The model gateway end to end: the official `openai` Python SDK calls
//! `/v1/gateway/openai/v1` with a session credential, as code in a sandbox
//! would; the server's routes fall back from a failing upstream to a working
//! one; every call, plain or streamed, is priced and recorded as that
//! session's usage; a revoked credential is refused.

mod common;

use std::process::Command;
use std::sync::atomic::Ordering;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

fn python() -> String {
    std::env::var("AGENTRT_TEST_PYTHON").expect("AGENTRT_TEST_PYTHON is not set: run the suite with ./scripts/test.sh")
}

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/peers/openai_client.py");

/// Runs the `openai` SDK peer; returns its JSON line.
fn sdk(base: &str, key: &str, model: &str, mode: &str) -> Value {
    let out = Command::new(python()).args([CLIENT, base, key, model, mode]).output().expect("run the openai peer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "openai peer failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

// Multi-threaded: the SDK peer runs as a blocking child process while the
// upstream servers answer it from this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_calls_through_the_gateway_with_a_session_credential() {
    let (down, down_calls) = upstream(Some(503)).await;
    let (up, up_calls) = upstream(None).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agentrt.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[models.primary]
provider = "openai"
base-url = "{down}"
model = "big-model"
fallbacks = ["backup"]
[models.backup]
provider = "openai"
base-url = "{up}"
model = "small-model"
price = {{ input = 1.0, output = 2.0, cached-input = 0.5 }}
"#
        ),
    )
    .unwrap();
    let server = Server::start_with_env(&dir.path().join("data"), &[("AGENTRT_CONFIG", config.to_str().unwrap())]);
    server.apply("coder", "[model]\nprovider = \"scripted\"\n").await;
    let session = server.session("coder").await;
    let (_, cred) = server.post(&format!("/v1/sessions/{session}/credentials"), json!({})).await;
    let token = cred["token"].as_str().unwrap().to_owned();
    let base = format!("{}/v1/gateway/openai/v1", server.url);

    let plain = sdk(&base, &token, "primary", "plain");
    assert_eq!(plain["content"], "hello from small-model", "fell back to the backup route: {plain}");
    assert_eq!(plain["usage"]["prompt_tokens"], 12);
    assert_eq!((down_calls.load(Ordering::SeqCst), up_calls.load(Ordering::SeqCst)), (1, 1));
    let streamed = sdk(&base, &token, "backup", "stream");
    assert_eq!(streamed["content"], "hello from small-model", "{streamed}");
    assert_eq!(streamed["usage"]["completion_tokens"], 5, "{streamed}");

    // Both calls are the session's usage, priced by the route that answered:
    // (12 - 3) * 1.0 + 3 * 0.5 + 5 * 2.0 = 20.5 per million tokens each.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let row = loop {
        let usage = server.get("/v1/usage?group_by=session").await;
        let row = usage["usage"].as_array().unwrap().iter().find(|r| r["key"] == session.as_str()).cloned();
        if let Some(r) = row.filter(|r| r["calls"] == 2) {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "the streamed call's usage was never recorded: {usage}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!((row["input_tokens"].as_u64(), row["output_tokens"].as_u64(), row["cached_tokens"].as_u64()), (Some(24), Some(10), Some(6)));
    assert!((row["cost_usd"].as_f64().unwrap() - 2.0 * 20.5e-6).abs() < 1e-12, "{row}");
    let by_route = server.get("/v1/usage?group_by=route").await;
    assert_eq!(by_route["usage"][0]["key"], "backup");
    let journaled = server.events(&session).await.into_iter().filter(|e| e["type"] == "gateway.called").collect::<Vec<_>>();
    assert_eq!(journaled.len(), 2, "each call is in the session's log");
    assert_eq!((journaled[0]["route"].as_str(), journaled[0]["usage"]["output_tokens"].as_u64()), (Some("backup"), Some(5)));
    let (code, out, err) = cli(&["usage", "--group-by", "agent"], Some(&server.url));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("default/coder") && out.contains("0.000041"), "{out}");

    // The agent loop itself can call through a route: same fallback, same accounting.
    server.apply("routed", "[model]\nprovider = \"gateway\"\nmodel = \"primary\"\n").await;
    let routed = server.session("routed").await;
    let turn = server.submit(&routed, "hi").await;
    let t = server.wait_turn(&routed, &turn).await;
    assert_eq!((t["status"].as_str(), t["output"].as_str()), (Some("completed"), Some("hello from small-model")), "{t}");
    assert_eq!(down_calls.load(Ordering::SeqCst), 2, "the loop's call tried the primary route first");
    let by_agent = server.get("/v1/usage?group_by=agent").await;
    let row = by_agent["usage"].as_array().unwrap().iter().find(|r| r["key"] == "default/routed").cloned().unwrap();
    assert_eq!((row["calls"].as_u64(), row["input_tokens"].as_u64()), (Some(1), Some(12)), "{row}");
    assert!((row["cost_usd"].as_f64().unwrap() - 20.5e-6).abs() < 1e-12, "priced by the route that answered: {row}");
    let resp = server
        .http
        .put(format!("{}/v1/agents/bad", server.url))
        .body("[model]\nprovider = \"gateway\"\nmodel = \"nope\"\n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422, "an unknown route is refused when the agent is applied");

    let unknown = sdk(&base, &token, "nope", "plain");
    assert_eq!(unknown["status"], 404, "{unknown}");
    assert!(unknown["error"].as_str().unwrap().contains("backup, primary"), "names the routes: {unknown}");
    let (s, _) = server.call(Method::DELETE, &format!("/v1/sessions/{session}"), None).await;
    assert_eq!(s, 200);
    let revoked = sdk(&base, &token, "backup", "plain");
    assert_eq!(revoked["status"], 401, "a credential dies with its session: {revoked}");
    assert_eq!(up_calls.load(Ordering::SeqCst), 3, "refused calls never reach a provider");
}

/// Posts one chat completion to the gateway with `key`; returns (status, body).
async fn chat(server: &Server, key: &str, model: &str) -> (u16, Value) {
    let url = format!("{}/v1/gateway/openai/v1/chat/completions", server.url);
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let resp = client_with(key).post(url).json(&body).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn gateway_calls_over_a_budget_are_refused_with_429_until_it_is_raised() {
    let (up, up_calls) = upstream(None).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agentrt.toml");
    let route = format!(
        "[models.small]\nprovider = \"openai\"\nbase-url = \"{up}\"\nmodel = \"small-model\"\nprice = {{ input = 1.0, output = 2.0 }}\n"
    );
    std::fs::write(&config, route).unwrap();
    let server = Server::start_with_env(&dir.path().join("data"), &[("AGENTRT_CONFIG", config.to_str().unwrap())]);
    server.apply("coder", "[model]\nprovider = \"scripted\"\n").await;
    let session = server.session("coder").await;
    let (_, cred) = server.post(&format!("/v1/sessions/{session}/credentials"), json!({})).await;
    let token = cred["token"].as_str().unwrap().to_owned();
    let (s, budget) = server
        .post("/v1/budgets", json!({"scope": "session", "target": session, "metric": "tokens", "period": "session", "limit": 17}))
        .await;
    assert_eq!(s, 201, "{budget}");

    assert_eq!(chat(&server, &token, "small").await.0, 200);
    // The call is recorded after its answer; wait until it counts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.get(&format!("/v1/sessions/{session}")).await["spend"]["tokens"] != 17 {
        assert!(std::time::Instant::now() < deadline, "the call's 17 tokens were never counted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (s, refused) = chat(&server, &token, "small").await;
    assert_eq!((s, refused["error"]["code"].as_str()), (429, Some("budget_exceeded")), "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains(budget["id"].as_str().unwrap()), "{refused}");
    assert_eq!((refused["error"]["budget"]["spent"].as_f64(), refused["error"]["budget"]["limit"].as_f64()), (Some(17.0), Some(17.0)));

    // The session's calls count toward its tenant's day too: a key of the
    // tenant is refused by a tenant budget the session's call used up.
    let (s, _) = server.post("/v1/budgets", json!({"scope": "tenant", "metric": "cost_usd", "period": "day", "limit": 0.00001})).await;
    assert_eq!(s, 201);
    let admin = key_for(&server.url).unwrap();
    let (s, v) = chat(&server, &admin, "small").await;
    assert_eq!((s, v["error"]["budget"]["scope"].as_str()), (429, Some("tenant")), "{v}");
    assert_eq!(up_calls.load(Ordering::SeqCst), 1, "refused calls never reach a provider");

    let (s, _) = server.call(Method::PATCH, &format!("/v1/budgets/{}", budget["id"].as_str().unwrap()), Some(json!({"limit": 1000}))).await;
    assert_eq!(s, 200);
    let (s, v) = chat(&server, &token, "small").await;
    assert_eq!((s, v["error"]["budget"]["scope"].as_str()), (429, Some("tenant")), "the tenant's budget still binds: {v}");
    let budgets = server.get("/v1/budgets").await;
    let tenant_budget = budgets["budgets"].as_array().unwrap().iter().find(|b| b["scope"] == "tenant").unwrap().clone();
    let (s, _) = server.call(Method::DELETE, &format!("/v1/budgets/{}", tenant_budget["id"].as_str().unwrap()), None).await;
    assert_eq!(s, 200);
    assert_eq!(chat(&server, &token, "small").await.0, 200);
    assert_eq!(up_calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_loop_guard_stops_a_turn_that_repeats_itself() {
    const LOOPER: &str = r#"
[model]
provider = "scripted"
script = [{ tool_calls = [{ name = "fetch", arguments = { page = 1, q = "same" } }], repeat = 20 }, { text = "never" }]
[limits]
max_repeated_tool_calls = 3
[[tools.http]]
name = "fetch"
url = "COUNTER/fetch"
idempotent = true
"#;
    let Rig { dir: _dir, counter, server, session } = rig("looper", LOOPER, None).await;
    let turn = server.submit(&session, "go").await;
    let t = server.wait_turn(&session, &turn).await;
    assert_eq!((t["status"].as_str(), t["error"]["code"].as_str()), (Some("failed"), Some("loop_detected")), "{t}");
    assert!(t["error"]["message"].as_str().unwrap().contains("fetch with the same arguments more than 3 times"), "{t}");
    assert_eq!(counter.count("fetch"), 3, "the fourth identical call never ran");
    let events = server.events(&session).await;
    let last_answer = events.iter().rev().find(|e| e["type"] == "model.completed").unwrap();
    let call_id = &last_answer["tool_calls"][0]["id"];
    let closed = events.iter().any(|e| e["type"] == "tool.completed" && &e["call_id"] == call_id && e["outcome"] == "error");
    assert!(closed, "the refused call has a result, so the next turn's conversation is well formed");

    // Without a limit the same script runs on: the guard is what stopped it.
    let unguarded =
        LOOPER.replace("max_repeated_tool_calls = 3", "max_repeated_tool_calls = 0\nmax_model_calls_without_progress = 0\nmax_steps = 100");
    server.apply("free", &unguarded.replace("COUNTER", &counter.url)).await;
    let free = server.session("free").await;
    let turn = server.submit(&free, "go").await;
    assert_eq!(server.wait_turn(&free, &turn).await["status"], "completed");
    assert_eq!(counter.count("fetch"), 23);
}

#[tokio::test]
async fn the_loop_guard_stops_model_calls_that_make_no_progress() {
    const PINGPONG: &str = r#"
[model]
provider = "scripted"
script = [
  { tool_calls = [{ name = "echo", arguments = { side = "a" } }] },
  { tool_calls = [{ name = "echo", arguments = { side = "b" } }] },
  { tool_calls = [{ name = "echo", arguments = { side = "a" } }], repeat = 10 },
  { text = "never" },
]
[limits]
max_repeated_tool_calls = 100
max_model_calls_without_progress = 4
"#;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.apply("pingpong", PINGPONG).await;
    let session = server.session("pingpong").await;
    let turn = server.submit(&session, "go").await;
    let t = server.wait_turn(&session, &turn).await;
    assert_eq!(t["error"]["code"], "loop_detected", "{t}");
    assert!(t["error"]["message"].as_str().unwrap().contains("4 model calls in a row"), "{t}");
    let answers = server.events(&session).await.iter().filter(|e| e["type"] == "model.completed").count();
    assert_eq!(answers, 6, "2 new calls, then the 4th repeat stops the turn");
}

#[test]
fn config_dump_never_prints_a_provider_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agentrt.toml");
    std::fs::write(
        &config,
        "[models.m]\nprovider = \"openai\"\nbase-url = \"http://127.0.0.1:9/v1\"\nmodel = \"x\"\napi-key = \"sk-very-secret\"\n",
    )
    .unwrap();
    let (code, out, err) = cli(&["config", "dump", "--config", config.to_str().unwrap()], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("[models.m]") && out.contains("<redacted>"), "{out}");
    assert!(!out.contains("sk-very-secret"), "{out}");
}
