//! Harness for end-to-end tests: the real `agentrt` binary on a random port
//! with a temp data dir, killed with SIGKILL and restarted; a counting HTTP
//! server for tool side effects; an SSE reader.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as AxPath, State};
use axum::http::HeaderMap;
use axum::Json;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::Notify;

pub mod upstream;
#[allow(unused_imports)]
pub use upstream::upstream;

pub const BIN: &str = env!("CARGO_BIN_EXE_agentrt");

/// A running `agentrt serve`.
pub struct Server {
    child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    /// The admin key of the default tenant, printed at the first start.
    pub admin_key: String,
    /// Sends the admin key on every request.
    pub http: reqwest::Client,
}

/// Admin keys of the servers this test process started, by URL, so that
/// [`cli`] and [`authed`] can authenticate to them.
static KEYS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// The admin key of the server at `url`, if this process started it.
pub fn key_for(url: &str) -> Option<String> {
    KEYS.lock().unwrap().iter().rev().find(|(u, _)| u == url).map(|(_, k)| k.clone())
}

/// An HTTP client that authenticates with `key`.
pub fn client_with(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {key}").parse().unwrap());
    reqwest::Client::builder().default_headers(headers).build().unwrap()
}

/// An HTTP client with the admin key of the server at `url`.
pub fn authed(url: &str) -> reqwest::Client {
    client_with(&key_for(url).expect("a server this test started"))
}

/// Where the harness keeps a data dir's admin key across restarts (the
/// server prints it only at the first start).
fn key_file(data_dir: &Path) -> PathBuf {
    data_dir.join("test-admin-key")
}

impl Server {
    /// Starts the server on a random port and waits until it listens.
    pub fn start(data_dir: &Path) -> Server {
        Self::start_with_env(data_dir, &[])
    }

    /// Like [`Server::start`], with extra environment variables.
    pub fn start_with_env(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.envs(env.iter().copied());
        Self::start_command(cmd, data_dir)
    }

