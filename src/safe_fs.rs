//! File-system steps on paths that a handler can change. The store and the
//! scratch root belong to `User`, so any CGI can plant a symbolic link, a
//! FIFO, a directory or a mode-000 tree in them. Everything here therefore:
//!
//! - works relative to directory descriptors opened with `O_NOFOLLOW`, so a
//!   link planted in a path is never followed (`openat`, `mkdirat`,
//!   `renameat`, `unlinkat`, `fstatat(AT_SYMLINK_NOFOLLOW)`);
//! - opens files with `O_NOFOLLOW | O_NONBLOCK` and checks with `fstat` that
//!   they are regular files, so a FIFO never blocks a thread;
//! - as root (the parent at startup), hands to `User` only what it has just
//!   created itself, through the descriptor it created (`fchown`), and
//!   refuses a link or a foreign directory where a configured root should be.
//!
//! Host-free: no httpd calls, so the unit tests below run it.

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, renameat2, OFlag, RenameFlags, AT_FDCWD};
use nix::sys::stat::{fchmod, fchmodat, fstat, fstatat, mkdirat, FchmodatFlags, FileStat, Mode};
use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Added to every open of a file in the store or scratch root (std adds
/// `O_CLOEXEC` itself): a planted link is not followed, a FIFO or device
/// does not block the open.
pub const HOSTILE_OPEN_FLAGS: i32 = libc::O_NOFOLLOW | libc::O_NONBLOCK;

/// Prefix of entries moved out of the way because they were not what the
/// module made there (kept for the operator to look at).
pub const ASIDE_PREFIX: &str = ".aside-";

/// Subtrees nested deeper than this are moved up before removal, so that
/// removing a tree holds a bounded number of descriptors.
const MAX_DEPTH: usize = 16;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// The error of an entry that is there but is not a regular file.
#[derive(Debug)]
struct NotRegular(&'static str);

impl std::fmt::Display for NotRegular {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, not a regular file", self.0)
    }
}

impl std::error::Error for NotRegular {}

fn not_regular(what: &'static str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, NotRegular(what))
}

/// True for the error `open_regular` returns when the entry exists but is
/// not a regular file (a link, FIFO, socket, device or directory).
pub fn is_not_regular(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<NotRegular>())
}

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Opens `path` as `options` say, plus `HOSTILE_OPEN_FLAGS`, and checks that
/// it is a regular file. Anything else yields an error for which
/// `is_not_regular` is true.
pub fn open_regular(path: &Path, options: &OpenOptions) -> io::Result<File> {
    open_regular_with_len(path, options).map(|(f, _)| f)
}

/// `open_regular`, also returning the file's length (from the same `fstat`).
pub fn open_regular_with_len(path: &Path, options: &OpenOptions) -> io::Result<(File, u64)> {
    open_regular_flagged(path, options, 0).map(|(f, meta)| (f, meta.len()))
}

/// `open_regular_with_len` for reading without updating the file's access
/// time (`O_NOATIME`, which only the file's owner may ask for: for anyone
/// else's file it opens as usual). A record's mtime is its expiry, in the
/// future, so under `relatime` every plain read would write the inode.
pub fn open_regular_noatime(path: &Path, options: &OpenOptions) -> io::Result<(File, u64)> {
    match open_regular_flagged(path, options, libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open_regular_flagged(path, options, 0),
        other => other,
    }
    .map(|(f, meta)| (f, meta.len()))
}

fn open_regular_flagged(
    path: &Path,
    options: &OpenOptions,
    extra: i32,
) -> io::Result<(File, fs::Metadata)> {
    let mut options = options.clone();
    options.custom_flags(HOSTILE_OPEN_FLAGS | extra);
    let file = match options.open(path) {
        Ok(f) => f,
        Err(e) => {
            return Err(match e.raw_os_error() {
                Some(libc::ELOOP) => not_regular("a symbolic link"),
                Some(libc::ENXIO) => not_regular("a FIFO or socket"),
                Some(libc::EISDIR) => not_regular("a directory"),
                _ => e,
            })
        }
    };
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok((file, meta));
    }
    Err(not_regular(if kind.is_dir() {
        "a directory"
    } else {
        "a FIFO, socket or device"
    }))
}

/// Reads a small regular file (at most `max` bytes) without following a
/// link or blocking on a FIFO.
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    read_at_most(open_regular(path, OpenOptions::new().read(true))?, max)
}

/// All of `file` if it holds at most `max` bytes, else InvalidData.
fn read_at_most(file: File, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(ErrorKind::InvalidData, "file is too large"));
    }
    Ok(bytes)
}

/// A configured file read by the parent at startup (a secret, a password,
/// a PEM file): links are followed, as operators link such files into
/// place, but what was opened is what is checked (a regular file, at most
/// `max` bytes) and returned with its mode bits, and a FIFO swapped in
/// never blocks the config check.
pub fn read_config_file(path: &Path, max: u64) -> io::Result<(Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular("a FIFO, socket, device or directory"));
    }
    if meta.len() > max {
        return Err(io::Error::new(ErrorKind::InvalidData, "file is too large"));
    }
    Ok((read_at_most(file, max)?, meta.permissions().mode() & 0o7777))
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK
}

/// Opens the directory `name` in `dir` without following a link:
/// `Ok(None)` when it does not exist; a link or a non-directory is
/// `ENOTDIR`/`ELOOP`.
pub fn open_dir_at(dir: impl AsFd, name: &OsStr) -> io::Result<Option<OwnedFd>> {
    match openat(dir, name, dir_flags(), Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(errno(e)),
    }
}

