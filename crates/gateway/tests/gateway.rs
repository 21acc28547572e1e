//! The gateway against real HTTP upstreams on localhost: small axum servers that speak the
//! Chat Completions wire format, streaming included.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentrt_gateway::{Attempt, Bytes, CallRecord, Gateway, GatewayError, Reply, RouteSpec};
use axum::body::Body;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

/// Generous bound for things that should happen at once, so a broken gateway fails the test
/// instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(10);

// ---- test peers ----

/// What an upstream saw.
#[derive(Default)]
struct Seen {
    bodies: Mutex<Vec<Value>>,
    auth: Mutex<Vec<Option<String>>>,
}

impl Seen {
    fn calls(&self) -> usize {
        self.bodies.lock().expect("lock").len()
    }
    fn body(&self, i: usize) -> Value {
        self.bodies.lock().expect("lock")[i].clone()
    }
}

/// Serves `app` on a free localhost port; returns its base URL (`http://…/v1`).
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    format!("http://{addr}/v1")
}

/// An upstream whose `POST /v1/chat/completions` records the call, then answers with
/// `respond(call number, body)`.
async fn upstream<F, Fut>(respond: F) -> (String, Arc<Seen>)
where
    F: Fn(usize, Value) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send,
{
    let seen = Arc::new(Seen::default());
    let recorder = seen.clone();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |headers: HeaderMap, Json(body): Json<Value>| {
            let (seen, respond) = (recorder.clone(), respond.clone());
            async move {
                let n = {
                    let mut bodies = seen.bodies.lock().expect("lock");
                    bodies.push(body.clone());
                    bodies.len() - 1
                };
                let auth = headers.get(AUTHORIZATION).map(|v| v.to_str().expect("ascii").to_owned());
                seen.auth.lock().expect("lock").push(auth);
                respond(n, body).await
            }
        }),
    );
    (serve(app).await, seen)
}

/// An upstream that always answers `completion(content, usage)`.
async fn answering(content: &'static str) -> (String, Arc<Seen>) {
    upstream(move |_, _| async move { Json(completion(content, Some(usage(10, 5, 0)))).into_response() }).await
}

/// An upstream that always answers `status`.
async fn failing(status: StatusCode) -> (String, Arc<Seen>) {
    upstream(move |_, _| async move { (status, Json(json!({"error": {"message": "nope"}}))).into_response() }).await
}

/// A base URL where nothing listens.
fn refused() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    format!("http://127.0.0.1:{port}/v1")
}

fn completion(content: &str, usage: Option<Value>) -> Value {
    let mut body = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000, "model": "upstream-model-2025-01-01",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    });
    if let Some(usage) = usage {
        body["usage"] = usage;
    }
    body
}

fn usage(prompt: u64, completion: u64, cached: u64) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
           "prompt_tokens_details": {"cached_tokens": cached}})
}

/// An SSE response whose chunks are whatever the test sends into the channel, when it sends them.
fn sse(chunks: mpsc::Receiver<Bytes>) -> Response {
    let body =
        futures_util::stream::unfold(
            chunks,
            |mut chunks| async move { chunks.recv().await.map(|chunk| (Ok::<_, Infallible>(chunk), chunks)) },
        );
    Response::builder().header(CONTENT_TYPE, "text/event-stream").body(Body::from_stream(body)).expect("response")
}

fn delta(content: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [{"index": 0, "delta": {"content": content}}]})
    )
}

// ---- gateway helpers ----

fn route(base_url: &str, extra: Value) -> RouteSpec {
    let mut spec = json!({"provider": "openai", "base-url": base_url, "model": "upstream-model"});
    for (key, value) in extra.as_object().expect("object") {
        spec[key] = value.clone();
    }
    serde_json::from_value(spec).expect("route spec")
}

fn gateway(routes: Vec<(&str, RouteSpec)>) -> Gateway {
    Gateway::new(routes.into_iter().map(|(name, spec)| (name.to_owned(), spec)).collect(), http()).expect("valid routes")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("client")
}

fn ask(route: &str) -> Value {
    json!({"model": route, "messages": [{"role": "user", "content": "Say hi"}]})
}

