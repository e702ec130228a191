//! The Redis forms of `RSessionStore` (SPEC §3, §7): one server over TCP,
//! TLS or a Unix socket, a Sentinel-watched master, or a Cluster. Files the
//! URL names (`password_file`, TLS material) are read here, when the
//! directive is parsed: by the parent, as root, so `apachectl -t` catches
//! every problem and the children need no access to them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a Redis store lives, with everything needed to reach it. Neither
/// `Display` (used in logs, the status page and as the store's identity)
/// nor anything else shows the password or key material; there is no
/// `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub mode: RedisMode,
    /// One for `Single`; the sentinels for `Sentinel`; seed nodes for
    /// `Cluster`.
    pub nodes: Vec<RedisNode>,
    pub db: u32,
    /// An ACL user (Redis 6+); `None`: the default user.
    pub username: Option<String>,
    pub password: Option<String>,
    /// `Some` for the `rediss` schemes.
    pub tls: Option<RedisTls>,
    pub prefix: String,
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisMode {
    Single,
    /// The master the sentinels know by this name.
    Sentinel {
        master: String,
    },
    Cluster,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisNode {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

/// TLS settings: without `ca`, the system's CAs verify the server.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    pub ca: Option<PemFile>,
    /// A client certificate and its key (`cert_file`, `key_file`).
    pub client: Option<(PemFile, PemFile)>,
}

/// A PEM file's path (for messages) and contents.
#[derive(Clone, PartialEq, Eq)]
pub struct PemFile {
    pub path: PathBuf,
    pub pem: Vec<u8>,
}

const DEFAULT_PORT: u16 = 6379;
const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// What each form looks like, for error messages.
pub const FORMS: &str = "file:/abs/path, redis://[[user]:password@]host[:port][/db][?params], \
rediss://… (TLS), unix:/path/to/socket[?db=N&params], \
redis-sentinel://[[user]:password@]host:port[,host:port…]/MASTER[/db][?params] \
(rediss-sentinel:// for TLS), or redis-cluster://[[user]:password@]host:port[,host:port…][?params] \
(rediss-cluster:// for TLS); params: prefix, timeout, password_file, ca_file, cert_file, key_file";

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.tls.is_some() { "s" } else { "" };
        let user = match &self.username {
            Some(u) => format!("{u}@"),
            None => String::new(),
        };
        let nodes = || {
            self.nodes
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        match &self.mode {
            RedisMode::Single => match self.nodes.first() {
                Some(RedisNode::Unix(path)) => write!(
                    f,
                    "unix:{}?db={}&prefix={}",
                    path.display(),
                    self.db,
                    self.prefix
                ),
                _ => write!(
                    f,
                    "redis{s}://{user}{}/{}?prefix={}",
                    nodes(),
                    self.db,
                    self.prefix
                ),
            },
            RedisMode::Sentinel { master } => write!(
                f,
                "redis{s}-sentinel://{user}{}/{master}/{}?prefix={}",
                nodes(),
                self.db,
                self.prefix
            ),
            RedisMode::Cluster => write!(
                f,
                "redis{s}-cluster://{user}{}?prefix={}",
                nodes(),
                self.prefix
            ),
        }
    }
}

impl fmt::Display for RedisNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisNode::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            RedisNode::Tcp { host, port } => write!(f, "{host}:{port}"),
            RedisNode::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A URL with its credentials blanked, for error messages. Everything up
