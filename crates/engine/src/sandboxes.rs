//! The engine's side of sandboxes: the node's [`SandboxManager`], whose
//! lifecycle events go to the session log, the checks an agent's
//! `[sandbox]` must pass on this host, and the client operations (exec,
//! files, standby, resume) behind the API.

use std::sync::{Arc, Weak};

use agentrt_sandbox::manager::{SandboxStatus, WorkspaceSync};
use agentrt_sandbox::protocol::{Request, Response};
use agentrt_sandbox::{SandboxDriver, SandboxError, SandboxManager, SessionLog, SessionSandbox};
use agentrt_store::{AppendRequest, Fence, Precondition, StoreError};
use agentrt_types::event::WorkspaceSaved;
use agentrt_types::sandbox::SandboxSpec;
use agentrt_types::spec::FieldError;
use agentrt_types::state::SavedWorkspace;
use agentrt_types::{EventData, SessionId, SessionStatus};
use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::{Engine, EngineError, Inner};

/// A manager whose events are appended to each session's log.
pub(crate) fn manager(driver: Arc<dyn SandboxDriver>, inner: Weak<Inner>, sync: Option<WorkspaceSync>) -> Arc<SandboxManager> {
    SandboxManager::new(driver, Arc::new(EngineLog(inner)), sync)
}

/// The sessions' logs in the engine's store.
struct EngineLog(Weak<Inner>);

impl EngineLog {
    fn target(&self, session: &str) -> Result<(Arc<Inner>, SessionId), SandboxError> {
        let inner = self.0.upgrade().ok_or_else(|| SandboxError::Internal("the engine has stopped".into()))?;
        let id = SessionId::parse(session).ok_or_else(|| SandboxError::Internal(format!("bad session id {session:?}")))?;
        Ok((inner, id))
    }
}

/// Appends one event to a session's log and hands it to its readers.
async fn append(inner: &Inner, id: &SessionId, precondition: Option<Precondition>, data: EventData) -> Result<(), StoreError> {
    let req = AppendRequest { session_id: id.clone(), fence: Fence::Client, precondition, events: vec![data.into()] };
    let events = inner.store.append(req).await?;
    inner.hub.publish(id, &events);
    Ok(())
}

#[async_trait]
impl SessionLog for EngineLog {
    async fn record(&self, session: &str, event: EventData) {
        // An engine that has stopped records nothing more.
        let Ok((inner, id)) = self.target(session) else { return };
        if let Err(e) = append(&inner, &id, None, event).await {
            tracing::warn!(session, error = %e, "sandbox event not recorded");
        }
    }

    async fn saved_workspace(&self, session: &str) -> Result<Option<SavedWorkspace>, SandboxError> {
        let (inner, id) = self.target(session)?;
        let summary = inner.store.get_session(&id).await.map_err(|e| SandboxError::Internal(format!("read the session: {e}")))?;
        Ok(summary.and_then(|s| s.workspace))
    }

    async fn record_saved(&self, session: &str, base: u64, saved: WorkspaceSaved) -> Result<bool, SandboxError> {
        // Not recorded is not saved: the caller must not take this generation as its base.
        let (inner, id) = self.target(session)?;
        match append(&inner, &id, Some(Precondition::WorkspaceGeneration(base)), EventData::WorkspaceSaved(saved)).await {
            Ok(()) => Ok(true),
            Err(StoreError::PreconditionFailed(_)) => Ok(false),
            Err(e) => Err(SandboxError::Internal(format!("record the saved workspace: {e}"))),
        }
    }
}

