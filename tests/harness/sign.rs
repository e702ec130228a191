//! Cookie values computed the way SPEC §6 defines them, independently of
//! the module, so tests can forge valid and invalid cookies.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub fn mac(key: &str, cookie_name: &str, id: &str) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    m.update(b"rsession-v1\0");
    m.update(cookie_name.as_bytes());
    m.update(b"\0");
    m.update(id.as_bytes());
    URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
}

pub fn cookie_value(key: &str, cookie_name: &str, id: &str) -> String {
    format!("{id}.{}", mac(key, cookie_name, id))
}

/// A random-looking id no server issued.
pub fn stranger_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:032x}", nanos ^ 0x5a5a_5a5a_5a5a_5a5a_5a5a_5a5a_5a5a_5a5a)
}
