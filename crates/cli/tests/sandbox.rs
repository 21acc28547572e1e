//! Sandboxes through the real binary, as root: each isolation test makes
//! one escape attempt and checks its exact contained outcome; lifecycle
//! tests freeze, hibernate, kill and restart; an agent writes a program in
//! its workspace, runs it and answers with its output.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A server, an agent with a `[sandbox]` and one session of it.
struct Rig {
    dir: tempfile::TempDir,
    server: Option<Server>,
    session: String,
}

impl Rig {
    fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    /// Runs a shell command in the session's sandbox through the API.
    async fn sh(&self, command: &str) -> Value {
        let (status, out) = self.server().post(&format!("/v1/sessions/{}/sandbox/exec", self.session), json!({"command": command})).await;
        assert_eq!(status, 200, "exec {command:?}: {out}");
        out
    }

    async fn sh_ok(&self, command: &str) -> String {
        let out = self.sh(command).await;
        assert_eq!(out["exit_code"], 0, "{command:?}: {out}");
        out["stdout"].as_str().unwrap().to_owned()
    }

    async fn status(&self) -> Value {
        self.server().get(&format!("/v1/sessions/{}/sandbox", self.session)).await
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.kill();
        }
        unmount_under(self.dir.path());
    }
}

fn spec(sandbox: &str, script: &str) -> String {
    format!("[model]\nprovider = \"scripted\"\nscript = [{script}]\n[sandbox]\n{sandbox}\n")
}

async fn rig(sandbox: &str) -> Rig {
    rig_with_script(sandbox, "{ text = \"ok\" }").await
}

async fn rig_with_script(sandbox: &str, script: &str) -> Rig {
    assert!(nix_is_root(), "the sandbox tests need root (loop devices, cgroups, uid maps)");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.apply("box", &spec(sandbox, script)).await;
    let session = server.session("box").await;
    Rig { dir, server: Some(server), session }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

// ----- isolation: one attempt per test -----

#[tokio::test]
async fn host_files_outside_the_sandbox_cannot_be_read() {
    let r = rig("").await;
    let secret = r.dir.path().join("secret.txt");
    std::fs::write(&secret, "hunter2").unwrap();
    let out = r.sh(&format!("cat {}", secret.display())).await;
    assert_eq!(out["exit_code"], 1, "{out}");
    assert!(out["stderr"].as_str().unwrap().contains("No such file or directory"), "{out}");
    let out = r.sh("cat /etc/shadow; ls /root").await;
    assert!(out["stderr"].as_str().unwrap().contains("/etc/shadow: No such file or directory"), "{out}");
    assert!(out["stderr"].as_str().unwrap().contains("'/root': No such file or directory"), "{out}");
}

#[tokio::test]
async fn only_workspace_and_tmp_are_writable() {
    let r = rig("").await;
    for path in ["/usr/evil", "/evil", "/etc/evil", "/bin/evil"] {
        let out = r.sh(&format!("touch {path}")).await;
        assert_eq!(out["exit_code"], 1, "{path}: {out}");
        assert!(out["stderr"].as_str().unwrap().contains("Read-only file system"), "{path}: {out}");
    }
    r.sh_ok("touch /workspace/ok /tmp/ok").await;
}

#[tokio::test]
async fn the_file_api_cannot_escape_through_dot_dot_or_symlinks() {
    let r = rig("").await;
    let secret = r.dir.path().join("secret.txt");
    std::fs::write(&secret, "hunter2").unwrap();
    let base = format!("{}/v1/sessions/{}/files", r.server().url, r.session);
    let http = r.server().http.clone();
    let resp = http.get(format!("{base}/../../etc/hostname")).send().await.unwrap();
    // The URL is normalised by the client or refused by the server; neither reads the host.
    assert!([404, 422].contains(&resp.status().as_u16()), "{}", resp.status());
    let resp = http.get(format!("{base}/a%2F..%2F..%2Fetc%2Fhostname")).send().await.unwrap();
    assert_eq!(resp.status(), 422);
    r.sh_ok(&format!("ln -s {} /workspace/link", secret.display())).await;
    let resp = http.get(format!("{base}/link")).send().await.unwrap();
    assert_eq!(resp.status(), 404, "the symlink resolves inside the sandbox, where the host file is not");
    let resp = http.put(format!("{base}/link")).body("overwrite").send().await.unwrap();
    assert_eq!(resp.status(), 404, "writing through a dangling link fails too");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "hunter2");
}

