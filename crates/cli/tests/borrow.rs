//! Borrow end to end through the real binary: an agent lends its session to
//! another for a sub-task and gets the answer back as its call's result;
//! loans nest and come back when the borrower runs out of steps or time; a
//! borrower killed mid-task (SIGKILL) gives the session back to its lender
//! with a failure after the restart, without repeating its call, while one
//! waiting for an approval keeps waiting; cancelling the turn gives the
//! session back; and a client lends a session for one turn.

mod common;

use common::*;
use serde_json::{json, Value};

/// Lends the session to `billing`, then answers with what came back.
const FRONT: &str = r#"
[model]
provider = "scripted"
script = [
  { tool_calls = [{ name = "agents.borrow", arguments = { agent = "billing", input = "refund order 7" } }] },
  { text = "front got back: {tool_results}" },
]
[agents]
borrow = ["billing"]
"#;

/// Refunds with its own tool and answers.
const BILLING: &str = r#"
instructions = "You handle refunds."
[model]
provider = "scripted"
script = [
  { tool_calls = [{ name = "refund", arguments = { amount = 5 } }] },
  { text = "refunded ({input}): {tool_results}" },
]
[[tools.http]]
name = "refund"
url = "COUNTER/refund"
input_schema = { type = "object", properties = { amount = { type = "integer" } } }
"#;

fn event<'a>(events: &'a [Value], kind: &str, tool: Option<&str>) -> &'a Value {
    events.iter().find(|e| e["type"] == kind && tool.is_none_or(|t| e["tool"] == t)).unwrap_or_else(|| panic!("no {kind} event"))
}

/// The fencing token moves on by one per change of control (and never
/// back: a restart takes the lease with a newer one), and each
/// `lease.transferred` follows its `borrow.*` event.
fn assert_transfers(events: &[Value], expected: usize) {
    let leases = of_type(events, "lease.transferred");
    assert_eq!(leases.len(), expected, "{leases:?}");
    for pair in leases.windows(2) {
        assert!(pair[1]["old_token"].as_u64() >= pair[0]["new_token"].as_u64(), "{pair:?}");
    }
    for l in &leases {
        assert_eq!(l["new_token"].as_u64(), l["old_token"].as_u64().map(|t| t + 1), "{l}");
        let before = events.iter().find(|e| e["seq"].as_u64() == l["seq"].as_u64().map(|s| s - 1)).unwrap();
        assert!(before["type"].as_str().unwrap().starts_with("borrow.") || before["type"] == "tool.completed", "{before}");
    }
}

#[tokio::test]
async fn an_agent_borrows_another_and_gets_its_answer_back_as_the_call_result() {
    let Rig { dir, counter, server, session } = rig("front", FRONT, None).await;
    server.apply("billing", &BILLING.replace("COUNTER", &counter.url)).await;
    let turn = server.submit(&session, "I want my money back").await;
    let t = server.wait_turn(&session, &turn).await;
    assert_eq!(t["status"], "completed", "{t}");
    let output = t["output"].as_str().unwrap();
    assert!(output.starts_with("front got back: agents.borrow → "), "{output}");
    assert!(output.contains("refunded (refund order 7): refund → "), "the borrower's answer, to its sub-task: {output}");
    assert_eq!(counter.count("refund"), 1, "the borrower's own tool ran once");

    let summary = server.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(summary["agent"], "front", "control came back: {summary}");
    assert!(summary.get("lenders").is_none(), "{summary}");
    let events = server.events(&session).await;
    let started = event(&events, "borrow.started", None);
    assert_eq!((started["lender"].as_str(), started["borrower"].as_str()), (Some("front"), Some("billing")));
    assert_eq!(started["chain"], json!(["front", "billing"]));
    assert_eq!(started["input"], "refund order 7");
    let completed = event(&events, "borrow.completed", None);
    assert_eq!((completed["status"].as_str(), completed["steps"].as_u64()), (Some("completed"), Some(3)), "{completed}");
    // The lender's call result is in the transaction that gives the session back.
    let result = event(&events, "tool.completed", Some("agents.borrow"));
    assert_eq!(result["outcome"], "ok", "{result}");
    assert_eq!(result["output"]["agent"], "billing");
    assert_eq!(result["seq"].as_u64(), completed["seq"].as_u64().map(|s| s + 1));
    assert_transfers(&events, 2);
    // The borrower's steps are in the log between the two transfers.
    let refund = event(&events, "tool.completed", Some("refund"));
    assert!(refund["seq"].as_u64() > started["seq"].as_u64() && refund["seq"].as_u64() < completed["seq"].as_u64());
    assert_log_verifies(dir.path());
}

