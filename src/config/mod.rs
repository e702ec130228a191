//! Configuration: per-directory (`DirConfig`) and per-server
//! (`ServerConfig`) values, each field `Some` only where a directive set it.
//! Merging takes the inner value where set; getters apply the SPEC defaults,
//! and nothing else in the crate spells a default.

pub mod value;

use crate::cookie::{CookieAttrs, SameSite};
use crate::error::ConfigError;
use crate::store::StoreUrl;
use std::path::{Path, PathBuf};
use std::time::Duration;
use value::{CreateMode, SecureMode};

/// Fields for `<Directory>`, `<Location>`, `.htaccess` and server defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DirConfig {
    pub enabled: Option<bool>,
    pub cookie_name: Option<String>,
    pub cookie_path: Option<String>,
    pub cookie_domain: Option<String>,
    pub cookie_secure: Option<SecureMode>,
    pub cookie_http_only: Option<bool>,
    pub cookie_same_site: Option<Option<SameSite>>,
    pub cookie_max_age: Option<u64>,
    pub timeout: Option<u64>,
    pub max_lifetime: Option<u64>,
    pub touch_interval: Option<u64>,
    pub lock: Option<bool>,
    pub lock_timeout: Option<Duration>,
    pub scratch: Option<bool>,
    pub env: Option<bool>,
    pub forward_headers: Option<bool>,
    pub update_header: Option<String>,
    pub max_data_size: Option<usize>,
    pub create: Option<CreateMode>,
    /// `RSessionUser`: the data key whose value is the request's user.
    pub user_key: Option<String>,
    /// `RSessionLoginURL`.
    pub login_url: Option<String>,
    /// Set (not by a directive) where a `Require rsession` line appears,
    /// so the session is resolved before authorization there.
    pub uses_authz: Option<bool>,
}

/// Fields for the main server and `<VirtualHost>`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerConfig {
    pub store: Option<StoreUrl>,
    pub secrets: Option<Vec<Vec<u8>>>,
    pub lock_ttl: Option<u64>,
    pub scratch_root: Option<PathBuf>,
    pub gc_interval: Option<u64>,
    pub scope: Option<String>,
    pub max_sessions: Option<u64>,
    pub scratch_group: Option<value::ScratchGroup>,
}

macro_rules! merge_fields {
    ($ty:ident, $base:expr, $add:expr; $($field:ident),* $(,)?) => {
        $ty { $($field: $add.$field.clone().or_else(|| $base.$field.clone()),)* }
    };
}

impl DirConfig {
    /// `add` (the inner container) wins wherever it set a value.
    pub fn merge(base: &DirConfig, add: &DirConfig) -> DirConfig {
        merge_fields!(DirConfig, base, add;
            enabled, cookie_name, cookie_path, cookie_domain, cookie_secure,
            cookie_http_only, cookie_same_site, cookie_max_age, timeout,
            max_lifetime, touch_interval, lock, lock_timeout, scratch, env,
            forward_headers, update_header, max_data_size, create, user_key,
            login_url, uses_authz)
    }

    /// Applies one directive to this container.
    pub fn set(&mut self, directive: &str, arg: &str) -> Result<(), ConfigError> {
        use value::*;
        let d = directive;
        match d {
            "RSession" => self.enabled = Some(on_off(d, arg)?),
            "RSessionCookieName" => self.cookie_name = Some(cookie_name(d, arg)?),
            "RSessionCookiePath" => self.cookie_path = Some(cookie_path(d, arg)?),
            "RSessionCookieDomain" => self.cookie_domain = Some(cookie_domain(d, arg)?),
            "RSessionCookieSecure" => self.cookie_secure = Some(secure_mode(d, arg)?),
            "RSessionCookieHttpOnly" => self.cookie_http_only = Some(on_off(d, arg)?),
            "RSessionCookieSameSite" => self.cookie_same_site = Some(same_site(d, arg)?),
            "RSessionCookieMaxAge" => self.cookie_max_age = Some(seconds(d, arg, 0)?),
            "RSessionTimeout" => self.timeout = Some(seconds(d, arg, 1)?),
            "RSessionMaxLifetime" => self.max_lifetime = Some(seconds(d, arg, 0)?),
            "RSessionTouchInterval" => self.touch_interval = Some(seconds(d, arg, 0)?),
            "RSessionLock" => self.lock = Some(on_off(d, arg)?),
            "RSessionLockTimeout" => self.lock_timeout = Some(decimal_seconds(d, arg)?),
            "RSessionScratch" => self.scratch = Some(on_off(d, arg)?),
            "RSessionEnv" => self.env = Some(on_off(d, arg)?),
            "RSessionForwardHeaders" => self.forward_headers = Some(on_off(d, arg)?),
            "RSessionUpdateHeader" => self.update_header = Some(header_name(d, arg)?),
            "RSessionMaxDataSize" => self.max_data_size = Some(bytes(d, arg)?),
            "RSessionCreate" => self.create = Some(create_mode(d, arg)?),
            "RSessionUser" => self.user_key = Some(data_key(d, arg)?),
            "RSessionLoginURL" => self.login_url = Some(crate::auth::login_url(d, arg)?),
            _ => return Err(ConfigError::new(d, arg, "a directive of mod_rsession")),
        }
        self.check_cookie_rules(d, arg)
    }

