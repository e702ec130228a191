//! Authentication and authorization on the session, host-free: which
//! stored values pass for a user name, the terms of `Require rsession`,
//! and the login redirect (which must never send a visitor off-site).

use crate::error::ConfigError;
use crate::record::Data;
use sha2::{Digest, Sha256};

/// Longest user name taken from a session.
pub const MAX_USER_LEN: usize = 256;

/// Why a stored value is not used as the request's user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadUser {
    Empty,
    Control,
    TooLong(usize),
}

impl std::fmt::Display for BadUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadUser::Empty => write!(f, "it is empty"),
            BadUser::Control => write!(f, "it holds control characters"),
            BadUser::TooLong(n) => write!(f, "it is {n} bytes long (at most {MAX_USER_LEN})"),
        }
    }
}

/// A value that can stand in `r->user` (a log field, a CGI variable, a
/// header a backend trusts): not empty, no control characters (CR/LF would
/// split headers and log lines), at most `MAX_USER_LEN` bytes.
pub fn check_user(value: &str) -> Result<&str, BadUser> {
    if value.is_empty() {
        return Err(BadUser::Empty);
    }
    if value.len() > MAX_USER_LEN {
        return Err(BadUser::TooLong(value.len()));
    }
    if value.chars().any(char::is_control) {
        return Err(BadUser::Control);
    }
    Ok(value)
}

/// The user a session's data names under `key`: `None` without the key,
/// `Some(Err)` for a value that is not a plausible user name.
pub fn user_of<'d>(data: &'d Data, key: &str) -> Option<Result<&'d str, BadUser>> {
    data.get(key).map(|v| check_user(v))
}