#[tokio::test]
async fn loans_nest_and_come_back_when_the_borrower_runs_out_of_steps() {
    const MIDDLE: &str = r#"
[model]
provider = "scripted"
script = [
  { tool_calls = [{ name = "agents.borrow", arguments = { agent = "auditor", input = "audit", max_steps = 2 } }] },
  { text = "billing: {tool_results}" },
]
[agents]
borrow = ["auditor", "front"]
"#;
    // Never answers: calls its tool again and again.
    const AUDITOR: &str = r#"
[model]
provider = "scripted"
script = [{ tool_calls = [{ name = "look", arguments = {} }], repeat = 10 }]
[[tools.http]]
name = "look"
url = "COUNTER/look"
"#;
    let Rig { dir, counter, server, session } = rig("front", FRONT, None).await;
    server.apply("billing", MIDDLE).await;
    server.apply("auditor", &AUDITOR.replace("COUNTER", &counter.url)).await;
    let turn = server.submit(&session, "go").await;
    let t = server.wait_turn(&session, &turn).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(counter.count("look"), 1, "two steps: one model call, one tool call");

    let events = server.events(&session).await;
    let started = of_type(&events, "borrow.started");
    assert_eq!(started.len(), 2);
    assert_eq!(started[1]["chain"], json!(["front", "billing", "auditor"]));
    assert_eq!(started[1]["max_steps"], 2);
    let completed = of_type(&events, "borrow.completed");
    assert_eq!((completed[0]["borrower"].as_str(), completed[0]["status"].as_str()), (Some("auditor"), Some("out_of_steps")));
    assert_eq!(completed[0]["steps"], 2);
    assert_eq!((completed[1]["borrower"].as_str(), completed[1]["status"].as_str()), (Some("billing"), Some("completed")));
    // Billing learned why, and answered; front got billing's answer.
    let inner = events.iter().filter(|e| e["type"] == "tool.completed" && e["tool"] == "agents.borrow").collect::<Vec<_>>();
    assert_eq!((inner[0]["outcome"].as_str(), inner[0]["output"]["status"].as_str()), (Some("error"), Some("out_of_steps")));
    assert!(inner[0]["output"]["error"].as_str().unwrap().contains("used its 2 steps"), "{}", inner[0]);
    let output = t["output"].as_str().unwrap();
    assert!(output.contains("billing: agents.borrow → ") && output.contains("out_of_steps"), "{output}");
    assert_transfers(&events, 4);
    assert_eq!(server.get(&format!("/v1/sessions/{session}")).await["agent"], "front");
    assert_log_verifies(dir.path());
}

#[tokio::test]
async fn a_borrower_out_of_time_gives_the_session_back() {
    const HURRIED: &str = r#"
[model]
provider = "scripted"
script = [
  { tool_calls = [{ name = "agents.borrow", arguments = { agent = "billing", input = "slow work", timeout_seconds = 1 } }] },
  { text = "front got back: {tool_results}" },
]
[agents]
borrow = ["billing"]
"#;
    const SLOW: &str = r#"
[model]
provider = "scripted"
script = [{ tool_calls = [{ name = "slow", arguments = {} }] }, { text = "never" }]
[[tools.http]]
name = "slow"
url = "COUNTER/slow"
"#;
    let Rig { dir: _dir, counter, server, session } = rig("front", HURRIED, Some("slow")).await;
    server.apply("billing", &SLOW.replace("COUNTER", &counter.url)).await;
    let turn = server.submit(&session, "go").await;
    let t = server.wait_turn(&session, &turn).await;
    counter.release();
    assert_eq!(t["status"], "completed", "{t}");
    let events = server.events(&session).await;
    let completed = event(&events, "borrow.completed", None);
    assert_eq!(completed["status"], "timed_out", "{events:#?}");
    let slow = event(&events, "tool.completed", Some("slow"));
    assert_eq!(slow["outcome"], "error", "the borrower's call in flight was closed: {slow}");
    assert!(t["output"].as_str().unwrap().contains("ran out of time (1 s)"), "{t}");
    assert_eq!(server.get(&format!("/v1/sessions/{session}")).await["agent"], "front");
}