    /// Cookie settings that contradict each other within one container are
    /// a startup error. Checked after every directive, so the order of the
    /// lines does not matter.
    fn check_cookie_rules(&self, directive: &str, arg: &str) -> Result<(), ConfigError> {
        let host_prefixed = self
            .cookie_name
            .as_deref()
            .is_some_and(|n| n.starts_with("__Host-"));
        let conflict = |why: &str| Err(ConfigError::new(directive, arg, why));
        if host_prefixed {
            if self.cookie_path.as_deref().is_some_and(|p| p != "/") {
                return conflict("RSessionCookiePath / with a __Host- cookie name");
            }
            if self.cookie_domain.is_some() {
                return conflict("no RSessionCookieDomain with a __Host- cookie name");
            }
            if self.cookie_secure == Some(SecureMode::Off) {
                return conflict(
                    "RSessionCookieSecure On or Auto with a __Host- cookie name (it forces Secure)",
                );
            }
        }
        if self.cookie_same_site == Some(Some(SameSite::None))
            && self.cookie_secure == Some(SecureMode::Off)
        {
            return conflict("RSessionCookieSecure On or Auto with RSessionCookieSameSite None (it implies Secure)");
        }
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.enabled.unwrap_or(false)
    }
    pub fn cookie_name(&self) -> &str {
        self.cookie_name.as_deref().unwrap_or("sid")
    }
    pub fn timeout(&self) -> u64 {
        self.timeout.unwrap_or(1800)
    }
    pub fn max_lifetime(&self) -> u64 {
        self.max_lifetime.unwrap_or(0)
    }
    pub fn touch_interval(&self) -> u64 {
        self.touch_interval.unwrap_or(60)
    }
    /// How often an unchanged session's access time is really rewritten:
    /// the touch interval, but at least twice per idle timeout, so that
    /// the grace an idle deadline allows for the lag stays small.
    pub fn effective_touch_interval(&self) -> u64 {
        self.touch_interval().min(self.timeout() / 2)
    }
    pub fn lock(&self) -> bool {
        self.lock.unwrap_or(true)
    }
    pub fn lock_timeout(&self) -> Duration {
        self.lock_timeout.unwrap_or(Duration::from_secs(10))
    }
    pub fn scratch(&self) -> bool {
        self.scratch.unwrap_or(true)
    }
    pub fn env(&self) -> bool {
        self.env.unwrap_or(true)
    }
    pub fn forward_headers(&self) -> bool {
        self.forward_headers.unwrap_or(false)
    }
    pub fn update_header(&self) -> &str {
        self.update_header.as_deref().unwrap_or("X-RSession")
    }
    pub fn max_data_size(&self) -> usize {
        self.max_data_size.unwrap_or(65536)
    }
    pub fn user_key(&self) -> Option<&str> {
        self.user_key.as_deref()
    }
    pub fn login_url(&self) -> Option<&str> {
        self.login_url.as_deref()
    }
    /// Whether a `Require rsession` line stands here or in a section this
    /// one inherits from (a section with Require lines of its own may
    /// replace them: authorization tells).
    pub fn uses_authz(&self) -> bool {
        self.uses_authz == Some(true)
    }

