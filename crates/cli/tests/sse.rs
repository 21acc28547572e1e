//! SSE: `id:` is the seq; a client that drops the stream and reconnects
//! with `Last-Event-ID` gets every later event exactly once, in order —
//! also across a SIGKILL and restart of the server; heartbeats flow.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const AGENT: &str = r#"
[model]
provider = "scripted"
script = [
  { tool_calls = [{ name = "gate", arguments = {} }] },
  { tool_calls = [{ name = "echo", arguments = { n = 1 } }], repeat = 5 },
  { text = "done" },
]
[[tools.http]]
name = "gate"
url = "COUNTER/gate"
idempotent = true
"#;

fn is_end(e: &Value) -> bool {
    e["type"] == "turn.completed" || e["type"] == "turn.failed"
}

fn assert_exactly_once_in_order(events: &[Value]) {
    let s = seqs(events);
    assert_eq!(s, (1..=s.len() as u64).collect::<Vec<_>>(), "events must arrive once each, in order");
}

#[tokio::test]
async fn reconnect_with_last_event_id_resumes_exactly_once() {
    let Rig { dir: _dir, counter, server, session } = rig("streamer", AGENT, Some("gate")).await;
    let turn = server.submit(&session, "stream me").await;
    counter.wait_for("gate").await;

    // First connection: read part of the log, then drop the connection.
    let mut got = read_sse(&server.url, &session, None, 3, |_| false).await;
    assert_eq!(got.len(), 3);
    counter.release();
    // Reconnect with the last seq seen; the turn finishes while we read.
    let last = got.last().unwrap()["seq"].as_u64().unwrap();
    got.extend(read_sse(&server.url, &session, Some(last), usize::MAX, is_end).await);
    assert_exactly_once_in_order(&got);
    assert_eq!(got.last().unwrap()["type"], "turn.completed");
    assert_eq!(got, server.events(&session).await);
    server.wait_turn(&session, &turn).await;
}

#[tokio::test]
async fn stream_resumes_across_a_server_crash() {
    let Rig { dir, counter, mut server, session } = rig("streamer", AGENT, Some("gate")).await;
    server.submit(&session, "crash me").await;
    counter.wait_for("gate").await;

    let url = server.url.clone();
    let sid = session.clone();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        read_sse(&url, &sid, None, usize::MAX, move |e| {
            let _ = seen_tx.send(e["type"].as_str().unwrap_or("").to_owned());
            false
        })
        .await
    });
    // Once the reader has seen the held tool call, crash the server under it.
    while seen_rx.recv().await.expect("reader ended early") != "tool.requested" {}
    server.kill();
    let mut got = tokio::time::timeout(Duration::from_secs(30), reader).await.expect("stream ends when the server dies").unwrap();
    assert!(!got.is_empty());
    counter.release();

    server = Server::start(dir.path());
    let last = got.last().unwrap()["seq"].as_u64().unwrap();
    got.extend(read_sse(&server.url, &session, Some(last), usize::MAX, is_end).await);
    assert_exactly_once_in_order(&got);
    assert_eq!(got, server.events(&session).await);
}

#[tokio::test]
async fn heartbeats_keep_an_idle_stream_alive() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "sse-heartbeat-seconds = 1\n").unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let url = loop {
        let l = lines.next().unwrap().unwrap();
        if let Some(u) = l.strip_prefix("agentrt listening on ") {
            break u.to_owned();
        }
    };
    let http = reqwest::Client::new();
    http.put(format!("{url}/v1/agents/a")).body("[model]\nprovider = \"scripted\"\n").send().await.unwrap();
    let s: Value =
        http.post(format!("{url}/v1/sessions")).json(&serde_json::json!({"agent": "a"})).send().await.unwrap().json().await.unwrap();
    let mut resp = http
        .get(format!("{url}/v1/sessions/{}/events", s["id"].as_str().unwrap()))
        .header("accept", "text/event-stream")
        .header("last-event-id", "1")
        .send()
        .await
        .unwrap();
    let mut body = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !body.contains(": heartbeat") {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk()).await.expect("no heartbeat within 10 s").unwrap().unwrap();
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!body.contains("data:"), "no events after seq 1 yet: {body}");
    let _ = child.kill();
    let _ = child.wait();
}
