//! Logging and OpenTelemetry export for `serve`. Logs go to stderr as text
//! or JSON, filtered by `RUST_LOG`. Traces are exported over OTLP only when
//! an endpoint is configured (`otel-endpoint`, or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`);
//! otherwise no OpenTelemetry layer is installed and tracing costs nothing
//! beyond the log spans.

use anyhow::{bail, Context};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{Config, LogFormat};

/// Installed telemetry; flushes traces when shut down.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered.
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown() {
                tracing::warn!(error = %e, "flushing traces failed");
            }
        }
    }
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// The OTLP protocol to use: config, then `OTEL_EXPORTER_OTLP_PROTOCOL`, then HTTP/protobuf.
fn protocol(config: &Config) -> String {
    if !config.otel_protocol.is_empty() {
        return config.otel_protocol.clone();
    }
    std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|_| "http/protobuf".into())
}

fn exporter(config: &Config) -> anyhow::Result<Option<SpanExporter>> {
    let endpoint = config.otel_endpoint.trim_end_matches('/');
    if endpoint.is_empty() && !env_set("OTEL_EXPORTER_OTLP_ENDPOINT") && !env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return Ok(None);
    }
    let exporter = match protocol(config).as_str() {
        "grpc" => {
            let mut b = SpanExporter::builder().with_tonic();
            if !endpoint.is_empty() {
                b = b.with_endpoint(endpoint);
            }
            b.build()
        }
        "http/protobuf" => {
            let mut b = SpanExporter::builder().with_http().with_protocol(Protocol::HttpBinary);
            if !endpoint.is_empty() {
                b = b.with_endpoint(format!("{endpoint}/v1/traces"));
            }
            b.build()
        }
        other => bail!("unsupported OTLP protocol {other:?}: use \"grpc\" or \"http/protobuf\""),
    };
    Ok(Some(exporter.context("build the OTLP span exporter")?))
}

/// Installs the log subscriber and, if configured, the OTLP trace exporter.
/// Must run inside the Tokio runtime (the exporter's batch task lives there).
pub fn init(config: &Config) -> anyhow::Result<Telemetry> {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match config.log_format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
    };
    let provider = match exporter(config)? {
        None => None,
        Some(exporter) => {
            let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                exporter,
                opentelemetry_sdk::runtime::Tokio,
            )
            .build();
            let resource = Resource::builder().with_service_name("agentrt").build();
            Some(SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build())
        }
    };
    let otel = provider.as_ref().map(|p| {
        // Only the runtime's own spans (turns, model and tool calls, appends).
        let targets = Targets::new().with_target("agentrt_engine", tracing::Level::INFO);
        agentrt_engine::telemetry::otel_layer(p.tracer("agentrt")).with_filter(targets)
    });
    let _ = tracing_subscriber::registry().with(fmt).with(otel).try_init();
    if provider.is_some() {
        tracing::info!(protocol = %protocol(config), "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}