    /// Whether the session must be resolved before authorization (the
    /// caller adds `AuthType RSession`, which mod_authn_core keeps).
    pub fn needs_early_session(&self) -> bool {
        self.user_key.is_some() || self.uses_authz == Some(true)
    }
    /// Whether a new session is kept even if the request writes nothing.
    pub fn create_always(&self) -> bool {
        self.create == Some(CreateMode::Always)
    }

    /// The cookie's attributes for a request, with the forcing rules applied:
    /// `__Host-` means Secure, Path=/ and no Domain; `__Secure-` and
    /// SameSite=None mean Secure.
    pub fn cookie_attrs(&self, is_https: bool) -> CookieAttrs {
        let name = self.cookie_name().to_string();
        let host_prefixed = name.starts_with("__Host-");
        let same_site = self.cookie_same_site.unwrap_or(Some(SameSite::Lax));
        let secure = host_prefixed
            || name.starts_with("__Secure-")
            || same_site == Some(SameSite::None)
            || match self.cookie_secure.unwrap_or(SecureMode::Auto) {
                SecureMode::On => true,
                SecureMode::Off => false,
                SecureMode::Auto => is_https,
            };
        let (path, domain) = if host_prefixed {
            ("/".to_string(), None)
        } else {
            (
                self.cookie_path.clone().unwrap_or_else(|| "/".to_string()),
                self.cookie_domain.clone(),
            )
        };
        CookieAttrs {
            name,
            path,
            domain,
            secure,
            http_only: self.cookie_http_only.unwrap_or(true),
            same_site,
            max_age: self.cookie_max_age.unwrap_or(0),
        }
    }
}

impl ServerConfig {
    pub fn merge(base: &ServerConfig, add: &ServerConfig) -> ServerConfig {
        merge_fields!(ServerConfig, base, add; store, secrets, lock_ttl, scratch_root, gc_interval, scope, max_sessions, scratch_group)
    }

    /// Applies one server-level directive. `is_virtual` is true inside
    /// `<VirtualHost>`.
    pub fn set(&mut self, directive: &str, arg: &str, is_virtual: bool) -> Result<(), ConfigError> {
        use value::*;
        let d = directive;
        match d {
            "RSessionStore" => self.store = Some(StoreUrl::parse(d, arg)?),
            "RSessionLockTTL" => self.lock_ttl = Some(seconds(d, arg, 1)?),
            "RSessionScratchRoot" => self.scratch_root = Some(absolute_path(d, arg)?),
            "RSessionScratchGroup" => self.scratch_group = Some(system_group(d, arg)?),
            "RSessionScope" => self.scope = Some(scope_name(d, arg)?),
            "RSessionMaxSessions" => self.max_sessions = Some(count(d, arg)?),
            "RSessionGCInterval" if is_virtual => {
                return Err(ConfigError::new(
                    d,
                    arg,
                    "this directive in the main server config, not inside <VirtualHost>",
                ))
            }
            "RSessionGCInterval" => self.gc_interval = Some(seconds(d, arg, 0)?),
            "RSessionSecret" => {
                let key = secret(d, arg)?;
                self.secrets.get_or_insert_with(Vec::new).push(key);
            }
            _ => return Err(ConfigError::new(d, arg, "a directive of mod_rsession")),
        }
        Ok(())
    }

    pub fn lock_ttl(&self) -> u64 {
        self.lock_ttl.unwrap_or(120)
    }
    pub fn gc_interval(&self) -> u64 {
        self.gc_interval.unwrap_or(60)
    }
    pub fn max_sessions(&self) -> u64 {
        self.max_sessions.unwrap_or(0)
    }
    /// The scope sessions of this server are bound to: `RSessionScope`,
    /// else the server's `ServerName` (passed in by the host).
    pub fn scope(&self, server_name: &str) -> String {
        self.scope
            .clone()
            .unwrap_or_else(|| server_name.to_ascii_lowercase())
    }
}

/// The directives that live in `ServerConfig` (context S V).
pub fn is_server_directive(directive: &str) -> bool {
    matches!(
        directive,
        "RSessionStore"
            | "RSessionSecret"
            | "RSessionLockTTL"
            | "RSessionScratchRoot"
            | "RSessionScratchGroup"
            | "RSessionGCInterval"
            | "RSessionScope"
            | "RSessionMaxSessions"
    )
}

