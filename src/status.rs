//! Server-wide figures for `SetHandler rsession-status`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters kept by every child process.
#[derive(Debug, Default)]
pub struct Stats {
    pub created: AtomicU64,
    pub resumed: AtomicU64,
    pub rejected_cookies: AtomicU64,
    pub expired: AtomicU64,
    pub invalidated: AtomicU64,
    pub regenerated: AtomicU64,
    pub lock_waits: AtomicU64,
    pub lock_timeouts: AtomicU64,
    pub store_errors: AtomicU64,
    pub gc_runs: AtomicU64,
    pub gc_removed: AtomicU64,
}

impl Stats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Name/value pairs, in display order.
    pub fn figures(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("created", get(&self.created)),
            ("resumed", get(&self.resumed)),
            ("rejected_cookies", get(&self.rejected_cookies)),
            ("expired", get(&self.expired)),
            ("invalidated", get(&self.invalidated)),
            ("regenerated", get(&self.regenerated)),
            ("lock_waits", get(&self.lock_waits)),
            ("lock_timeouts", get(&self.lock_timeouts)),
            ("store_errors", get(&self.store_errors)),
            ("gc_runs", get(&self.gc_runs)),
            ("gc_removed", get(&self.gc_removed)),
        ]
    }
}

/// `key: value` lines (text) or one JSON object.
pub fn render(store: &str, live_sessions: Option<u64>, stats: &Stats, json: bool) -> String {
    let figures = stats.figures();
    if json {
        let mut map = serde_json::Map::new();
        map.insert("store".into(), store.into());
        map.insert(
            "live_sessions".into(),
            live_sessions.map_or(serde_json::Value::Null, Into::into),
        );
        for (k, v) in figures {
            map.insert(k.into(), v.into());
        }
        return serde_json::Value::Object(map).to_string() + "\n";
    }
    let mut out = format!("store: {store}\n");
    if let Some(n) = live_sessions {
        out.push_str(&format!("live_sessions: {n}\n"));
    }
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
        Stats::bump(&stats.created);
        let text = render("file:/x", Some(3), &stats, false);
        assert!(
            text.starts_with("store: file:/x\nlive_sessions: 3\ncreated: 1\n"),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render("file:/x", None, &stats, true)).unwrap();
        assert_eq!(json["created"], 1);
        assert_eq!(json["store"], "file:/x");
    }
}
