//! Handover end to end through the real binary: an agent hands its session
//! over with `agents.handover` and the new agent finishes the turn with its
//! own tools; racing client handovers have exactly one winner; and a step of
//! the old agent still in flight when a client hands over is fenced off:
//! its late result is refused, and the turn goes on under the new agent.

mod common;

use common::*;
use serde_json::{json, Value};

/// Hands over to `billing` at once.
const FRONT: &str = r#"
[model]
provider = "scripted"
script = [{ tool_calls = [{ name = "agents.handover", arguments = { agent = "billing", reason = "refund request" } }] }]
[agents]
handover = ["billing"]
"#;

/// Its replies are numbered from the turn's first reply, whoever made it:
/// reply 0 never comes from it here.
const BILLING: &str = r#"
instructions = "You handle refunds."
[model]
provider = "scripted"
script = [
  { text = "not used" },
  { tool_calls = [{ name = "refund", arguments = { amount = 5 } }] },
  { text = "billing refunded: {tool_results}" },
]
[[tools.http]]
name = "refund"
url = "COUNTER/refund"
input_schema = { type = "object", properties = { amount = { type = "integer" } } }
"#;

#[tokio::test]
async fn an_agent_hands_over_and_the_new_agent_finishes_the_turn_with_its_tools() {
    let Rig { dir, counter, server, session } = rig("front", FRONT, None).await;
    server.apply("billing", &BILLING.replace("COUNTER", &counter.url)).await;
    let turn = server.submit(&session, "I want my money back").await;
    let t = server.wait_turn(&session, &turn).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert!(t["output"].as_str().unwrap().starts_with("billing refunded"), "{t}");
    assert_eq!(counter.count("refund"), 1, "the new agent's own tool ran");

    let summary = server.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(summary["agent"], "billing", "{summary}");
    let events = server.events(&session).await;
    let handoff = of_type(&events, "handoff.completed");
    assert_eq!(handoff.len(), 1);
    assert_eq!((handoff[0]["from_agent"].as_str(), handoff[0]["to_agent"].as_str()), (Some("front"), Some("billing")));
    assert_eq!(handoff[0]["reason"], "refund request");
    assert!(handoff[0]["by"].as_str().unwrap().starts_with("agent:front/session:"), "{}", handoff[0]);
    let lease = of_type(&events, "lease.transferred");
    assert_eq!(lease[0]["new_token"].as_u64(), lease[0]["old_token"].as_u64().map(|t| t + 1), "{}", lease[0]);
    let result = events.iter().find(|e| e["type"] == "tool.completed" && e["tool"] == "agents.handover").unwrap();
    assert_eq!((result["outcome"].as_str(), result["seq"].as_u64().map(|s| s + 1)), (Some("ok"), handoff[0]["seq"].as_u64()));

    // The next turn starts with billing (reply 0 is now its own).
    let turn = server.submit(&session, "thanks").await;
    assert_eq!(server.wait_turn(&session, &turn).await["output"], "not used");
    assert_log_verifies(dir.path());
}

