//! Per-generation state: what one configuration generation (startup, or a
//! graceful restart) needs at request time — the store, the key ring, the
//! scratch root, the counters. Built in post_config, hung off each server's
//! config (which lives in pconf), so it dies with its generation and a
//! reloaded .so never sees a stale static.

use crate::config::ServerConfig;
use crate::scratch::ScratchRoot;
use crate::signing::KeyRing;
use crate::status::Stats;
use crate::store::{self, SessionStore, StoreUrl};
use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct Runtime {
    pub store: Arc<dyn SessionStore>,
    pub keys: KeyRing,
    /// Sessions are valid only under the scope that created them.
    pub scope: String,
    /// `RSessionMaxSessions`: live sessions beyond which no new one is
    /// kept (0: no ceiling).
    pub max_sessions: u64,
    /// When the last "store full" warning was logged (Unix seconds), so a
    /// flood logs one line a minute per process, not one per request.
    pub full_warned_at: AtomicU64,
    pub scratch: ScratchRoot,
    pub lock_ttl: Duration,
    pub gc_interval: Duration,
    pub stats: Arc<Stats>,
    /// Set while the store is unreachable, so an outage is logged once per
    /// process rather than once per request.
    pub outage: AtomicBool,
}

impl Runtime {
    /// Records a store failure; true when it starts an outage.
    pub fn outage_began(&self) -> bool {
        !self.outage.swap(true, Ordering::Relaxed)
    }

    /// True when a "store full" warning is due (at most one a minute).
    pub fn full_warning_due(&self, now: u64) -> bool {
        let last = self.full_warned_at.load(Ordering::Relaxed);
        now >= last.saturating_add(60)
            && self
                .full_warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Records a store success; true when it ends an outage.
    pub fn outage_ended(&self) -> bool {
        self.outage.load(Ordering::Relaxed) && self.outage.swap(false, Ordering::Relaxed)
    }
}

/// Defaults that depend on `DefaultRuntimeDir`, resolved by the host.
pub struct HostDefaults {
    pub store_dir: PathBuf,
    pub scratch_root: PathBuf,
    pub key_file: PathBuf,
}

/// An opened store and its counters.
type SharedStore = (Arc<dyn SessionStore>, Arc<Stats>);

/// Shares one opened store (and its counters) among virtual hosts that name
/// the same URL, credentials, TLS files and timeout included (its printed
/// form leaves those out, so two hosts that differ only there each get
/// their own).
pub struct Builder {
    stores: Vec<(StoreUrl, SharedStore)>,
    /// Generated keys by file, read or made once per startup.
    generated_keys: HashMap<PathBuf, Vec<u8>>,
    make_stats: Box<dyn Fn(&str) -> Stats>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::with_stats(Box::new(|_| Stats::default()))
    }
}

impl Builder {
    /// `make_stats` makes the counters of each distinct store, named by its
    /// URL (the host puts them in memory shared across child processes).
    pub fn with_stats(make_stats: Box<dyn Fn(&str) -> Stats>) -> Builder {
        Builder {
            stores: Vec::new(),
            generated_keys: HashMap::new(),
            make_stats,
        }
    }

