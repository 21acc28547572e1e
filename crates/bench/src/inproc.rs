//! In-process measurements on the real engine and SQLite store (WAL,
//! `synchronous=FULL`, so every commit is fsync'd): per-step overhead,
//! throughput at several concurrency levels, append-to-SSE-client latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentrt_api::{router, AppState};
use agentrt_engine::{Engine, EngineConfig, OnBusy, SubmitTurn};
use agentrt_store::sqlite::{Durability, SqliteStore};
use agentrt_types::spec::SpecFormat;
use agentrt_types::{EventData, SessionId, DEFAULT_TENANT};
use anyhow::{anyhow, Context};
use futures_util::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::stats::Stats;
use crate::timed_store::{Commits, TimedStore};

/// An engine on a fresh store in a temp dir.
pub struct Rig {
    pub _dir: Option<tempfile::TempDir>,
    pub engine: Engine,
    pub commits: Commits,
}

pub async fn rig(base: &std::path::Path, durability: Durability) -> anyhow::Result<Rig> {
    let dir = tempfile::tempdir_in(base).context("temp dir")?;
    let sqlite = Arc::new(SqliteStore::open_with(&dir.path().join("bench.db"), durability)?);
    let commits = Commits::default();
    let store = Arc::new(TimedStore { inner: sqlite, commits: commits.clone() });
    let engine = Engine::new(store, EngineConfig::default())?;
    engine.start().await?;
    Ok(Rig { _dir: Some(dir), engine, commits })
}

/// Registers `loop` agent: `tool_calls` echo calls, one per model reply, then an answer.
/// A turn therefore has `2 * tool_calls + 1` durable steps.
pub async fn register_loop_agent(engine: &Engine, tool_calls: u32) -> anyhow::Result<String> {
    let name = format!("loop{tool_calls}");
    let spec = format!(
        "[model]\nprovider = \"scripted\"\nscript = [{{ tool_calls = [{{ name = \"echo\", arguments = {{ i = 1 }} }}], repeat = {tool_calls} }}, {{ text = \"done\" }}]\n[limits]\nmax_steps = {}\nmax_repeated_tool_calls = 0\nmax_model_calls_without_progress = 0\n[tools]\nbuiltin = [\"echo\"]\n",
        2 * tool_calls + 2
    );
    engine.put_agent(DEFAULT_TENANT, &name, &spec, SpecFormat::Toml).await?;
    Ok(name)
}

/// Runs one turn of the session to its end; an error unless it completed.
pub async fn run_turn(engine: &Engine, id: &SessionId) -> anyhow::Result<()> {
    let (turn, _) = engine
        .submit_turn(id, SubmitTurn { input: "go".into(), on_busy: OnBusy::Queue, idempotency_key: None, traceparent: None, borrow: None })
        .await?;
    let done = engine.wait_turn(id, &turn.turn_id, Duration::from_secs(600)).await?;
    if done.status.as_str() != "completed" {
        return Err(anyhow!("turn ended {}: {:?}", done.status.as_str(), done.error));
    }
    Ok(())
}

/// Time between consecutive durable step results inside turns.
pub async fn step_overhead(rig: &Rig, tool_calls: u32, turns: usize) -> anyhow::Result<Stats> {
    let agent = register_loop_agent(&rig.engine, tool_calls).await?;
    let mut samples = Vec::new();
    for _ in 0..turns {
        let session = rig.engine.create_session(DEFAULT_TENANT, &agent, None, Value::Null).await?;
        let mut rx = rig.engine.subscribe(&session.id);
        let (turn, _) = rig
            .engine
            .submit_turn(
                &session.id,
                SubmitTurn { input: "go".into(), on_busy: OnBusy::Queue, idempotency_key: None, traceparent: None, borrow: None },
            )
            .await?;
        let mut last: Option<Instant> = None;
        loop {
            let e = rx.recv().await.context("event stream")?;
            let now = Instant::now();
            match &e.body.data {
                EventData::TurnStarted { .. } => last = Some(now),
                EventData::ModelCompleted { .. } | EventData::ToolCompleted { .. } => {
                    if let Some(prev) = last {
                        samples.push(now - prev);
                    }
                    last = Some(now);
                }
                EventData::TurnCompleted { .. } => break,
                EventData::TurnFailed { message, .. } => return Err(anyhow!("turn failed: {message}")),
                _ => {}
            }
        }
        rig.engine.wait_turn(&session.id, &turn.turn_id, Duration::from_secs(60)).await?;
    }
    Ok(Stats::of(samples))
}

