//! Governance end to end through the real binary: tenants cannot see or
//! touch each other's objects on any endpoint; session credentials expire
//! and die with their session; Cedar policies forbid by argument value; and
//! human approvals are approved, denied, expired, decided independently,
//! and decided after a SIGKILL and restart — with every side effect counted
//! by a real HTTP tool server.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

/// Pays `amount` through the `pay` HTTP tool, twice in one step, then answers.
const PAYER: &str = r#"
[model]
provider = "scripted"
script = [
  { tool_calls = [{ name = "pay", arguments = { amount = 100, to = "alice" } }, { name = "pay", arguments = { amount = 600, to = "bob" } }] },
  { text = "done: {tool_results}" },
]
[[tools.http]]
name = "pay"
url = "COUNTER/pay"
input_schema = { type = "object", properties = { amount = { type = "integer" }, to = { type = "string" } }, required = ["amount", "to"] }
"#;

async fn put_policies(server: &Server, policies: &str) -> (u16, Value) {
    server.call(Method::PUT, "/v1/policies", Some(json!({"policies": policies, "schema": PAY_SCHEMA}))).await
}

/// Calls `path` with `key`; returns (status, body).
async fn call_as(server: &Server, key: &str, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = client_with(key).request(method, format!("{}{path}", server.url));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn tool_outputs(events: &[Value], tool: &str) -> Vec<Value> {
    events.iter().filter(|e| e["type"] == "tool.completed" && e["tool"] == tool).map(|e| e["output"].clone()).collect()
}

/// Waits until the session has `n` pending approvals; returns them.
async fn pending_approvals(server: &Server, session: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = server.get(&format!("/v1/approvals?status=pending&session={session}")).await;
        let list = v["approvals"].as_array().unwrap().clone();
        if list.len() >= n {
            return list;
        }
        assert!(Instant::now() < deadline, "{n} pending approvals never appeared: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn another_tenants_ids_are_not_found_on_every_endpoint() {
    let Rig { dir: _dir, counter: _c, server, session } = rig("payer", PAYER, None).await;
    let turn = server.submit(&session, "go").await;
    server.wait_turn(&session, &turn).await;
    let (s, _) = server.post("/v1/tenants", json!({"name": "acme"})).await;
    assert_eq!(s, 201);
    let (s, acme) = server.post("/v1/keys", json!({"name": "acme admin", "role": "admin", "tenant": "acme"})).await;
    assert_eq!(s, 201, "{acme}");
    let acme = acme["secret"].as_str().unwrap().to_owned();
    let (_, whoami) = call_as(&server, &acme, Method::GET, "/v1/whoami", None).await;
    assert_eq!(whoami["tenant"], "acme");
    let own_key = server.get("/v1/keys").await["keys"][0]["id"].as_str().unwrap().to_owned();

    let sid = &session;
    let probes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/v1/sessions/{sid}"), None),
        (Method::DELETE, format!("/v1/sessions/{sid}"), None),
        (Method::POST, format!("/v1/sessions/{sid}/turns"), Some(json!({"input": "steal"}))),
        (Method::GET, format!("/v1/sessions/{sid}/turns/{turn}"), None),
        (Method::POST, format!("/v1/sessions/{sid}/turns/{turn}/cancel"), None),
        (Method::GET, format!("/v1/sessions/{sid}/events"), None),
        (Method::GET, format!("/v1/sessions/{sid}/verify"), None),
        (Method::GET, format!("/v1/sessions/{sid}/audit"), None),
        (Method::POST, format!("/v1/sessions/{sid}/credentials"), Some(json!({}))),
        (Method::GET, format!("/v1/sessions/{sid}/sandbox"), None),
        (Method::POST, format!("/v1/sessions/{sid}/sandbox/exec"), Some(json!({"command": "true"}))),
        (Method::POST, format!("/v1/sessions/{sid}/sandbox/standby"), None),
        (Method::POST, format!("/v1/sessions/{sid}/sandbox/resume"), None),
        (Method::GET, format!("/v1/sessions/{sid}/files/x"), None),
        (Method::PUT, format!("/v1/sessions/{sid}/files/x"), None),
        (Method::DELETE, format!("/v1/sessions/{sid}/files/x"), None),
        (Method::GET, "/v1/agents/payer".into(), None),
        (Method::GET, "/v1/agents/payer/versions/1".into(), None),
        (Method::POST, "/v1/sessions".into(), Some(json!({"agent": "payer"}))),
        (Method::DELETE, format!("/v1/keys/{own_key}"), None),
        (Method::GET, "/v1/tenants/default".into(), None),
    ];
    for (method, path, body) in probes {
        let (s, v) = call_as(&server, &acme, method.clone(), &path, body).await;
        assert_eq!(s, 404, "{method} {path} as another tenant: {v}");
    }
    // Lists are scoped, and nothing of the default tenant changed.
    for (path, field) in [("/v1/sessions", "sessions"), ("/v1/agents", "agents"), ("/v1/approvals?status=approved", "approvals")] {
        let (s, v) = call_as(&server, &acme, Method::GET, path, None).await;
        assert_eq!((s, v[field].as_array().map(Vec::len)), (200, Some(0)), "{path}: {v}");
    }
    let (s, v) = call_as(&server, &acme, Method::GET, "/v1/sessions?agent=payer", None).await;
    assert_eq!((s, v["sessions"].as_array().unwrap().len()), (200, 0));
    let mine = server.get(&format!("/v1/sessions/{sid}")).await;
    assert_eq!((mine["status"].as_str(), mine["turn_count"].as_u64()), (Some("idle"), Some(1)));
    assert!(server.get("/v1/keys").await["keys"][0]["revoked_ms"].is_null());
    // The same agent name is free in the other tenant.
    let resp =
        client_with(&acme).put(format!("{}/v1/agents/payer", server.url)).body("[model]\nprovider = \"scripted\"\n").send().await.unwrap();
    assert_eq!(resp.status(), 201);

    // Roles and missing credentials.
    let (s, v) = server.call(Method::POST, "/v1/keys", Some(json!({"name": "ops", "role": "operator"}))).await;
    assert_eq!(s, 201, "{v}");
    let operator = v["secret"].as_str().unwrap().to_owned();
    let resp =
        client_with(&operator).put(format!("{}/v1/agents/x", server.url)).body("[model]\nprovider = \"scripted\"\n").send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let (s, _) = call_as(&server, &operator, Method::GET, &format!("/v1/sessions/{sid}"), None).await;
    assert_eq!(s, 200, "operators read sessions");
    let (s, v) = call_as(&server, &acme, Method::POST, "/v1/tenants", Some(json!({"name": "evil"}))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")));
    let (s, v) = call_as(&server, &acme, Method::GET, "/metrics", None).await;
    assert_eq!(s, 403, "{v}");
    let resp = reqwest::get(format!("{}/v1/sessions/{sid}", server.url)).await.unwrap();
    assert_eq!(resp.status(), 401);
    let (s, v) = call_as(&server, "art_0000", Method::GET, "/v1/whoami", None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (401, Some("unauthorized")));
    assert_eq!(reqwest::get(format!("{}/healthz", server.url)).await.unwrap().status(), 200);

    // Only the default tenant's admins act on another tenant's keys.
    let (s, _) = call_as(&server, &acme, Method::DELETE, &format!("/v1/keys/{own_key}?tenant=default"), None).await;
    assert_eq!(s, 403);
    let acme_key = call_as(&server, &acme, Method::GET, "/v1/keys", None).await.1["keys"][0]["id"].as_str().unwrap().to_owned();
    let (s, v) = server.call(Method::DELETE, &format!("/v1/keys/{acme_key}?tenant=acme"), None).await;
    assert_eq!((s, v["tenant"].as_str()), (200, Some("acme")), "{v}");
    let (s, v) = call_as(&server, &acme, Method::GET, "/v1/whoami", None).await;
    assert_eq!(s, 401, "a revoked key stops working at once: {v}");
}

#[tokio::test]
async fn session_credentials_expire_and_die_with_their_session() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.apply("a", "[model]\nprovider = \"scripted\"\n").await;
    let session = server.session("a").await;
    let other = server.session("a").await;
    let (s, short) = server.post(&format!("/v1/sessions/{session}/credentials"), json!({"ttl_seconds": 1})).await;
    assert_eq!(s, 201, "{short}");
    assert_eq!(short["principal"], format!("agent:a/session:{session}"));
    let token = short["token"].as_str().unwrap().to_owned();
    let (s, me) = call_as(&server, &token, Method::GET, "/v1/whoami", None).await;
    assert_eq!((s, me["principal"]["kind"].as_str()), (200, Some("session")), "{me}");
    let (s, _) = call_as(&server, &token, Method::GET, &format!("/v1/sessions/{session}/events"), None).await;
    assert_eq!(s, 200);
    for (method, path) in [(Method::GET, format!("/v1/sessions/{other}")), (Method::POST, format!("/v1/sessions/{session}/turns"))] {
        let (s, v) = call_as(&server, &token, method.clone(), &path, Some(json!({"input": "x"}))).await;
        assert_eq!(s, 403, "{method} {path}: {v}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let expired = loop {
        let (s, v) = call_as(&server, &token, Method::GET, &format!("/v1/sessions/{session}"), None).await;
        if s == 401 {
            break v;
        }
        assert!(Instant::now() < deadline, "a 1 s credential still works after 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(expired["error"]["message"].as_str().unwrap().contains("expired"), "{expired}");

    let (_, long) = server.post(&format!("/v1/sessions/{session}/credentials"), json!({})).await;
    let token = long["token"].as_str().unwrap().to_owned();
    assert_eq!(call_as(&server, &token, Method::GET, &format!("/v1/sessions/{session}"), None).await.0, 200);
    let (s, _) = server.call(Method::DELETE, &format!("/v1/sessions/{session}"), None).await;
    assert_eq!(s, 200);
    let (s, v) = call_as(&server, &token, Method::GET, &format!("/v1/sessions/{session}"), None).await;
    assert_eq!(s, 401);
    assert!(v["error"]["message"].as_str().unwrap().contains("revoked"), "{v}");
    let (s, _) = server.post(&format!("/v1/sessions/{session}/credentials"), json!({"ttl_seconds": 999999})).await;
    assert_eq!(s, 422);
    let (s, v) = call_as(&server, "not.a.token", Method::GET, "/v1/whoami", None).await;
    assert_eq!(s, 401, "{v}");
}

#[tokio::test]
async fn a_policy_forbids_a_call_by_argument_value_and_says_which() {
    let Rig { dir: _dir, counter, server, session } = rig("payer", PAYER, None).await;
    let (s, v) = put_policies(&server, "permit (principal, action, resource) when { context.input.amout > 1 };").await;
    assert_eq!((s, v["error"]["code"].as_str()), (422, Some("invalid_policy")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("amout"), "Cedar's message names the typo: {v}");
    let policies = r#"
@id("allow-all") permit (principal, action, resource);
@id("no-big-payments") forbid (principal, action == Action::"pay", resource) when { context.input.amount > 500 };
"#;
    let (s, v) = put_policies(&server, policies).await;
    assert_eq!((s, v["version"].as_u64()), (201, Some(1)), "{v}");

    let turn = server.submit(&session, "pay both").await;
    let t = server.wait_turn(&session, &turn).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(counter.count("pay"), 1, "only the small payment ran");
    let events = server.events(&session).await;
    let decisions: Vec<(String, Value)> = events
        .iter()
        .filter(|e| e["type"] == "policy.decided")
        .map(|e| (e["decision"].as_str().unwrap().to_owned(), e["policies"].clone()))
        .collect();
    assert_eq!(decisions, [("permit".to_owned(), json!(["allow-all"])), ("forbid".to_owned(), json!(["no-big-payments"]))]);
    let outputs = tool_outputs(&events, "pay");
    assert_eq!(outputs.len(), 2);
    assert!(outputs.iter().any(|o| o["echo"]["amount"] == 100), "{outputs:?}");
    let refused = outputs.iter().find_map(|o| o["error"].as_str()).unwrap();
    assert!(refused.starts_with("forbidden by policy `no-big-payments`"), "{refused}");
    assert_eq!(refused.matches("no-big-payments").count(), 1, "named once: {refused}");
    assert!(t["output"].as_str().unwrap().contains("no-big-payments"), "the model saw why: {t}");
    assert_log_verifies(&server.data_dir);
}

/// An agent whose `pay` calls need approval above 50; `timeout` sets
/// `approval_timeout_seconds`.
async fn approval_rig(timeout: Option<u64>) -> Rig {
    let mut spec = PAYER.to_owned();
    if let Some(t) = timeout {
        spec.push_str(&format!("[limits]\napproval_timeout_seconds = {t}\n"));
    }
    let rig = rig("payer", &spec, None).await;
    let policies = r#"
@id("small") permit (principal, action == Action::"pay", resource) when { context.input.amount <= 50 };
@id("big") @approval("payments over 50 need a human") permit (principal, action == Action::"pay", resource) when { context.input.amount > 50 };
"#;
    let (s, v) = put_policies(&rig.server, policies).await;
    assert_eq!(s, 201, "{v}");
    rig
}

#[tokio::test]
async fn approvals_are_decided_independently_and_only_approved_calls_run() {
    let Rig { dir: _dir, counter, server, session } = approval_rig(None).await;
    let turn = server.submit(&session, "pay both").await;
    let pending = pending_approvals(&server, &session, 2).await;
    let s = server.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!((s["status"].as_str(), s["pending_approvals"].as_u64()), (Some("waiting_approval"), Some(2)), "{s}");
    assert_eq!(counter.count("pay"), 0, "nothing runs before a decision");
    let by_amount = |amount: i64| pending.iter().find(|a| a["arguments"]["amount"] == amount).unwrap()["id"].as_str().unwrap().to_owned();
    let (big, small) = (by_amount(600), by_amount(100));
    assert_eq!(pending[0]["reason"], "payments over 50 need a human");
    // Another tenant can neither see nor decide them.
    server.post("/v1/tenants", json!({"name": "acme"})).await;
    let (_, key) = server.post("/v1/keys", json!({"name": "a", "role": "admin", "tenant": "acme"})).await;
    let acme = key["secret"].as_str().unwrap().to_owned();
    assert_eq!(call_as(&server, &acme, Method::GET, &format!("/v1/approvals/{big}"), None).await.0, 404);
    let (s, _) = call_as(&server, &acme, Method::POST, &format!("/v1/approvals/{big}"), Some(json!({"decision": "approve"}))).await;
    assert_eq!(s, 404);
    let (_, list) = call_as(&server, &acme, Method::GET, "/v1/approvals?status=pending", None).await;
    assert_eq!(list["approvals"].as_array().unwrap().len(), 0);

    let (s, v) = server.post(&format!("/v1/approvals/{small}"), json!({"decision": "approve", "comment": "ok"})).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    counter.wait_for("pay").await;
    let t = server.get(&format!("/v1/sessions/{session}/turns/{turn}")).await;
    assert_eq!((t["status"].as_str(), t["pending_approvals"].as_u64()), (Some("running"), Some(1)), "the other call still waits: {t}");
    let (s, _) = server.post(&format!("/v1/approvals/{small}"), json!({"decision": "deny"})).await;
    assert_eq!(s, 409, "an approval is decided once");
    let (s, v) = server.post(&format!("/v1/approvals/{big}"), json!({"decision": "deny", "comment": "too much"})).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("denied")), "{v}");

    let t = server.wait_turn(&session, &turn).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(counter.count("pay"), 1, "the denied payment never ran");
    let events = server.events(&session).await;
    let outputs = tool_outputs(&events, "pay");
    let denied = outputs.iter().find_map(|o| o["error"].as_str()).unwrap();
    assert!(denied.starts_with("denied by key:") && denied.ends_with(": too much"), "{denied}");
    let decided: Vec<&Value> = events.iter().filter(|e| e["type"] == "approval.decided").collect();
    assert_eq!(decided.len(), 2);
    assert!(decided.iter().all(|e| e["approver"].as_str().unwrap().contains("bootstrap admin")), "{decided:?}");
    // A call waiting for approval has no intent until it is approved.
    let requested_big = events.iter().any(|e| e["type"] == "tool.requested" && e["arguments"]["amount"] == 600);
    assert!(!requested_big, "a denied call never gets an intent");
    let s = server.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(s["status"], "idle");
    assert_log_verifies(&server.data_dir);
}

#[tokio::test]
async fn an_unanswered_approval_expires_as_a_denial() {
    let Rig { dir: _dir, counter, server, session } = approval_rig(Some(1)).await;
    let turn = server.submit(&session, "pay").await;
    let t = server.wait_turn(&session, &turn).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(counter.count("pay"), 0);
    let list = server.get(&format!("/v1/approvals?status=expired&session={session}")).await;
    let list = list["approvals"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list.iter().all(|a| a["approver"] == "system:expiry"));
    let outputs = tool_outputs(&server.events(&session).await, "pay");
    assert!(outputs.iter().all(|o| o["error"].as_str().unwrap().contains("expired")), "{outputs:?}");
}

#[tokio::test]
async fn an_approval_decided_after_a_sigkill_and_restart_runs_the_call_once() {
    let Rig { dir: _dir, counter, mut server, session } = approval_rig(None).await;
    let turn = server.submit(&session, "pay").await;
    let pending = pending_approvals(&server, &session, 2).await;
    server.kill();
    server = Server::start(&server.data_dir.clone());
    let s = server.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(s["status"], "waiting_approval", "the wait survives the restart: {s}");
    for a in &pending {
        let (s, v) = server.post(&format!("/v1/approvals/{}", a["id"].as_str().unwrap()), json!({"decision": "approve"})).await;
        assert_eq!(s, 200, "{v}");
    }
    let t = server.wait_turn(&session, &turn).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(counter.count("pay"), 2, "each approved call ran exactly once");
    let events = server.events(&session).await;
    assert_eq!(events.iter().filter(|e| e["type"] == "tool.requested").count(), 2);
    assert_log_verifies(&server.data_dir);
}

#[tokio::test]
async fn cancelling_a_waiting_turn_cancels_its_approvals() {
    let Rig { dir: _dir, counter, server, session } = approval_rig(None).await;
    let turn = server.submit(&session, "pay").await;
    let pending = pending_approvals(&server, &session, 2).await;
    let (s, _) = server.post(&format!("/v1/sessions/{session}/turns/{turn}/cancel"), json!({})).await;
    assert_eq!(s, 202);
    let t = server.wait_turn(&session, &turn).await;
    assert_eq!(t["status"], "cancelled", "{t}");
    let a = server.get(&format!("/v1/approvals/{}", pending[0]["id"].as_str().unwrap())).await;
    assert_eq!(a["status"], "cancelled");
    let (s, _) = server.post(&format!("/v1/approvals/{}", pending[1]["id"].as_str().unwrap()), json!({"decision": "approve"})).await;
    assert_eq!(s, 409);
    assert_eq!(counter.count("pay"), 0);
    assert_eq!(server.get(&format!("/v1/sessions/{session}")).await["status"], "idle");
}

#[tokio::test]
async fn a_tenants_tool_call_rate_is_shared_by_its_agents_and_no_one_elses() {
    const ECHOER: &str = r#"
[model]
provider = "scripted"
script = [
  { tool_calls = [{ name = "echo", arguments = { n = 1 } }, { name = "echo", arguments = { n = 2 } }] },
  { text = "done" },
]
[tools.router]
rate_limit_wait_ms = 0
"#;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (s, _) = server.post("/v1/tenants", json!({"name": "acme"})).await;
    assert_eq!(s, 201);
    let (s, v) = server.call(Method::PATCH, "/v1/tenants/acme", Some(json!({"tool_calls_per_second": 0.01}))).await;
    assert_eq!((s, v["tool_calls_per_second"].as_f64()), (200, Some(0.01)), "{v}");
    let (s, _) = server.call(Method::PATCH, "/v1/tenants/acme", Some(json!({"tool_calls_per_second": -1}))).await;
    assert_eq!(s, 422);
    let (_, key) = server.post("/v1/keys", json!({"name": "a", "role": "admin", "tenant": "acme"})).await;
    let acme = key["secret"].as_str().unwrap().to_owned();
    let outcomes = |events: &[Value]| -> Vec<String> {
        events.iter().filter(|e| e["type"] == "tool.completed").map(|e| e["outcome"].as_str().unwrap().to_owned()).collect()
    };
    // Two agents of acme: three of their four calls find the tenant's bucket empty.
    let mut acme_outcomes = Vec::new();
    for agent in ["one", "two"] {
        let resp = client_with(&acme).put(format!("{}/v1/agents/{agent}", server.url)).body(ECHOER).send().await.unwrap();
        assert_eq!(resp.status(), 201);
        let (_, s) = call_as(&server, &acme, Method::POST, "/v1/sessions", Some(json!({"agent": agent}))).await;
        let id = s["id"].as_str().unwrap().to_owned();
        let (_, t) = call_as(&server, &acme, Method::POST, &format!("/v1/sessions/{id}/turns?wait=30"), Some(json!({"input": "go"}))).await;
        assert_eq!(t["status"], "completed", "{t}");
        let (_, page) = call_as(&server, &acme, Method::GET, &format!("/v1/sessions/{id}/events"), None).await;
        let events = page["events"].as_array().unwrap().clone();
        acme_outcomes.extend(outcomes(&events));
        for out in tool_outputs(&events, "echo").iter().filter_map(|o| o["error"].as_str()) {
            assert!(out.contains("rate limited: no capacity for tenant acme"), "{out}");
        }
    }
    acme_outcomes.sort();
    assert_eq!(acme_outcomes, ["error", "error", "error", "ok"]);
    // The default tenant has no limit.
    server.apply("one", ECHOER).await;
    let session = server.session("one").await;
    let turn = server.submit(&session, "go").await;
    server.wait_turn(&session, &turn).await;
    assert_eq!(outcomes(&server.events(&session).await), ["ok", "ok"]);
}