/// Opens a directory by path (a path the administrator configured; its
/// last component must not be a link).
pub fn open_dir(path: &Path) -> io::Result<Option<OwnedFd>> {
    open_dir_at(AT_FDCWD, path.as_os_str())
}

/// The names in a directory, `.` and `..` left out. Reads through a
/// description of its own, so listing never moves another reader.
pub fn list(dir: impl AsFd) -> io::Result<Vec<OsString>> {
    let mut d = nix::dir::Dir::openat(dir, ".", dir_flags(), Mode::empty()).map_err(errno)?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let entry = entry.map_err(errno)?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    }
    Ok(names)
}

/// How many entries `dir` holds, counting up to `cap` at most.
pub fn count_entries(dir: impl AsFd, cap: usize) -> io::Result<usize> {
    let mut d = nix::dir::Dir::openat(dir, ".", dir_flags(), Mode::empty()).map_err(errno)?;
    let mut n = 0;
    for entry in d.iter() {
        let entry = entry.map_err(errno)?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            n += 1;
            if n >= cap {
                break;
            }
        }
    }
    Ok(n)
}

/// `lstat` of `name` in `dir`: `Ok(None)` when it does not exist.
pub fn stat_at(dir: impl AsFd, name: &OsStr) -> io::Result<Option<FileStat>> {
    match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(errno(e)),
    }
}

pub fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub fn is_regular(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

/// What an entry is, for log lines.
pub fn describe(st: &FileStat) -> String {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFLNK => "a symbolic link".into(),
        libc::S_IFREG => "a regular file".into(),
        libc::S_IFIFO => "a FIFO".into(),
        libc::S_IFSOCK => "a socket".into(),
        libc::S_IFCHR | libc::S_IFBLK => "a device".into(),
        libc::S_IFDIR => format!("a directory owned by uid {}", st.st_uid),
        _ => "an unknown kind of file".into(),
    }
}

/// Renames `name` in `dir` to a fresh `.aside-NAME-SECONDS-PID-N` beside it
/// (the entry itself is never followed or opened) and returns the new name.
pub fn set_aside(dir: impl AsFd, name: &OsStr) -> io::Result<OsString> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dir = dir.as_fd();
    loop {
        let mut aside = OsString::from(ASIDE_PREFIX);
        aside.push(name);
        aside.push(format!(
            "-{secs}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        match move_dir(dir, name, dir, &aside) {
            Ok(()) => return Ok(aside),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Under an exclusive `flock` of the directory holding `path` (so that two
/// processes repairing at once do not move each other's fresh entry), sets
/// `path` aside unless it is, by now, what `keep` accepts. Returns the name
/// it was given, if it was moved.
pub fn set_aside_unless(path: &Path, keep: fn(&FileStat) -> bool) -> io::Result<Option<OsString>> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(ErrorKind::InvalidInput, "no parent"));
    };
    let Some(dir) = open_dir(parent)? else {
        return Ok(None);
    };
    let dir = File::from(dir);
    // Bounded: a handler can hold a flock on a directory it owns forever.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match dir.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    ErrorKind::WouldBlock,
                    "someone else keeps the directory locked",
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
    match stat_at(&dir, name)? {
        None => Ok(None),
        Some(st) if keep(&st) => Ok(None),
        Some(_) => set_aside(&dir, name).map(Some),
    }
}

/// Removes whatever `path` names, never following it: a file, link or FIFO
/// is unlinked, a directory removed with all it holds. One that cannot be
/// removed whole is set aside, so the name is free again (the error still
/// says what stayed).
pub fn remove_entry(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) if is_a_directory(&e) => remove_tree(path).inspect_err(|_| {
            let _ = set_aside_unless(path, |_| false);
        }),
        Err(e) => Err(e),
    }
}

/// What `unlink` answers for a directory (Linux says `EISDIR`, POSIX `EPERM`):
/// the entry is removed as a tree instead.
pub fn is_a_directory(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EISDIR) | Some(libc::EPERM))
}

/// A file several holders share, as `open_shared` found it.
pub struct Shared {
    pub file: File,
    pub len: u64,
    /// Its hard links: more than one means another name reaches the same
    /// file (planted with `ln`), so writing it writes that name too.
    pub links: u64,
}

/// Opens (creating, 0600, never truncating) a file that several holders
/// share, such as a lock file. Something else planted under its name (a
/// FIFO, a link, a directory) is set aside and the file made anew.
pub fn open_shared(path: &Path) -> io::Result<Shared> {
    let mut options = OpenOptions::new();
    options
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600);
    for _ in 0..3 {
        match open_regular_flagged(path, &options, 0) {
            Ok((file, meta)) => {
                return Ok(Shared {
                    file,
                    len: meta.len(),
                    links: meta.nlink(),
                })
            }
            Err(e) if is_not_regular(&e) => {
                set_aside_unless(path, is_regular)?;
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        ErrorKind::InvalidData,
        "something not a regular file keeps appearing under this name",
    ))
}

/// Creates `name` in `dir` (mode `mode`, exactly: the umask is undone on
/// the descriptor) without following a link; `Ok(None)` if it exists.
fn make_dir_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<Option<OwnedFd>> {
    match mkdirat(dir, name, Mode::from_bits_truncate(mode)) {
        Ok(()) => {}
        Err(Errno::EEXIST) => return Ok(None),
        Err(e) => return Err(errno(e)),
    }
    let Some(fd) = open_dir_at(dir, name)? else {
        return Ok(None);
    };
    let st = fstat(&fd).map_err(errno)?;
    // Only what this process owns is its own creation (a handler cannot
    // make a directory owned by us appear here in between... unless it
    // runs as us, and then it changes nothing a request could not).
    if st.st_uid == nix::unistd::geteuid().as_raw() && st.st_mode & 0o7777 != mode {
        fchmod(&fd, Mode::from_bits_truncate(mode)).map_err(errno)?;
    }
    Ok(Some(fd))
}

