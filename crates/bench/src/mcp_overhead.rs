//! What the tool router adds to an MCP call: the same `add` tool of the
//! same MCP server (official Python SDK, streamable HTTP), called directly
//! with the Rust SDK and through agentrt's `ToolSet` + `ToolRouter`, in
//! calls alternating one by one in one process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use agentrt_store::sqlite::SqliteStore;
use agentrt_tools::router::ToolRouter;
use agentrt_tools::{ToolContext, ToolSet};
use agentrt_types::spec::SpecFormat;
use agentrt_types::{AgentSpec, SessionId, TurnId};
use anyhow::{anyhow, Context};
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use serde_json::json;

use crate::stats::Stats;

pub struct Overhead {
    pub direct: Stats,
    pub routed: Stats,
    /// Median of (routed − direct) over paired calls, in µs.
    pub added_p50_us: f64,
}

pub async fn measure(python: &Path, server_script: &Path, tmp: &Path, calls: usize) -> anyhow::Result<Overhead> {
    let mut child = Command::new(python)
        .arg(server_script)
        .args(["--transport", "http", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start the MCP server")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let port: u16 =
        line.trim().strip_prefix("listening ").and_then(|p| p.parse().ok()).ok_or_else(|| anyhow!("MCP server said {line:?}"))?;
    let url = format!("http://127.0.0.1:{port}/mcp");
    let result = run(&url, tmp, calls).await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

async fn run(url: &str, tmp: &Path, calls: usize) -> anyhow::Result<Overhead> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let direct_client = ().serve(StreamableHttpClientTransport::from_uri(url)).await.context("connect directly")?;

    let spec = AgentSpec::parse(
        &format!("[model]\nprovider = \"scripted\"\nscript = [{{ text = \"x\" }}]\n[[tools.mcp]]\nname = \"m\"\nurl = \"{url}\"\n"),
        SpecFormat::Toml,
    )?;
    let tools = ToolSet::for_agent(&spec, false)?;
    if let Some((_, e)) = tools.discover(None).await.into_iter().next() {
        return Err(anyhow!("discover: {e}"));
    }
    let router = ToolRouter::new(spec.tools.router.clone());
    let dir = tempfile::tempdir_in(tmp)?;
    let ctx = ToolContext {
        session_id: SessionId::generate(),
        turn_id: TurnId::generate(),
        step: 1,
        idempotency_key: "bench".into(),
        store: Arc::new(SqliteStore::open(&dir.path().join("t.db"))?),
        http: reqwest::Client::new(),
        traceparent: None,
        sandbox: None,
    };

    // Calls alternate one by one, so drift in the server's speed hits both;
    // the added time is the median of the paired differences.
    let (mut direct, mut routed, mut added) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..calls + calls / 10 {
        let mut params = CallToolRequestParams::new("add");
        params.arguments = json!({"a": 1, "b": 2}).as_object().cloned();
        let started = Instant::now();
        direct_client.call_tool(params).await.context("direct call")?;
        let d = started.elapsed();
        let started = Instant::now();
        let r = router.call(&tools, "m.add", &ctx, json!({"a": 1, "b": 2})).await;
        r.result.map_err(|e| anyhow!("routed call: {e}"))?;
        let t = started.elapsed();
        if i >= calls / 10 {
            direct.push(d);
            routed.push(t);
            added.push(t.as_secs_f64() - d.as_secs_f64());
        }
    }
    added.sort_by(f64::total_cmp);
    let added_p50 = added[added.len() / 2];
    let _ = direct_client.cancel().await;
    Ok(Overhead { direct: Stats::of(direct), routed: Stats::of(routed), added_p50_us: added_p50 * 1e6 })
}
