//! The route configuration (`[models.NAME]` in the server's TOML) and its validation.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderValue;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use crate::route::Route;
use crate::GatewayError;

/// The providers a route can name.
const PROVIDERS: &str = "\"openai\" (any OpenAI-compatible Chat Completions API)";

/// Body fields a route's `params` may not set: the gateway owns `model`, the client owns the
/// conversation, and `stream` decides the shape of the reply the caller gets back.
const RESERVED_PARAMS: [&str; 3] = ["model", "messages", "stream"];

/// One named route, from `[models.NAME]` in the server's TOML config.
///
/// `Debug` prints `api-key` as `<redacted>`: keys live only in the server config and the
/// environment, and never reach a log.
#[derive(Clone, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RouteSpec {
    /// The API the upstream speaks. Only `"openai"` for now: any OpenAI-compatible Chat
    /// Completions API.
    pub provider: String,
    /// Where the API lives, e.g. `https://api.openai.com/v1`; calls go to
    /// `POST {base-url}/chat/completions`.
    pub base_url: String,
    /// The upstream model id, sent as `model` in the body.
    pub model: String,
    /// The environment variable holding the provider key (must be set when named).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The provider key inline in the server config (instead of `api-key-env`).
    #[serde(default)]
    pub api_key: Option<String>,
    /// Time for one attempt on this route: waiting for a concurrency slot plus the whole
    /// response (for a stream: until the response headers).
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
    /// Calls in flight to this route at once (a stream counts until it ends); more wait,
    /// within `timeout-seconds`.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Routes tried in order when this one times out, is refused, or answers 429 or 5xx.
    /// Their own fallbacks are not followed.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// USD per million tokens.
    #[serde(default)]
    pub price: Price,
    /// Body fields added when the client did not set them (e.g. `temperature`). A field the
    /// client sent, even as `null`, is left as the client sent it.
    #[serde(default)]
    pub params: Map<String, Value>,
}

fn default_timeout_seconds() -> u64 {
    120
}

fn default_max_concurrency() -> usize {
    64
}

impl fmt::Debug for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteSpec")
            .field("provider", &self.provider)
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key_env", &self.api_key_env)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout_seconds", &self.timeout_seconds)
            .field("max_concurrency", &self.max_concurrency)
            .field("fallbacks", &self.fallbacks)
            .field("price", &self.price)
            .field("params", &self.params)
            .finish()
    }
}

/// What a route's tokens cost, in USD per million tokens (shared with the
/// agent loop's accounting).
pub use agentrt_types::event::Price;

/// Validates the routes and builds their runtime state, indexed in name order.
pub(crate) fn build(specs: BTreeMap<String, RouteSpec>) -> Result<(Vec<Route>, HashMap<String, usize>), GatewayError> {
    let index: HashMap<String, usize> = specs.keys().enumerate().map(|(i, name)| (name.clone(), i)).collect();
    check_fallbacks(&specs, &index)?;
    let mut routes = Vec::with_capacity(specs.len());
    for (name, spec) in specs {
        let fallbacks = spec.fallbacks.iter().map(|f| index[f]).collect();
        routes.push(route(name, spec, fallbacks)?);
    }
    Ok((routes, index))
}

fn config_error(route: &str, what: impl fmt::Display) -> GatewayError {
    GatewayError::Config(format!("route {route:?}: {what}"))
}

fn route(name: String, spec: RouteSpec, fallbacks: Vec<usize>) -> Result<Route, GatewayError> {
    if spec.provider != "openai" {
        return Err(config_error(&name, format_args!("unknown provider {:?}; supported: {PROVIDERS}", spec.provider)));
    }
    if spec.model.trim().is_empty() {
        return Err(config_error(&name, "model is empty; set it to the upstream model id"));
    }
    let url = chat_url(&spec.base_url).ok_or_else(|| {
        config_error(&name, format_args!("base-url {:?} is not an http(s) URL; use e.g. \"https://api.openai.com/v1\"", spec.base_url))
    })?;
    let auth = auth_header(&name, &spec)?;
    if spec.timeout_seconds == 0 {
        return Err(config_error(&name, "timeout-seconds is 0; set it to at least 1"));
    }
    if spec.max_concurrency == 0 || spec.max_concurrency > Semaphore::MAX_PERMITS {
        return Err(config_error(&name, format_args!("max-concurrency must be between 1 and {}", Semaphore::MAX_PERMITS)));
    }
    let Price { input, output, cached_input } = spec.price;
    if [input, output, cached_input].iter().any(|p| !p.is_finite() || *p < 0.0) {
        return Err(config_error(&name, "price values must be finite and not negative"));
    }
    if let Some(key) = RESERVED_PARAMS.iter().find(|k| spec.params.contains_key(**k)) {
        return Err(config_error(&name, format_args!("params may not set {key:?}: the gateway or the client sets it")));
    }
    Ok(Route::new(
        name,
        url,
        auth,
        Duration::from_secs(spec.timeout_seconds),
        Arc::new(Semaphore::new(spec.max_concurrency)),
        fallbacks,
        spec,
    ))
}

