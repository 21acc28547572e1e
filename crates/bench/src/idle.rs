//! 10,000 idle sessions on the real `agentrt serve` binary: creation time
//! through the HTTP API and the server's resident memory afterwards.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use futures_util::stream::{self, StreamExt};
use serde_json::json;

pub struct IdleResult {
    pub sessions: usize,
    pub elapsed: Duration,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

pub async fn idle_sessions(bin: &Path, base: &Path, sessions: usize) -> anyhow::Result<IdleResult> {
    let dir = tempfile::tempdir_in(base)?;
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut key = String::new();
    let url = loop {
        let line = lines.next().ok_or_else(|| anyhow!("server exited"))??;
        if line.starts_with("agentrt admin key") {
            key = line.rsplit(' ').next().unwrap_or_default().to_owned();
        }
        if let Some(u) = line.strip_prefix("agentrt listening on ") {
            break u.trim().to_owned();
        }
    };
    let result = async {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {key}").parse()?);
        let http = reqwest::Client::builder().default_headers(headers).build()?;
        let r = http.put(format!("{url}/v1/agents/idle")).body("[model]\nprovider = \"scripted\"\n").send().await?;
        if r.status() != 201 {
            return Err(anyhow!("register agent: {}", r.status()));
        }
        let started = Instant::now();
        let results: Vec<anyhow::Result<()>> = stream::iter(0..sessions)
            .map(|i| {
                let http = http.clone();
                let url = url.clone();
                async move {
                    let r = http.post(format!("{url}/v1/sessions")).json(&json!({"agent": "idle", "metadata": {"n": i}})).send().await?;
                    if r.status() != 201 {
                        return Err(anyhow!("create session: {}", r.status()));
                    }
                    Ok(())
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        let elapsed = started.elapsed();
        for r in results {
            r?;
        }
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
        let field = |name: &str| -> u64 {
            status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        Ok(IdleResult { sessions, elapsed, rss_kib: field("VmRSS:"), peak_rss_kib: field("VmHWM:") })
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}
