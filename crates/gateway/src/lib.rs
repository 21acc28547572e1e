//! The model gateway: an OpenAI-compatible Chat Completions proxy behind
//! `POST /v1/gateway/openai/v1/chat/completions`, so that unmodified code using an OpenAI SDK
//! inside a sandbox can call models through the runtime, which attributes and prices every
//! call. This crate is the library that endpoint calls; HTTP, authentication and storage of
//! the records are the caller's.
//!
//! - Clients name a *route* in `model`; the route says where to send (`base-url`), which
//!   upstream `model`, which key, limits, prices and default `params`.
//! - A failing route (timeout, connection error, 429, 5xx) falls back to the routes in its
//!   `fallbacks`, in order. Fallbacks' own fallbacks are not followed: what a call may try is
//!   exactly the list under the route it named.
//! - A 429 with `Retry-After` takes the route out of rotation for every caller until then.
//! - Each route has a concurrency limit; waiting for a slot counts against its timeout.
//! - Every answered call yields a [`CallRecord`]: tokens (from `usage`, or estimated), cost,
//!   latency and every attempt.
//!
//! Nothing of the client's request but the body goes upstream: no client header (its
//! `Authorization` is the agentrt credential) is forwarded; the route's key is added.

mod accounting;
pub mod bench;
mod config;
mod route;
mod stream;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Instant, SystemTime};

pub use axum::body::Bytes;
use futures_util::stream::BoxStream;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde::ser::{SerializeMap, Serializer};
use serde_json::{Map, Value};
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::time::timeout_at;

use crate::accounting::Tokens;
pub use crate::config::{Price, RouteSpec};
use crate::route::Route;

/// Routes model calls to upstream Chat Completions APIs. `Send + Sync`; share it in an `Arc`.
pub struct Gateway {
    http: reqwest::Client,
    /// In name order.
    routes: Vec<Route>,
    by_name: HashMap<String, usize>,
}

/// A successful call.
pub enum Reply {
    /// Non-streaming: the upstream's JSON as it answered (its `model` included), and the
    /// call's record.
    Json { body: Value, record: CallRecord },
    /// Streaming: the upstream's status and SSE bytes, passed through chunk by chunk as they
    /// arrive, and the call's record once the stream has ended or been dropped (then it
    /// records what was seen up to that point).
    Stream { status: u16, bytes: BoxStream<'static, Result<Bytes, std::io::Error>>, record: oneshot::Receiver<CallRecord> },
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Json { body, record } => f.debug_struct("Json").field("body", body).field("record", record).finish(),
            Reply::Stream { status, .. } => f.debug_struct("Stream").field("status", status).finish_non_exhaustive(),
        }
    }
}

/// What one call cost and how it went, for attribution.
#[derive(Clone, Debug, serde::Serialize, PartialEq)]
pub struct CallRecord {
    /// The route that answered.
    pub route: String,
    pub provider: String,
    /// The upstream model the route sent.
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Input tokens served from the provider's cache (`usage.prompt_tokens_details.cached_tokens`).
    pub cached_tokens: u64,
    /// `((input - cached) * price.input + cached * price.cached-input + output * price.output) / 1e6`.
    pub cost_usd: f64,
    /// From the call's start to the full answer (a stream: its last byte, or the client
    /// dropping it).
    pub latency_us: u64,
    /// The upstream sent no usage: tokens are estimated at four characters per token.
    pub estimated: bool,
    /// Every route tried, in order.
    pub attempts: Vec<Attempt>,
}

/// One route tried by a call.
#[derive(Clone, Debug, serde::Serialize, PartialEq)]
pub struct Attempt {
    pub route: String,
    /// `ok`, `timeout`, `timeout: route busy`, `http 429`, `http 503`, `connect error: …`,
    /// `transport error: …`, `invalid answer: …`, `skipped: cooling down after 429 until …`,
    /// or for a stream that broke after it started, `stream interrupted: …`.
    pub outcome: String,
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.route, self.outcome)
    }
}

/// Why a call got no answer, or why the gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// `model` names no route (the caller answers 404 with [`Gateway::route_names`]).
    #[error("no model route named {0:?}")]
    NoRoute(String),
    /// The body is not a Chat Completions request (the caller answers 400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A route answered an error another route would not fix (a 4xx other than 429, or a
    /// redirect the client did not follow): the caller passes `status` and `body` (the
    /// upstream's, typically an OpenAI `{"error": …}` JSON) through as they are.
    #[error("the upstream answered HTTP {status}")]
    Upstream { status: u16, body: Bytes, attempts: Vec<Attempt> },
    /// Every route failed in a way worth retrying elsewhere (the caller answers 502, or 503
    /// when every attempt was skipped for a cooldown).
    #[error("every model route failed: {}", list(attempts))]
    Exhausted { attempts: Vec<Attempt> },
    /// The routes are misconfigured (from [`Gateway::new`]); the message names the route.
    #[error("model gateway config: {0}")]
    Config(String),
}