#[tokio::test]
async fn the_network_is_loopback_only() {
    let r = rig("").await;
    let port = r.server().url.rsplit(':').next().unwrap().to_owned();
    let out = r.sh(&format!("bash -c 'echo > /dev/tcp/127.0.0.1/{port}'")).await;
    assert!(out["stderr"].as_str().unwrap().contains("Connection refused"), "the runtime's port is not reachable: {out}");
    let out = r.sh("bash -c 'echo > /dev/tcp/1.1.1.1/80'").await;
    assert!(out["stderr"].as_str().unwrap().contains("Network is unreachable"), "{out}");
    let ifaces = r.sh_ok("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '").await;
    assert_eq!(ifaces.trim(), "lo");
}

#[tokio::test]
async fn host_processes_are_invisible_and_unsignalable() {
    let r = rig("").await;
    let pid = r.server().pid();
    let out = r.sh(&format!("kill -0 {pid}")).await;
    assert_ne!(out["exit_code"], 0, "{out}");
    assert!(out["stderr"].as_str().unwrap().contains("No such process"), "{out}");
    // Only the sandbox's own processes: the agent as PID 1, the shell, ls.
    let pids = r.sh_ok("ls /proc | grep -E '^[0-9]+$' | sort -n | head -1").await;
    assert_eq!(pids.trim(), "1");
    let count: usize = r.sh_ok("ls /proc | grep -cE '^[0-9]+$'").await.trim().parse().unwrap();
    assert!(count <= 5, "{count} processes visible");
}

/// Runs a Python snippet that makes one syscall and prints its errno.
async fn errno_of(r: &Rig, call: &str) -> String {
    let py = format!("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nr = {call}\nprint(r, ctypes.get_errno())");
    r.sh_ok(&format!("python3 -c '{py}'")).await.trim().to_owned()
}

#[tokio::test]
async fn privileged_operations_are_refused() {
    let r = rig("").await;
    let eperm = "-1 1";
    assert_eq!(errno_of(&r, "libc.mount(b\"none\", b\"/tmp\", b\"tmpfs\", 0, None)").await, eperm, "mount");
    assert_eq!(errno_of(&r, "libc.unshare(0x10000000)").await, eperm, "unshare(CLONE_NEWUSER)");
    assert_eq!(errno_of(&r, "libc.ptrace(16, 1, 0, 0)").await, eperm, "ptrace(PTRACE_ATTACH, 1)");
    assert_eq!(errno_of(&r, "libc.syscall(313, -1, b\"\", 0)").await, eperm, "finit_module");
    assert_eq!(errno_of(&r, "libc.sethostname(b\"evil\", 4)").await, eperm, "sethostname");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(host.trim(), "evil");
    let out = r.sh("echo 3 > /proc/sys/vm/drop_caches").await;
    assert_ne!(out["exit_code"], 0, "{out}");
    assert!(out["stderr"].as_str().unwrap().contains("drop_caches: Permission denied"), "{out}");
    let caps = r.sh_ok("grep CapEff /proc/self/status").await;
    assert_eq!(caps.split_whitespace().nth(1), Some("0000000000000000"));
}

#[tokio::test]
async fn a_fork_bomb_hits_the_pids_limit() {
    let r = rig("pids = 32").await;
    let py = "import os, signal\nkids = []\ntry:\n    while True:\n        pid = os.fork()\n        if pid == 0:\n            signal.pause()\n        kids.append(pid)\nexcept OSError as e:\n    print(len(kids), e.errno)\nfor k in kids:\n    os.kill(k, 9)";
    let out = r.sh_ok(&format!("python3 -c '{py}'")).await;
    let (n, errno) = out.trim().split_once(' ').unwrap();
    assert_eq!(errno, "11", "EAGAIN: {out}");
    assert!(n.parse::<u32>().unwrap() < 32, "{out}");
    r.sh_ok("true").await;
}