/// Who must own the configured roots: `User` when httpd starts as root,
/// else whoever runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    pub fn current() -> Owner {
        Owner {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }
}

/// The privileged setup of the parent: prepares configured roots and
/// checks the entries inside them, for `owner`.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    owner: Owner,
}

/// A configured root, ready: opened without following a link, owned by
/// the owner.
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
    owner: Owner,
}

/// Symbolic links followed in the parents of a root, at most (like the
/// kernel's own limit).
const MAX_LINKS: usize = 40;

impl Setup {
    pub fn new(owner: Owner) -> Setup {
        Setup { owner }
    }

    fn running_uid() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    /// Opens the directory `path` (absolute) for `owner`, creating what is
    /// missing: missing parents owned by the running user, mode 0755;
    /// the root itself mode 0700 and handed to the owner. The root must
    /// not be a link, and if it exists it must belong to the owner already
    /// (an earlier start made it so): what this never does is change the
    /// owner of a directory it did not create. A link among the parents is
    /// followed only when the running user or root owns it (`/var/run`
    /// on Debian), never one a handler could have made.
    pub fn root(&self, path: &Path) -> Result<Root, String> {
        let fail = |why: String| format!("{}: {why}", path.display());
        if !path.is_absolute() {
            return Err(fail("not an absolute path".into()));
        }
        let mut pending: Vec<OsString> = Vec::new();
        for c in path.components().rev() {
            match c {
                Component::Normal(n) => pending.push(n.to_os_string()),
                Component::ParentDir => pending.push("..".into()),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
        let Some(last) = pending.first().cloned() else {
            return Err(fail(
                "the file system root cannot be handed to the server's User".into(),
            ));
        };
        if last == ".." {
            return Err(fail("must not end in ..".into()));
        }
        // `pending` holds the components left to walk, last one first.
        let open_slash = || open_dir(Path::new("/")).ok().flatten();
        let mut dir = open_slash().ok_or_else(|| fail("cannot open /".into()))?;
        let mut walked = PathBuf::from("/");
        let mut links = 0;
        while let Some(name) = pending.pop() {
            let is_last = pending.is_empty();
            let here = walked.join(&name);
            match openat(&dir, name.as_os_str(), dir_flags(), Mode::empty()) {
                Ok(next) => {
                    if is_last {
                        return self.adopt(next, path, false);
                    }
                    dir = next;
                    walked = here;
                }
                Err(Errno::ENOENT) => {
                    let mode = if is_last { 0o700 } else { 0o755 };
                    match make_dir_at(dir.as_fd(), &name, mode) {
                        Ok(Some(made)) if is_last => return self.adopt(made, path, true),
                        Ok(Some(made)) => {
                            dir = made;
                            walked = here;
                        }
                        // Made by someone else meanwhile: look again.
                        Ok(None) => pending.push(name),
                        Err(e) => {
                            return Err(fail(format!("cannot create {}: {e}", here.display())))
                        }
                    }
                }
                Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                    let st = stat_at(&dir, &name)
                        .ok()
                        .flatten()
                        .ok_or_else(|| fail(format!("{} vanished", here.display())))?;
                    let is_link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
                    if !is_link {
                        return Err(fail(format!("{} is not a directory", here.display())));
                    }
                    if is_last {
                        return Err(fail(
                            "is a symbolic link; name the real directory instead".into(),
                        ));
                    }
                    let trusted = st.st_uid == 0 || st.st_uid == Self::running_uid();
                    links += 1;
                    if !trusted || links > MAX_LINKS {
                        return Err(fail(format!(
                            "{} is a symbolic link owned by uid {}; refusing to follow it",
                            here.display(),
                            st.st_uid
                        )));
                    }
                    let target = nix::fcntl::readlinkat(&dir, name.as_os_str())
                        .map_err(|e| fail(format!("cannot read link {}: {e}", here.display())))?;
                    let target = PathBuf::from(target);
                    for c in target.components().rev() {
                        match c {
                            Component::Normal(n) => pending.push(n.to_os_string()),
                            Component::ParentDir => pending.push("..".into()),
                            _ => {}
                        }
                    }
                    if target.is_absolute() {
                        dir = open_slash().ok_or_else(|| fail("cannot open /".into()))?;
                        walked = PathBuf::from("/");
                    }
                }
                Err(e) => return Err(fail(format!("cannot open {}: {e}", here.display()))),
            }
        }
        Err(fail("cannot be resolved".into()))
    }

    /// Takes the opened root: hands it to the owner if this process just
    /// made it, else accepts it only if the owner has it already.
    fn adopt(&self, fd: OwnedFd, path: &Path, created: bool) -> Result<Root, String> {
        let fail = |why: String| format!("{}: {why}", path.display());
        let st = fstat(&fd).map_err(|e| fail(format!("cannot stat: {e}")))?;
        let made_here = created && st.st_uid == Self::running_uid();
        if made_here && st.st_uid != self.owner.uid {
            fchown(
                &fd,
                Some(Uid::from_raw(self.owner.uid)),
                Some(Gid::from_raw(self.owner.gid)),
            )
            .map_err(|e| fail(format!("cannot hand it to the server's User: {e}")))?;
        } else if st.st_uid != self.owner.uid {
            return Err(fail(format!(
                "exists and belongs to uid {}, not to the server's User (uid {}); refusing to \
                 take it over: name a directory of its own, or give this one to User",
                st.st_uid, self.owner.uid
            )));
        }
        Ok(Root {
            fd,
            path: path.to_path_buf(),
            owner: self.owner,
        })
    }
}

impl Root {
    /// With `RSessionScratchGroup`: lets the group through the root
    /// (search only: mode 0710, group `gid`), then makes (or takes, if
    /// already the owner's) the directory `name` inside it and, inside
    /// that, each of `inner`: owner and `gid`, setgid, mode 2710 (members
    /// pass through to their session's directory; they cannot list
    /// others'), with a default ACL of owner and group `rwx` so that what
    /// children make below is 2770 whatever their `umask`. Anything not a
    /// directory of the owner there is set aside (never followed) and made
    /// anew. Returns lines for the log.
    pub fn shared_subtree(
        &self,
        name: &str,
        gid: u32,
        inner: &[String],
    ) -> Result<Vec<String>, String> {
        let fail = |why: String| format!("{}: {why}", self.path.display());
        fchown(&self.fd, None, Some(Gid::from_raw(gid))).map_err(|e| {
            fail(format!(
                "cannot give it to RSessionScratchGroup (gid {gid}): {e}; start httpd as root, \
                 or put its user in the group"
            ))
        })?;
        fchmod(&self.fd, Mode::from_bits_truncate(0o710))
            .map_err(|e| fail(format!("cannot set mode 0710: {e}")))?;
        let mut notes = Vec::new();
        let top = self.group_dir_at(
            self.fd.as_fd(),
            &self.path,
            OsStr::new(name),
            gid,
            &mut notes,
        )?;
        let shown = self.path.join(name);
        for sub in inner {
            self.group_dir_at(top.as_fd(), &shown, OsStr::new(sub), gid, &mut notes)?;
        }
        Ok(notes)
    }

