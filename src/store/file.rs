//! The file store, the default. Layout under the root:
//!
//! ```text
//! 00/ .. ff/            256 shards, by the id's first byte (spreads the
//!                       kernel's per-directory locking across directories)
//!   <id>                the record: JSON, mode 0600, mtime = its expiry
//!   <id>.spare          the previous version, reused for the next write
//!   .locks              byte-range locks: one byte per session, its lock
//!   .tmp-<id>-<pid>-<r> new versions written without the session's lock
//!                       (RSessionLock Off), or where the kernel cannot swap
//!                       (`r` random: nobody can plant the names to come)
//! .sweeper-<tag>        admits one sweeper per scratch root (tag: its path)
//! users/<kk>/<key>/<id> the user index (invalidate-user): one empty file
//!                       per session of a user, under a hash of the scope
//!                       and the user name (`auth::user_index_key`; a name
//!                       never becomes a path), sharded by its first byte
//! ```
//!
//! The root belongs to `User`, so handlers can plant anything in it. The
//! parent (root) prepares only the root itself and sets aside, without
//! following it, whatever stands where a shard should be; children create
//! missing shards as `User` when they first need them. Every file is opened
//! with `O_NOFOLLOW | O_NONBLOCK` and must be a regular file (`safe_fs`): a
//! FIFO or link planted as a record reads as corrupt, one planted as a lock
//! or spare file is set aside and the file made anew.
//!
//! A save under the session's lock writes the spare file in place and swaps
//! it with the record in one `renameat2(RENAME_EXCHANGE)`: a crash leaves
//! the old or the new record, never a torn one, and no inode is created or
//! freed (on many file systems the costly part). A reader without the lock
//! (a static file, `RSessionLock Off`) that opened the record just before
//! two saves may catch the spare, that inode now, being rewritten: a read
//! that does not parse is read again. Nothing is fsynced: after a power
//! failure a session may come back older, or unreadable (a fresh session).
//! A save without the lock writes a temporary of its own and swaps that in,
//! so two savers never share a file. A spare with another name (a hard
//! link), or far longer than the record, is replaced rather than written in
//! place. Records carry their expiry moment as mtime, so a sweeper finds
//! expired sessions with one `stat` per entry (and an operator with
//! `find -mmin`).
//!
//! Locks are open-file-description (OFD) locks on one byte of the shard's
//! `.locks` file: each holder uses a description of its own (taken from a
//! per-process pool and returned after `F_UNLCK`), so threads of one process
//! exclude each other, the kernel drops the lock when a process dies, and
//! descriptors are `O_CLOEXEC`, so CGI children never inherit a lock.

use super::{Created, Fence, HeldLock, SessionStore, StoreError, SweepCounts, UserIndex};
use crate::id::SessionId;
use crate::record::Record;
use crate::safe_fs::{self, Setup};
use nix::fcntl::{fcntl, renameat2, FcntlArg, RenameFlags, AT_FDCWD};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Prefix of temporary files; a sweeper removes stale ones.
pub const TEMP_PREFIX: &str = ".tmp-";
const SPARE_SUFFIX: &str = ".spare";
const LOCKS: &str = ".locks";
/// Lock files that admit one sweeper at a time per scratch root.
const SWEEPER_LOCK: &str = ".sweeper-";
/// The largest record read; anything bigger is not one of ours.
const MAX_RECORD: u64 = 16 << 20;
/// How much longer than the record the spare may be and still be padded
/// and reused; a longer one is replaced.
const SPARE_SLACK: u64 = 4096;
/// Directory of the user index.
const USERS: &str = "users";
/// Temporary files younger than this are left alone: a write may still be
/// under way.
const DEBRIS_AGE: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub struct FileStore {
    root: PathBuf,
    /// False once the file system refused RENAME_EXCHANGE: then saves use
    /// a temporary file and rename.
    can_exchange: AtomicBool,
    /// Open descriptions of each shard's lock file, kept between requests
    /// (an OFD lock is released with F_UNLCK, so a description can serve
    /// again): saves an open and a close per request.
    lock_files: Arc<LockFilePool>,
    /// Threads a sweep uses (`sweep_workers`).
    sweep_workers: usize,
}

/// Idle lock-file descriptions kept per shard and process...
const IDLE_LOCK_FILES: usize = 8;
/// ...and in all, per store and process: 256 shards times 8 would let a
/// busy child keep 2,048 descriptors open, more than a 1,024-file limit.
/// A request holds one description (its session's lock) at a time, and a
/// child rarely holds locks in one shard at once, so about one per shard
/// keeps nearly every lock from opening a file.
const IDLE_LOCK_FILES_TOTAL: usize = 256;

/// Idle lock-file descriptions by shard, with their total bounded.
#[derive(Debug)]
struct LockFilePool {
    shards: Vec<Mutex<Vec<File>>>,
    idle: AtomicUsize,
}

impl LockFilePool {
    fn new() -> LockFilePool {
        LockFilePool {
            shards: (0..=255u8).map(|_| Mutex::new(Vec::new())).collect(),
            idle: AtomicUsize::new(0),
        }
    }

    fn take(&self, shard: usize) -> Option<File> {
        let file = self.shards[shard].lock().pop()?;
        self.idle.fetch_sub(1, Ordering::Relaxed);
        Some(file)
    }

    /// Keeps `file` for the next holder, or closes it when the shard or
    /// the process has enough idle ones.
    fn give_back(&self, shard: usize, file: File) {
        let mut idle = self.shards[shard].lock();
        if idle.len() >= IDLE_LOCK_FILES {
            return;
        }
        if self.idle.fetch_add(1, Ordering::Relaxed) >= IDLE_LOCK_FILES_TOTAL {
            self.idle.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        idle.push(file);
    }
}

fn io_error(what: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { what, source }
}

fn corrupt(what: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |e| StoreError::Corrupt(format!("{what}: {e}"))
}

/// The error a path with a missing shard gives (ENOENT), and the one a
/// shard that is not a directory gives (ENOTDIR).
fn shard_missing(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::NotFound
}
fn shard_broken(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOTDIR)
}
/// Either: no shard directory, so nothing in it either.
fn shard_gone(e: &std::io::Error) -> bool {
    shard_missing(e) || shard_broken(e)
}

/// A held OFD lock: closing the descriptor releases it.
struct RangeLock {
    file: Option<File>,
    range: libc::flock,
    shard: usize,
    pool: Arc<LockFilePool>,
    /// Tells `save` that its caller holds the session's lock (a kernel
    /// lock is never lost while its holder lives, so it proves no more).
    fence: Fence,
}

impl HeldLock for RangeLock {
    fn fence(&self) -> Option<&Fence> {
        Some(&self.fence)
    }
}

fn write_lock_at(offset: u64) -> libc::flock {
    libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: offset as libc::off_t,
        l_len: 1,
        l_pid: 0,
    }
}