#[tokio::test]
async fn a_memory_bomb_is_killed_and_reported_as_out_of_memory() {
    let script = "{ tool_calls = [{ name = \"shell.exec\", arguments = { command = \"python3 -c 'x = b\\\"a\\\" * (400 << 20); print(len(x))'\" } }] }, { text = \"{tool_results}\" }";
    let r = rig_with_script("memory_mb = 96\ntmp_mb = 16", script).await;
    let turn = r.server().submit(&r.session, "go").await;
    let t = r.server().wait_turn(&r.session, &turn).await;
    assert_eq!(t["status"], "completed", "{t}");
    let events = r.server().events(&r.session).await;
    let done = events.iter().find(|e| e["type"] == "tool.completed").expect("tool.completed");
    assert_eq!(done["outcome"], "error", "{done}");
    assert_eq!(done["output"]["error"], "killed: out of memory (limit 96 MiB)", "{done}");
    assert!(r.status().await["usage"]["oom_kills"].as_u64().unwrap() >= 1);
    r.sh_ok("true").await;
}

#[tokio::test]
async fn a_cpu_hog_is_throttled_and_other_sessions_are_not() {
    let r = rig("cpu = 0.2").await;
    r.server().apply("free", &spec("cpu = 1.0", "{ text = \"ok\" }")).await;
    let other = r.server().session("free").await;
    let spin =
        "python3 -c 'import time, os\nt = time.time()\nwhile time.time() - t < 1.5: pass\nprint(os.times().user + os.times().system)'";
    let (url_a, url_b) = (format!("/v1/sessions/{}/sandbox/exec", r.session), format!("/v1/sessions/{other}/sandbox/exec"));
    // Warm both sandboxes first so that start-up does not skew the race.
    r.sh_ok("true").await;
    r.server().post(&url_b, json!({"command": "true"})).await;
    let (a, b) = tokio::join!(r.server().post(&url_a, json!({"command": spin})), r.server().post(&url_b, json!({"command": spin})));
    let cpu = |v: &Value| v["stdout"].as_str().unwrap().trim().parse::<f64>().unwrap();
    let (throttled, free) = (cpu(&a.1), cpu(&b.1));
    // 0.2 cores for 1.5 s is 0.3 s of CPU (a quota is a ceiling, so this holds under any load).
    assert!(throttled < 0.45, "0.2 cores for 1.5 s used {throttled} s of CPU");
    assert!(free > 1.5 * throttled, "the other session, with a core of its own, is not held back: {free} vs {throttled}");
}

#[tokio::test]
async fn filling_the_workspace_stops_at_the_quota() {
    let r = rig("disk_mb = 16").await;
    let out = r.sh("dd if=/dev/zero of=/workspace/big bs=1M count=64").await;
    assert_ne!(out["exit_code"], 0, "{out}");
    assert!(out["stderr"].as_str().unwrap().contains("No space left on device"), "{out}");
    let used: u64 = r.sh_ok("du -sm /workspace/big | cut -f1").await.trim().parse().unwrap();
    assert!(used <= 16, "{used} MiB written");
    let url = format!("{}/v1/sessions/{}/files/more", r.server().url, r.session);
    let resp = r.server().http.clone().put(url).body(vec![0u8; 4 << 20]).send().await.unwrap();
    assert_eq!(resp.status(), 507);
}

// ----- lifecycle -----

#[tokio::test]
async fn a_background_process_keeps_its_state_across_standby_and_resume() {
    let r = rig("").await;
    // Written to a new file and renamed, so that a freeze in mid-write never
    // leaves a half-written count for the test to read.
    let py = "import os, time\ni = 0\nwhile True:\n    i += 1\n    open(\"/workspace/n.new\", \"w\").write(str(i))\n    os.replace(\"/workspace/n.new\", \"/workspace/n.tmp\")\n    time.sleep(0.02)";
    r.sh_ok(&format!("nohup python3 -c '{py}' >/dev/null 2>&1 &")).await;
    let count = async || r.sh_ok("cat /workspace/n.tmp 2>/dev/null || echo 0").await.trim().parse::<u64>().unwrap_or(0);
    eventually(10, "the counter runs", async || count().await > 5).await;
    let (s, v) = r.server().post(&format!("/v1/sessions/{}/sandbox/standby", r.session), json!({})).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("standby")), "{v}");
    let frozen_at = std::fs::read_to_string(workspace_file(&r, "n.tmp")).unwrap().parse::<u64>().unwrap();
    // Frozen: 300 ms pass (15 counter ticks) with no tick at all.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = std::fs::read_to_string(workspace_file(&r, "n.tmp")).unwrap().parse::<u64>().unwrap();
    assert_eq!(later, frozen_at, "a frozen process made progress");
    // The next call thaws it, and the same process counts on from where it stopped.
    let resumed = count().await;
    assert!(resumed >= frozen_at, "{frozen_at} → {resumed}: restarted rather than resumed?");
    eventually(10, "the counter goes on", async || count().await > resumed + 5).await;
    let events = r.server().events(&r.session).await;
    let kinds = types(&events);
    let lifecycle: Vec<&String> = kinds.iter().filter(|k| k.starts_with("sandbox.")).collect();
    assert_eq!(lifecycle, ["sandbox.created", "sandbox.standby", "sandbox.resumed"], "the same sandbox throughout");
}

