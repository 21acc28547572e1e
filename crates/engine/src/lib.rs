//! The agentrt engine: agents, sessions and turns on top of the store; one
//! executor per session holding a lease with a fencing token; the durable
//! agent loop; recovery of unfinished turns at start.
//!
//! Reading order: [`Engine`] (the API other crates call), `executor` (who
//! runs a session and when), `turn` (the agent loop of one turn),
//! `history` (rebuilding state from the log).

mod agents;
pub mod budgets;
mod cache;
mod cluster;
mod credentials;
mod delegate;
mod error;
mod executor;
mod gateway_model;
pub mod governance;
mod handover;
mod history;
pub mod hub;
pub mod identity;
pub mod metrics;
mod sandboxes;
pub mod telemetry;
mod turn;

use std::sync::Arc;
use std::time::Duration;

use agentrt_store::{AgentInfo, AgentVersion, AppendRequest, Fence, NewSession, Precondition, SessionFilter, Store, StoreError};
use agentrt_tools::ToolSet;
use agentrt_types::event::{verify_chain_to, ChainError};
use agentrt_types::spec::{is_agent_name, FieldError, SpecError, SpecFormat};
use agentrt_types::{AgentSpec, Event, EventData, NewEvent, Principal, SessionId, SessionStatus, SessionSummary, TurnId, TurnSummary};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use cluster::NodeView;
pub use credentials::{SessionCredential, DEFAULT_CREDENTIAL_SECONDS, MAX_CREDENTIAL_SECONDS};
pub use error::EngineError;
pub use history::UNKNOWN_OUTCOME;

use crate::agents::AgentCache;
use crate::executor::Executors;
use crate::hub::EventHub;

/// How long an authenticated API key is trusted without reading the store.
/// A key revoked on this node stops working at once.
const KEY_CACHE_TTL: Duration = Duration::from_secs(5);
/// How long the gateway trusts that a tenant has (or has no) budgets.
const BUDGET_CACHE_TTL: Duration = Duration::from_secs(1);

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// This node's name; recorded as the lease holder and executor.
    pub node_id: String,
    /// How long a lease lasts without renewal.
    pub lease_ttl: Duration,
    /// The store belongs to this process alone (the embedded SQLite store
    /// under a locked data dir), so leases left by a previous run of this
    /// node can be taken over at once instead of after they expire.
    pub exclusive_store: bool,
    /// Largest turn input accepted, in bytes.
    pub max_input_bytes: usize,
    /// Timeout for outgoing HTTP from providers and tools.
    pub http_timeout: Duration,
    /// Put prompt/completion content and tool arguments/results on spans.
    pub capture_content: bool,
    /// Let agents run stdio MCP servers as host processes (until a sandbox
    /// driver can run them inside the session's sandbox).
    pub mcp_stdio_on_host: bool,
    /// Decision for a tool call no policy matches, in a tenant that has policies.
    pub policy_default: governance::PolicyDefault,
    /// Prices by model id, for usage accounting.
    pub prices: std::collections::BTreeMap<String, agentrt_types::event::Price>,
    /// The model gateway, for agents whose provider is `gateway`.
    pub gateway: Option<Arc<agentrt_gateway::Gateway>>,
    /// Where sandbox workspaces go to follow their sessions to other
    /// nodes; `None` for a node alone on its store.
    pub workspace_sync: Option<agentrt_sandbox::manager::WorkspaceSync>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            node_id: format!("node-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]),
            lease_ttl: Duration::from_secs(30),
            exclusive_store: true,
            max_input_bytes: 256 * 1024,
            http_timeout: Duration::from_secs(300),
            capture_content: false,
            mcp_stdio_on_host: false,
            policy_default: governance::PolicyDefault::Forbid,
            prices: Default::default(),
            gateway: None,
            workspace_sync: None,
        }
    }
}

/// What to do with new input when the session already has a turn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBusy {
    /// Run after the turns before it.
    #[default]
    Queue,
    /// Refuse with `session_busy`.
    Reject,
    /// Cancel the running and queued turns, then run this one.
    Interrupt,
}

/// A turn submission.
#[derive(Clone, Debug)]
pub struct SubmitTurn {
    pub input: String,
    pub on_busy: OnBusy,
    pub idempotency_key: Option<String>,
    /// The client's W3C `traceparent`; the turn's trace continues it.
    pub traceparent: Option<String>,
    /// Lends the session to another agent for this turn (see
    /// [`Engine::lend`]).
    pub borrow: Option<agentrt_types::event::BorrowTerms>,
}