async fn chat_json(gateway: &Gateway, body: Value) -> (Value, CallRecord) {
    match tokio::time::timeout(PATIENCE, gateway.chat(body)).await.expect("answer in time") {
        Ok(Reply::Json { body, record }) => (body, record),
        other => panic!("expected a JSON reply, got {other:?}"),
    }
}

fn outcomes(attempts: &[Attempt]) -> Vec<(&str, &str)> {
    attempts.iter().map(|a| (a.route.as_str(), a.outcome.as_str())).collect()
}

// ---- tests ----

#[tokio::test]
async fn a_call_goes_upstream_with_the_route_model_params_and_key_and_is_priced_from_usage() {
    let (url, seen) = upstream(|_, _| async { Json(completion("Hi!", Some(usage(1200, 300, 200)))).into_response() }).await;
    let gateway = gateway(vec![(
        "fast",
        route(
            &url,
            json!({
                "model": "gpt-upstream", "api-key": "sk-route",
                "price": {"input": 2.0, "output": 8.0, "cached-input": 0.5},
                "params": {"temperature": 0.2, "top_p": 0.9}
            }),
        ),
    )]);
    let request = json!({
        "model": "fast",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}],
        "temperature": 0.7,
        "user": "agent-7",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    });

    let (body, record) = chat_json(&gateway, request.clone()).await;

    let mut expected_upstream = request;
    expected_upstream["model"] = json!("gpt-upstream");
    expected_upstream["top_p"] = json!(0.9); // the client's temperature wins over the route's
    assert_eq!(seen.body(0), expected_upstream);
    assert_eq!(seen.auth.lock().expect("lock")[0].as_deref(), Some("Bearer sk-route"));
    assert_eq!(body, completion("Hi!", Some(usage(1200, 300, 200))), "the upstream's answer, model included");
    let cost = (1000.0 * 2.0 + 200.0 * 0.5 + 300.0 * 8.0) / 1e6;
    assert!((record.cost_usd - cost).abs() < 1e-12, "{record:?}");
    assert!(record.latency_us > 0);
    assert_eq!(
        record,
        CallRecord {
            route: "fast".into(),
            provider: "openai".into(),
            model: "gpt-upstream".into(),
            input_tokens: 1200,
            output_tokens: 300,
            cached_tokens: 200,
            cost_usd: record.cost_usd,
            latency_us: record.latency_us,
            estimated: false,
            attempts: vec![Attempt { route: "fast".into(), outcome: "ok".into() }],
        }
    );
}

#[tokio::test]
async fn requests_naming_no_route_or_malformed_never_reach_an_upstream() {
    let (url, seen) = answering("hi").await;
    let gateway = gateway(vec![("fast", route(&url, json!({})))]);
    let cases = [
        (json!({"model": "slow", "messages": []}), "NoRoute"),
        (json!([1, 2]), "BadRequest"),
        (json!({"messages": []}), "BadRequest"),
        (json!({"model": "fast", "messages": "hi"}), "BadRequest"),
        (json!({"model": "fast", "messages": [], "stream": "yes"}), "BadRequest"),
    ];
    for (body, expected) in cases {
        let error = gateway.chat(body.clone()).await.expect_err("rejected");
        let kind = match &error {
            GatewayError::NoRoute(name) => {
                assert_eq!(name, "slow");
                "NoRoute"
            }
            GatewayError::BadRequest(_) => "BadRequest",
            other => panic!("{body}: unexpected {other:?}"),
        };
        assert_eq!(kind, expected, "{body}: {error}");
    }
    assert_eq!(seen.calls(), 0);
    assert_eq!(gateway.route_names(), ["fast"]);
}

