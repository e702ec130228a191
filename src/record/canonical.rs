//! The record's own writer, and a reader for exactly what it writes.
//!
//! The format is JSON as serde_json writes `Record`: fields in declaration
//! order, no whitespace, data keys sorted. serde_json stays its definition
//! (the tests compare both byte for byte), and it still reads anything
//! else: records of older versions, hand-edited ones, escaped strings.
//! This path exists for speed only. Decoding through serde's derive was the
//! largest single cost of a resumed request (5,100 of 41,500 instructions
//! in the hooks, BENCHMARKS.md "session 16"); this reader needs a fraction.
//!
//! The reader's one rule: it returns `Some` only for bytes serde_json
//! would decode to the same record, and `None` ("ask serde_json") for
//! everything else, never a wrong record.

use super::{Data, Record};
use crate::id::HEX_PAIRS;

/// The bytes serde_json writes for `record`.
pub fn encode(record: &Record) -> Vec<u8> {
    let data: usize = record.data.iter().map(|(k, v)| k.len() + v.len() + 6).sum();
    let user = record.user.as_ref().map_or(0, |u| u.len() + 6);
    let mut out = Vec::with_capacity(128 + record.scope.len() + user + data);
    out.extend_from_slice(b"{\"v\":");
    number(&mut out, u64::from(record.version));
    for (name, value) in [
        (&b",\"c\":"[..], record.created),
        (b",\"a\":", record.accessed),
        (b",\"t\":", record.idle_timeout),
        (b",\"l\":", record.max_lifetime),
        (b",\"g\":", record.grace),
    ] {
        out.extend_from_slice(name);
        number(&mut out, value);
    }
    out.extend_from_slice(b",\"s\":");
    string(&mut out, &record.scope);
    if let Some(user) = &record.user {
        out.extend_from_slice(b",\"u\":");
        string(&mut out, user);
    }
    out.extend_from_slice(b",\"d\":{");
    for (i, (key, value)) in record.data.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(&mut out, key);
        out.push(b':');
        string(&mut out, value);
    }
    out.extend_from_slice(b"}}");
    out
}

fn number(out: &mut Vec<u8>, n: u64) {
    // itoa: serde_json's own digit writer.
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A JSON string with serde_json's escapes: the two short ones for quote
/// and backslash, the five named control characters, `\u00xx` for the
/// other controls; everything else (DEL and non-ASCII included) as is.
fn string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x0c => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x00..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain..i]);
        plain = i + 1;
        out.extend_from_slice(&[b'\\', short]);
        if short == b'u' {
            out.extend_from_slice(b"00");
            out.extend_from_slice(&HEX_PAIRS[usize::from(b)]);
        }
    }
    out.extend_from_slice(&bytes[plain..]);
    out.push(b'"');
}

