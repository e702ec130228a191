//! Server-wide figures for `SetHandler rsession-status`. The counters live
//! in memory shared by every child process (the host maps it before the
//! fork), so any child can report the whole server.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Created,
    Resumed,
    RejectedCookies,
    Expired,
    Invalidated,
    Regenerated,
    LockWaits,
    LockTimeouts,
    StoreErrors,
    GcRuns,
    GcRemoved,
    /// New sessions that nothing was written to, so nothing was kept.
    Discarded,
}

impl Counter {
    pub const ALL: [Counter; 12] = [
        Counter::Created,
        Counter::Resumed,
        Counter::RejectedCookies,
        Counter::Expired,
        Counter::Invalidated,
        Counter::Regenerated,
        Counter::LockWaits,
        Counter::LockTimeouts,
        Counter::StoreErrors,
        Counter::GcRuns,
        Counter::GcRemoved,
        Counter::Discarded,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Counter::Created => "created",
            Counter::Resumed => "resumed",
            Counter::RejectedCookies => "rejected_cookies",
            Counter::Expired => "expired",
            Counter::Invalidated => "invalidated",
            Counter::Regenerated => "regenerated",
            Counter::LockWaits => "lock_waits",
            Counter::LockTimeouts => "lock_timeouts",
            Counter::StoreErrors => "store_errors",
            Counter::GcRuns => "gc_runs",
            Counter::GcRemoved => "gc_removed",
            Counter::Discarded => "discarded",
        }
    }
}

/// Slots: one per counter, then the live-session gauge.
pub const SLOTS: usize = Counter::ALL.len() + 1;
const LIVE: usize = Counter::ALL.len();

/// Memory holding one `AtomicU64` per slot.
pub type Slots = Box<dyn Deref<Target = [AtomicU64]> + Send + Sync>;

pub struct Stats {
    slots: Slots,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.figures()).finish()
    }
}

impl Default for Stats {
    /// Counters private to this process (tests, or when shared memory is
    /// not available).
    fn default() -> Self {
        let local: Box<[AtomicU64]> = (0..SLOTS).map(|_| AtomicU64::new(0)).collect();
        Stats {
            slots: Box::new(local),
        }
    }
}

impl Stats {
    /// Counters in `slots`, which must hold at least `SLOTS`.
    pub fn in_slots(slots: Slots) -> Option<Stats> {
        (slots.len() >= SLOTS).then_some(Stats { slots })
    }

    /// Sessions the store holds, kept current as sessions are kept and
    /// removed (and set from a count by the sweeper, which corrects drift
    /// from other servers sharing the store, and Redis's own expiry).
    pub fn live(&self) -> u64 {
        self.slots[LIVE].load(Ordering::Relaxed)
    }

    pub fn sessions_added(&self, n: u64) {
        self.slots[LIVE].fetch_add(n, Ordering::Relaxed);
    }

    pub fn sessions_removed(&self, n: u64) {
        let _ = self.slots[LIVE].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(n))
        });
    }

    pub fn set_live(&self, n: u64) {
        self.slots[LIVE].store(n, Ordering::Relaxed);
    }

    pub fn bump(&self, c: Counter) {
        self.add(c, 1);
    }

    pub fn add(&self, c: Counter, n: u64) {
        if n > 0 {
            self.slots[c as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.slots[c as usize].load(Ordering::Relaxed)
    }

    /// Name/value pairs, in display order.
    pub fn figures(&self) -> Vec<(&'static str, u64)> {
        Counter::ALL
            .iter()
            .map(|&c| (c.name(), self.get(c)))
            .collect()
    }
}

/// `key: value` lines (text) or one JSON object.
pub fn render(store: &str, stats: &Stats, json: bool) -> String {
    let figures = stats.figures();

    if json {
        let mut map = serde_json::Map::new();
        map.insert("store".into(), store.into());
        map.insert("live_sessions".into(), stats.live().into());
        for (k, v) in figures {
            map.insert(k.into(), v.into());
        }
        return serde_json::Value::Object(map).to_string() + "\n";
    }
    let mut out = format!("store: {store}\nlive_sessions: {}\n", stats.live());
    for (k, v) in figures {
        out.push_str(&format!("{k}: {v}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_and_json() {
        let stats = Stats::default();
        stats.bump(Counter::Created);
        stats.add(Counter::GcRemoved, 3);
        stats.sessions_added(4);
        stats.sessions_removed(1);
        let text = render("file:/x", &stats, false);
        assert!(
            text.starts_with("store: file:/x\nlive_sessions: 3\ncreated: 1\n"),
            "{text}"
        );
        assert!(text.contains("gc_removed: 3\n"));
        let json: serde_json::Value =
            serde_json::from_str(&render("file:/x", &stats, true)).unwrap();
        assert_eq!(json["created"], 1);
        assert_eq!(json["store"], "file:/x");
        assert_eq!(json["live_sessions"], 3);
        stats.sessions_removed(10);
        assert_eq!(stats.live(), 0, "never below zero");
    }

    #[test]
    fn slots_must_fit_every_counter() {
        let short: Box<[AtomicU64]> = vec![AtomicU64::new(0)].into_boxed_slice();
        assert!(Stats::in_slots(Box::new(short)).is_none());
    }
}