#[tokio::test]
async fn a_borrower_killed_mid_task_gives_the_session_back_with_a_failure_after_restart() {
    const CHARGING: &str = r#"
[model]
provider = "scripted"
script = [{ tool_calls = [{ name = "charge", arguments = { amount = 9 } }] }, { text = "charged" }]
[[tools.http]]
name = "charge"
url = "COUNTER/charge"
"#;
    let Rig { dir, counter, mut server, session } = rig("front", FRONT, Some("charge")).await;
    server.apply("billing", &CHARGING.replace("COUNTER", &counter.url)).await;
    let turn = server.submit(&session, "charge me").await;
    counter.wait_for("charge").await;

    // While lent, the session cannot be handed over.
    let summary = server.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!((summary["agent"].as_str(), &summary["lenders"]), (Some("billing"), &json!(["front"])), "{summary}");
    let (s, v) = server.post(&format!("/v1/sessions/{session}/handover"), json!({"agent": "front"})).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("lent"), "{v}");

    server.kill();
    counter.release();
    server = Server::start(dir.path());
    let t = server.wait_turn(&session, &turn).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(counter.count("charge"), 1, "the borrower's call in flight is not repeated");

    let events = server.events(&session).await;
    let completed = event(&events, "borrow.completed", None);
    assert_eq!(completed["status"], "interrupted", "{completed}");
    let charge: Vec<&Value> = events.iter().filter(|e| e["type"] == "tool.completed" && e["tool"] == "charge").collect();
    assert_eq!(charge.len(), 1);
    assert_eq!(charge[0]["outcome"], "unknown", "{}", charge[0]);
    let result = event(&events, "tool.completed", Some("agents.borrow"));
    assert_eq!((result["outcome"].as_str(), result["output"]["status"].as_str()), (Some("error"), Some("interrupted")), "{result}");
    assert!(t["output"].as_str().unwrap().starts_with("front got back: "), "the lender finished the turn: {t}");
    assert_eq!(of_type(&events, "borrow.started").len(), 1, "the loan was not made again");
    assert_transfers(&events, 2);
    assert_eq!(server.get(&format!("/v1/sessions/{session}")).await["agent"], "front");
    server.kill();
    assert_log_verifies(dir.path());
}

#[tokio::test]
async fn a_client_lends_a_session_for_one_turn() {
    const HOME: &str = r#"
[model]
provider = "scripted"
script = [{ text = "home: {input}" }]
"#;
    let Rig { dir, counter, server, session } = rig("home", HOME, None).await;
    server.apply("billing", &BILLING.replace("COUNTER", &counter.url)).await;

    let body = json!({"input": "refund order 9", "borrow": {"agent": "billing", "max_steps": 5}});
    let (s, v) = server.post(&format!("/v1/sessions/{session}/turns?wait=30"), body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "completed", "{v}");
    assert!(v["output"].as_str().unwrap().starts_with("refunded (refund order 9): refund → "), "{v}");
    assert_eq!(v["borrow"]["agent"], "billing");
    assert_eq!(counter.count("refund"), 1);
    let summary = server.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(summary["agent"], "home", "{summary}");

    // The next turn is the lender's again.
    let turn = server.submit(&session, "hello").await;
    assert_eq!(server.wait_turn(&session, &turn).await["output"], "home: hello");

    for (body, what) in [
        (json!({"input": "x", "borrow": {"agent": "nobody"}}), "no agent \"nobody\""),
        (json!({"input": "x", "borrow": {"agent": "billing", "max_steps": 0}}), "max_steps"),
        (json!({"input": "x", "borrow": {"agent": "billing", "steps": 3}}), "unknown field"),
    ] {
        let (s, v) = server.post(&format!("/v1/sessions/{session}/turns"), body).await;
        assert!(s == 400 || s == 422, "{s} {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(what), "{v}");
    }

    // The CLI blocks: off the runtime that serves the counter.
    let (id, url) = (session.clone(), server.url.clone());
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        cli(&["session", "send", &id, "refund order 10", "--borrow", "billing", "--follow"], Some(&url))
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("refunded (refund order 10)"), "{out}");
    let events = server.events(&session).await;
    assert_eq!(of_type(&events, "borrow.completed").len(), 2);
    assert_eq!(server.get(&format!("/v1/sessions/{session}")).await["agent"], "home");
    assert_log_verifies(dir.path());
}