/// Aggregate durable steps per second with `sessions` running at once.
pub async fn throughput(rig: &Rig, sessions: usize, tool_calls: u32) -> anyhow::Result<f64> {
    let agent = register_loop_agent(&rig.engine, tool_calls).await?;
    let mut ids = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        ids.push(rig.engine.create_session(DEFAULT_TENANT, &agent, None, Value::Null).await?.id);
    }
    let started = Instant::now();
    let runs = futures_util::future::join_all(ids.iter().map(|id| run_turn(&rig.engine, id))).await;
    let elapsed = started.elapsed();
    for r in runs {
        r?;
    }
    let steps = sessions as f64 * (2 * tool_calls + 1) as f64;
    Ok(steps / elapsed.as_secs_f64())
}

/// Latency from an append's commit to an SSE client over loopback HTTP.
pub async fn sse_latency(rig: &Rig, tool_calls: u32) -> anyhow::Result<Stats> {
    let agent = register_loop_agent(&rig.engine, tool_calls).await?;
    let shutdown = CancellationToken::new();
    let app = router(AppState {
        engine: rig.engine.clone(),
        shutdown: shutdown.clone(),
        heartbeat: Duration::from_secs(15),
        dev_mode: true,
        gateway: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = shutdown.clone();
    let server = tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await });

    let session = rig.engine.create_session(DEFAULT_TENANT, &agent, None, Value::Null).await?;
    let resp = reqwest::Client::new()
        .get(format!("http://{addr}/v1/sessions/{}/events", session.id))
        .header("accept", "text/event-stream")
        .header("last-event-id", "1")
        .send()
        .await?;
    let mut stream = eventsource_stream::EventStream::new(resp.bytes_stream());
    // The stream is open; now run the turn and time every event's arrival.
    let engine = rig.engine.clone();
    let id = session.id.clone();
    let turn = tokio::spawn(async move { run_turn(&engine, &id).await });
    let mut samples = Vec::new();
    while let Some(ev) = stream.next().await {
        let now = Instant::now();
        let ev = ev?;
        let seq: u64 = ev.id.parse()?;
        if let Some(committed) = rig.commits.lock().expect("commits lock").get(&(session.id.clone(), seq)) {
            samples.push(now.saturating_duration_since(*committed));
        }
        if ev.event == "turn.completed" {
            break;
        }
    }
    turn.await??;
    shutdown.cancel();
    let _ = server.await;
    Ok(Stats::of(samples))
}

/// Latency of one append (one small event, one commit) to one session,
/// straight to the store.
pub async fn append_latency(rig: &Rig, appends: usize) -> anyhow::Result<Stats> {
    use agentrt_store::{AppendRequest, Fence};
    use agentrt_types::TurnId;
    let agent = register_loop_agent(&rig.engine, 1).await?;
    let session = rig.engine.create_session(DEFAULT_TENANT, &agent, None, Value::Null).await?;
    let store = rig.engine.store().clone();
    let mut samples = Vec::with_capacity(appends);
    for _ in 0..appends {
        let event = EventData::TurnSubmitted {
            turn_id: TurnId::generate(),
            input: "probe".into(),
            idempotency_key: None,
            traceparent: None,
            borrow: None,
        };
        let req = AppendRequest { session_id: session.id.clone(), fence: Fence::Client, precondition: None, events: vec![event.into()] };
        let started = Instant::now();
        store.append(req).await?;
        samples.push(started.elapsed());
    }
    Ok(Stats::of(samples))
}