fn list(attempts: &[Attempt]) -> String {
    attempts.iter().map(Attempt::to_string).collect::<Vec<_>>().join("; ")
}

/// How one attempt ended, short of an answer.
enum Failure {
    /// Worth trying the next route; the attempt's outcome.
    Retry(String),
    /// A client error to return as it is.
    Final { status: StatusCode, body: Bytes },
}

/// What one attempt got.
enum Answer {
    Json(Value),
    Stream(reqwest::Response, OwnedSemaphorePermit),
}

impl Gateway {
    /// Validates the routes: every fallback names a route, no fallback cycles, a known
    /// provider, an http(s) `base-url`, the key's environment variable set if one is named,
    /// and sane limits and prices. The error names the route and what to fix.
    ///
    /// `http` is used for every call; its own timeouts, if any, apply on top of the routes'.
    pub fn new(routes: BTreeMap<String, RouteSpec>, http: reqwest::Client) -> Result<Gateway, GatewayError> {
        let (routes, by_name) = config::build(routes)?;
        Ok(Gateway { http, routes, by_name })
    }

    /// The routes' names, sorted.
    pub fn route_names(&self) -> Vec<String> {
        self.routes.iter().map(|r| r.name.clone()).collect()
    }

    /// Sends an OpenAI Chat Completions request body. `body["model"]` names the route; the
    /// upstream gets the route's `model`, and the route's `params` for fields the client did
    /// not set. With `"stream": true` the answer is a stream; then `stream_options` is set to
    /// `{"include_usage": true}` unless the client set it, and the usage chunk that brings
    /// passes through to the client too (clients ignore a chunk without choices).
    pub async fn chat(&self, body: Value) -> Result<Reply, GatewayError> {
        let started = Instant::now();
        let Value::Object(mut request) = body else {
            return Err(GatewayError::BadRequest("the body must be a JSON object".into()));
        };
        let name = match request.remove("model") {
            Some(Value::String(name)) => name,
            Some(_) => return Err(GatewayError::BadRequest("\"model\" must be a string: the name of a route".into())),
            None => return Err(GatewayError::BadRequest("\"model\" is missing: set it to the name of a route".into())),
        };
        let Some(&first) = self.by_name.get(&name) else { return Err(GatewayError::NoRoute(name)) };
        if !request.get("messages").is_some_and(Value::is_array) {
            return Err(GatewayError::BadRequest("\"messages\" must be an array of messages".into()));
        }
        let stream = match request.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(stream)) => *stream,
            Some(_) => return Err(GatewayError::BadRequest("\"stream\" must be true or false".into())),
        };
        if stream && !request.contains_key("stream_options") {
            request.insert("stream_options".into(), serde_json::json!({"include_usage": true}));
        }

        let chain = &self.routes[first].fallbacks;
        let mut attempts = Vec::with_capacity(1 + chain.len());
        for index in std::iter::once(first).chain(chain.iter().copied()) {
            let route = &self.routes[index];
            if let Some(until) = route.cooling_down(SystemTime::now()) {
                let outcome = format!("skipped: cooling down after 429 until {}", httpdate::fmt_http_date(until));
                attempts.push(Attempt { route: route.name.clone(), outcome });
                continue;
            }
            let payload = upstream_body(&route.spec.model, &request, &route.spec.params);
            match self.attempt(route, payload, stream).await {
                Ok(answer) => {
                    attempts.push(Attempt { route: route.name.clone(), outcome: "ok".into() });
                    let draft = Draft::new(route, started, attempts);
                    return Ok(match answer {
                        Answer::Json(body) => {
                            let (tokens, estimated) = match accounting::usage_of(&body) {
                                Some(tokens) => (tokens, false),
                                None => {
                                    let (input, output) = (accounting::estimate_input(&request), accounting::estimate_output(&body));
                                    (Tokens { input, output, cached: 0 }, true)
                                }
                            };
                            Reply::Json { record: draft.finish(tokens, estimated), body }
                        }
                        Answer::Stream(response, permit) => {
                            let status = response.status().as_u16();
                            let (tx, rx) = oneshot::channel();
                            let bytes = stream::Metered::new(response, draft, request, tx, permit);
                            Reply::Stream { status, bytes: Box::pin(bytes), record: rx }
                        }
                    });
                }
                Err(Failure::Retry(outcome)) => {
                    tracing::warn!(route = %route.name, %outcome, "model route failed; trying the next one if any");
                    attempts.push(Attempt { route: route.name.clone(), outcome });
                }
                Err(Failure::Final { status, body }) => {
                    attempts.push(Attempt { route: route.name.clone(), outcome: format!("http {}", status.as_u16()) });
                    return Err(GatewayError::Upstream { status: status.as_u16(), body, attempts });
                }
            }
        }
        Err(GatewayError::Exhausted { attempts })
    }

    /// One try on one route, within its timeout: a concurrency slot, then the whole answer
    /// (a stream: its headers).
    async fn attempt(&self, route: &Route, payload: Vec<u8>, stream: bool) -> Result<Answer, Failure> {
        let deadline = tokio::time::Instant::now() + route.timeout;
        let permit = match timeout_at(deadline, route.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            // The semaphore is never closed; treat it like a busy route all the same.
            Err(_) | Ok(Err(_)) => return Err(Failure::Retry("timeout: route busy".into())),
        };
        let mut request = self.http.post(route.url.clone()).header(CONTENT_TYPE, "application/json").body(payload);
        if let Some(auth) = &route.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let exchange = async {
            let response = request.send().await.map_err(transport_failure)?;
            let status = response.status();
            if status.is_success() {
                if stream {
                    return Ok(Answer::Stream(response, permit));
                }
                let bytes = response.bytes().await.map_err(transport_failure)?;
                drop(permit);
                return match serde_json::from_slice(&bytes) {
                    Ok(body @ Value::Object(_)) => Ok(Answer::Json(body)),
                    Ok(_) => Err(Failure::Retry("invalid answer: not a JSON object".into())),
                    Err(error) => Err(Failure::Retry(format!("invalid answer: {error}"))),
                };
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                let now = SystemTime::now();
                if let Some(until) = response.headers().get(RETRY_AFTER).and_then(|v| route::retry_after(v, now)) {
                    route.cool_down(until);
                }
                return Err(Failure::Retry("http 429".into()));
            }
            if status.is_server_error() {
                return Err(Failure::Retry(format!("http {}", status.as_u16())));
            }
            let body = response.bytes().await.map_err(transport_failure)?;
            Err(Failure::Final { status, body })
        };
        timeout_at(deadline, exchange).await.unwrap_or_else(|_| Err(Failure::Retry("timeout".into())))
    }
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway").field("routes", &self.route_names()).finish_non_exhaustive()
    }
}

