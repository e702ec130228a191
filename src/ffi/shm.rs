//! Anonymous shared memory for the status counters: mapped by the parent in
//! post_config, inherited by every child it forks, so each child's
//! increments are seen by all. A mapping is made once per store and httpd
//! process and found again by name at every graceful or full restart (the
//! process pool outlives generations and the module's unload), so counters
//! survive restarts.

use super::pool::Pool;
use std::io;
use std::ops::Deref;
use std::sync::atomic::AtomicU64;

/// Counters in a mapping that lives until the httpd process exits.
pub struct SharedCounters {
    slots: &'static [AtomicU64],
}

impl SharedCounters {
    /// The mapping named `name` (made on first use) with `len` counters.
    /// The length is part of the name, so a module built with more
    /// counters never reads past an older, shorter mapping.
    pub fn persistent(
        process: Pool<'static>,
        name: &str,
        len: usize,
    ) -> io::Result<SharedCounters> {
        let key = format!("rsession:counters:{len}:{name}");
        let found = process.userdata_named(&key) as *const AtomicU64;
        let base = if found.is_null() {
            let base = map_anonymous(len)?;
            process.set_userdata_named(&key, base as *mut std::ffi::c_void);
            base
        } else {
            found
        };
        // SAFETY: `base` is a page-aligned shared mapping of `len` atomics
        // (the length is in its key) that is never unmapped, so the slice
        // is valid for the rest of the process.
        let slots = unsafe { std::slice::from_raw_parts(base, len) };
        Ok(SharedCounters { slots })
    }
}

fn map_anonymous(len: usize) -> io::Result<*const AtomicU64> {
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
    if p == libc::MAP_FAILED || p.is_null() {
        return Err(io::Error::last_os_error());
    }
    Ok(p as *const AtomicU64)
}

impl Deref for SharedCounters {
    type Target = [AtomicU64];
    fn deref(&self) -> &[AtomicU64] {
        self.slots
    }
}
