//! The `linux` driver: the in-sandbox agent builds the sandbox itself
//! (namespaces, pivot_root, seccomp, landlock, capabilities; see
//! `agentrt_sandbox_agent::setup`); this side prepares the workspace, the
//! cgroup and the directories, starts the agent's supervisor and keeps it
//! as a child whose exit means the sandbox died.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use agentrt_sandbox_agent::protocol::{Request, Response};
use agentrt_sandbox_agent::setup::{BridgeConfig, Ready, SandboxConfig};
use agentrt_types::sandbox::SandboxSpec;
use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;

use crate::bridge::{GatewayBridge, Serving};
use crate::cgroup::{Cgroup, CgroupVersion, Limits, Usage};
use crate::client::AgentClient;
use crate::spare::{new_id, Spare, Spares};
use crate::workspace::Workspace;
use crate::{Sandbox, SandboxDriver, SandboxError};

/// Where the driver keeps things and how it starts the agent.
#[derive(Clone, Debug)]
pub struct LinuxConfig {
    /// Holds `workspaces/` and `run/`.
    pub dir: PathBuf,
    /// The agent program and arguments before `sandbox CONFIG`.
    pub agent: Vec<String>,
    /// Sandbox root of session N maps to host uid `uid_base + hash(session) % 65536`.
    pub uid_base: u32,
    /// Forward a loopback port in every sandbox to the model gateway.
    pub gateway: Option<GatewayBridge>,
}

/// The `linux` driver.
pub struct LinuxDriver {
    config: LinuxConfig,
    cgroups: Option<CgroupVersion>,
    /// The sandboxes' `/etc`, copied from the host's at start.
    etc: Option<PathBuf>,
    /// A sandbox made ahead of need (supervisor, PID 1 and cgroup), so that
    /// a cold start does not wait for them.
    spares: Spares,
    /// Workspaces this process attached, by session.
    attached: Mutex<HashMap<String, Workspace>>,
}

impl LinuxDriver {
    pub fn new(config: LinuxConfig) -> Self {
        let cgroups = CgroupVersion::detect();
        if cgroups.is_none() {
            tracing::warn!("sandboxes run without cgroup limits (needs root and cgroup v1 or v2)");
        }
        let etc = match prepare_etc(&config.dir.join("etc")) {
            Ok(dir) => Some(dir),
            Err(e) => {
                tracing::warn!(error = %e, "sandboxes bind /etc entries one by one");
                None
            }
        };
        let run = config.dir.join("run");
        clean_up_previous_run(&run, cgroups);
        let spares = Spares::new(config.agent.clone(), cgroups, run);
        LinuxDriver { config, cgroups, etc, spares, attached: Mutex::default() }
    }

    /// The cgroup version in use, if any.
    pub fn cgroups(&self) -> Option<CgroupVersion> {
        self.cgroups
    }

    fn workspaces(&self) -> PathBuf {
        self.config.dir.join("workspaces")
    }

    /// A stable unprivileged host uid per session, so a workspace's files
    /// keep their owner across sandboxes.
    fn uid_for(&self, session: &str) -> u32 {
        let hash = session.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        self.config.uid_base + (hash % 65_536) as u32
    }
}