    fn group_dir_at(
        &self,
        parent: BorrowedFd<'_>,
        parent_path: &Path,
        name: &OsStr,
        gid: u32,
        notes: &mut Vec<String>,
    ) -> Result<OwnedFd, String> {
        let shown = parent_path.join(name);
        let fail = |why: String| format!("{}: {why}", shown.display());
        for _ in 0..3 {
            let st = stat_at(parent, name).map_err(|e| fail(format!("cannot check: {e}")))?;
            let (fd, created) = match st {
                None => match make_dir_at(parent, name, GROUP_PASS_MODE) {
                    Ok(Some(fd)) => (fd, true),
                    Ok(None) => continue,
                    Err(e) => return Err(fail(format!("cannot create: {e}"))),
                },
                Some(st) if is_dir(&st) && st.st_uid == self.owner.uid => {
                    match open_dir_at(parent, name) {
                        Ok(Some(fd)) => (fd, false),
                        Ok(None) => continue,
                        Err(e) => return Err(fail(format!("cannot open: {e}"))),
                    }
                }
                Some(st) => {
                    let aside = set_aside(parent, name).map_err(|e| {
                        fail(format!("is {}; cannot set it aside: {e}", describe(&st)))
                    })?;
                    notes.push(format!(
                        "{} was {}, not a directory of the server's User; set aside as {} \
                         (not followed) and made anew",
                        shown.display(),
                        describe(&st),
                        parent_path.join(aside).display()
                    ));
                    continue;
                }
            };
            // What was opened is what gets changed: it must be this
            // process's fresh directory or one of User's, on the parent's
            // file system (a directory swapped in after the check — a
            // victim's, moved here by a CGI — is left alone and looked at
            // again).
            let opened = fstat(&fd).map_err(|e| fail(format!("cannot stat: {e}")))?;
            let parent_dev = fstat(parent)
                .map_err(|e| fail(format!("cannot stat: {e}")))?
                .st_dev;
            let made_here = created && opened.st_uid == Setup::running_uid();
            let ours = opened.st_uid == self.owner.uid || made_here;
            if !is_dir(&opened) || !ours || opened.st_dev != parent_dev {
                continue;
            }
            if made_here && opened.st_uid != self.owner.uid {
                fchown(&fd, Some(Uid::from_raw(self.owner.uid)), None)
                    .map_err(|e| fail(format!("cannot hand it to User: {e}")))?;
            }
            // The group and the setgid bit (the order matters: a change of
            // group clears setgid).
            fchown(&fd, None, Some(Gid::from_raw(gid))).map_err(|e| {
                fail(format!(
                    "cannot give it to RSessionScratchGroup (gid {gid}): {e}; start httpd as \
                     root, or put its user in the group"
                ))
            })?;
            fchmod(&fd, Mode::from_bits_truncate(GROUP_PASS_MODE))
                .map_err(|e| fail(format!("cannot set mode 2710: {e}")))?;
            // Required: without it directories made below lose the
            // group's write bit to umask, and a chmod by User (not in the
            // group) to give it back would drop their setgid bit, which
            // passes the group (the reaper's mark) further down.
            set_default_acl(&fd).map_err(|e| {
                fail(format!(
                    "cannot set a default ACL ({e}): RSessionScratchGroup needs a file system \
                     with POSIX ACLs for the scratch root"
                ))
            })?;
            return Ok(fd);
        }
        Err(fail("something keeps appearing under this name".into()))
    }

