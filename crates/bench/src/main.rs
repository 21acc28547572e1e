//! `agentrt-bench`: the runtime benchmarks of docs/benchmarks.md, with the
//! LangGraph peer's numbers side by side. Run through `bench/run.sh`.
#![allow(clippy::print_stdout)]

mod gateway_endpoint;
mod idle;
mod inproc;
mod mcp_overhead;
mod postgres;
mod sandbox;
mod stats;
mod timed_store;
mod tracing_cost;

use std::path::PathBuf;

use agentrt_store::sqlite::Durability;
use anyhow::Context;
use clap::Parser;
use serde_json::Value;

use crate::stats::us;

#[derive(Parser)]
#[command(about = "Benchmarks the agentrt runtime and prints a markdown table.")]
struct Args {
    /// Model replies with a tool call per turn in the step benchmarks (2N+1 steps a turn).
    #[arg(long, default_value_t = 100)]
    tool_calls: u32,
    /// Turns measured for per-step overhead.
    #[arg(long, default_value_t = 5)]
    turns: usize,
    /// Idle sessions to create.
    #[arg(long, default_value_t = 10_000)]
    idle_sessions: usize,
    /// Concurrency levels for the throughput benchmark.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 10, 100, 1000])]
    concurrency: Vec<usize>,
    /// The agentrt binary for the idle-session benchmark.
    #[arg(long, default_value = "target/release/agentrt")]
    agentrt_bin: PathBuf,
    /// JSON printed by bench/peer/langgraph_loop.py, for the side-by-side row.
    #[arg(long)]
    peer_json: Option<PathBuf>,
    /// Directory for temporary stores (on the disk being measured).
    #[arg(long, default_value = "target/bench-tmp")]
    tmp: PathBuf,
    /// A Python with the MCP SDK, for the MCP router-overhead benchmark.
    #[arg(long)]
    mcp_python: Option<PathBuf>,
    /// The in-sandbox agent for the sandbox benchmark.
    #[arg(long, default_value = "target/release/agentrt-sandbox-agent")]
    sandbox_agent: PathBuf,
    /// Sandboxes held in standby at once.
    #[arg(long, default_value_t = 200)]
    standby_sandboxes: usize,
    /// Run only the model gateway benchmark.
    #[arg(long)]
    gateway_only: bool,
    /// Run only the sandbox benchmark.
    #[arg(long)]
    sandbox_only: bool,
    /// A durable PostgreSQL server (admin URL) for the PostgreSQL rows;
    /// each measurement makes a fresh database on it.
    #[arg(long)]
    pg_url: Option<String>,
    /// JSON printed by bench/peer/dbos_steps.py on the same server.
    #[arg(long)]
    dbos_json: Option<PathBuf>,
    /// Run only the PostgreSQL benchmark (with SQLite's step beside it).
    #[arg(long)]
    postgres_only: bool,
    /// Also write the table to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Three rounds of a gateway measurement, the median by added p50 (the
/// best round's p50 would flatter it).
async fn median_round<F, Fut>(mut round: F) -> anyhow::Result<agentrt_gateway::bench::OverheadResult>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<agentrt_gateway::bench::OverheadResult>>,
{
    let mut rounds = Vec::new();
    for _ in 0..3 {
        rounds.push(round().await?);
    }
    rounds.sort_by(|a, b| a.added_p50_us.total_cmp(&b.added_p50_us));
    Ok(rounds.swap_remove(1))
}

fn gateway_result(g: &agentrt_gateway::bench::OverheadResult, through: &str) -> String {
    format!(
        "added p50 {:.0} µs · p99 {:.0} µs · {:.0} calls/s through {through}, {:.0} direct",
        g.added_p50_us, g.added_p99_us, g.gateway.calls_per_second, g.direct.calls_per_second
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.tmp).context("create temp dir")?;
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut row = |what: &str, result: String, target: &str| {
        println!("{what}: {result}");
        rows.push((what.to_owned(), result, target.to_owned()));
    };

    if !args.postgres_only && !args.sandbox_only {
        for (concurrency, calls) in [(1, 5_000), (100, 20_000)] {
            let g = median_round(|| async { Ok(agentrt_gateway::bench::overhead(concurrency, calls).await) }).await?;
            row(
                &format!("model gateway, {concurrency} concurrent caller(s), instant local upstream (median of 3 rounds of {calls} calls)"),
                gateway_result(&g, "the gateway"),
                "added p50 < 200 µs",
            );
        }
        for (concurrency, calls) in [(1, 5_000), (100, 20_000)] {
            let g = median_round(|| gateway_endpoint::measure(&args.tmp, concurrency, calls)).await?;
            row(
                &format!("gateway HTTP endpoint, {concurrency} concurrent caller(s): API key, budget check, usage stored (median of 3 rounds of {calls} calls)"),
                gateway_result(&g, "the endpoint"),
                "",
            );
        }
    }
    if args.gateway_only {
        return finish(&rows, args.out.as_deref());
    }
    if !args.postgres_only {
        let b = sandbox::measure(&args.sandbox_agent, &args.tmp, 50, args.standby_sandboxes).await?;
        use sandbox::ms;
        row(
            &format!("sandbox cold start: create → first exec result ({} starts, full isolation, cgroups)", b.cold.n),
            format!("p50 {} · p99 {}", ms(b.cold.p50), ms(b.cold.p99)),
            "p50 ≤ bwrap",
        );
        if let Some(bw) = &b.bwrap_cold {
            row("bwrap, same namespaces and mounts, spawn → `true` exits", format!("p50 {} · p99 {}", ms(bw.p50), ms(bw.p99)), "");
            let ratio = b.cold.p50.as_secs_f64() / bw.p50.as_secs_f64();
            row("agentrt cold start vs bwrap, p50", format!("{ratio:.2}×"), "≤ 1.0");
        }
        row(
            &format!("exec round trip in a warm sandbox ({} execs of `true`)", b.exec.n),
            format!("p50 {} · p99 {}", ms(b.exec.p50), ms(b.exec.p99)),
            "",
        );
        row("standby (freeze every process)", format!("p50 {} · p99 {}", ms(b.pause.p50), ms(b.pause.p99)), "");
        row("resume from standby (thaw)", format!("p50 {} · p99 {}", ms(b.resume.p50), ms(b.resume.p99)), "p50 < 1 ms");
        row(
            &format!("{} sandboxes in standby at once", b.standby_count),
            format!(
                "{:.1} MiB charged to their cgroups in all · thaw + first exec p50 {} · p99 {}",
                b.standby_memory_mib,
                ms(b.standby_resume.p50),
                ms(b.standby_resume.p99)
            ),
            "200 on one node",
        );
    }
    if args.sandbox_only {
        return finish(&rows, args.out.as_deref());
    }

    let steps_per_turn = 2 * args.tool_calls + 1;
    if let Some(pg) = &args.pg_url {
        // SQLite's step beside it, measured the same way just before.
        let rig = inproc::rig(&args.tmp, Durability::Fsync).await?;
        inproc::step_overhead(&rig, 500, 2).await?;
        let sqlite = inproc::step_overhead(&rig, args.tool_calls, args.turns).await?;
        drop(rig);
        let rig = postgres::rig(pg).await?;
        inproc::step_overhead(&rig, 500, 2).await?;
        let s = inproc::step_overhead(&rig, args.tool_calls, args.turns).await?;
        rig.engine.shutdown(std::time::Duration::from_secs(5)).await;
        row(
            &format!(
                "durable step overhead, PostgreSQL, fsync and synchronous commit on ({} steps, {} turns of {steps_per_turn})",
                s.n, args.turns
            ),
            format!("p50 {} · p99 {} · mean {}", us(s.p50), us(s.p99), us(s.mean)),
            "",
        );
        row(
            "durable step overhead, SQLite fsync, measured just before",
            format!(
                "p50 {} · p99 {} · PostgreSQL/SQLite p50 {:.2}×",
                us(sqlite.p50),
                us(sqlite.p99),
                postgres::p50_us(&s) / postgres::p50_us(&sqlite)
            ),
            "",
        );
        for nodes in [1, 2, 3] {
            let sps = postgres::throughput(pg, nodes, 100, 10).await?;
            row(&format!("throughput on PostgreSQL, {nodes} node(s), 100 sessions of 21 steps"), format!("{sps:.0} steps/s"), "");
        }
        if let Some(path) = &args.dbos_json {
            let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
            let peer = postgres::peer(&serde_json::from_str(&text).context("parse DBOS JSON")?);
            row(
                &format!("DBOS {} on the same PostgreSQL server, {}-step workflow", peer.version, peer.steps),
                format!("p50 {:.1} µs · p99 {:.1} µs", peer.p50_us, peer.p99_us),
                "",
            );
            row("agentrt vs DBOS on PostgreSQL, per-step p50", format!("{:.1}× faster", peer.p50_us / postgres::p50_us(&s)), "> 1×");
        }
    }
    if args.postgres_only {
        return finish(&rows, args.out.as_deref());
    }
    // Warm-up of each store: a fresh database's WAL grows on every commit,
    // which costs a metadata flush per fsync; a running server's WAL has
    // reached its steady size and is reused after each checkpoint.
    let mut step = stats::Stats::default();
    for (durability, label) in [(Durability::Fsync, "fsync per commit"), (Durability::OsBuffered, "os-buffered")] {
        let rig = inproc::rig(&args.tmp, durability).await?;
        inproc::step_overhead(&rig, 500, 2).await?;
        let a = inproc::append_latency(&rig, 2000).await?;
        row(&format!("store append, {label} ({} appends)", a.n), format!("p50 {} · p99 {}", us(a.p50), us(a.p99)), "");
        let s = inproc::step_overhead(&rig, args.tool_calls, args.turns).await?;
        row(
            &format!("durable step overhead, {label} ({} steps, {} turns of {steps_per_turn})", s.n, args.turns),
            format!("p50 {} · p99 {} · mean {}", us(s.p50), us(s.p99), us(s.mean)),
            if durability == Durability::Fsync { "p50 < 250 µs" } else { "" },
        );
        if durability == Durability::Fsync {
            step = s;
        }
    }

    for &c in &args.concurrency {
        let rig = inproc::rig(&args.tmp, Durability::Fsync).await?;
        // Keep total work similar across levels: fewer steps per session at high concurrency.
        let tool_calls = match c {
            0..=10 => 50,
            11..=100 => 20,
            _ => 5,
        };
        let sps = inproc::throughput(&rig, c, tool_calls).await?;
        let target = if c == 100 { "≥ 5,000 steps/s" } else { "" };
        row(&format!("throughput, {c} concurrent sessions ({} steps each)", 2 * tool_calls + 1), format!("{sps:.0} steps/s"), target);
    }

    {
        // Tracing cost on the os-buffered store, where the disk does not hide it.
        let rig = inproc::rig(&args.tmp, Durability::OsBuffered).await?;
        inproc::step_overhead(&rig, 500, 1).await?;
        let (off, on) = tracing_cost::compare(&rig, args.tool_calls, 3, 5).await?;
        row(
            "step overhead, OpenTelemetry tracing off (os-buffered; median of 5 rounds)",
            format!("p50 {} · p99 {}", us(off.p50), us(off.p99)),
            "",
        );
        let added = (on.p50.as_secs_f64() / off.p50.as_secs_f64() - 1.0) * 100.0;
        row(
            "step overhead, tracing on: every span exported over OTLP/HTTP",
            format!("p50 {} · p99 {} · {added:+.1}% at p50", us(on.p50), us(on.p99)),
            "< 10% added at p50",
        );
    }

    if let Some(python) = &args.mcp_python {
        let script = PathBuf::from("tests/peers/mcp_server.py");
        let o = mcp_overhead::measure(python, &script, &args.tmp, 1000).await?;
        row(
            &format!("MCP call direct with the Rust SDK ({} calls)", o.direct.n),
            format!("p50 {} · p99 {}", us(o.direct.p50), us(o.direct.p99)),
            "",
        );
        row(
            "MCP call through agentrt's tool router (same server, calls alternating)",
            format!("p50 {} · p99 {} · {:+.1} µs added (median of paired differences)", us(o.routed.p50), us(o.routed.p99), o.added_p50_us),
            "< 100 µs added at p50",
        );
    }

    let rig = inproc::rig(&args.tmp, Durability::Fsync).await?;
    let sse = inproc::sse_latency(&rig, args.tool_calls).await?;
    row(&format!("append → SSE client latency ({} events)", sse.n), format!("p50 {} · p99 {}", us(sse.p50), us(sse.p99)), "");
    drop(rig);

    let idle = idle::idle_sessions(&args.agentrt_bin, &args.tmp, args.idle_sessions).await?;
    row(
        &format!("{} idle sessions via HTTP", idle.sessions),
        format!(
            "created in {:.2} s ({:.0}/s) · server RSS after {:.1} MiB (peak {:.1} MiB)",
            idle.elapsed.as_secs_f64(),
            idle.sessions as f64 / idle.elapsed.as_secs_f64(),
            idle.rss_kib as f64 / 1024.0,
            idle.peak_rss_kib as f64 / 1024.0
        ),
        "RSS < 200 MB",
    );

    if let Some(path) = &args.peer_json {
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let peer: Value = serde_json::from_str(&text).context("parse peer JSON")?;
        let p50 = peer["per_step_us_p50"].as_f64().unwrap_or(f64::NAN);
        let p99 = peer["per_step_us_p99"].as_f64().unwrap_or(f64::NAN);
        let steps = peer["steps_per_run"].as_u64().unwrap_or(0);
        row(
            &format!("LangGraph {} + SqliteSaver, same loop ({steps} steps/run)", peer["langgraph_version"].as_str().unwrap_or("?")),
            format!(
                "p50 {p50:.1} µs · p99 {p99:.1} µs (synchronous={}, journal={})",
                peer["sqlite_synchronous"].as_str().unwrap_or("?"),
                peer["journal_mode"].as_str().unwrap_or("?")
            ),
            "",
        );
        let ratio = p50 / (step.p50.as_secs_f64() * 1e6);
        row("agentrt vs LangGraph, per-step p50", format!("{ratio:.1}× faster"), "≥ 10×");
    }

    finish(&rows, args.out.as_deref())
}

/// Prints the markdown table and writes it to `out` if given.
fn finish(rows: &[(String, String, String)], out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let mut table = String::from("| benchmark | result | target |\n|---|---|---|\n");
    for (what, result, target) in rows {
        table.push_str(&format!("| {what} | {result} | {target} |\n"));
    }
    println!("\n{table}");
    if let Some(out) = out {
        std::fs::write(out, &table).with_context(|| format!("write {}", out.display()))?;
    }
    Ok(())
}
