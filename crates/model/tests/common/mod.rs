//! A local HTTP server for provider tests, and what it saw.

use std::sync::{Arc, Mutex};

use agentrt_types::spec::ModelSpec;
use axum::http::HeaderMap;
use axum::Router;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// The environment variable the tests name as `api_key_env`. Cargo (and
/// nextest) set it for every test process, so no test has to call
/// `set_var` while other threads read the environment.
pub const KEY_ENV: &str = "CARGO_PKG_NAME";
/// The API key the server must receive.
pub const KEY: &str = env!("CARGO_PKG_NAME");

/// A server on 127.0.0.1 that stops when dropped.
pub struct TestServer {
    pub base_url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `router` on a free local port.
pub async fn serve(router: Router) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a local port");
    let addr = listener.local_addr().expect("a bound socket has an address");
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.expect("test server runs");
    });
    TestServer { base_url: format!("http://{addr}"), task }
}

/// Requests a test server received: chosen headers and the JSON body.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<Value>>>);

impl Recorder {
    /// Records `headers` (only those named) and `body`.
    pub fn record(&self, headers: &HeaderMap, names: &[&str], body: &Value) {
        let mut seen = serde_json::Map::new();
        for name in names {
            let value = headers.get(*name).map(|v| v.to_str().expect("ASCII header").to_owned());
            seen.insert((*name).to_owned(), json!(value));
        }
        seen.insert("body".into(), body.clone());
        self.0.lock().expect("no test panicked holding the lock").push(Value::Object(seen));
    }

    /// Everything recorded so far.
    pub fn requests(&self) -> Vec<Value> {
        self.0.lock().expect("no test panicked holding the lock").clone()
    }
}

/// A model spec pointing at a test server.
pub fn spec(provider: &str, base_url: &str, stream: bool) -> ModelSpec {
    ModelSpec {
        provider: provider.into(),
        model: "test-model".into(),
        base_url: Some(base_url.into()),
        api_key_env: Some(KEY_ENV.into()),
        temperature: None,
        max_tokens: None,
        stream,
        script: vec![],
    }
}
