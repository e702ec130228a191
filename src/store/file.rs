//! The file store, the default: one JSON record per session in one
//! directory, replaced atomically (temporary file + rename), mode 0600.
//! Each record's mtime is set to the moment it expires, so a sweeper finds
//! expired sessions with one `stat` per entry and reads only those (and an
//! operator can list them with `find -mmin`).
//!
//! Locks are `flock(2)` locks on per-session files under `locks/`: each
//! acquisition opens its own descriptor, so threads of one process exclude
//! each other, the kernel drops the lock when a process dies, and std opens
//! with `O_CLOEXEC`, so CGI children never inherit it.

use super::{Created, HeldLock, SessionStore, StoreError, SweepCounts};
use crate::id::SessionId;
use crate::record::Record;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Prefix of temporary files; a sweeper removes stale ones.
pub const TEMP_PREFIX: &str = ".tmp-";
const LOCK_DIR: &str = "locks";
/// Lock file that admits one sweeper at a time.
const SWEEPER_LOCK: &str = ".sweeper";
/// Temporary files younger than this are left alone: a write may still be
/// under way.
const DEBRIS_AGE: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub struct FileStore {
    root: PathBuf,
    locks: PathBuf,
}

fn io_error(what: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { what, source }
}

/// Creates a private directory (0700) if missing.
pub fn ensure_private_dir(path: &Path) -> std::io::Result<()> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// A process-wide counter that makes temporary names unique per thread.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

struct FileLock {
    _file: File,
}

impl HeldLock for FileLock {}

impl FileStore {
    /// Opens (creating if needed) the store under `root`.
    pub fn open(root: PathBuf) -> Result<FileStore, StoreError> {
        let locks = root.join(LOCK_DIR);
        ensure_private_dir(&locks).map_err(io_error(format!(
            "cannot create store directory {}",
            locks.display()
        )))?;
        Ok(FileStore { root, locks })
    }

    #[cfg(test)]
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn record_path(&self, id: &SessionId) -> PathBuf {
        self.root.join(id.to_string())
    }

    fn lock_path(&self, id: &SessionId) -> PathBuf {
        self.locks.join(id.to_string())
    }

    /// Writes `record` to a fresh temporary file and returns its path.
    fn write_temp(&self, id: &SessionId, record: &Record) -> Result<PathBuf, StoreError> {
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let temp = self
            .root
            .join(format!("{TEMP_PREFIX}{}-{}-{seq}", id, std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            f.write_all(&record.encode())?;
            f.set_modified(UNIX_EPOCH + Duration::from_secs(record.expires_at()))
        };
        if let Err(source) = write() {
            let _ = fs::remove_file(&temp);
            return Err(StoreError::Io {
                what: format!("cannot write session record in {}", self.root.display()),
                source,
            });
        }
        Ok(temp)
    }
}

impl SessionStore for FileStore {
    fn describe(&self) -> String {
        format!("file:{}", self.root.display())
    }

    fn create(&self, id: &SessionId, record: &Record) -> Result<Created, StoreError> {
        let temp = self.write_temp(id, record)?;
        // link(2) fails if the name exists: an exclusive, atomic create.
        let linked = fs::hard_link(&temp, self.record_path(id));
        let _ = fs::remove_file(&temp);
        match linked {
            Ok(()) => Ok(Created::Yes),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(Created::Collision),
            Err(source) => Err(StoreError::Io {
                what: format!("cannot create session record in {}", self.root.display()),
                source,
            }),
        }
    }

    fn load(&self, id: &SessionId) -> Result<Option<Record>, StoreError> {
        match fs::read(self.record_path(id)) {
            Ok(bytes) => Record::decode(&bytes).map(Some).ok_or_else(|| {
                StoreError::Corrupt(format!("{}... in {}", id.short(), self.root.display()))
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io {
                what: format!("cannot read session record in {}", self.root.display()),
                source,
            }),
        }
    }

    fn save(&self, id: &SessionId, record: &Record) -> Result<(), StoreError> {
        let temp = self.write_temp(id, record)?;
        fs::rename(&temp, self.record_path(id)).map_err(|source| {
            let _ = fs::remove_file(&temp);
            StoreError::Io {
                what: format!("cannot replace session record in {}", self.root.display()),
                source,
            }
        })
    }

    fn delete(&self, id: &SessionId) -> Result<(), StoreError> {
        for path in [self.record_path(id), self.lock_path(id)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StoreError::Io {
                        what: format!("cannot delete session record in {}", self.root.display()),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    fn try_lock(
        &self,
        id: &SessionId,
        _ttl: Duration,
    ) -> Result<Option<Box<dyn HeldLock>>, StoreError> {
        self.try_lock_file(&self.lock_path(id))
    }

    fn count(&self) -> Result<u64, StoreError> {
        let entries = fs::read_dir(&self.root)
            .map_err(io_error(format!("cannot list {}", self.root.display())))?;
        Ok(entries
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<SessionId>().is_ok())
            })
            .count() as u64)
    }

    fn local_dirs(&self) -> Vec<PathBuf> {
        vec![self.root.clone(), self.locks.clone()]
    }

    fn exists(&self, id: &SessionId) -> Result<bool, StoreError> {
        match fs::symlink_metadata(self.record_path(id)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StoreError::Io {
                what: format!("cannot stat session record in {}", self.root.display()),
                source,
            }),
        }
    }

