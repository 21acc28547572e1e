//! Crash recovery: the runtime is SIGKILLed before, during and after tool
//! calls; after a restart the turn completes, idempotent tools see their
//! idempotency key again at most as a retry, non-idempotent tools are never
//! called twice, and the log stays contiguous and verifiable. Also: a
//! corrupted stored event is named by `audit verify`.

mod common;

use common::*;
use serde_json::Value;

/// `safe` (idempotent) → `effect` (not idempotent) → `after` (idempotent) → answer.
const AGENT: &str = r#"
[model]
provider = "scripted"
script = [
  { tool_calls = [{ name = "safe", arguments = { step = "one" } }] },
  { tool_calls = [{ name = "effect", arguments = { charge = 10 } }] },
  { tool_calls = [{ name = "after", arguments = {} }] },
  { text = "finished: {tool_results}" },
]
[[tools.http]]
name = "safe"
url = "COUNTER/safe"
idempotent = true
[[tools.http]]
name = "effect"
url = "COUNTER/effect"
idempotent = false
[[tools.http]]
name = "after"
url = "COUNTER/after"
idempotent = true
"#;

struct Crash {
    _dir: tempfile::TempDir,
    counter: Counter,
    server: Server,
    session: String,
    turn: String,
}

async fn setup(hold: &str) -> Crash {
    let Rig { dir, counter, server, session } = rig("crashy", AGENT, Some(hold)).await;
    let turn = server.submit(&session, "go").await;
    Crash { _dir: dir, counter, server, session, turn }
}

impl Crash {
    /// SIGKILL, release held calls, restart on the same data dir.
    fn crash_and_restart(&mut self) {
        self.server.kill();
        self.counter.release();
        self.server = Server::start(&self.server.data_dir.clone());
    }

    async fn finish(&self) -> Vec<Value> {
        let t = self.server.wait_turn(&self.session, &self.turn).await;
        assert_eq!(t["status"], "completed", "{t}");
        assert!(t["output"].as_str().unwrap().starts_with("finished:"));
        let events = self.server.events(&self.session).await;
        assert_eq!(seqs(&events), (1..=events.len() as u64).collect::<Vec<_>>(), "log must be contiguous");
        assert_eq!(types(&events).iter().filter(|t| *t == "turn.completed").count(), 1);
        assert_eq!(self.server.get(&format!("/v1/sessions/{}/verify", self.session)).await["ok"], true);
        events
    }

    fn outcome_of(events: &[Value], tool: &str) -> Vec<String> {
        events
            .iter()
            .filter(|e| e["type"] == "tool.completed" && e["tool"] == tool)
            .map(|e| e["outcome"].as_str().unwrap().to_owned())
            .collect()
    }
}

#[tokio::test]
async fn killed_during_an_idempotent_call_retries_it_with_the_same_key() {
    let mut c = setup("safe").await;
    c.counter.wait_for("safe").await;
    c.crash_and_restart();
    let events = c.finish().await;
    let keys = c.counter.keys("safe");
    assert_eq!(keys.len(), 2, "the in-flight idempotent call is retried once: {keys:?}");
    assert_eq!(keys[0], keys[1], "the retry carries the same idempotency key");
    assert_eq!(c.counter.count("effect"), 1);
    assert_eq!(Crash::outcome_of(&events, "safe"), ["ok"]);
    assert!(types(&events).contains(&"turn.resumed".to_owned()));
    c.server.kill();
    assert_log_verifies(&c.server.data_dir);
}

#[tokio::test]
async fn killed_during_a_non_idempotent_call_never_repeats_it() {
    let mut c = setup("effect").await;
    c.counter.wait_for("effect").await;
    c.crash_and_restart();
    let events = c.finish().await;
    assert_eq!(c.counter.count("effect"), 1, "a non-idempotent call must not be repeated");
    assert_eq!(Crash::outcome_of(&events, "effect"), ["unknown"]);
    assert_eq!(c.counter.count("safe"), 1);
    assert_eq!(c.counter.count("after"), 1);
    // The model was told the outcome is unknown.
    let effect = events.iter().find(|e| e["type"] == "tool.completed" && e["tool"] == "effect").unwrap();
    assert!(effect["output"]["error"].as_str().unwrap().contains("outcome unknown"));
    c.server.kill();
    assert_log_verifies(&c.server.data_dir);
}

#[tokio::test]
async fn killed_after_a_completed_call_does_not_repeat_it() {
    let mut c = setup("after").await;
    c.counter.wait_for("after").await;
    c.crash_and_restart();
    let events = c.finish().await;
    assert_eq!(c.counter.count("safe"), 1);
    assert_eq!(c.counter.count("effect"), 1);
    let after = c.counter.keys("after");
    assert!(after.len() == 2 && after[0] == after[1], "{after:?}");
    // Completed model steps were not re-run: one model.completed per script step.
    assert_eq!(types(&events).iter().filter(|t| *t == "model.completed").count(), 4);
}

#[tokio::test]
async fn killed_right_after_the_turn_was_accepted() {
    let Rig { dir, counter, mut server, session } = rig("crashy", AGENT, None).await;
    counter.delay("safe", std::time::Duration::from_millis(200));
    let turn = server.submit(&session, "go").await;
    server.kill();
    assert!(counter.count("effect") == 0);
    server = Server::start(dir.path());
    let t = server.wait_turn(&session, &turn).await;
    assert_eq!(t["status"], "completed");
    assert_eq!(counter.count("effect"), 1);
    let keys = counter.keys("safe");
    assert!(!keys.is_empty() && keys.iter().all(|k| *k == keys[0]), "{keys:?}");
}

#[tokio::test]
async fn audit_verify_names_a_corrupted_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let (code, _, err) = cli(&["agent", "apply", "-f", "../../examples/agents/assistant.toml"], Some(&server.url));
    assert_eq!(code, 0, "{err}");
    let session = server.session("assistant").await;
    let turn = server.submit(&session, "pay 100 dollars").await;
    server.wait_turn(&session, &turn).await;
    server.kill();
    assert_log_verifies(dir.path());

    let db = rusqlite::Connection::open(dir.path().join("agentrt.db")).unwrap();
    let changed = db
        .execute(
            "UPDATE events SET body = replace(body, 'pay 100 dollars', 'pay 999 dollars') WHERE session_id = ?1 AND seq = 2",
            [&session],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(db);
    let (code, out, _) = cli(&["audit", "verify", "--data-dir", dir.path().to_str().unwrap()], None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("BROKEN  {session}  event 2: content does not match its hash")), "{out}");
}

#[tokio::test]
async fn audit_verify_catches_a_cut_off_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    server.apply("assistant", include_str!("../../../examples/agents/assistant.toml")).await;
    let session = server.session("assistant").await;
    let turn = server.submit(&session, "hello").await;
    server.wait_turn(&session, &turn).await;
    server.kill();
    let db = rusqlite::Connection::open(dir.path().join("agentrt.db")).unwrap();
    let last: i64 = db.query_row("SELECT MAX(seq) FROM events WHERE session_id = ?1", [&session], |r| r.get(0)).unwrap();
    db.execute("DELETE FROM events WHERE session_id = ?1 AND seq > ?2", rusqlite::params![session, last - 2]).unwrap();
    drop(db);
    let (code, out, _) = cli(&["audit", "verify", "--data-dir", dir.path().to_str().unwrap(), &session], None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("events {} to {last} are missing at the end", last - 1)), "{out}");
}