impl Drop for RangeLock {
    /// Unlocks and returns the description to the pool; if unlocking fails,
    /// closing the description releases the lock instead.
    fn drop(&mut self) {
        let Some(file) = self.file.take() else { return };
        let unlock = libc::flock {
            l_type: libc::F_UNLCK as libc::c_short,
            ..self.range
        };
        if fcntl(&file, FcntlArg::F_OFD_SETLK(&unlock)).is_ok() {
            self.pool.give_back(self.shard, file);
        }
    }
}

/// A flock on a whole file (the sweeper's).
struct FileLock {
    file: File,
}

impl HeldLock for FileLock {}

const SHARDS: usize = 256;
/// The most threads a sweep uses, whatever the machine: a sweep is mostly
/// waiting on the file system, and requests come first.
const MAX_SWEEP_WORKERS: usize = 4;

/// Threads for a sweep: the cores but one (left to requests), at least
/// one, at most `MAX_SWEEP_WORKERS`.
pub fn sweep_workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.saturating_sub(1).clamp(1, MAX_SWEEP_WORKERS)
}

/// What every shard of one sweep is judged by.
#[derive(Clone, Copy)]
struct Pass<'a> {
    now: u64,
    /// Records may have users whose index entries go with them.
    users_indexed: bool,
    removed: &'a (dyn Fn(&SessionId) + Sync),
    stop: &'a AtomicBool,
}

/// Sums what the threads of one sweep did.
fn add_counts(to: &mut SweepCounts, from: &SweepCounts) {
    to.scanned += from.scanned;
    to.records += from.records;
    to.expired += from.expired;
    to.skipped_locked += from.skipped_locked;
    to.debris += from.debris;
    to.failed += from.failed;
}

fn shard_name(shard: u8) -> String {
    format!("{shard:02x}")
}

impl FileStore {
    /// The store under `root`. Touches nothing on disk: the parent prepares
    /// the root (`prepare_local`), children make shards as they need them.
    pub fn open(root: PathBuf) -> Result<FileStore, StoreError> {
        Ok(FileStore {
            root,
            can_exchange: AtomicBool::new(true),
            lock_files: Arc::new(LockFilePool::new()),
            sweep_workers: sweep_workers(),
        })
    }

    /// `users/<kk>/<key>`; `None` for a key that is not a 64-digit hash.
    fn user_dir(&self, key: &str) -> Option<PathBuf> {
        let ok = key.len() == 64 && key.bytes().all(|c| c.is_ascii_hexdigit());
        ok.then(|| self.root.join(USERS).join(&key[..2]).join(key))
    }

    /// Removes the user entries whose record is gone (a crash between the
    /// two, a record removed by hand) and empty user directories, looking
    /// at no more than `budget` entries.
    fn sweep_user_index(&self, budget: u64, stop: &AtomicBool, counts: &mut SweepCounts) {
        let mut seen = 0u64;
        let Ok(shards) = fs::read_dir(self.root.join(USERS)) else {
            return;
        };
        for shard in shards.flatten() {
            let Ok(users) = fs::read_dir(shard.path()) else {
                continue;
            };
            for user in users.flatten() {
                if !user.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let Ok(entries) = fs::read_dir(user.path()) else {
                    continue;
                };
                for entry in entries.flatten() {
                    seen += 1;
                    if seen > budget || stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let stale = match entry.file_name().to_str().map(str::parse::<SessionId>) {
                        Some(Ok(id)) => !self.exists(&id).unwrap_or(true),
                        _ => true,
                    };
                    if stale && fs::remove_file(entry.path()).is_ok() {
                        counts.debris += 1;
                    }
                }
                // Only an empty directory goes.
                let _ = fs::remove_dir(user.path());
            }
        }
    }

    /// One shard of a sweep. Names come from one listing, so a spare whose
    /// record was listed, or whose record this pass removed, costs no
    /// system call; every record removed is looked at again under its lock
    /// (its mtime, or, while the store keeps a user index, its content).
    fn sweep_shard(&self, root: &OwnedFd, shard: u8, pass: &Pass<'_>, counts: &mut SweepCounts) {
        let Pass {
            now,
            users_indexed,
            removed,
            stop,
        } = *pass;
        // A shard replaced by a symbolic link is not followed.
        let Ok(Some(dir)) = safe_fs::open_dir_at(root, OsStr::new(&shard_name(shard))) else {
            return;
        };
        let Ok(names) = safe_fs::list(&dir) else {
            return;
        };
        let mut present: HashSet<&[u8]> = names.iter().map(|n| n.as_bytes()).collect();
        let age = |st: &nix::sys::stat::FileStat| {
            Duration::from_secs(now.saturating_sub(st.st_mtime.max(0) as u64))
        };
        // mtime is the expiry moment (every create and save sets it).
        let after_now = |st: &nix::sys::stat::FileStat| {
            st.st_mtime > now as i64 || (st.st_mtime == now as i64 && st.st_mtime_nsec > 0)
        };
        for file_name in &names {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            counts.scanned += 1;
            let Some(name) = file_name.to_str() else {
                continue;
            };
            if !present.contains(name.as_bytes()) {
                continue; // went with its record
            }
            let Ok(Some(st)) = safe_fs::stat_at(&dir, file_name) else {
                continue;
            };
            let in_shard = || self.root.join(shard_name(shard)).join(name);
            if name.starts_with(TEMP_PREFIX) {
                if age(&st) >= DEBRIS_AGE && !writer_alive(name) {
                    match safe_fs::remove_entry(&in_shard()) {
                        Ok(()) => counts.debris += 1,
                        Err(_) => counts.failed += 1,
                    }
                }
                continue;
            }
            if let Some(owner) = name.strip_suffix(SPARE_SUFFIX) {
                let Ok(owner_id) = owner.parse::<SessionId>() else {
                    continue;
                };
                // A spare whose record is gone (a crash between the two
                // unlinks of `delete`) is debris.
                if !present.contains(owner.as_bytes())
                    && self.exists(&owner_id).is_ok_and(|e| !e)
                    && age(&st) >= DEBRIS_AGE
                {
                    match safe_fs::remove_entry(&in_shard()) {
                        Ok(()) => counts.debris += 1,
                        Err(_) => counts.failed += 1,
                    }
                }
                continue;
            }
            let Ok(id) = name.parse::<SessionId>() else {
                continue;
            };
            // Unexpired records cost no read.
            if after_now(&st) {
                counts.records += 1;
                continue;
            }
            // One entry that fails (planted, unremovable) never stops
            // the pass: it is counted and the pass goes on.
            let _lock = match self.try_lock(&id, Duration::ZERO) {
                Ok(Some(lock)) => lock,
                Ok(None) => {
                    counts.skipped_locked += 1;
                    counts.records += 1;
                    continue;
                }
                Err(_) => {
                    counts.failed += 1;
                    continue;
                }
            };
            // Looked at again under the lock: a request may have renewed
            // it. Every save sets the mtime to the new expiry, so a fresh
            // stat says as much as the record, unless the record's user is
            // needed to remove its index entry; then it is read.
            let (expired, user) = if users_indexed {
                match self.load(&id) {
                    Ok(Some(record)) => (
                        record.is_expired(now),
                        record
                            .user
                            .as_deref()
                            .map(|u| crate::auth::user_index_key(&record.scope, u)),
                    ),
                    Ok(None) => (false, None),
                    Err(StoreError::Corrupt(_)) => (true, None),
                    Err(_) => (false, None),
                }
            } else {
                match safe_fs::stat_at(&dir, file_name) {
                    // Something planted under a record's name is corrupt:
                    // it goes as an expired record would.
                    Ok(Some(st)) => (!safe_fs::is_regular(&st) || !after_now(&st), None),
                    _ => (false, None),
                }
            };
            if !expired {
                counts.records += 1;
                continue;
            }
            let spare = format!("{name}{SPARE_SUFFIX}");
            let has_spare = present.contains(spare.as_bytes());
            let mut gone = remove_in_shard(&dir, file_name, || self.record_path(&id));
            if has_spare && gone.is_ok() {
                gone = remove_in_shard(&dir, OsStr::new(&spare), || self.spare_path(&id));
            }
            match gone {
                Ok(()) => {
                    present.remove(name.as_bytes());
                    present.remove(spare.as_bytes());
                    if let Some(user) = user {
                        let _ = self.remove(&user, &id);
                    }
                    removed(&id);
                    counts.expired += 1;
                }
                Err(_) => counts.failed += 1,
            }
        }
    }

