//! One parser per kind of directive value. Each returns the final typed
//! value or a `ConfigError` that names the directive, the value and what is
//! expected.

use crate::cookie::SameSite;
use crate::error::ConfigError;
use std::path::PathBuf;
use std::time::Duration;

/// Ten years: the largest number of seconds any directive takes.
pub const MAX_SECONDS: u64 = 315_360_000;

pub fn on_off(directive: &str, value: &str) -> Result<bool, ConfigError> {
    if value.eq_ignore_ascii_case("on") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("off") {
        Ok(false)
    } else {
        Err(ConfigError::new(directive, value, "On or Off"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecureMode {
    On,
    Off,
    Auto,
}

pub fn secure_mode(directive: &str, value: &str) -> Result<SecureMode, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "on" => Ok(SecureMode::On),
        "off" => Ok(SecureMode::Off),
        "auto" => Ok(SecureMode::Auto),
        _ => Err(ConfigError::new(directive, value, "On, Off or Auto")),
    }
}

/// When a request that came without a valid session keeps the one it was
/// given (`RSessionCreate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateMode {
    /// Only once something was written to it (data, or a file left in its
    /// scratch directory).
    OnWrite,
    Always,
}

pub fn create_mode(directive: &str, value: &str) -> Result<CreateMode, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "onwrite" => Ok(CreateMode::OnWrite),
        "always" => Ok(CreateMode::Always),
        _ => Err(ConfigError::new(directive, value, "OnWrite or Always")),
    }
}

/// `Off` means "send no SameSite attribute".
pub fn same_site(directive: &str, value: &str) -> Result<Option<SameSite>, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "strict" => Ok(Some(SameSite::Strict)),
        "lax" => Ok(Some(SameSite::Lax)),
        "none" => Ok(Some(SameSite::None)),
        "off" => Ok(None),
        _ => Err(ConfigError::new(
            directive,
            value,
            "Strict, Lax, None or Off",
        )),
    }
}

/// A whole number of seconds in `min..=MAX_SECONDS`.
pub fn seconds(directive: &str, value: &str, min: u64) -> Result<u64, ConfigError> {
    let expected = || format!("a whole number of seconds from {min} to {MAX_SECONDS}");
    let n: u64 = value
        .parse()
        .map_err(|_| ConfigError::new(directive, value, expected()))?;
    if n < min || n > MAX_SECONDS {
        return Err(ConfigError::new(directive, value, expected()));
    }
    Ok(n)
}

/// Seconds with an optional fraction (`2.5`), from 0 to one hour.
pub fn decimal_seconds(directive: &str, value: &str) -> Result<Duration, ConfigError> {
    let expected = "a number of seconds from 0 to 3600, decimals allowed (e.g. 2.5)";
    let plain = !value.is_empty()
        && value.bytes().all(|c| c.is_ascii_digit() || c == b'.')
        && value.bytes().filter(|&c| c == b'.').count() <= 1
        && value != ".";
    let secs: f64 = match value.parse() {
        Ok(s) if plain => s,
        _ => return Err(ConfigError::new(directive, value, expected)),
    };
    if !(0.0..=3600.0).contains(&secs) {
        return Err(ConfigError::new(directive, value, expected));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A byte count from 1 to what a CGI environment variable can carry.
pub fn bytes(directive: &str, value: &str) -> Result<usize, ConfigError> {
    // Larger data could not reach a CGI through RSESSION_DATA: every CGI
    // request of such a session would fail with a 500.
    const MAX: usize = crate::expose::MAX_EXPORTABLE_DATA;
    let expected = || {
        format!("a whole number of bytes from 1 to {MAX} (the most a CGI environment variable can carry on Linux)")
    };
    match value.parse::<usize>() {
        Ok(n) if (1..=MAX).contains(&n) => Ok(n),
        _ => Err(ConfigError::new(directive, value, expected())),
    }
}

pub fn absolute_path(directive: &str, value: &str) -> Result<PathBuf, ConfigError> {
    if !value.starts_with('/') || value.contains('\0') {
        return Err(ConfigError::new(directive, value, "an absolute path"));
    }
    let trimmed = value.trim_end_matches('/');
    Ok(PathBuf::from(if trimmed.is_empty() {
        "/"
    } else {
        trimmed
    }))
}

/// A group of the system (`RSessionScratchGroup`), looked up now so that
/// `apachectl -t` names a missing one. Never root's group 0: scratch
/// directories are for unprivileged handlers.
pub fn system_group(directive: &str, value: &str) -> Result<ScratchGroup, ConfigError> {
    let found = nix::unistd::Group::from_name(value).ok().flatten();
    match found {
        Some(g) if g.gid.as_raw() != 0 => Ok(ScratchGroup {
            name: g.name,
            gid: g.gid.as_raw(),
        }),
        Some(_) => Err(ConfigError::new(
            directive,
            value,
            "a group other than root's (gid 0)",
        )),
        None => Err(ConfigError::new(
            directive,
            value,
            "the name of an existing group",
        )),
    }
}

/// `RSessionScratchGroup`: a group whose members share scratch directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScratchGroup {
    pub name: String,
    pub gid: u32,
}

/// A count: a whole number, 0 included.
pub fn count(directive: &str, value: &str) -> Result<u64, ConfigError> {
    value
        .parse::<u64>()
        .map_err(|_| ConfigError::new(directive, value, "a whole number (0 for no limit)"))
}

/// A scope name: printable ASCII without spaces, at most 255 bytes (it is
/// stored in every record).
pub fn scope_name(directive: &str, value: &str) -> Result<String, ConfigError> {
    let ok = !value.is_empty() && value.len() <= 255 && value.bytes().all(|c| c.is_ascii_graphic());
    if !ok {
        return Err(ConfigError::new(
            directive,
            value,
            "a name of 1 to 255 printable characters without spaces",
        ));
    }
    Ok(value.to_string())
}

/// A session data key (`RSessionUser`): printable, no spaces, at most
/// 255 bytes.
pub fn data_key(directive: &str, value: &str) -> Result<String, ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 255
        && !value.chars().any(|c| c.is_control() || c.is_whitespace());
    if !ok {
        return Err(ConfigError::new(
            directive,
            value,
            "a session data key of 1 to 255 characters without spaces",
        ));
    }
    Ok(value.to_string())
}

