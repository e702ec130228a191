//! Session stores. Every backend implements `SessionStore`; the compiler
//! checks that each one provides every verb (mod_python's abstract base
//! class never declared them).

pub mod file;
pub mod redis;
mod redis_link;
pub mod redis_url;

pub use redis_url::RedisUrl;

use crate::error::ConfigError;
use crate::id::SessionId;
use crate::record::Record;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Run first on every thread a store starts to sweep records, set once
/// per process by the host, which lowers the thread's priority there.
/// Only those threads, which end with their pass: a thread that lives on
/// (the sweeper's own, which also talks to Redis and may start the lock
/// keeper) would pass a lowered priority on to what it starts, for good.
static SWEEP_THREAD_SETUP: OnceLock<fn()> = OnceLock::new();

pub fn set_sweep_thread_setup(setup: fn()) {
    let _ = SWEEP_THREAD_SETUP.set(setup);
}

/// Starts, in scope `s`, a thread named `name` that sweeps: it runs the
/// host's setup first, then `work`. Every sweeping thread starts here.
pub(crate) fn spawn_sweep_thread<'scope, T: Send + 'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    name: String,
    work: impl FnOnce() -> T + Send + 'scope,
) -> std::io::Result<std::thread::ScopedJoinHandle<'scope, T>> {
    std::thread::Builder::new().name(name).spawn_scoped(s, || {
        if let Some(setup) = SWEEP_THREAD_SETUP.get() {
            setup();
        }
        work()
    })
}

/// A lock on one session, held until dropped. Implementations release in
/// `Drop`, so errors, panics and aborted requests all unlock.
pub trait HeldLock: Send {
    /// What `save` and `delete` under this lock pass to the store, so that a
    /// store whose locks can be lost (they expire) applies the write only
    /// while the lock is still this holder's. `None`: the lock cannot be
    /// lost (a kernel lock lasts as long as its holder).
    fn fence(&self) -> Option<&Fence> {
        None
    }
}

/// Opaque proof of a held lock, issued by the store that took it and read
/// only by that store. It also notes whether a write released the lock
/// already (`SessionStore::save_and_release`), so dropping it costs nothing.
pub struct Fence {
    token: String,
    released: AtomicBool,
}

impl Fence {
    pub(crate) fn new(token: String) -> Fence {
        Fence {
            token,
            released: AtomicBool::new(false),
        }
    }

    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    pub(crate) fn mark_released(&self) {
        self.released.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_released(&self) -> bool {
        self.released.load(Ordering::Relaxed)
    }
}

/// Tokens are not secrets, but nothing needs to see them.
impl fmt::Debug for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fence(..)")
    }
}

/// What a load found: a record, none, or an error (a corrupt record
/// included), kept apart from the lock it came with.
pub type Loaded = Result<Option<Record>, StoreError>;

/// A lock just taken, with the record read under it.
pub type LockedLoad = (Box<dyn HeldLock>, Loaded);

#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    Yes,
    /// A record under that id exists already; draw another id.
    Collision,
}