    /// A store whose sweeps use `n` threads (tests of the split).
    #[cfg(test)]
    pub fn with_sweep_workers(mut self, n: usize) -> FileStore {
        self.sweep_workers = n;
        self
    }

    #[cfg(test)]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `root/<shard>/<name>`, built with one allocation (this runs on
    /// every request). The shard is the id's first two hex characters.
    fn in_shard(
        &self,
        id: &SessionId,
        name: impl FnOnce(&str, &mut std::ffi::OsString),
    ) -> PathBuf {
        let text = id.text();
        let text: &str = &text;
        let mut path = std::ffi::OsString::with_capacity(self.root.as_os_str().len() + 48);
        path.push(self.root.as_os_str());
        path.push("/");
        path.push(&text[..2]);
        path.push("/");
        name(text, &mut path);
        PathBuf::from(path)
    }

    pub fn record_path(&self, id: &SessionId) -> PathBuf {
        self.in_shard(id, |text, p| p.push(text))
    }

    fn spare_path(&self, id: &SessionId) -> PathBuf {
        self.in_shard(id, |text, p| {
            p.push(text);
            p.push(SPARE_SUFFIX);
        })
    }

    fn lock_path(&self, id: &SessionId) -> PathBuf {
        self.in_shard(id, |_, p| p.push(LOCKS))
    }

    fn shard_path(&self, shard: u8) -> PathBuf {
        self.root.join(shard_name(shard))
    }

    /// Makes the shard of `id` a directory again: creates it if missing,
    /// and sets aside (never following) anything else planted there.
    fn repair_shard(&self, id: &SessionId) -> std::io::Result<()> {
        let path = self.shard_path(id.shard());
        safe_fs::set_aside_unless(&path, safe_fs::is_dir)?;
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Runs `op`; if it failed because the shard of `id` is missing or not
    /// a directory, repairs the shard and runs it once more.
    fn in_repaired_shard<T>(
        &self,
        id: &SessionId,
        mut op: impl FnMut() -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        match op() {
            Err(e) if shard_gone(&e) => {
                self.repair_shard(id)?;
                op()
            }
            other => other,
        }
    }
    /// The error for a failed `what`; the message is only formatted when
    /// it is needed (`map_err(self.io(..))` runs on every save).
    fn io(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        move |source| io_error(format!("{what} in {}", self.root.display()))(source)
    }

    /// Writes `bytes` over the start of `file` (now `len` long, at most
    /// `SPARE_SLACK` longer than `bytes`), padding them in place with
    /// spaces (which JSON ignores) up to its length instead of truncating.
    fn overwrite(
        file: &File,
        len: u64,
        bytes: &mut Vec<u8>,
        expires: SystemTime,
    ) -> std::io::Result<()> {
        if (bytes.len() as u64) < len {
            bytes.resize(len as usize, b' ');
        }
        file.write_all_at(bytes, 0)?;
        file.set_modified(expires)
    }

    /// A name for a new version of `id`'s record (`.tmp-<id>-<pid>-<r>`:
    /// a sweeper removes those whose writer is gone). `r` is random, so
    /// that nobody who can list the shard can plant the names to come.
    fn temp_path(&self, id: &SessionId) -> std::io::Result<PathBuf> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(std::io::Error::other)?;
        let nonce = u64::from_ne_bytes(nonce);
        Ok(self.in_shard(id, |text, p| {
            p.push(TEMP_PREFIX);
            p.push(text);
            p.push(format!("-{}-{nonce:016x}", std::process::id()));
        }))
    }

