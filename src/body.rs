//! Request bodies read before the session lock is taken: a slow or stalled
//! upload must not hold the lock while it trickles in (httpd's `Timeout`
//! is per read, so a body sent a byte a second can take minutes). The body
//! is read first into a `Spool` — memory up to `IN_MEMORY`, then an
//! unnamed temporary file — and replayed to the handler.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Bodies up to this size stay in memory; larger ones go to a file.
pub const IN_MEMORY: usize = 256 * 1024;

/// A request body, written once, then read back in order.
pub struct Spool {
    memory: Vec<u8>,
    file: Option<File>,
    len: u64,
    read: u64,
    /// Bytes read from the file but not yet handed out (SPECULATIVE reads
    /// and lines split across reads).
    pending: Vec<u8>,
}

impl Spool {
    pub fn new() -> Spool {
        Spool {
            memory: Vec::new(),
            file: None,
            len: 0,
            read: 0,
            pending: Vec::new(),
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Appends `bytes`; past `IN_MEMORY` the body moves to an unnamed file
    /// (O_TMPFILE, mode 0600) in `dir`, which no other process can open and
    /// which vanishes with its descriptor, whatever happens to the request.
    pub fn write(&mut self, bytes: &[u8], dir: &Path) -> io::Result<()> {
        if self.file.is_none() && self.memory.len() + bytes.len() > IN_MEMORY {
            let mut file = unnamed_file(dir)?;
            file.write_all(&self.memory)?;
            self.memory = Vec::new();
            self.file = Some(file);
        }
        match &mut self.file {
            Some(f) => f.write_all(bytes)?,
            None => self.memory.extend_from_slice(bytes),
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Whether every byte has been handed out.
    pub fn is_drained(&self) -> bool {
        self.read >= self.len
    }

    /// Up to `max` bytes of what is left (with `line`, stopping after the
    /// first newline); `consume` false leaves them to be read again.
    pub fn read(&mut self, max: usize, line: bool, consume: bool) -> io::Result<Vec<u8>> {
        let left = (self.len - self.read) as usize;
        let mut want = max.min(left);
        let mut out = match &mut self.file {
            None => {
                let start = self.read as usize;
                self.memory[start..start + want].to_vec()
            }
            Some(file) => {
                // `pending` holds the bytes right after `read`.
                while self.pending.len() < want {
                    let offset = self.read + self.pending.len() as u64;
                    file.seek(SeekFrom::Start(offset))?;
                    let mut chunk = vec![0u8; (want - self.pending.len()).min(64 * 1024)];
                    let n = file.read(&mut chunk)?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the spooled request body is shorter than written",
                        ));
                    }
                    self.pending.extend_from_slice(&chunk[..n]);
                }
                self.pending[..want].to_vec()
            }
        };
        if line {
            if let Some(nl) = out.iter().position(|&b| b == b'\n') {
                want = nl + 1;
                out.truncate(want);
            }
        }
        if consume {
            self.read += want as u64;
            if self.file.is_some() {
                self.pending.drain(..want);
            }
        }
        Ok(out)
    }
}

/// A read-write file in `dir` that has no name: O_TMPFILE where the file
/// system has it, else a fresh name removed at once.
fn unnamed_file(dir: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).mode(0o600);
    match options
        .clone()
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(dir)
    {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::EISDIR)
            ) =>
        {
            static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.join(format!(".upload-{}-{seq}", std::process::id()));
            let file = options
                .create_new(true)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(&path)?;
            std::fs::remove_file(&path)?;
            Ok(file)
        }
        other => other,
    }
}

impl Default for Spool {
    fn default() -> Self {
        Spool::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay(spool: &mut Spool, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while !spool.is_drained() {
            let peek = spool.read(step, false, false).unwrap();
            let got = spool.read(step, false, true).unwrap();
            assert_eq!(peek, got, "a speculative read sees what comes next");
            out.extend(got);
        }
        out
    }

    #[test]
    fn small_bodies_stay_in_memory_and_replay_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new();
        s.write(b"a=1&", dir.path()).unwrap();
        s.write(b"b=2", dir.path()).unwrap();
        assert!(s.file.is_none());
        assert_eq!(replay(&mut s, 3), b"a=1&b=2");
        assert!(s.read(10, false, true).unwrap().is_empty());
    }

    #[test]
    fn large_bodies_go_to_an_unnamed_file_and_replay_whole() {
        let dir = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..IN_MEMORY * 3).map(|i| (i % 251) as u8).collect();
        let mut s = Spool::new();
        for chunk in body.chunks(8000) {
            s.write(chunk, dir.path()).unwrap();
        }
        assert!(s.file.is_some());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the spool file has no name"
        );
        assert_eq!(s.len(), body.len() as u64);
        assert_eq!(replay(&mut s, 70_000), body);
    }

    #[test]
    fn lines_stop_after_their_newline() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new();
        s.write(b"one\ntwo\nrest", dir.path()).unwrap();
        assert_eq!(s.read(100, true, true).unwrap(), b"one\n");
        assert_eq!(s.read(100, true, true).unwrap(), b"two\n");
        assert_eq!(s.read(100, true, true).unwrap(), b"rest");
        assert!(s.is_drained());
    }
}