    /// The runtime of one server (`server_name`: its `ServerName`, the
    /// default scope).
    pub fn build(
        &mut self,
        conf: &ServerConfig,
        host: &HostDefaults,
        server_name: &str,
    ) -> Result<Runtime, String> {
        let url = conf
            .store
            .clone()
            .unwrap_or_else(|| StoreUrl::File(host.store_dir.clone()));
        let known = self.stores.iter().find(|(known, _)| *known == url);
        let (store, stats) = match known.map(|(_, shared)| shared) {
            Some(shared) => shared.clone(),
            None => {
                let opened = store::open(&url).map_err(|e| format!("RSessionStore {url}: {e}"))?;
                let shared = (opened, Arc::new((self.make_stats)(&url.to_string())));
                self.stores.push((url.clone(), shared.clone()));
                shared
            }
        };
        let keys = match &conf.secrets {
            Some(keys) => keys.clone(),
            None => vec![self.generated_key(&url, host)?],
        };
        let keys = KeyRing::new(keys).ok_or("RSessionSecret: no usable key")?;
        // Scratch directories are kept apart per store (see scratch.rs).
        let described = store.describe();
        Ok(Runtime {
            store,
            keys,
            scope: conf.scope(server_name),
            max_sessions: conf.max_sessions(),
            full_warned_at: AtomicU64::new(0),
            scratch: {
                let root = conf
                    .scratch_root
                    .clone()
                    .unwrap_or_else(|| host.scratch_root.clone());
                match &conf.scratch_group {
                    Some(group) => ScratchRoot::with_group(root, &described, group),
                    None => ScratchRoot::new(root, &described),
                }
            },
            lock_ttl: Duration::from_secs(conf.lock_ttl()),
            gc_interval: Duration::from_secs(conf.gc_interval()),
            stats,
            outage: AtomicBool::new(false),
        })
    }
}

impl Builder {
    /// The key signing a file store's sessions when no RSessionSecret is
    /// set: beside the store (`/var/lib/apache2/rsession` →
    /// `/var/lib/apache2/rsession.key`), so it lasts as long as the records
    /// it signs — a key under /run would be lost at every reboot, and every
    /// cookie with it. A key left in the old place (DefaultRuntimeDir) is
    /// adopted once. Servers sharing a Redis store must share a key, so
    /// there RSessionSecret is required.
    fn generated_key(&mut self, url: &StoreUrl, host: &HostDefaults) -> Result<Vec<u8>, String> {
        let StoreUrl::File(root) = url else {
            return Err(format!(
                "RSessionSecret is required with RSessionStore {url}: every server sharing the store must sign cookies with the same key"
            ));
        };
        let path = PathBuf::from(format!("{}.key", root.display()));
        if let Some(key) = self.generated_keys.get(&path) {
            return Ok(key.clone());
        }
        let cannot = |e: std::io::Error| {
            format!(
                "cannot keep the generated session key in {}: {e}",
                path.display()
            )
        };
        if !path.exists() && path != host.key_file && host.key_file.exists() {
            let old = load_or_create_key(&host.key_file).map_err(cannot)?;
            write_new_key(&path, &old).map_err(cannot)?;
        }
        let key = load_or_create_key(&path).map_err(cannot)?;
        self.generated_keys.insert(path, key.clone());
        Ok(key)
    }
}

/// Writes a key file that must not exist yet (mode 0600), never through
/// a planted link or FIFO.
fn write_new_key(path: &Path, key: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(crate::safe_fs::HOSTILE_OPEN_FLAGS)
        .open(path)?;
    f.write_all(key)?;
    f.write_all(b"\n")
}

