//! Percentiles over samples.

use std::time::Duration;

/// p50/p99 and count of a set of durations.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub n: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub mean: Duration,
}

impl Stats {
    pub fn of(mut samples: Vec<Duration>) -> Stats {
        if samples.is_empty() {
            return Stats::default();
        }
        samples.sort();
        let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
        let total: Duration = samples.iter().sum();
        Stats { n: samples.len(), p50: at(0.50), p99: at(0.99), mean: total / samples.len() as u32 }
    }
}

/// Microseconds with one decimal.
pub fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}
