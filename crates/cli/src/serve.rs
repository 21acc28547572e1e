//! `agentrt serve`: wires store, engine and API together and runs them.

use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use agentrt_api::{router, AppState};
use agentrt_engine::{Engine, EngineConfig};
use agentrt_sandbox::bridge::GatewayBridge;
use agentrt_store::sql::SqlStore;
use agentrt_types::{Principal, SessionId};
use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::{output, telemetry};

/// Runs the server until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let telemetry = telemetry::init(&config)?;
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("create data dir {}", config.data_dir.display()))?;
    // One process per data dir: the lock makes it safe to take over the
    // leases a previous (crashed) run left behind without waiting for them.
    let lock_path = config.data_dir.join("agentrt.lock");
    let lock = File::create(&lock_path).with_context(|| format!("create {}", lock_path.display()))?;
    lock.try_lock().map_err(|_| anyhow::anyhow!("data dir {} is in use by another agentrt process", config.data_dir.display()))?;

    let store = Arc::new(open_store(&config)?);
    let gateway = if config.models.is_empty() {
        None
    } else {
        let http = reqwest::Client::builder().build().context("build the gateway's HTTP client")?;
        Some(Arc::new(agentrt_gateway::Gateway::new(config.models.clone(), http)?))
    };
    let mut engine_config = EngineConfig {
        lease_ttl: config.lease_ttl(),
        // Other nodes may hold leases on a shared database: wait them out.
        exclusive_store: config.store.is_empty(),
        max_input_bytes: config.max_input_bytes,
        http_timeout: Duration::from_secs(config.http_timeout_seconds),
        capture_content: config.otel_capture_content,
        mcp_stdio_on_host: config.mcp_stdio_on_host,
        policy_default: config.policy_default,
        // Loop calls are priced by upstream model id, or by route name for
        // agents whose provider is the gateway.
        prices: config.models.iter().flat_map(|(name, r)| [(r.model.clone(), r.price), (name.clone(), r.price)]).collect(),
        gateway: gateway.clone(),
        ..EngineConfig::default()
    };
    if !config.node_id.is_empty() {
        engine_config.node_id = config.node_id.clone();
    }
    engine_config.workspace_sync = workspace_sync(&config, &engine_config.node_id)?;
    // Sandboxes reach the gateway through a bridge that needs the API's
    // state, which needs the engine: the bridge waits for it.
    let (bridge_state, bridge_rx) = tokio::sync::watch::channel(None);
    let bridge = gateway.is_some().then(|| GatewayBridge { port: SANDBOX_GATEWAY_PORT, serve: serve_bridge(bridge_rx) });
    let engine = Engine::with_sandboxes(store, engine_config, sandbox_driver(&config, bridge))?;
    let resumed = engine.start().await.context("resume unfinished turns")?;
    if config.dev_mode {
        tracing::warn!("dev mode: authentication is OFF; every request acts as an admin of the default tenant");
    } else if let Some(key) = engine.bootstrap_admin_key().await.context("create the first admin key")? {
        // Shown once: only its hash is stored.
        output::line(&format!("agentrt admin key (tenant default, shown only this once; export AGENTRT_API_KEY=…): {}", key.secret));
    }

    let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("listen on {}", config.listen))?;
    let addr = listener.local_addr().context("read bound address")?;
    let shutdown = CancellationToken::new();
    let state = AppState {
        engine: engine.clone(),
        shutdown: shutdown.clone(),
        heartbeat: Duration::from_secs(config.sse_heartbeat_seconds),
        dev_mode: config.dev_mode,
        gateway,
    };
    bridge_state.send_replace(Some(state.clone()));
    let app = router(state);
    tracing::info!(%addr, data_dir = %config.data_dir.display(), node = engine.node_id(), resumed, "agentrt serving");
    output::line(&format!("agentrt listening on http://{addr}"));

    let stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            stop.cancel();
        })
        .await
        .context("serve HTTP")?;
    engine.shutdown(Duration::from_secs(5)).await;
    telemetry.shutdown();
    drop(lock);
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The loopback port at which code in a sandbox finds the model gateway.
const SANDBOX_GATEWAY_PORT: u16 = 7700;