#[tokio::test]
async fn falls_back_on_503_and_on_connection_refused() {
    let (down, down_seen) = failing(StatusCode::SERVICE_UNAVAILABLE).await;
    let (up, up_seen) = answering("from b").await;
    let gateway = gateway(vec![
        ("a", route(&down, json!({"fallbacks": ["gone", "b"]}))),
        ("gone", route(&refused(), json!({}))),
        ("b", route(&up, json!({"model": "model-b"}))),
    ]);

    let (body, record) = chat_json(&gateway, ask("a")).await;

    assert_eq!(body["choices"][0]["message"]["content"], "from b");
    assert_eq!((down_seen.calls(), up_seen.calls()), (1, 1));
    assert_eq!(up_seen.body(0)["model"], "model-b");
    assert_eq!((record.route.as_str(), record.model.as_str()), ("b", "model-b"));
    let attempts = outcomes(&record.attempts);
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert_eq!(attempts[0], ("a", "http 503"));
    assert_eq!(attempts[1].0, "gone");
    assert!(attempts[1].1.starts_with("connect error: "), "{attempts:?}");
    assert_eq!(attempts[2], ("b", "ok"));
}

#[tokio::test]
async fn a_429_with_retry_after_cools_the_route_down_for_every_caller_until_then() {
    let (limited, limited_seen) = upstream(|n, _| async move {
        if n == 0 {
            (StatusCode::TOO_MANY_REQUESTS, [(RETRY_AFTER, "1")], Json(json!({"error": {"message": "slow down"}}))).into_response()
        } else {
            Json(completion("from a", Some(usage(1, 1, 0)))).into_response()
        }
    })
    .await;
    let (spare, _) = answering("from b").await;
    let gateway = gateway(vec![("a", route(&limited, json!({"fallbacks": ["b"]}))), ("b", route(&spare, json!({})))]);

    let limited_at = Instant::now();
    let (_, first) = chat_json(&gateway, ask("a")).await;
    assert_eq!(outcomes(&first.attempts), [("a", "http 429"), ("b", "ok")]);

    // The next caller does not even try `a`.
    let (_, second) = chat_json(&gateway, ask("a")).await;
    assert_eq!(second.attempts[0].route, "a");
    assert!(second.attempts[0].outcome.starts_with("skipped: cooling down after 429 until "), "{second:?}");
    assert_eq!(second.route, "b");
    assert_eq!(limited_seen.calls(), 1);

    // Once the second has passed, `a` answers again.
    let deadline = limited_at + PATIENCE;
    let back = loop {
        let (body, record) = chat_json(&gateway, ask("a")).await;
        if record.route == "a" {
            break body;
        }
        assert!(record.attempts[0].outcome.starts_with("skipped: "), "{record:?}");
        assert!(Instant::now() < deadline, "route a never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(limited_at.elapsed() >= Duration::from_millis(900), "came back after {:?}", limited_at.elapsed());
    assert_eq!(back["choices"][0]["message"]["content"], "from a");
    assert_eq!(limited_seen.calls(), 2, "skipped calls never reached the upstream");
}

#[tokio::test]
async fn falls_back_when_a_route_times_out() {
    let (stuck, stuck_seen) = upstream(|_, _| async {
        std::future::pending::<()>().await;
        unreachable!()
    })
    .await;
    let (spare, _) = answering("from b").await;
    let gateway = gateway(vec![("a", route(&stuck, json!({"timeout-seconds": 1, "fallbacks": ["b"]}))), ("b", route(&spare, json!({})))]);

    let started = Instant::now();
    let (_, record) = chat_json(&gateway, ask("a")).await;

    assert_eq!(outcomes(&record.attempts), [("a", "timeout"), ("b", "ok")]);
    assert_eq!(stuck_seen.calls(), 1);
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test]
async fn a_client_error_is_passed_through_without_fallback() {
    let error_body = json!({"error": {"message": "Unsupported parameter: 'foo'", "type": "invalid_request_error"}});
    let answer = error_body.clone();
    let (strict, _) = upstream(move |_, _| {
        let answer = answer.clone();
        async move { (StatusCode::BAD_REQUEST, Json(answer)).into_response() }
    })
    .await;
    let (spare, spare_seen) = answering("from b").await;
    let gateway = gateway(vec![("a", route(&strict, json!({"fallbacks": ["b"]}))), ("b", route(&spare, json!({})))]);

    match gateway.chat(ask("a")).await {
        Err(GatewayError::Upstream { status, body, attempts }) => {
            assert_eq!(status, 400);
            assert_eq!(serde_json::from_slice::<Value>(&body).expect("JSON"), error_body);
            assert_eq!(outcomes(&attempts), [("a", "http 400")]);
        }
        other => panic!("expected the upstream's 400, got {other:?}"),
    }
    assert_eq!(spare_seen.calls(), 0);
}

#[tokio::test]
async fn when_every_route_fails_the_error_lists_every_attempt() {
    let (broken, _) = failing(StatusCode::INTERNAL_SERVER_ERROR).await;
    // A 429 without Retry-After: retried elsewhere, but no cooldown.
    let (limited, limited_seen) = failing(StatusCode::TOO_MANY_REQUESTS).await;
    let gateway = gateway(vec![
        ("a", route(&broken, json!({"fallbacks": ["b", "c"]}))),
        ("b", route(&refused(), json!({}))),
        ("c", route(&limited, json!({}))),
    ]);

    for call in 1..=2 {
        match gateway.chat(ask("a")).await {
            Err(GatewayError::Exhausted { attempts }) => {
                let attempts = outcomes(&attempts);
                assert_eq!(attempts.len(), 3, "{attempts:?}");
                assert_eq!(attempts[0], ("a", "http 500"));
                assert!(attempts[1].0 == "b" && attempts[1].1.starts_with("connect error: "), "{attempts:?}");
                assert_eq!(attempts[2], ("c", "http 429"));
            }
            other => panic!("call {call}: expected Exhausted, got {other:?}"),
        }
    }
    assert_eq!(limited_seen.calls(), 2);
}

#[tokio::test]
async fn a_stream_passes_through_chunk_by_chunk_and_records_the_final_usage() {
    let first = Bytes::from(delta("Hello"));
    let rest = [
        Bytes::from(delta(" world")),
        // The usage chunk, split mid-JSON across two writes.
        Bytes::from_static(b"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tok"),
        Bytes::from_static(b"ens\":17,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":5}}}\n\n"),
        Bytes::from_static(b"data: [DONE]\n\n"),
    ];
    let (release, released) = oneshot::channel::<()>();
    let released = Arc::new(Mutex::new(Some(released)));
    let (url, seen) = {
        let (first, rest) = (first.clone(), rest.clone());
        upstream(move |_, _| {
            let (first, rest, released) = (first.clone(), rest.clone(), released.clone());
            async move {
                let released = released.lock().expect("lock").take().expect("one call");
                let (tx, rx) = mpsc::channel(8);
                tokio::spawn(async move {
                    tx.send(first).await.expect("client reads");
                    released.await.expect("the test releases the rest");
                    for chunk in rest {
                        tx.send(chunk).await.expect("client reads");
                    }
                });
                sse(rx)
            }
        })
        .await
    };
    let gateway = gateway(vec![("fast", route(&url, json!({"price": {"input": 1.0, "output": 2.0, "cached-input": 0.1}})))]);
    let mut request = ask("fast");
    request["stream"] = json!(true);

    let Ok(Reply::Stream { status, mut bytes, mut record }) = gateway.chat(request).await else { panic!("expected a stream") };
    assert_eq!(status, 200);

    // The first chunk arrives while the upstream is still holding back the rest.
    let mut received = Vec::new();
    while received.len() < first.len() {
        let chunk = tokio::time::timeout(PATIENCE, bytes.next()).await.expect("the first chunk arrives alone");
        received.extend_from_slice(&chunk.expect("more bytes").expect("bytes"));
    }
    assert_eq!(received, first);
    assert!(record.try_recv().is_err(), "no record before the stream ended");

    release.send(()).expect("upstream waits");
    while let Some(chunk) = tokio::time::timeout(PATIENCE, bytes.next()).await.expect("the rest arrives") {
        received.extend_from_slice(&chunk.expect("bytes"));
    }
    let sent: Vec<u8> = std::iter::once(&first).chain(&rest).flat_map(|b| b.iter().copied()).collect();
    assert_eq!(String::from_utf8_lossy(&received), String::from_utf8_lossy(&sent), "bytes pass through unchanged");

    let record = record.await.expect("a record");
    assert_eq!((record.input_tokens, record.output_tokens, record.cached_tokens, record.estimated), (17, 2, 5, false));
    assert!((record.cost_usd - (12.0 * 1.0 + 5.0 * 0.1 + 2.0 * 2.0) / 1e6).abs() < 1e-12, "{record:?}");
    assert_eq!(outcomes(&record.attempts), [("fast", "ok")]);
    let upstream_body = seen.body(0);
    assert_eq!(
        (&upstream_body["model"], &upstream_body["stream"], &upstream_body["stream_options"]),
        (&json!("upstream-model"), &json!(true), &json!({"include_usage": true}))
    );
}