    /// Checks the entries `names` inside the root, where handlers can
    /// write: a directory the owner owns stays; anything else (a link, a
    /// file, a FIFO, a directory of another owner) is set aside, never
    /// followed or opened. Missing ones are left for the children, which
    /// create them as `User` when they first need them, so nothing here
    /// creates or hands over anything inside the root. Returns one line per
    /// entry set aside (or that could not be), for the log.
    pub fn check_subdirs(&self, names: impl IntoIterator<Item = String>) -> Vec<String> {
        let mut notes = Vec::new();
        for name in names {
            let name = OsString::from(name);
            let shown = self.path.join(&name);
            match stat_at(&self.fd, &name) {
                Ok(None) => {}
                Ok(Some(st)) if is_dir(&st) && st.st_uid == self.owner.uid => {}
                Ok(Some(st)) => match set_aside(&self.fd, &name) {
                    Ok(aside) => notes.push(format!(
                        "{} was {}, not a directory of the server's User; set aside as {} \
                         (not followed) and made anew",
                        shown.display(),
                        describe(&st),
                        self.path.join(aside).display()
                    )),
                    Err(e) => notes.push(format!(
                        "{} is {}; cannot set it aside: {e}",
                        shown.display(),
                        describe(&st)
                    )),
                },
                Err(e) => notes.push(format!("cannot check {}: {e}", shown.display())),
            }
        }
        notes
    }
}

/// Opens `name` in `parent` to remove what is inside: restores the owner's
/// permissions it needs (read, write, search) on a directory it owns, never
/// following a link. `Ok(None)`: gone, or it was not a directory after all
/// (then it was unlinked).
fn open_for_removal(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<OwnedFd>> {
    open_for_removal_within(parent, name, None)
}

/// Which directories a removal may enter: those of a scratch tree shared
/// with `RSessionScratchGroup` carry its mark, the group (which every
/// directory made there inherits from the setgid directories above, and
/// which a `chmod` leaves) on the tree's own file system (`rename` cannot
/// bring a directory from another one). A directory without it was made
/// elsewhere and moved in (a victim's, brought by someone who could move
/// but not empty it): it is neither entered nor changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub gid: u32,
    pub dev: u64,
}

impl Mark {
    pub fn on(&self, st: &FileStat) -> bool {
        is_dir(st) && st.st_gid == self.gid && st.st_dev == self.dev
    }
}

fn not_marked() -> io::Error {
    io::Error::new(
        ErrorKind::PermissionDenied,
        "a directory not made in the shared scratch tree (not the group's); left alone",
    )
}

/// `open_for_removal`, entering only directories with `mark` when given.
fn open_for_removal_within(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    mark: Option<Mark>,
) -> io::Result<Option<OwnedFd>> {
    if let Some(mark) = mark {
        match stat_at(parent, name)? {
            None => return Ok(None),
            Some(st) if !is_dir(&st) => return unlink_file(parent, name).map(|()| None),
            Some(st) if !mark.on(&st) => return Err(not_marked()),
            Some(_) => {}
        }
    }
    let fd = match openat(parent, name, dir_flags(), Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ENOTDIR) | Err(Errno::ELOOP) => return unlink_file(parent, name).map(|()| None),
        Err(Errno::EACCES) => {
            fchmodat(parent, name, Mode::S_IRWXU, FchmodatFlags::NoFollowSymlink).map_err(errno)?;
            match openat(parent, name, dir_flags(), Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => return Ok(None),
                Err(e) => return Err(errno(e)),
            }
        }
        Err(e) => return Err(errno(e)),
    };
    let st = fstat(&fd).map_err(errno)?;
    // Swapped in between the check and the open: not entered either.
    if mark.is_some_and(|m| !m.on(&st)) {
        return Err(not_marked());
    }
    if st.st_mode & 0o700 != 0o700 {
        // Fails on a directory of another owner; what then stays is
        // reported by the caller.
        let _ = fchmod(&fd, Mode::from_bits_truncate((st.st_mode & 0o7777) | 0o700));
    }
    Ok(Some(fd))
}

/// Mode of the directories the parent makes for `RSessionScratchGroup`
/// (and children make again): the group passes through, setgid so that
/// what is made below is the group's.
pub const GROUP_PASS_MODE: u32 = 0o2710;

/// Sets on the directory `fd` the default ACL `user::rwx group::rwx
/// other::---`: with a default ACL the kernel ignores `umask` for what is
/// made inside, so a child's `mkdir(2770)` keeps the group's write bit
/// (and the setgid bit it inherits) without a `chmod`, which the kernel
/// would answer by dropping setgid for a `User` outside the group. The
/// value is the kernel's `posix_acl_xattr` layout: a version word, then
/// (tag, permissions, id) entries in tag order.
fn set_default_acl(fd: &OwnedFd) -> io::Result<()> {
    const VERSION: u32 = 2;
    const USER_OBJ: u16 = 0x01;
    const GROUP_OBJ: u16 = 0x04;
    const OTHER: u16 = 0x20;
    const UNDEFINED_ID: u32 = u32::MAX;
    let mut value = Vec::with_capacity(28);
    value.extend_from_slice(&VERSION.to_le_bytes());
    for (tag, perm) in [(USER_OBJ, 7u16), (GROUP_OBJ, 7), (OTHER, 0)] {
        value.extend_from_slice(&tag.to_le_bytes());
        value.extend_from_slice(&perm.to_le_bytes());
        value.extend_from_slice(&UNDEFINED_ID.to_le_bytes());
    }
    rustix::fs::fsetxattr(
        fd,
        "system.posix_acl_default",
        &value,
        rustix::fs::XattrFlags::empty(),
    )
    .map_err(io::Error::from)
}

