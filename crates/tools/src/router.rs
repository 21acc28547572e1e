//! The tool router: every tool call goes through it. It waits for
//! rate-limit capacity (a token bucket per tool), keeps a circuit breaker per
//! target (an HTTP `host:port`), and retries transient failures of
//! idempotent tools with exponential backoff and jitter, keeping the call's
//! idempotency key. Failures come back as [`ToolError`]s that name their
//! cause, for the model to read.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agentrt_types::spec::RouterSpec;
use serde_json::Value;

use crate::{ToolContext, ToolError, ToolSet};

/// Longest delay between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// State of one target's circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Cooled down: one probe call may go through.
    HalfOpen,
    Open,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

/// A circuit that changed state during a call.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerChange {
    pub target: String,
    pub state: BreakerState,
    /// Consecutive failures when it changed.
    pub failures: u32,
}

/// What the router did with one call.
#[derive(Debug)]
pub struct RoutedCall {
    pub result: Result<Value, ToolError>,
    /// Calls made to the tool (0 when refused before the first).
    pub attempts: u32,
    pub breaker_changes: Vec<BreakerChange>,
}

#[derive(Debug)]
struct Breaker {
    state: BreakerState,
    failures: u32,
    opened_at: Instant,
    /// A half-open probe is in flight.
    probing: bool,
}

/// Routes the tool calls of one agent version; shared by its sessions.
pub struct ToolRouter {
    spec: RouterSpec,
    breakers: Mutex<HashMap<String, Breaker>>,
    buckets: crate::rate::RateLimiter,
}

impl ToolRouter {
    pub fn new(spec: RouterSpec) -> Self {
        ToolRouter { spec, breakers: Mutex::default(), buckets: Default::default() }
    }

    /// Runs one tool call through rate limit, breaker and retries.
    pub async fn call(&self, tools: &ToolSet, name: &str, ctx: &ToolContext, args: Value) -> RoutedCall {
        let mut changes = Vec::new();
        if let Some(rate) = tools.rate_per_second(name) {
            if let Err(e) = self.take_token(name, rate).await {
                return RoutedCall { result: Err(e), attempts: 0, breaker_changes: changes };
            }
        }
        let target = tools.target(name);
        let retryable = tools.is_idempotent(name);
        let mut attempts = 0;
        loop {
            if let Some(t) = &target {
                if let Err(e) = self.admit(t, &mut changes) {
                    return RoutedCall { result: Err(e), attempts, breaker_changes: changes };
                }
            }
            attempts += 1;
            let result = tools.call(name, ctx, args.clone()).await;
            let transient = matches!(&result, Err(e) if e.is_transient());
            if let Some(t) = &target {
                self.record(t, !transient, &mut changes);
            }
            if !transient || !retryable || attempts >= self.spec.max_attempts {
                return RoutedCall { result, attempts, breaker_changes: changes };
            }
            tokio::time::sleep(self.backoff(attempts)).await;
        }
    }

    /// Exponential backoff with full jitter: a random delay up to
    /// `backoff_ms · 2^(attempt-1)`, capped.
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = Duration::from_millis(self.spec.backoff_ms.saturating_mul(1 << (attempt - 1).min(16))).min(MAX_BACKOFF);
        ceiling.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    /// Lets a call through the target's circuit, or refuses it.
    fn admit(&self, target: &str, changes: &mut Vec<BreakerChange>) -> Result<(), ToolError> {
        let mut map = self.breakers.lock().expect("breaker lock poisoned");
        let b = map.entry(target.to_owned()).or_insert(Breaker {
            state: BreakerState::Closed,
            failures: 0,
            opened_at: Instant::now(),
            probing: false,
        });
        let cooldown = Duration::from_secs(self.spec.breaker_cooldown_seconds);
        match b.state {
            BreakerState::Closed => Ok(()),
            BreakerState::Open if b.opened_at.elapsed() >= cooldown => {
                b.state = BreakerState::HalfOpen;
                b.probing = true;
                changes.push(BreakerChange { target: target.to_owned(), state: BreakerState::HalfOpen, failures: b.failures });
                Ok(())
            }
            BreakerState::HalfOpen if !b.probing => {
                b.probing = true;
                Ok(())
            }
            BreakerState::Open | BreakerState::HalfOpen => Err(ToolError::BreakerOpen {
                target: target.to_owned(),
                failures: b.failures,
                retry_in_s: cooldown.saturating_sub(b.opened_at.elapsed()).as_secs().max(1),
            }),
        }
    }

