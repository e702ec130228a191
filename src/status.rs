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
    /// Records written at the end of a request (a new session kept, a
    /// change, an access-time refresh, a regeneration).
    Saved,
    /// Time requests spent waiting for session locks, in microseconds.
    LockWaitMicros,
    /// The longest single lock wait, in microseconds (a high-water mark).
    LockWaitMaxMicros,
}

impl Counter {
    pub const ALL: [Counter; 15] = [
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
        Counter::Saved,
        Counter::LockWaitMicros,
        Counter::LockWaitMaxMicros,
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
            Counter::Saved => "saved",
            Counter::LockWaitMicros => "lock_wait_us",
            Counter::LockWaitMaxMicros => "lock_wait_max_us",
        }
    }

    /// The Prometheus description.
    fn help(self) -> &'static str {
        match self {
            Counter::Created => "Sessions created (kept for the first time).",
            Counter::Resumed => "Requests that resumed an existing session.",
            Counter::RejectedCookies => "Session cookies rejected as malformed or badly signed.",
            Counter::Expired => "Sessions found or swept expired.",
            Counter::Invalidated => "Sessions invalidated by a handler.",
            Counter::Regenerated => "Sessions given a new id by a handler.",
            Counter::LockWaits => {
                "Requests that waited for a session lock held by another request."
            }
            Counter::LockTimeouts => "Requests that gave up waiting for a session lock (503).",
            Counter::StoreErrors => "Session store errors seen by requests.",
            Counter::GcRuns => "Background sweeps of the store.",
            Counter::GcRemoved => "Records and orphaned scratch directories the sweeper removed.",
            Counter::Discarded => "New sessions nothing was written to, so nothing was kept.",
            Counter::Saved => "Session records written at the end of a request.",
            Counter::LockWaitMicros => "Time requests spent waiting for session locks.",
            Counter::LockWaitMaxMicros => "The longest single wait for a session lock.",
        }
    }

    /// Prometheus name (without the `rsession_` prefix) and type.
    fn metric(self) -> (String, &'static str) {
        match self {
            Counter::LockWaitMicros => ("lock_wait_seconds_total".into(), "counter"),
            Counter::LockWaitMaxMicros => ("lock_wait_max_seconds".into(), "gauge"),
            c => (format!("{}_total", c.name()), "counter"),
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

    /// Counts one lock wait of `micros`.
    pub fn lock_waited(&self, micros: u64) {
        self.bump(Counter::LockWaits);
        self.add(Counter::LockWaitMicros, micros);
        self.slots[Counter::LockWaitMaxMicros as usize].fetch_max(micros, Ordering::Relaxed);
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

/// The Prometheus text exposition format (0.0.4): one family per figure,
/// labelled with the store; times in seconds, as Prometheus has them.
pub fn render_prometheus(store: &str, stats: &Stats) -> String {
    let label = format!("{{store=\"{}\"}}", escape_label(store));
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, value: String| {
        out.push_str(&format!(
            "# HELP rsession_{name} {help}\n# TYPE rsession_{name} {kind}\nrsession_{name}{label} {value}\n"
        ));
    };
    family(
        "live_sessions",
        "gauge",
        "Sessions the store holds.",
        stats.live().to_string(),
    );
    for c in Counter::ALL {
        let (name, kind) = c.metric();
        let value = match c {
            Counter::LockWaitMicros | Counter::LockWaitMaxMicros => {
                format!("{:.6}", stats.get(c) as f64 / 1e6)
            }
            _ => stats.get(c).to_string(),
        };
        family(&name, kind, c.help(), value);
    }
    out
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// mod_status's `?auto` lines: the figures of `render`, each key prefixed
/// with `rsession_` so that they cannot clash with other modules' keys.
pub fn render_auto(store: &str, stats: &Stats) -> String {
    render(store, stats, false)
        .lines()
        .map(|l| format!("rsession_{l}\n"))
        .collect()
}

/// mod_status's HTML section.
pub fn render_html(store: &str, stats: &Stats) -> String {
    let mut out = String::from("<hr />\n<h2>mod_rsession</h2>\n<dl>\n");
    out.push_str(&format!(
        "<dt>store: {}</dt>\n<dt>live_sessions: {}</dt>\n",
        escape_html(store),
        stats.live()
    ));
    for (k, v) in stats.figures() {
        out.push_str(&format!("<dt>{k}: {v}</dt>\n"));
    }
    out.push_str("</dl>\n");
    out
}

fn escape_html(v: &str) -> String {
    v.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
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
    fn prometheus_families_have_help_type_and_escaped_labels() {
        let stats = Stats::default();
        stats.bump(Counter::Created);
        stats.lock_waited(1_500_000);
        stats.lock_waited(500_000);
        let text = render_prometheus("redis://h/0?prefix=\"a\\b", &stats);
        assert!(text.contains("# TYPE rsession_created_total counter\n"));
        assert!(text.contains("# TYPE rsession_live_sessions gauge\n"));
        assert!(text.contains(
            "rsession_lock_wait_seconds_total{store=\"redis://h/0?prefix=\\\"a\\\\b\"} 2.000000\n"
        ), "{text}");
        assert!(text.contains("rsession_lock_wait_max_seconds{"));
        assert!(text.contains("} 1.500000\n"));
        assert!(text.contains("rsession_lock_waits_total{"));
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples, Counter::ALL.len() + 1);
    }

    #[test]
    fn status_sections_escape_and_prefix() {
        let stats = Stats::default();
        stats.bump(Counter::Saved);
        let auto = render_auto("file:/x<y>", &stats);
        assert!(auto.starts_with("rsession_store: file:/x<y>\nrsession_live_sessions: 0\n"));
        assert!(auto.contains("rsession_saved: 1\n"));
        let html = render_html("file:/x<y>", &stats);
        assert!(html.contains("store: file:/x&lt;y&gt;"), "{html}");
    }

    #[test]
    fn slots_must_fit_every_counter() {
        let short: Box<[AtomicU64]> = vec![AtomicU64::new(0)].into_boxed_slice();
        assert!(Stats::in_slots(Box::new(short)).is_none());
    }
}
