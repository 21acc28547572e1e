//! Tracing spans of a turn, following the OpenTelemetry GenAI semantic
//! conventions (v1.37.0): `invoke_agent {agent}` per turn, `chat {model}`
//! per model call, `execute_tool {tool}` per tool call, and
//! `store.append` per durable append. Spans are plain `tracing` spans; the
//! binary decides whether an OpenTelemetry layer exports them. With no
//! exporter installed, span contexts are empty and nothing is propagated.
//!
//! W3C trace context: a turn's `traceparent` (the client's, or one made at
//! submission) is stored on `turn.submitted`, so a turn resumed after a
//! restart continues the same trace.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The GenAI semantic-conventions version the span attributes follow.
pub const GENAI_SEMCONV_VERSION: &str = "1.37.0";

/// The OpenTelemetry layer for these spans, without the per-span extras
/// (source location, thread, busy/idle timings) that cost time on every
/// span and say little about an agent's work.
pub fn otel_layer<S, T>(tracer: T) -> tracing_opentelemetry::OpenTelemetryLayer<S, T>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    T: opentelemetry::trace::Tracer + 'static,
    T::Span: Send + Sync,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_target(false)
}

/// Parses a W3C `traceparent` (`00-{trace id}-{span id}-{flags}`).
pub fn parse_traceparent(raw: &str) -> Option<SpanContext> {
    let mut parts = raw.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if version != "00" || parts.next().is_some() || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    let ctx = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    ctx.is_valid().then_some(ctx)
}

/// A fresh, sampled `traceparent` for a turn submitted without one.
pub fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string();
    format!("00-{trace}-{}-01", &span[..16])
}

/// The trace id in a `traceparent`.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    parse_traceparent(traceparent).map(|c| c.trace_id().to_string())
}

/// The `traceparent` of a span, if an exporter gave it a context.
pub fn traceparent_of(span: &Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
}

// Integer attributes are recorded as i64: OpenTelemetry has no unsigned
// integers, and the tracing bridge exports u64 values as strings.

/// The span of one turn, continuing `traceparent`'s trace.
pub fn turn_span(session: &str, turn: &str, agent: &str, version: u32, traceparent: Option<&str>) -> Span {
    let trace_id = traceparent.and_then(trace_id_of);
    let span = tracing::info_span!(
        "invoke_agent",
        otel.name = %format!("invoke_agent {agent}"),
        otel.kind = "internal",
        gen_ai.operation.name = "invoke_agent",
        gen_ai.agent.name = %agent,
        gen_ai.agent.version = i64::from(version),
        gen_ai.conversation.id = %session,
        session = %session,
        turn = %turn,
        trace_id = trace_id.as_deref().unwrap_or(""),
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        otel.status_code = Empty,
    );
    if let Some(parent) = traceparent.and_then(parse_traceparent) {
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
    span
}

/// The span of one model call.
pub fn chat_span(provider: &str, model: &str, step: u32) -> Span {
    tracing::info_span!(
        "chat",
        otel.name = %if model.is_empty() { "chat".to_owned() } else { format!("chat {model}") },
        otel.kind = "client",
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = %provider,
        gen_ai.request.model = %model,
        agentrt.step = i64::from(step),
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        gen_ai.output.messages = Empty,
        error.type = Empty,
        otel.status_code = Empty,
    )
}

/// The span of a borrower's part of a turn, under its lender's: its model
/// and tool calls are its children, so a decision can be followed through
/// every agent of a loan chain.
pub fn loan_span(borrower: &str, lender: &str) -> Span {
    tracing::info_span!(
        "invoke_agent",
        otel.name = %format!("invoke_agent {borrower}"),
        otel.kind = "internal",
        gen_ai.operation.name = "invoke_agent",
        gen_ai.agent.name = %borrower,
        agentrt.lender = %lender,
        agentrt.borrow.status = Empty,
    )
}

/// The span of one tool call.
pub fn tool_span(tool: &str, call_id: &str, step: u32, idempotent: bool) -> Span {
    tracing::info_span!(
        "execute_tool",
        otel.name = %format!("execute_tool {tool}"),
        otel.kind = "internal",
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = %tool,
        gen_ai.tool.call.id = %call_id,
        agentrt.step = i64::from(step),
        agentrt.tool.idempotent = idempotent,
        agentrt.tool.outcome = Empty,
        gen_ai.tool.call.arguments = Empty,
        gen_ai.tool.call.result = Empty,
        error.type = Empty,
        otel.status_code = Empty,
    )
}

/// The span of one durable append.
pub fn append_span(events: usize) -> Span {
    tracing::info_span!("store.append", otel.name = "store.append", otel.kind = "internal", agentrt.events = events as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_and_are_made_valid() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = parse_traceparent(tp).unwrap();
        assert_eq!(ctx.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(ctx.is_remote() && ctx.is_sampled());
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-XYZ-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        let made = new_traceparent();
        assert!(parse_traceparent(&made).is_some(), "{made}");
    }
}
