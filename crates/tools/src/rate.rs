//! Token buckets by key: used per tool by the router and per tenant by the
//! engine. A bucket holds up to `ceil(rate)` tokens (the burst) and refills
//! at `rate` per second; a caller waits for a token up to a bound.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets, one per key.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Takes one token from `key`'s bucket, waiting for it up to `max_wait`;
    /// `false` if none would come in time.
    pub async fn take(&self, key: &str, rate: f64, max_wait: Duration) -> bool {
        let burst = rate.ceil().max(1.0);
        let deadline = Instant::now() + max_wait;
        loop {
            let wait = {
                let mut map = self.buckets.lock().expect("bucket lock poisoned");
                let b = map.entry(key.to_owned()).or_insert(Bucket { tokens: burst, updated: Instant::now() });
                let now = Instant::now();
                b.tokens = (b.tokens + now.duration_since(b.updated).as_secs_f64() * rate).min(burst);
                b.updated = now;
                if b.tokens >= 1.0 {
                    b.tokens -= 1.0;
                    return true;
                }
                Duration::from_secs_f64((1.0 - b.tokens) / rate)
            };
            if Instant::now() + wait > deadline {
                return false;
            }
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_up_to_the_bound_then_refuses() {
        let r = RateLimiter::default();
        assert!(r.take("t", 1.0, Duration::ZERO).await);
        assert!(!r.take("t", 1.0, Duration::ZERO).await);
        assert!(r.take("other", 1.0, Duration::ZERO).await, "keys have their own buckets");
        let started = Instant::now();
        for _ in 0..21 {
            assert!(r.take("fast", 20.0, Duration::from_secs(2)).await);
        }
        assert!(started.elapsed() >= Duration::from_millis(40), "the bucket refills at the rate, not faster");
    }
}
