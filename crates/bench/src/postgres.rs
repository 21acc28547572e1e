//! The PostgreSQL store, on a durable server (fsync and synchronous commit
//! on): per-step overhead, to set next to SQLite's, and durable steps per
//! second with one, two and three nodes on one database. The nodes are
//! engines in this process, each with its own store connections, writer
//! and node id, as separate `agentrt serve` processes would have: on a
//! machine with few cores this measures the database and the store, not
//! extra CPUs.

use std::sync::Arc;
use std::time::Instant;

use agentrt_engine::{Engine, EngineConfig};
use agentrt_store::sql::SqlStore;
use agentrt_types::DEFAULT_TENANT;
use anyhow::Context;
use serde_json::Value;

use crate::inproc::{register_loop_agent, run_turn, Rig};
use crate::stats::Stats;
use crate::timed_store::{Commits, TimedStore};

/// An empty database on the server at `admin` (a URL naming any database).
pub fn fresh_database(admin: &str) -> anyhow::Result<String> {
    let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
    agentrt_store::postgres::create_database(admin, &name).context("create a database on the benchmark's PostgreSQL")
}

/// A node: an engine on its own connections to `url`.
async fn node(url: &str, id: usize) -> anyhow::Result<Rig> {
    let store = SqlStore::connect_postgres(url)?;
    let commits = Commits::default();
    let store = Arc::new(TimedStore { inner: Arc::new(store), commits: commits.clone() });
    let config = EngineConfig { exclusive_store: false, node_id: format!("bench-node-{id}"), ..EngineConfig::default() };
    let engine = Engine::new(store, config)?;
    engine.start().await?;
    Ok(Rig { _dir: None, engine, commits })
}

/// A single node on a fresh database, for the per-step measurements.
pub async fn rig(admin: &str) -> anyhow::Result<Rig> {
    node(&fresh_database(admin)?, 0).await
}

/// Durable steps per second of `sessions` turns of `2 * tool_calls + 1`
/// steps, spread over `nodes` nodes on one fresh database (each node runs
/// the turns submitted to it).
pub async fn throughput(admin: &str, nodes: usize, sessions: usize, tool_calls: u32) -> anyhow::Result<f64> {
    let url = fresh_database(admin)?;
    let mut rigs = Vec::with_capacity(nodes);
    for i in 0..nodes {
        rigs.push(node(&url, i).await?);
    }
    let agent = register_loop_agent(&rigs[0].engine, tool_calls).await?;
    let mut work = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let engine = rigs[i % nodes].engine.clone();
        let id = engine.create_session(DEFAULT_TENANT, &agent, None, Value::Null).await?.id;
        work.push((engine, id));
    }
    let started = Instant::now();
    let runs = futures_util::future::join_all(work.iter().map(|(engine, id)| run_turn(engine, id))).await;
    let elapsed = started.elapsed();
    for r in runs {
        r?;
    }
    for rig in &rigs {
        rig.engine.shutdown(std::time::Duration::from_secs(5)).await;
    }
    Ok(sessions as f64 * (2 * tool_calls + 1) as f64 / elapsed.as_secs_f64())
}

/// DBOS's numbers from `bench/peer/dbos_steps.py`.
pub struct Peer {
    pub version: String,
    pub steps: u64,
    pub p50_us: f64,
    pub p99_us: f64,
}

pub fn peer(json: &Value) -> Peer {
    Peer {
        version: json["dbos_version"].as_str().unwrap_or("?").to_owned(),
        steps: json["steps_per_run"].as_u64().unwrap_or(0),
        p50_us: json["per_step_us_p50"].as_f64().unwrap_or(f64::NAN),
        p99_us: json["per_step_us_p99"].as_f64().unwrap_or(f64::NAN),
    }
}

/// The per-step p50 of `s`, in µs.
pub fn p50_us(s: &Stats) -> f64 {
    s.p50.as_secs_f64() * 1e6
}