/// to the last '@' goes, since a malformed URL (a mistyped scheme, a '?'
/// in a password) may have one anywhere; only a scheme stays. The query
/// goes too (a password may stand there as a parameter of another
/// client's syntax), and so does anything where the hosts should be that
/// is not host[:port] (`redis://user:password` without its host).
pub fn redact(url: &str) -> String {
    let cut_query = |s: &str| match s.split_once('?') {
        Some((before, _)) => format!("{before}?…"),
        None => s.to_string(),
    };
    let scheme_end = url.find(':').filter(|&c| {
        c > 0
            && url[..c]
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '+' | '-' | '.'))
    });
    let scheme = |end: usize| {
        let sep = if url[end..].starts_with("://") {
            "://"
        } else {
            ":"
        };
        format!("{}{sep}", &url[..end])
    };
    if let Some(at) = url.rfind('@') {
        let head = match scheme_end.filter(|&c| c < at) {
            Some(c) => scheme(c),
            None => String::new(),
        };
        return format!("{head}(credentials hidden){}", cut_query(&url[at..]));
    }
    let main = url.split_once('?').map_or(url, |(m, _)| m);
    let hosts_ok = match scheme_end {
        Some(c) if url[c..].starts_with("://") => {
            let authority = main[c + 3..].split('/').next().unwrap_or_default();
            // What the parser would take as hosts; anything else may be
            // a password.
            authority
                .split(',')
                .all(|host| parse_host(host, DEFAULT_PORT).is_ok())
        }
        Some(c) => url[..c].eq_ignore_ascii_case("unix"),
        None => false,
    };
    match (hosts_ok, scheme_end) {
        (true, _) => cut_query(url),
        (false, Some(c)) => format!("{}(not shown)", scheme(c)),
        (false, None) => "(not shown)".to_string(),
    }
}

/// Parses a Redis form of `RSessionStore`; `None` when `value` is not one
/// (another scheme). The error says what is expected (the caller names
/// the directive and the redacted value).
pub fn parse(value: &str) -> Option<Result<RedisUrl, String>> {
    let schemes = [
        ("redis://", RedisScheme::Single, false),
        ("rediss://", RedisScheme::Single, true),
        ("redis-sentinel://", RedisScheme::Sentinel, false),
        ("rediss-sentinel://", RedisScheme::Sentinel, true),
        ("redis-cluster://", RedisScheme::Cluster, false),
        ("rediss-cluster://", RedisScheme::Cluster, true),
        ("unix:", RedisScheme::Unix, false),
    ];
    let (rest, scheme, tls) = schemes
        .iter()
        .find_map(|(prefix, scheme, tls)| Some((value.strip_prefix(prefix)?, *scheme, *tls)))?;
    Some(parse_form(rest, scheme, tls))
}

#[derive(Clone, Copy, PartialEq)]
enum RedisScheme {
    Single,
    Sentinel,
    Cluster,
    Unix,
}

