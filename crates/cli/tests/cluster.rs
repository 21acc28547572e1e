//! Several `agentrt serve` nodes on one PostgreSQL database: a node
//! SIGKILLed while it runs a turn loses the session to another node within
//! the lease timeout, nothing is executed twice, and SSE clients attached to
//! the surviving nodes see every event once, in order; a node paused past
//! its lease (SIGSTOP, then SIGCONT) cannot append after the takeover.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Lease lifetime of the test nodes, in seconds.
const LEASE_TTL: u64 = 3;

/// A cluster of `n` nodes with the effect agent, and a turn of it that
/// node-0 runs, held in its `effect` call.
struct Held {
    c: Cluster,
    counter: Counter,
    session: String,
    turn: String,
}

async fn held_turn(n: usize) -> Held {
    let c = cluster_with_env(n, LEASE_TTL, &[]);
    let counter = Counter::start().await;
    counter.hold("effect");
    c.nodes[0].apply("crashy", &EFFECT_AGENT.replace("COUNTER", &counter.url)).await;
    let session = c.nodes[0].session("crashy").await;
    let turn = c.nodes[0].submit(&session, "go").await;
    counter.wait_for("effect").await;
    Held { c, counter, session, turn }
}

async fn post_json(http: &reqwest::Client, url: &str, body: Value) -> Value {
    http.post(url).json(&body).send().await.unwrap().json().await.unwrap()
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill").args([sig, &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

/// Prometheus counter `name` of a node, 0 if absent.
async fn counter_of(node: &Server, name: &str) -> f64 {
    let text = node.http.get(format!("{}/metrics", node.url)).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

fn executor_of(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "turn.started" || e["type"] == "turn.resumed")
        .map(|e| e["executor"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_its_turn_to_another_within_the_lease_and_readers_see_every_event_once() {
    let Held { mut c, counter, session, turn } = held_turn(3).await;
    // Readers on the nodes that survive, from the log's first event.
    let readers: Vec<_> = c.nodes[1..]
        .iter()
        .map(|n| {
            let (url, session) = (n.url.clone(), session.clone());
            tokio::spawn(async move { read_sse(&url, &session, None, 1000, |e| e["type"] == "turn.completed").await })
        })
        .collect();

    let killed = Instant::now();
    c.nodes[0].kill();
    counter.release();
    let t = c.nodes[1].wait_turn(&session, &turn).await;
    let took = killed.elapsed();
    assert_eq!(t["status"], "completed", "{t}");
    assert!(took < Duration::from_secs(LEASE_TTL + 3), "taken over after {took:?}, lease {LEASE_TTL} s");
    assert_eq!(counter.count("effect"), 1, "the non-idempotent call was not made twice");

    let events = c.nodes[2].events(&session).await;
    let executors = executor_of(&events);
    assert_eq!(executors[0], "node-0", "{executors:?}");
    assert!(executors[1..].iter().all(|e| e != "node-0") && executors.len() == 2, "{executors:?}");
    let effect: Vec<&Value> = events.iter().filter(|e| e["type"] == "tool.completed" && e["tool"] == "effect").collect();
    assert_eq!((effect.len(), effect[0]["outcome"].as_str()), (1, Some("unknown")), "{effect:?}");
    let log = seqs(&events);
    assert_eq!(log, (1..=events.len() as u64).collect::<Vec<_>>());
    for (i, r) in readers.into_iter().enumerate() {
        let seen = seqs(&r.await.unwrap());
        let until_end = &log[..seen.len()];
        assert_eq!(seen, until_end, "node-{}'s reader saw every event once, in order", i + 1);
        assert_eq!(seen.last(), events.iter().find(|e| e["type"] == "turn.completed").and_then(|e| e["seq"].as_u64()).as_ref());
    }
    drop(c.dirs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_resumed_after_a_takeover_cannot_append() {
    let Held { mut c, counter, session, turn } = held_turn(2).await;

    let paused = c.nodes[0].pid();
    signal(paused, "-STOP");
    let t = c.nodes[1].wait_turn(&session, &turn).await;
    assert_eq!(t["status"], "completed", "node-1 took the session over: {t}");
    let before = c.nodes[1].events(&session).await;

    // The old owner wakes up with its call answered, and tries to write.
    counter.release();
    signal(paused, "-CONT");
    let deadline = Instant::now() + Duration::from_secs(30);
    while counter_of(&c.nodes[0], "agentrt_executors_fenced_total").await < 1.0 {
        assert!(Instant::now() < deadline, "node-0 never tried to write after it woke");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = c.nodes[1].events(&session).await;
    assert_eq!(after, before, "nothing node-0 wrote after the takeover was accepted");
    let effect: Vec<&Value> = after.iter().filter(|e| e["type"] == "tool.completed" && e["tool"] == "effect").collect();
    assert_eq!((effect.len(), effect[0]["outcome"].as_str()), (1, Some("unknown")), "{effect:?}");
    assert_eq!(counter.count("effect"), 1);
    c.nodes[0].kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sessions_spread_over_three_nodes_each_complete_their_turn_once() {
    const SESSIONS: usize = 1000;
    let c = cluster_with_env(3, LEASE_TTL, &[]);
    let counter = Counter::start().await;
    c.nodes[0].apply("crashy", &EFFECT_AGENT.replace("COUNTER", &counter.url)).await;
    let urls: Vec<String> = c.nodes.iter().map(|n| n.url.clone()).collect();
    let http = c.nodes[0].http.clone();
    // 25 clients, each on the nodes in turn: create a session, submit its turn, wait for it.
    let mut clients = Vec::new();
    for k in 0..25 {
        let (urls, http) = (urls.clone(), http.clone());
        clients.push(tokio::spawn(async move {
            let mut done = Vec::new();
            for i in (k..SESSIONS).step_by(25) {
                let url = &urls[i % urls.len()];
                let s = post_json(&http, &format!("{url}/v1/sessions"), serde_json::json!({"agent": "crashy"})).await;
                let id = s["id"].as_str().unwrap().to_owned();
                let t = post_json(&http, &format!("{url}/v1/sessions/{id}/turns?wait=60"), serde_json::json!({"input": "go"})).await;
                assert_eq!(t["status"], "completed", "{t}");
                done.push(id);
            }
            done
        }));
    }
    let mut sessions = Vec::new();
    for client in clients {
        sessions.extend(client.await.unwrap());
    }
    assert_eq!(sessions.len(), SESSIONS);
    assert_eq!(counter.count("effect"), SESSIONS, "one call per turn, none twice");
    let (mut started_on, mut resumed) = (std::collections::BTreeMap::new(), 0);
    for (i, id) in sessions.iter().enumerate() {
        let events = c.nodes[(i + 1) % 3].events(id).await;
        let completed = events.iter().filter(|e| e["type"] == "turn.completed").count();
        assert_eq!(completed, 1, "session {id}: {events:?}");
        for e in events.iter().filter(|e| e["type"] == "turn.started") {
            *started_on.entry(e["executor"].as_str().unwrap().to_owned()).or_insert(0) += 1;
        }
        resumed += events.iter().filter(|e| e["type"] == "turn.resumed").count();
    }
    assert_eq!(started_on.values().sum::<usize>(), SESSIONS, "no turn was started twice: {started_on:?}");
    assert_eq!(started_on.len(), 3, "every node ran turns: {started_on:?}");
    // A resume means a step failed in the store (e.g. a deadlock between nodes) and was retried.
    assert_eq!(resumed, 0, "turns resumed: {resumed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_finishes_its_turn_then_its_sessions_run_elsewhere() {
    let Held { c, counter, session, turn: first } = held_turn(2).await;

    // Asked through the node itself, it knows at once (others learn at its next heartbeat).
    let url = c.nodes[0].url.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || cli(&["node", "drain", "node-0"], Some(&url))).await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("node node-0 is draining"), "{out}");
    counter.release();
    // The turn in flight ends where it runs.
    let t = c.nodes[0].wait_turn(&session, &first).await;
    assert_eq!(t["status"], "completed", "{t}");
    // The next one, though sent to the drained node, runs on the other.
    let second = c.nodes[0].submit(&session, "again").await;
    let t = c.nodes[0].wait_turn(&session, &second).await;
    assert_eq!(t["status"], "completed", "{t}");
    let events = c.nodes[0].events(&session).await;
    assert_eq!(executor_of(&events), ["node-0", "node-1"]);

    let nodes = c.nodes[1].get("/v1/nodes").await;
    let status: Vec<(&str, &str)> =
        nodes["nodes"].as_array().unwrap().iter().map(|n| (n["id"].as_str().unwrap(), n["status"].as_str().unwrap())).collect();
    assert_eq!(status, [("node-0", "draining"), ("node-1", "up")], "{nodes}");
    let (s, v) = c.nodes[1].call(reqwest::Method::DELETE, "/v1/nodes/node-0/drain", None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("up")), "{v}");
    let (s, v) = c.nodes[1].post("/v1/nodes/nope/drain", serde_json::json!({})).await;
    assert_eq!(s, 404, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_through_another_node_stops_the_turn_where_it_runs() {
    let Held { c, counter, session, turn } = held_turn(2).await;

    let (s, v) = c.nodes[1].post(&format!("/v1/sessions/{session}/turns/{turn}/cancel"), serde_json::json!({})).await;
    assert_eq!(s, 202, "{v}");
    // The call stays held: only the relayed cancel can end the turn.
    let t = c.nodes[1].wait_turn(&session, &turn).await;
    assert_eq!(t["status"], "cancelled", "{t}");
    counter.release();
    let events = c.nodes[1].events(&session).await;
    assert_eq!(executor_of(&events), ["node-0"], "the turn stopped on the node that ran it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_through_another_node_fences_the_running_node_which_goes_on_under_the_new_agent() {
    const TAKER: &str = r#"
[model]
provider = "scripted"
script = [{ text = "not used" }, { text = "billing took over: {tool_results}" }]
"#;
    let Held { c, counter, session, turn } = held_turn(2).await;
    c.nodes[0].apply("billing", TAKER).await;

    let (s, v) = c.nodes[1].post(&format!("/v1/sessions/{session}/handover"), serde_json::json!({"agent": "billing"})).await;
    assert_eq!(s, 200, "{v}");
    counter.release();
    let t = c.nodes[1].wait_turn(&session, &turn).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert!(t["output"].as_str().unwrap().starts_with("billing took over"), "{t}");
    let events = c.nodes[1].events(&session).await;
    let effect: Vec<&Value> = events.iter().filter(|e| e["type"] == "tool.completed" && e["tool"] == "effect").collect();
    assert_eq!((effect.len(), effect[0]["outcome"].as_str()), (1, Some("unknown")), "the fenced node's late result was refused");
    assert_eq!(executor_of(&events), ["node-0", "node-0"], "node-0 took its own lease again and went on");
    assert_eq!(counter_of(&c.nodes[0], "agentrt_executors_fenced_total").await, 1.0);
}
