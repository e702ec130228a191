//! The session cookie: finding signed ids in `Cookie` headers, and writing
//! `Set-Cookie` values. Client input never becomes an error here: a value
//! that does not check out is simply not a candidate.

use crate::id::{SessionId, ID_TEXT_LEN};
use crate::signing::{KeyRing, MAC_TEXT_LEN};

/// What the Cookie headers held under our name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Candidates {
    /// Correctly signed ids, in the order the client sent them.
    pub signed: Vec<SessionId>,
    /// Cookies of our name that were malformed or badly signed.
    pub rejected: usize,
}

/// Collects the signed session ids under `name` from every Cookie header.
pub fn signed_ids<'a>(
    headers: impl IntoIterator<Item = &'a str>,
    name: &str,
    keys: &KeyRing,
) -> Candidates {
    let mut found = Candidates::default();
    let ours = headers
        .into_iter()
        // httpd joins repeated Cookie headers with ", "; cookie values
        // cannot contain a comma (RFC 6265), so both separate pairs.
        .flat_map(cookie_pairs)
        .filter_map(|pair| pair.split_once('='))
        // Every candidate counts: a sibling subdomain can plant any number
        // of cookies of our name before the real one, and skipping it would
        // sign the user out. httpd's header limits bound the work, and only
        // values of the right length cost an HMAC.
        .filter(|(n, _)| n.trim() == name);
    for (_, value) in ours {
        match check_value(value.trim(), name, keys) {
            Some(id) if !found.signed.contains(&id) => found.signed.push(id),
            Some(_) => {}
            None => found.rejected += 1,
        }
    }
    found
}

