//! A small in-memory map whose entries expire after a fixed time, for
//! answers that are read on every request and change rarely (API keys,
//! whether a tenant has budgets). Writers on this node clear it, so a change
//! made here applies at once; the time limit bounds how stale an entry can be.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(crate) struct TtlCache<V> {
    ttl: Duration,
    /// Most entries kept; the map is cleared when it would grow past this.
    max: usize,
    map: Mutex<HashMap<String, (V, Instant)>>,
}

impl<V: Clone> TtlCache<V> {
    pub fn new(ttl: Duration, max: usize) -> Self {
        TtlCache { ttl, max, map: Mutex::new(HashMap::new()) }
    }

    /// The value under `key`, unless it is missing or expired.
    pub fn get(&self, key: &str) -> Option<V> {
        let map = self.map.lock().expect("cache lock poisoned");
        map.get(key).filter(|(_, at)| at.elapsed() < self.ttl).map(|(v, _)| v.clone())
    }

    pub fn insert(&self, key: &str, value: V) {
        let mut map = self.map.lock().expect("cache lock poisoned");
        if map.len() >= self.max {
            map.clear();
        }
        map.insert(key.to_owned(), (value, Instant::now()));
    }

    pub fn clear(&self) {
        self.map.lock().expect("cache lock poisoned").clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_a_full_cache_starts_over() {
        let cache = TtlCache::new(Duration::from_millis(30), 2);
        cache.insert("a", 1);
        cache.insert("b", 2);
        assert_eq!((cache.get("a"), cache.get("b")), (Some(1), Some(2)));
        cache.insert("c", 3);
        assert_eq!((cache.get("a"), cache.get("c")), (None, Some(3)));
        let deadline = Instant::now() + Duration::from_secs(5);
        while cache.get("c").is_some() {
            assert!(Instant::now() < deadline, "the entry never expired");
            std::thread::yield_now();
        }
        cache.insert("d", 4);
        cache.clear();
        assert_eq!(cache.get("d"), None);
    }
}