/// The record in `bytes` if they are in the writer's form; `None` if they
/// are not (which says nothing about whether they are a record).
pub fn decode(bytes: &[u8]) -> Option<Record> {
    let mut r = Reader { rest: bytes };
    r.literal(b"{\"v\":1")?;
    let created = r.number_field(b",\"c\":")?;
    let accessed = r.number_field(b",\"a\":")?;
    let idle_timeout = r.number_field(b",\"t\":")?;
    let max_lifetime = r.number_field(b",\"l\":")?;
    let grace = r.number_field(b",\"g\":")?;
    r.literal(b",\"s\":")?;
    let scope = r.string()?;
    let user = match r.literal(b",\"u\":") {
        Some(()) => Some(r.string()?),
        None => None,
    };
    r.literal(b",\"d\":{")?;
    let mut data = Data::new();
    if r.literal(b"}").is_none() {
        loop {
            let key = r.string()?;
            // serde_json keeps the last of repeated keys; the writer never
            // repeats or reorders them, so such bytes are not its form.
            if data.last_key_value().is_some_and(|(last, _)| *last >= key) {
                return None;
            }
            r.literal(b":")?;
            let value = r.string()?;
            data.insert(key, value);
            if r.literal(b",").is_none() {
                r.literal(b"}")?;
                break;
            }
        }
    }
    r.literal(b"}")?;
    if !r.rest.is_empty() {
        return None;
    }
    Some(Record {
        version: 1,
        created,
        accessed,
        idle_timeout,
        max_lifetime,
        grace,
        scope,
        user,
        data,
    })
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl Reader<'_> {
    fn literal(&mut self, expected: &[u8]) -> Option<()> {
        self.rest = self.rest.strip_prefix(expected)?;
        Some(())
    }

    /// `name` (the comma, the quoted key, the colon), then a number.
    fn number_field(&mut self, name: &[u8]) -> Option<u64> {
        self.literal(name)?;
        self.number()
    }

    /// A JSON number as the writer writes a u64: digits, no leading zero,
    /// no overflow.
    fn number(&mut self) -> Option<u64> {
        let len = self.rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let (digits, rest) = self.rest.split_at(len);
        if digits.is_empty() || (digits[0] == b'0' && len > 1) {
            return None;
        }
        let mut n: u64 = 0;
        for &d in digits {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        self.rest = rest;
        Some(n)
    }

    /// A JSON string without escapes or control characters, in UTF-8.
    fn string(&mut self) -> Option<String> {
        let body = self.rest.strip_prefix(b"\"")?;
        let len = body
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if body[len] != b'"' {
            return None;
        }
        let text = std::str::from_utf8(&body[..len]).ok()?;
        self.rest = &body[len + 1..];
        Some(text.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random records: every control character, the
    /// escapes, DEL, multi-byte UTF-8, empty strings, large numbers, with
    /// and without a user, empty and full data.
    fn records() -> Vec<Record> {
        const PIECES: [&str; 12] = [
            "",
            "a",
            "\"",
            "\\",
            "\u{7f}",
            "ü",
            "✓",
            "\u{1f600}",
            " ",
            "%&=",
            "\r\n\t",
            "n",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // Half the records need no escape, so the fast path sees them.
        let text = |next: &mut dyn FnMut() -> u64, escapes: bool| {
            let mut s = String::new();
            for _ in 0..next() % 5 {
                let piece = PIECES[(next() % PIECES.len() as u64) as usize];
                match next() % 3 {
                    0 if escapes => s.push(char::from((next() % 0x20) as u8)),
                    _ if !escapes && piece.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) => {
                    }
                    _ => s.push_str(piece),
                }
            }
            s
        };
        let mut out = vec![Record::new(0, 0, 0)];
        for i in 0..2000u64 {
            let mut r = Record::new(next() >> (next() % 64), next() % 100_000, i % 3);
            r.accessed = [0, 9, 10, u64::MAX, next()][(i % 5) as usize];
            r.grace = next() % 700;
            let escapes = i % 2 == 0;
            r.scope = text(&mut next, escapes);
            if i % 3 == 0 {
                r.user = Some(text(&mut next, escapes));
            }
            for _ in 0..next() % 6 {
                r.data
                    .insert(text(&mut next, escapes), text(&mut next, escapes));
            }
            out.push(r);
        }
        out
    }

    #[test]
    fn writes_what_serde_json_writes() {
        for r in records() {
            assert_eq!(
                String::from_utf8_lossy(&encode(&r)),
                String::from_utf8_lossy(&serde_json::to_vec(&r).unwrap()),
                "{r:?}"
            );
        }
    }

    #[test]
    fn reads_its_own_form_and_agrees_with_serde_json_elsewhere() {
        let mut fast = 0;
        for r in records() {
            let bytes = encode(&r);
            match decode(&bytes) {
                Some(read) => {
                    assert_eq!(read, r);
                    fast += 1;
                }
                None => assert!(
                    bytes.contains(&b'\\'),
                    "only escaped strings need serde_json: {r:?}"
                ),
            }
            assert_eq!(Record::decode_by_serde(&bytes), Some(r.clone()));
            // Damaged and altered forms: whatever this path reads, serde_json
            // reads the same.
            let mut variants: Vec<Vec<u8>> =
                (0..bytes.len()).map(|n| bytes[..n].to_vec()).collect();
            for at in (0..bytes.len()).step_by(3) {
                for b in [b' ', b'0', b'9', b'"', b'}', b',', 0xff] {
                    let mut v = bytes.clone();
                    v[at] = b;
                    variants.push(v.clone());
                    v.insert(at, b);
                    variants.push(v);
                }
            }
            for v in variants {
                if let Some(read) = decode(&v) {
                    assert_eq!(
                        Some(read),
                        Record::decode_by_serde(&v),
                        "{}",
                        String::from_utf8_lossy(&v)
                    );
                }
            }
        }
        assert!(fast > 1000, "the fast path read only {fast} records");
    }

    #[test]
    fn leaves_other_forms_to_serde_json() {
        for other in [
            // Older records: no grace or scope; a version it does not know.
            &b"{\"v\":1,\"c\":1,\"a\":1,\"t\":1,\"l\":0,\"d\":{}}"[..],
            b"{\"v\":2,\"c\":1,\"a\":1,\"t\":1,\"l\":0,\"g\":0,\"s\":\"\",\"d\":{}}",
            // Whitespace, another order, repeated or unsorted keys, a
            // leading zero, an overflow, trailing bytes.
            b"{ \"v\":1,\"c\":1,\"a\":1,\"t\":1,\"l\":0,\"g\":0,\"s\":\"\",\"d\":{}}",
            b"{\"c\":1,\"v\":1,\"a\":1,\"t\":1,\"l\":0,\"g\":0,\"s\":\"\",\"d\":{}}",
            b"{\"v\":1,\"c\":1,\"a\":1,\"t\":1,\"l\":0,\"g\":0,\"s\":\"\",\"d\":{\"k\":\"1\",\"k\":\"2\"}}",
            b"{\"v\":1,\"c\":1,\"a\":1,\"t\":1,\"l\":0,\"g\":0,\"s\":\"\",\"d\":{\"b\":\"1\",\"a\":\"2\"}}",
            b"{\"v\":1,\"c\":01,\"a\":1,\"t\":1,\"l\":0,\"g\":0,\"s\":\"\",\"d\":{}}",
            b"{\"v\":1,\"c\":18446744073709551616,\"a\":1,\"t\":1,\"l\":0,\"g\":0,\"s\":\"\",\"d\":{}}",
            b"{\"v\":1,\"c\":1,\"a\":1,\"t\":1,\"l\":0,\"g\":0,\"s\":\"\",\"d\":{}} ",
            b"{\"v\":1,\"c\":1,\"a\":1,\"t\":1,\"l\":0,\"g\":0,\"s\":\"\",\"u\":null,\"d\":{}}",
        ] {
            assert_eq!(decode(other), None, "{}", String::from_utf8_lossy(other));
        }
        let repeated = b"{\"v\":1,\"c\":1,\"a\":1,\"t\":1,\"l\":0,\"g\":0,\"s\":\"\",\"d\":{\"k\":\"1\",\"k\":\"2\"}}";
        assert_eq!(
            Record::decode_by_serde(repeated).unwrap().data["k"],
            "2",
            "serde_json still reads it"
        );
    }
}
