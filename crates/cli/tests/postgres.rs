//! The real binary on a PostgreSQL store (`--store postgres://…`): a turn
//! whose node is SIGKILLed during a non-idempotent call completes after a
//! restart without repeating it, the log verifies, and a bad store URL is
//! refused with one clear line.

mod common;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn a_node_killed_mid_call_on_postgres_resumes_the_turn_without_repeating_it() {
    let url = fresh_pg_database();
    let dir = tempfile::tempdir().unwrap();
    let counter = Counter::start().await;
    counter.hold("effect");
    let env = [("AGENTRT_STORE", url.as_str()), ("AGENTRT_NODE_ID", "node-a")];
    let mut server = Server::start_with_env(dir.path(), &env);
    server.apply("crashy", &EFFECT_AGENT.replace("COUNTER", &counter.url)).await;
    let session = server.session("crashy").await;
    let turn = server.submit(&session, "go").await;
    counter.wait_for("effect").await;

    server.kill();
    counter.release();
    let server = Server::start_with_env(dir.path(), &env);
    let t = server.wait_turn(&session, &turn).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(counter.count("effect"), 1, "a non-idempotent call is never repeated");
    let events = server.events(&session).await;
    assert!(types(&events).contains(&"turn.resumed".to_owned()), "{events:?}");
    let effect: Vec<&Value> = events.iter().filter(|e| e["type"] == "tool.completed" && e["tool"] == "effect").collect();
    assert_eq!(effect[0]["outcome"], "unknown", "{effect:?}");
    assert_eq!(seqs(&events), (1..=events.len() as u64).collect::<Vec<_>>(), "the log is contiguous");
    let verified = server.get(&format!("/v1/sessions/{session}/verify")).await;
    assert_eq!(verified["ok"], true, "{verified}");
}

#[test]
fn a_store_that_is_not_a_postgres_url_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentrt"))
        .args(["serve", "--listen", "127.0.0.1:0", "--store", "mysql://x", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("store must be empty (SQLite in data-dir) or a PostgreSQL URL"), "{err}");
}

#[test]
fn config_dump_never_prints_the_store_password() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agentrt.toml");
    std::fs::write(&config, "store = \"postgres://agentrt:hunter2@db.internal:5432/agentrt\"\n").unwrap();
    let (code, out, err) = cli(&["config", "dump", "--config", config.to_str().unwrap()], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("store = \"postgres://agentrt:<redacted>@db.internal:5432/agentrt\""), "{out}");
    assert!(!out.contains("hunter2"), "{out}");
}

#[tokio::test]
async fn a_node_alone_on_sqlite_lists_itself_and_refuses_to_drain() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &[("AGENTRT_NODE_ID", "solo")]);
    let nodes = server.get("/v1/nodes").await;
    let only = &nodes["nodes"][0];
    assert_eq!(
        (only["id"].as_str(), only["status"].as_str(), only["this_node"].as_bool()),
        (Some("solo"), Some("up"), Some(true)),
        "{nodes}"
    );
    let (s, v) = server.post("/v1/nodes/solo/drain", serde_json::json!({})).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("alone on its store"), "{v}");
}
