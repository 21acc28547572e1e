//! Builds a `linux` sandbox around the agent, then serves inside it.
//!
//! The runtime starts `agentrt-sandbox-agent sandbox CONFIG_JSON` (or
//! `sandbox -`, reading the config from stdin, for a supervisor started
//! ahead of need). That process (the *supervisor*, still on the host) joins
//! the sandbox's cgroups and clones the sandbox's PID 1 into new user,
//! mount, pid, network, IPC, UTS and cgroup namespaces. The supervisor
//! writes PID 1's uid/gid maps (sandbox root = an unprivileged host uid);
//! PID 1 builds the root filesystem ([`mounts`]), binds the agent's socket,
//! pivots into the new root, hardens itself ([`harden`]) and serves. The supervisor prints one JSON line on stdout — `{"ready": true,
//! "pid": N}` with PID 1's host pid, or `{"ready": false, "error": "…"}` —
//! and exits when the sandbox does, so the runtime sees a dead sandbox as its
//! child exiting.

#![allow(unsafe_code)]

mod bridge;
mod harden;
mod mounts;

pub use bridge::BridgeConfig;

pub use mounts::ETC_ENTRIES;

use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use nix::sched::CloneFlags;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::server::{serve, ServerConfig};

/// Everything the supervisor needs to build one sandbox. Paths are host paths.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxConfig {
    /// An empty directory that becomes the sandbox's `/`.
    pub root: PathBuf,
    /// Where the agent listens, outside the new root.
    pub socket: PathBuf,
    /// Mounted read-write at `/workspace`.
    pub workspace: PathBuf,
    /// Mounted read-only as `/` instead of the host's system directories.
    #[serde(default)]
    pub rootfs: Option<PathBuf>,
    /// A prepared copy of the [`ETC_ENTRIES`] of the host's `/etc`, bound
    /// as `/etc` in one mount; without it each entry is bound on its own.
    #[serde(default)]
    pub etc: Option<PathBuf>,
    /// Host uid and gid that sandbox root maps to. Ignored when the
    /// supervisor is not root: then sandbox root is the caller's own uid.
    pub uid: u32,
    pub gid: u32,
    /// Size cap of the `/tmp` tmpfs.
    pub tmp_bytes: u64,
    /// `cgroup.procs` files to join before anything else.
    #[serde(default)]
    pub cgroup_procs: Vec<PathBuf>,
    pub hostname: String,
    /// Environment of every command.
    pub env: Vec<(String, String)>,
    /// Open files per process.
    pub nofile: u64,
    /// Forward a loopback port to the runtime's model gateway.
    #[serde(default)]
    pub gateway: Option<BridgeConfig>,
}

/// What the supervisor prints when the sandbox is up (or could not be).
#[derive(Debug, Serialize, Deserialize)]
pub struct Ready {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Runs the supervisor; returns its exit code. Must be called while the
/// process is single-threaded (it clones).
pub fn supervise(config: &SandboxConfig) -> i32 {
    match harden::seccomp_filters() {
        Ok(filters) => supervise_with(|| Ok(config.clone()), &[], &filters),
        Err(error) => {
            report(Ready { ready: false, pid: None, error: Some(error) });
            1
        }
    }
}

/// Prints the ready line.
fn report(ready: Ready) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, &ready);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Clones PID 1, gets the config from `config`, then supervises. PID 1 is
/// cloned first, before the config exists: making the namespaces is the
/// costliest step of a start, and a supervisor started ahead of need does
/// it ahead of need too.
/// PID 1 joins the cgroups whose `cgroup.procs` files are in `ahead` before
/// the config comes (moving a process between cgroups can take a while).
fn supervise_with(config: impl FnOnce() -> Result<SandboxConfig, Option<String>>, ahead: &[PathBuf], filters: &harden::Filters) -> i32 {
    // Die with the runtime: a SIGKILLed runtime leaves no sandbox behind.
    let parent = nix::unistd::getppid();
    if die_with_parent().is_err() || nix::unistd::getppid() != parent {
        return 1;
    }
    let started = prestart(filters, ahead).and_then(|pending| match config() {
        Ok(config) => pending.finish(&config),
        Err(error) => {
            pending.abandon();
            Err(error.unwrap_or_default())
        }
    });
    match started {
        Ok(child) => {
            report(Ready { ready: true, pid: Some(child.as_raw()), error: None });
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => return code,
                    Ok(WaitStatus::Signaled(_, signal, _)) => return 128 + signal as i32,
                    Ok(_) => continue,
                    Err(_) => return 1,
                }
            }
        }
        // No config at all (the runtime let its spare go): nothing to report.
        Err(error) if error.is_empty() => 1,
        Err(error) => {
            report(Ready { ready: false, pid: None, error: Some(error) });
            1
        }
    }
}