/// Reads the generated key, or makes one (256 bits from the OS, as 64 hex
/// characters, mode 0600) so that restarts keep sessions valid. Read by
/// root: a link or FIFO planted under the name is refused, never followed
/// or waited on.
pub fn load_or_create_key(path: &Path) -> std::io::Result<Vec<u8>> {
    match crate::safe_fs::read_regular(path, 4096) {
        Ok(mut key) => {
            while key.last().is_some_and(|c| c.is_ascii_whitespace()) {
                key.pop();
            }
            if key.len() >= 32 {
                return Ok(key);
            }
            Err(std::io::Error::new(
                ErrorKind::InvalidData,
                "key file is too short; delete it to make a new one",
            ))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let mut raw = [0u8; 32];
            getrandom::fill(&mut raw).map_err(std::io::Error::other)?;
            let key: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            write_new_key(path, key.as_bytes())?;
            Ok(key.into_bytes())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_key_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rsession.key");
        let first = load_or_create_key(&path).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_or_create_key(&path).unwrap(), first);
    }

    #[test]
    fn the_generated_key_lives_beside_the_file_store_and_redis_needs_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostDefaults {
            store_dir: dir.path().join("run/rsession"),
            scratch_root: dir.path().join("scratch"),
            key_file: dir.path().join("run/rsession.key"),
        };
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        std::fs::create_dir_all(dir.path().join("lib")).unwrap();
        // A key from before, in the runtime directory, is adopted once.
        let old = load_or_create_key(&host.key_file).unwrap();
        let mut conf = ServerConfig::default();
        let store = dir.path().join("lib/rsession");
        conf.set("RSessionStore", &format!("file:{}", store.display()), false)
            .unwrap();
        let rt = Builder::default().build(&conf, &host, "a").unwrap();
        let beside = dir.path().join("lib/rsession.key");
        assert_eq!(load_or_create_key(&beside).unwrap(), old);
        // A reboot wipes the runtime directory; the key stays.
        std::fs::remove_file(&host.key_file).unwrap();
        let again = Builder::default().build(&conf, &host, "a").unwrap();
        let cookie = crate::cookie::cookie_value(
            &crate::id::SessionId::generate().unwrap(),
            "sid",
            &rt.keys,
        );
        let header = format!("sid={cookie}");
        assert_eq!(
            crate::cookie::signed_ids([header.as_str()], "sid", &again.keys)
                .signed
                .len(),
            1
        );

        let mut redis = ServerConfig::default();
        redis
            .set("RSessionStore", "redis://127.0.0.1:1", false)
            .unwrap();
        let err = Builder::default().build(&redis, &host, "a").err().unwrap();
        assert!(err.contains("RSessionSecret is required"), "{err}");
    }

    #[test]
    fn a_planted_key_file_is_refused_never_followed_or_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.key");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(load_or_create_key(&fifo).is_err(), "a FIFO is no key");
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "k".repeat(64)).unwrap();
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(load_or_create_key(&link).is_err(), "a link is not followed");
    }

    /// Defaults under `dir`, for tests that only need them to exist.
    fn host_in(dir: &std::path::Path) -> HostDefaults {
        HostDefaults {
            store_dir: dir.join("store"),
            scratch_root: dir.join("scratch"),
            key_file: dir.join("key"),
        }
    }

    #[test]
    fn vhosts_naming_one_store_share_it() {
        let dir = tempfile::tempdir().unwrap();
        let host = host_in(dir.path());
        let mut builder = Builder::default();
        let a = builder.build(&ServerConfig::default(), &host, "a").unwrap();
        let b = builder.build(&ServerConfig::default(), &host, "b").unwrap();
        assert!(Arc::ptr_eq(&a.stats, &b.stats));
        assert_eq!((a.scope.as_str(), b.scope.as_str()), ("a", "b"));
        assert_eq!(
            a.store.describe(),
            format!("file:{}", host.store_dir.display())
        );
    }

    #[test]
    fn vhosts_whose_redis_urls_differ_only_where_it_is_not_shown_do_not_share() {
        let dir = tempfile::tempdir().unwrap();
        let host = host_in(dir.path());
        let conf = |url: &str| {
            let mut c = ServerConfig::default();
            c.set("RSessionStore", url, false).unwrap();
            c.set("RSessionSecret", "a-secret-of-enough-length", false)
                .unwrap();
            c
        };
        let mut builder = Builder::default();
        let mut build = |url: &str| builder.build(&conf(url), &host, "a").unwrap();
        let shop = build("redis://app:one@127.0.0.1:1/0?timeout=500");
        let same = build("redis://app:one@127.0.0.1:1/0?timeout=500");
        let other_password = build("redis://app:two@127.0.0.1:1/0?timeout=500");
        let other_timeout = build("redis://app:one@127.0.0.1:1/0?timeout=900");
        assert_eq!(shop.store.describe(), other_password.store.describe());
        assert!(Arc::ptr_eq(&shop.store, &same.store));
        assert!(!Arc::ptr_eq(&shop.store, &other_password.store));
        assert!(!Arc::ptr_eq(&shop.store, &other_timeout.store));
    }
}