/// The verbs every backend provides. `load` returns `Ok(None)` for a
/// missing record; a record that cannot be decoded is `Err(Corrupt)` so the
/// caller can log it and treat it as absent.
pub trait SessionStore: Send + Sync {
    /// A description for logs and the status page (never a password).
    fn describe(&self) -> String;
    /// Stores a new record, never overwriting an existing one.
    fn create(&self, id: &SessionId, record: &Record) -> Result<Created, StoreError>;
    fn load(&self, id: &SessionId) -> Result<Option<Record>, StoreError>;
    /// Replaces the record atomically: readers see the old or the new one.
    /// With a `fence` (from the session's lock), a store whose locks can be
    /// lost refuses (`LockLost`) once the lock is no longer the caller's.
    fn save(
        &self,
        id: &SessionId,
        record: &Record,
        fence: Option<&Fence>,
    ) -> Result<(), StoreError>;
    /// `save` as the last write under the lock `fence` came from: a store
    /// may release that lock in the same step (one round trip for both).
    /// Nothing may be done under the lock afterwards.
    fn save_and_release(
        &self,
        id: &SessionId,
        record: &Record,
        fence: &Fence,
    ) -> Result<(), StoreError> {
        self.save(id, record, Some(fence))
    }
    /// Removes the record; removing a missing record is not an error. The
    /// `fence` works as for `save`.
    fn delete(&self, id: &SessionId, fence: Option<&Fence>) -> Result<(), StoreError>;
    /// Takes the session's exclusive lock if it is free. `ttl` bounds how
    /// long a shared store keeps the lock of a holder that vanished.
    fn try_lock(
        &self,
        id: &SessionId,
        ttl: Duration,
    ) -> Result<Option<Box<dyn HeldLock>>, StoreError>;
    /// Takes the lock if it is free and, in the same step, reads the
    /// record. Stores that can do both in one round trip override this.
    fn try_lock_and_load(
        &self,
        id: &SessionId,
        ttl: Duration,
    ) -> Result<Option<LockedLoad>, StoreError> {
        Ok(self.try_lock(id, ttl)?.map(|lock| (lock, self.load(id))))
    }
    /// The child process is exiting: finish background work (Redis: the
    /// keeper sends the lock releases it still holds) before it goes.
    fn stop_background(&self) {}
    /// How many records the store holds (expired ones not yet swept count).
    // The sweep counts as it goes; tests check stores with this.
    #[allow(dead_code)]
    fn count(&self) -> Result<u64, StoreError>;
    /// Local directories the server's `User` must own (created by the
    /// parent at startup and handed over).
    fn local_dirs(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    /// At startup, in the parent (root when httpd starts as root): makes
    /// the local directories ready through `setup`, which never follows a
    /// link and hands over only what it creates. A link or a foreign
    /// directory where a root should be is an error naming the path. What
    /// was repaired inside (set aside) comes back as lines for the log.
    fn prepare_local(&self, setup: &crate::safe_fs::Setup) -> Result<Vec<String>, String> {
        for dir in self.local_dirs() {
            setup.root(&dir)?;
        }
        Ok(Vec::new())
    }
    /// Whether a record exists (expired or not).
    fn exists(&self, id: &SessionId) -> Result<bool, StoreError>;
    /// Admits one sweeper at a time per store and `scope` (the scratch
    /// root it cleans, which is local to a machine), across every process
    /// that shares them, and at most one pass per `interval`: `None` when
    /// another sweeper is at work or one began less than `interval` ago.
    fn try_begin_sweep(
        &self,
        interval: Duration,
        scope: &Path,
    ) -> Result<Option<Box<dyn HeldLock>>, StoreError>;
    /// Removes expired records that no request holds locked, plus debris
    /// of interrupted writes. Examines about `budget` entries (a store may
    /// finish the part it began), starting at `cursor` (advanced for the
    /// next pass, 0 when it wrapped), and calls `removed`, possibly from
    /// several threads, for every session it deleted. Returns soon after
    /// `stop` is set (a graceful stop must not wait for a whole pass).
    fn sweep(
        &self,
        now: u64,
        cursor: &mut usize,
        budget: usize,
        removed: &(dyn Fn(&SessionId) + Sync),
        stop: &AtomicBool,
    ) -> Result<SweepCounts, StoreError>;
    /// Whether sweeping this store waits on nothing but the kernel (no
    /// connection pool, no lock keeper), so that idle-priority threads may
    /// do all of it, the orphan pass included.
    fn sweeps_locally(&self) -> bool {
        false
    }
    /// The store's user → sessions index (`invalidate-user`), if it keeps
    /// one. An optional capability, like tower-sessions' ExpiredDeletion:
    /// stores without it refuse `invalidate-user`.
    fn user_index(&self) -> Option<&dyn UserIndex> {
        None
    }
}

/// Which sessions belong to a user, so that all of them can be ended at
/// once. `user` is always `auth::user_index_key` (a hash of the scope and
/// the name), never a raw name. Entries follow the records: the session
/// code adds and removes them as it stores, regenerates and deletes, the
/// sweeper removes those of the records it deletes, and `sessions` drops
/// entries whose record is gone (expired in a store that expires keys by
/// itself), so an index never grows past its user's live sessions by
/// more than a bounded slack.
pub trait UserIndex: Send + Sync {
    fn add(&self, user: &str, id: &SessionId) -> Result<(), StoreError>;
    /// Removing an entry that is not there is not an error.
    fn remove(&self, user: &str, id: &SessionId) -> Result<(), StoreError>;
    /// At most `limit` of the user's sessions whose record still exists.
    fn sessions(&self, user: &str, limit: usize) -> Result<Vec<SessionId>, StoreError>;
}

/// Decodes stored bytes (`None`: no record), naming the session and the
/// store in the error when they are not a record (`store` is only called
/// then: describing a store allocates, and this runs on every request).
pub fn decode_stored(
    bytes: Option<&[u8]>,
    id: &SessionId,
    store: impl FnOnce() -> String,
) -> Loaded {
    match bytes {
        None => Ok(None),
        Some(b) => Record::decode(b)
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt(format!("{}... in {}", id.short(), store()))),
    }
}