    /// The store directory is local, so it is the scope: one sweeper for it.
    fn try_begin_sweep(
        &self,
        interval: Duration,
        _scope: &Path,
    ) -> Result<Option<Box<dyn HeldLock>>, StoreError> {
        let path = self.locks.join(SWEEPER_LOCK);
        let Some(guard) = self.try_lock_file(&path)? else {
            return Ok(None);
        };
        // The lock file's mtime records when the last pass began.
        let stamp = fs::metadata(&path).and_then(|m| m.modified()).ok();
        let recent = stamp
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < interval.mul_f64(0.9));
        if recent {
            return Ok(None);
        }
        let _ = fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now()));
        Ok(Some(guard))
    }

    fn sweep(
        &self,
        now: u64,
        cursor: &mut usize,
        budget: usize,
        removed: &mut dyn FnMut(&SessionId),
    ) -> Result<SweepCounts, StoreError> {
        let mut counts = SweepCounts::default();
        let entries = fs::read_dir(&self.root)
            .map_err(io_error(format!("cannot list {}", self.root.display())))?;
        let now_time = UNIX_EPOCH + Duration::from_secs(now);
        let age = |m: &fs::Metadata| {
            m.modified()
                .ok()
                .and_then(|t| now_time.duration_since(t).ok())
                .unwrap_or_default()
        };
        let mut position = 0usize;
        let mut wrapped = true;
        for entry in entries {
            let Ok(entry) = entry else { continue };
            position += 1;
            if position <= *cursor {
                continue;
            }
            if counts.scanned as usize >= budget {
                wrapped = false;
                position -= 1;
                break;
            }
            counts.scanned += 1;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            if name.starts_with(TEMP_PREFIX) {
                if age(&meta) >= DEBRIS_AGE && !writer_alive(name) {
                    let _ = fs::remove_file(entry.path());
                    counts.debris += 1;
                }
                continue;
            }
            let Ok(id) = name.parse::<SessionId>() else {
                continue;
            };
            // mtime is the expiry moment: unexpired records cost no read.
            if meta.modified().map_or(true, |t| t > now_time) {
                continue;
            }
            let Some(lock) = self.try_lock(&id, Duration::ZERO)? else {
                counts.skipped_locked += 1;
                continue;
            };
            // Re-read under the lock: a request may have renewed it.
            let expired = match self.load(&id) {
                Ok(Some(record)) => record.is_expired(now),
                Ok(None) => false,
                Err(StoreError::Corrupt(_)) => true,
                Err(_) => false,
            };
            if expired {
                self.delete(&id)?;
                removed(&id);
                counts.expired += 1;
            }
            drop(lock);
        }
        *cursor = if wrapped { 0 } else { position };
        Ok(counts)
    }
}

/// True while the process that wrote a temporary file may still be
/// writing it (names end in `-PID-SEQ`).
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

impl FileStore {
    /// flock on a lock file, guarding against a file unlinked meanwhile.
    fn try_lock_file(&self, path: &Path) -> Result<Option<Box<dyn HeldLock>>, StoreError> {
        let err = || io_error(format!("cannot lock session in {}", self.locks.display()));
        // A lock file unlinked by `delete` while we waited on it no longer
        // guards anything: retry on the file that the path names now.
        for _ in 0..8 {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(err())?;
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => return Ok(None),
                Err(fs::TryLockError::Error(e)) => return Err(err()(e)),
            }
            let held = file.metadata().map_err(err())?.ino();
            match fs::metadata(path) {
                Ok(m) if m.ino() == held => return Ok(Some(Box::new(FileLock { _file: file }))),
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(err()(e)),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, FileStore) {
        let dir = tempfile::tempdir().unwrap();
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
        let mode = fs::metadata(s.record_path(&id))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        r.data.insert("k".into(), "v".into());
        s.save(&id, &r).unwrap();
        assert_eq!(s.load(&id).unwrap(), Some(r));
        assert_eq!(s.count().unwrap(), 1);
        s.delete(&id).unwrap();
        s.delete(&id).unwrap();
        assert_eq!(s.load(&id).unwrap(), None);
        assert_eq!(s.count().unwrap(), 0);
        let leftovers: Vec<_> = fs::read_dir(s.root())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from(LOCK_DIR)]);
    }

    #[test]
    fn corrupt_records_are_reported() {
        let (_d, s) = store();
        let id = SessionId::generate().unwrap();
        fs::write(s.record_path(&id), b"{\"torn").unwrap();
        assert!(matches!(s.load(&id), Err(StoreError::Corrupt(_))));
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
    fn a_deleted_lock_file_is_not_trusted() {
        let (_d, s) = store();
        let id = SessionId::generate().unwrap();
        let ttl = Duration::from_secs(1);
        let first = s.try_lock(&id, ttl).unwrap().unwrap();
        s.delete(&id).unwrap();
        // The path now names no file: a new holder gets a fresh lock file.
        let second = s.try_lock(&id, ttl).unwrap();
        assert!(second.is_some());
        drop(first);
    }
}