    /// Starts `cmd` (the agentrt binary, or a wrapper that runs it) as
    /// `… serve` on a random port and waits until it listens.
    pub fn start_command(mut cmd: Command, data_dir: &Path) -> Server {
        let mut child = cmd
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn agentrt");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(stdout).lines();
        let mut printed_key = None;
        let url = loop {
            let line = lines.next().expect("agentrt exited before listening").expect("read stdout");
            if line.starts_with("agentrt admin key") {
                printed_key = line.rsplit(' ').next().map(str::to_owned);
            }
            if let Some(rest) = line.strip_prefix("agentrt listening on ") {
                break rest.trim().to_owned();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let admin_key = match printed_key {
            Some(k) => {
                std::fs::write(key_file(data_dir), &k).expect("remember the admin key");
                k
            }
            None => std::fs::read_to_string(key_file(data_dir)).expect("no admin key printed at first start"),
        };
        assert!(admin_key.starts_with("art_"), "admin key {admin_key:?}");
        KEYS.lock().unwrap().push((url.clone(), admin_key.clone()));
        Server { child, url, data_dir: data_dir.to_owned(), http: client_with(&admin_key), admin_key }
    }

    /// SIGKILLs the server (no graceful shutdown).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.url, path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str) -> Value {
        let (s, v) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Registers an agent from TOML text.
    pub async fn apply(&self, name: &str, toml: &str) {
        let resp = self
            .http
            .put(format!("{}/v1/agents/{name}", self.url))
            .header("content-type", "application/toml")
            .body(toml.to_owned())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        assert_eq!(status, 201, "apply {name}: {}", resp.text().await.unwrap());
    }

    pub async fn session(&self, agent: &str) -> String {
        let (s, v) = self.post("/v1/sessions", json!({"agent": agent})).await;
        assert_eq!(s, 201, "{v}");
        v["id"].as_str().unwrap().to_owned()
    }

    pub async fn submit(&self, session: &str, input: &str) -> String {
        let (s, v) = self.post(&format!("/v1/sessions/{session}/turns"), json!({"input": input})).await;
        assert_eq!(s, 202, "{v}");
        v["turn_id"].as_str().unwrap().to_owned()
    }

    /// Waits (server-side, up to 60 s) until the turn ends; returns it.
    pub async fn wait_turn(&self, session: &str, turn: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (s, v) = self.call(reqwest::Method::GET, &format!("/v1/sessions/{session}/turns/{turn}?wait=20"), None).await;
            assert_eq!(s, 200, "{v}");
            if ["completed", "failed", "cancelled"].contains(&v["status"].as_str().unwrap_or("")) {
                return v;
            }
            assert!(Instant::now() < deadline, "turn {turn} did not end: {v}");
        }
    }

    /// Every event of the session.
    pub async fn events(&self, session: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = self.get(&format!("/v1/sessions/{session}/events?after={after}&limit=1000")).await;
            let events = page["events"].as_array().unwrap().clone();
            if events.is_empty() {
                return all;
            }
            after = events.last().unwrap()["seq"].as_u64().unwrap();
            all.extend(events);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        remove_sandbox_cgroups(&self.data_dir);
    }
}

/// Removes the cgroups of the sandboxes a killed server left. A running
/// node cleans up after its previous run at start; a test's data dir is
/// never started again, so its cgroups would stay behind.
fn remove_sandbox_cgroups(data_dir: &Path) {
    let Ok(runs) = std::fs::read_dir(data_dir.join("sandboxes/run")) else { return };
    let names: Vec<String> = runs.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    let Ok(roots) = std::fs::read_dir("/sys/fs/cgroup") else { return };
    let dirs: Vec<PathBuf> =
        roots.flatten().flat_map(|r| names.iter().map(move |n| r.path().join("agentrt").join(n))).filter(|d| d.exists()).collect();
    // The sandboxes die with the server (parent-death signal) but not at once.
    let deadline = Instant::now() + Duration::from_secs(5);
    for dir in dirs {
        while std::fs::remove_dir(&dir).is_err() && dir.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs `agentrt` with arguments; returns (exit code, stdout, stderr).
pub fn cli(args: &[&str], server: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    if let Some(url) = server {
        cmd.env("AGENTRT_URL", url);
        if let Some(key) = key_for(url) {
            cmd.env("AGENTRT_API_KEY", key);
        }
    }
    let out = cmd.output().expect("run agentrt");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Checks the log is contiguous from 1 and its chain verifies offline.
pub fn assert_log_verifies(data_dir: &Path) {
    let (code, out, err) = cli(&["audit", "verify", "--data-dir", data_dir.to_str().unwrap()], None);
    assert_eq!(code, 0, "audit verify failed:\n{out}\n{err}");
    assert!(out.contains("ok "), "{out}");
}

/// The events of one type.
pub fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

pub fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

pub fn types(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
}

/// A local HTTP server that counts tool calls by path and Idempotency-Key.
/// Paths listed in `hold` block each request until `release()`.
#[derive(Clone)]
pub struct Counter {
    pub url: String,
    state: Arc<CounterState>,
}

#[derive(Default)]
struct CounterState {
    calls: Mutex<Vec<(String, String)>>,
    traceparents: Mutex<Vec<(String, String)>>,
    arrived: Notify,
    hold: Mutex<HashMap<String, bool>>,
    release: Notify,
    delays: Mutex<HashMap<String, Duration>>,
    /// Status codes to answer with, per path, before answering normally.
    failures: Mutex<HashMap<String, Vec<u16>>>,
}

impl Counter {
    pub async fn start() -> Counter {
        let state = Arc::new(CounterState::default());
        let app = axum::Router::new().route("/{name}", axum::routing::post(counter_handler)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Counter { url, state }
    }

    /// Requests to `/name` block until [`Counter::release`].
    pub fn hold(&self, name: &str) {
        self.state.hold.lock().unwrap().insert(name.to_owned(), true);
    }

    /// The next `times` requests to `/name` get HTTP `status`.
    pub fn fail(&self, name: &str, status: u16, times: usize) {
        self.state.failures.lock().unwrap().insert(name.to_owned(), vec![status; times]);
    }

    pub fn delay(&self, name: &str, d: Duration) {
        self.state.delays.lock().unwrap().insert(name.to_owned(), d);
    }

    pub fn release(&self) {
        self.state.hold.lock().unwrap().clear();
        self.state.release.notify_waiters();
    }

    /// Waits until a request to `/name` has arrived.
    pub async fn wait_for(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let notified = self.state.arrived.notified();
            if self.count(name) > 0 {
                return;
            }
            assert!(Instant::now() < deadline, "no call to /{name} arrived");
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }

    pub fn count(&self, name: &str) -> usize {
        self.state.calls.lock().unwrap().iter().filter(|(n, _)| n == name).count()
    }

    /// `traceparent` headers seen for `/name`, in arrival order.
    pub fn traceparents(&self, name: &str) -> Vec<String> {
        self.state.traceparents.lock().unwrap().iter().filter(|(n, _)| n == name).map(|(_, t)| t.clone()).collect()
    }

    /// Idempotency keys seen for `/name`, in arrival order.
    pub fn keys(&self, name: &str) -> Vec<String> {
        self.state.calls.lock().unwrap().iter().filter(|(n, _)| n == name).map(|(_, k)| k.clone()).collect()
    }
}

async fn counter_handler(
    State(st): State<Arc<CounterState>>,
    AxPath(name): AxPath<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (axum::http::StatusCode, Json<Value>) {
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        st.traceparents.lock().unwrap().push((name.clone(), tp.to_owned()));
    }
    st.calls.lock().unwrap().push((name.clone(), key));
    st.arrived.notify_waiters();
    loop {
        let released = st.release.notified();
        if !st.hold.lock().unwrap().get(&name).copied().unwrap_or(false) {
            break;
        }
        released.await;
    }
    let delay = st.delays.lock().unwrap().get(&name).copied();
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let failure = st.failures.lock().unwrap().get_mut(&name).and_then(|f| f.pop());
    if let Some(status) = failure {
        let status = axum::http::StatusCode::from_u16(status).unwrap();
        return (status, Json(json!({"error": "injected failure"})));
    }
    (axum::http::StatusCode::OK, Json(json!({"ok": true, "tool": name, "echo": body})))
}

/// Reads SSE events from a session; `max` events or until `stop` matches.
pub async fn read_sse(url: &str, session: &str, last_event_id: Option<u64>, max: usize, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut req = authed(url).get(format!("{url}/v1/sessions/{session}/events")).header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id.to_string());
    }
    let resp = req.send().await.expect("open SSE");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut stream = eventsource_stream::EventStream::new(resp.bytes_stream());
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while out.len() < max {
        let next = tokio::time::timeout_at(deadline, stream.next()).await.expect("SSE read timed out");
        let Some(Ok(ev)) = next else { break };
        let v: Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(ev.id, v["seq"].to_string(), "SSE id must be the seq");
        let done = stop(&v);
        out.push(v);
        if done {
            break;
        }
    }
    out
}

/// A server with one agent registered and one session of it, plus the
/// counting tool server the agent's HTTP tools point at.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub counter: Counter,
    pub server: Server,
    pub session: String,
}

/// Starts a [`Rig`]: `COUNTER` in `toml` becomes the counter's URL; calls to
/// `/hold` (if given) block until released.
pub async fn rig(agent: &str, toml: &str, hold: Option<&str>) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let counter = Counter::start().await;
    if let Some(name) = hold {
        counter.hold(name);
    }
    let server = Server::start(dir.path());
    server.apply(agent, &toml.replace("COUNTER", &counter.url)).await;
    let session = server.session(agent).await;
    Rig { dir, counter, server, session }
}

/// Declares the `pay` HTTP tool's action for the policy schema.
pub const PAY_SCHEMA: &str = r#"action "pay" in ["call_tool"] appliesTo {
  principal: [Session], resource: [Tool],
  context: { input: { amount: Long, to: String }, tool: String, server: String, agent: String, time: Time, turn: Turn },
};"#;

