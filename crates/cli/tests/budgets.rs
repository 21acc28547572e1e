//! Budgets end to end through the real binary: a tenant budget holds under
//! two concurrent turns (every tool call counted by a real HTTP server), a
//! paused turn survives SIGKILL and restart and goes on when the budget is
//! raised; a session token budget pauses a turn that an operator override
//! (through the CLI) lets finish; an agent's per-turn step budget pauses a
//! turn that goes on when the budget is deleted; bad budgets get a 422 that
//! says what to fix.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

/// Three tool calls, one per model answer, then a final answer.
const TICKER: &str = r#"
[model]
provider = "scripted"
script = [
  { tool_calls = [{ name = "tick", arguments = { n = 1 } }] },
  { tool_calls = [{ name = "tick", arguments = { n = 2 } }] },
  { tool_calls = [{ name = "tick", arguments = { n = 3 } }] },
  { text = "ticked 3 times" },
]
[[tools.http]]
name = "tick"
url = "COUNTER/tick"
input_schema = { type = "object", properties = { n = { type = "integer" } } }
"#;

async fn create_budget(server: &Server, body: Value) -> Value {
    let (s, v) = server.post("/v1/budgets", body).await;
    assert_eq!(s, 201, "{v}");
    v
}

/// Waits until every session is idle or paused by a budget, and at least
/// one is paused; returns their statuses.
async fn settle(server: &Server, sessions: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut statuses = Vec::new();
        for s in sessions {
            statuses.push(server.get(&format!("/v1/sessions/{s}")).await["status"].as_str().unwrap_or("?").to_owned());
        }
        let settled = statuses.iter().all(|s| s == "idle" || s == "waiting_budget");
        if settled && statuses.iter().any(|s| s == "waiting_budget") {
            return statuses;
        }
        assert!(Instant::now() < deadline, "sessions never paused on the budget: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_tenant_budget_holds_under_concurrent_turns_survives_a_restart_and_a_raise_resumes() {
    let Rig { dir, counter, server, session: a } = rig("ticker", TICKER, None).await;
    let b = server.session("ticker").await;
    let budget = create_budget(&server, json!({"scope": "tenant", "metric": "tool_calls", "period": "day", "limit": 4})).await;
    let id = budget["id"].as_str().unwrap().to_owned();
    let turn_a = server.submit(&a, "go").await;
    let turn_b = server.submit(&b, "go").await;

    // Six calls wanted, four allowed: never a fifth, whatever the interleaving.
    settle(&server, &[&a, &b]).await;
    assert_eq!(counter.count("tick"), 4);
    let listed = server.get("/v1/budgets").await;
    assert_eq!(listed["budgets"][0]["spent"], 4.0, "{listed}");
    let mut paused = Vec::new();
    for s in [&a, &b] {
        let summary = server.get(&format!("/v1/sessions/{s}")).await;
        if summary["status"] == "waiting_budget" {
            let breach = &summary["budget_exceeded"];
            assert_eq!((breach["budget_id"].as_str(), breach["metric"].as_str()), (Some(id.as_str()), Some("tool_calls")), "{summary}");
            assert_eq!((breach["limit"].as_f64(), breach["spent"].as_f64(), breach["over_by"].as_f64()), (Some(4.0), Some(5.0), Some(1.0)));
            assert!(breach["resets_ms"].as_i64().is_some(), "a day budget says when it frees up: {breach}");
            let events = server.events(s).await;
            let exceeded = of_type(&events, "budget.exceeded");
            assert_eq!(exceeded.len(), 1, "{exceeded:?}");
            assert_eq!(exceeded[0]["held"][0]["call"]["name"], "tick", "the refused call is held, not dropped");
            paused.push(s.to_owned());
        }
    }

    // A SIGKILL and restart lose nothing: the turns are still paused.
    let mut server = server;
    server.kill();
    let server = Server::start(dir.path());
    for s in &paused {
        let summary = server.get(&format!("/v1/sessions/{s}")).await;
        assert_eq!(summary["status"], "waiting_budget", "{summary}");
    }
    assert_eq!(counter.count("tick"), 4);

    // Raising the limit lets both turns finish.
    let (s, v) = server.call(Method::PATCH, &format!("/v1/budgets/{id}"), Some(json!({"limit": 6}))).await;
    assert_eq!((s, v["limit"].as_f64()), (200, Some(6.0)), "{v}");
    for (s, t) in [(&a, &turn_a), (&b, &turn_b)] {
        let turn = server.wait_turn(s, t).await;
        assert_eq!((turn["status"].as_str(), turn["output"].as_str()), (Some("completed"), Some("ticked 3 times")), "{turn}");
    }
    assert_eq!(counter.count("tick"), 6);
    for s in &paused {
        let events = server.events(s).await;
        assert_eq!(of_type(&events, "budget.resumed").len(), 1);
        assert_eq!(of_type(&events, "budget.exceeded").len(), 1, "retries while paused add no events");
    }
    assert_log_verifies(dir.path());
}

#[tokio::test]
async fn a_session_token_budget_pauses_the_turn_and_an_operator_override_lets_it_finish() {
    let Rig { dir: _dir, counter, server, session } = rig("ticker", TICKER, None).await;
    create_budget(&server, json!({"scope": "session", "target": session, "metric": "tokens", "period": "session", "limit": 1})).await;
    let turn = server.submit(&session, "go").await;
    settle(&server, &[&session]).await;
    // The first model call was allowed (nothing spent yet); its answer spent
    // the budget, so the tool call it asked for is held.
    assert_eq!(counter.count("tick"), 0);
    let summary = server.get(&format!("/v1/sessions/{session}")).await;
    assert!(summary["spend"]["tokens"].as_u64().unwrap() > 1, "{summary}");

    let (code, out, err) = cli(&["budgets", "list"], Some(&server.url));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("session") && out.contains("tokens"), "{out}");
    let (code, out, err) = cli(&["budgets", "override", &session, "--comment", "worth it"], Some(&server.url));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&session), "{out}");

    let t = server.wait_turn(&session, &turn).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(counter.count("tick"), 3);
    let events = server.events(&session).await;
    let overridden = of_type(&events, "budget.overridden");
    assert_eq!((overridden.len(), overridden[0]["comment"].as_str()), (1, Some("worth it")));
    assert!(overridden[0]["by"].as_str().unwrap().starts_with("key:"), "{}", overridden[0]);

    // No running turn: nothing to override.
    let (s, v) = server.post(&format!("/v1/sessions/{session}/budget-override"), json!({})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")), "{v}");
}

