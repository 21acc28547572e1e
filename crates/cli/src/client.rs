//! A small client for the agentrt HTTP API, used by the CLI commands.

use anyhow::{anyhow, Context};
use futures_util::StreamExt;
use reqwest::{Method, RequestBuilder};
use serde_json::Value;

/// Client bound to one server URL.
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for `base` that sends `token` as `Authorization: Bearer`.
    pub fn new(base: &str, token: Option<&str>) -> anyhow::Result<Client> {
        let base = base.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(anyhow!("--server must be an http:// or https:// URL, got {base:?}"));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| anyhow!("the API key contains characters that cannot go in an HTTP header"))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Ok(Client { base, http: reqwest::Client::builder().default_headers(headers).build().context("build HTTP client")? })
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{}", self.base, path))
    }

    /// Sends a request and returns the JSON body, or the API's error as one line.
    pub async fn send(&self, req: RequestBuilder) -> anyhow::Result<Value> {
        let text = self.send_text(req).await?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Sends a request and returns the body as text (plain text, JSON
    /// Lines), or the API's error as one line.
    pub async fn send_text(&self, req: RequestBuilder) -> anyhow::Result<String> {
        let resp = req.send().await.map_err(|e| anyhow!("cannot reach agentrt at {}: {}", self.base, root_cause(&e)))?;
        let status = resp.status();
        let text = resp.text().await.context("read response")?;
        if status.is_success() {
            return Ok(text);
        }
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let code = body["error"]["code"].as_str().unwrap_or("error");
        let message = body["error"]["message"].as_str().map(str::to_owned).unwrap_or_else(|| body.to_string());
        let details: Vec<String> = body["error"]["details"]
            .as_array()
            .map(|d| d.iter().map(|x| format!("{}: {}", x["path"].as_str().unwrap_or("?"), x["message"].as_str().unwrap_or(""))).collect())
            .unwrap_or_default();
        if details.is_empty() {
            Err(anyhow!("{code}: {message}"))
        } else {
            Err(anyhow!("{code}: {}", details.join("; ")))
        }
    }

    /// GETs a body that is not JSON, as text.
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        self.send_text(self.request(Method::GET, path)).await
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    /// Streams a session's events after `after`, calling `on_event` for
    /// each until it returns `false`. Reconnects with `Last-Event-ID` if the
    /// connection drops.
    pub async fn follow(&self, session: &str, mut after: u64, mut on_event: impl FnMut(&Value) -> bool) -> anyhow::Result<()> {
        let mut failures = 0;
        loop {
            let req = self
                .request(Method::GET, &format!("/v1/sessions/{session}/events"))
                .header("accept", "text/event-stream")
                .header("last-event-id", after.to_string());
            let resp = match req.send().await {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => {
                    let status = r.status();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    return Err(anyhow!(
                        "{}: {}",
                        body["error"]["code"].as_str().unwrap_or("error"),
                        body["error"]["message"].as_str().unwrap_or(status.as_str())
                    ));
                }
                Err(e) => {
                    failures += 1;
                    if failures > 30 {
                        return Err(anyhow!("lost the event stream from {}: {}", self.base, root_cause(&e)));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    continue;
                }
            };
            failures = 0;
            let mut events = eventsource_stream::EventStream::new(resp.bytes_stream());
            while let Some(item) = events.next().await {
                let Ok(ev) = item else { break };
                let Ok(v) = serde_json::from_str::<Value>(&ev.data) else { continue };
                after = v["seq"].as_u64().unwrap_or(after);
                if !on_event(&v) {
                    return Ok(());
                }
            }
        }
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