/// An empty database on the test server (`AGENTRT_TEST_POSTGRES`).
pub fn fresh_pg_database() -> String {
    let admin = std::env::var("AGENTRT_TEST_POSTGRES")
        .expect("AGENTRT_TEST_POSTGRES is not set: run the suite with ./scripts/test.sh, which starts a PostgreSQL server");
    let name = format!("e2e_{}", uuid::Uuid::new_v4().simple());
    agentrt_store::postgres::create_database(&admin, &name).expect("create a database on AGENTRT_TEST_POSTGRES")
}

/// One non-idempotent HTTP tool call (`effect` on the counter), then an answer.
pub const EFFECT_AGENT: &str = r#"
[model]
provider = "scripted"
script = [{ tool_calls = [{ name = "effect", arguments = { charge = 10 } }] }, { text = "finished: {tool_results}" }]
[[tools.http]]
name = "effect"
url = "COUNTER/effect"
idempotent = false
"#;

/// Nodes on one PostgreSQL database, each with its own data dir.
pub struct Cluster {
    pub dirs: Vec<tempfile::TempDir>,
    pub nodes: Vec<Server>,
}

/// Starts `n` nodes named node-0… on one fresh database, with a lease of
/// `lease_ttl` seconds and the extra environment `env`.
pub fn cluster_with_env(n: usize, lease_ttl: u64, env: &[(&str, &str)]) -> Cluster {
    let url = fresh_pg_database();
    let mut dirs = Vec::new();
    let mut nodes: Vec<Server> = Vec::new();
    for i in 0..n {
        let dir = tempfile::tempdir().unwrap();
        if let Some(first) = nodes.first() {
            // Only the first node prints the bootstrap admin key.
            std::fs::write(dir.path().join("test-admin-key"), &first.admin_key).unwrap();
        }
        let (node, ttl) = (format!("node-{i}"), lease_ttl.to_string());
        let mut all =
            vec![("AGENTRT_STORE", url.as_str()), ("AGENTRT_NODE_ID", node.as_str()), ("AGENTRT_LEASE_TTL_SECONDS", ttl.as_str())];
        all.extend_from_slice(env);
        nodes.push(Server::start_with_env(dir.path(), &all));
        dirs.push(dir);
    }
    Cluster { dirs, nodes }
}

/// Unmounts workspaces a killed server left mounted under `dir`, and
/// removes the (empty) cgroups of its sandboxes, which a restarted server
/// would have removed.
pub fn unmount_under(dir: &Path) {
    if let Ok(runs) = std::fs::read_dir(dir.join("sandboxes/run")) {
        for run in runs.flatten() {
            for controller in ["memory", "cpu", "cpuacct", "pids", "freezer"] {
                let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(controller).join("agentrt").join(run.file_name()));
            }
        }
    }
    let Ok(dir) = std::fs::canonicalize(dir) else { return };
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for point in mounts.lines().filter_map(|l| l.split(' ').nth(4)) {
        if Path::new(point).starts_with(&dir) {
            let _ = std::process::Command::new("umount").arg("-l").arg(point).status();
        }
    }
}

/// Polls `check` until it is true or `secs` pass.
pub async fn eventually(secs: u64, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "not within {secs} s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
