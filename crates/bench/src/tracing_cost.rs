//! Step overhead with OpenTelemetry tracing off and on, in the same process.
//! "Off" is what `serve` runs without an OTLP endpoint (a log layer at
//! `info`, so turn spans exist for log context); "on" adds the OpenTelemetry
//! layer exporting every span over OTLP/HTTP to a local sink. The layer is
//! switched with a reload handle, alternating rounds so drift hits both.

use anyhow::Context;
use axum::routing::post;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::inproc::Rig;
use crate::stats::Stats;

type OtelLayer = OpenTelemetryLayer<Registry, SdkTracer>;

/// p50 step overhead with tracing off and on (medians over rounds).
pub async fn compare(rig: &Rig, tool_calls: u32, turns: usize, rounds: usize) -> anyhow::Result<(Stats, Stats)> {
    // A local OTLP sink that accepts every export.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route("/v1/traces", post(|| async { "" }));
    let sink = tokio::spawn(async move { axum::serve(listener, app).await });

    let exporter =
        SpanExporter::builder().with_http().with_endpoint(format!("http://{addr}/v1/traces")).build().context("build OTLP exporter")?;
    let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
        exporter,
        opentelemetry_sdk::runtime::Tokio,
    )
    .build();
    let provider = SdkTracerProvider::builder().with_span_processor(processor).build();
    let tracer = provider.tracer("agentrt");

    let (otel, handle) = reload::Layer::new(None::<OtelLayer>);
    let log = tracing_subscriber::fmt::layer().with_writer(std::io::sink).with_filter(EnvFilter::new("info"));
    tracing_subscriber::registry().with(otel).with(log).try_init().context("install the tracing subscriber")?;

    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        handle.modify(|l| *l = None).context("tracing off")?;
        off.push(crate::inproc::step_overhead(rig, tool_calls, turns).await?);
        handle.modify(|l| *l = Some(agentrt_engine::telemetry::otel_layer(tracer.clone()))).context("tracing on")?;
        on.push(crate::inproc::step_overhead(rig, tool_calls, turns).await?);
    }
    handle.modify(|l| *l = None).context("tracing off")?;
    let _ = provider.shutdown();
    sink.abort();
    let median = |mut v: Vec<Stats>| {
        v.sort_by_key(|s| s.p50);
        v[v.len() / 2]
    };
    Ok((median(off), median(on)))
}