/// Serves the model gateway on one sandbox's socket, as its session, once
/// the API's state exists.
fn serve_bridge(state: tokio::sync::watch::Receiver<Option<AppState>>) -> agentrt_sandbox::bridge::ServeGateway {
    Arc::new(move |session: String, listener: std::os::unix::net::UnixListener| {
        let mut state = state.clone();
        tokio::spawn(async move {
            let ready = state.wait_for(Option::is_some).await.map(|s| s.clone());
            let Ok(Some(state)) = ready else { return };
            let Some(id) = SessionId::parse(&session) else { return };
            let summary = match state.engine.get_session(&id).await {
                Ok(s) => s,
                Err(e) => return tracing::warn!(session, error = %e, "no gateway for the sandbox"),
            };
            let principal = Principal::Session { tenant: summary.tenant, agent: summary.agent, session_id: id };
            let listener = match listener.set_nonblocking(true).and_then(|()| tokio::net::UnixListener::from_std(listener)) {
                Ok(l) => l,
                Err(e) => return tracing::warn!(session, error = %e, "no gateway for the sandbox"),
            };
            let _ = axum::serve(listener, agentrt_api::sandbox_gateway(state, principal)).await;
        })
        .abort_handle()
    })
}

/// How workspaces follow their sessions to other nodes, if they do.
fn workspace_sync(config: &Config, node: &str) -> anyhow::Result<Option<agentrt_sandbox::manager::WorkspaceSync>> {
    if config.workspace_store.is_empty() || config.sandbox_driver == "none" {
        if !config.store.is_empty() && config.sandbox_driver != "none" {
            tracing::warn!("workspace-store is not set: a session's sandbox workspace stays on the node that made it, and a session that moves starts with an empty one");
        }
        return Ok(None);
    }
    let store = agentrt_sandbox::workspace_store::WorkspaceStore::open(&config.workspace_store).context("open the workspace store")?;
    tracing::info!(location = store.location(), "workspaces follow their sessions through the workspace store");
    Ok(Some(agentrt_sandbox::manager::WorkspaceSync {
        store,
        dir: config.data_dir.join("sandboxes").join("transfer"),
        node: node.to_owned(),
    }))
}

/// The configured sandbox driver, if sandboxes are on.
fn sandbox_driver(config: &Config, gateway: Option<GatewayBridge>) -> Option<Arc<dyn agentrt_sandbox::SandboxDriver>> {
    if config.sandbox_driver == "none" {
        return None;
    }
    let agent = if config.sandbox_agent.is_empty() {
        let exe = std::env::current_exe().unwrap_or_else(|_| "agentrt".into());
        let beside = exe.with_file_name("agentrt-sandbox-agent");
        if speaks_our_protocol(&beside) {
            vec![beside.to_string_lossy().into_owned()]
        } else {
            vec![exe.to_string_lossy().into_owned(), crate::SANDBOX_AGENT_ARG.to_owned()]
        }
    } else {
        vec![config.sandbox_agent.clone()]
    };
    let linux =
        agentrt_sandbox::linux::LinuxConfig { dir: config.data_dir.join("sandboxes"), agent, uid_base: config.sandbox_uid_base, gateway };
    Some(Arc::new(agentrt_sandbox::linux::LinuxDriver::new(linux)))
}

/// Whether `program` is an agent of this runtime's protocol version (a
/// stale build beside a rebuilt `agentrt` is not).
fn speaks_our_protocol(program: &std::path::Path) -> bool {
    let Ok(out) = std::process::Command::new(program).arg("version").output() else { return false };
    let ours = agentrt_sandbox::protocol::PROTOCOL_VERSION.to_string();
    let theirs = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() && theirs == ours {
        return true;
    }
    tracing::warn!(program = %program.display(), theirs, ours, "sandbox agent speaks another protocol version; using agentrt itself");
    false
}

/// The store the config names: SQLite in the data directory, or PostgreSQL.
fn open_store(config: &Config) -> anyhow::Result<SqlStore> {
    if config.store.is_empty() {
        let db = config.data_dir.join("agentrt.db");
        return SqlStore::open_with(&db, config.store_durability).with_context(|| format!("open store {}", db.display()));
    }
    SqlStore::connect_postgres(&config.store).context("connect to the PostgreSQL store")
}