    /// A new temporary (never an existing file: something planted under
    /// the name makes it try the next) holding `bytes`, with its mtime at
    /// `expires`. Nothing stays behind if writing fails.
    fn write_temp(
        &self,
        id: &SessionId,
        bytes: &[u8],
        expires: SystemTime,
    ) -> std::io::Result<PathBuf> {
        let mut attempts = 0;
        loop {
            let path = self.temp_path(id)?;
            let created = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(safe_fs::HOSTILE_OPEN_FLAGS)
                .open(&path);
            let file = match created {
                Ok(file) => file,
                Err(e) if e.kind() == ErrorKind::AlreadyExists && attempts < 3 => {
                    attempts += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            return match file
                .write_all_at(bytes, 0)
                .and_then(|()| file.set_modified(expires))
            {
                Ok(()) => Ok(path),
                Err(e) => {
                    let _ = safe_fs::remove_entry(&path);
                    Err(e)
                }
            };
        }
    }

    /// The old way, for file systems without RENAME_EXCHANGE. A plain
    /// rename would make a record deleted meanwhile anew, so the record
    /// must still be there just before it; a delete that lands between
    /// that check and the rename (microseconds) is the one case where such
    /// a file system can bring a session back.
    fn save_by_rename(
        &self,
        id: &SessionId,
        bytes: &[u8],
        expires: SystemTime,
    ) -> Result<(), StoreError> {
        let temp = match self.write_temp(id, bytes, expires) {
            Ok(temp) => temp,
            Err(e) if shard_gone(&e) => return Err(StoreError::Vanished),
            Err(e) => return Err(self.io("cannot write session record")(e)),
        };
        let record = self.record_path(id);
        let replaced = match fs::symlink_metadata(&record) {
            Err(e) if shard_gone(&e) => Err(StoreError::Vanished),
            _ => fs::rename(&temp, &record).map_err(|e| {
                if shard_gone(&e) {
                    StoreError::Vanished
                } else {
                    self.io("cannot replace session record")(e)
                }
            }),
        };
        if replaced.is_err() {
            let _ = safe_fs::remove_entry(&temp);
        }
        replaced
    }

    /// Locks one byte of the shard's lock file through a pooled
    /// description, without waiting: `Ok(None)` when it is taken.
    fn lock_byte(&self, id: &SessionId, offset: u64) -> std::io::Result<Option<RangeLock>> {
        let shard = id.shard() as usize;
        let file = match self.lock_files.take(shard) {
            Some(f) => f,
            None => self.in_repaired_shard(id, || open_shared(&self.lock_path(id)))?,
        };
        let range = write_lock_at(offset);
        let locked = loop {
            match fcntl(&file, FcntlArg::F_OFD_SETLK(&range)) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other,
            }
        };
        match locked {
            Ok(_) => Ok(Some(RangeLock {
                file: Some(file),
                range,
                shard,
                pool: self.lock_files.clone(),
                fence: Fence::new(String::new()),
            })),
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EACCES) => {
                // This description holds nothing: it can serve again.
                self.lock_files.give_back(shard, file);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn try_flock(&self, path: &Path) -> Result<Option<FileLock>, StoreError> {
        let file = open_shared(path).map_err(self.io("cannot open a lock file"))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(FileLock { file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(self.io("cannot lock")(e)),
        }
    }

    /// One read of `id`'s record.
    fn load_once(&self, id: &SessionId) -> Result<Option<Record>, StoreError> {
        let decode = |bytes: &[u8]| {
            super::decode_stored(Some(bytes), id, || self.root.display().to_string())
        };
        match read_small(&self.record_path(id), decode) {
            Ok(decoded) => decoded,
            Err(e) if shard_gone(&e) => Ok(None),
            Err(e) if safe_fs::is_not_regular(&e) || e.kind() == ErrorKind::InvalidData => Err(
                corrupt(format!("{}... in {}", id.short(), self.root.display()))(e),
            ),
            Err(e) => Err(self.io("cannot read session record")(e)),
        }
    }

    /// Removes the record (and spare) of `id`, whatever was planted under
    /// those names.
    fn remove_record(&self, id: &SessionId) -> Result<(), StoreError> {
        for path in [self.record_path(id), self.spare_path(id)] {
            match safe_fs::remove_entry(&path) {
                Ok(()) => {}
                Err(e) if shard_broken(&e) => {}
                Err(e) => return Err(self.io("cannot delete session record")(e)),
            }
        }
        Ok(())
    }
}

fn expiry_time(record: &Record) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(record.expires_at())
}

impl SessionStore for FileStore {
    fn describe(&self) -> String {
        format!("file:{}", self.root.display())
    }

    /// An exclusive create: `O_EXCL` fails if the id exists. A crash in the
    /// middle leaves a new, unreadable record, which counts as absent; no
    /// earlier data is at risk (regenerate deletes the old record after).
    fn create(&self, id: &SessionId, record: &Record) -> Result<Created, StoreError> {
        let mut options = OpenOptions::new();
        options
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(safe_fs::HOSTILE_OPEN_FLAGS);
        let path = self.record_path(id);
        let opened = self.in_repaired_shard(id, || options.open(&path));
        let file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(Created::Collision),
            Err(e) => return Err(self.io("cannot create session record")(e)),
        };
        file.write_all_at(&record.encode(), 0)
            .and_then(|()| file.set_modified(expiry_time(record)))
            .map_err(self.io("cannot write session record"))?;
        Ok(Created::Yes)
    }

    fn load(&self, id: &SessionId) -> Result<Option<Record>, StoreError> {
        match self.load_once(id) {
            // A reader without the session's lock may have opened the
            // record just before a save swapped it out, and so be reading
            // the spare as the next save rewrites it in place: read the
            // record as it is now before calling it corrupt.
            Err(StoreError::Corrupt(_)) => self.load_once(id),
            loaded => loaded,
        }
    }

    /// Writes a whole new version beside the record and swaps it in with
    /// one `renameat2(RENAME_EXCHANGE)`, which fails if the record vanished
    /// meanwhile (invalidated, or swept while unlocked): never resurrected.
    /// Under the session's lock (a `fence`), the version is written into
    /// the spare file in place, as no other holder of that lock can be
    /// writing it; without the lock (`RSessionLock Off`), into a temporary
    /// of its own, so that no two savers ever share a file.
    fn save(
        &self,
        id: &SessionId,
        record: &Record,
        fence: Option<&Fence>,
    ) -> Result<(), StoreError> {
        let mut bytes = record.encode();
        let expires = expiry_time(record);
        if !self.can_exchange.load(Ordering::Relaxed) {
            return self.save_by_rename(id, &bytes, expires);
        }
        let mut lasting = fence.is_some();
        let written = if lasting {
            let spare = self.spare_path(id);
            match safe_fs::open_shared(&spare) {
                Ok(found)
                    if found.links == 1
                        && found.len <= (bytes.len() as u64).saturating_add(SPARE_SLACK) =>
                {
                    Self::overwrite(&found.file, found.len, &mut bytes, expires).map(|()| spare)
                }
                // Another name for the same file (`ln`): writing it in
                // place would write that name too (the record itself,
                // say). Or far longer than the record (a large one shrank,
                // or a planted sparse file): padding it would be as large.
                // It goes, and this save uses a temporary; the next makes
                // a new spare.
                Ok(_) => {
                    lasting = false;
                    safe_fs::remove_entry(&spare)
                        .and_then(|()| self.write_temp(id, &bytes, expires))
                }
                Err(e) => Err(e),
            }
        } else {
            self.write_temp(id, &bytes, expires)
        };
        let version = match written {
            Ok(version) => version,
            // No shard: no record either.
            Err(e) if shard_gone(&e) => return Err(StoreError::Vanished),
            Err(e) => return Err(self.io("cannot write session record")(e)),
        };
        let swapped = renameat2(
            AT_FDCWD,
            &version,
            AT_FDCWD,
            &self.record_path(id),
            RenameFlags::RENAME_EXCHANGE,
        );
        // A temporary now holds the old version (or, if the swap failed,
        // the new one): it goes either way. The spare stays for next time.
        let discard = || {
            if !lasting || swapped.is_err() {
                let _ = safe_fs::remove_entry(&version);
            }
        };
        match swapped {
            Ok(()) => {
                discard();
                Ok(())
            }
            Err(nix::errno::Errno::ENOENT) => {
                discard();
                Err(StoreError::Vanished)
            }
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOSYS) => {
                self.can_exchange.store(false, Ordering::Relaxed);
                discard();
                self.save_by_rename(id, &bytes, expires)
            }
            Err(e) => {
                discard();
                Err(self.io("cannot replace session record")(e.into()))
            }
        }
    }

    fn delete(&self, id: &SessionId, _fence: Option<&Fence>) -> Result<(), StoreError> {
        self.remove_record(id)
    }

    fn try_lock(
        &self,
        id: &SessionId,
        _ttl: Duration,
    ) -> Result<Option<Box<dyn HeldLock>>, StoreError> {
        match self.lock_byte(id, id.lock_offset()) {
            Ok(held) => Ok(held.map(|l| Box::new(l) as Box<dyn HeldLock>)),
            Err(e) => Err(self.io("cannot lock session")(e)),
        }
    }

    fn count(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for shard in 0..=255u8 {
            let dir = self.shard_path(shard);
            // Shards are made when first needed; a link is not one.
            if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let entries = fs::read_dir(&dir).map_err(self.io("cannot list the store"))?;
            total += entries
                .filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<SessionId>().is_ok())
                })
                .count() as u64;
        }
        Ok(total)
    }

    fn local_dirs(&self) -> Vec<PathBuf> {
        vec![self.root.clone()]
    }

    /// The root for `User`, and the shards checked: whatever is not a
    /// directory of `User` is set aside (see `safe_fs::Root`).
    fn prepare_local(&self, setup: &Setup) -> Result<Vec<String>, String> {
        let root = setup.root(&self.root)?;
        Ok(root.check_subdirs((0..=255u8).map(shard_name).chain([USERS.to_string()])))
    }

    fn exists(&self, id: &SessionId) -> Result<bool, StoreError> {
        match fs::symlink_metadata(self.record_path(id)) {
            Ok(_) => Ok(true),
            Err(e) if shard_gone(&e) => Ok(false),
            Err(e) => Err(self.io("cannot stat session record")(e)),
        }
    }

    /// One sweeper per store and scratch root (`scope`): each scratch root
    /// has a lock file of its own, so a store shared by virtual hosts with
    /// different scratch roots gets each of them swept.
    fn try_begin_sweep(
        &self,
        interval: Duration,
        scope: &Path,
    ) -> Result<Option<Box<dyn HeldLock>>, StoreError> {
        let tag = safe_fs::tag(&scope.to_string_lossy());
        let path = self.root.join(format!("{SWEEPER_LOCK}{tag}"));
        let Some(guard) = self.try_flock(&path)? else {
            return Ok(None);
        };
        // The lock file's mtime records when the last pass began; an empty
        // one was just made (no pass yet).
        let meta = guard.file.metadata().ok();
        let recent = meta
            .filter(|m| m.len() > 0)
            .and_then(|m| m.modified().ok())
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < interval.mul_f64(0.9));
        if recent {
            return Ok(None);
        }
        let _ = guard.file.write_all_at(b"\n", 0);
        let _ = guard.file.set_modified(SystemTime::now());
        Ok(Some(Box::new(guard)))
    }

    /// Whole shards, split between `sweep_workers` threads, from shard
    /// `cursor` on, until `budget` entries were examined (the shards begun
    /// are finished). `stop` is looked at before every entry.
    fn sweep(
        &self,
        now: u64,
        cursor: &mut usize,
        budget: usize,
        removed: &(dyn Fn(&SessionId) + Sync),
        stop: &AtomicBool,
    ) -> Result<SweepCounts, StoreError> {
        let Some(root) = safe_fs::open_dir(&self.root).map_err(self.io("cannot open the store"))?
        else {
            *cursor = 0;
            return Ok(SweepCounts::default());
        };
        // No user entry, no record with a user: records can be judged by
        // their mtime alone.
        let users_indexed = match safe_fs::open_dir_at(&root, OsStr::new(USERS)) {
            Ok(None) => false,
            Ok(Some(users)) => safe_fs::count_entries(&users, 1).map_or(true, |n| n > 0),
            Err(_) => true,
        };
        let pass = Pass {
            now,
            users_indexed,
            removed,
            stop,
        };
        let start = (*cursor).min(SHARDS);
        let next = AtomicUsize::new(start);
        let scanned = AtomicU64::new(0);
        let work = || {
            let mut counts = SweepCounts::default();
            while !stop.load(Ordering::Relaxed) && scanned.load(Ordering::Relaxed) < budget as u64 {
                let shard = next.fetch_add(1, Ordering::Relaxed);
                if shard >= SHARDS {
                    break;
                }
                let before = counts.scanned;
                self.sweep_shard(&root, shard as u8, &pass, &mut counts);
                scanned.fetch_add(counts.scanned - before, Ordering::Relaxed);
            }
            counts
        };
        let workers = self.sweep_workers.clamp(1, SHARDS - start.min(SHARDS - 1));
        // Threads of their own, set up by the host (idle priority), that
        // end with the pass; the caller only waits, and works itself if
        // none could be started.
        let mut counts = std::thread::scope(|s| {
            let helpers: Vec<_> = (0..workers)
                .filter_map(|n| {
                    super::spawn_sweep_thread(s, format!("rsession-sweep{n}"), work).ok()
                })
                .collect();
            let mut counts = match helpers.is_empty() {
                true => work(),
                false => SweepCounts::default(),
            };
            for helper in helpers {
                if let Ok(theirs) = helper.join() {
                    add_counts(&mut counts, &theirs);
                }
            }
            counts
        });
        // Workers claim shards in order and finish each they claim, so the
        // shards before `next` are done.
        let reached = next.load(Ordering::Relaxed).min(SHARDS);
        if stop.load(Ordering::Relaxed) {
            return Ok(counts);
        }
        if reached < SHARDS {
            *cursor = reached;
            return Ok(counts);
        }
        *cursor = 0;
        let left = (budget as u64).saturating_sub(counts.scanned);
        self.sweep_user_index(left, stop, &mut counts);
        Ok(counts)
    }

    fn sweeps_locally(&self) -> bool {
        true
    }

    fn user_index(&self) -> Option<&dyn UserIndex> {
        Some(self)
    }
}