/// Shortest literal secret accepted: anything shorter is guessable.
const MIN_SECRET_LEN: usize = 16;
/// Largest `file:` secret read (a key, not a document).
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// A literal secret, or `file:/path` naming a file that only its owner can
/// read (its trailing newline is not part of the key).
pub fn secret(directive: &str, value: &str) -> Result<Vec<u8>, ConfigError> {
    let Some(path) = value.strip_prefix("file:") else {
        if value.len() < MIN_SECRET_LEN {
            return Err(ConfigError::new(
                directive,
                "(hidden)",
                format!("a secret of at least {MIN_SECRET_LEN} characters, or file:/path"),
            ));
        }
        return Ok(value.as_bytes().to_vec());
    };
    let fail = |why: String| Err(ConfigError::new(directive, value, why));
    if !path.starts_with('/') {
        return fail("file: followed by an absolute path".into());
    }
    let (mut key, mode) = match crate::safe_fs::read_config_file(Path::new(path), MAX_SECRET_FILE) {
        Ok(read) => read,
        Err(e) if crate::safe_fs::is_not_regular(&e) => return fail("a regular file".into()),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return fail(format!("a secret file of at most {MAX_SECRET_FILE} bytes"))
        }
        Err(e) => return fail(format!("a readable secret file ({e})")),
    };
    // Readable by others, it is no secret; writable by them, they choose
    // the key.
    if mode & 0o066 != 0 {
        return fail(format!(
            "a secret file readable only by its owner, and writable by no one else (it is mode {:o}; chmod 600 it)",
            mode & 0o777
        ));
    }
    while key.last().is_some_and(|&c| c == b'\n' || c == b'\r') {
        key.pop();
    }
    if key.is_empty() {
        return fail("a secret file that is not empty".into());
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn dir(lines: &[(&str, &str)]) -> Result<DirConfig, ConfigError> {
        let mut c = DirConfig::default();
        for (d, v) in lines {
            c.set(d, v)?;
        }
        Ok(c)
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = DirConfig::default();
        assert!(!c.enabled());
        assert_eq!(c.cookie_name(), "sid");
        assert_eq!(c.timeout(), 1800);
        assert_eq!(c.touch_interval(), 60);
        assert!(c.lock());
        assert_eq!(c.lock_timeout(), Duration::from_secs(10));
        assert_eq!(c.update_header(), "X-RSession");
        assert_eq!(c.max_data_size(), 65536);
        assert!(!c.create_always(), "OnWrite by default");
        assert!(dir(&[("RSessionCreate", "always")])
            .unwrap()
            .create_always());
        assert!(dir(&[("RSessionCreate", "sometimes")]).is_err());
        let a = c.cookie_attrs(false);
        assert_eq!(a.set("v"), "sid=v; Path=/; HttpOnly; SameSite=Lax");
        assert!(c.cookie_attrs(true).secure);
        assert_eq!(ServerConfig::default().lock_ttl(), 120);
        assert_eq!(ServerConfig::default().gc_interval(), 60);
    }

    #[test]
    fn inner_container_overrides_only_what_it_sets() {
        let outer = dir(&[
            ("RSession", "On"),
            ("RSessionTimeout", "60"),
            ("RSessionCookieName", "app"),
        ])
        .unwrap();
        let inner = dir(&[("RSessionTimeout", "5")]).unwrap();
        let merged = DirConfig::merge(&outer, &inner);
        assert!(merged.enabled());
        assert_eq!(merged.timeout(), 5);
        assert_eq!(merged.cookie_name(), "app");
        let off = dir(&[("RSession", "Off")]).unwrap();
        assert!(!DirConfig::merge(&merged, &off).enabled());
        assert_eq!(DirConfig::merge(&merged, &off).timeout(), 5);
    }

    #[test]
    fn host_prefix_conflicts_fail_in_any_order() {
        assert!(dir(&[
            ("RSessionCookieName", "__Host-s"),
            ("RSessionCookiePath", "/app")
        ])
        .is_err());
        assert!(dir(&[
            ("RSessionCookiePath", "/app"),
            ("RSessionCookieName", "__Host-s")
        ])
        .is_err());
        assert!(dir(&[
            ("RSessionCookieDomain", "example.org"),
            ("RSessionCookieName", "__Host-s")
        ])
        .is_err());
        assert!(dir(&[
            ("RSessionCookieSecure", "Off"),
            ("RSessionCookieName", "__Host-s")
        ])
        .is_err());
        assert!(dir(&[
            ("RSessionCookieSameSite", "None"),
            ("RSessionCookieSecure", "Off")
        ])
        .is_err());
        let ok = dir(&[
            ("RSessionCookieName", "__Host-s"),
            ("RSessionCookiePath", "/"),
        ])
        .unwrap();
        let attrs = ok.cookie_attrs(false);
        assert!(attrs.secure);
        assert_eq!(attrs.path, "/");
    }

    #[test]
    fn forcing_rules_apply_across_containers() {
        let outer = dir(&[
            ("RSessionCookiePath", "/app"),
            ("RSessionCookieDomain", "example.org"),
        ])
        .unwrap();
        let inner = dir(&[("RSessionCookieName", "__Host-s")]).unwrap();
        let attrs = DirConfig::merge(&outer, &inner).cookie_attrs(false);
        assert_eq!(
            (attrs.path.as_str(), attrs.domain.as_deref(), attrs.secure),
            ("/", None, true)
        );
        let none = dir(&[("RSessionCookieSameSite", "None")]).unwrap();
        assert!(none.cookie_attrs(false).secure);
    }

    #[test]
    fn server_directives() {
        let mut s = ServerConfig::default();
        s.set("RSessionLockTTL", "30", false).unwrap();
        assert_eq!(s.lock_ttl(), 30);
        assert!(s.set("RSessionGCInterval", "10", true).is_err());
        s.set("RSessionGCInterval", "0", false).unwrap();
        assert_eq!(s.gc_interval(), 0);
        assert_eq!(s.scope("WWW.Example.org"), "www.example.org");
        s.set("RSessionScope", "shop", true).unwrap();
        assert_eq!(s.scope("www.example.org"), "shop");
        assert!(s.set("RSessionScope", "", true).is_err());
        assert!(s.set("RSessionScope", "a b", true).is_err());
        assert_eq!(s.max_sessions(), 0);
        s.set("RSessionMaxSessions", "100000", true).unwrap();
        assert_eq!(s.max_sessions(), 100_000);
        assert!(s.set("RSessionMaxSessions", "-1", true).is_err());
        assert!(s.set("RSessionMaxSessions", "lots", true).is_err());
        assert!(s.set("RSessionScratchRoot", "tmp/x", false).is_err());
        s.set("RSessionSecret", "0123456789abcdef-first", false)
            .unwrap();
        s.set("RSessionSecret", "0123456789abcdef-second", false)
            .unwrap();
        assert_eq!(s.secrets.as_ref().unwrap().len(), 2);
        let err = s.set("RSessionSecret", "short", false).unwrap_err();
        assert!(
            !err.to_string().contains("short"),
            "secret leaked into {err}"
        );
    }

    #[test]
    fn secret_files_must_be_private() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "file-secret-value").unwrap();
        let path = f.path().to_str().unwrap().to_string();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            secret("RSessionSecret", &format!("file:{path}")).unwrap(),
            b"file-secret-value"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = secret("RSessionSecret", &format!("file:{path}")).unwrap_err();
        assert!(err.to_string().contains("only by its owner"), "{err}");
        // Writable by the group: someone else would choose the key.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o620)).unwrap();
        assert!(secret("RSessionSecret", &format!("file:{path}")).is_err());
        // Linked into place: the file reached is what is checked and read.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert_eq!(
            secret("RSessionSecret", &format!("file:{}", link.display())).unwrap(),
            b"file-secret-value"
        );
        // A FIFO is refused without waiting for a writer; so is a huge file.
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(
            &fifo,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .unwrap();
        assert!(secret("RSessionSecret", &format!("file:{}", fifo.display())).is_err());
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'k'; 1 << 20]).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = secret("RSessionSecret", &format!("file:{}", big.display())).unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
        assert!(secret("RSessionSecret", "file:/nonexistent/key").is_err());
        assert!(secret("RSessionSecret", "file:relative").is_err());
    }
}