/// Moves the directory (or anything) `name` in `from` to `to_name` in
/// `to`, never over an existing entry (`EEXIST`; on file systems without
/// renameat2's flags a plain rename, for names that are fresh anyway).
pub fn move_dir(
    from: BorrowedFd<'_>,
    name: &OsStr,
    to: BorrowedFd<'_>,
    to_name: &OsStr,
) -> io::Result<()> {
    match renameat2(from, name, to, to_name, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) | Err(Errno::ENOSYS) => renameat(from, name, to, to_name).map_err(errno),
        Err(e) => Err(errno(e)),
    }
}

/// Unlinks `name` in `dir` unless it is a directory (then `EISDIR`);
/// a missing one is fine.
pub fn unlink_file(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(errno(e)),
    }
}

/// One directory being emptied.
struct Level {
    fd: OwnedFd,
    name: OsString,
    pending: Vec<OsString>,
    relisted: u8,
}

/// Removes `name` in `parent` and, if it is a directory, everything in it,
/// never following a symbolic link (links are removed as links) and
/// restoring on directories it owns the permissions removal needs, so a
/// handler's `chmod 000` cannot keep a tree alive. Goes on past entries it
/// cannot remove; the error names the first of them.
pub fn remove_tree_at(parent: impl AsFd, name: &OsStr) -> io::Result<()> {
    remove_tree_at_until(parent, name, &AtomicBool::new(false))
}

/// `remove_tree_at`, giving up (`Interrupted`) soon after `stop` is set:
/// a handler's million files must not hold up a graceful stop.
pub fn remove_tree_at_until(parent: impl AsFd, name: &OsStr, stop: &AtomicBool) -> io::Result<()> {
    remove_tree_within(parent.as_fd(), name, stop, None)
}

/// `remove_tree_at_until` that enters (and removes) only directories with
/// `mark`; what lacks it stays, named in the error.
pub fn remove_marked_tree_at(
    parent: impl AsFd,
    name: &OsStr,
    mark: Mark,
    stop: &AtomicBool,
) -> io::Result<()> {
    remove_tree_within(parent.as_fd(), name, stop, Some(mark))
}

fn remove_tree_within(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    stop: &AtomicBool,
    mark: Option<Mark>,
) -> io::Result<()> {
    if let Some(mark) = mark {
        match stat_at(parent, name)? {
            None => return Ok(()),
            Some(st) if is_dir(&st) && !mark.on(&st) => return Err(not_marked()),
            Some(_) => {}
        }
    }
    // The usual case, an empty directory, in one call; `rmdir` never
    // follows a link (a link or file is ENOTDIR).
    match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::ENOTDIR) => match unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => return Ok(()),
            // Replaced by a directory meanwhile: go on as for one.
            Err(Errno::EISDIR) | Err(Errno::EPERM) => {}
            Err(e) => return Err(errno(e)),
        },
        Err(Errno::ENOTEMPTY)
        | Err(Errno::EEXIST)
        | Err(Errno::EPERM)
        | Err(Errno::EACCES)
        | Err(Errno::EBUSY) => {}
        Err(e) => return Err(errno(e)),
    }
    let Some(top) = open_for_removal_within(parent, name, mark)? else {
        return Ok(());
    };
    let mut first_failure: Option<io::Error> = None;
    let mut fail = |path: &[OsString], e: io::Error| {
        if first_failure.is_none() {
            let shown: PathBuf = path.iter().collect();
            first_failure = Some(io::Error::new(
                e.kind(),
                format!("cannot remove {}: {e}", shown.display()),
            ));
        }
    };
    let pending = list(&top)?;
    let mut stack = vec![Level {
        fd: top,
        name: name.to_os_string(),
        pending,
        relisted: 0,
    }];
    // The path of `entry` below the top, for the error.
    let path_of = |stack: &[Level], entry: &OsStr| -> Vec<OsString> {
        stack
            .iter()
            .map(|l| l.name.clone())
            .chain([entry.to_os_string()])
            .collect()
    };
    let mut moved = 0u64;
    while let Some(depth) = std::num::NonZeroUsize::new(stack.len()) {
        if stop.load(Ordering::Relaxed) {
            return Err(io::Error::new(ErrorKind::Interrupted, "stopped"));
        }
        let depth = depth.get();
        if let Some(entry) = stack[depth - 1].pending.pop() {
            let here = stack[depth - 1].fd.as_fd();
            match unlinkat(here, entry.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => continue,
                Err(Errno::EISDIR) | Err(Errno::EPERM) => {}
                Err(e) => {
                    fail(&path_of(&stack, &entry), errno(e));
                    continue;
                }
            }
            let child = match open_for_removal_within(here, &entry, mark) {
                Ok(Some(fd)) => fd,
                Ok(None) => continue,
                Err(e) => {
                    fail(&path_of(&stack, &entry), e);
                    continue;
                }
            };
            if depth >= MAX_DEPTH {
                // Too deep: move the subtree up into the top directory (which
                // goes anyway) and take it from there.
                drop(child);
                let up = OsString::from(format!(".deep-{}-{moved}", std::process::id()));
                moved += 1;
                match renameat2(
                    here,
                    entry.as_os_str(),
                    stack[0].fd.as_fd(),
                    up.as_os_str(),
                    RenameFlags::RENAME_NOREPLACE,
                ) {
                    Ok(()) => stack[0].pending.push(up),
                    Err(e) => fail(&path_of(&stack, &entry), errno(e)),
                }
                continue;
            }
            match list(&child) {
                Ok(pending) => stack.push(Level {
                    fd: child,
                    name: entry,
                    pending,
                    relisted: 0,
                }),
                Err(e) => fail(&path_of(&stack, &entry), e),
            }
            continue;
        }
        // Everything listed is handled; look once or twice more for
        // entries made meanwhile (or left by a failure), then go.
        let level = &mut stack[depth - 1];
        if level.relisted < 2 {
            level.relisted += 1;
            if let Ok(again) = list(&level.fd) {
                if !again.is_empty() {
                    level.pending = again;
                    continue;
                }
            }
        }
        let Some(done) = stack.pop() else { break };
        let holder = stack.last().map_or(parent, |l| l.fd.as_fd());
        match unlinkat(holder, done.name.as_os_str(), UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => fail(&path_of(&stack, &done.name), errno(e)),
        }
    }
    match first_failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Gives the owner back read, write and search permission on the