fn parse_form(rest: &str, scheme: RedisScheme, tls: bool) -> Result<RedisUrl, String> {
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    // An '@' after the '?' most likely ends credentials whose password
    // holds a '?': the "query" is then the password's tail, not to be
    // repeated in an error.
    let params = Params::parse(query, scheme == RedisScheme::Unix).map_err(|why| {
        if query.contains('@') {
            "query parameters as documented (a '?', '&' or '#' in a password is written %3F, %26, %23)".to_string()
        } else {
            why
        }
    })?;
    let mut url = RedisUrl {
        mode: RedisMode::Single,
        nodes: Vec::new(),
        db: 0,
        username: None,
        password: None,
        tls: None,
        prefix: params.prefix.clone().unwrap_or_else(|| "rsession:".into()),
        timeout: params.timeout.unwrap_or(Duration::from_millis(2000)),
    };
    if scheme == RedisScheme::Unix {
        if !main.starts_with('/') || main.len() < 2 || main.contains('\0') {
            return Err("unix: followed by the absolute path of Redis's socket".into());
        }
        url.nodes.push(RedisNode::Unix(PathBuf::from(main)));
        url.db = params.db.unwrap_or(0);
    } else {
        // The last '@' ends the credentials, so an unescaped '@' or '/' in
        // a password still works.
        let (creds, located) = match main.rfind('@') {
            Some(at) => (Some(&main[..at]), &main[at + 1..]),
            None => (None, main),
        };
        if let Some(creds) = creds {
            let (user, password) = match creds.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (creds, None),
            };
            if !user.is_empty() {
                url.username =
                    Some(percent_decode(user).ok_or("a user name with valid %-escapes")?);
            }
            if let Some(p) = password {
                if p.is_empty() {
                    return Err("a password after the ':' (or none, with password_file)".into());
                }
                url.password = Some(percent_decode(p).ok_or("a password with valid %-escapes")?);
            } else if params.password_file.is_none() {
                // Not repeated: what stands before the '@' may be a
                // password written without its user.
                return Err("user:password@ or :password@ (a user name alone before the '@' needs password_file=/path)".into());
            }
        }
        let (hosts, path) = located.split_once('/').unwrap_or((located, ""));
        let default_port = match scheme {
            RedisScheme::Sentinel => DEFAULT_SENTINEL_PORT,
            _ => DEFAULT_PORT,
        };
        for host in hosts.split(',') {
            url.nodes.push(parse_host(host, default_port)?);
        }
        let mut path = path.split('/');
        match scheme {
            RedisScheme::Single => {
                if url.nodes.len() != 1 {
                    return Err(
                        "a single host (several are for redis-sentinel:// or redis-cluster://)"
                            .into(),
                    );
                }
                url.db = parse_db(path.next())?;
            }
            RedisScheme::Sentinel => {
                let master = path.next().unwrap_or_default();
                if master.is_empty() {
                    return Err("/MASTER after the sentinels: the name the sentinels monitor the master under".into());
                }
                url.mode = RedisMode::Sentinel {
                    master: percent_decode(master).ok_or("a master name with valid %-escapes")?,
                };
                url.db = parse_db(path.next())?;
            }
            RedisScheme::Cluster | RedisScheme::Unix => {
                url.mode = RedisMode::Cluster;
                if !matches!(path.next(), None | Some("")) {
                    return Err(
                        "no /db or path after the cluster's nodes (a cluster has database 0 only)"
                            .into(),
                    );
                }
            }
        }
        if path.next().is_some_and(|p| !p.is_empty()) {
            return Err("nothing after the database number".into());
        }
    }
    if url.mode == RedisMode::Cluster && url.prefix.contains('{') {
        return Err(
            "a prefix without '{' in a cluster (the session id is the keys' hash tag)".into(),
        );
    }
    if let Some(file) = &params.password_file {
        if url.password.is_some() {
            return Err("a password in the URL or password_file, not both".into());
        }
        url.password = Some(read_password_file(file)?);
    }
    match (tls, params.has_tls()) {
        (true, _) => url.tls = Some(params.tls()?),
        (false, true) => {
            return Err("ca_file, cert_file and key_file only with a TLS scheme (rediss://, rediss-sentinel://, rediss-cluster://)".into())
        }
        (false, false) => {}
    }
    Ok(url)
}

fn parse_host(host: &str, default_port: u16) -> Result<RedisNode, String> {
    // The host is not repeated: with the '@' forgotten, it is a password.
    let bad = || "host[:port] with a host name and a port from 1 to 65535".to_string();
    let (name, port) = if let Some(v6) = host.strip_prefix('[') {
        let (name, after) = v6.split_once(']').ok_or_else(bad)?;
        match after {
            "" => (name, None),
            p => (name, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        }
    };
    let port = match port {
        None => default_port,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?,
    };
    // A ':' belongs in an IPv6 address, which is written in brackets.
    let bracketed = host.starts_with('[');
    let valid = |c: char| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') || (bracketed && c == ':')
    };
    if name.is_empty() || !name.chars().all(valid) {
        return Err(bad());
    }
    Ok(RedisNode::Tcp {
        host: name.to_string(),
        port,
    })
}

fn parse_db(db: Option<&str>) -> Result<u32, String> {
    match db.unwrap_or_default() {
        "" => Ok(0),
        d => d
            .parse::<u32>()
            .map_err(|_| format!("a database number after the / (not '{d}')")),
    }
}

