//! Scratch directories: one private directory per session, created 0700 by
//! the serving child (so owned by `User`), removed recursively without
//! following symbolic links. Layout under the configured root:
//!
//! ```text
//! <tag>/          one per store (tag: a hash of the store's description),
//!                 so that stores sharing a root never judge each other's
//!                 sessions: a directory goes only when its own store says
//!                 the session is gone
//!   <xx>/         256 shards by the id's first byte, like the file store
//!     <id>/       the session's directory (RSESSION_DIR)
//! ```
//!
//! The tag and shard directories are made by children, as `User`, when
//! first needed. Everything below the root is writable by handlers, so
//! removal goes through `safe_fs` (never follows a link, restores the modes
//! it needs) and a planted non-directory in a directory's place is removed.
//!
//! With `RSessionScratchGroup` the tag names the group too, and the parent
//! makes the tag directory, its shards and `.reap` (setgid, 2710, a default
//! ACL so that `umask` leaves the group its write permission): session
//! directories made inside are 2770 and inherit the group and the setgid
//! bit. What a
//! member leaves that `User` cannot remove (a `chmod 700` subdirectory of
//! another user) is moved to `.reap`, which the parent's reaper empties as
//! the owners of what is inside (`reaper.rs`).
//!
//! A new session that is not kept yet has no record and no lock in its
//! store (so a request that writes nothing costs the store nothing): its
//! directory is held instead, by a shared `flock` on the directory itself
//! for as long as the request has it ([`HeldDir`]). The sweeper leaves a
//! held directory alone.

use crate::config::value::ScratchGroup;
use crate::id::{SessionId, ID_TEXT_LEN};
use crate::safe_fs;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::statfs::statfs;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, ErrorKind};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;

/// Mode of every directory made below the root.
const DIR_MODE: u32 = 0o700;
/// With `RSessionScratchGroup`: the group may write too; setgid, so that
/// what is made inside belongs to the group.
const GROUP_DIR_MODE: u32 = 0o2770;
/// In the tag directory: session directories waiting for the reaper.
pub const REAP_DIR: &str = ".reap";

#[derive(Debug, Clone)]
pub struct ScratchRoot {
    root: PathBuf,
    /// `root/<tag>`: the directories of one store's sessions.
    store_dir: PathBuf,
    /// `RSessionScratchGroup`'s gid.
    group: Option<u32>,
    /// `holds_work`, found out on first use (in a child, once the root
    /// exists).
    local_locks: OnceLock<bool>,
}

/// File systems (`statfs`'s `f_type`) whose `flock` every process that
/// reaches them sees: tmpfs, ramfs, ext2/3/4, XFS, Btrfs, overlayfs, ZFS,
/// F2FS, bcachefs, ReiserFS, JFS.
const LOCAL_FILE_SYSTEMS: [u32; 11] = [
    0x0102_1994,
    0x8584_58f6,
    0xef53,
    0x5846_5342,
    0x9123_683e,
    0x794c_7630,
    0x2fc1_2fc1,
    0xf2f5_2010,
    0xca45_1a4e,
    0x5265_4973,
    0x3153_464a,
];

impl ScratchRoot {
    /// The scratch directories under `root` of the sessions of the store
    /// described by `store` (`SessionStore::describe`).
    pub fn new(root: PathBuf, store: &str) -> ScratchRoot {
        let store_dir = root.join(safe_fs::tag(store));
        ScratchRoot {
            root,
            store_dir,
            group: None,
            local_locks: OnceLock::new(),
        }
    }

    /// As `new`, with directories shared with `group`: a tag of their own,
    /// so that directories made before the group was set (private to
    /// `User`) are never mistaken for shared ones.
    pub fn with_group(root: PathBuf, store: &str, group: &ScratchGroup) -> ScratchRoot {
        let store_dir = root.join(safe_fs::tag(&format!("{store}\ngroup={}", group.name)));
        ScratchRoot {
            root,
            store_dir,
            group: Some(group.gid),
            local_locks: OnceLock::new(),
        }
    }

    /// `RSessionScratchGroup`'s gid, if set.
    pub fn group(&self) -> Option<u32> {
        self.group
    }