/// Unlinks `name` in the shard `dir` (no path walk); something planted
/// there that `unlink` refuses (a directory) goes as `remove_entry` removes
/// it, by its `path`.
fn remove_in_shard(
    dir: &OwnedFd,
    name: &OsStr,
    path: impl FnOnce() -> PathBuf,
) -> std::io::Result<()> {
    match safe_fs::unlink_file(dir.as_fd(), name) {
        Err(e) if safe_fs::is_a_directory(&e) => safe_fs::remove_entry(&path()),
        other => other,
    }
}

/// Makes `dir` a real directory of ours (0700): something else there (a
/// link, a file a CGI planted) is removed, never followed.
fn ensure_real_dir(dir: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => fs::remove_file(dir)?,
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

impl UserIndex for FileStore {
    fn add(&self, user: &str, id: &SessionId) -> Result<(), StoreError> {
        let dir = self
            .user_dir(user)
            .ok_or_else(|| StoreError::Corrupt("a malformed user index key".into()))?;
        let entry = dir.join(id.to_string());
        let mut attempt = 0;
        loop {
            // Children make the index's directories when first needed, as
            // they do shards (the parent never writes inside the store).
            let made = ensure_real_dir(&self.root.join(USERS))
                .and_then(|()| dir.parent().map_or(Ok(()), ensure_real_dir))
                .and_then(|()| ensure_real_dir(&dir))
                .and_then(|()| {
                    OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .custom_flags(libc::O_NOFOLLOW)
                        .mode(0o600)
                        .open(&entry)
                        .map(drop)
                });
            match made {
                Ok(()) => return Ok(()),
                // A sweeper or a removal took the empty directory away
                // between our mkdir and our create: make it again.
                Err(e) if e.kind() == ErrorKind::NotFound && attempt < 3 => attempt += 1,
                Err(e) => return Err(self.io("cannot add to the user index")(e)),
            }
        }
    }

    fn remove(&self, user: &str, id: &SessionId) -> Result<(), StoreError> {
        let Some(dir) = self.user_dir(user) else {
            return Ok(());
        };
        match fs::remove_file(dir.join(id.to_string())) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(self.io("cannot remove from the user index")(e)),
        }
        // Fails while other sessions of the user remain: that is fine.
        let _ = fs::remove_dir(&dir);
        Ok(())
    }

    fn sessions(&self, user: &str, limit: usize) -> Result<Vec<SessionId>, StoreError> {
        let Some(dir) = self.user_dir(user) else {
            return Ok(Vec::new());
        };
        if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            return Ok(Vec::new());
        }
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io("cannot list the user index")(e)),
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            if found.len() >= limit {
                break;
            }
            let Some(Ok(id)) = entry.file_name().to_str().map(str::parse::<SessionId>) else {
                let _ = fs::remove_file(entry.path());
                continue;
            };
            if self.exists(&id)? {
                found.push(id);
            } else {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(found)
    }
}

