//! A route's runtime state: where to send, the key, the concurrency limit and the 429
//! cooldown shared by every caller.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderValue;
use tokio::sync::Semaphore;

use crate::RouteSpec;

/// The longest cooldown a `Retry-After` can impose, so that one bogus header cannot take a
/// route out of service for days.
const MAX_COOLDOWN: Duration = Duration::from_secs(3600);

pub(crate) struct Route {
    pub name: String,
    pub spec: RouteSpec,
    /// `{base-url}/chat/completions`.
    pub url: reqwest::Url,
    /// `Bearer <key>`, marked sensitive.
    pub auth: Option<HeaderValue>,
    pub timeout: Duration,
    /// One permit per call in flight; a stream keeps its permit until it ends.
    pub permits: Arc<Semaphore>,
    /// Indices of the fallback routes, in order.
    pub fallbacks: Vec<usize>,
    /// Milliseconds since the Unix epoch until which the route is skipped after a 429 with
    /// `Retry-After`; 0 when it is not cooling down. Wall-clock time because `Retry-After`
    /// may be an HTTP date, and because the attempt outcome shows it.
    cooldown_until_ms: AtomicU64,
}

impl Route {
    pub fn new(
        name: String,
        url: reqwest::Url,
        auth: Option<HeaderValue>,
        timeout: Duration,
        permits: Arc<Semaphore>,
        fallbacks: Vec<usize>,
        spec: RouteSpec,
    ) -> Route {
        Route { name, spec, url, auth, timeout, permits, fallbacks, cooldown_until_ms: AtomicU64::new(0) }
    }

    /// When the route's cooldown ends, if it is cooling down at `now`.
    pub fn cooling_down(&self, now: SystemTime) -> Option<SystemTime> {
        let until = self.cooldown_until_ms.load(Ordering::Relaxed);
        (until > unix_ms(now)).then(|| UNIX_EPOCH + Duration::from_millis(until))
    }

    /// Skips the route until `until` (or a later cooldown another caller already set).
    pub fn cool_down(&self, until: SystemTime) {
        self.cooldown_until_ms.fetch_max(unix_ms(until), Ordering::Relaxed);
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// When a `Retry-After` header (delay in seconds, or an HTTP date) says to try again, if
/// that is after `now`; capped at [`MAX_COOLDOWN`].
pub(crate) fn retry_after(value: &HeaderValue, now: SystemTime) -> Option<SystemTime> {
    let text = value.to_str().ok()?.trim();
    let until = match text.parse::<u64>() {
        Ok(seconds) => now + Duration::from_secs(seconds).min(MAX_COOLDOWN),
        Err(_) => httpdate::parse_http_date(text).ok()?.min(now + MAX_COOLDOWN),
    };
    (until > now).then_some(until)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::now();
        let header = |s: &str| HeaderValue::from_str(s).expect("header");
        assert_eq!(retry_after(&header("2"), now), Some(now + Duration::from_secs(2)));
        assert_eq!(retry_after(&header("0"), now), None);
        assert_eq!(retry_after(&header("999999"), now), Some(now + MAX_COOLDOWN));

        // HTTP dates have whole seconds.
        let later = UNIX_EPOCH + Duration::from_secs(unix_ms(now) / 1000 + 30);
        assert_eq!(retry_after(&header(&httpdate::fmt_http_date(later)), now), Some(later));
        let earlier = UNIX_EPOCH + Duration::from_secs(unix_ms(now) / 1000 - 30);
        assert_eq!(retry_after(&header(&httpdate::fmt_http_date(earlier)), now), None);

        assert_eq!(retry_after(&header("soon"), now), None);
        assert_eq!(retry_after(&header("-1"), now), None);
    }
}