pub(crate) struct Inner {
    pub store: Arc<dyn Store>,
    pub config: EngineConfig,
    pub http: reqwest::Client,
    pub hub: EventHub,
    pub agents: AgentCache,
    pub executors: Executors,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    pub metrics: metrics::Metrics,
    /// This node's sandboxes; `None` when sandboxes are turned off.
    pub sandboxes: Option<Arc<agentrt_sandbox::SandboxManager>>,
    pub sandbox_driver: Option<Arc<dyn agentrt_sandbox::SandboxDriver>>,
    /// Per-tenant tool-call rate limits.
    pub tenant_buckets: agentrt_tools::rate::RateLimiter,
    /// API keys recently authenticated, by the hash of their secret.
    pub key_cache: cache::TtlCache<Principal>,
    /// Whether each tenant has budgets, for the gateway's check.
    pub budget_tenants: cache::TtlCache<bool>,
    /// Tenants' compiled policies.
    pub policies: governance::PolicyCache,
    /// Key that signs session credentials (loaded from the store once).
    pub signing_key: tokio::sync::OnceCell<Vec<u8>>,
    /// This node, as the cluster sees it.
    pub node: cluster::NodeState,
}

/// The engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Creates the engine. Call [`Engine::start`] to resume unfinished work.
    pub fn new(store: Arc<dyn Store>, config: EngineConfig) -> Result<Engine, EngineError> {
        Engine::with_sandboxes(store, config, None)
    }

    /// Creates the engine with a sandbox driver for agents that have a `[sandbox]`.
    pub fn with_sandboxes(
        store: Arc<dyn Store>,
        config: EngineConfig,
        sandbox_driver: Option<Arc<dyn agentrt_sandbox::SandboxDriver>>,
    ) -> Result<Engine, EngineError> {
        let http = reqwest::Client::builder()
            .timeout(config.http_timeout)
            .build()
            .map_err(|e| EngineError::Internal(format!("build HTTP client: {e}")))?;
        let workspace_sync = config.workspace_sync.clone();
        Ok(Engine {
            inner: Arc::new_cyclic(|weak| Inner {
                store,
                config,
                http,
                hub: EventHub::default(),
                agents: AgentCache::default(),
                executors: Executors::default(),
                tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                metrics: metrics::Metrics::default(),
                sandboxes: sandbox_driver.clone().map(|d| sandboxes::manager(d, weak.clone(), workspace_sync.clone())),
                sandbox_driver,
                policies: governance::PolicyCache::default(),
                tenant_buckets: Default::default(),
                key_cache: cache::TtlCache::new(KEY_CACHE_TTL, 10_000),
                budget_tenants: cache::TtlCache::new(BUDGET_CACHE_TTL, 10_000),
                signing_key: tokio::sync::OnceCell::new(),
                node: cluster::NodeState::default(),
            }),
        })
    }

    /// Resumes every session with unfinished turns and starts lease renewal.
    pub async fn start(&self) -> Result<usize, EngineError> {
        cluster::heartbeat(&self.inner).await?;
        executor::spawn_lease_renewal(&self.inner);
        cluster::spawn(&self.inner);
        if let Some(sandboxes) = &self.inner.sandboxes {
            sandboxes.spawn_sweeper(Duration::from_millis(250));
        }
        let sessions = self.inner.store.sessions_with_unfinished_turns().await?;
        for id in &sessions {
            executor::ensure_running(&self.inner, id);
        }
        if !sessions.is_empty() {
            tracing::info!(sessions = sessions.len(), "resuming unfinished turns");
        }
        Ok(sessions.len())
    }

    /// Stops executors (their turns resume at the next start) and waits for
    /// them to finish their current append.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        let _ = tokio::time::timeout(grace, self.inner.tasks.wait()).await;
        if let Some(sandboxes) = &self.inner.sandboxes {
            sandboxes.stop_all().await;
        }
    }

    /// The node name of this engine.
    pub fn node_id(&self) -> &str {
        &self.inner.config.node_id
    }

    /// Largest accepted turn input, in bytes.
    pub fn max_input_bytes(&self) -> usize {
        self.inner.config.max_input_bytes
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The runtime's metrics.
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.inner.metrics
    }

    /// Metrics in the Prometheus text format, with scrape-time gauges refreshed.
    pub async fn metrics_text(&self) -> Result<String, EngineError> {
        for status in [
            SessionStatus::Idle,
            SessionStatus::Running,
            SessionStatus::WaitingApproval,
            SessionStatus::WaitingBudget,
            SessionStatus::Terminated,
        ] {
            self.inner.metrics.sessions.get_or_create(&metrics::StatusLabel { status: status.as_str().into() }).set(0);
        }
        for (status, n) in self.inner.store.count_sessions_by_status().await? {
            let label = metrics::StatusLabel { status: status.as_str().into() };
            self.inner.metrics.sessions.get_or_create(&label).set(n as i64);
        }
        self.inner.metrics.executors.set(self.inner.executors.active() as i64);
        Ok(self.inner.metrics.encode())
    }

    // ----- agents -----

    /// Validates a spec and registers it as the next version of a tenant's agent.
    pub async fn put_agent(&self, tenant: &str, name: &str, text: &str, format: SpecFormat) -> Result<AgentVersion, EngineError> {
        if !is_agent_name(name) {
            return Err(EngineError::InvalidAgentName(name.to_owned()));
        }
        let spec = AgentSpec::parse(text, format)?;
        ToolSet::for_agent(&spec, self.inner.config.mcp_stdio_on_host)
            .map_err(|e| SpecError { errors: vec![FieldError { path: e.path, message: e.message }] })?;
        // Stdio servers run in the session's sandbox; without one, on the
        // host if the operator allows it.
        if spec.sandbox.is_none() && !self.inner.config.mcp_stdio_on_host {
            let errors: Vec<FieldError> = spec
                .tools
                .mcp
                .iter()
                .enumerate()
                .filter(|(_, s)| s.command.is_some())
                .map(|(i, _)| FieldError {
                    path: format!("tools.mcp[{i}].command"),
                    message: "a stdio MCP server runs in the session's sandbox: give the agent a [sandbox]; or set mcp-stdio-on-host = true in the server config to run it as a host process; or use a url".into(),
                })
                .collect();
            if !errors.is_empty() {
                return Err(SpecError { errors }.into());
            }
        }
        if spec.model.provider == "gateway" {
            let routes = self.inner.config.gateway.as_ref().map(|g| g.route_names()).unwrap_or_default();
            if !routes.contains(&spec.model.model) {
                let message = if routes.is_empty() {
                    "this server has no model routes; add [models.NAME] to its config, or use another provider".to_owned()
                } else {
                    format!("no model route named {:?}; this server has: {}", spec.model.model, routes.join(", "))
                };
                return Err(SpecError { errors: vec![FieldError { path: "model.model".into(), message }] }.into());
            }
        }
        if let Some(sandbox) = &spec.sandbox {
            let errors = sandboxes::host_check(sandbox, self.inner.sandbox_driver.as_ref());
            if !errors.is_empty() {
                return Err(SpecError { errors }.into());
            }
        }
        Ok(self.inner.store.put_agent(tenant, name, &spec).await?)
    }

    pub async fn get_agent(&self, tenant: &str, name: &str, version: Option<u32>) -> Result<AgentVersion, EngineError> {
        self.inner.store.get_agent(tenant, name, version).await?.ok_or_else(|| match version {
            Some(v) => EngineError::AgentVersionNotFound(name.to_owned(), v),
            None => EngineError::AgentNotFound(name.to_owned()),
        })
    }

    pub async fn list_agents(&self, tenant: &str) -> Result<Vec<AgentInfo>, EngineError> {
        Ok(self.inner.store.list_agents(tenant).await?)
    }

    // ----- sessions -----

    /// Creates a session of a tenant's agent, pinned to an agent version
    /// (the latest by default).
    pub async fn create_session(
        &self,
        tenant: &str,
        agent: &str,
        version: Option<u32>,
        metadata: Value,
    ) -> Result<SessionSummary, EngineError> {
        if !metadata.is_object() && !metadata.is_null() {
            return Err(EngineError::InvalidInput("metadata must be a JSON object".into()));
        }
        let metadata = if metadata.is_null() { Value::Object(Default::default()) } else { metadata };
        let agent = self.get_agent(tenant, agent, version).await?;
        let new =
            NewSession { id: SessionId::generate(), tenant: tenant.to_owned(), agent: agent.name, agent_version: agent.version, metadata };
        let (summary, event) = self.inner.store.create_session(new).await?;
        self.inner.hub.publish(&summary.id, std::slice::from_ref(&event));
        Ok(summary)
    }

    pub async fn get_session(&self, id: &SessionId) -> Result<SessionSummary, EngineError> {
        self.inner.store.get_session(id).await?.ok_or_else(|| EngineError::SessionNotFound(id.clone()))
    }

    /// The session, if it belongs to `tenant`; another tenant's session is
    /// reported as not found, exactly like a missing one.
    pub async fn session_of(&self, tenant: &str, id: &SessionId) -> Result<SessionSummary, EngineError> {
        match self.inner.store.get_session(id).await? {
            Some(s) if s.tenant == tenant => Ok(s),
            _ => Err(EngineError::SessionNotFound(id.clone())),
        }
    }

    pub async fn list_sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionSummary>, EngineError> {
        Ok(self.inner.store.list_sessions(filter).await?)
    }

    /// Terminates a session: cancels its turns, keeps its log, refuses new
    /// input. Terminating twice is not an error.
    pub async fn terminate_session(&self, id: &SessionId, reason: &str) -> Result<SessionSummary, EngineError> {
        let summary = self.get_session(id).await?;
        if summary.status == SessionStatus::Terminated {
            return Ok(summary);
        }
        let unfinished = self.inner.store.unfinished_turns(id).await?;
        let mut events: Vec<NewEvent> = unfinished
            .iter()
            .filter(|t| !t.cancel_requested)
            .map(|t| EventData::TurnCancelRequested { turn_id: t.turn_id.clone(), reason: "session terminated".into() }.into())
            .collect();
        events.push(EventData::SessionTerminated { reason: reason.to_owned() }.into());
        // First, so that `sandbox.destroyed` lands before the session closes.
        if let Some(sandboxes) = &self.inner.sandboxes {
            sandboxes.end_session(&id.to_string(), true).await?;
        }
        match self.client_append(id, None, events).await {
            Ok(_) | Err(EngineError::SessionTerminated(_)) => {}
            Err(e) => return Err(e),
        }
        for t in &unfinished {
            executor::signal_cancel(&self.inner, id, &t.turn_id);
        }
        if !unfinished.is_empty() {
            executor::ensure_running(&self.inner, id);
        }
        self.cancel_children(id).await;
        self.get_session(id).await
    }

    // ----- turns -----

    /// Accepts input for a session. Returns the turn and whether it is new
    /// (`false` when the idempotency key named an existing turn).
    pub async fn submit_turn(&self, id: &SessionId, req: SubmitTurn) -> Result<(TurnSummary, bool), EngineError> {
        if req.input.len() > self.inner.config.max_input_bytes {
            return Err(EngineError::InputTooLarge { limit: self.inner.config.max_input_bytes, got: req.input.len() });
        }
        if req.input.trim().is_empty() {
            return Err(EngineError::InvalidInput("input must not be empty".into()));
        }
        if let Some(key) = &req.idempotency_key {
            if key.is_empty() || key.len() > 255 {
                return Err(EngineError::InvalidInput("Idempotency-Key must be 1 to 255 characters".into()));
            }
            if let Some(turn) = self.inner.store.find_turn_by_key(id, key).await? {
                return Ok((turn, false));
            }
        }
        let session = self.get_session(id).await?;
        if session.status == SessionStatus::Terminated {
            return Err(EngineError::SessionTerminated(id.clone()));
        }
        if let Some(terms) = &req.borrow {
            self.check_loan(&session.tenant, terms).await?;
        }
        let turn_id = TurnId::generate();
        let submitted: NewEvent = EventData::TurnSubmitted {
            turn_id: turn_id.clone(),
            input: req.input,
            idempotency_key: req.idempotency_key.clone(),
            traceparent: Some(
                req.traceparent.filter(|tp| telemetry::parse_traceparent(tp).is_some()).unwrap_or_else(telemetry::new_traceparent),
            ),
            borrow: req.borrow,
        }
        .into();
        let (events, precondition, to_cancel) = match req.on_busy {
            OnBusy::Queue => (vec![submitted], None, vec![]),
            OnBusy::Reject => (vec![submitted], Some(Precondition::SessionIdle), vec![]),
            OnBusy::Interrupt => {
                let unfinished = self.inner.store.unfinished_turns(id).await?;
                let mut events: Vec<NewEvent> = unfinished
                    .iter()
                    .filter(|t| !t.cancel_requested)
                    .map(|t| {
                        EventData::TurnCancelRequested { turn_id: t.turn_id.clone(), reason: "interrupted by new input".into() }.into()
                    })
                    .collect();
                events.push(submitted);
                (events, None, unfinished.into_iter().map(|t| t.turn_id).collect())
            }
        };
        match self.client_append(id, precondition, events).await {
            Ok(_) => {}
            Err(EngineError::Store(StoreError::DuplicateIdempotencyKey(existing))) => {
                let turn = self.get_turn(id, &existing).await?;
                return Ok((turn, false));
            }
            Err(EngineError::Store(StoreError::PreconditionFailed(_))) => return Err(EngineError::SessionBusy(id.clone())),
            Err(e) => return Err(e),
        }
        for t in &to_cancel {
            executor::signal_cancel(&self.inner, id, t);
        }
        executor::ensure_running(&self.inner, id);
        Ok((self.get_turn(id, &turn_id).await?, true))
    }

    pub async fn get_turn(&self, id: &SessionId, turn: &TurnId) -> Result<TurnSummary, EngineError> {
        self.inner.store.get_turn(id, turn).await?.ok_or_else(|| EngineError::TurnNotFound(turn.clone()))
    }

    /// Asks a turn to stop. Cancelling a finished turn is refused.
    pub async fn cancel_turn(&self, id: &SessionId, turn: &TurnId) -> Result<TurnSummary, EngineError> {
        let summary = self.get_turn(id, turn).await?;
        if summary.status.is_final() {
            return Err(EngineError::TurnFinished(turn.clone(), summary.status.as_str()));
        }
        if !summary.cancel_requested {
            self.request_cancel(id, turn, "cancelled by client").await?;
        }
        self.cancel_children(id).await;
        self.get_turn(id, turn).await
    }

    /// Asks the turn's executor to cancel it.
    pub(crate) async fn request_cancel(&self, id: &SessionId, turn: &TurnId, reason: &str) -> Result<(), EngineError> {
        let event = EventData::TurnCancelRequested { turn_id: turn.clone(), reason: reason.into() };
        self.client_append(id, None, vec![event.into()]).await?;
        executor::signal_cancel(&self.inner, id, turn);
        executor::ensure_running(&self.inner, id);
        Ok(())
    }

    /// Waits up to `timeout` for the turn to end; returns its latest state.
    pub async fn wait_turn(&self, id: &SessionId, turn: &TurnId, timeout: Duration) -> Result<TurnSummary, EngineError> {
        let mut rx = self.inner.hub.subscribe(id);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let summary = self.get_turn(id, turn).await?;
            if summary.status.is_final() {
                return Ok(summary);
            }
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Err(_) => return self.get_turn(id, turn).await,
                    Ok(Ok(e)) if e.body.data.ends_turn() && e.body.data.turn_id() == Some(turn) => break,
                    Ok(Ok(_)) => continue,
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                    Ok(Err(broadcast::error::RecvError::Closed)) => return self.get_turn(id, turn).await,
                }
            }
        }
    }

    // ----- events -----

    /// Events after `after`, at most `limit`.
    pub async fn read_events(&self, id: &SessionId, after: u64, limit: usize) -> Result<Vec<Event>, EngineError> {
        let events = self.inner.store.read_events(id, after, limit).await?;
        if events.is_empty() {
            self.get_session(id).await?;
        }
        Ok(events)
    }

    /// Live events of a session appended from now on.
    pub fn subscribe(&self, id: &SessionId) -> broadcast::Receiver<Arc<Event>> {
        self.inner.hub.subscribe(id)
    }

    /// Verifies a session's hash chain; returns the number of events.
    /// Verifies a session's hash chain; returns the number of events and
    /// the hash of the last one (the head an auditor anchors exports to).
    pub async fn verify(&self, id: &SessionId) -> Result<Result<(u64, String), ChainError>, EngineError> {
        let session = self.get_session(id).await?;
        let records = self.inner.store.read_records(id).await?;
        let head = records.last().map(|r| r.hash.clone()).unwrap_or_default();
        Ok(verify_chain_to(records, session.last_seq).map(|n| (n, head)))
    }

    async fn client_append(
        &self,
        id: &SessionId,
        precondition: Option<Precondition>,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Event>, EngineError> {
        let req = AppendRequest { session_id: id.clone(), fence: Fence::Client, precondition, events };
        let started = std::time::Instant::now();
        let events = self.inner.store.append(req).await?;
        self.inner.metrics.append(started.elapsed());
        self.inner.hub.publish(id, &events);
        Ok(events)
    }
}
