//! Sandbox benchmarks: cold start (create → first exec result), exec round
//! trip in a warm sandbox, standby → resume, the same cold start with
//! Debian's `bwrap` set up with the same namespaces and mounts, and many
//! sandboxes in standby at once. Needs root (loop devices, cgroups).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentrt_sandbox::linux::{LinuxConfig, LinuxDriver};
use agentrt_sandbox::protocol::{ExecRequest, ProcessSpec, Request, Response};
use agentrt_sandbox::{Sandbox, SandboxDriver};
use agentrt_types::sandbox::SandboxSpec;
use anyhow::{bail, Context};

use crate::stats::Stats;

/// What one run measured.
pub struct SandboxBench {
    pub cold: Stats,
    pub bwrap_cold: Option<Stats>,
    pub exec: Stats,
    pub pause: Stats,
    pub resume: Stats,
    pub standby_count: usize,
    pub standby_memory_mib: f64,
    pub standby_resume: Stats,
}

fn spec() -> SandboxSpec {
    SandboxSpec { disk_mb: 16, ..SandboxSpec::default() }
}

fn exec_true() -> Request {
    Request::Exec(ExecRequest { process: ProcessSpec { argv: vec!["/bin/true".into()], ..Default::default() }, ..Default::default() })
}

async fn run_true(sb: &dyn Sandbox) -> anyhow::Result<()> {
    match sb.call(&exec_true()).await? {
        Response::Exited { status, .. } if status.code == Some(0) => Ok(()),
        other => bail!("exec true: {other:?}"),
    }
}

pub async fn measure(agent: &Path, tmp: &Path, rounds: usize, standby: usize) -> anyhow::Result<SandboxBench> {
    if !nix_is_root() {
        bail!("the sandbox benchmark needs root");
    }
    let dir = tempfile::tempdir_in(tmp).context("temp dir")?;
    let driver = Arc::new(LinuxDriver::new(LinuxConfig {
        dir: dir.path().to_owned(),
        agent: vec![agent.display().to_string()],
        uid_base: 300_000,
        gateway: None,
    }));
    let session = "ses_bench";
    // The first create makes the workspace image; cold starts reuse it, as a
    // session's later sandboxes do.
    driver.create(session, &spec()).await?.destroy().await;

    // Cold starts alternate with bwrap's, so that both meet the same noise
    // (including the kernel tearing down the previous run's namespaces).
    let workspace = dir.path().join("workspaces").join(session).join("mnt");
    let bwrap = which("bwrap").map(|b| (b, bwrap_args(&workspace)));
    let (mut cold, mut bwrap_cold) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        if let Some((program, args)) = &bwrap {
            bwrap_cold.push(bwrap_once(program, args)?);
        }
        let started = Instant::now();
        let sb = driver.create(session, &spec()).await?;
        run_true(sb.as_ref()).await?;
        cold.push(started.elapsed());
        sb.destroy().await;
    }

    let sb = driver.create(session, &spec()).await?;
    let mut exec = Vec::new();
    for _ in 0..rounds * 10 {
        let started = Instant::now();
        run_true(sb.as_ref()).await?;
        exec.push(started.elapsed());
    }
    let (mut pause, mut resume) = (Vec::new(), Vec::new());
    for _ in 0..rounds * 5 {
        let started = Instant::now();
        sb.pause().await?;
        pause.push(started.elapsed());
        let started = Instant::now();
        sb.resume().await?;
        resume.push(started.elapsed());
    }
    sb.destroy().await;

    // Many sandboxes frozen at once: memory they hold, and thawing one.
    let mut frozen = Vec::new();
    for i in 0..standby {
        let sb = driver.create(&format!("ses_standby_{i}"), &spec()).await?;
        run_true(sb.as_ref()).await?;
        sb.pause().await?;
        frozen.push(sb);
    }
    let memory: u64 = frozen.iter().map(|s| s.usage().memory_bytes).sum();
    let mut standby_resume = Vec::new();
    for sb in frozen.iter().step_by((standby / 20).max(1)) {
        let started = Instant::now();
        sb.resume().await?;
        run_true(sb.as_ref()).await?;
        standby_resume.push(started.elapsed());
    }
    for sb in &frozen {
        sb.destroy().await;
    }
    for i in 0..standby {
        driver.delete_workspace(&format!("ses_standby_{i}")).await?;
    }
    driver.delete_workspace(session).await?;
    driver.release_workspaces().await;

    Ok(SandboxBench {
        cold: Stats::of(cold),
        bwrap_cold: bwrap.map(|_| Stats::of(bwrap_cold)),
        exec: Stats::of(exec),
        pause: Stats::of(pause),
        resume: Stats::of(resume),
        standby_count: frozen.len(),
        standby_memory_mib: memory as f64 / (1 << 20) as f64,
        standby_resume: Stats::of(standby_resume),
    })
}

/// `bwrap` arguments for the same namespaces and mounts as the `linux`
/// driver: read-only system directories and /etc, the workspace, a tmpfs
/// /tmp, a minimal /dev, a fresh /proc; it runs `/bin/true`.
fn bwrap_args(workspace: &Path) -> Vec<String> {
    let mut args: Vec<String> =
        ["--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup", "--die-with-parent"]
            .map(String::from)
            .to_vec();
    for dir in ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc"] {
        match std::fs::symlink_metadata(dir) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(dir) {
                    args.extend(["--symlink".into(), target.display().to_string(), dir.into()]);
                }
            }
            Ok(_) => args.extend(["--ro-bind".into(), dir.into(), dir.into()]),
            Err(_) => {}
        }
    }
    args.extend(["--bind".into(), workspace.display().to_string(), "/workspace".into()]);
    args.extend(
        ["--tmpfs", "/tmp", "--dev", "/dev", "--proc", "/proc", "--hostname", "sandbox", "--chdir", "/workspace", "/bin/true"]
            .map(String::from),
    );
    args
}

/// One bwrap run, from spawn to `/bin/true`'s exit.
fn bwrap_once(bwrap: &Path, args: &[String]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = Command::new(bwrap).args(args).status().context("run bwrap")?;
    let took = started.elapsed();
    if !status.success() {
        bail!("bwrap failed: {status}");
    }
    Ok(took)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.exists())
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}