/// The pieces of a Cookie header between `;` and `,`: what
/// `header.split([';', ','])` yields, found bytewise (both separators are
/// ASCII), which costs a fraction of the char-pattern search.
fn cookie_pairs(header: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(header);
    std::iter::from_fn(move || {
        let text = rest?;
        match text.bytes().position(|b| b == b';' || b == b',') {
            Some(at) => {
                rest = Some(&text[at + 1..]);
                Some(&text[..at])
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
}

/// `ID.MAC` (optionally in double quotes, as RFC 6265 allows) → the id.
fn check_value(value: &str, name: &str, keys: &KeyRing) -> Option<SessionId> {
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    if value.len() != ID_TEXT_LEN + 1 + MAC_TEXT_LEN {
        return None;
    }
    let (id_text, mac_text) = value.split_once('.')?;
    let id: SessionId = id_text.parse().ok()?;
    keys.verify(name, id_text, mac_text).then_some(id)
}

/// The cookie value for `id`.
pub fn cookie_value(id: &SessionId, name: &str, keys: &KeyRing) -> String {
    let id_text = id.text();
    let mac = keys.sign(name, &id_text);
    format!("{}.{mac}", &*id_text)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

impl SameSite {
    fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

/// Everything a `Set-Cookie` line says besides the value, already resolved
/// for this request (Secure decided, `__Host-` rules applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieAttrs {
    pub name: String,
    pub path: String,
    pub domain: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: Option<SameSite>,
    /// Seconds; 0 means a browser-session cookie.
    pub max_age: u64,
}

impl CookieAttrs {
    /// `Set-Cookie` for a live session.
    pub fn set(&self, value: &str) -> String {
        let lifetime = match self.max_age {
            0 => String::new(),
            n => format!("; Max-Age={n}"),
        };
        self.line(value, &lifetime)
    }

    /// `Set-Cookie` that makes the browser drop the cookie.
    pub fn expire(&self) -> String {
        self.line("", "; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT")
    }

    fn line(&self, value: &str, lifetime: &str) -> String {
        let mut line = format!("{}={}; Path={}", self.name, value, self.path);
        if let Some(domain) = &self.domain {
            line.push_str("; Domain=");
            line.push_str(domain);
        }
        line.push_str(lifetime);
        if self.secure {
            line.push_str("; Secure");
        }
        if self.http_only {
            line.push_str("; HttpOnly");
        }
        if let Some(same_site) = self.same_site {
            line.push_str("; SameSite=");
            line.push_str(same_site.as_str());
        }
        line
    }
}

/// A response that sets a cookie must not be stored by shared caches: keep
/// the handler's own Cache-Control directives, minus those that invite
/// shared caching, plus `private`.
pub fn private_cache_control(existing: Option<&str>) -> String {
    let mut kept: Vec<&str> = existing
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .filter(|d| {
            let lower = d.to_ascii_lowercase();
            lower != "public" && lower != "private" && !lower.starts_with("s-maxage")
        })
        .collect();
    kept.push("private");
    kept.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> KeyRing {
        KeyRing::new(vec![b"test-key".to_vec()]).unwrap()
    }

    fn attrs() -> CookieAttrs {
        CookieAttrs {
            name: "sid".into(),
            path: "/".into(),
            domain: None,
            secure: false,
            http_only: true,
            same_site: Some(SameSite::Lax),
            max_age: 0,
        }
    }

    #[test]
    fn pairs_split_as_str_split_does() {
        for header in [
            "",
            ";",
            ",",
            "a=1",
            "a=1; b=2",
            "a=1, b=2;c=3",
            ";;a=1,,",
            "ü=✓;x",
            " sid = v ; ",
            "a=1;",
        ] {
            let expected: Vec<&str> = header.split([';', ',']).collect();
            assert_eq!(
                cookie_pairs(header).collect::<Vec<_>>(),
                expected,
                "{header:?}"
            );
        }
    }

    #[test]
    fn finds_a_signed_id_among_other_cookies() {
        let id = SessionId::generate().unwrap();
        let value = cookie_value(&id, "sid", &keys());
        let header = format!("theme=dark; sid={value}; lang=en");
        let found = signed_ids([header.as_str()], "sid", &keys());
        assert_eq!(found.signed, vec![id]);
        assert_eq!(found.rejected, 0);
    }

    #[test]
    fn rejects_malformed_and_forged_values() {
        let id = SessionId::generate().unwrap();
        let good = cookie_value(&id, "sid", &keys());
        let other_key = KeyRing::new(vec![b"other".to_vec()]).unwrap();
        let forged = cookie_value(&id, "sid", &other_key);
        let long = "a".repeat(384);
        let upper = good.to_uppercase();
        for bad in [
            "/path/traversal/attack/bad",
            long.as_str(),
            &id.to_string(),
            &forged,
            &upper,
            &good[..good.len() - 1],
            "",
            "\u{0}\u{0}",
        ] {
            let header = format!("sid={bad}");
            let found = signed_ids([header.as_str()], "sid", &keys());
            assert!(found.signed.is_empty(), "{bad:?} accepted");
            assert_eq!(found.rejected, 1);
        }
    }

    #[test]
    fn keeps_every_valid_duplicate_in_order() {
        let a = SessionId::generate().unwrap();
        let b = SessionId::generate().unwrap();
        let header = format!(
            "sid=junk; sid={}; sid={}",
            cookie_value(&a, "sid", &keys()),
            cookie_value(&b, "sid", &keys())
        );
        let found = signed_ids([header.as_str(), "sid=x"], "sid", &keys());
        assert_eq!(found.signed, vec![a, b]);
        assert_eq!(found.rejected, 2);
        let joined = format!("sid=x, sid={}", cookie_value(&b, "sid", &keys()));
        assert_eq!(
            signed_ids([joined.as_str()], "sid", &keys()).signed,
            vec![b],
            "headers joined by httpd"
        );
    }

    #[test]
    fn a_valid_cookie_behind_many_planted_ones_is_found() {
        let id = SessionId::generate().unwrap();
        let planted = format!("sid={}.{}; ", "0".repeat(32), "A".repeat(43)).repeat(100);
        let header = format!("{planted}sid={}", cookie_value(&id, "sid", &keys()));
        let found = signed_ids([header.as_str()], "sid", &keys());
        assert_eq!(found.signed, vec![id]);
        assert_eq!(found.rejected, 100);
    }

    #[test]
    fn quoted_values_are_accepted() {
        let id = SessionId::generate().unwrap();
        let header = format!("sid=\"{}\"", cookie_value(&id, "sid", &keys()));
        assert_eq!(
            signed_ids([header.as_str()], "sid", &keys()).signed,
            vec![id]
        );
    }

    #[test]
    fn set_cookie_lines() {
        assert_eq!(attrs().set("v"), "sid=v; Path=/; HttpOnly; SameSite=Lax");
        let full = CookieAttrs {
            domain: Some("example.org".into()),
            secure: true,
            max_age: 3600,
            same_site: Some(SameSite::None),
            ..attrs()
        };
        assert_eq!(
            full.set("v"),
            "sid=v; Path=/; Domain=example.org; Max-Age=3600; Secure; HttpOnly; SameSite=None"
        );
        let bare = CookieAttrs {
            http_only: false,
            same_site: None,
            ..attrs()
        };
        assert_eq!(bare.set("v"), "sid=v; Path=/");
        assert_eq!(
            attrs().expire(),
            "sid=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax"
        );
    }

    #[test]
    fn cache_control_becomes_private() {
        assert_eq!(private_cache_control(None), "private");
        assert_eq!(
            private_cache_control(Some("public, max-age=60, s-maxage=600")),
            "max-age=60, private"
        );
        assert_eq!(private_cache_control(Some("no-store")), "no-store, private");
    }
}