/// The host path of a workspace file (root can look without waking the sandbox).
fn workspace_file(r: &Rig, name: &str) -> std::path::PathBuf {
    r.dir.path().join("sandboxes/workspaces").join(&r.session).join("mnt").join(name)
}

#[tokio::test]
async fn idle_sandboxes_stand_by_then_hibernate_and_keep_their_files() {
    let r = rig("idle_standby_seconds = 1\nidle_hibernate_seconds = 2").await;
    r.sh_ok("echo kept > /workspace/f.txt").await;
    let first = r.status().await["id"].as_str().unwrap().to_owned();
    eventually(15, "standby", async || r.status().await["state"] == "standby").await;
    eventually(15, "hibernation", async || r.status().await["state"] == "hibernated").await;
    assert_eq!(r.sh_ok("cat /workspace/f.txt").await, "kept\n");
    let now = r.status().await;
    assert_eq!(now["state"], "running");
    assert_ne!(now["id"].as_str().unwrap(), first, "a fresh sandbox on the same workspace");
    let events = r.server().events(&r.session).await;
    let kinds: Vec<String> = types(&events).into_iter().filter(|k| k.starts_with("sandbox.")).collect();
    assert_eq!(kinds, ["sandbox.created", "sandbox.standby", "sandbox.hibernated", "sandbox.created"]);
    let last = events.iter().rev().find(|e| e["type"] == "sandbox.created").unwrap();
    assert_eq!(last["reason"], "after hibernation");
    assert!(last["duration_ms"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn a_dead_sandbox_is_replaced_on_the_next_call() {
    let r = rig("").await;
    r.sh_ok("echo x > /workspace/x").await;
    // PID 1 of the sandbox dies (killed from the host): every process in it goes with it.
    let id = r.status().await["id"].as_str().unwrap().to_owned();
    let pid1 = r.dir.path().join("sandboxes/run").join(&id).join("pid");
    let pid: i32 = std::fs::read_to_string(pid1).unwrap().trim().parse().unwrap();
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    eventually(10, "replacement", async || {
        let (s, v) = r.server().post(&format!("/v1/sessions/{}/sandbox/exec", r.session), json!({"command": "cat /workspace/x"})).await;
        s == 200 && v["stdout"] == "x\n"
    })
    .await;
    let kinds = types(&r.server().events(&r.session).await);
    assert!(kinds.contains(&"sandbox.restarted".to_owned()), "{kinds:?}");
}

#[tokio::test]
async fn the_workspace_survives_a_sigkill_of_the_server() {
    let mut r = rig("").await;
    r.sh_ok("mkdir -p /workspace/src && echo 'print(6 * 7)' > /workspace/src/main.py").await;
    r.server.take().unwrap().kill();
    r.server = Some(Server::start(r.dir.path()));
    assert_eq!(r.sh_ok("python3 /workspace/src/main.py").await, "42\n");
}

#[tokio::test]
async fn twenty_sandboxes_run_at_once_without_seeing_each_other() {
    let r = rig("").await;
    let mut sessions = vec![r.session.clone()];
    for _ in 1..20 {
        sessions.push(r.server().session("box").await);
    }
    let urls: Vec<String> = sessions.iter().map(|s| format!("/v1/sessions/{s}/sandbox/exec")).collect();
    let runs = sessions.iter().zip(&urls).map(|(s, url)| {
        let command = format!("echo {s} > /workspace/me && sleep 0.2 && ls /workspace && cat /workspace/me");
        r.server().post(url, json!({"command": command}))
    });
    let results = futures_util::future::join_all(runs).await;
    for (s, (status, out)) in sessions.iter().zip(results) {
        assert_eq!(status, 200, "{out}");
        assert_eq!(out["stdout"], format!("me\n{s}\n"), "{s}: {out}");
    }
}

#[tokio::test]
async fn terminating_the_session_destroys_its_sandbox_and_workspace() {
    let r = rig("").await;
    r.sh_ok("echo bye > /workspace/f").await;
    let (s, _) = r.server().call(reqwest::Method::DELETE, &format!("/v1/sessions/{}", r.session), None).await;
    assert_eq!(s, 200);
    assert!(!r.dir.path().join("sandboxes/workspaces").join(&r.session).exists());
    let kinds = types(&r.server().events(&r.session).await);
    assert_eq!(kinds[kinds.len() - 2..], ["sandbox.destroyed", "session.terminated"], "{kinds:?}");
    let (s, v) = r.server().post(&format!("/v1/sessions/{}/sandbox/exec", r.session), json!({"command": "true"})).await;
    assert_eq!(s, 409, "{v}");
}

// ----- the API, the CLI and an agent -----

#[tokio::test]
async fn exec_streams_output_files_round_trip_and_bad_requests_are_explained() {
    let r = rig("").await;
    let url = format!("{}/v1/sessions/{}/sandbox/exec", r.server().url, r.session);
    let resp = r
        .server()
        .http
        .clone()
        .post(&url)
        .header("accept", "text/event-stream")
        .json(&json!({"command": "echo one; sleep 0.1; echo two >&2; exit 3"}))
        .send()
        .await
        .unwrap();
    let body = resp.text().await.unwrap();
    let one = body.find("event: stdout\ndata: one").expect(&body);
    let two = body.find("event: stderr\ndata: two").expect(&body);
    let exit = body.find("event: exit").expect(&body);
    assert!(one < two && two < exit, "{body}");
    assert!(body.contains("\"exit_code\":3"), "{body}");

    let files = format!("{}/v1/sessions/{}/files", r.server().url, r.session);
    let http = r.server().http.clone();
    let put = http.put(format!("{files}/dir/bin.dat")).body(vec![0u8, 159, 146, 150]).send().await.unwrap();
    assert_eq!(put.status(), 200);
    let got = http.get(format!("{files}/dir/bin.dat")).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(got.as_ref(), &[0u8, 159, 146, 150]);
    let listing: Value = http.get(format!("{files}/dir")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listing["entries"][0]["path"], "bin.dat", "{listing}");
    let missing = http.get(format!("{files}/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    let (s, v) = r.server().post(&format!("/v1/sessions/{}/sandbox/exec", r.session), json!({"cmd": "ls"})).await;
    assert_eq!(s, 422, "{v}");
    let (s, v) =
        r.server().post(&format!("/v1/sessions/{}/sandbox/exec", r.session), json!({"command": "sleep 5", "timeout_seconds": 1})).await;
    assert_eq!((s, v["timed_out"].as_bool(), v["signal"].as_i64()), (200, Some(true), Some(9)), "{v}");
}

#[tokio::test]
async fn cli_exec_and_cp() {
    let r = rig("").await;
    let url = r.server().url.clone();
    let local = r.dir.path().join("in.txt");
    std::fs::write(&local, "from the host\n").unwrap();
    let remote = format!("{}:notes/in.txt", r.session);
    let (code, out, err) = cli(&["sandbox", "cp", local.to_str().unwrap(), &remote], Some(&url));
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = cli(&["sandbox", "exec", &r.session, "--", "cat", "notes/in.txt"], Some(&url));
    assert_eq!((code, out.as_str()), (0, "from the host\n"));
    let (code, _, _) = cli(&["sandbox", "exec", &r.session, "--", "sh", "-c", "exit 7"], Some(&url));
    assert_eq!(code, 7);
    let back = r.dir.path().join("out.txt");
    let (code, out, err) = cli(&["sandbox", "cp", &remote, back.to_str().unwrap()], Some(&url));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(std::fs::read_to_string(back).unwrap(), "from the host\n");
    let (code, _, err) = cli(&["sandbox", "cp", "a", "b"], Some(&url));
    assert_eq!(code, 1);
    assert!(err.contains("SESSION_ID:path"), "{err}");
}

#[tokio::test]
async fn an_agent_writes_a_program_runs_it_and_answers_with_its_output() {
    let script = r#"{ tool_calls = [{ name = "fs.write", arguments = { path = "fib.py", content = "a, b = 0, 1\nfor _ in range(30):\n    a, b = b, a + b\nprint(a)\n" } }] },
  { tool_calls = [{ name = "shell.exec", arguments = { command = "python3 fib.py" } }] },
  { text = "fib(30) is {tool_results}" }"#;
    let r = rig_with_script("", script).await;
    let turn = r.server().submit(&r.session, "compute fib(30)").await;
    let t = r.server().wait_turn(&r.session, &turn).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert!(t["output"].as_str().unwrap().contains("832040"), "{t}");
    assert_eq!(std::fs::read_to_string(workspace_file(&r, "fib.py")).unwrap().lines().count(), 4);
}

#[tokio::test]
async fn impossible_sandbox_specs_are_refused_at_apply() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    for (sandbox, path, needle) in [
        ("driver = \"firecracker\"", "sandbox.driver", "unknown driver"),
        ("memory_mb = 99999999", "sandbox.memory_mb", "more than this host has"),
        ("rootfs = \"/nonexistent/rootfs\"", "sandbox.rootfs", "not a root filesystem"),
        ("idle_standby_seconds = 10\nidle_hibernate_seconds = 5", "sandbox.idle_hibernate_seconds", "at least idle_standby_seconds"),
    ] {
        let resp = server.http.put(format!("{}/v1/agents/bad", server.url)).body(spec(sandbox, "{ text = \"x\" }")).send().await.unwrap();
        assert_eq!(resp.status(), 422, "{sandbox}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["details"][0]["path"], path, "{body}");
        assert!(body["error"]["details"][0]["message"].as_str().unwrap().contains(needle), "{body}");
    }
}

#[tokio::test]
async fn sandboxes_work_without_root_with_fewer_guarantees() {
    assert!(nix_is_root(), "this test drops from root to nobody");
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
    let server = Server::start_command(cmd, dir.path());
    server.apply("box", &spec("", "{ text = \"ok\" }")).await;
    let session = server.session("box").await;
    let exec = format!("/v1/sessions/{session}/sandbox/exec");
    let (s, out) = server
        .post(&exec, json!({"command": "id -u; cat /proc/self/uid_map; echo hi > /workspace/f; cat /workspace/f; touch /usr/x"}))
        .await;
    assert_eq!(s, 200, "{out}");
    let stdout = out["stdout"].as_str().unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "0", "root inside: {out}");
    assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["0", "65534", "1"], "mapped to the runtime's own uid: {out}");
    assert_eq!(lines[2], "hi");
    assert!(out["stderr"].as_str().unwrap().contains("Read-only file system"), "{out}");
    // No cgroups without root: no standby, said plainly.
    let (s, v) = server.post(&format!("/v1/sessions/{session}/sandbox/standby"), json!({})).await;
    assert_eq!(s, 422, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("standby needs cgroups"), "{v}");
}

#[tokio::test]
async fn a_sandbox_cpu_budget_pauses_the_session_after_the_call_that_spent_it() {
    // The first call burns CPU; the budget is checked before the second.
    let script = r#"
  { tool_calls = [{ name = "shell.exec", arguments = { command = "i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done; echo burned" } }] },
  { tool_calls = [{ name = "shell.exec", arguments = { command = "echo second" } }] },
  { text = "{tool_results}" },
"#;
    let rig = rig_with_script("", script).await;
    let server = rig.server();
    let body = json!({"scope": "session", "target": rig.session, "metric": "sandbox_cpu_seconds", "period": "session", "limit": 0.05});
    let (s, v) = server.post("/v1/budgets", body).await;
    assert_eq!(s, 201, "{v}");
    let turn = server.submit(&rig.session, "go").await;
    eventually(60, "the session pauses on its CPU budget", async || {
        server.get(&format!("/v1/sessions/{}", rig.session)).await["status"] == "waiting_budget"
    })
    .await;
    let summary = server.get(&format!("/v1/sessions/{}", rig.session)).await;
    let spent = summary["budget_exceeded"]["spent"].as_f64().unwrap();
    assert!(spent >= 0.05, "the first call's CPU is counted: {summary}");
    let events = server.events(&rig.session).await;
    let first = events.iter().find(|e| e["type"] == "tool.completed").unwrap();
    assert_eq!(first["output"]["stdout"], "burned\n", "{first}");
    assert!(first["sandbox_cpu_us"].as_u64().unwrap() >= 50_000, "{first}");
    assert_eq!(events.iter().filter(|e| e["type"] == "tool.completed").count(), 1, "the second call is held");

    let (s, _) =
        server.call(reqwest::Method::PATCH, &format!("/v1/budgets/{}", v["id"].as_str().unwrap()), Some(json!({"limit": 1000}))).await;
    assert_eq!(s, 200);
    let t = server.wait_turn(&rig.session, &turn).await;
    assert_eq!(t["status"], "completed", "{t}");
    assert!(t["output"].as_str().unwrap().contains("second"), "{t}");
}

/// Code in a sandbox calls the model gateway with the official `openai`
/// SDK, unmodified: it finds the gateway in `OPENAI_BASE_URL` (a loopback
/// port the sandbox forwards to its session's socket) and holds no
/// credential; the call is the session's, in its log and its usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_in_a_sandbox_calls_the_gateway_as_its_session() {
    assert!(nix_is_root(), "the sandbox tests need root (loop devices, cgroups, uid maps)");
    let sdk = std::env::var("AGENTRT_TEST_SANDBOX_PY").expect("AGENTRT_TEST_SANDBOX_PY is not set: run the suite with ./scripts/test.sh");
    let (up, up_calls) = upstream(None).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agentrt.toml");
    std::fs::write(&config, format!("[models.small]\nprovider = \"openai\"\nbase-url = \"{up}\"\nmodel = \"small-model\"\n")).unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with_env(&data, &[("AGENTRT_CONFIG", config.to_str().unwrap())]);
    server.apply("box", &spec("", "{ text = \"ok\" }")).await;
    let session = server.session("box").await;
    let rig = Rig { dir, server: Some(server), session };
    rig.sh_ok("true").await;
    // The SDK (wheels for the sandbox's Python) goes into the workspace.
    let workspace = data.join("sandboxes/workspaces").join(&rig.session).join("mnt");
    let copied = std::process::Command::new("cp").arg("-r").arg(&sdk).arg(workspace.join("py")).status().unwrap();
    assert!(copied.success());

    let script = "import openai; r = openai.OpenAI().chat.completions.create(model='small', messages=[{'role': 'user', 'content': 'hi'}]); print(r.choices[0].message.content, r.usage.total_tokens)";
    let out = rig.sh(&format!("PYTHONPATH=/workspace/py python3 -c \"{script}\"")).await;
    assert_eq!(out["exit_code"], 0, "{out}");
    assert_eq!(out["stdout"], "hello from small-model 17\n", "{out}");
    assert_eq!(up_calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    let env = rig.sh_ok("echo $OPENAI_BASE_URL $OPENAI_API_KEY").await;
    assert_eq!(env, "http://127.0.0.1:7700/v1 agentrt-sandbox\n", "no credential is in the sandbox");

    let server = rig.server();
    eventually(10, "the call is journaled as the session's", async || {
        server.events(&rig.session).await.iter().any(|e| e["type"] == "gateway.called" && e["route"] == "small")
    })
    .await;
    let summary = server.get(&format!("/v1/sessions/{}", rig.session)).await;
    assert_eq!(summary["spend"]["tokens"], 17, "{summary}");
}

/// A stdio MCP server of an agent with a `[sandbox]` (built with the
/// official Python SDK) runs inside the session's sandbox, started through
/// the sandbox's agent, and keeps answering after the sandbox was frozen.
#[tokio::test]
async fn a_stdio_mcp_server_runs_inside_the_sessions_sandbox() {
    let sdk = std::env::var("AGENTRT_TEST_SANDBOX_PY").expect("AGENTRT_TEST_SANDBOX_PY is not set: run the suite with ./scripts/test.sh");
    let mcp = r#"
[[tools.mcp]]
name = "m"
command = "python3"
args = ["/workspace/mcp_server.py", "--transport", "stdio"]
env = { PYTHONPATH = "/workspace/py" }
tools = ["add"]
"#;
    let script = "{ tool_calls = [{ name = \"m.add\", arguments = { a = 2, b = 3 } }] }, { text = \"{tool_results}\" }";
    let rig = rig("").await;
    // No host processes allowed (the default): the server may only run in the sandbox.
    rig.server().apply("box", &format!("{}{mcp}", spec("", script))).await;
    let session = rig.server().session("box").await;
    let (s, out) = rig.server().post(&format!("/v1/sessions/{session}/sandbox/exec"), json!({"command": "true"})).await;
    assert_eq!(s, 200, "{out}");
    let workspace = rig.dir.path().join("sandboxes/workspaces").join(&session).join("mnt");
    let copy = |from: &Path, to: &str| {
        let ok = std::process::Command::new("cp").arg("-r").arg(from).arg(workspace.join(to)).status().unwrap().success();
        assert!(ok, "copy {} into the workspace", from.display());
    };
    copy(Path::new(&sdk), "py");
    copy(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/peers/mcp_server.py"), "mcp_server.py");

    for round in 0..2 {
        let turn = rig.server().submit(&session, "go").await;
        let t = rig.server().wait_turn(&session, &turn).await;
        assert_eq!(t["status"], "completed", "round {round}: {t}");
        assert!(t["output"].as_str().unwrap().contains("{\"sum\":5}"), "round {round}: {t}");
        // The server is a process of the sandbox, in its pid namespace.
        let (_, ps) = rig
            .server()
            .post(
                &format!("/v1/sessions/{session}/sandbox/exec"),
                json!({"command": "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done"}),
            )
            .await;
        assert!(ps["stdout"].as_str().unwrap().contains("python3 /workspace/mcp_server.py --transport stdio"), "{ps}");
        // Frozen between turns: the next call thaws it.
        let (s, v) = rig.server().post(&format!("/v1/sessions/{session}/sandbox/standby"), json!({})).await;
        assert_eq!((s, v["state"].as_str()), (200, Some("standby")), "{v}");
    }
}

/// Whether the ELF executable at `path` asks for a program interpreter
/// (the dynamic loader): a static one does not.
fn has_interpreter(path: &Path) -> bool {
    let elf = std::fs::read(path).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF", "{} is not an ELF file", path.display());
    let num = |at: usize, len: usize| elf[at..at + len].iter().rev().fold(0usize, |n, b| n << 8 | *b as usize);
    let (phoff, phentsize, phnum) = (num(0x20, 8), num(0x36, 2), num(0x38, 2));
    (0..phnum).any(|i| num(phoff + i * phentsize, 4) == 3 /* PT_INTERP */)
}

#[tokio::test]
async fn the_static_agent_runs_sandboxes_and_runs_where_there_is_no_libc() {
    let static_agent = std::env::var("AGENTRT_TEST_STATIC_AGENT").expect(
        "AGENTRT_TEST_STATIC_AGENT is not set: run the suite with ./scripts/test.sh, which builds it with scripts/build-static-agent.sh",
    );
    let dynamic_agent = Path::new(BIN).with_file_name("agentrt-sandbox-agent");
    assert!(!has_interpreter(Path::new(&static_agent)), "{static_agent} is statically linked");
    assert!(has_interpreter(&dynamic_agent), "the workspace's own build is dynamic, for contrast");

    // A root file system with the two agents in it and nothing else: no
    // C library, no loader, no shell.
    let rootfs = tempfile::tempdir().unwrap();
    let bin = rootfs.path().join("usr/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(&static_agent, bin.join("static-agent")).unwrap();
    std::fs::copy(&dynamic_agent, bin.join("dynamic-agent")).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_with_env(dir.path(), &[("AGENTRT_SANDBOX_AGENT", static_agent.as_str())]);
    server.apply("bare", &spec(&format!("rootfs = \"{}\"", rootfs.path().display()), "{ text = \"ok\" }")).await;
    let session = server.session("bare").await;
    let exec = |agent: &str| json!({"argv": [format!("/usr/bin/{agent}"), "version"]});
    let (status, out) = server.post(&format!("/v1/sessions/{session}/sandbox/exec"), exec("static-agent")).await;
    assert_eq!(status, 200, "{out}");
    let version = format!("{}\n", agentrt_sandbox_agent::protocol::PROTOCOL_VERSION);
    assert_eq!((out["exit_code"].as_i64(), out["stdout"].as_str()), (Some(0), Some(version.as_str())), "{out}");
    let (status, out) = server.post(&format!("/v1/sessions/{session}/sandbox/exec"), exec("dynamic-agent")).await;
    // The dynamic build cannot even start there: its loader is missing.
    assert!(status != 200 || out["exit_code"] != 0, "{out}");
    server.kill();
    unmount_under(dir.path());
}
