//! The stored form of a session: timestamps, the idle and absolute limits it
//! was last written with (so a sweeper needs no request config), and the
//! key/value data.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod canonical;

/// Session data, kept sorted so exports are stable.
pub type Data = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Format version, for future migrations.
    #[serde(rename = "v")]
    pub version: u32,
    /// Unix seconds of creation.
    #[serde(rename = "c")]
    pub created: u64,
    /// Unix seconds of the last recorded access.
    #[serde(rename = "a")]
    pub accessed: u64,
    /// Idle timeout in force when written.
    #[serde(rename = "t")]
    pub idle_timeout: u64,
    /// Absolute lifetime in force when written; 0 = none.
    #[serde(rename = "l")]
    pub max_lifetime: u64,
    /// How far `accessed` may lag the last request (the touch interval in
    /// force: unchanged sessions are rewritten only that often), so the
    /// idle deadline allows for it. Absent in records of older versions.
    #[serde(rename = "g", default)]
    pub grace: u64,
    /// The `RSessionScope` that created the session: it is valid under
    /// that scope only. Records of older versions have none (and so are
    /// valid nowhere).
    #[serde(rename = "s", default)]
    pub scope: String,
    /// The user (`RSessionUser`) the session was last stored under, so
    /// whoever removes the record (a sweeper included) can remove it from
    /// that user's index without the request's config.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(rename = "d")]
    pub data: Data,
}

impl Record {
    pub fn new(now: u64, idle_timeout: u64, max_lifetime: u64) -> Record {
        Record {
            version: 1,
            created: now,
            accessed: now,
            idle_timeout,
            max_lifetime,
            grace: 0,
            scope: String::new(),
            user: None,
            data: Data::new(),
        }
    }

    /// The stored bytes: JSON, exactly as serde_json writes this struct
    /// (written by hand for speed, see `canonical`).
    pub fn encode(&self) -> Vec<u8> {
        canonical::encode(self)
    }

    /// `None` for bytes that are not a record (a torn or foreign file).
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        canonical::decode(bytes).or_else(|| Record::decode_by_serde(bytes))
    }

    /// serde_json's reading alone: the definition `decode`'s fast path
    /// follows (the fuzz target holds one to the other).
    pub(crate) fn decode_by_serde(bytes: &[u8]) -> Option<Record> {
        serde_json::from_slice::<Record>(bytes)
            .ok()
            .filter(|r| r.version == 1)
    }

    /// Expired under the given limits (those of the request's location).
    /// Timestamps are whole seconds stamped upwards (see `stamp`), so a
    /// deadline compared with the current second is never early.
    pub fn is_expired_under(
        &self,
        now: u64,
        idle_timeout: u64,
        max_lifetime: u64,
        grace: u64,
    ) -> bool {
        now >= deadline(
            self.accessed,
            self.created,
            idle_timeout,
            max_lifetime,
            grace,
        )
    }

    /// Expired under the limits stored in the record (for sweepers).
    pub fn is_expired(&self, now: u64) -> bool {
        now >= self.expires_at()
    }

    /// Unix second at which the record expires under its own limits.
    pub fn expires_at(&self) -> u64 {
        deadline(
            self.accessed,
            self.created,
            self.idle_timeout,
            self.max_lifetime,
            self.grace,
        )
    }
}

/// The stamp written for a moment within second `now`: the next whole
/// second, never earlier than the moment itself, so that no deadline
/// counted from it ends a session before its configured time.
pub fn stamp(now: u64) -> u64 {
    now.saturating_add(1)
}

fn deadline(accessed: u64, created: u64, idle: u64, lifetime: u64, grace: u64) -> u64 {
    let idle = accessed.saturating_add(idle).saturating_add(grace);
    match lifetime {
        0 => idle,
        n => idle.min(created.saturating_add(n)),
    }
}

/// The data as `application/x-www-form-urlencoded`, keys sorted. Every
/// control character stays percent-encoded, so the result is safe in an
/// environment variable or a header.
pub fn encode_data(data: &Data) -> String {
    let mut out = String::with_capacity(encoded_len(data));
    for (i, (key, value)) in data.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        append_encoded(&mut out, key);
        out.push('=');
        append_encoded(&mut out, value);
    }
    out
}