#[async_trait]
impl SandboxDriver for LinuxDriver {
    fn name(&self) -> &'static str {
        "linux"
    }

    async fn create(&self, session: &str, spec: &SandboxSpec) -> Result<Box<dyn Sandbox>, SandboxError> {
        let setup = |what: &str, e: &dyn std::fmt::Display| SandboxError::Setup(format!("{what}: {e}"));
        let uid = self.uid_for(session);
        let known = self.attached.lock().expect("attached workspaces lock").get(session).cloned();
        let workspace = match known {
            Some(workspace) => workspace,
            None => {
                let (root, name, disk) = (self.workspaces(), session.to_owned(), spec.disk_mb);
                let workspace =
                    blocking("workspace", move || Workspace::open(&root, &name, disk, uid, uid)).await.map_err(SandboxError::Setup)?;
                self.attached.lock().expect("attached workspaces lock").insert(session.to_owned(), workspace.clone());
                workspace
            }
        };
        // Made ahead of need, if there is one: a supervisor whose PID 1 waits
        // in its namespaces, in a cgroup without limits yet.
        let Spare { child: supervisor, cgroup: made } = self.spares.take_or_make()?;
        let id = made.as_ref().map(|c| c.name().to_owned()).unwrap_or_else(new_id);
        let run = self.config.dir.join("run").join(&id);
        let new_root = run.join("r");
        std::fs::create_dir_all(&new_root).map_err(|e| setup("run directory", &e))?;
        if nix::unistd::geteuid().is_root() {
            let owner = Some(nix::unistd::Uid::from_raw(uid));
            nix::unistd::chown(&run, owner, Some(nix::unistd::Gid::from_raw(uid))).map_err(|e| setup("chown run directory", &e))?;
        }
        let socket = run.join("s");
        let cgroup = match self.cgroups {
            Some(version) => {
                let limits = Limits { memory_bytes: spec.memory_mb << 20, cpu_cores: spec.cpu, pids: spec.pids };
                let cg = match made {
                    Some(cg) => cg,
                    None => Cgroup::make(version, &id).map_err(|e| setup("cgroup", &e))?,
                };
                cg.limit(limits).map_err(|e| setup("cgroup limits", &e))?;
                Some(cg)
            }
            None => None,
        };
        let mut env = vec![
            ("PATH".to_owned(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned()),
            ("HOME".to_owned(), "/workspace".to_owned()),
            ("LANG".to_owned(), "C.UTF-8".to_owned()),
            ("TMPDIR".to_owned(), "/tmp".to_owned()),
        ];
        let (gateway, serving) = match &self.config.gateway {
            Some(bridge) => {
                let path = run.join("g");
                let listener = std::os::unix::net::UnixListener::bind(&path).map_err(|e| setup("gateway socket", &e))?;
                if nix::unistd::geteuid().is_root() {
                    let (owner, group) = (nix::unistd::Uid::from_raw(uid), nix::unistd::Gid::from_raw(uid));
                    nix::unistd::chown(&path, Some(owner), Some(group)).map_err(|e| setup("chown gateway socket", &e))?;
                }
                env.extend(bridge.env());
                let serving = Serving((bridge.serve)(session.to_owned(), listener));
                (Some(BridgeConfig { socket: path, port: bridge.port }), Some(serving))
            }
            None => (None, None),
        };
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let config = SandboxConfig {
            root: new_root,
            socket: socket.clone(),
            workspace: workspace.dir.clone(),
            rootfs: spec.rootfs.as_ref().map(PathBuf::from),
            etc: self.etc.clone(),
            uid,
            gid: uid,
            tmp_bytes: spec.tmp_mb << 20,
            cgroup_procs: cgroup.as_ref().map(Cgroup::procs_files).unwrap_or_default(),
            hostname: "sandbox".into(),
            env,
            nofile: 4096,
            gateway,
        };
        let sandbox = LinuxSandbox {
            id: id.clone(),
            run,
            cgroup,
            client: AgentClient::new(&socket),
            child: Mutex::new(None),
            pid: 0,
            memory_mb: spec.memory_mb,
            workspace: workspace.clone(),
            _gateway: serving,
        };
        let started = match send_config(supervisor, &config).await {
            Ok(child) => await_ready(child).await,
            Err(e) => Err(e),
        };
        // After, not during: on a small machine the next spare's making
        // would take CPU from this one's setup.
        self.spares.refill();
        let (child, pid) = match started {
            Ok(started) => started,
            Err(e) => {
                sandbox.destroy().await;
                return Err(e);
            }
        };
        *sandbox.child.lock().expect("sandbox child lock") = Some(child);
        let _ = std::fs::write(sandbox.run.join("pid"), pid.to_string());
        Ok(Box::new(LinuxSandbox { pid, ..sandbox }))
    }

    async fn release_workspaces(&self) {
        self.spares.release();
        self.attached.lock().expect("attached workspaces lock").clear();
        let root = self.workspaces();
        let _ = tokio::task::spawn_blocking(move || Workspace::release_all(&root)).await;
    }

    async fn export_workspace(&self, session: &str, dest: &Path) -> Result<(), SandboxError> {
        let (root, name, dest) = (self.workspaces(), session.to_owned(), dest.to_owned());
        blocking("export workspace", move || Workspace::export(&root, &name, &dest)).await.map_err(SandboxError::Internal)
    }

    async fn import_workspace(&self, session: &str, image: &Path) -> Result<(), SandboxError> {
        self.attached.lock().expect("attached workspaces lock").remove(session);
        let (root, name, image) = (self.workspaces(), session.to_owned(), image.to_owned());
        blocking("import workspace", move || Workspace::replace(&root, &name, &image)).await.map_err(SandboxError::Setup)
    }

    async fn delete_workspace(&self, session: &str) -> Result<(), SandboxError> {
        self.attached.lock().expect("attached workspaces lock").remove(session);
        let (root, name) = (self.workspaces(), session.to_owned());
        blocking("delete workspace", move || Workspace::delete(&root, &name)).await.map_err(SandboxError::Internal)
    }
}

