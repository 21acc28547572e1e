//! Sandbox workspaces follow their session between nodes on one
//! PostgreSQL through a shared workspace store: a node saves a workspace
//! it changed when it lets the session go and at standby; the next node
//! to run the session, or to serve its files, fetches the latest one,
//! including after the node that had it was SIGKILLed.

mod common;

use common::*;
use serde_json::Value;

/// Lease lifetime of the test nodes, in seconds.
const LEASE_TTL: u64 = 3;

/// Each turn's input is a shell command its agent runs in the sandbox; the
/// answer is the command's result.
const SHELL_AGENT: &str = r#"
[model]
provider = "scripted"
script = [{ tool_calls = [{ name = "shell.exec", arguments = { command = "{input}" } }] }, { text = "{tool_results}" }]
[sandbox]
idle_standby_seconds = 1
"#;

struct Nodes {
    c: Cluster,
    _store: tempfile::TempDir,
    session: String,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for n in &mut self.c.nodes {
            n.kill();
        }
        for d in &self.c.dirs {
            unmount_under(d.path());
        }
    }
}

/// Two nodes sharing a workspace store in a directory, and a session of
/// the shell agent.
async fn two_nodes() -> Nodes {
    let store = tempfile::tempdir().unwrap();
    let location = store.path().to_str().unwrap().to_owned();
    two_nodes_on(store, &[("AGENTRT_WORKSPACE_STORE", location.as_str())]).await
}

async fn two_nodes_on(store: tempfile::TempDir, env: &[(&str, &str)]) -> Nodes {
    let c = cluster_with_env(2, LEASE_TTL, env);
    c.nodes[0].apply("shell", SHELL_AGENT).await;
    let session = c.nodes[0].session("shell").await;
    Nodes { c, _store: store, session }
}

impl Nodes {
    /// Runs a turn through `node` and returns what its shell command printed.
    async fn run(&self, node: usize, command: &str) -> String {
        let n = &self.c.nodes[node];
        let turn = n.submit(&self.session, command).await;
        let t = n.wait_turn(&self.session, &turn).await;
        assert_eq!(t["status"], "completed", "{command:?}: {t}");
        let events = n.events(&self.session).await;
        let done = events.iter().rev().find(|e| e["type"] == "tool.completed" && e["turn_id"] == turn.as_str()).expect("the shell call");
        assert_eq!(done["output"]["exit_code"], 0, "{command:?}: {done}");
        done["output"]["stdout"].as_str().unwrap().to_owned()
    }

    async fn events(&self, node: usize) -> Vec<Value> {
        self.c.nodes[node].events(&self.session).await
    }

    /// Waits until the log records workspace generation `n`; returns its event.
    async fn saved(&self, generation: u64) -> Value {
        let mut found = None;
        eventually(20, &format!("workspace generation {generation} saved"), async || {
            found = self.events(1).await.into_iter().find(|e| e["type"] == "workspace.saved" && e["generation"] == generation);
            found.is_some()
        })
        .await;
        found.unwrap()
    }

