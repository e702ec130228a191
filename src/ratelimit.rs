//! At most one log line per key (a session, a store) and interval, with a
//! count of the lines held back, so that a burst of identical warnings
//! (lock timeouts under load) costs one line each interval, not one per
//! request. Per process.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::Hash;

/// Keys remembered at most; beyond, those whose interval is over go.
const MAX_KEYS: usize = 4096;

pub struct Limiter<K> {
    interval: u64,
    /// Key -> (when its last line was let through, lines held back since).
    seen: Mutex<HashMap<K, (u64, u64)>>,
}

impl<K: Hash + Eq + Copy> Limiter<K> {
    pub fn new(interval_secs: u64) -> Limiter<K> {
        Limiter {
            interval: interval_secs,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Some(held back since the last line) when a line for `key` is due at
    /// `now` (seconds); None when this one is held back.
    pub fn due(&self, key: K, now: u64) -> Option<u64> {
        let mut seen = self.seen.lock();
        if let Some((last, held)) = seen.get_mut(&key) {
            if now < last.saturating_add(self.interval) {
                *held += 1;
                return None;
            }
            let was = *held;
            *last = now;
            *held = 0;
            return Some(was);
        }
        if seen.len() >= MAX_KEYS {
            let interval = self.interval;
            seen.retain(|_, (last, _)| now < last.saturating_add(interval));
            if seen.len() >= MAX_KEYS {
                // Every key is in its interval: a flood of distinct keys
                // gets no line each rather than unbounded memory.
                return None;
            }
        }
        seen.insert(key, (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_and_interval_with_a_count() {
        let l = Limiter::new(60);
        assert_eq!(l.due(1, 1000), Some(0));
        assert_eq!(l.due(1, 1001), None);
        assert_eq!(l.due(1, 1059), None);
        assert_eq!(l.due(2, 1001), Some(0), "keys are independent");
        assert_eq!(l.due(1, 1060), Some(2), "two held back");
        assert_eq!(l.due(1, 1061), None);
    }

    #[test]
    fn memory_is_bounded() {
        let l = Limiter::new(60);
        for k in 0..MAX_KEYS as u64 {
            assert_eq!(l.due(k, 0), Some(0));
        }
        assert_eq!(l.due(u64::MAX, 1), None, "full, all within their interval");
        assert_eq!(l.due(u64::MAX, 61), Some(0), "expired keys make room");
        assert!(l.seen.lock().len() <= 2);
    }
}