    /// Records a call's outcome on the target's circuit.
    fn record(&self, target: &str, healthy: bool, changes: &mut Vec<BreakerChange>) {
        let mut map = self.breakers.lock().expect("breaker lock poisoned");
        let Some(b) = map.get_mut(target) else { return };
        b.probing = false;
        if healthy {
            if b.state != BreakerState::Closed {
                changes.push(BreakerChange { target: target.to_owned(), state: BreakerState::Closed, failures: b.failures });
            }
            b.state = BreakerState::Closed;
            b.failures = 0;
            return;
        }
        b.failures += 1;
        let trips = b.state == BreakerState::HalfOpen || (b.state == BreakerState::Closed && b.failures >= self.spec.breaker_failures);
        if trips {
            b.state = BreakerState::Open;
            b.opened_at = Instant::now();
            changes.push(BreakerChange { target: target.to_owned(), state: BreakerState::Open, failures: b.failures });
        }
    }

    /// Takes one token from the tool's bucket, waiting up to the bound.
    async fn take_token(&self, name: &str, rate: f64) -> Result<(), ToolError> {
        let wait = Duration::from_millis(self.spec.rate_limit_wait_ms);
        if self.buckets.take(name, rate, wait).await {
            Ok(())
        } else {
            Err(ToolError::RateLimited(name.to_owned(), self.spec.rate_limit_wait_ms))
        }
    }

    /// The longest a call waits for rate-limit capacity.
    pub fn rate_limit_wait(&self) -> Duration {
        Duration::from_millis(self.spec.rate_limit_wait_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(failures: u32, cooldown_s: u64) -> ToolRouter {
        ToolRouter::new(RouterSpec { breaker_failures: failures, breaker_cooldown_seconds: cooldown_s, ..RouterSpec::default() })
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_and_refuses() {
        let r = router(2, 60);
        let mut changes = Vec::new();
        for _ in 0..2 {
            r.admit("h:1", &mut changes).unwrap();
            r.record("h:1", false, &mut changes);
        }
        assert_eq!(changes, [BreakerChange { target: "h:1".into(), state: BreakerState::Open, failures: 2 }]);
        assert!(matches!(r.admit("h:1", &mut changes), Err(ToolError::BreakerOpen { failures: 2, .. })));
        // Another target is unaffected.
        r.admit("h:2", &mut changes).unwrap();
    }

    #[test]
    fn a_cooled_breaker_lets_one_probe_through_and_closes_on_success() {
        let r = router(1, 0);
        let mut changes = Vec::new();
        r.admit("h", &mut changes).unwrap();
        r.record("h", false, &mut changes);
        r.admit("h", &mut changes).unwrap();
        assert_eq!(changes.last().unwrap().state, BreakerState::HalfOpen);
        assert!(r.admit("h", &mut changes).is_err(), "only one probe at a time");
        r.record("h", true, &mut changes);
        assert_eq!(changes.last().unwrap().state, BreakerState::Closed);
        r.admit("h", &mut changes).unwrap();
    }

    #[test]
    fn a_failed_probe_reopens() {
        let r = router(1, 0);
        let mut changes = Vec::new();
        r.admit("h", &mut changes).unwrap();
        r.record("h", false, &mut changes);
        r.admit("h", &mut changes).unwrap();
        r.record("h", false, &mut changes);
        let states: Vec<_> = changes.iter().map(|c| c.state).collect();
        assert_eq!(states, [BreakerState::Open, BreakerState::HalfOpen, BreakerState::Open]);
    }

    #[tokio::test]
    async fn a_tool_over_its_rate_is_refused_by_name() {
        let r = ToolRouter::new(RouterSpec { rate_limit_wait_ms: 0, ..RouterSpec::default() });
        r.take_token("t", 1.0).await.unwrap();
        assert!(matches!(r.take_token("t", 1.0).await, Err(ToolError::RateLimited(name, 0)) if name == "t"));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let r = ToolRouter::new(RouterSpec { backoff_ms: 100, ..RouterSpec::default() });
        assert!(r.backoff(1) <= Duration::from_millis(100) && r.backoff(1) >= Duration::from_millis(50));
        assert!(r.backoff(3) >= Duration::from_millis(200));
        assert!(r.backoff(20) <= MAX_BACKOFF);
    }
}