/// `%XX` escapes decoded; `None` for a bad escape or bytes that are not
/// UTF-8. (`+` stays `+`: this is a URL, not a form.)
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[derive(Default)]
struct Params {
    prefix: Option<String>,
    timeout: Option<Duration>,
    db: Option<u32>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

impl Params {
    fn parse(query: &str, unix: bool) -> Result<Params, String> {
        let mut p = Params::default();
        for pair in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v).ok_or_else(|| format!("{k}= with valid %-escapes"))?;
            let path = |what: &str| -> Result<Option<PathBuf>, String> {
                if v.starts_with('/') && !v.contains('\0') {
                    Ok(Some(PathBuf::from(&v)))
                } else {
                    Err(format!("{what}= followed by an absolute path"))
                }
            };
            match k {
                "prefix" => p.prefix = Some(v.clone()),
                "timeout" => match v.parse::<u64>() {
                    Ok(ms) if (1..=60_000).contains(&ms) => {
                        p.timeout = Some(Duration::from_millis(ms))
                    }
                    _ => {
                        return Err(
                            "timeout=MS with MS a whole number of milliseconds from 1 to 60000"
                                .into(),
                        )
                    }
                },
                "db" if unix => p.db = Some(parse_db(Some(&v))?),
                "password_file" => p.password_file = path("password_file")?,
                "ca_file" => p.ca_file = path("ca_file")?,
                "cert_file" => p.cert_file = path("cert_file")?,
                "key_file" => p.key_file = path("key_file")?,
                other => {
                    let db = if unix { "db, " } else { "" };
                    return Err(format!(
                        "only the query parameters {db}prefix, timeout, password_file, ca_file, cert_file and key_file (not '{other}')"
                    ));
                }
            }
        }
        Ok(p)
    }

    fn has_tls(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    fn tls(&self) -> Result<RedisTls, String> {
        let ca = self
            .ca_file
            .as_deref()
            .map(|p| read_pem(p, "ca_file", PemKind::Certificates))
            .transpose()?;
        let client = match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => Some((
                read_pem(c, "cert_file", PemKind::Certificates)?,
                read_pem(k, "key_file", PemKind::Key)?,
            )),
            (None, None) => None,
            _ => {
                return Err(
                    "cert_file and key_file together (a client certificate needs its key)".into(),
                )
            }
        };
        check_tls(ca.as_ref(), client.as_ref())?;
        Ok(RedisTls { ca, client })
    }
}

/// What the TLS connection will make of the files, tried now: a CA that
/// rustls will not take as a root, or a client key that is not the
/// certificate's, fails the config check instead of every connection.
fn check_tls(ca: Option<&PemFile>, client: Option<&(PemFile, PemFile)>) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = |pem: &PemFile| -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(&pem.pem)
            .filter_map(Result::ok)
            .collect()
    };
    if let Some(ca) = ca {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs(ca) {
            roots.add(cert).map_err(|e| {
                format!(
                    "ca_file={} to hold CA certificates rustls accepts ({e})",
                    ca.path.display()
                )
            })?;
        }
    }
    if let Some((cert, key)) = client {
        let key_der = PrivateKeyDer::from_pem_slice(&key.pem)
            .map_err(|_| format!("key_file={} to hold a PEM private key", key.path.display()))?;
        let provider = rustls::crypto::ring::default_provider();
        rustls::sign::CertifiedKey::from_der(certs(cert), key_der, &provider).map_err(|e| {
            format!(
                "key_file={} to be the private key of cert_file={} ({e})",
                key.path.display(),
                cert.path.display()
            )
        })?;
    }
    Ok(())
}

#[derive(PartialEq)]
enum PemKind {
    Certificates,
    Key,
}

