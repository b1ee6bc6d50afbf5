//! A small TTL cache (bounded; expired entries are purged when it fills).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct TtlCache<K, V> {
    map: Mutex<HashMap<K, (Instant, V)>>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    pub fn get(&self, key: &K, now: Instant) -> Option<V> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(key) {
            Some((until, v)) if now < *until => Some(v.clone()),
            _ => None,
        }
    }

    pub fn insert(&self, key: K, value: V, ttl: Duration, now: Instant) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.capacity && !map.contains_key(&key) {
            map.retain(|_, (until, _)| now < *until);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(key, (now + ttl, value));
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire() {
        let c = TtlCache::new(10);
        let t = Instant::now();
        c.insert("a", 1, Duration::from_secs(5), t);
        assert_eq!(c.get(&"a", t + Duration::from_secs(4)), Some(1));
        assert_eq!(c.get(&"a", t + Duration::from_secs(5)), None);
        assert_eq!(c.get(&"b", t), None);
    }

    #[test]
    fn capacity_is_bounded() {
        let c = TtlCache::new(3);
        let t = Instant::now();
        c.insert(1, 1, Duration::from_secs(1), t);
        c.insert(2, 2, Duration::from_secs(100), t);
        c.insert(3, 3, Duration::from_secs(100), t);
        // Full: the expired entry goes first.
        c.insert(4, 4, Duration::from_secs(100), t + Duration::from_secs(2));
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&2, t), Some(2));
        // Still full with live entries: cleared rather than growing.
        c.insert(5, 5, Duration::from_secs(100), t + Duration::from_secs(2));
        assert!(c.len() <= 3);
        assert_eq!(c.get(&5, t + Duration::from_secs(2)), Some(5));
    }
}
