//! The tool router end to end: retries of idempotent calls with the same
//! idempotency key, no retries of non-idempotent ones, the circuit breaker
//! opening, failing fast and recovering, and rate limits — each failure
//! reaching the model as a tool error that names its cause.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn completed<'a>(events: &'a [Value], tool: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == "tool.completed" && e["tool"] == tool).collect()
}

const RETRY_AGENT: &str = r#"
[model]
provider = "scripted"
script = [
  { tool_calls = [{ name = "safe", arguments = {} }, { name = "unsafe", arguments = {} }] },
  { text = "done" },
]
[tools.router]
backoff_ms = 10
[[tools.http]]
name = "safe"
url = "COUNTER/safe"
idempotent = true
[[tools.http]]
name = "unsafe"
url = "COUNTER/unsafe"
"#;

#[tokio::test]
async fn transient_failures_are_retried_only_when_safe() {
    let Rig { dir: _dir, counter, server, session } = rig("retry", RETRY_AGENT, None).await;
    counter.fail("safe", 503, 2);
    counter.fail("unsafe", 503, 1);
    let turn = server.submit(&session, "go").await;
    assert_eq!(server.wait_turn(&session, &turn).await["status"], "completed");
    let events = server.events(&session).await;

    let safe = completed(&events, "safe");
    assert_eq!((safe[0]["outcome"].as_str(), safe[0]["attempts"].as_u64()), (Some("ok"), Some(3)));
    let keys = counter.keys("safe");
    assert!(keys.len() == 3 && keys.iter().all(|k| *k == keys[0]), "retries keep the idempotency key: {keys:?}");

    let unsafe_ = completed(&events, "unsafe");
    assert_eq!((unsafe_[0]["outcome"].as_str(), unsafe_[0]["attempts"].as_u64()), (Some("error"), Some(1)));
    assert_eq!(counter.count("unsafe"), 1);
    assert!(unsafe_[0]["output"]["error"].as_str().unwrap().contains("unavailable: HTTP 503"), "{}", unsafe_[0]);
}

const BREAKER_AGENT: &str = r#"
[model]
provider = "scripted"
script = [
  { tool_calls = [{ name = "flaky", arguments = {} }], repeat = 3 },
  { text = "done" },
]
[tools.router]
max_attempts = 1
breaker_failures = 2
breaker_cooldown_seconds = 1
[[tools.http]]
name = "flaky"
url = "COUNTER/flaky"
idempotent = true
"#;

#[tokio::test]
async fn the_breaker_opens_fails_fast_and_recovers() {
    let Rig { dir: _dir, counter, server, session } = rig("breaker", BREAKER_AGENT, None).await;
    counter.fail("flaky", 500, 2);
    let turn = server.submit(&session, "go").await;
    assert_eq!(server.wait_turn(&session, &turn).await["status"], "completed", "the turn goes on despite tool failures");
    let events = server.events(&session).await;
    let calls = completed(&events, "flaky");
    assert_eq!(calls.len(), 3);
    assert!(calls[0]["output"]["error"].as_str().unwrap().contains("HTTP 500"));
    let fast = calls[2]["output"]["error"].as_str().unwrap();
    assert!(fast.starts_with("circuit open for 127.0.0.1:"), "{fast}");
    assert_eq!(calls[2]["attempts"], 0);
    assert_eq!(counter.count("flaky"), 2, "an open circuit does not call the server");
    let opened = events.iter().find(|e| e["type"] == "tool.breaker").unwrap();
    assert_eq!((opened["state"].as_str(), opened["failures"].as_u64()), (Some("open"), Some(2)));

    // The server is healthy again: after the cool-down a probe closes the circuit.
    // The probe that closes it may come in any of these sessions (a turn's
    // first call can still meet the open circuit and a later one probe).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut states: Vec<String> = Vec::new();
    loop {
        let s = server.session("breaker").await;
        let t = server.submit(&s, "again").await;
        server.wait_turn(&s, &t).await;
        let ev = server.events(&s).await;
        states.extend(ev.iter().filter(|e| e["type"] == "tool.breaker").map(|e| e["state"].as_str().unwrap().to_owned()));
        if completed(&ev, "flaky").iter().all(|c| c["outcome"] == "ok") {
            assert!(states.ends_with(&["half_open".to_owned(), "closed".to_owned()]), "{states:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the circuit never closed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let metrics = server.http.get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l.starts_with("agentrt_tool_breaker_state{") && l.ends_with(" 0")), "{metrics}");
}

const RATE_AGENT: &str = r#"
[model]
provider = "scripted"
script = [
  { tool_calls = [{ name = "metered", arguments = { n = 1 } }, { name = "metered", arguments = { n = 2 } }] },
  { text = "done" },
]
[tools.router]
rate_limit_wait_ms = 0
[[tools.http]]
name = "metered"
url = "COUNTER/metered"
idempotent = true
rate_per_second = 0.5
"#;

#[tokio::test]
async fn rate_limited_calls_fail_with_a_clear_error() {
    let Rig { dir: _dir, counter, server, session } = rig("rate", RATE_AGENT, None).await;
    let turn = server.submit(&session, "go").await;
    assert_eq!(server.wait_turn(&session, &turn).await["status"], "completed");
    let events = server.events(&session).await;
    let mut outcomes: Vec<String> = completed(&events, "metered")
        .iter()
        .map(|c| c["output"]["error"].as_str().map(str::to_owned).unwrap_or_else(|| "ok".into()))
        .collect();
    outcomes.sort();
    assert_eq!(outcomes[0], "ok");
    assert!(outcomes[1].starts_with("rate limited: no capacity for metered"), "{outcomes:?}");
    assert_eq!(counter.count("metered"), 1);
}