/// Opens (creating, 0600) a file that several holders share: lock files
/// and spare records. Never truncates: others may be using its content.
/// Whatever was planted under the name instead is set aside.
fn open_shared(path: &Path) -> std::io::Result<File> {
    safe_fs::open_shared(path).map(|s| s.file)
}

/// Reads a record, usually small, with one `read` after the `fstat` that
/// proves it a regular file: a short read of a regular file means its end.
/// A record that fits the stack buffer reaches `use_bytes` from there.
fn read_small<T>(path: &Path, use_bytes: impl FnOnce(&[u8]) -> T) -> std::io::Result<T> {
    use std::io::Read;
    let (file, len) = safe_fs::open_regular_noatime(path, OpenOptions::new().read(true))?;
    if len > MAX_RECORD {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            "too large for a record",
        ));
    }
    let mut file = file.take(MAX_RECORD);
    let mut first = [0u8; 2048];
    let n = file.read(&mut first)?;
    if n < first.len() {
        return Ok(use_bytes(&first[..n]));
    }
    let mut buf = first.to_vec();
    file.read_to_end(&mut buf)?;
    Ok(use_bytes(&buf))
}

/// True while the process that wrote a temporary file may still be
/// writing it (names end in `-PID-RANDOM`).
fn writer_alive(temp_name: &str) -> bool {
    match temp_name
        .rsplit('-')
        .nth(1)
        .and_then(|p| p.parse::<u32>().ok())
    {
        Some(pid) if pid == std::process::id() => true,
        Some(pid) => Path::new(&format!("/proc/{pid}")).exists(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, FileStore) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("store")).unwrap();
        let store = FileStore::open(dir.path().join("store")).unwrap();
        (dir, store)
    }

    #[test]
    fn create_load_save_delete() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, s) = store();
        let id = SessionId::generate().unwrap();
        let mut r = Record::new(10, 60, 0);
        assert_eq!(s.load(&id).unwrap(), None);
        assert_eq!(s.create(&id, &r).unwrap(), Created::Yes);
        assert_eq!(s.create(&id, &r).unwrap(), Created::Collision);
        assert_eq!(s.load(&id).unwrap(), Some(r.clone()));
        let meta = fs::metadata(s.record_path(&id)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            meta.modified().unwrap(),
            UNIX_EPOCH + Duration::from_secs(70),
            "mtime is the expiry"
        );
        r.data.insert("k".into(), "a long value".into());
        s.save(&id, &r, None).unwrap();
        assert_eq!(s.load(&id).unwrap(), Some(r.clone()));
        // Shorter data after longer: the padding must not show.
        r.data.clear();
        s.save(&id, &r, None).unwrap();
        s.save(&id, &r, None).unwrap();
        assert_eq!(s.load(&id).unwrap(), Some(r));
        assert_eq!(s.count().unwrap(), 1);
        s.delete(&id, None).unwrap();
        s.delete(&id, None).unwrap();
        assert_eq!(s.load(&id).unwrap(), None);
        assert_eq!(s.count().unwrap(), 0);
        assert!(!s.spare_path(&id).exists());
    }

    #[test]
    fn saving_a_vanished_record_does_not_resurrect_it() {
        let (_d, s) = store();
        let id = SessionId::generate().unwrap();
        let r = Record::new(10, 60, 0);
        s.create(&id, &r).unwrap();
        s.delete(&id, None).unwrap();
        assert!(matches!(s.save(&id, &r, None), Err(StoreError::Vanished)));
        assert!(!s.exists(&id).unwrap());
        let lock = s.try_lock(&id, Duration::from_secs(5)).unwrap().unwrap();
        assert!(matches!(
            s.save(&id, &r, lock.fence()),
            Err(StoreError::Vanished)
        ));
        assert!(!s.exists(&id).unwrap());
        assert_eq!(leftovers(&s, &id), Vec::<String>::new());
    }

    /// What the shard of `id` holds besides its lock file.
    fn leftovers(s: &FileStore, id: &SessionId) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(s.shard_path(id.shard()))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n != LOCKS)
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn saves_without_the_lock_never_share_the_spare_with_the_holder() {
        let (_d, s) = store();
        let id = SessionId::generate().unwrap();
        s.create(&id, &Record::new(10, 60, 0)).unwrap();
        // Files planted under temporaries' names are left alone.
        for seq in 0..2 {
            let name = format!("{TEMP_PREFIX}{}-{}-{seq}", &*id.text(), std::process::id());
            fs::write(s.shard_path(id.shard()).join(name), b"planted").unwrap();
        }
        std::thread::scope(|t| {
            // One holder of the session's lock saving through the spare...
            t.spawn(|| {
                let lock = s.try_lock(&id, Duration::from_secs(5)).unwrap().unwrap();
                for i in 0..200 {
                    let mut r = Record::new(10, 60, 0);
                    r.data.insert("held".into(), "h".repeat(i % 61));
                    s.save(&id, &r, lock.fence()).unwrap();
                    assert!(s.load(&id).unwrap().is_some(), "always a whole record");
                }
            });
            // ...and savers under RSessionLock Off at the same time.
            for n in 0..3 {
                let s = &s;
                t.spawn(move || {
                    for i in 0..200 {
                        let mut r = Record::new(10, 60, 0);
                        r.data.insert("off".into(), "o".repeat((n * 7 + i) % 97));
                        s.save(&id, &r, None).unwrap();
                        assert!(s.load(&id).unwrap().is_some(), "always a whole record");
                    }
                });
            }
        });
        let left = leftovers(&s, &id);
        let text = id.text().to_string();
        assert!(left.contains(&text), "{left:?}");
        assert!(left.contains(&format!("{text}{SPARE_SUFFIX}")), "{left:?}");
        assert_eq!(
            left.iter().filter(|n| n.starts_with(TEMP_PREFIX)).count(),
            2,
            "only the planted names stay: {left:?}"
        );
    }

    #[test]
    fn planted_temporary_names_cannot_stop_a_save() {
        let (_d, s) = store();
        let id = SessionId::generate().unwrap();
        s.create(&id, &Record::new(10, 60, 0)).unwrap();
        // Every name a counter of this process would come to next.
        let shard = s.shard_path(id.shard());
        for seq in 0..5000 {
            let name = format!("{TEMP_PREFIX}{}-{}-{seq}", &*id.text(), std::process::id());
            fs::write(shard.join(name), b"").unwrap();
        }
        let mut r = Record::new(10, 60, 0);
        r.data.insert("k".into(), "v".into());
        s.save(&id, &r, None).unwrap();
        assert_eq!(s.load(&id).unwrap(), Some(r));
    }

    #[test]
    fn the_rename_fallback_does_not_resurrect_a_deleted_record() {
        let (_d, s) = store();
        s.can_exchange.store(false, Ordering::Relaxed);
        let id = SessionId::generate().unwrap();
        let r = Record::new(10, 60, 0);
        s.create(&id, &r).unwrap();
        let lock = s.try_lock(&id, Duration::from_secs(5)).unwrap().unwrap();
        // Invalidated (or swept, or logged out everywhere) meanwhile.
        s.delete(&id, None).unwrap();
        for fence in [lock.fence(), None] {
            assert!(matches!(s.save(&id, &r, fence), Err(StoreError::Vanished)));
            assert_eq!(s.load(&id).unwrap(), None);
            assert_eq!(leftovers(&s, &id), Vec::<String>::new());
        }
        // A shard that is gone altogether is the same.
        drop(lock);
        fs::remove_dir_all(s.shard_path(id.shard())).unwrap();
        assert!(matches!(s.save(&id, &r, None), Err(StoreError::Vanished)));
    }

    #[test]
    fn a_spare_linked_to_the_record_is_not_written_in_place() {
        use std::os::unix::fs::MetadataExt;
        let (_d, s) = store();
        let id = SessionId::generate().unwrap();
        let mut r = Record::new(10, 60, 0);
        s.create(&id, &r).unwrap();
        let lock = s.try_lock(&id, Duration::from_secs(5)).unwrap().unwrap();
        s.save(&id, &r, lock.fence()).unwrap();
        // `ln <id> <id>.spare`: both names are the live record.
        fs::remove_file(s.spare_path(&id)).unwrap();
        fs::hard_link(s.record_path(&id), s.spare_path(&id)).unwrap();
        r.data.insert("k".into(), "v".into());
        s.save(&id, &r, lock.fence()).unwrap();
        assert_eq!(s.load(&id).unwrap(), Some(r.clone()));
        // The record was swapped in whole, not rewritten under a reader:
        // it is a file of its own again.
        assert_eq!(fs::metadata(s.record_path(&id)).unwrap().nlink(), 1);
        r.data.insert("k".into(), "w".into());
        s.save(&id, &r, lock.fence()).unwrap();
        assert_eq!(s.load(&id).unwrap(), Some(r));
    }

    #[test]
    fn a_spare_far_longer_than_the_record_is_not_padded_to_it() {
        let (_d, s) = store();
        let id = SessionId::generate().unwrap();
        let mut r = Record::new(10, 60, 0);
        s.create(&id, &r).unwrap();
        let lock = s.try_lock(&id, Duration::from_secs(5)).unwrap().unwrap();
        // A large spare, sparse as a planted one would be (or what a
        // record that shrank leaves).
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(s.spare_path(&id))
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        r.data.insert("k".into(), "v".into());
        s.save(&id, &r, lock.fence()).unwrap();
        assert_eq!(s.load(&id).unwrap(), Some(r.clone()));
        let len = fs::metadata(s.record_path(&id)).unwrap().len();
        assert_eq!(len, r.encode().len() as u64);
        // The next save makes a spare of its own and reuses it after.
        for v in ["w", "x"] {
            r.data.insert("k".into(), v.into());
            s.save(&id, &r, lock.fence()).unwrap();
            assert_eq!(s.load(&id).unwrap(), Some(r.clone()));
            assert!(fs::metadata(s.spare_path(&id)).unwrap().len() < 4096);
        }
    }

    #[test]
    fn the_rename_fallback_keeps_records_whole() {
        let (_d, s) = store();
        s.can_exchange.store(false, Ordering::Relaxed);
        let id = SessionId::generate().unwrap();
        let mut r = Record::new(10, 60, 0);
        s.create(&id, &r).unwrap();
        r.data.insert("k".into(), "v".into());
        s.save(&id, &r, None).unwrap();
        assert_eq!(s.load(&id).unwrap(), Some(r));
    }

    #[test]
    fn the_user_index_follows_records_and_stays_bounded() {
        let (_d, s) = store();
        let key = crate::auth::user_index_key("scope", "ann");
        let other = crate::auth::user_index_key("scope", "bob");
        let ids: Vec<SessionId> = (0..10_000)
            .map(|_| SessionId::generate().unwrap())
            .collect();
        for id in &ids {
            s.create(id, &Record::new(10, 60, 0)).unwrap();
            s.add(&key, id).unwrap();
        }
        let bobs = SessionId::generate().unwrap();
        s.create(&bobs, &Record::new(10, 60, 0)).unwrap();
        s.add(&other, &bobs).unwrap();
        assert_eq!(s.sessions(&key, 100).unwrap().len(), 100, "the limit holds");
        assert_eq!(s.sessions(&key, usize::MAX).unwrap().len(), 10_000);
        // Records gone without the index knowing are dropped from it.
        for id in &ids[..9_990] {
            s.delete(id, None).unwrap();
        }
        assert_eq!(s.sessions(&key, usize::MAX).unwrap().len(), 10);
        let user_dir = s.user_dir(&key).unwrap();
        assert_eq!(fs::read_dir(&user_dir).unwrap().count(), 10);
        for id in &ids[9_990..] {
            s.remove(&key, id).unwrap();
        }
        assert!(!user_dir.exists(), "an empty user directory goes");
        assert_eq!(s.sessions(&other, 10).unwrap(), vec![bobs]);
        assert!(s.user_dir("../../etc").is_none());
        assert!(s.add("../../etc", &bobs).is_err());
    }

    #[test]
    fn the_sweeper_removes_index_entries_with_their_records() {
        let (_d, s) = store();
        let mut r = Record::new(10, 60, 0);
        r.scope = "sc".into();
        r.user = Some("ann".into());
        let key = crate::auth::user_index_key("sc", "ann");
        let (expired, stale) = (
            SessionId::generate().unwrap(),
            SessionId::generate().unwrap(),
        );
        s.create(&expired, &r).unwrap();
        s.add(&key, &expired).unwrap();
        s.add(&key, &stale).unwrap();
        let mut cursor = 0;
        s.sweep(1_000, &mut cursor, 1_000, &|_| {}, &AtomicBool::new(false))
            .unwrap();
        assert!(!s.exists(&expired).unwrap());
        assert!(!s.user_dir(&key).unwrap().exists(), "both entries went");
    }

    #[test]
    fn planted_links_in_the_index_are_not_followed() {
        let (d, s) = store();
        let key = crate::auth::user_index_key("sc", "ann");
        let dir = s.user_dir(&key).unwrap();
        fs::create_dir_all(dir.parent().unwrap()).unwrap();
        let elsewhere = d.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
        let id = SessionId::generate().unwrap();
        s.add(&key, &id).unwrap();
        assert!(fs::symlink_metadata(&dir).unwrap().is_dir());
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn corrupt_records_are_reported() {
        let (_d, s) = store();
        let id = SessionId::generate().unwrap();
        s.repair_shard(&id).unwrap();
        fs::write(s.record_path(&id), b"{\"torn").unwrap();
        assert!(matches!(s.load(&id), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn planted_files_never_block_and_never_stick() {
        let (d, s) = store();
        let outside = d.path().join("outside");
        fs::write(&outside, Record::new(10, 60, 0).encode()).unwrap();
        let fifo = SessionId::generate().unwrap();
        let dir = SessionId::generate().unwrap();
        let link = SessionId::generate().unwrap();
        for id in [&fifo, &dir, &link] {
            s.repair_shard(id).unwrap();
        }
        nix::unistd::mkfifo(&s.record_path(&fifo), nix::sys::stat::Mode::S_IRWXU).unwrap();
        fs::create_dir(s.record_path(&dir)).unwrap();
        fs::write(s.record_path(&dir).join("inside"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, s.record_path(&link)).unwrap();
        for id in [&fifo, &dir, &link] {
            assert!(matches!(s.load(id), Err(StoreError::Corrupt(_))), "{id:?}");
            s.delete(id, None).unwrap();
            assert!(!s.exists(id).unwrap());
        }
        assert!(outside.exists(), "a link is removed, not its target");

        // Lock and spare files planted as FIFOs are set aside and made anew.
        let id = SessionId::generate().unwrap();
        s.repair_shard(&id).unwrap();
        nix::unistd::mkfifo(&s.lock_path(&id), nix::sys::stat::Mode::S_IRWXU).unwrap();
        nix::unistd::mkfifo(&s.spare_path(&id), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let r = Record::new(10, 60, 0);
        s.create(&id, &r).unwrap();
        assert!(s.try_lock(&id, Duration::ZERO).unwrap().is_some());
        s.save(&id, &r, None).unwrap();
        assert_eq!(s.load(&id).unwrap(), Some(r));
        assert!(fs::metadata(s.lock_path(&id)).unwrap().is_file());
    }

    #[test]
    fn shards_are_made_when_needed_and_planted_ones_replaced() {
        let (d, s) = store();
        let id = SessionId::generate().unwrap();
        assert_eq!(s.load(&id).unwrap(), None, "no shard yet: no record");
        assert!(!s.exists(&id).unwrap());
        // A file where the shard should be.
        fs::write(s.shard_path(id.shard()), "x").unwrap();
        assert_eq!(s.load(&id).unwrap(), None);
        assert_eq!(
            s.create(&id, &Record::new(10, 60, 0)).unwrap(),
            Created::Yes
        );
        assert!(fs::symlink_metadata(s.shard_path(id.shard()))
            .unwrap()
            .is_dir());
        assert_eq!(s.count().unwrap(), 1);
        // A link planted as a shard is set aside at startup, not followed.
        let outside = d.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let other = (id.shard() as usize + 1) % 256;
        std::os::unix::fs::symlink(&outside, s.shard_path(other as u8)).unwrap();
        let notes = s
            .prepare_local(&Setup::new(crate::safe_fs::Owner::current()))
            .unwrap();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(fs::symlink_metadata(s.shard_path(other as u8)).is_err());
        assert!(outside.is_dir());
    }

    #[test]
    fn idle_lock_files_stay_bounded_per_shard_and_in_all() {
        let dir = tempfile::tempdir().unwrap();
        let pool = LockFilePool::new();
        let open = || File::open(dir.path()).unwrap();
        for _ in 0..IDLE_LOCK_FILES + 3 {
            pool.give_back(7, open());
        }
        assert_eq!(pool.shards[7].lock().len(), IDLE_LOCK_FILES);
        for shard in 0..256 {
            for _ in 0..IDLE_LOCK_FILES {
                pool.give_back(shard, open());
            }
        }
        let kept: usize = pool.shards.iter().map(|s| s.lock().len()).sum();
        assert_eq!(kept, IDLE_LOCK_FILES_TOTAL);
        assert_eq!(pool.idle.load(Ordering::Relaxed), IDLE_LOCK_FILES_TOTAL);
        assert!(pool.take(7).is_some());
        assert_eq!(pool.idle.load(Ordering::Relaxed), IDLE_LOCK_FILES_TOTAL - 1);
        pool.give_back(200, open());
        assert_eq!(pool.idle.load(Ordering::Relaxed), IDLE_LOCK_FILES_TOTAL);
    }

    #[test]
    fn locks_exclude_other_holders_until_dropped() {
        let (_d, s) = store();
        let a = SessionId::generate().unwrap();
        let b = SessionId::generate().unwrap();
        let ttl = Duration::from_secs(1);
        let held = s.try_lock(&a, ttl).unwrap().expect("free lock");
        assert!(s.try_lock(&a, ttl).unwrap().is_none());
        assert!(
            s.try_lock(&b, ttl).unwrap().is_some(),
            "sessions must not share locks"
        );
        let other_thread = std::thread::scope(|t| {
            t.spawn(|| s.try_lock(&a, ttl).unwrap().is_none())
                .join()
                .unwrap()
        });
        assert!(other_thread);
        drop(held);
        assert!(s.try_lock(&a, ttl).unwrap().is_some());
    }

    #[test]
    fn concurrent_saves_never_tear_a_record() {
        let (_d, s) = store();
        let id = SessionId::generate().unwrap();
        s.create(&id, &Record::new(10, 60, 0)).unwrap();
        std::thread::scope(|t| {
            for n in 0..4 {
                let s = &s;
                t.spawn(move || {
                    for i in 0..50 {
                        let mut r = Record::new(10, 60, 0);
                        r.data.insert("w".into(), "x".repeat((n * 50 + i) % 97));
                        s.save(&id, &r, None).unwrap();
                        assert!(s.load(&id).unwrap().is_some(), "always a whole record");
                    }
                });
            }
        });
    }
}