/// `{base}/chat/completions`, if `base` is an http(s) URL with a host.
fn chat_url(base: &str) -> Option<reqwest::Url> {
    let parsed = reqwest::Url::parse(base).ok()?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return None;
    }
    reqwest::Url::parse(&format!("{}/chat/completions", base.trim_end_matches('/'))).ok()
}

/// The `Authorization` header for the route's key, marked sensitive so it is never printed.
fn auth_header(name: &str, spec: &RouteSpec) -> Result<Option<HeaderValue>, GatewayError> {
    let key = match (&spec.api_key, &spec.api_key_env) {
        (Some(_), Some(_)) => return Err(config_error(name, "set only one of api-key and api-key-env")),
        (Some(key), None) => key.trim().to_owned(),
        (None, Some(var)) => match std::env::var(var) {
            Ok(key) if !key.trim().is_empty() => key.trim().to_owned(),
            _ => {
                return Err(config_error(
                    name,
                    format_args!("api-key-env names the environment variable {var}, which is not set; set it, or remove api-key-env"),
                ))
            }
        },
        (None, None) => return Ok(None),
    };
    if key.is_empty() {
        return Err(config_error(name, "api-key is empty; set it or remove it"));
    }
    let mut value = HeaderValue::try_from(format!("Bearer {key}"))
        .map_err(|_| config_error(name, "the API key has characters that cannot go in an HTTP header"))?;
    value.set_sensitive(true);
    Ok(Some(value))
}

/// Every fallback names another route, at most once, and following fallbacks never leads
/// back to where it started. Calls do not follow fallbacks' fallbacks, so a cycle would not
/// loop; it is rejected because it is almost certainly a mistake in the config.
fn check_fallbacks(specs: &BTreeMap<String, RouteSpec>, index: &HashMap<String, usize>) -> Result<(), GatewayError> {
    for (name, spec) in specs {
        for (i, fallback) in spec.fallbacks.iter().enumerate() {
            if !index.contains_key(fallback) {
                let routes: Vec<&str> = specs.keys().map(String::as_str).collect();
                return Err(config_error(name, format_args!("fallback {fallback:?} is not a route; routes are: {}", routes.join(", "))));
            }
            if spec.fallbacks[..i].contains(fallback) {
                return Err(config_error(name, format_args!("fallback {fallback:?} is listed twice")));
            }
        }
    }
    // Depth-first search; a route met again while still on the path closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let names: Vec<&String> = specs.keys().collect();
    let mut marks = vec![Mark::New; names.len()];
    for start in 0..names.len() {
        if marks[start] != Mark::New {
            continue;
        }
        // (route, next fallback to visit)
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        marks[start] = Mark::OnPath;
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            let fallbacks = &specs[names[node]].fallbacks;
            let Some(fallback) = fallbacks.get(*next) else {
                marks[node] = Mark::Done;
                path.pop();
                continue;
            };
            *next += 1;
            let target = index[fallback];
            match marks[target] {
                Mark::New => {
                    marks[target] = Mark::OnPath;
                    path.push((target, 0));
                }
                Mark::OnPath => {
                    let from = path.iter().position(|(n, _)| *n == target).expect("a route on the path is in the path");
                    let cycle: Vec<&str> = path[from..].iter().map(|(n, _)| names[*n].as_str()).chain([names[target].as_str()]).collect();
                    return Err(config_error(
                        names[target],
                        format_args!("fallbacks form a cycle: {}; remove one of these fallbacks", cycle.join(" -> ")),
                    ));
                }
                Mark::Done => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_url_accepts_only_http_urls_and_appends_the_path() {
        assert_eq!(chat_url("https://api.openai.com/v1/").map(String::from).as_deref(), Some("https://api.openai.com/v1/chat/completions"));
        assert_eq!(chat_url("http://127.0.0.1:8080").map(String::from).as_deref(), Some("http://127.0.0.1:8080/chat/completions"));
        assert!(chat_url("ftp://example.com/v1").is_none());
        assert!(chat_url("api.openai.com/v1").is_none());
    }

    #[test]
    fn debug_redacts_the_key() {
        let spec: RouteSpec = serde_json::from_value(serde_json::json!({
            "provider": "openai", "base-url": "http://x", "model": "m", "api-key": "sk-secret"
        }))
        .expect("spec");
        let printed = format!("{spec:?}");
        assert!(!printed.contains("sk-secret"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
    }
}
