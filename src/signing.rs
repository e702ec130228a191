//! Cookie signatures: HMAC-SHA256 over `rsession-v1 NUL cookie-name NUL id`,
//! base64url without padding. The first key signs, every key verifies, so a
//! secret can be rotated without logging every user out.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::Sha256;
use std::collections::HashSet;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// Length of the MAC's text form (32 bytes in unpadded base64url).
pub const MAC_TEXT_LEN: usize = 43;
const DOMAIN: &[u8] = b"rsession-v1";

/// Most cookie values a process remembers as verified.
const VERIFIED_CAPACITY: usize = 16_384;

/// The configured signing keys, newest first. Never printed. Each key is
/// kept as a keyed HMAC state, so a MAC costs two SHA-256 blocks, not four.
pub struct KeyRing {
    keys: Vec<HmacSha256>,
    /// Exact `name NUL id.mac` texts this process has verified, so a
    /// returning visitor costs a hash lookup instead of an HMAC. Only values
    /// that verified go in, so forged cookies cannot fill it; it is emptied
    /// when full.
    verified: Mutex<HashSet<Box<str>>>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyRing({} keys)", self.keys.len())
    }
}

impl KeyRing {
    /// `keys` must not be empty; the first one signs.
    pub fn new(keys: Vec<Vec<u8>>) -> Option<KeyRing> {
        if keys.is_empty() || keys.iter().any(Vec::is_empty) {
            return None;
        }
        // HMAC accepts keys of any length; new_from_slice cannot fail for it.
        let keys = keys
            .iter()
            .map(|k| HmacSha256::new_from_slice(k).expect("HMAC takes any key length"))
            .collect();
        Some(KeyRing {
            keys,
            verified: Mutex::new(HashSet::new()),
        })
    }

    fn mac(key: &HmacSha256, cookie_name: &str, id: &str) -> HmacSha256 {
        let mut mac = key.clone();
        mac.update(DOMAIN);
        mac.update(&[0]);
        mac.update(cookie_name.as_bytes());
        mac.update(&[0]);
        mac.update(id.as_bytes());
        mac
    }

    /// The MAC text for `id` under the signing key.
    pub fn sign(&self, cookie_name: &str, id: &str) -> String {
        let tag = Self::mac(&self.keys[0], cookie_name, id)
            .finalize()
            .into_bytes();
        URL_SAFE_NO_PAD.encode(tag)
    }

    /// True when some configured key produced `mac_text`. Compared in
    /// constant time (`verify_slice`).
    pub fn verify(&self, cookie_name: &str, id: &str, mac_text: &str) -> bool {
        if mac_text.len() != MAC_TEXT_LEN {
            return false;
        }
        let seen = format!("{cookie_name}\0{id}.{mac_text}");
        if self.verified.lock().contains(seen.as_str()) {
            return true;
        }
        if !self.verify_mac(cookie_name, id, mac_text) {
            return false;
        }
        let mut verified = self.verified.lock();
        if verified.len() >= VERIFIED_CAPACITY {
            verified.clear();
        }
        verified.insert(seen.into_boxed_str());
        true
    }

    fn verify_mac(&self, cookie_name: &str, id: &str, mac_text: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(mac_text) else {
            return false;
        };
        self.keys
            .iter()
            .any(|key| Self::mac(key, cookie_name, id).verify_slice(&tag).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    fn ring(keys: &[&str]) -> KeyRing {
        KeyRing::new(keys.iter().map(|k| k.as_bytes().to_vec()).collect()).unwrap()
    }

    #[test]
    fn signature_matches_the_spec_construction() {
        // Computed independently: HMAC-SHA256(key="k", "rsession-v1\0sid\0" + ID).
        let mut mac = HmacSha256::new_from_slice(b"k").unwrap();
        mac.update(b"rsession-v1\0sid\0");
        mac.update(ID.as_bytes());
        let expected = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        assert_eq!(ring(&["k"]).sign("sid", ID), expected);
        assert_eq!(expected.len(), MAC_TEXT_LEN);
    }

    #[test]
    fn rotation_first_signs_all_verify() {
        let old = ring(&["old"]);
        let rotated = ring(&["new", "old"]);
        let old_mac = old.sign("sid", ID);
        assert!(rotated.verify("sid", ID, &old_mac));
        assert_ne!(rotated.sign("sid", ID), old_mac);
        assert!(!ring(&["new"]).verify("sid", ID, &old_mac));
    }

    #[test]
    fn mac_is_bound_to_cookie_name_and_id() {
        let keys = ring(&["k"]);
        let mac = keys.sign("sid", ID);
        assert!(!keys.verify("other", ID, &mac));
        assert!(!keys.verify("sid", "ffffffffffffffffffffffffffffffff", &mac));
        assert!(!keys.verify("sid", ID, &mac[..42]));
        assert!(!keys.verify("sid", ID, "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"));
    }

    #[test]
    fn remembered_values_still_need_the_exact_text() {
        let keys = ring(&["k"]);
        let mac = keys.sign("sid", ID);
        assert!(keys.verify("sid", ID, &mac));
        assert!(keys.verify("sid", ID, &mac), "second time from the cache");
        let mut forged = mac.clone();
        forged.replace_range(0..1, if mac.starts_with('A') { "B" } else { "A" });
        assert!(!keys.verify("sid", ID, &forged));
        assert!(!keys.verify("other", ID, &mac));
        assert!(!keys.verify("sid", "ffffffffffffffffffffffffffffffff", &mac));
    }

    #[test]
    fn empty_rings_and_keys_are_refused() {
        assert!(KeyRing::new(vec![]).is_none());
        assert!(KeyRing::new(vec![vec![]]).is_none());
        assert_eq!(format!("{:?}", ring(&["secret"])), "KeyRing(1 keys)");
    }
}