/// Reads and checks a PEM file, so a wrong one fails at startup.
fn read_pem(path: &Path, param: &str, kind: PemKind) -> Result<PemFile, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let shown = path.display();
    let (pem, mode) = read_small(path).map_err(|e| format!("{param}={shown} to be {e}"))?;
    // Debian keeps keys 0640 root:ssl-cert; one anybody can read is a
    // leaked key.
    if kind == PemKind::Key && mode & 0o004 != 0 {
        return Err(format!(
            "{param}={shown} not readable by everyone (it is mode {:o}; chmod o-r it)",
            mode & 0o777
        ));
    }
    let ok = match kind {
        PemKind::Certificates => {
            let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
            certs.is_ok_and(|c| !c.is_empty())
        }
        PemKind::Key => PrivateKeyDer::from_pem_slice(&pem).is_ok(),
    };
    if !ok {
        let what = match kind {
            PemKind::Certificates => "one or more PEM certificates",
            PemKind::Key => "a PEM private key",
        };
        return Err(format!("{param}={shown} to hold {what}"));
    }
    Ok(PemFile {
        path: path.to_path_buf(),
        pem,
    })
}

/// Largest file the URL may name: a FIFO or /dev/zero must not hang or
/// fill the config check.
const MAX_FILE: u64 = 1 << 20;

/// A regular file's contents (up to `MAX_FILE`) and mode; the error
/// completes "to be …".
fn read_small(path: &Path) -> Result<(Vec<u8>, u32), String> {
    crate::safe_fs::read_config_file(path, MAX_FILE).map_err(|e| {
        if crate::safe_fs::is_not_regular(&e) {
            "a regular file".to_string()
        } else if e.kind() == std::io::ErrorKind::InvalidData {
            format!("at most {MAX_FILE} bytes")
        } else {
            format!("readable ({e})")
        }
    })
}