/// RFC 7230 token characters: what cookie and header names may use.
fn is_token(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

pub fn cookie_name(directive: &str, value: &str) -> Result<String, ConfigError> {
    if is_token(value) && value.len() <= 128 {
        Ok(value.to_string())
    } else {
        Err(ConfigError::new(
            directive,
            value,
            "a cookie name of letters, digits and !#$%&'*+-.^_`|~ (at most 128)",
        ))
    }
}

pub fn cookie_path(directive: &str, value: &str) -> Result<String, ConfigError> {
    let clean = value.starts_with('/')
        && value
            .bytes()
            .all(|c| c.is_ascii_graphic() && c != b';' && c != b',');
    if clean {
        Ok(value.to_string())
    } else {
        Err(ConfigError::new(
            directive,
            value,
            "a URL path starting with / without spaces, ';' or ','",
        ))
    }
}

pub fn cookie_domain(directive: &str, value: &str) -> Result<String, ConfigError> {
    let host = value.strip_prefix('.').unwrap_or(value);
    let clean = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        });
    if clean {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(ConfigError::new(
            directive,
            value,
            "a host name such as example.org",
        ))
    }
}

pub fn header_name(directive: &str, value: &str) -> Result<String, ConfigError> {
    if is_token(value) {
        Ok(value.to_string())
    } else {
        Err(ConfigError::new(directive, value, "an HTTP header name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_off_words() {
        assert_eq!(on_off("RSession", "ON"), Ok(true));
        assert_eq!(on_off("RSession", "off"), Ok(false));
        let err = on_off("RSession", "yes").unwrap_err();
        assert_eq!(err.to_string(), "RSession 'yes': expected On or Off");
    }

    #[test]
    fn seconds_are_checked() {
        assert_eq!(seconds("RSessionTimeout", "1800", 1), Ok(1800));
        for bad in [
            "ten",
            "-1",
            "0",
            "1.5",
            "",
            "315360001",
            "99999999999999999999999",
        ] {
            let err = seconds("RSessionTimeout", bad, 1).unwrap_err();
            assert!(err.to_string().starts_with("RSessionTimeout '"), "{err}");
            assert!(err.to_string().contains("whole number of seconds"));
        }
        assert_eq!(seconds("RSessionMaxLifetime", "0", 0), Ok(0));
    }

    #[test]
    fn decimal_seconds_allow_fractions() {
        assert_eq!(decimal_seconds("L", "2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(decimal_seconds("L", "10"), Ok(Duration::from_secs(10)));
        for bad in ["", ".", "-1", "1e3", "NaN", "inf", "3601", "1.2.3", " 1"] {
            assert!(decimal_seconds("L", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_paths_and_domains() {
        assert!(cookie_name("N", "__Host-sid").is_ok());
        for bad in ["", "a b", "a;b", "a=b", "é"] {
            assert!(cookie_name("N", bad).is_err(), "{bad:?} accepted");
        }
        assert!(cookie_path("P", "/app").is_ok());
        for bad in ["app", "/a;b", "/a b", ""] {
            assert!(cookie_path("P", bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            cookie_domain("D", ".Example.org"),
            Ok(".example.org".into())
        );
        for bad in ["", ".", "a..b", "a;b", "exa mple.org"] {
            assert!(cookie_domain("D", bad).is_err(), "{bad:?} accepted");
        }
        assert!(absolute_path("R", "relative/path").is_err());
        assert_eq!(
            absolute_path("R", "/var/lib/x/"),
            Ok(PathBuf::from("/var/lib/x"))
        );
        assert!(bytes("B", "0").is_err());
        assert_eq!(bytes("B", "65536"), Ok(65536));
    }

    #[test]
    fn control_characters_are_escaped_in_messages() {
        let err = on_off("RSession", "a\nb").unwrap_err();
        assert_eq!(err.to_string(), "RSession 'a\\nb': expected On or Off");
    }
}