#[tokio::test]
async fn of_racing_client_handovers_exactly_one_wins() {
    let Rig { dir: _dir, counter, server, session } = rig("front", FRONT, None).await;
    server.apply("billing", &BILLING.replace("COUNTER", &counter.url)).await;
    server.apply("support", &BILLING.replace("COUNTER", &counter.url)).await;
    let mut racers = Vec::new();
    for i in 0..12 {
        let (url, key, session) = (server.url.clone(), key_for(&server.url).unwrap(), session.clone());
        let to = if i % 2 == 0 { "billing" } else { "support" };
        racers.push(tokio::spawn(async move {
            let body = json!({"agent": to, "from": "front"});
            let resp = client_with(&key).post(format!("{url}/v1/sessions/{session}/handover")).json(&body).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }));
    }
    let mut wins = Vec::new();
    for r in racers {
        let (status, body) = r.await.unwrap();
        match status {
            200 => wins.push(body["agent"].as_str().unwrap().to_owned()),
            409 => assert!(body["error"]["message"].as_str().unwrap().contains("not \"front\""), "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(wins.len(), 1, "one winner: {wins:?}");
    let events = server.events(&session).await;
    assert_eq!(of_type(&events, "handoff.completed").len(), 1);
    let summary = server.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(summary["agent"], wins[0].as_str());

    let (s, v) = server.post(&format!("/v1/sessions/{session}/handover"), json!({"agent": "nope"})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")), "{v}");
    let (code, out, err) = cli(&["session", "handover", &session, "--to", "front"], Some(&server.url));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("now run by front"), "{out}");
}

#[tokio::test]
async fn a_step_of_the_old_agent_in_flight_is_fenced_off_and_the_new_agent_goes_on() {
    // Front calls a non-idempotent tool that the test holds while a client
    // hands the session to billing.
    const SLOW_FRONT: &str = r#"
[model]
provider = "scripted"
script = [{ tool_calls = [{ name = "charge", arguments = { amount = 9 } }] }, { text = "front finished" }]
[[tools.http]]
name = "charge"
url = "COUNTER/charge"
"#;
    const TAKER: &str = r#"
[model]
provider = "scripted"
script = [{ text = "not used" }, { text = "billing took over: {tool_results}" }]
"#;
    let Rig { dir: _dir, counter, server, session } = rig("front", SLOW_FRONT, Some("charge")).await;
    server.apply("billing", TAKER).await;
    let turn = server.submit(&session, "charge me").await;
    counter.wait_for("charge").await;
    let (s, v) = server.post(&format!("/v1/sessions/{session}/handover"), json!({"agent": "billing"})).await;
    assert_eq!(s, 200, "{v}");
    counter.release();

    let t = server.wait_turn(&session, &turn).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert!(t["output"].as_str().unwrap().starts_with("billing took over"), "{t}");
    let events = server.events(&session).await;
    let results: Vec<&Value> = events.iter().filter(|e| e["type"] == "tool.completed" && e["tool"] == "charge").collect();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(
        results[0]["outcome"], "unknown",
        "the old agent's late result was refused; the call may or may not have happened: {}",
        results[0]
    );
    let handoff = events.iter().position(|e| e["type"] == "handoff.completed").unwrap();
    let resumed = events.iter().position(|e| e["type"] == "turn.resumed").unwrap();
    assert!(handoff < resumed, "the turn resumed under the new agent after the handover");
    assert_eq!(counter.count("charge"), 1, "the non-idempotent call was not made twice");
}

const WORKER: &str = "[model]\nprovider = \"scripted\"\nscript = [{ text = \"done: {input}\" }]\n";
/// Fails its first model call: its provider's key is not set.
const FAILER: &str = "[model]\nprovider = \"openai\"\nmodel = \"gpt-x\"\napi_key_env = \"AGENTRT_TEST_NO_SUCH_KEY\"\n";
/// Waits on the counter's `nap`, which the tests hold.
const SLEEPER: &str = r#"
[model]
provider = "scripted"
script = [{ tool_calls = [{ name = "nap", arguments = {} }] }, { text = "woke" }]
[[tools.http]]
name = "nap"
url = "COUNTER/nap"
"#;

/// Delegates `tasks` (TOML) with `timeout_seconds = timeout` and `more` arguments.
fn boss(tasks: &str, timeout: u64, more: &str) -> String {
    format!(
        r#"
[model]
provider = "scripted"
script = [{{ tool_calls = [{{ name = "agents.delegate", arguments = {{ tasks = [{tasks}], timeout_seconds = {timeout}{more} }} }}] }}, {{ text = "all back" }}]
[agents]
delegate = ["worker", "failer", "sleeper"]
"#
    )
}

async fn team(server: &Server, counter: &Counter) {
    server.apply("worker", WORKER).await;
    server.apply("failer", FAILER).await;
    server.apply("sleeper", &SLEEPER.replace("COUNTER", &counter.url)).await;
}

#[tokio::test]
async fn a_fan_out_of_ten_gets_every_outcome_one_failed_and_one_timed_out() {
    let mut tasks: Vec<String> = (0..8).map(|i| format!("{{ agent = \"worker\", input = \"task {i}\" }}")).collect();
    tasks.push("{ agent = \"failer\", input = \"fail\" }".into());
    tasks.push("{ agent = \"sleeper\", input = \"sleep\" }".into());
    let counter = Counter::start().await;
    counter.hold("nap");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    team(&server, &counter).await;
    server.apply("boss", &boss(&tasks.join(", "), 3, "")).await;
    let session = server.session("boss").await;
    let turn = server.submit(&session, "split the work").await;
    let t = server.wait_turn(&session, &turn).await;
    assert_eq!((t["status"].as_str(), t["output"].as_str()), (Some("completed"), Some("all back")), "{t}");

    let events = server.events(&session).await;
    let started = of_type(&events, "delegate.started");
    assert_eq!(started[0]["children"].as_array().unwrap().len(), 10);
    let result = events.iter().find(|e| e["type"] == "tool.completed" && e["tool"] == "agents.delegate").unwrap();
    let results = result["output"]["results"].as_array().unwrap();
    assert_eq!(results.len(), 10, "{result}");
    for (i, r) in results[..8].iter().enumerate() {
        assert_eq!((r["status"].as_str(), r["output"].as_str()), (Some("completed"), Some(format!("done: task {i}").as_str())), "{r}");
    }
    assert_eq!(results[8]["status"], "failed", "{}", results[8]);
    assert!(results[8]["error"].as_str().unwrap().contains("AGENTRT_TEST_NO_SUCH_KEY"), "{}", results[8]);
    assert_eq!(results[9]["status"], "timed_out", "{}", results[9]);

    let completed = of_type(&events, "delegate.completed");
    let statuses: Vec<&str> = completed[0]["outcomes"].as_array().unwrap().iter().map(|o| o["status"].as_str().unwrap()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == "completed").count(), 8, "{statuses:?}");

    // Children are linked to the parent, and their turns continue its trace.
    let trace_of = |events: &[Value]| -> String {
        let tp = of_type(events, "turn.submitted")[0]["traceparent"].as_str().unwrap().to_owned();
        tp.split('-').nth(1).unwrap().to_owned()
    };
    let first_child = results[0]["session_id"].as_str().unwrap();
    assert_eq!(trace_of(&server.events(first_child).await), trace_of(&events));
    // The one that timed out was cancelled.
    let sleeper = results[9]["session_id"].as_str().unwrap();
    let child = server.get(&format!("/v1/sessions/{sleeper}")).await;
    assert_eq!(child["metadata"]["parent_session"], session.as_str(), "{child}");
    counter.release();
    let child_turns = server.events(sleeper).await;
    let child_turn = child_turns.iter().find(|e| e["type"] == "turn.submitted").unwrap()["turn_id"].as_str().unwrap().to_owned();
    assert_eq!(server.wait_turn(sleeper, &child_turn).await["status"], "cancelled");
}

#[tokio::test]
async fn cancelling_the_parent_cancels_its_children() {
    let counter = Counter::start().await;
    counter.hold("nap");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    team(&server, &counter).await;
    server.apply("boss", &boss("{ agent = \"sleeper\", input = \"sleep\" }", 600, "")).await;
    let session = server.session("boss").await;
    let turn = server.submit(&session, "go").await;
    counter.wait_for("nap").await;
    let (s, v) = server.post(&format!("/v1/sessions/{session}/turns/{turn}/cancel"), json!({})).await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(server.wait_turn(&session, &turn).await["status"], "cancelled");
    let events = server.events(&session).await;
    let child = of_type(&events, "delegate.started")[0]["children"][0]["session_id"].as_str().unwrap().to_owned();
    let child_events = server.events(&child).await;
    let child_turn = of_type(&child_events, "turn.submitted")[0]["turn_id"].as_str().unwrap().to_owned();
    let t = server.wait_turn(&child, &child_turn).await;
    assert_eq!(t["status"], "cancelled", "the child's turn is cancelled with its parent's: {t}");
    counter.release();
}

#[tokio::test]
async fn waiting_for_the_first_n_cancels_the_rest() {
    let counter = Counter::start().await;
    counter.hold("nap");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    team(&server, &counter).await;
    let tasks = r#"{ agent = "sleeper", input = "sleep" }, { agent = "worker", input = "a" }, { agent = "worker", input = "b" }"#;
    server.apply("boss", &boss(tasks, 600, ", first = 2")).await;
    let session = server.session("boss").await;
    let turn = server.submit(&session, "go").await;
    let t = server.wait_turn(&session, &turn).await;
    assert_eq!(t["status"], "completed", "{t}");
    let events = server.events(&session).await;
    let result = events.iter().find(|e| e["type"] == "tool.completed" && e["tool"] == "agents.delegate").unwrap();
    let statuses: Vec<&str> = result["output"]["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["cancelled", "completed", "completed"], "{result}");
    counter.release();
}