/// The password in `path`, a file only its owner can read or write (like
/// `RSessionSecret file:`), without its trailing newline.
fn read_password_file(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let (bytes, mode) = read_small(path).map_err(|e| format!("password_file={shown} to be {e}"))?;
    if mode & 0o066 != 0 {
        return Err(format!(
            "password_file={shown} readable only by its owner, and writable by no one else (it is mode {:o}; chmod 600 it)",
            mode & 0o777
        ));
    }
    let mut text = String::from_utf8(bytes)
        .map_err(|_| format!("password_file={shown} to hold UTF-8 text"))?;
    while text.ends_with('\n') || text.ends_with('\r') {
        text.pop();
    }
    if text.is_empty() {
        return Err(format!("password_file={shown} to hold a password"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn ok(s: &str) -> RedisUrl {
        match parse(s) {
            Some(Ok(u)) => u,
            Some(Err(e)) => panic!("{s}: {e}"),
            None => panic!("{s}: not a redis form"),
        }
    }

    fn err(s: &str) -> String {
        match parse(s) {
            Some(Err(e)) => e,
            Some(Ok(u)) => panic!("{s} accepted as {u}"),
            None => panic!("{s}: not a redis form"),
        }
    }

    fn tcp(host: &str, port: u16) -> RedisNode {
        RedisNode::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn single_server_forms() {
        let u = ok("redis://:s3cret@cache.local:6380/2?prefix=app:&timeout=500");
        assert_eq!(u.nodes, vec![tcp("cache.local", 6380)]);
        assert_eq!((u.db, u.username.as_deref()), (2, None));
        assert_eq!(u.password.as_deref(), Some("s3cret"));
        assert_eq!(
            (u.prefix.as_str(), u.timeout),
            ("app:", Duration::from_millis(500))
        );
        let u = ok("redis://app:p%40ss+w%2Fd@h");
        assert_eq!(u.username.as_deref(), Some("app"));
        assert_eq!(u.password.as_deref(), Some("p@ss+w/d"));
        assert_eq!(u.to_string(), "redis://app@h:6379/0?prefix=rsession:");
        let u = ok("redis://127.0.0.1");
        assert_eq!((u.nodes[0].clone(), u.db), (tcp("127.0.0.1", 6379), 0));
        assert_eq!(u.timeout, Duration::from_secs(2));
        assert_eq!(ok("redis://[::1]:7000/1").nodes, vec![tcp("::1", 7000)]);
        let u = ok("unix:/run/redis/redis.sock?db=3&prefix=x:");
        assert_eq!(
            u.nodes,
            vec![RedisNode::Unix("/run/redis/redis.sock".into())]
        );
        assert_eq!(u.db, 3);
        assert_eq!(u.to_string(), "unix:/run/redis/redis.sock?db=3&prefix=x:");
    }

    #[test]
    fn sentinel_and_cluster_forms() {
        let u = ok("redis-sentinel://:pw@s1:26379,s2,[::1]:26380/mymaster/4?timeout=300");
        assert_eq!(
            u.nodes,
            vec![tcp("s1", 26379), tcp("s2", 26379), tcp("::1", 26380)]
        );
        assert_eq!(
            u.mode,
            RedisMode::Sentinel {
                master: "mymaster".into()
            }
        );
        assert_eq!(u.db, 4);
        assert_eq!(
            u.to_string(),
            "redis-sentinel://s1:26379,s2:26379,[::1]:26380/mymaster/4?prefix=rsession:"
        );
        let u = ok("redis-cluster://app:pw@n1:7000,n2:7001");
        assert_eq!(u.mode, RedisMode::Cluster);
        assert_eq!(u.nodes.len(), 2);
        assert_eq!(
            u.to_string(),
            "redis-cluster://app@n1:7000,n2:7001?prefix=rsession:"
        );
        assert!(!u.to_string().contains("pw"));
    }

    #[test]
    fn refuses_malformed_urls() {
        for bad in [
            "redis://",
            "redis://h:0",
            "redis://h:99999",
            "redis://h/x",
            "redis://h/1/2",
            "redis://h?timeout=0",
            "redis://h?foo=1",
            "redis://h?db=1",
            "redis://a,b",
            "redis://app@h",
            "redis://app:@h",
            "redis://:p%zz@h",
            "redis://h?ca_file=/etc/hosts",
            "rediss://h?ca_file=relative",
            "rediss://h?cert_file=/etc/hosts",
            "redis-sentinel://s1,s2",
            "redis-sentinel://s1/",
            "redis-cluster://n1/0",
            "redis-cluster://n1?prefix={x}",
            "unix:relative.sock",
            "unix:/s?prefix=a&bogus=1",
            "redis://h?password_file=/nonexistent/pw",
            "rediss://h?ca_file=/dev/zero",
            "redis://h?password_file=/dev/null",
        ] {
            err(bad);
        }
        assert!(err("redis://app@h").contains("password_file"));
        assert!(parse("http://h").is_none());
    }

    #[test]
    fn password_files_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "hunter2\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let url = format!("redis://app@h?password_file={}", path.display());
        let u = ok(&url);
        assert_eq!(
            (u.username.as_deref(), u.password.as_deref()),
            (Some("app"), Some("hunter2"))
        );
        assert!(!u.to_string().contains("hunter2"));
        assert!(
            err(&format!("redis://:pw@h?password_file={}", path.display())).contains("not both")
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = err(&url);
        assert!(e.contains("only by its owner") && e.contains("644"), "{e}");
        assert!(!e.contains("hunter2"));
        // Writable by the group: someone else chooses the password.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o620)).unwrap();
        assert!(err(&url).contains("620"));
        // Linked into place (as secret mounts are): what is opened counts.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let linked = ok(&format!("redis://app@h?password_file={}", link.display()));
        assert_eq!(linked.password.as_deref(), Some("hunter2"));
        // A FIFO, even one mode 0600, is refused at once, not waited on.
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(
            &fifo,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .unwrap();
        let e = err(&format!("redis://app@h?password_file={}", fifo.display()));
        assert!(e.contains("a regular file"), "{e}");
    }

    #[test]
    fn a_key_file_anybody_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nMA==\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let url = format!(
            "rediss://h?cert_file={}&key_file={}",
            cert.display(),
            key.display()
        );
        let e = err(&url);
        assert!(e.contains("key_file") && e.contains("644"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(!err_or_ok_message(&url).contains("not readable by everyone"));
    }

    #[test]
    fn a_client_key_that_is_not_the_certificates_fails_the_config_check() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).display().to_string();
        let openssl = |args: &[&str]| {
            let ok = std::process::Command::new("openssl")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status()
                .expect("openssl (make test installs it)")
                .success();
            assert!(ok, "openssl {args:?}");
        };
        for n in ["a", "b"] {
            openssl(&[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &p(&format!("{n}.key")),
            ]);
        }
        let (cert, a_key, b_key) = (p("a.crt"), p("a.key"), p("b.key"));
        openssl(&[
            "req",
            "-new",
            "-x509",
            "-key",
            &a_key,
            "-subj",
            "/CN=client",
            "-days",
            "2",
            "-out",
            &cert,
        ]);
        for key in [&a_key, &b_key] {
            std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let url = |key: &str| format!("rediss://h?ca_file={cert}&cert_file={cert}&key_file={key}");
        assert!(ok(&url(&a_key)).tls.is_some());
        let e = err(&url(&b_key));
        assert!(e.contains("to be the private key of cert_file"), "{e}");
    }

    /// The error, or "" for an accepted URL.
    fn err_or_ok_message(s: &str) -> String {
        match parse(s) {
            Some(Err(e)) => e,
            _ => String::new(),
        }
    }

    #[test]
    fn errors_never_repeat_what_may_be_a_password() {
        // A '?' in the password ends the URL's path early.
        for url in [
            "redis://app:pa?zq9@h",
            "redis://app:pa?zq9&x@h",
            "redis://app:p?zq9=1@h",
        ] {
            let e = err(url);
            assert!(!e.contains("zq9"), "{url}: {e}");
            assert!(e.contains("%3F"), "{e}");
        }
        // A password written without its user.
        let e = err("redis://s3cret@h");
        assert!(!e.contains("s3cret"), "{e}");
        // Malformed schemes still hide everything before the '@'.
        for url in ["redis:/app:pw@h", "app:pw@10.0.0.5", "//:pw@h"] {
            assert!(!redact(url).contains("pw"), "{url}: {}", redact(url));
        }
        assert_eq!(redact("redis:/app:pw@h"), "redis:(credentials hidden)@h");
    }

    #[test]
    fn escapes_and_hosts_are_strict() {
        assert!(err("redis://:%+1@h").contains("%-escapes"));
        assert!(err("redis://h:1:2").contains("host[:port]"));
        assert!(err("redis://::1").contains("host[:port]"));
        assert_eq!(ok("redis://[::1]:7000").nodes, vec![tcp("::1", 7000)]);
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact("redis://app:hunter2@h:1?prefix=a"),
            "redis://(credentials hidden)@h:1?…"
        );
        assert!(!redact("redis://:pw?d@h").contains("pw"));
        assert_eq!(redact("redis://h"), "redis://h");
        assert_eq!(
            redact("redis://[::1]:7000,h2:7001/0"),
            "redis://[::1]:7000,h2:7001/0"
        );
        assert_eq!(
            redact("unix:/run/redis.sock?pass=x"),
            "unix:/run/redis.sock?…"
        );
        // Another client's syntax for a password, and a forgotten host.
        assert_eq!(redact("redis://h?password=hunter2"), "redis://h?…");
        assert_eq!(redact("redis://user:hunter2"), "redis://(not shown)");
        assert!(!err("redis://user:hunter2").contains("hunter2"));
    }
}
