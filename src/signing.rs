//! Cookie signatures: HMAC-SHA256 over `rsession-v1 NUL cookie-name NUL id`,
//! base64url without padding. The first key signs, every key verifies, so a
//! secret can be rotated without logging every user out.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// Length of the MAC's text form (32 bytes in unpadded base64url).
pub const MAC_TEXT_LEN: usize = 43;
const DOMAIN: &[u8] = b"rsession-v1";

/// The configured signing keys, newest first. Never printed. Each key is
/// kept as a keyed HMAC state, so a MAC costs two SHA-256 blocks, not four.
/// Verifying is not cached: with the CPU's SHA instructions an HMAC costs
/// about what a hash-set lookup of the cookie text did (~0.2 µs), and a
/// cache would put a process-wide lock on every request.
pub struct KeyRing {
    keys: Vec<HmacSha256>,
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
        Some(KeyRing { keys })
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
    /// constant time, a word at a time (every client's cookie pays it).
    pub fn verify(&self, cookie_name: &str, id: &str, mac_text: &str) -> bool {
        let mut tag = [0u8; 32];
        if mac_text.len() != MAC_TEXT_LEN
            || URL_SAFE_NO_PAD.decode_slice(mac_text, &mut tag) != Ok(32)
        {
            return false;
        }
        self.keys.iter().any(|key| {
            let expected: [u8; 32] = Self::mac(key, cookie_name, id)
                .finalize()
                .into_bytes()
                .into();
            constant_time_eq::constant_time_eq_32(&expected, &tag)
        })
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
    fn a_changed_character_of_the_mac_fails() {
        let keys = ring(&["k"]);
        let mac = keys.sign("sid", ID);
        assert!(keys.verify("sid", ID, &mac));
        // Every position: the comparison goes a word at a time.
        for at in 0..mac.len() {
            let mut forged = mac.clone();
            let other = if &mac[at..=at] == "A" { "B" } else { "A" };
            forged.replace_range(at..=at, other);
            assert!(!keys.verify("sid", ID, &forged), "changed at {at}");
        }
    }

    #[test]
    fn empty_rings_and_keys_are_refused() {
        assert!(KeyRing::new(vec![]).is_none());
        assert!(KeyRing::new(vec![vec![]]).is_none());
        assert_eq!(format!("{:?}", ring(&["secret"])), "KeyRing(1 keys)");
    }
}