    /// The executor of each turn.started, in order.
    async fn executors(&self) -> Vec<String> {
        of_type(&self.events(0).await, "turn.started").iter().map(|e| e["executor"].as_str().unwrap().to_owned()).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_follows_its_session_from_node_to_node() {
    let n = two_nodes().await;
    assert_eq!(n.run(0, "echo first > a.txt && cat a.txt").await, "first\n");
    let g1 = n.saved(1).await;
    assert_eq!(g1["node"], "node-0", "{g1}");
    assert!(g1["bytes"].as_u64().unwrap() < 8 << 20, "only the data is stored, not the whole image: {g1}");

    // The next turn runs on node-1, which fetches generation 1.
    assert_eq!(n.run(1, "cat a.txt && echo second >> a.txt").await, "first\n");
    assert_eq!(n.executors().await, ["node-0", "node-1"]);
    let created = of_type(&n.events(1).await, "sandbox.created").last().map(|e| (*e).clone()).unwrap();
    assert_eq!(created["reason"], "workspace generation 1 fetched", "{created}");
    assert_eq!(n.saved(2).await["node"], "node-1");

    // Back on node-0: its own copy is stale, so it fetches generation 2.
    // (A turn that used the sandbox saves it again: generation 3.)
    assert_eq!(n.run(0, "cat a.txt").await, "first\nsecond\n");
    assert_eq!(n.executors().await, ["node-0", "node-1", "node-0"]);
    assert_eq!(n.saved(3).await["node"], "node-0");

    // A file put through node-1's API (no turn) is saved when its sandbox
    // goes to standby, and node-0 serves it.
    let path = format!("/v1/sessions/{}/files/b.txt", n.session);
    let put = n.c.nodes[1].http.put(format!("{}{path}", n.c.nodes[1].url)).body("from the API").send().await.unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let g4 = n.saved(4).await;
    assert_eq!(g4["node"], "node-1", "{g4}");
    let got = n.c.nodes[0].http.get(format!("{}{path}", n.c.nodes[0].url)).send().await.unwrap();
    assert_eq!(got.text().await.unwrap(), "from the API");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_node_is_killed_another_node_runs_the_session_on_its_last_saved_workspace() {
    let mut n = two_nodes().await;
    n.run(0, "echo kept > kept.txt").await;
    n.saved(1).await;
    // A turn still running on node-0 when it dies: node-1 takes it over
    // after the lease and resumes it (the unfinished command is not re-run).
    let turn = n.c.nodes[0].submit(&n.session, "echo lost > lost.txt && sleep 600").await;
    eventually(20, "the command started on node-0", async || {
        n.events(1).await.iter().any(|e| e["type"] == "tool.requested" && e["turn_id"] == turn.as_str())
    })
    .await;
    n.c.nodes[0].kill();
    let t = n.c.nodes[1].wait_turn(&n.session, &turn).await;
    assert_eq!(t["status"], "completed", "{t}");
    let done = n.events(1).await.into_iter().rev().find(|e| e["type"] == "tool.completed").unwrap();
    assert_eq!(done["outcome"], "unknown", "{done}");
    // The files as of the last save: what the killed node wrote after it is gone.
    assert_eq!(n.run(1, "cat kept.txt; ls").await, "kept\nkept.txt\n");
    let created = of_type(&n.events(1).await, "sandbox.created").last().map(|e| (*e).clone()).unwrap();
    assert_eq!(created["reason"], "workspace generation 1 fetched", "{created}");
}

#[test]
fn a_workspace_store_needs_a_shared_store_and_a_location_it_understands() {
    let dir = tempfile::tempdir().unwrap();
    let dump = |env: &[(&str, &str)]| {
        let out = std::process::Command::new(BIN)
            .args(["config", "dump", "--data-dir"])
            .arg(dir.path())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, _, err) = dump(&[("AGENTRT_WORKSPACE_STORE", "/srv/ws")]);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("workspace-store moves workspaces between nodes"), "{err}");
    let pg = [("AGENTRT_STORE", "postgres://u:p@127.0.0.1:1/db")];
    let (code, _, err) = dump(&[pg[0], ("AGENTRT_WORKSPACE_STORE", "shared/ws")]);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("an absolute directory, a file:// URL or an s3:// URL"), "{err}");
    let (code, out, err) = dump(&[pg[0], ("AGENTRT_WORKSPACE_STORE", "s3://bucket/agentrt")]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("workspace-store = \"s3://bucket/agentrt\""), "{out}");
}

/// An S3-compatible server (moto's, from the test venv) on a free port.
struct S3Server {
    child: std::process::Child,
    url: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn s3_server() -> S3Server {
    let python = std::env::var("AGENTRT_TEST_PYTHON").expect("AGENTRT_TEST_PYTHON is not set: run the suite with ./scripts/test.sh");
    let moto = std::path::Path::new(&python).with_file_name("moto_server");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new(&moto)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", moto.display()));
    let server = S3Server { child, url: format!("http://127.0.0.1:{port}") };
    let http = reqwest::Client::new();
    eventually(30, "the S3 server answers", async || http.get(&server.url).send().await.is_ok()).await;
    let made = http.put(format!("{}/workspaces", server.url)).send().await.unwrap();
    assert!(made.status().is_success(), "create bucket: {}", made.status());
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_follows_its_session_through_an_s3_store() {
    let s3 = s3_server().await;
    let env = [
        ("AGENTRT_WORKSPACE_STORE", "s3://workspaces/agentrt"),
        ("AWS_ENDPOINT", s3.url.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ];
    let n = two_nodes_on(tempfile::tempdir().unwrap(), &env).await;
    n.run(0, "head -c 20000000 /dev/urandom > big.bin && sha256sum big.bin > sum && echo through s3 > a.txt").await;
    let saved = n.saved(1).await;
    assert!(saved["object"].as_str().unwrap().starts_with("workspaces/"), "{saved}");
    assert!(saved["bytes"].as_u64().unwrap() > 20_000_000, "several upload parts: {saved}");
    // The object is in the bucket, under the configured prefix.
    let listing = reqwest::get(format!("{}/workspaces?prefix=agentrt/", s3.url)).await.unwrap().text().await.unwrap();
    assert!(listing.contains(saved["object"].as_str().unwrap()), "{listing}");
    assert_eq!(n.run(1, "sha256sum -c sum && cat a.txt").await, "big.bin: OK\nthrough s3\n");
}
