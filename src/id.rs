//! Session ids: 128 bits from the operating system's CSPRNG, written as 32
//! lowercase hex characters. Drawn per call (never from a user-space generator
//! state that a prefork `fork()` would duplicate).

use std::fmt;
use std::str::FromStr;

/// A session id. The bytes are private: the only ways in are `generate` and
/// `FromStr`, which accepts exactly the text form `Display` writes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; 16]);

/// Length of the text form.
pub const ID_TEXT_LEN: usize = 32;

impl SessionId {
    /// A fresh id straight from getrandom(2).
    pub fn generate() -> std::io::Result<SessionId> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
        Ok(SessionId(bytes))
    }

    /// Which of 256 shard directories holds the session (its first byte).
    pub fn shard(&self) -> u8 {
        self.0[0]
    }

    /// 62 bits of the id (not those that pick the shard), used as the byte
    /// offset of the session's lock in its shard's lock file: two sessions
    /// share a lock only if those 62 random bits collide.
    pub fn lock_offset(&self) -> u64 {
        let mut tail = [0u8; 8];
        tail.copy_from_slice(&self.0[8..]);
        u64::from_be_bytes(tail) >> 2
    }

    /// The first 8 characters, the most of an id that may appear in logs.
    pub fn short(&self) -> String {
        self.text()[..8].to_string()
    }
}

/// Hashes session ids for in-process maps without SipHash: an id in such
/// a map is random (drawn here, or signed by us), so nobody can choose ids
/// that collide, and its bytes need only be folded together.
#[derive(Clone, Copy, Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_usize(&mut self, word: usize) {
        self.write_u64(word as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// For `HashMap<SessionId, _, BuildIdHasher>`.
pub type BuildIdHasher = std::hash::BuildHasherDefault<IdHasher>;

/// The text form on the stack: ids are formatted on every request, so
/// without `fmt` machinery or allocation.
#[derive(Clone, Copy)]
pub struct IdText([u8; ID_TEXT_LEN]);

impl std::ops::Deref for IdText {
    type Target = str;
    fn deref(&self) -> &str {
        // Only ASCII hex digits are ever written into the buffer.
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

/// Both hex digits (lowercase) of every byte value: one lookup per byte.
pub(crate) const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        pairs[b] = [HEX[b >> 4], HEX[b & 0x0f]];
        b += 1;
    }
    pairs
};

impl SessionId {
    pub fn text(&self) -> IdText {
        let mut out = [0u8; ID_TEXT_LEN];
        for (digits, &b) in out.chunks_exact_mut(2).zip(&self.0) {
            digits.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
        }
        IdText(out)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// Ids are logged only through `short()`; Debug shows no more than that.
impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({}…)", self.short())
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct BadId;

impl FromStr for SessionId {
    type Err = BadId;

    /// Exactly 32 lowercase hex characters; anything else is refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.as_bytes();
        if text.len() != ID_TEXT_LEN {
            return Err(BadId);
        }
        let mut bytes = [0u8; 16];
        for (i, pair) in text.chunks_exact(2).enumerate() {
            bytes[i] = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
        }
        Ok(SessionId(bytes))
    }
}

fn hex_digit(c: u8) -> Result<u8, BadId> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(BadId),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        let id = SessionId::generate().unwrap();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert!(text
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_eq!(text.parse::<SessionId>().unwrap(), id);
        for known in [
            "00000000000000000000000000000000",
            "ffffffffffffffffffffffffffffffff",
            "0123456789abcdeffedcba9876543210",
            "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        ] {
            let id: SessionId = known.parse().unwrap();
            assert_eq!(&*id.text(), known);
        }
    }

    #[test]
    fn ids_differ() {
        let a = SessionId::generate().unwrap();
        let b = SessionId::generate().unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn refuses_other_forms() {
        for bad in [
            "",
            "/path/traversal/attack/bad",
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "0123456789abcdeg0123456789abcdef",
            &"a".repeat(384),
        ] {
            assert!(bad.parse::<SessionId>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn debug_and_short_hide_most_of_the_id() {
        let id: SessionId = "0123456789abcdef0123456789abcdef".parse().unwrap();
        assert_eq!(id.short(), "01234567");
        assert!(!format!("{id:?}").contains("89abcdef0123"));
    }
}