/// The client's body for one route: `model` replaced by the route's upstream model, the
/// route's `params` added where the client did not set them. Serialized straight from the
/// client's map, without copying it.
fn upstream_body(model: &str, request: &Map<String, Value>, params: &Map<String, Value>) -> Vec<u8> {
    struct Body<'a> {
        model: &'a str,
        request: &'a Map<String, Value>,
        params: &'a Map<String, Value>,
    }
    impl serde::Serialize for Body<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut map = serializer.serialize_map(None)?;
            map.serialize_entry("model", self.model)?;
            // `model` was taken out of the request, and `params` cannot hold it.
            for (key, value) in self.request {
                map.serialize_entry(key, value)?;
            }
            for (key, value) in self.params.iter().filter(|(key, _)| !self.request.contains_key(*key)) {
                map.serialize_entry(key, value)?;
            }
            map.end()
        }
    }
    serde_json::to_vec(&Body { model, request, params }).expect("a JSON map with string keys always serializes")
}

fn transport_failure(error: reqwest::Error) -> Failure {
    let kind = if error.is_connect() { "connect error" } else { "transport error" };
    Failure::Retry(format!("{kind}: {}", error_chain(&error)))
}

/// An error and its sources, `: `-separated (reqwest's own message hides the cause).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The parts of a [`CallRecord`] known once a route has answered.
pub(crate) struct Draft {
    route: String,
    provider: String,
    model: String,
    price: Price,
    started: Instant,
    attempts: Vec<Attempt>,
}

impl Draft {
    fn new(route: &Route, started: Instant, attempts: Vec<Attempt>) -> Draft {
        Draft {
            route: route.name.clone(),
            provider: route.spec.provider.clone(),
            model: route.spec.model.clone(),
            price: route.spec.price,
            started,
            attempts,
        }
    }

    pub(crate) fn finish(self, tokens: Tokens, estimated: bool) -> CallRecord {
        CallRecord {
            route: self.route,
            provider: self.provider,
            model: self.model,
            input_tokens: tokens.input,
            output_tokens: tokens.output,
            cached_tokens: tokens.cached,
            cost_usd: tokens.cost(&self.price),
            latency_us: u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            estimated,
            attempts: self.attempts,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn upstream_body_rewrites_model_and_adds_only_unset_params() {
        let Value::Object(mut request) = json!({"model": "fast", "messages": [], "temperature": null, "user": "u"}) else { unreachable!() };
        request.remove("model");
        let Value::Object(params) = json!({"temperature": 0.2, "top_p": 0.9}) else { unreachable!() };
        let sent: Value = serde_json::from_slice(&upstream_body("gpt-x", &request, &params)).expect("JSON");
        assert_eq!(sent, json!({"model": "gpt-x", "messages": [], "temperature": null, "user": "u", "top_p": 0.9}));
    }
}
