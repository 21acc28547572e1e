//! Builds a `linux` sandbox around the agent, then serves inside it.
//!
//! The runtime starts `agentrt-sandbox-agent sandbox CONFIG_JSON`. That
//! process (the *supervisor*, still on the host) joins the sandbox's
//! cgroups and forks a child that unshares user, mount, pid, network, IPC,
//! UTS and cgroup namespaces. The supervisor writes the child's uid/gid maps
//! (sandbox root = an unprivileged host uid), and the child forks the
//! sandbox's PID 1, which builds the root filesystem ([`mounts`]), binds the
//! agent's socket, pivots into the new root, hardens itself ([`harden`]) and
//! serves. The supervisor prints one JSON line on stdout — `{"ready": true,
//! "pid": N}` with PID 1's host pid, or `{"ready": false, "error": "…"}` —
//! and exits when the sandbox does, so the runtime sees a dead sandbox as its
//! child exiting.

#![allow(unsafe_code)]

mod harden;
mod mounts;

pub use mounts::ETC_ENTRIES;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
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
/// process is single-threaded (it forks).
pub fn supervise(config: &SandboxConfig) -> i32 {
    // Die with the runtime: a SIGKILLed runtime leaves no sandbox behind.
    let parent = nix::unistd::getppid();
    if die_with_parent().is_err() || nix::unistd::getppid() != parent {
        return 1;
    }
    let report = |ready: Ready| {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, &ready);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    };
    match start(config) {
        Ok((child, pid)) => {
            report(Ready { ready: true, pid: Some(pid), error: None });
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => code,
                _ => 1,
            }
        }
        Err(error) => {
            report(Ready { ready: false, pid: None, error: Some(error) });
            1
        }
    }
}

/// Forks the namespaced child and waits until PID 1 serves; returns the
/// child and PID 1's host pid.
fn start(config: &SandboxConfig) -> Result<(Pid, i32), String> {
    for procs in &config.cgroup_procs {
        std::fs::write(procs, std::process::id().to_string()).map_err(|e| format!("join cgroup {}: {e}", procs.display()))?;
    }
    let (up_read, up_write) = pipe()?;
    let (down_read, down_write) = pipe()?;
    // SAFETY: the supervisor is single-threaded here; the child only makes
    // syscalls and exits.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(up_read);
            drop(down_write);
            std::process::exit(namespaced_child(config, up_write, down_read).unwrap_or(1))
        }
        ForkResult::Parent { child } => {
            drop(up_write);
            drop(down_read);
            let mut up = File::from(up_read);
            let mut down = File::from(down_write);
            expect(&mut up, b'u', child)?;
            write_id_maps(child, config)?;
            down.write_all(b"g").map_err(|e| format!("signal child: {e}"))?;
            let mut message = String::new();
            let _ = up.read_to_string(&mut message);
            let mut pid = None;
            let mut ready = false;
            for line in message.lines() {
                if let Some(p) = line.strip_prefix('p') {
                    pid = p.parse().ok();
                } else if line == "r" {
                    ready = true;
                } else if let Some(error) = line.strip_prefix('e') {
                    let _ = waitpid(child, None);
                    return Err(error.to_owned());
                }
            }
            match (ready, pid) {
                (true, Some(pid)) => Ok((child, pid)),
                _ => {
                    let _ = waitpid(child, None);
                    Err("the sandbox exited during setup".into())
                }
            }
        }
    }
}

/// Reads one byte and checks it, or reports the child's error.
fn expect(up: &mut File, byte: u8, child: Pid) -> Result<(), String> {
    let mut got = [0u8; 1];
    if up.read_exact(&mut got).is_ok() && got[0] == byte {
        return Ok(());
    }
    let mut rest = String::new();
    let _ = up.read_to_string(&mut rest);
    let _ = waitpid(child, None);
    Err(rest.strip_prefix('e').map(str::to_owned).unwrap_or_else(|| "the sandbox exited during setup".into()))
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

/// In new namespaces: waits for the id maps, then forks PID 1 and waits for it.
fn namespaced_child(config: &SandboxConfig, up: OwnedFd, down: OwnedFd) -> Result<i32, ()> {
    let mut up = File::from(up);
    let fail = |up: &mut File, msg: String| {
        let _ = up.write_all(format!("e{}\n", msg.replace('\n', " ")).as_bytes());
    };
    let flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP;
    if let Err(e) = unshare(flags) {
        fail(&mut up, format!("unshare namespaces: {e}"));
        return Err(());
    }
    die_with_parent().map_err(|_| ())?;
    up.write_all(b"u").map_err(|_| ())?;
    let mut go = [0u8; 1];
    File::from(down).read_exact(&mut go).map_err(|_| ())?;
    if let Err(e) = become_root() {
        fail(&mut up, e);
        return Err(());
    }
    // SAFETY: single-threaded; the child goes on to build the sandbox.
    match unsafe { fork() } {
        Err(e) => {
            fail(&mut up, format!("fork PID 1: {e}"));
            Err(())
        }
        Ok(ForkResult::Child) => init(config, up),
        Ok(ForkResult::Parent { child }) => {
            let _ = up.write_all(format!("p{child}\n").as_bytes());
            drop(up);
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                    Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
                    Ok(_) => continue,
                    Err(_) => return Err(()),
                }
            }
        }
    }
}

/// PID 1: builds the filesystem, binds the socket, hardens, reports ready
/// (closing the pipe, so the supervisor stops reading) and serves.
fn init(config: &SandboxConfig, mut up: File) -> ! {
    let listener = match prepare(config) {
        Ok(listener) => listener,
        Err(msg) => {
            let _ = up.write_all(format!("e{}\n", msg.replace('\n', " ")).as_bytes());
            std::process::exit(1)
        }
    };
    // Set last: changing credentials (capabilities, landlock) clears it.
    if die_with_parent().is_err() || up.write_all(b"r\n").is_err() {
        std::process::exit(1)
    }
    drop(up);
    let config = ServerConfig { workspace: "/workspace".into(), env: config.env.clone(), init: true };
    let _ = serve(listener, config);
    std::process::exit(0)
}

fn prepare(config: &SandboxConfig) -> Result<UnixListener, String> {
    mounts::build_root(config)?;
    let listener = UnixListener::bind(&config.socket).map_err(|e| format!("bind {}: {e}", config.socket.display()))?;
    mounts::enter_root(config)?;
    harden::apply(config)?;
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