/// What one sweep of a store did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepCounts {
    pub scanned: u64,
    /// Records seen that remain (expired ones removed are not counted).
    pub records: u64,
    pub expired: u64,
    pub skipped_locked: u64,
    pub debris: u64,
    /// Entries that could not be handled (the pass went on without them).
    pub failed: u64,
}

#[derive(Debug)]
pub enum StoreError {
    /// The backend cannot be reached now; the client should retry.
    Unavailable(String),
    /// A file operation failed.
    Io {
        what: String,
        source: std::io::Error,
    },
    /// Stored bytes that are not a record.
    Corrupt(String),
    /// The record disappeared (expired or deleted) before it could be saved.
    Vanished,
    /// The session's lock expired or was taken over before the write: the
    /// write was refused, since another request may own the session now.
    LockLost,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(why) => write!(f, "store unavailable: {why}"),
            StoreError::Io { what, source } => write!(f, "{what}: {source}"),
            StoreError::Corrupt(what) => write!(f, "corrupt record {what}"),
            StoreError::Vanished => write!(
                f,
                "the session expired or was removed before it could be saved"
            ),
            StoreError::LockLost => write!(
                f,
                "the session lock was lost (expired or taken over) before the write; write refused"
            ),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Where records live, as `RSessionStore` names it.
#[derive(Clone, PartialEq, Eq)]
// One per server config, parsed once: the size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum StoreUrl {
    File(PathBuf),
    Redis(RedisUrl),
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::File(p) => write!(f, "file:{}", p.display()),
            StoreUrl::Redis(r) => write!(f, "{r}"),
        }
    }
}

/// Debug never shows the Redis password.
impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

impl StoreUrl {
    pub fn parse(directive: &str, value: &str) -> Result<StoreUrl, ConfigError> {
        if let Some(path) = value.strip_prefix("file:") {
            return crate::config::value::absolute_path(directive, path)
                .map(StoreUrl::File)
                .map_err(|_| {
                    ConfigError::new(directive, value, "file: followed by an absolute path")
                });
        }
        match redis_url::parse(value) {
            Some(parsed) => parsed
                .map(StoreUrl::Redis)
                .map_err(|why| ConfigError::new(directive, &redis_url::redact(value), why)),
            None => Err(ConfigError::new(
                directive,
                &redis_url::redact(value),
                format!(
                    "a URL of scheme file: or redis:// (or rediss://, unix:, redis-sentinel://, redis-cluster://): {}",
                    redis_url::FORMS
                ),
            )),
        }
    }
}

/// Opens the store a URL names.
pub fn open(url: &StoreUrl) -> Result<Arc<dyn SessionStore>, StoreError> {
    match url {
        StoreUrl::File(root) => Ok(Arc::new(file::FileStore::open(root.clone())?)),
        StoreUrl::Redis(r) => Ok(Arc::new(redis::RedisStore::open(r)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_store_urls() {
        assert_eq!(
            StoreUrl::parse("S", "file:/var/lib/rsession/").unwrap(),
            StoreUrl::File("/var/lib/rsession".into())
        );
        let StoreUrl::Redis(r) = StoreUrl::parse(
            "S",
            "redis://:s3cret@cache.local:6380/2?prefix=app:&timeout=500",
        )
        .unwrap() else {
            panic!("not redis")
        };
        assert_eq!(
            (r.nodes[0].to_string().as_str(), r.db),
            ("cache.local:6380", 2)
        );
        assert_eq!(r.password.as_deref(), Some("s3cret"));
        assert_eq!(r.prefix, "app:");
        assert_eq!(r.timeout, Duration::from_millis(500));
        let StoreUrl::Redis(d) = StoreUrl::parse("S", "redis://127.0.0.1").unwrap() else {
            panic!()
        };
        assert_eq!(
            (d.to_string().as_str(), d.timeout),
            (
                "redis://127.0.0.1:6379/0?prefix=rsession:",
                Duration::from_secs(2)
            )
        );
    }

    #[test]
    fn refuses_bad_urls_without_leaking_passwords() {
        for bad in [
            "file:relative",
            "http://x",
            "redis://",
            "redis://h:0",
            "redis://h:99999",
            "redis://h/x",
            "redis://h?timeout=0",
            "redis://h?foo=1",
            "/abs",
        ] {
            assert!(
                StoreUrl::parse("RSessionStore", bad).is_err(),
                "{bad} accepted"
            );
        }
        let err = StoreUrl::parse("RSessionStore", "redis://:hunter2@h:99999").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let ok = StoreUrl::parse("RSessionStore", "redis://:hunter2@h").unwrap();
        assert!(!format!("{ok:?} {ok}").contains("hunter2"));
    }
}
