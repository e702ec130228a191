//! Anonymous shared memory for the status counters: mapped by the parent in
//! post_config, inherited by every child it forks, so each child's
//! increments are seen by all.

use std::io;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

pub struct SharedCounters {
    base: NonNull<AtomicU64>,
    len: usize,
}

// SAFETY: the mapping holds only atomics, which are safe to share between
// threads (and processes); the pointer is never reallocated.
unsafe impl Send for SharedCounters {}
// SAFETY: as above: all access goes through `&AtomicU64`.
unsafe impl Sync for SharedCounters {}

impl SharedCounters {
    pub fn new(len: usize) -> io::Result<SharedCounters> {
        let bytes = len * std::mem::size_of::<AtomicU64>();
        // SAFETY: a fresh anonymous shared mapping; no existing memory is
        // touched. The kernel zero-fills it, a valid AtomicU64 state.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p as *mut AtomicU64)
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(SharedCounters { base, len })
    }
}

impl Deref for SharedCounters {
    type Target = [AtomicU64];
    fn deref(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page-aligned, `len` atomics long, and lives
        // until Drop.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.len) }
    }
}

impl Drop for SharedCounters {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region `new` mapped; no reference into
        // it outlives `self`.
        unsafe {
            libc::munmap(
                self.base.as_ptr() as *mut libc::c_void,
                self.len * std::mem::size_of::<AtomicU64>(),
            )
        };
    }
}