/// Runs a blocking workspace operation off the async threads; its error
/// reads "`what`: …".
async fn blocking<T: Send + 'static>(what: &str, op: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> Result<T, String> {
    match tokio::task::spawn_blocking(op).await {
        Ok(result) => result.map_err(|e| format!("{what}: {e}")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// Removes what sandboxes of a previous run of this node left under `run`:
/// their processes died with it, but cgroups and run directories stay.
fn clean_up_previous_run(run: &Path, cgroups: Option<CgroupVersion>) {
    let Ok(entries) = std::fs::read_dir(run) else { return };
    for entry in entries.flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        if let Some(version) = cgroups {
            Cgroup::existing(version, &id).destroy();
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

/// Copies the host's `/etc` entries sandboxes see into `dir` (fresh at
/// every start, so it follows the host's updates).
fn prepare_etc(dir: &Path) -> std::io::Result<PathBuf> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let entries: Vec<&str> = agentrt_sandbox_agent::setup::ETC_ENTRIES
        .iter()
        .copied()
        .filter(|e| Path::new("/etc").join(e).symlink_metadata().is_ok())
        .collect();
    let out = std::process::Command::new("cp").current_dir("/etc").args(["-a", "--parents"]).args(&entries).arg(dir).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!("cp: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(dir.to_owned())
}

/// Hands `config` to a supervisor.
async fn send_config(mut child: Child, config: &SandboxConfig) -> Result<Child, SandboxError> {
    let mut json = serde_json::to_vec(config).map_err(|e| SandboxError::Internal(e.to_string()))?;
    json.push(b'\n');
    let mut stdin = child.stdin.take().ok_or_else(|| SandboxError::Internal("no agent stdin".into()))?;
    stdin.write_all(&json).await.map_err(|e| SandboxError::Setup(format!("send the sandbox config: {e}")))?;
    Ok(child)
}

/// Waits for a supervisor's ready line; returns it and PID 1's host pid.
async fn await_ready(mut child: Child) -> Result<(Child, i32), SandboxError> {
    let stdout = child.stdout.take().ok_or_else(|| SandboxError::Internal("no agent stdout".into()))?;
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(10), BufReader::new(stdout).read_line(&mut line)).await;
    let ready: Ready = match read {
        Ok(Ok(n)) if n > 0 => serde_json::from_str(&line).map_err(|e| SandboxError::Setup(format!("bad ready line {line:?}: {e}")))?,
        Ok(_) => return Err(SandboxError::Setup("the sandbox agent exited before it was ready".into())),
        Err(_) => return Err(SandboxError::Setup("the sandbox agent was not ready within 10 s".into())),
    };
    match (ready.ready, ready.pid) {
        (true, Some(pid)) => Ok((child, pid)),
        _ => Err(SandboxError::Setup(ready.error.unwrap_or_else(|| "unknown error".into()))),
    }
}

/// A running `linux` sandbox.
pub struct LinuxSandbox {
    id: String,
    run: PathBuf,
    cgroup: Option<Cgroup>,
    client: AgentClient,
    child: Mutex<Option<Child>>,
    /// PID 1's host pid: killing it ends every process of the sandbox.
    pid: i32,
    memory_mb: u64,
    workspace: Workspace,
    /// Serves the model gateway to this sandbox until it is dropped.
    _gateway: Option<Serving>,
}

#[async_trait]
impl Sandbox for LinuxSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    async fn call(&self, request: &Request) -> Result<Response, SandboxError> {
        self.client.call(request).await
    }

    async fn stream(&self, request: &Request) -> Result<mpsc::Receiver<Result<Response, SandboxError>>, SandboxError> {
        self.client.stream(request).await
    }

    async fn pipe(&self, spec: &agentrt_sandbox_agent::protocol::ProcessSpec) -> Result<tokio::net::UnixStream, SandboxError> {
        self.client.pipe(spec).await
    }

    async fn pause(&self) -> Result<(), SandboxError> {
        self.freeze(true).await
    }

    async fn resume(&self) -> Result<(), SandboxError> {
        self.freeze(false).await
    }

    async fn snapshot(&self, dest: &Path) -> Result<(), SandboxError> {
        // Frozen processes write nothing; what they wrote is flushed first,
        // so the copy is a consistent image of the file system.
        self.freeze(true).await?;
        let (workspace, dest) = (self.workspace.clone(), dest.to_owned());
        let copied = blocking("snapshot", move || workspace.snapshot(&dest)).await;
        self.freeze(false).await?;
        copied.map_err(SandboxError::Internal)
    }

    async fn destroy(&self) {
        if self.pid > 0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), nix::sys::signal::Signal::SIGKILL);
        }
        if let Some(cg) = &self.cgroup {
            cg.destroy();
        }
        let child = self.child.lock().expect("sandbox child lock").take();
        if let Some(mut child) = child {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
        let _ = std::fs::remove_dir_all(&self.run);
    }

    fn alive(&self) -> bool {
        let mut child = self.child.lock().expect("sandbox child lock");
        matches!(child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    fn usage(&self) -> Usage {
        self.cgroup.as_ref().map(Cgroup::usage).unwrap_or_default()
    }

    fn explain_kill(&self, before: &Usage) -> Option<String> {
        let now = self.usage();
        (now.oom_kills > before.oom_kills).then(|| format!("killed: out of memory (limit {} MiB)", self.memory_mb))
    }
}

impl LinuxSandbox {
    async fn freeze(&self, frozen: bool) -> Result<(), SandboxError> {
        let Some(cg) = &self.cgroup else {
            return Err(SandboxError::Unsupported("standby needs cgroups (run the runtime as root)".into()));
        };
        // Sub-millisecond: the freezer settles almost at once.
        cg.set_frozen(frozen).map_err(|e| SandboxError::Internal(format!("freezer: {e}")))
    }
}
