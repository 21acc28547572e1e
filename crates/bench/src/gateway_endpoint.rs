//! The gateway as a client sees it: `POST /v1/gateway/openai/v1/chat/completions`
//! on an in-process API server (API-key authentication, the budget check,
//! the call, usage recorded in the fsync'd store off the response path)
//! against the same request posted straight to the upstream.

use std::sync::Arc;
use std::time::Duration;

use agentrt_api::{router, AppState};
use agentrt_engine::{Engine, EngineConfig};
use agentrt_gateway::bench::{bench_gateway, compare, request_bytes, OverheadResult, Upstream};
use agentrt_store::sqlite::SqliteStore;
use agentrt_types::{Role, DEFAULT_TENANT};
use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// Measures `calls` calls by `concurrency` callers each way.
pub async fn measure(tmp: &std::path::Path, concurrency: usize, calls: usize) -> anyhow::Result<OverheadResult> {
    let upstream = Upstream::start().await;
    let gateway = Arc::new(bench_gateway(&upstream, concurrency, reqwest::Client::builder().no_proxy().build()?));
    let dir = tempfile::tempdir_in(tmp).context("temp dir")?;
    let store = Arc::new(SqliteStore::open(&dir.path().join("gateway.db"))?);
    let engine = Engine::new(store, EngineConfig { gateway: Some(gateway.clone()), ..EngineConfig::default() })?;
    engine.start().await?;
    let key = engine.create_api_key(DEFAULT_TENANT, "bench", Role::Operator).await?.secret;
    let shutdown = CancellationToken::new();
    let app = router(AppState {
        engine: engine.clone(),
        shutdown: shutdown.clone(),
        heartbeat: Duration::from_secs(15),
        dev_mode: false,
        gateway: Some(gateway),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/gateway/openai/v1/chat/completions", listener.local_addr()?);
    let stop = shutdown.clone();
    let server = tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await });

    let client = reqwest::Client::builder().no_proxy().build()?;
    let request = request_bytes();
    let through = move || {
        let call = client.post(&url).bearer_auth(&key).header("content-type", "application/json").body(request.clone()).send();
        async move {
            let answer = call.await.and_then(reqwest::Response::error_for_status).expect("call through the endpoint");
            answer.bytes().await.expect("endpoint answer");
        }
    };
    let result = compare(concurrency, calls, &upstream, through).await;
    shutdown.cancel();
    let _ = server.await;
    engine.shutdown(Duration::from_secs(5)).await;
    upstream.stop().await;
    Ok(result)
}