/// directory `path` (never following a link), so that it can be moved or
/// emptied.
pub fn restore_owner_access(path: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(ErrorKind::InvalidInput, "no parent"));
    };
    let Some(dir) = open_dir(parent)? else {
        return Ok(());
    };
    let Some(fd) = open_for_removal(dir.as_fd(), name)? else {
        return Ok(());
    };
    drop(fd);
    Ok(())
}

/// Opens the directory `name` in `dir` for the sweeper: a link or file
/// planted there is unlinked (`Ok(None)`: no directory now), a directory
/// made unreadable by a handler gets its owner's access back.
pub fn open_dir_repairing(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<OwnedFd>> {
    match open_dir_at(dir, name) {
        Ok(found) => Ok(found),
        Err(first) => match stat_at(dir, name)? {
            None => Ok(None),
            Some(st) if !is_dir(&st) => unlink_file(dir, name).map(|()| None),
            Some(_) => match open_for_removal(dir, name) {
                Ok(found) => Ok(found),
                Err(_) => Err(first),
            },
        },
    }
}

/// `remove_tree_at` for a path: its parent is opened by path (the caller
/// vouches for it), the last component is never followed.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(ErrorKind::InvalidInput, "no parent"));
    };
    match open_dir(parent)? {
        Some(dir) => remove_tree_at(&dir, name),
        None => Ok(()),
    }
}