/// What this host cannot give a `[sandbox]`: no driver, more memory than
/// the host has, a rootfs that is not there.
pub(crate) fn host_check(spec: &SandboxSpec, driver: Option<&Arc<dyn SandboxDriver>>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut bad = |path: &str, message: String| errors.push(FieldError { path: format!("sandbox.{path}"), message });
    match driver {
        None => bad("driver", "sandboxes are turned off on this server (sandbox-driver = \"none\")".into()),
        Some(d) if d.name() != spec.driver => bad("driver", format!("this server runs the {:?} driver, not {:?}", d.name(), spec.driver)),
        Some(_) => {}
    }
    if let Some(total) = host_memory_mb() {
        if spec.memory_mb > total {
            bad("memory_mb", format!("{} MiB is more than this host has ({total} MiB)", spec.memory_mb));
        }
    }
    if let Some(rootfs) = &spec.rootfs {
        if !std::path::Path::new(rootfs).join("usr").is_dir() {
            bad("rootfs", format!("{rootfs:?} is not a root filesystem directory on this host (no usr/ in it)"));
        }
    }
    errors
}

fn host_memory_mb() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024)
}

impl From<SandboxError> for EngineError {
    fn from(e: SandboxError) -> Self {
        match e {
            SandboxError::Unsupported(m) => EngineError::InvalidInput(m),
            other => EngineError::Internal(other.to_string()),
        }
    }
}

impl Inner {
    /// Saves the session's workspace, if it changed here, before the
    /// session may move to another node (its lease let go).
    pub(crate) async fn save_workspace(&self, session: &SessionId) {
        let sandbox = self.sandboxes.as_ref().and_then(|s| s.get(session.as_str()));
        if let Some(sandbox) = sandbox {
            sandbox.save_or_warn().await;
        }
    }

    /// The session's sandbox handle, if its agent has a `[sandbox]` and the
    /// node has a driver.
    pub(crate) fn sandbox_for(&self, session: &SessionId, spec: Option<&SandboxSpec>) -> Option<Arc<SessionSandbox>> {
        Some(self.sandboxes.as_ref()?.session(&session.to_string(), spec?))
    }
}

impl Engine {
    /// The session's sandbox handle, for client operations.
    async fn client_sandbox(&self, id: &SessionId) -> Result<Arc<SessionSandbox>, EngineError> {
        let session = self.get_session(id).await?;
        if session.status == SessionStatus::Terminated {
            return Err(EngineError::SessionTerminated(id.clone()));
        }
        let agent = self.get_agent(&session.tenant, &session.agent, Some(session.agent_version)).await?;
        let Some(spec) = agent.spec.sandbox.as_ref() else {
            return Err(EngineError::InvalidInput(format!(
                "agent {:?} version {} has no [sandbox]; add one to the agent spec",
                session.agent, session.agent_version
            )));
        };
        self.inner.sandbox_for(id, Some(spec)).ok_or_else(|| EngineError::InvalidInput("sandboxes are turned off on this server".into()))
    }

    /// One request to the session's sandbox (started or thawed as needed).
    pub async fn sandbox_call(&self, id: &SessionId, request: &Request) -> Result<Response, EngineError> {
        Ok(self.client_sandbox(id).await?.call(request).await?.0)
    }

    /// One request with its answers streamed.
    pub async fn sandbox_stream(
        &self,
        id: &SessionId,
        request: &Request,
    ) -> Result<mpsc::Receiver<Result<Response, SandboxError>>, EngineError> {
        Ok(self.client_sandbox(id).await?.stream(request).await?)
    }

    /// State and resource use of the session's sandbox.
    pub async fn sandbox_status(&self, id: &SessionId) -> Result<SandboxStatus, EngineError> {
        Ok(self.client_sandbox(id).await?.status().await)
    }

    /// Freezes the session's sandbox now.
    pub async fn sandbox_standby(&self, id: &SessionId) -> Result<SandboxStatus, EngineError> {
        let sandbox = self.client_sandbox(id).await?;
        sandbox.standby().await?;
        Ok(sandbox.status().await)
    }

    /// Thaws (or starts) the session's sandbox now.
    pub async fn sandbox_resume(&self, id: &SessionId) -> Result<SandboxStatus, EngineError> {
        let sandbox = self.client_sandbox(id).await?;
        sandbox.ready().await?;
        Ok(sandbox.status().await)
    }
}