/// Where a user's sessions are listed in a store: a hash of the scope and
/// the user name, so no user name ever becomes a path or a key verbatim.
pub fn user_index_key(scope: &str, user: &str) -> String {
    let mut h = Sha256::new();
    h.update(scope.as_bytes());
    h.update([0u8]);
    h.update(user.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// One term of `Require rsession KEY[=VALUE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub key: String,
    pub value: Option<String>,
}

/// The terms of a `Require rsession` line, checked at startup: at least
/// one, separated by spaces, each `KEY` or `KEY=VALUE` (percent-encoded
/// as in the update header).
pub fn parse_require(line: &str) -> Result<Vec<Term>, ConfigError> {
    let fail = |why: &str| Err(ConfigError::new("Require rsession", line, why));
    let mut terms = Vec::new();
    for word in line.split_ascii_whitespace() {
        let (k, v) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        let key = decode(k);
        if key.is_empty() {
            return fail("KEY or KEY=VALUE terms with a non-empty KEY");
        }
        terms.push(Term {
            key,
            value: v.map(decode),
        });
    }
    if terms.is_empty() {
        return fail("at least one KEY or KEY=VALUE term");
    }
    Ok(terms)
}

fn decode(s: &str) -> String {
    percent_decode(s.as_bytes())
}

/// Whether every term holds in `data`.
pub fn require_holds(terms: &[Term], data: &Data) -> bool {
    terms.iter().all(|t| match (data.get(&t.key), &t.value) {
        (Some(_), None) => true,
        (Some(have), Some(want)) => have == want,
        (None, _) => false,
    })
}

/// `RSessionLoginURL`: a local path (`/login`) or an absolute http(s) URL
/// of a sign-in service, without spaces or control characters.
pub fn login_url(directive: &str, value: &str) -> Result<String, ConfigError> {
    let printable = value.bytes().all(|c| c.is_ascii_graphic());
    let local = is_local_path(value);
    let absolute = ["http://", "https://"].iter().any(|s| {
        value
            .get(..s.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(s))
            && value.len() > s.len()
    });
    if printable && (local || absolute) {
        Ok(value.to_string())
    } else {
        Err(ConfigError::new(
            directive,
            value,
            "a local path such as /login or an http(s):// URL, without spaces",
        ))
    }
}

/// Percent-decodes (no `+` handling: this is a path, not a form).
fn percent_decode(b: &[u8]) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A path a browser resolves on this site, however often it is decoded:
/// one leading `/` not followed by `/` or `\` (which browsers read as a
/// host), no backslash or control character anywhere.
pub fn is_local_path(path: &str) -> bool {
    let mut current = path.to_string();
    // Three rounds of decoding cover an application that decodes the
    // parameter once more than it should.
    for _ in 0..4 {
        let b = current.as_bytes();
        let ok = b.first() == Some(&b'/')
            && !matches!(b.get(1), Some(b'/') | Some(b'\\'))
            && !current.chars().any(|c| c.is_control() || c == '\\');
        if !ok {
            return false;
        }
        let next = percent_decode(b);
        if next == current {
            return true;
        }
        current = next;
    }
    false
}

/// Query-component encoding of a `return` value.
fn encode_component(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The `Location` of the login redirect: `login` with the original URL
/// (path and query as the client sent them) in a `return` parameter,
/// or `/` where that is not a local path.
pub fn login_location(login: &str, path: &str, query: Option<&str>) -> String {
    let mut original = path.to_string();
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        original.push('?');
        original.push_str(q);
    }
    if !is_local_path(&original) {
        original = "/".to_string();
    }
    let joiner = if login.contains('?') { '&' } else { '?' };
    format!("{login}{joiner}return={}", encode_component(&original))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plausible_user_names() {
        assert_eq!(check_user("ann"), Ok("ann"));
        assert_eq!(check_user("Jürgen Müller"), Ok("Jürgen Müller"));
        assert_eq!(check_user(""), Err(BadUser::Empty));
        assert_eq!(check_user("a\r\nb"), Err(BadUser::Control));
        assert_eq!(check_user("a\u{85}b"), Err(BadUser::Control));
        assert_eq!(check_user(&"x".repeat(256)).map(str::len), Ok(256));
        assert_eq!(check_user(&"x".repeat(257)), Err(BadUser::TooLong(257)));
    }

    #[test]
    fn require_terms_parse_and_all_must_hold() {
        let t = parse_require("role=admin  user team=a%20b").unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[2].value.as_deref(), Some("a b"));
        let mut d = Data::new();
        d.insert("role".into(), "admin".into());
        assert!(!require_holds(&t, &d));
        d.insert("user".into(), "ann".into());
        d.insert("team".into(), "a b".into());
        assert!(require_holds(&t, &d));
        d.insert("role".into(), "administrator".into());
        assert!(!require_holds(&t, &d), "values match exactly");
        assert!(require_holds(&parse_require("k=").unwrap(), &{
            let mut e = Data::new();
            e.insert("k".into(), String::new());
            e
        }));
        for bad in ["", "   ", "=x", "a =b"] {
            assert!(parse_require(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn only_local_paths_are_returned_to() {
        for ok in ["/", "/private/", "/a//b", "/x?y=%2F%2Fz", "/caf%C3%A9"] {
            assert!(is_local_path(ok), "{ok} refused");
        }
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "/%2F%2Fevil.example",
            "/%2fevil.example",
            "/%5Cevil.example",
            "/%252F%252Fevil.example",
            "https://evil.example/",
            "evil.example",
            "/a\r\nLocation: x",
            "/a%0d%0aSet-Cookie:x",
            "/a%09b",
            "",
        ] {
            assert!(!is_local_path(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_login_location_carries_a_local_return_only() {
        assert_eq!(
            login_location("/login", "/private/a b", Some("x=1&y=2")),
            "/login?return=%2Fprivate%2Fa+b%3Fx%3D1%26y%3D2"
        );
        assert_eq!(
            login_location("/login?app=1", "/p", None),
            "/login?app=1&return=%2Fp"
        );
        assert_eq!(
            login_location("/login", "//evil.example/", None),
            "/login?return=%2F"
        );
        assert_eq!(
            login_location("/login", "/p", Some("a=%0D%0ALocation:%20x")),
            "/login?return=%2F"
        );
    }

    #[test]
    fn login_urls_are_checked_at_startup() {
        assert!(login_url("L", "/login").is_ok());
        assert!(login_url("L", "https://sso.example/login?app=x").is_ok());
        for bad in ["login", "//evil", "/a b", "", "https://", "javascript:x"] {
            assert!(login_url("L", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn index_keys_hide_the_name_and_depend_on_the_scope() {
        let k = user_index_key("shop", "../../etc/passwd");
        assert_eq!(k.len(), 64);
        assert!(k.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(k, user_index_key("blog", "../../etc/passwd"));
        assert_ne!(user_index_key("a", "bc"), user_index_key("ab", "c"));
    }
}