#[tokio::test]
async fn answers_without_usage_are_estimated_from_the_text() {
    let (url, seen) = upstream(|_, body| async move {
        if body["stream"] == json!(true) {
            let (tx, rx) = mpsc::channel(8);
            for chunk in [delta("Hello"), delta(" world"), "data: [DONE]\n\n".to_owned()] {
                tx.send(Bytes::from(chunk)).await.expect("room for every chunk");
            }
            sse(rx)
        } else {
            Json(completion("abcdefghij", None)).into_response()
        }
    })
    .await;
    let gateway = gateway(vec![("fast", route(&url, json!({"price": {"input": 1.0, "output": 1.0}})))]);
    // 9 characters of message content: 3 tokens.
    let request = json!({"model": "fast", "messages": [
        {"role": "system", "content": "1234"},
        {"role": "user", "content": [{"type": "text", "text": "56789"}]}
    ]});

    let (_, record) = chat_json(&gateway, request.clone()).await;
    assert_eq!((record.input_tokens, record.output_tokens, record.estimated), (3, 3, true), "10 characters answered");
    assert!((record.cost_usd - 6.0 / 1e6).abs() < 1e-15);

    let mut streamed = request;
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": false});
    let Ok(Reply::Stream { bytes, record, .. }) = gateway.chat(streamed).await else { panic!("expected a stream") };
    let received: Vec<_> = tokio::time::timeout(PATIENCE, bytes.collect::<Vec<_>>()).await.expect("stream ends");
    assert!(received.iter().all(Result::is_ok));
    let record = record.await.expect("a record");
    assert_eq!((record.input_tokens, record.output_tokens, record.estimated), (3, 3, true), "11 characters streamed");
    assert_eq!(seen.body(1)["stream_options"], json!({"include_usage": false}), "the client's stream_options are kept");
}

