//! Scratch directories: one private directory per session below the
//! configured root, created 0700 by the serving child (so owned by `User`),
//! removed recursively without following symbolic links.

use crate::id::{SessionId, ID_TEXT_LEN};
use std::ffi::OsString;
use std::fs;
use std::io::{self, ErrorKind};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct ScratchRoot {
    root: PathBuf,
}

impl ScratchRoot {
    pub fn new(root: PathBuf) -> ScratchRoot {
        ScratchRoot { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of `id`. Ids are hex, so this never leaves the root.
    /// Concatenated rather than `join`ed: this runs on every request.
    pub fn path(&self, id: &SessionId) -> PathBuf {
        let root = self.root.as_os_str();
        let mut path = OsString::with_capacity(root.len() + 1 + ID_TEXT_LEN);
        path.push(root);
        if !root.as_bytes().ends_with(b"/") {
            path.push("/");
        }
        path.push(&*id.text());
        PathBuf::from(path)
    }

    /// Creates the directory if missing. Something else under that name (a
    /// file, or a symbolic link planted by a handler) is an error.
    pub fn ensure(&self, id: &SessionId) -> io::Result<PathBuf> {
        let path = self.path(id);
        // The usual case, a returning session: one lstat and done.
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_dir() => return Ok(path),
            Ok(_) => return Err(io::Error::new(ErrorKind::AlreadyExists, "not a directory")),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => Ok(path),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                if fs::symlink_metadata(&path)?.file_type().is_dir() {
                    Ok(path)
                } else {
                    Err(io::Error::new(ErrorKind::AlreadyExists, "not a directory"))
                }
            }
            Err(e) => Err(e),
        }
    }

    /// For a session created just now: `mkdir` straight away (one system
    /// call), falling back to `ensure`'s checks if the name is taken.
    pub fn create(&self, id: &SessionId) -> io::Result<PathBuf> {
        let path = self.path(id);
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => Ok(path),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => self.ensure(id),
            Err(e) => Err(e),
        }
    }

    /// Removes the directory and everything in it. Symbolic links inside are
    /// removed as links; their targets are never touched (std's
    /// `remove_dir_all` works with `openat`/`unlinkat` and never follows them).
    pub fn remove(&self, id: &SessionId) -> io::Result<()> {
        let path = self.path(id);
        let result = match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_dir() => fs::remove_dir_all(&path),
            Ok(_) => fs::remove_file(&path),
            Err(e) => Err(e),
        };
        match result {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Whether the session's directory holds anything (a handler left a
    /// file): such a new session is kept.
    pub fn has_entries(&self, id: &SessionId) -> bool {
        fs::read_dir(self.path(id)).is_ok_and(|mut entries| entries.next().is_some())
    }

    /// Moves a session's directory to a new id (on regenerate).
    pub fn rename(&self, from: &SessionId, to: &SessionId) -> io::Result<PathBuf> {
        let target = self.path(to);
        match fs::rename(self.path(from), &target) {
            Ok(()) => Ok(target),
            Err(e) if e.kind() == ErrorKind::NotFound => self.ensure(to),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn lifecycle_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = ScratchRoot::new(dir.path().to_path_buf());
        let id = SessionId::generate().unwrap();
        let path = scratch.create(&id).unwrap();
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
    fn removal_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("precious"), "keep").unwrap();
        let scratch = ScratchRoot::new(dir.path().join("scratch"));
        fs::create_dir(scratch.root()).unwrap();
        let id = SessionId::generate().unwrap();
        let path = scratch.ensure(&id).unwrap();
        std::os::unix::fs::symlink(&outside, path.join("link")).unwrap();
        scratch.remove(&id).unwrap();
        assert!(outside.join("precious").exists());

        // A link planted in place of the directory itself is not a directory.
        let other = SessionId::generate().unwrap();
        std::os::unix::fs::symlink(&outside, scratch.path(&other)).unwrap();
        assert!(scratch.ensure(&other).is_err());
        scratch.remove(&other).unwrap();
        assert!(outside.join("precious").exists());
    }
}