    fn dir_mode(&self) -> u32 {
        if self.group.is_some() {
            GROUP_DIR_MODE
        } else {
            DIR_MODE
        }
    }

    /// The configured root (shared by every store that names it).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The part of the root that belongs to this store.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The directory of `id`: `root/<tag>/<xx>/<id>`. Ids are hex, so this
    /// never leaves the root. Concatenated rather than `join`ed: this runs
    /// on every request.
    pub fn path(&self, id: &SessionId) -> PathBuf {
        let text = id.text();
        let text: &str = &text;
        let base = self.store_dir.as_os_str();
        let mut path = OsString::with_capacity(base.len() + 4 + ID_TEXT_LEN);
        path.push(base);
        path.push("/");
        path.push(&text[..2]);
        path.push("/");
        path.push(text);
        PathBuf::from(path)
    }

    /// Makes the tag or shard directory `dir` (mode 0700, or 2710 with a
    /// group: the parent makes them so at start; a child makes one again if
    /// it went): created if missing, anything else planted under its name
    /// set aside first.
    fn make_dir(&self, dir: &Path) -> io::Result<()> {
        match self.mkdir_parent(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                if safe_fs::set_aside_unless(dir, safe_fs::is_dir)?.is_some() {
                    self.mkdir_parent(dir)?;
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// With a group, 2710 like the parent's, so members pass through
    /// without listing others' ids.
    fn mkdir_parent(&self, dir: &Path) -> io::Result<()> {
        let mode = if self.group.is_some() {
            safe_fs::GROUP_PASS_MODE
        } else {
            DIR_MODE
        };
        fs::DirBuilder::new().mode(mode).create(dir)
    }

    /// A session directory, with this root's mode (with a group, the
    /// parent's default ACL above keeps `umask` from taking the group's
    /// write bit; the parent refuses to start without it).
    fn mkdir(&self, dir: &Path) -> io::Result<()> {
        fs::DirBuilder::new().mode(self.dir_mode()).create(dir)
    }

    /// Makes the tag and shard directories that hold `id`'s directory.
    fn make_parents(&self, id: &SessionId) -> io::Result<()> {
        let shard = self.path(id).parent().map(Path::to_path_buf);
        self.make_dir(&self.store_dir)?;
        match shard {
            Some(shard) => self.make_dir(&shard),
            None => Ok(()),
        }
    }

    /// Creates the directory of `id`, making its parents when missing and
    /// removing a non-directory a handler planted under its name.
    fn make(&self, id: &SessionId, path: PathBuf) -> io::Result<PathBuf> {
        for _ in 0..3 {
            match self.mkdir(&path) {
                Ok(()) => return Ok(path),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    if fs::symlink_metadata(&path)?.file_type().is_dir() {
                        return Ok(path);
                    }
                    safe_fs::remove_entry(&path)?;
                }
                Err(e) if e.kind() == ErrorKind::NotFound || is_enotdir(&e) => {
                    self.make_parents(id)?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(
            "something keeps appearing in place of the scratch directory",
        ))
    }

    /// Creates the directory if missing. A file or symbolic link planted
    /// under its name by a handler is removed (never followed) and the
    /// directory made anew.
    pub fn ensure(&self, id: &SessionId) -> io::Result<PathBuf> {
        let path = self.path(id);
        // The usual case, a returning session: one lstat and done.
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_dir() => Ok(path),
            Ok(_) => {
                safe_fs::remove_entry(&path)?;
                self.make(id, path)
            }
            Err(e) if e.kind() == ErrorKind::NotFound || is_enotdir(&e) => self.make(id, path),
            Err(e) => Err(e),
        }
    }

    /// For a session created just now: `mkdir` straight away (one system
    /// call in the usual case).
    pub fn create(&self, id: &SessionId) -> io::Result<PathBuf> {
        self.make(id, self.path(id))
    }

    /// For a new session that its store does not know yet: the directory,
    /// created and held until the returned guard drops, so that the
    /// sweeper does not take it for an orphan (see the module's notes).
    /// No guard where the file system has no `flock` for directories (some
    /// network file systems): the caller must then keep the sweeper away
    /// with the store's lock.
    pub fn create_held(&self, id: &SessionId) -> io::Result<(PathBuf, Option<HeldDir>)> {
        let path = self.create(id)?;
        if !self.holds_work() {
            return Ok((path, None));
        }
        let opened = match safe_fs::open_dir(&path) {
            Ok(Some(d)) => d,
            Ok(None) => return Err(ErrorKind::NotFound.into()),
            Err(e) => {
                let _ = self.remove(id);
                return Err(e);
            }
        };
        // A std `File`'s lock goes with its descriptor: dropping it is one
        // `close`, where nix's `Flock` would first `flock(LOCK_UN)`.
        let held = std::fs::File::from(opened);
        match held.try_lock_shared() {
            Ok(()) => Ok((path, Some(HeldDir { _held: held }))),
            Err(_) => Ok((path, None)),
        }
    }

    /// Whether a request holds the directory `name` of the opened `shard`
    /// (a new session's, not kept yet): only a lock that would block says
    /// so. A link or file in its place is unlinked (no request holds that)
    /// and a directory a handler shut with `chmod` is opened up, as its
    /// removal would. Any other failure says no: the store's lock then
    /// decides, and the removal reports what stays (where holds do not
    /// work, new sessions take that lock; see `holds_work`).
    pub fn is_held_at(&self, shard: BorrowedFd<'_>, name: &OsStr) -> bool {
        match safe_fs::open_dir_repairing(shard, name) {
            Ok(Some(dir)) => matches!(
                Flock::lock(dir, FlockArg::LockExclusiveNonblock),
                Err((_, Errno::EWOULDBLOCK))
            ),
            Ok(None) | Err(_) => false,
        }
    }

    /// Whether this root's file system gives `flock` on directories the
    /// meaning a hold needs: one lock for every process that can reach the
    /// directory. True for local file systems. A network file system
    /// shared by several servers (NFS, CIFS, ...) may take the lock on
    /// this machine only, so there new sessions take the store's lock
    /// instead, which every server sees.
    pub fn holds_work(&self) -> bool {
        if let Some(known) = self.local_locks.get() {
            return *known;
        }
        // Only an answer is kept: a root that is briefly missing (an
        // operator remaking it) is asked again next time. `f_type` is a C
        // `long` on most targets and 32 bits wide on some; the magic
        // numbers are 32-bit either way.
        match statfs(&self.root) {
            Ok(s) => *self
                .local_locks
                .get_or_init(|| LOCAL_FILE_SYSTEMS.contains(&(s.filesystem_type().0 as u32))),
            Err(_) => false,
        }
    }

    /// Removes the directory and everything in it, as its owner: links
    /// inside are removed as links (their targets never touched), and
    /// directories a handler made unreadable or unwritable (`chmod 000`)
    /// get their owner's permissions back first. The error names what
    /// stayed.
    pub fn remove(&self, id: &SessionId) -> io::Result<()> {
        let text = id.text();
        let Some(shard) = self.open_shard(OsStr::new(&text[..2]))? else {
            return Ok(());
        };
        self.remove_at(&shard, OsStr::new(&*text), &AtomicBool::new(false))
    }

    /// Removes the session directory `name` in the opened `shard`
    /// (`safe_fs::remove_tree_at_until`). With a group, a directory that
    /// keeps what members of it left (their own modes on their own
    /// subdirectories) is handed to the reaper instead: moved to `.reap`,
    /// so the session's id is free at once.
    pub fn remove_at(&self, shard: impl AsFd, name: &OsStr, stop: &AtomicBool) -> io::Result<()> {
        let shard = shard.as_fd();
        match safe_fs::remove_tree_at_until(shard, name, stop) {
            Err(e) if self.group.is_some() && e.kind() != ErrorKind::Interrupted => {
                self.hand_to_reaper(shard, name).map_err(|_| e)
            }
            other => other,
        }
    }

    fn hand_to_reaper(&self, shard: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        let Some(tag) = safe_fs::open_dir(&self.store_dir)? else {
            return Err(ErrorKind::NotFound.into());
        };
        let Some(reap) = safe_fs::open_dir_at(&tag, OsStr::new(REAP_DIR))? else {
            return Err(ErrorKind::NotFound.into());
        };
        let mut aside = name.to_os_string();
        aside.push(format!(".{}", std::process::id()));
        safe_fs::move_dir(shard, name, reap.as_fd(), &aside)
    }

    /// The shard directory `name` of this store, opened without following
    /// a link: `None` if it (or the tag directory) is missing or is not a
    /// real directory.
    pub fn open_shard(&self, name: &OsStr) -> io::Result<Option<std::os::fd::OwnedFd>> {
        let Some(tag) = dir_or_none(safe_fs::open_dir(&self.store_dir))? else {
            return Ok(None);
        };
        dir_or_none(safe_fs::open_dir_at(&tag, name))
    }

    /// Removes the session's directory if it is empty and says whether it
    /// is gone: `false` when a handler left something in it (such a new
    /// session is kept). One `rmdir`, which never follows a link: this
    /// runs at the end of every request that brought no session.
    pub fn remove_if_empty(&self, id: &SessionId) -> bool {
        match fs::remove_dir(self.path(id)) {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::NotFound => true,
            Err(e) if e.kind() == ErrorKind::DirectoryNotEmpty => false,
            // Something planted in its place, or a mode in the way: the
            // thorough removal decides.
            Err(_) => {
                let _ = self.remove(id);
                fs::symlink_metadata(self.path(id)).is_err()
            }
        }
    }

    /// Moves a session's directory to a new id (on regenerate).
    pub fn rename(&self, from: &SessionId, to: &SessionId) -> io::Result<PathBuf> {
        let source = self.path(from);
        let target = self.path(to);
        for _ in 0..3 {
            match fs::rename(&source, &target) {
                Ok(()) => return Ok(target),
                Err(e) if e.kind() == ErrorKind::NotFound || is_enotdir(&e) => {
                    if fs::symlink_metadata(&source).is_err() {
                        return self.ensure(to);
                    }
                    self.make_parents(to)?;
                }
                // A directory without write permission (a handler's chmod)
                // cannot be moved: its `..` entry must change.
                Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                    safe_fs::restore_owner_access(&source)?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("cannot move the scratch directory"))
    }
}

/// A new session's directory held by its request: the sweeper leaves it
/// alone until this drops (closing the descriptor, which releases the
/// shared `flock`; it is close-on-exec, so no handler's child keeps it).
#[derive(Debug)]
pub struct HeldDir {
    _held: std::fs::File,
}

fn is_enotdir(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOTDIR)
}

/// A directory that is missing, or is a link or file instead, is no
/// directory of ours.
fn dir_or_none(
    opened: io::Result<Option<std::os::fd::OwnedFd>>,
) -> io::Result<Option<std::os::fd::OwnedFd>> {
    match opened {
        Err(e) if is_enotdir(&e) || e.raw_os_error() == Some(libc::ELOOP) => Ok(None),
        other => other,
    }
}

/// The names of the 256 shards, `00` to `ff`.
pub fn shard_names() -> impl Iterator<Item = String> {
    (0..=255u8).map(|b| format!("{b:02x}"))
}

/// True for the two-hex-digit names of shards.
pub fn is_shard_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.len() == 2 && b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(dir: &Path) -> ScratchRoot {
        let root = dir.join("scratch");
        fs::create_dir(&root).unwrap();
        ScratchRoot::new(root, "file:/store")
    }

    #[test]
    fn only_a_live_hold_reads_as_held() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = scratch(dir.path());
        assert!(
            scratch.holds_work(),
            "the tests' temporary directory is local"
        );
        let id = SessionId::generate().unwrap();
        let (path, hold) = scratch.create_held(&id).unwrap();
        assert!(hold.is_some());
        let text = id.text();
        let shard = scratch.open_shard(OsStr::new(&text[..2])).unwrap().unwrap();
        let name = OsStr::new(&*text);
        assert!(scratch.is_held_at(shard.as_fd(), name));
        // The sweeper's own attempt took nothing away from the holder.
        assert!(scratch.is_held_at(shard.as_fd(), name));
        drop(hold);
        assert!(!scratch.is_held_at(shard.as_fd(), name));
        // A link planted in a directory's place is nobody's hold, and goes.
        fs::remove_dir(&path).unwrap();
        std::os::unix::fs::symlink(dir.path(), &path).unwrap();
        assert!(!scratch.is_held_at(shard.as_fd(), name));
        assert!(fs::symlink_metadata(&path).is_err());
        assert!(dir.path().join("scratch").exists());
    }

    #[test]
    fn lifecycle_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = scratch(dir.path());
        let id = SessionId::generate().unwrap();
        let path = scratch.create(&id).unwrap();
        let text = id.text();
        assert_eq!(
            path,
            scratch.store_dir().join(&text[..2]).join(&*text),
            "sharded below the store's own directory"
        );
        assert!(path.starts_with(scratch.root()));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            scratch.create(&id).unwrap(),
            path,
            "an existing directory is accepted"
        );
        assert_eq!(scratch.ensure(&id).unwrap(), path);
        fs::write(path.join("upload.txt"), "x").unwrap();
        let new = SessionId::generate().unwrap();
        let moved = scratch.rename(&id, &new).unwrap();
        assert!(moved.join("upload.txt").exists());
        assert!(!path.exists());
        scratch.remove(&new).unwrap();
        scratch.remove(&new).unwrap();
        assert!(!moved.exists());
    }

    #[test]
    fn only_an_empty_directory_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = scratch(dir.path());
        let id = SessionId::generate().unwrap();
        let path = scratch.create(&id).unwrap();
        assert!(scratch.remove_if_empty(&id), "empty: gone");
        assert!(!path.exists());
        assert!(scratch.remove_if_empty(&id), "absent: nothing left");

        let path = scratch.create(&id).unwrap();
        fs::write(path.join("upload"), "x").unwrap();
        assert!(!scratch.remove_if_empty(&id), "a file left: kept");
        assert!(path.join("upload").exists());
        scratch.remove(&id).unwrap();

        // A link planted in its place goes as a link; its target stays.
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, &path).unwrap();
        assert!(scratch.remove_if_empty(&id));
        assert!(outside.exists() && fs::symlink_metadata(&path).is_err());
    }

    #[test]
    fn stores_sharing_a_root_get_directories_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let a = scratch(dir.path());
        let b = ScratchRoot::new(a.root().to_path_buf(), "file:/other");
        let id = SessionId::generate().unwrap();
        assert_ne!(a.path(&id), b.path(&id));
        assert_ne!(a.store_dir(), b.store_dir());
    }

    #[test]
    fn removal_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("precious"), "keep").unwrap();
        let scratch = scratch(dir.path());
        let id = SessionId::generate().unwrap();
        let path = scratch.ensure(&id).unwrap();
        std::os::unix::fs::symlink(&outside, path.join("link")).unwrap();
        scratch.remove(&id).unwrap();
        assert!(outside.join("precious").exists());

        // A link planted in place of the directory itself is removed as a
        // link and the directory made anew.
        let other = SessionId::generate().unwrap();
        scratch.create(&other).unwrap();
        fs::remove_dir(scratch.path(&other)).unwrap();
        std::os::unix::fs::symlink(&outside, scratch.path(&other)).unwrap();
        let made = scratch.ensure(&other).unwrap();
        assert!(fs::symlink_metadata(&made).unwrap().is_dir());
        scratch.remove(&other).unwrap();
        assert!(outside.join("precious").exists());
    }

    #[test]
    fn locked_modes_do_not_stop_removal_or_regenerate() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = scratch(dir.path());
        let id = SessionId::generate().unwrap();
        let path = scratch.create(&id).unwrap();
        fs::create_dir(path.join("sub")).unwrap();
        fs::write(path.join("sub/f"), "x").unwrap();
        fs::set_permissions(path.join("sub"), fs::Permissions::from_mode(0o000)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o500)).unwrap();
        let new = SessionId::generate().unwrap();
        let moved = scratch.rename(&id, &new).unwrap();
        scratch.remove(&new).unwrap();
        assert!(fs::symlink_metadata(&moved).is_err());
    }
}