#[tokio::test]
async fn max_concurrency_one_serializes_calls() {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (url, _) = {
        let (in_flight, most) = (in_flight.clone(), most.clone());
        upstream(move |_, _| {
            let (in_flight, most) = (in_flight.clone(), most.clone());
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // A slow upstream: long enough for concurrent calls to overlap.
                tokio::time::sleep(Duration::from_millis(300)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Json(completion("done", Some(usage(1, 1, 0)))).into_response()
            }
        })
        .await
    };
    let gateway = gateway(vec![("one", route(&url, json!({"max-concurrency": 1}))), ("two", route(&url, json!({"max-concurrency": 2})))]);

    let (a, b) = tokio::join!(chat_json(&gateway, ask("one")), chat_json(&gateway, ask("one")));
    assert_eq!((a.1.route.as_str(), b.1.route.as_str()), ("one", "one"));
    assert_eq!(most.load(Ordering::SeqCst), 1, "the upstream saw two calls at once");
    // The same two calls on a route that allows two do overlap: the check above can fail.
    tokio::join!(chat_json(&gateway, ask("two")), chat_json(&gateway, ask("two")));
    assert_eq!(most.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_stream_holds_its_slot_until_dropped_and_then_records_what_was_seen() {
    let (url, _) = upstream(|_, body| async move {
        if body["stream"] != json!(true) {
            return Json(completion("plain", Some(usage(1, 1, 0)))).into_response();
        }
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            tx.send(Bytes::from(delta("abcdefgh"))).await.expect("client reads");
            // Never finishes on its own: stays open until the client goes away.
            tx.closed().await;
        });
        sse(rx)
    })
    .await;
    let (spare, _) = answering("from spare").await;
    let gateway = gateway(vec![
        ("one", route(&url, json!({"max-concurrency": 1, "timeout-seconds": 1, "fallbacks": ["spare"]}))),
        ("spare", route(&spare, json!({}))),
    ]);
    let mut request = ask("one");
    request["stream"] = json!(true);
    let Ok(Reply::Stream { mut bytes, record, .. }) = gateway.chat(request).await else { panic!("expected a stream") };
    let first = tokio::time::timeout(PATIENCE, bytes.next()).await.expect("first chunk");
    assert!(first.expect("bytes").expect("bytes").starts_with(b"data: "));

    // The open stream holds route one's only slot.
    let (_, busy) = chat_json(&gateway, ask("one")).await;
    assert_eq!(outcomes(&busy.attempts), [("one", "timeout: route busy"), ("spare", "ok")]);

    drop(bytes);
    let record = tokio::time::timeout(PATIENCE, record).await.expect("record in time").expect("a record");
    assert_eq!(record.route, "one");
    // "abcdefgh" (8 characters) seen; "Say hi" (6) asked.
    assert_eq!((record.input_tokens, record.output_tokens, record.estimated), (2, 2, true));

    let (_, after) = chat_json(&gateway, ask("one")).await;
    assert_eq!(outcomes(&after.attempts), [("one", "ok")], "the slot was given back");
}