#[tokio::test]
async fn cancelling_a_turn_while_the_session_is_lent_gives_it_back_to_the_first_lender() {
    const CHARGING: &str = r#"
[model]
provider = "scripted"
script = [{ tool_calls = [{ name = "charge", arguments = {} }] }, { text = "charged" }]
[[tools.http]]
name = "charge"
url = "COUNTER/charge"
"#;
    let Rig { dir, counter, server, session } = rig("front", FRONT, Some("charge")).await;
    server.apply("billing", &CHARGING.replace("COUNTER", &counter.url)).await;
    let turn = server.submit(&session, "charge me").await;
    counter.wait_for("charge").await;
    let (s, v) = server.post(&format!("/v1/sessions/{session}/turns/{turn}/cancel"), json!({})).await;
    assert_eq!(s, 202, "{v}");
    let t = server.wait_turn(&session, &turn).await;
    counter.release();
    assert_eq!(t["status"], "cancelled", "{t}");

    let events = server.events(&session).await;
    let completed = event(&events, "borrow.completed", None);
    assert_eq!(completed["status"], "cancelled", "{completed}");
    // Borrower's call, loan, lender's call, turn: in that order, then the lease.
    let tail: Vec<&str> = events[events.len() - 5..].iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(tail, ["tool.completed", "borrow.completed", "tool.completed", "turn.cancelled", "lease.transferred"]);
    assert_eq!(server.get(&format!("/v1/sessions/{session}")).await["agent"], "front");
    // The lender's conversation is well formed: its next turn runs.
    let turn = server.submit(&session, "again").await;
    counter.wait_for("charge").await;
    assert_eq!(server.wait_turn(&session, &turn).await["status"], "completed");
    assert_log_verifies(dir.path());
}

#[tokio::test]
async fn a_borrower_waiting_for_approval_keeps_waiting_across_a_restart_and_goes_on_once_approved() {
    const PAYER: &str = r#"
[model]
provider = "scripted"
script = [{ tool_calls = [{ name = "pay", arguments = { amount = 600, to = "bob" } }] }, { text = "paid: {tool_results}" }]
[[tools.http]]
name = "pay"
url = "COUNTER/pay"
input_schema = { type = "object", properties = { amount = { type = "integer" }, to = { type = "string" } }, required = ["amount", "to"] }
"#;
    const POLICIES: &str = r#"
permit (principal, action, resource) unless { action == Action::"pay" };
@approval("payments need a human") permit (principal, action == Action::"pay", resource);
"#;
    let Rig { dir, counter, mut server, session } = rig("front", FRONT, None).await;
    server.apply("billing", &PAYER.replace("COUNTER", &counter.url)).await;
    let (s, v) = server.call(reqwest::Method::PUT, "/v1/policies", Some(json!({"policies": POLICIES, "schema": PAY_SCHEMA}))).await;
    assert_eq!(s, 201, "{v}");
    let turn = server.submit(&session, "pay bob").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let approval = loop {
        let v = server.get(&format!("/v1/approvals?status=pending&session={session}")).await;
        if let Some(a) = v["approvals"].as_array().and_then(|a| a.first()) {
            break a["id"].as_str().unwrap().to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no approval was asked for: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };

    server.kill();
    server = Server::start(dir.path());
    let summary = server.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!((summary["status"].as_str(), summary["agent"].as_str()), (Some("waiting_approval"), Some("billing")), "{summary}");
    let (s, v) = server.post(&format!("/v1/approvals/{approval}"), json!({"decision": "approve"})).await;
    assert_eq!(s, 200, "{v}");
    let t = server.wait_turn(&session, &turn).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(counter.count("pay"), 1, "the approved call ran once");

    let events = server.events(&session).await;
    let pay = event(&events, "tool.completed", Some("pay"));
    assert_eq!(pay["outcome"], "ok", "the borrower was waiting, not at work: its approved call runs: {pay}");
    assert_eq!(event(&events, "borrow.completed", None)["status"], "completed");
    assert!(t["output"].as_str().unwrap().contains("paid: pay → "), "{t}");
    server.kill();
    assert_log_verifies(dir.path());
}
