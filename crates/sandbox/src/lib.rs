//! Sandboxes: where an agent's model-written code runs. One [`SandboxDriver`]
//! trait (create; then per sandbox: requests to the in-sandbox agent, pause,
//! resume, snapshot, destroy) so that later drivers (gVisor, microVMs) fit
//! without changing callers; the `linux` driver ([`linux`]); persistent
//! workspaces ([`workspace`]); cgroup limits ([`cgroup`]); and the
//! per-session lifecycle — lazy creation, standby, hibernation, replacement
//! of a dead sandbox — in [`manager`].

pub mod bridge;
pub mod cgroup;
pub mod client;
pub mod linux;
pub mod manager;
mod spare;
pub mod workspace;
pub mod workspace_store;

use std::path::Path;

use agentrt_sandbox_agent::protocol::{Request, Response};
use agentrt_types::sandbox::SandboxSpec;
use async_trait::async_trait;
use tokio::sync::mpsc;

pub use agentrt_sandbox_agent::protocol;
pub use cgroup::Usage;
pub use manager::{SandboxManager, SessionLog, SessionSandbox};

/// Why a sandbox operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SandboxError {
    /// The sandbox could not be built.
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    /// The sandbox (or its agent) is gone; the next call replaces it.
    #[error("{0}")]
    Gone(String),
    /// This driver or host cannot do that.
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Internal(String),
}

/// Makes sandboxes.
#[async_trait]
pub trait SandboxDriver: Send + Sync {
    /// `linux`, `gvisor`, `microvm`.
    fn name(&self) -> &'static str;
    /// Starts a sandbox for `session` on its workspace (made on first use).
    async fn create(&self, session: &str, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>, SandboxError>;
    /// Deletes a session's workspace for good (its sandbox already destroyed).
    async fn delete_workspace(&self, session: &str) -> Result<(), SandboxError>;
    /// Copies the session's workspace, consistent, to the file `dest`, to
    /// be stored for another node; the caller freezes or stops its sandbox.
    async fn export_workspace(&self, session: &str, dest: &Path) -> Result<(), SandboxError>;
    /// Makes the file `image` (an export, from any node) the session's
    /// workspace; its sandbox must be destroyed first.
    async fn import_workspace(&self, session: &str, image: &Path) -> Result<(), SandboxError>;
    /// Releases what the driver holds on the host at shutdown (workspace
    /// mounts, a cgroup made ahead); workspaces are attached again on next use.
    async fn release_workspaces(&self);
}

/// One running sandbox.
#[async_trait]
pub trait Sandbox: Send + Sync {
    /// This instance's id.
    fn id(&self) -> &str;
    /// One request, its final answer.
    async fn call(&self, request: &Request) -> Result<Response, SandboxError>;
    /// One request, every answer as it comes (for streamed exec).
    async fn stream(&self, request: &Request) -> Result<mpsc::Receiver<Result<Response, SandboxError>>, SandboxError>;
    /// A process whose stdin and stdout are the returned stream (a stdio
    /// server); dropping the stream kills it.
    async fn pipe(&self, spec: &agentrt_sandbox_agent::protocol::ProcessSpec) -> Result<tokio::net::UnixStream, SandboxError>;
    /// Freezes every process (standby).
    async fn pause(&self) -> Result<(), SandboxError>;
    /// Thaws them.
    async fn resume(&self) -> Result<(), SandboxError>;
    /// Copies the workspace, consistent, to `dest` (an image file or a directory).
    async fn snapshot(&self, dest: &Path) -> Result<(), SandboxError>;
    /// Stops every process and frees the sandbox; the workspace stays.
    async fn destroy(&self);
    /// Whether its processes still run.
    fn alive(&self) -> bool;
    /// Resources in use.
    fn usage(&self) -> Usage;
    /// A failed call's cause in words, if the sandbox knows it (e.g. an OOM kill).
    fn explain_kill(&self, before: &Usage) -> Option<String>;
}