/// A short, stable name for `text` (12 hex characters of its SHA-256).
pub fn tag(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn me() -> Owner {
        Owner::current()
    }

    #[test]
    fn reading_a_record_leaves_its_access_time() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record");
        fs::write(&path, "{}").unwrap();
        // As records are: accessed long ago, "modified" (expiring) later.
        let now = std::time::SystemTime::now();
        let f = File::options().write(true).open(&path).unwrap();
        f.set_times(
            fs::FileTimes::new()
                .set_accessed(now - std::time::Duration::from_secs(86_400))
                .set_modified(now + std::time::Duration::from_secs(3_600)),
        )
        .unwrap();
        let before = fs::metadata(&path).unwrap().atime();
        let (mut file, len) = open_regular_noatime(&path, OpenOptions::new().read(true)).unwrap();
        assert_eq!(len, 2);
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().atime(),
            before,
            "no inode write per read"
        );
    }

    #[test]
    fn roots_are_made_with_their_missing_parents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/store");
        let root = Setup::new(me()).root(&path).unwrap();
        assert_eq!(root.path, path);
        let parent = fs::metadata(dir.path().join("a/b")).unwrap();
        assert_eq!(parent.permissions().mode() & 0o7777, 0o755);
        let made = fs::metadata(&path).unwrap();
        assert_eq!(made.permissions().mode() & 0o7777, 0o700);
        assert_eq!(made.uid(), me().uid);
        // Again: an existing root of the owner is fine.
        Setup::new(me()).root(&path).unwrap();
    }

    #[test]
    fn a_link_or_a_foreign_directory_is_refused_as_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = Setup::new(me()).root(&link).err().unwrap();
        assert!(
            err.contains("symbolic link") && err.contains("link"),
            "{err}"
        );
        // Owned by someone else than the owner: refused, never chowned.
        let other = Owner {
            uid: me().uid + 1,
            gid: me().gid,
        };
        let err = Setup::new(other).root(&real).err().unwrap();
        assert!(err.contains("belongs to uid"), "{err}");
        assert!(Setup::new(me()).root(Path::new("/")).is_err());
        let file = dir.path().join("file");
        fs::write(&file, "x").unwrap();
        assert!(Setup::new(me()).root(&file.join("below")).is_err());
    }

    #[test]
    fn links_among_the_parents_are_followed_when_trusted() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("run")).unwrap();
        std::os::unix::fs::symlink("run", dir.path().join("var-run")).unwrap();
        let root = Setup::new(me())
            .root(&dir.path().join("var-run/app/store"))
            .unwrap();
        assert!(root.path.ends_with("var-run/app/store"));
        assert!(dir.path().join("run/app/store").is_dir());
    }

    #[test]
    fn planted_entries_inside_a_root_are_set_aside_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let root_path = dir.path().join("store");
        let root = Setup::new(me()).root(&root_path).unwrap();
        std::os::unix::fs::symlink(&outside, root_path.join("00")).unwrap();
        fs::write(root_path.join("01"), "x").unwrap();
        nix::unistd::mkfifo(&root_path.join("02"), Mode::S_IRWXU).unwrap();
        fs::create_dir(root_path.join("03")).unwrap();
        let notes = root.check_subdirs(["00", "01", "02", "03", "04"].map(String::from));
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes[0].contains("symbolic link"), "{notes:?}");
        for n in ["00", "01", "02"] {
            assert!(root_path.join(n).symlink_metadata().is_err(), "{n} moved");
        }
        assert!(root_path.join("03").is_dir(), "a good shard stays");
        let asides = fs::read_dir(&root_path)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(ASIDE_PREFIX))
            .count();
        assert_eq!(asides, 3);
        assert!(outside.is_dir());
    }

    #[test]
    fn regular_files_only_and_never_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::S_IRWXU).unwrap();
        let read = OpenOptions::new().read(true).clone();
        let e = open_regular(&fifo, &read).unwrap_err();
        assert!(is_not_regular(&e), "{e}");
        let e = read_regular(&fifo, 100).unwrap_err();
        assert!(is_not_regular(&e));
        let link = dir.path().join("link");
        fs::write(dir.path().join("target"), "secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("target"), &link).unwrap();
        assert!(is_not_regular(&open_regular(&link, &read).unwrap_err()));
        assert!(is_not_regular(
            &open_regular(dir.path(), &read).unwrap_err()
        ));
        assert!(!is_not_regular(
            &open_regular(&dir.path().join("none"), &read).unwrap_err()
        ));
        assert_eq!(
            read_regular(&dir.path().join("target"), 100).unwrap(),
            b"secret"
        );
        assert!(read_regular(&dir.path().join("target"), 3).is_err());
    }

    #[test]
    fn shared_files_replace_what_was_planted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".locks");
        nix::unistd::mkfifo(&path, Mode::S_IRWXU).unwrap();
        let asides = || {
            fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(".aside-.locks-")
                })
                .count()
        };
        let shared = open_shared(&path).unwrap();
        assert!(shared.file.metadata().unwrap().is_file());
        assert_eq!(asides(), 1, "the FIFO was set aside");
        open_shared(&path).unwrap();
        assert_eq!(asides(), 1, "a good file is kept");
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        let shared = open_shared(&path).unwrap();
        assert!(shared.file.metadata().unwrap().is_file());
    }

    /// Runs `f` in a thread acting, for the file system, as an unprivileged
    /// user (root overrides every mode, which would prove nothing), in a
    /// temporary directory that user owns.
    fn unprivileged(f: impl FnOnce(&Path) + Send) {
        let dir = tempfile::tempdir().unwrap();
        let nobody = 65534;
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(dir.path(), Some(nobody), Some(nobody)).unwrap();
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                if nix::unistd::geteuid().is_root() {
                    nix::unistd::setfsgid(Gid::from_raw(nobody));
                    nix::unistd::setfsuid(Uid::from_raw(nobody));
                }
                f(dir.path())
            })
            .join()
            .unwrap()
        });
    }

    #[test]
    fn trees_with_locked_modes_and_links_are_removed_whole() {
        unprivileged(trees_with_locked_modes);
    }

    #[test]
    fn what_stays_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("t");
        fs::create_dir_all(top.join("theirs")).unwrap();
        fs::write(top.join("theirs/f"), "x").unwrap();
        fs::write(top.join("mine"), "x").unwrap();
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
            std::os::unix::fs::chown(&top, Some(65534), Some(65534)).unwrap();
            std::os::unix::fs::chown(top.join("mine"), Some(65534), Some(65534)).unwrap();
        } else {
            fs::set_permissions(top.join("theirs"), fs::Permissions::from_mode(0o500)).unwrap();
        }
        let top2 = top.clone();
        std::thread::scope(|s| {
            s.spawn(move || {
                if nix::unistd::geteuid().is_root() {
                    nix::unistd::setfsgid(Gid::from_raw(65534));
                    nix::unistd::setfsuid(Uid::from_raw(65534));
                }
                let e = remove_tree(&top2).unwrap_err();
                assert!(e.to_string().contains("cannot remove t/theirs/f"), "{e}");
            });
        });
        assert!(!top.join("mine").exists(), "the rest went");
    }

    fn trees_with_locked_modes(dir: &Path) {
        let outside = dir.join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        let top = dir.join("session");
        fs::create_dir_all(top.join("sub/deeper")).unwrap();
        fs::write(top.join("sub/f"), "x").unwrap();
        fs::write(top.join("sub/deeper/g"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, top.join("sub/escape")).unwrap();
        nix::unistd::mkfifo(&top.join("fifo"), Mode::S_IRWXU).unwrap();
        fs::create_dir(top.join("wx")).unwrap();
        fs::write(top.join("wx/h"), "x").unwrap();
        fs::set_permissions(top.join("sub/deeper"), fs::Permissions::from_mode(0o000)).unwrap();
        fs::set_permissions(top.join("sub"), fs::Permissions::from_mode(0o000)).unwrap();
        fs::set_permissions(top.join("wx"), fs::Permissions::from_mode(0o300)).unwrap();
        remove_tree(&top).unwrap();
        assert!(top.symlink_metadata().is_err());
        assert!(outside.join("keep").exists());
        remove_tree(&top).unwrap();
        // The top itself at mode 000.
        fs::create_dir_all(top.join("x")).unwrap();
        fs::set_permissions(&top, fs::Permissions::from_mode(0o000)).unwrap();
        remove_tree(&top).unwrap();
        assert!(top.symlink_metadata().is_err());
    }

    #[test]
    fn deep_trees_are_removed_with_few_descriptors() {
        unprivileged(deep_trees);
    }

    fn deep_trees(dir: &Path) {
        let top = dir.join("deep");
        let mut p = top.clone();
        for _ in 0..200 {
            p.push("d");
        }
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("leaf"), "x").unwrap();
        remove_tree(&top).unwrap();
        assert!(top.symlink_metadata().is_err());
    }

    #[test]
    fn tags_are_short_and_stable() {
        assert_eq!(tag("file:/a"), tag("file:/a"));
        assert_ne!(tag("file:/a"), tag("file:/b"));
        assert_eq!(tag("x").len(), 12);
    }
}