/// Reads a config as one JSON line on stdin, then supervises. A runtime
/// keeps one such process started ahead, so that a cold start does not
/// wait for a program to load nor for namespaces to be made.
pub fn supervise_from_stdin(ahead: &[PathBuf]) -> i32 {
    let filters = match harden::seccomp_filters() {
        Ok(filters) => filters,
        Err(error) => {
            report(Ready { ready: false, pid: None, error: Some(error) });
            return 1;
        }
    };
    let read_config = || {
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line).is_err() || line.trim().is_empty() {
            return Err(None);
        }
        serde_json::from_str::<SandboxConfig>(&line).map_err(|e| Some(format!("bad sandbox config: {e}")))
    };
    supervise_with(read_config, ahead, &filters)
}

/// PID 1 cloned into its namespaces, waiting for its config.
struct Pending {
    child: Pid,
    up: File,
    down: File,
    /// The `cgroup.procs` files it has joined already.
    joined: Vec<PathBuf>,
}

/// Clones PID 1 into new user, pid, network, IPC and UTS namespaces and
/// puts it in the cgroups of `ahead`; it waits for its
/// config (see [`Pending::finish`]).
fn prestart(filters: &harden::Filters, ahead: &[PathBuf]) -> Result<Pending, String> {
    let (up_read, up_write) = pipe()?;
    let (down_read, down_write) = pipe()?;
    // The mount and cgroup namespaces are made by PID 1 once its config
    // comes: a copy of the host's mounts as they are then (the session's
    // workspace may be mounted in between), and the cgroup it is in then
    // as the namespace's root.
    let flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    let mut stack = vec![0u8; 512 * 1024];
    let (up_fd, down_fd) = (up_write.as_raw_fd(), down_read.as_raw_fd());
    let (theirs_up, theirs_down) = (up_read.as_raw_fd(), down_write.as_raw_fd());
    let pid1 = Box::new(|| {
        // Its copies of the supervisor's ends go at once: PID 1 must see
        // the end of its pipe when the supervisor dies before it sends the
        // config; and it dies with the supervisor from now on.
        let _ = nix::unistd::close(theirs_up);
        let _ = nix::unistd::close(theirs_down);
        if die_with_parent().is_err() {
            return 1;
        }
        // SAFETY: in the child these descriptors are owned only by the
        // copies of `up_write`/`down_read`, which are never dropped there
        // (the child exits from `init`); so taking them over is sound, and
        // the supervisor sees the end of the pipe when PID 1 closes it.
        let (up, down) = unsafe { (File::from_raw_fd(up_fd), File::from_raw_fd(down_fd)) };
        init(filters, up, down)
    });
    // SAFETY: the supervisor is single-threaded; the child runs on its own
    // stack in a copy of the address space and never returns into ours.
    let child = unsafe { nix::sched::clone(pid1, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(|e| format!("clone into new namespaces: {e}"))?;
    drop(up_write);
    drop(down_read);
    let pending = Pending { child, up: File::from(up_read), down: File::from(down_write), joined: Vec::new() };
    let mut joined = Vec::new();
    for procs in ahead {
        if let Err(e) = std::fs::write(procs, child.to_string()) {
            pending.abandon();
            return Err(format!("join cgroup {}: {e}", procs.display()));
        }
        joined.push(procs.clone());
    }
    Ok(Pending { joined, ..pending })
}

impl Pending {
    /// Puts PID 1 in its cgroups, maps its ids, hands it the config and
    /// waits until it serves; returns its (host) pid.
    fn finish(mut self, config: &SandboxConfig) -> Result<Pid, String> {
        let child = self.child;
        let fail = |e: String| {
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(child, None);
            e
        };
        for procs in config.cgroup_procs.iter().filter(|p| !self.joined.contains(p)) {
            std::fs::write(procs, child.to_string()).map_err(|e| fail(format!("join cgroup {}: {e}", procs.display())))?;
        }
        write_id_maps(child, config).map_err(fail)?;
        let mut json = serde_json::to_vec(config).map_err(|e| fail(e.to_string()))?;
        json.push(b'\n');
        self.down.write_all(&json).map_err(|e| fail(format!("signal PID 1: {e}")))?;
        drop(self.down);
        let mut message = String::new();
        let _ = self.up.read_to_string(&mut message);
        match message.lines().next() {
            Some("r") => Ok(child),
            Some(line) if line.starts_with('e') => Err(fail(line[1..].to_owned())),
            _ => Err(fail("the sandbox exited during setup".into())),
        }
    }

    /// Ends PID 1 unused.
    fn abandon(self) {
        let _ = nix::sys::signal::kill(self.child, nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(self.child, None);
    }
}

/// Maps sandbox root to the configured host ids (as root) or to our own.
fn write_id_maps(child: Pid, config: &SandboxConfig) -> Result<(), String> {
    let proc = format!("/proc/{child}");
    let (uid, gid) = if nix::unistd::geteuid().is_root() {
        (config.uid, config.gid)
    } else {
        std::fs::write(format!("{proc}/setgroups"), "deny").map_err(|e| format!("setgroups: {e}"))?;
        (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw())
    };
    std::fs::write(format!("{proc}/uid_map"), format!("0 {uid} 1\n")).map_err(|e| format!("uid_map: {e}"))?;
    std::fs::write(format!("{proc}/gid_map"), format!("0 {gid} 1\n")).map_err(|e| format!("gid_map: {e}"))
}

/// PID 1, in the new namespaces: waits for its config (sent once it is in
/// its cgroups and its id maps are written), makes its mount and cgroup
/// namespaces,
/// becomes root there, builds the filesystem, binds the socket, hardens,
/// reports ready (closing the pipe, so the supervisor stops reading) and
/// serves.
fn init(filters: &harden::Filters, mut up: File, down: File) -> isize {
    let mut line = String::new();
    if std::io::BufReader::new(down).read_line(&mut line).is_err() {
        return 1;
    }
    let Ok(config) = serde_json::from_str::<SandboxConfig>(&line) else { return 1 };
    let set_up = nix::sched::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| format!("unshare the mount and cgroup namespaces: {e}"))
        .and_then(|()| become_root())
        .and_then(|()| prepare(&config, filters));
    let listener = match set_up {
        Ok(listener) => listener,
        Err(msg) => {
            let _ = up.write_all(format!("e{}\n", msg.replace('\n', " ")).as_bytes());
            return 1;
        }
    };
    // Set last: changing credentials (capabilities, landlock) clears it.
    if die_with_parent().is_err() || up.write_all(b"r\n").is_err() {
        return 1;
    }
    drop(up);
    let config = ServerConfig { workspace: "/workspace".into(), env: config.env.clone(), init: true };
    let _ = serve(listener, config);
    std::process::exit(0)
}

fn prepare(config: &SandboxConfig, filters: &harden::Filters) -> Result<UnixListener, String> {
    mounts::build_root(config)?;
    let listener = UnixListener::bind(&config.socket).map_err(|e| format!("bind {}: {e}", config.socket.display()))?;
    let bridge = config.gateway.as_ref().map(bridge::Bridge::open).transpose()?;
    mounts::enter_root(config)?;
    harden::apply(config, filters)?;
    if let Some(bridge) = bridge {
        bridge.start()?;
    }
    Ok(listener)
}

/// Takes the mapped ids: root inside the new user namespace (until now the
/// process still had its host ids, which mean nothing there).
fn become_root() -> Result<(), String> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    // Denied (and not needed) when an unprivileged runtime wrote the maps.
    let _ = setgroups(&[]);
    setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).map_err(|e| format!("setresgid: {e}"))?;
    setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).map_err(|e| format!("setresuid: {e}"))
}

/// SIGKILL this process when its parent dies.
fn die_with_parent() -> nix::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}
