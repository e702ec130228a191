//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz): each takes
//! arbitrary bytes, drives one parser that reads untrusted or operator
//! input, and asserts what must always hold. `cargo test` runs the seed
//! corpus (and every past finding kept there) through the same functions.

use crate::config::{DirConfig, ServerConfig};
use crate::cookie::{cookie_value, signed_ids};
use crate::id::SessionId;
use crate::record::{encode_data, Record};
use crate::signing::KeyRing;
use crate::update::{self, Command};

fn keys() -> KeyRing {
    KeyRing::new(vec![b"fuzzing-key-0123456789".to_vec()]).expect("a valid key")
}

/// A Cookie header: at most one candidate per cookie pair (every one is
/// checked, so that planted cookies cannot hide the real one), each
/// genuinely signed, and a valid cookie spliced into the junk is still
/// found.
pub fn cookie_header(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let keys = keys();
    let found = signed_ids([text.as_ref()], "sid", &keys);
    assert!(found.signed.len() + found.rejected <= text.split([';', ',']).count());
    for id in &found.signed {
        let value = cookie_value(id, "sid", &keys);
        assert!(
            text.contains(&value[..32]),
            "a candidate that was not in the header"
        );
    }
    let id = SessionId::generate().expect("OS randomness");
    let spliced = format!("sid={}; {}", cookie_value(&id, "sid", &keys), text);
    assert_eq!(
        signed_ids([spliced.as_str()], "sid", &keys).signed.first(),
        Some(&id)
    );
}

/// An update header: parsing never panics and yields only well-formed
/// commands.
pub fn update_header(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for cmd in update::parse([text.as_ref()]).flatten() {
        match cmd {
            Command::Set(pairs) => {
                assert!(!pairs.is_empty() && pairs.iter().all(|(k, _)| !k.is_empty()))
            }
            Command::Unset(keys) => assert!(!keys.is_empty() && keys.iter().all(|k| !k.is_empty())),
            Command::Invalidate | Command::Regenerate | Command::InvalidateUser => {}
        }
    }
}

/// Stored bytes: the fast reader and serde_json read the same record,
/// whatever decodes re-encodes to the same record (in the form serde_json
/// writes), and its data exports without raw control characters.
pub fn record(data: &[u8]) {
    let record = Record::decode(data);
    assert_eq!(
        record,
        Record::decode_by_serde(data),
        "the two readers differ"
    );
    if let Some(record) = record {
        assert_eq!(
            record.encode(),
            serde_json::to_vec(&record).expect("records serialise")
        );
        assert_eq!(Record::decode(&record.encode()), Some(record.clone()));
        let _ = record.is_expired(u64::MAX);
        let _ = record.expires_at();
        let exported = encode_data(&record.data);
        assert!(
            !exported.bytes().any(|b| b.is_ascii_control()),
            "control character in RSESSION_DATA"
        );
    }
}

const DIRECTIVES: [&str; 24] = [
    "RSession",
    "RSessionStore",
    "RSessionSecret",
    "RSessionCookieName",
    "RSessionCookiePath",
    "RSessionCookieDomain",
    "RSessionCookieSecure",
    "RSessionCookieHttpOnly",
    "RSessionCookieSameSite",
    "RSessionCookieMaxAge",
    "RSessionTimeout",
    "RSessionMaxLifetime",
    "RSessionTouchInterval",
    "RSessionLock",
    "RSessionLockTimeout",
    "RSessionLockTTL",
    "RSessionScratch",
    "RSessionScratchRoot",
    "RSessionEnv",
    "RSessionForwardHeaders",
    "RSessionUpdateHeader",
    "RSessionMaxDataSize",
    "RSessionGCInterval",
    "RSessionNoSuchDirective",
];

/// A directive value (first byte picks the directive): accepted, or
/// refused with a message that names the directive.
pub fn directive(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let name = DIRECTIVES[pick as usize % DIRECTIVES.len()];
    let value = String::from_utf8_lossy(rest);
    if value.starts_with("file:") {
        return; // reads the file system; covered by unit tests
    }
    let result = if crate::config::is_server_directive(name) {
        ServerConfig::default().set(name, &value, pick & 0x80 != 0)
    } else {
        DirConfig::default().set(name, &value)
    };
    if let Err(e) = result {
        assert!(
            e.to_string().starts_with(name),
            "message must name the directive: {e}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of the committed corpus (seeds and past findings).
    fn corpus(target: &str) -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .map(|e| std::fs::read(e.path()).unwrap())
            .collect();
        assert!(!inputs.is_empty(), "no corpus for {target}");
        inputs
    }

    #[test]
    fn the_corpus_passes_every_target() {
        corpus("cookie").iter().for_each(|d| cookie_header(d));
        corpus("update").iter().for_each(|d| update_header(d));
        corpus("record").iter().for_each(|d| record(d));
        corpus("directive").iter().for_each(|d| directive(d));
    }
}