#[tokio::test]
async fn an_agent_step_budget_per_turn_pauses_and_deleting_it_resumes() {
    let Rig { dir: _dir, counter, server, session } = rig("ticker", TICKER, None).await;
    let budget =
        create_budget(&server, json!({"scope": "agent", "target": "ticker", "metric": "steps", "period": "turn", "limit": 3})).await;
    let turn = server.submit(&session, "go").await;
    settle(&server, &[&session]).await;
    // model, tick, model: the second tick would be step 4.
    assert_eq!(counter.count("tick"), 1);
    let summary = server.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!((summary["budget_exceeded"]["spent"].as_f64(), summary["budget_exceeded"]["over_by"].as_f64()), (Some(4.0), Some(1.0)));
    assert_eq!(summary["budget_exceeded"]["resets_ms"], Value::Null, "a turn budget frees up only with a new turn");

    let (s, _) = server.call(Method::DELETE, &format!("/v1/budgets/{}", budget["id"].as_str().unwrap()), None).await;
    assert_eq!(s, 200);
    let t = server.wait_turn(&session, &turn).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(counter.count("tick"), 3);
}

#[tokio::test]
async fn bad_budgets_get_an_error_that_says_what_to_fix() {
    let Rig { dir: _dir, counter: _c, server, session } = rig("ticker", TICKER, None).await;
    let cases = [
        (json!({"scope": "agent", "metric": "steps", "period": "day", "limit": 3}), "agent's name"),
        (json!({"scope": "agent", "target": "nope", "metric": "steps", "period": "day", "limit": 3}), "not found"),
        (json!({"scope": "tenant", "metric": "steps", "period": "day", "limit": -1}), ">= 0"),
        (json!({"scope": "session", "target": session, "metric": "steps", "period": "month", "limit": 3}), "turn or session"),
        (json!({"scope": "tenant", "metric": "dollars", "period": "day", "limit": 3}), "metric"),
    ];
    for (body, hint) in cases {
        let (s, v) = server.post("/v1/budgets", body.clone()).await;
        assert!(s == 422 || s == 400, "{body} -> {s} {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(hint), "{body} -> {v}");
    }
    let (s, v) = server.call(Method::PATCH, "/v1/budgets/bud_nope", Some(json!({"limit": 1}))).await;
    assert_eq!(s, 404, "{v}");
    assert!(server.get("/v1/budgets").await["budgets"].as_array().unwrap().is_empty());
}
