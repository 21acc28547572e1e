//! The `linux` driver on its own, as root: a snapshot of a live sandbox's
//! workspace is a consistent ext4 image that holds what the sandbox wrote.

use std::path::PathBuf;

use agentrt_sandbox::linux::{LinuxConfig, LinuxDriver};
use agentrt_sandbox::protocol::{ExecRequest, ProcessSpec, Request, Response};
use agentrt_sandbox::SandboxDriver;
use agentrt_types::sandbox::SandboxSpec;

fn agent() -> Vec<String> {
    // The workspace's own build of the agent, beside this test's deps.
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("agentrt-sandbox-agent");
    assert!(bin.exists(), "build the agent first (cargo build -p agentrt-sandbox-agent): {}", bin.display());
    vec![bin.display().to_string()]
}

#[tokio::test]
async fn a_snapshot_is_a_consistent_image_of_the_workspace() {
    let dir = tempfile::tempdir().unwrap();
    let driver = LinuxDriver::new(LinuxConfig { dir: dir.path().to_owned(), agent: agent(), uid_base: 310_000, gateway: None });
    let spec = SandboxSpec { disk_mb: 16, ..SandboxSpec::default() };
    let sb = driver.create("ses_snap", &spec).await.unwrap();
    let write =
        "echo snapshot-me > /workspace/note.txt; nohup sh -c 'while true; do date >> /workspace/log; sleep 0.01; done' >/dev/null 2>&1 &";
    let request = Request::Exec(ExecRequest {
        process: ProcessSpec { argv: vec!["/bin/sh".into(), "-c".into(), write.into()], ..Default::default() },
        ..Default::default()
    });
    match sb.call(&request).await.unwrap() {
        Response::Exited { status, .. } => assert_eq!(status.code, Some(0)),
        other => panic!("{other:?}"),
    }
    let image: PathBuf = dir.path().join("snap.img");
    sb.snapshot(&image).await.unwrap();
    // Read the copy without mounting it; e2fsck finds it clean even though a
    // writer was busy when it was taken.
    let out = std::process::Command::new("debugfs").args(["-R", "cat /note.txt"]).arg(&image).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "snapshot-me\n");
    let fsck = std::process::Command::new("e2fsck").args(["-n", "-f"]).arg(&image).output().unwrap();
    assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stdout));
    // The sandbox runs on after the snapshot.
    assert!(sb.alive());
    sb.destroy().await;
    driver.delete_workspace("ses_snap").await.unwrap();
    // Also drops the spare cgroup made for the next sandbox.
    driver.release_workspaces().await;
}
