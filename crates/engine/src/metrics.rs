//! Prometheus metrics of the runtime. Labels are bounded: event kinds,
//! outcomes, and agent, model and tool names from registered specs — never
//! session or turn ids.

use std::sync::Mutex;
use std::time::Duration;

use agentrt_types::{Event, EventData, Outcome};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub agent: String,
    pub model: String,
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolLabels {
    pub tool: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs … ~100 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 22))
}

/// Every metric the engine and API record.
pub struct Metrics {
    registry: Mutex<Registry>,
    turns: Family<EventLabel, Counter>,
    step_seconds: Family<KindLabel, Histogram, fn() -> Histogram>,
    tokens: Family<TokenLabels, Counter>,
    tool_calls: Family<ToolLabels, Counter>,
    /// 0 closed, 1 half-open, 2 open.
    breaker_state: Family<TargetLabel, Gauge>,
    append_seconds: Histogram,
    /// Open SSE streams.
    pub sse_clients: Gauge,
    /// Sessions by status, refreshed when scraped.
    pub sessions: Family<StatusLabel, Gauge>,
    /// Sessions with an executor on this node.
    pub executors: Gauge,
    /// Executors that stepped back because their session's lease moved on
    /// (another node took the session over, or a handover).
    pub fenced: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("agentrt")),
            turns: Family::default(),
            step_seconds: Family::new_with_constructor(latency_histogram),
            tokens: Family::default(),
            tool_calls: Family::default(),
            breaker_state: Family::default(),
            append_seconds: latency_histogram(),
            sse_clients: Gauge::default(),
            sessions: Family::default(),
            executors: Gauge::default(),
            fenced: Counter::default(),
        };
        {
            let mut r = m.registry.lock().expect("metrics registry lock");
            r.register("turns", "Turn lifecycle events by event (started, resumed, completed, failed, cancelled)", m.turns.clone());
            r.register("step_duration_seconds", "Duration of model and tool calls by kind", m.step_seconds.clone());
            r.register("model_tokens", "Model tokens by agent, model and direction", m.tokens.clone());
            r.register("tool_calls", "Tool calls by tool and outcome", m.tool_calls.clone());
            r.register("tool_breaker_state", "Circuit state per tool target: 0 closed, 1 half-open, 2 open", m.breaker_state.clone());
            r.register("store_append_duration_seconds", "Latency of a durable append (commit included)", m.append_seconds.clone());
            r.register("sse_clients", "Open SSE event streams", m.sse_clients.clone());
            r.register("sessions", "Sessions by status", m.sessions.clone());
            r.register("executors_active", "Sessions with a running executor on this node", m.executors.clone());
            r.register("executors_fenced", "Executors that stepped back because the session's lease moved on", m.fenced.clone());
        }
        m
    }
}

impl Metrics {
    /// Records what appended events of a turn of `agent` on `model` imply.
    pub fn observe(&self, events: &[Event], agent: &str, model: &str) {
        for e in events {
            match &e.body.data {
                EventData::TurnStarted { .. } => self.turn("started"),
                EventData::TurnResumed { .. } => self.turn("resumed"),
                EventData::TurnCompleted { .. } => self.turn("completed"),
                EventData::TurnFailed { .. } => self.turn("failed"),
                EventData::TurnCancelled { .. } => self.turn("cancelled"),
                EventData::ModelCompleted { usage, latency_us, .. } => {
                    self.step("model", *latency_us);
                    let tokens = |direction: &str, n: u64| {
                        let labels = TokenLabels { agent: agent.into(), model: model.into(), direction: direction.into() };
                        self.tokens.get_or_create(&labels).inc_by(n);
                    };
                    tokens("input", usage.input_tokens);
                    tokens("output", usage.output_tokens);
                }
                EventData::ModelFailed { latency_us, .. } => self.step("model", *latency_us),
                EventData::ToolBreaker { target, state, .. } => {
                    let value = match state.as_str() {
                        "open" => 2,
                        "half_open" => 1,
                        _ => 0,
                    };
                    self.breaker_state.get_or_create(&TargetLabel { target: target.clone() }).set(value);
                }
                EventData::ToolCompleted { tool, outcome, latency_us, .. } => {
                    self.step("tool", *latency_us);
                    let outcome = match outcome {
                        Outcome::Ok => "ok",
                        Outcome::Error => "error",
                        Outcome::Unknown => "unknown",
                    };
                    self.tool_calls.get_or_create(&ToolLabels { tool: tool.clone(), outcome: outcome.into() }).inc();
                }
                _ => {}
            }
        }
    }

    fn turn(&self, event: &str) {
        self.turns.get_or_create(&EventLabel { event: event.into() }).inc();
    }

    fn step(&self, kind: &str, latency_us: u64) {
        self.step_seconds.get_or_create(&KindLabel { kind: kind.into() }).observe(latency_us as f64 / 1e6);
    }

    /// Records one append's latency.
    pub fn append(&self, took: Duration) {
        self.append_seconds.observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().expect("metrics registry lock");
        prometheus_client::encoding::text::encode(&mut out, &r).expect("writing to a String cannot fail");
        out
    }
}