#[test]
fn config_errors_name_the_route_and_what_to_fix() {
    #[derive(serde::Deserialize)]
    struct ServerConfig {
        models: BTreeMap<String, RouteSpec>,
    }
    let toml = r#"
        [models.fast]
        provider = "openai"
        base-url = "http://127.0.0.1:9/v1"
        model = "gpt-4o-mini"
        timeout-seconds = 5
        max-concurrency = 2
        fallbacks = ["cheap"]
        price = { input = 0.15, output = 0.6, cached-input = 0.075 }
        params = { temperature = 0.2 }

        [models.cheap]
        provider = "openai"
        base-url = "https://example.invalid/v1"
        model = "small"
    "#;
    let config: ServerConfig = toml::from_str(toml).expect("kebab-case config");
    assert_eq!(config.models["cheap"].timeout_seconds, 120);
    let routes = Gateway::new(config.models, http()).expect("valid").route_names();
    assert_eq!(routes, ["cheap", "fast"]);
    let typo = toml.replace("timeout-seconds", "timeout-secs");
    assert!(toml::from_str::<ServerConfig>(&typo).is_err(), "unknown keys are rejected");

    let base = "http://127.0.0.1:9/v1";
    /// Routes, and what the error must mention.
    type Case = (Vec<(&'static str, RouteSpec)>, &'static [&'static str]);
    let cases: Vec<Case> = vec![
        (vec![("fast", route(base, json!({"fallbacks": ["ghost"]})))], &["\"fast\"", "\"ghost\"", "not a route"]),
        (
            vec![
                ("a", route(base, json!({"fallbacks": ["b"]}))),
                ("b", route(base, json!({"fallbacks": ["c"]}))),
                ("c", route(base, json!({"fallbacks": ["a"]}))),
            ],
            &["\"a\"", "a -> b -> c -> a", "cycle"],
        ),
        (vec![("solo", route(base, json!({"fallbacks": ["solo"]})))], &["\"solo\"", "solo -> solo"]),
        (vec![("claude", route(base, json!({"provider": "anthropic"})))], &["\"claude\"", "\"anthropic\"", "\"openai\""]),
        (
            vec![("keyed", route(base, json!({"api-key-env": "AGENTRT_GATEWAY_TEST_NEVER_SET_1F2E"})))],
            &["\"keyed\"", "AGENTRT_GATEWAY_TEST_NEVER_SET_1F2E", "not set"],
        ),
        (vec![("local", route("localhost:8080", json!({})))], &["\"local\"", "base-url", "http(s)"]),
    ];
    for (routes, needles) in cases {
        let error = Gateway::new(routes.into_iter().map(|(n, s)| (n.to_owned(), s)).collect(), http()).expect_err("invalid config");
        let GatewayError::Config(message) = &error else { panic!("expected a config error, got {error:?}") };
        for needle in needles {
            assert!(message.contains(needle), "{message:?} should mention {needle}");
        }
    }
}