/// The length of `encode_data(data)`, counted without building it.
pub fn encoded_len(data: &Data) -> usize {
    let pairs: usize = data
        .iter()
        .map(|(k, v)| encoded_text_len(k) + 1 + encoded_text_len(v))
        .sum();
    pairs + data.len().saturating_sub(1)
}

/// Most keys and values (counters, ids, names) need no escape: those are
/// copied as they are, the rest go through form_urlencoded's serialiser.
fn needs_no_escape(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_'))
}

fn append_encoded(out: &mut String, text: &str) {
    if needs_no_escape(text) {
        out.push_str(text);
    } else {
        out.extend(form_urlencoded::byte_serialize(text.as_bytes()));
    }
}

fn encoded_text_len(text: &str) -> usize {
    if needs_no_escape(text) {
        text.len()
    } else {
        form_urlencoded::byte_serialize(text.as_bytes())
            .map(str::len)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let mut r = Record::new(100, 1800, 0);
        r.data.insert("user".into(), "ann\r\n".into());
        let bytes = r.encode();
        assert_eq!(Record::decode(&bytes), Some(r));
        assert_eq!(Record::decode(&bytes[..bytes.len() / 2]), None);
        assert_eq!(Record::decode(b""), None);
        // Any JSON of the same fields is the same record: spaces, another
        // order, escapes (the fast reader leaves these to serde_json).
        let mut scoped = Record::new(100, 1800, 0);
        scoped.scope = "/app".into();
        scoped.data.insert("k".into(), "a\"b".into());
        let edited = br#"{ "d": {"k": "a\u0022b"}, "s": "\/app", "l": 0, "t": 1800,
            "a": 100, "c": 100, "v": 1 }"#;
        assert_eq!(Record::decode(edited), Some(scoped));
        assert_eq!(
            Record::decode(b"{\"v\":2,\"c\":1,\"a\":1,\"t\":1,\"l\":0,\"d\":{}}"),
            None
        );
    }

    #[test]
    fn expiry() {
        let r = Record::new(1000, 60, 0);
        assert!(!r.is_expired(1059));
        assert!(r.is_expired(1060));
        assert!(r.is_expired_under(1010, 10, 0, 0));
        assert!(
            !r.is_expired_under(1010, 10, 0, 5),
            "the touch lag is allowed for"
        );
        let lagging = Record {
            grace: 30,
            ..Record::new(1000, 60, 0)
        };
        assert!(!lagging.is_expired(1089));
        assert!(lagging.is_expired(1090));
        assert_eq!(
            Record::decode(b"{\"v\":1,\"c\":1,\"a\":1,\"t\":1,\"l\":0,\"d\":{}}")
                .unwrap()
                .grace,
            0,
            "records written before the grace field still load"
        );
        let capped = Record {
            accessed: 1500,
            ..Record::new(1000, 600, 700)
        };
        assert!(!capped.is_expired(1699));
        assert!(capped.is_expired(1700));
        assert_eq!(capped.expires_at(), 1700);
    }

    #[test]
    fn data_encoding_is_sorted_and_escaped() {
        let mut d = Data::new();
        d.insert("b".into(), "x y".into());
        d.insert("a".into(), "1&2=3\r\n".into());
        d.insert("ü".into(), "✓".into());
        assert_eq!(encode_data(&d), "a=1%262%3D3%0D%0A&b=x+y&%C3%BC=%E2%9C%93");
        // Every byte that may need an escape, alone and beside plain text,
        // comes out as form_urlencoded's own serialiser writes it.
        for c in (0u8..=0x7f).map(char::from).chain(['ü', '✓']) {
            let mut d = Data::new();
            d.insert(format!("k{c}"), c.to_string());
            d.insert("n".into(), "5".into());
            let expected = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(d.iter())
                .finish();
            assert_eq!(encode_data(&d), expected, "{c:?}");
        }
    }

    #[test]
    fn the_counted_length_is_the_encoded_one() {
        let mut d = Data::new();
        assert_eq!(encoded_len(&d), 0);
        for (k, v) in [
            ("n", "5"),
            ("empty", ""),
            ("a b", "x&y=z\r\n"),
            ("ü", "✓ %"),
        ] {
            d.insert(k.into(), v.into());
            assert_eq!(encoded_len(&d), encode_data(&d).len(), "{d:?}");
        }
    }
}
