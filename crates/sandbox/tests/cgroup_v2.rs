//! The `linux` driver on a cgroup v2 host. This project's machines have
//! cgroup v1, so the test boots a QEMU virtual machine whose kernel has only
//! v2 (`scripts/cgroup-v2-vm.sh`, over this host's files) and runs
//! [`inside_a_cgroup_v2_vm`] there: limits are written and enforced (an OOM
//! kill reported as such, a fork bomb held at the pids limit), usage is read,
//! the freezer stops and resumes a running program, and destroy removes the
//! cgroup.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agentrt_sandbox::cgroup::CgroupVersion;
use agentrt_sandbox::linux::{LinuxConfig, LinuxDriver};
use agentrt_sandbox::protocol::{ExecRequest, ProcessSpec, Request, Response};
use agentrt_sandbox::{Sandbox, SandboxDriver};
use agentrt_types::sandbox::SandboxSpec;
use base64::Engine as _;

#[test]
fn cgroup_v2_limits_usage_and_freezer_work_in_a_v2_only_vm() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cgroup-v2-vm.sh");
    let me = std::env::current_exe().unwrap();
    let started = Instant::now();
    let out = std::process::Command::new(&script)
        .arg(&me)
        .args(["--ignored", "--exact", "inside_a_cgroup_v2_vm", "--nocapture", "--test-threads=1"])
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && console.contains("test result: ok. 1 passed"),
        "in the VM ({:?}, {:?}):\n{console}\n{}",
        out.status,
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn agent() -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("agentrt-sandbox-agent");
    assert!(bin.exists(), "build the agent first (cargo build -p agentrt-sandbox-agent): {}", bin.display());
    vec![bin.display().to_string()]
}

/// Runs `script` with `sh -c`; returns exit code, stdout and stderr.
async fn sh(sb: &dyn Sandbox, script: &str) -> (Option<i32>, Option<i32>, String, String) {
    let request = Request::Exec(ExecRequest {
        process: ProcessSpec { argv: vec!["/bin/sh".into(), "-c".into(), script.into()], ..Default::default() },
        timeout_ms: Some(120_000),
        max_output: 64 * 1024,
        ..Default::default()
    });
    let text = |b64: &str| String::from_utf8_lossy(&base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).into_owned();
    match sb.call(&request).await.unwrap() {
        Response::Exited { status, stdout, stderr, .. } => (status.code, status.signal, text(&stdout), text(&stderr)),
        other => panic!("{other:?}"),
    }
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display())).trim().to_owned()
}

#[tokio::test]
#[ignore = "runs inside the VM of cgroup_v2_limits_usage_and_freezer_work_in_a_v2_only_vm"]
async fn inside_a_cgroup_v2_vm() {
    assert_eq!(CgroupVersion::detect(), Some(CgroupVersion::V2), "this kernel has cgroup v2 only");
    let dir = tempfile::tempdir().unwrap();
    let driver = LinuxDriver::new(LinuxConfig { dir: dir.path().to_owned(), agent: agent(), uid_base: 320_000, gateway: None });
    let spec = SandboxSpec { disk_mb: 16, memory_mb: 64, pids: 48, cpu: 0.5, ..SandboxSpec::default() };
    let sb = driver.create("ses_v2", &spec).await.unwrap();
    let cg: PathBuf = Path::new("/sys/fs/cgroup/agentrt").join(sb.id());

    // The limits are in the sandbox's own cgroup, and PID 1 is in it.
    assert_eq!(read(&cg, "memory.max"), (64u64 << 20).to_string());
    assert_eq!(read(&cg, "pids.max"), "48");
    assert_eq!(read(&cg, "cpu.max"), "50000 100000");
    assert!(!read(&cg, "cgroup.procs").is_empty(), "the sandbox's processes are in its cgroup");
    let (code, _, out, _) = sh(sb.as_ref(), "echo hello").await;
    assert_eq!((code, out.as_str()), (Some(0), "hello\n"));
    let usage = sb.usage();
    assert!(usage.memory_bytes > 0 && usage.cpu_usec > 0 && usage.pids >= 1, "{usage:?}");

    // A memory bomb is OOM-killed and reported as such.
    let before = sb.usage();
    let (code, signal, _, _) = sh(sb.as_ref(), "python3 -c 'x = bytearray(200 << 20); print(len(x))'").await;
    assert!(signal == Some(9) || code == Some(128 + 9), "killed by SIGKILL: {code:?} {signal:?}");
    assert_eq!(sb.explain_kill(&before).as_deref(), Some("killed: out of memory (limit 64 MiB)"));

    // A fork bomb stops at the pids limit.
    let (_, _, _, err) = sh(sb.as_ref(), "for i in $(seq 100); do sleep 2 >/dev/null 2>&1 & done").await;
    assert!(err.contains("Cannot fork") || err.contains("Resource temporarily unavailable"), "{err}");
    assert_ne!(read(&cg, "pids.events"), "max 0", "forks were refused at the limit");
    assert!(sb.usage().pids <= 48, "{:?}", sb.usage());
    let deadline = Instant::now() + Duration::from_secs(60);
    while sb.usage().pids > 4 {
        assert!(Instant::now() < deadline, "the sleepers did not end: {:?}", sb.usage());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The freezer stops a running counter and lets it go on.
    sh(sb.as_ref(), "nohup sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/n.new; mv /tmp/n.new /tmp/n; done' >/dev/null 2>&1 &")
        .await;
    let count = || async { sh(sb.as_ref(), "cat /tmp/n").await.2.trim().parse::<u64>().unwrap_or(0) };
    let deadline = Instant::now() + Duration::from_secs(60);
    while count().await == 0 {
        assert!(Instant::now() < deadline, "the counter never started");
    }
    sb.pause().await.unwrap();
    assert!(read(&cg, "cgroup.events").lines().any(|l| l == "frozen 1"));
    let n1 = usage_cpu(&cg);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(usage_cpu(&cg), n1, "no CPU is used while frozen");
    sb.resume().await.unwrap();
    assert!(read(&cg, "cgroup.events").lines().any(|l| l == "frozen 0"));
    let thawed = count().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count().await <= thawed {
        assert!(Instant::now() < deadline, "the counter did not go on after the thaw");
    }

    sb.destroy().await;
    assert!(!cg.exists(), "destroy removes the cgroup");
    driver.delete_workspace("ses_v2").await.unwrap();
    driver.release_workspaces().await;
}

fn usage_cpu(cg: &Path) -> u64 {
    read(cg, "cpu.stat").lines().find_map(|l| l.strip_prefix("usage_usec ")).and_then(|v| v.parse().ok()).unwrap()
}
