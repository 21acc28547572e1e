//! What the gateway adds to a call's latency: the same calls to a local upstream that answers
//! at once, made directly and through [`Gateway::chat`], compared at p50 and p99.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::{Gateway, Reply, RouteSpec};

/// Latencies and throughput of one way of calling.
#[derive(Clone, Debug, serde::Serialize, PartialEq)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub calls_per_second: f64,
}

/// [`overhead`]'s result.
#[derive(Clone, Debug, serde::Serialize, PartialEq)]
pub struct OverheadResult {
    pub concurrency: usize,
    /// Measured calls per way (warm-up calls not included).
    pub calls: usize,
    /// POST the request bytes to the upstream and read the answer's bytes.
    pub direct: Latency,
    /// Parse the request bytes, [`Gateway::chat`], serialize the answer: what the gateway
    /// endpoint does on top of the direct call, minus authentication and storage.
    pub gateway: Latency,
    /// `gateway.p50_us - direct.p50_us`.
    pub added_p50_us: f64,
    /// `gateway.p99_us - direct.p99_us`.
    pub added_p99_us: f64,
}

/// The upstream's fixed answer.
const ANSWER: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model-2025","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":21,"completion_tokens":9,"total_tokens":30,"prompt_tokens_details":{"cached_tokens":0}}}"#;

/// Measures `calls` calls each way, made by `concurrency` concurrent callers, after a warm-up
/// that opens the connections. Both ways use a `reqwest::Client` built the same way.
///
/// # Panics
/// If the local upstream cannot be started or a call fails: the numbers would mean nothing.
pub async fn overhead(concurrency: usize, calls: usize) -> OverheadResult {
    let upstream = Upstream::start().await;

    let gateway = Arc::new(bench_gateway(&upstream, concurrency, client()));
    let request = request_bytes();
    let gateway_call = move || {
        let (gateway, request) = (gateway.clone(), request.clone());
        async move {
            let body: Value = serde_json::from_slice(&request).expect("the request is JSON");
            match gateway.chat(body).await.expect("call through the gateway") {
                Reply::Json { body, record } => {
                    std::hint::black_box((serde_json::to_vec(&body).expect("JSON serializes"), record));
                }
                Reply::Stream { .. } => unreachable!("the bench does not stream"),
            }
        }
    };
    let result = compare(concurrency, calls, &upstream, gateway_call).await;
    upstream.stop().await;
    result
}

/// A gateway with one route, `bench`, to `upstream`.
pub fn bench_gateway(upstream: &Upstream, concurrency: usize, http: reqwest::Client) -> Gateway {
    let route: RouteSpec = serde_json::from_value(json!({
        "provider": "openai",
        "base-url": upstream.base_url,
        "model": "bench-model",
        "max-concurrency": concurrency.max(1),
        "price": {"input": 2.5, "output": 10.0, "cached-input": 1.25},
    }))
    .expect("the bench route is a valid spec");
    Gateway::new(BTreeMap::from([("bench".to_owned(), route)]), http).expect("the bench route is a valid route")
}

/// The request every bench call sends, for the route named `bench`.
pub fn request_bytes() -> Bytes {
    Bytes::from(
        serde_json::to_vec(&json!({
            "model": "bench",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Hello there, how are you?"}
            ],
            "temperature": 0.2
        }))
        .expect("JSON serializes"),
    )
}

/// Measures `calls` calls each way, made by `concurrency` concurrent
/// callers, after a warm-up: [`request_bytes`] posted straight to the
/// upstream, against `through`, which makes the same call another way.
pub async fn compare<F, Fut>(concurrency: usize, calls: usize, upstream: &Upstream, through: F) -> OverheadResult
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let concurrency = concurrency.max(1);
    let calls = calls.max(concurrency);
    let request = request_bytes();
    let direct_call = {
        let (http, url, request) = (client(), format!("{}/chat/completions", upstream.base_url), request.clone());
        move || {
            let call = http.post(&url).header(CONTENT_TYPE, "application/json").body(request.clone()).send();
            async move {
                let answer = call.await.and_then(reqwest::Response::error_for_status).expect("direct call");
                answer.bytes().await.expect("direct answer");
            }
        }
    };
    let warm_up = calls.min(200).max(concurrency);
    measure(concurrency, warm_up, direct_call.clone()).await;
    measure(concurrency, warm_up, through.clone()).await;
    let direct = measure(concurrency, calls, direct_call).await;
    let gateway = measure(concurrency, calls, through).await;

    OverheadResult {
        concurrency,
        calls,
        added_p50_us: gateway.p50_us - direct.p50_us,
        added_p99_us: gateway.p99_us - direct.p99_us,
        direct,
        gateway,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("a plain reqwest client builds")
}

/// `calls` calls of `call`, spread over `concurrency` tasks.
async fn measure<F, Fut>(concurrency: usize, calls: usize, call: F) -> Latency
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let started = Instant::now();
    let mut callers = JoinSet::new();
    for caller in 0..concurrency {
        let share = calls / concurrency + usize::from(caller < calls % concurrency);
        let call = call.clone();
        callers.spawn(async move {
            let mut latencies = Vec::with_capacity(share);
            for _ in 0..share {
                let start = Instant::now();
                call().await;
                latencies.push(start.elapsed());
            }
            latencies
        });
    }
    let mut latencies = Vec::with_capacity(calls);
    while let Some(done) = callers.join_next().await {
        latencies.extend(done.expect("a bench caller panicked"));
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Latency {
        p50_us: percentile_us(&latencies, 0.50),
        p99_us: percentile_us(&latencies, 0.99),
        calls_per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
    }
}

/// Nearest-rank percentile of sorted latencies, in microseconds.
fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else { return 0.0 };
    let rank = ((p * sorted.len() as f64).ceil() as usize).saturating_sub(1).min(last);
    sorted[rank].as_secs_f64() * 1e6
}

/// A Chat Completions server on localhost that answers every call at once with [`ANSWER`].
pub struct Upstream {
    /// Its OpenAI base URL (`http://127.0.0.1:PORT/v1`).
    pub base_url: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the bench upstream on localhost");
        let addr = listener.local_addr().expect("a bound listener has an address");
        let app = Router::new().route(
            "/v1/chat/completions",
            // Takes the body, so the connection is read to the end and stays reusable.
            post(|_body: Bytes| async { ([(CONTENT_TYPE, "application/json")], ANSWER) }),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(error) = serve.await {
                tracing::error!(%error, "bench upstream failed");
            }
        });
        Upstream { base_url: format!("http://{addr}/v1"), stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let latencies: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile_us(&latencies, 0.50), 50.0);
        assert_eq!(percentile_us(&latencies, 0.99), 99.0);
        assert_eq!(percentile_us(&latencies[..1], 0.99), 1.0);
        assert_eq!(percentile_us(&[], 0.5), 0.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overhead_measures_both_ways() {
        let result = overhead(2, 40).await;
        assert_eq!((result.concurrency, result.calls), (2, 40));
        for way in [&result.direct, &result.gateway] {
            assert!(way.p50_us > 0.0 && way.p99_us >= way.p50_us && way.calls_per_second > 0.0, "{result:?}");
        }
        assert_eq!(result.added_p50_us, result.gateway.p50_us - result.direct.p50_us);
    }
}
