//! Brigades and buckets, through the shim's wrappers of APR's macros.

use super::sys;
use std::marker::PhantomData;
use std::ptr::NonNull;

/// What a bucket is, as far as our filters care.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Bytes already in memory: reading costs nothing.
    Memory,
    /// A file, pipe, socket...: never read by our filters.
    OtherData,
    Eos,
    Flush,
    OtherMeta,
}

/// One bucket of a brigade; valid until deleted from it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bucket(NonNull<sys::apr_bucket>);

/// A brigade passed to a filter, live for `'b`.
pub struct Brigade<'b> {
    raw: NonNull<sys::apr_bucket_brigade>,
    _life: PhantomData<&'b sys::apr_bucket_brigade>,
}

impl<'b> Brigade<'b> {
    /// # Safety
    /// `raw` must be a live brigade that no one else changes for `'b`.
    pub unsafe fn from_raw(raw: *mut sys::apr_bucket_brigade) -> Option<Brigade<'b>> {
        NonNull::new(raw).map(|raw| Brigade {
            raw,
            _life: PhantomData,
        })
    }

    pub fn as_ptr(&self) -> *mut sys::apr_bucket_brigade {
        self.raw.as_ptr()
    }

    pub fn first(&self) -> Option<Bucket> {
        // SAFETY: the brigade is live (from_raw's contract).
        NonNull::new(unsafe { sys::rsession_bucket_first(self.as_ptr()) }).map(Bucket)
    }

    pub fn next(&self, b: Bucket) -> Option<Bucket> {
        // SAFETY: `b` is a live bucket of this brigade.
        NonNull::new(unsafe { sys::rsession_bucket_next(self.as_ptr(), b.0.as_ptr()) }).map(Bucket)
    }

    /// Whether an end-of-stream bucket is among the brigade's buckets.
    pub fn has_eos(&self) -> bool {
        std::iter::successors(self.first(), |&b| self.next(b)).any(|b| self.kind(b) == Kind::Eos)
    }

    pub fn kind(&self, b: Bucket) -> Kind {
        // SAFETY: `b` is a live bucket; the call only reads its type.
        match unsafe { sys::rsession_bucket_kind(b.0.as_ptr()) } as u32 {
            sys::rsession_bucket_kind_e_RSESSION_BUCKET_MEMORY => Kind::Memory,
            sys::rsession_bucket_kind_e_RSESSION_BUCKET_EOS => Kind::Eos,
            sys::rsession_bucket_kind_e_RSESSION_BUCKET_FLUSH => Kind::Flush,
            sys::rsession_bucket_kind_e_RSESSION_BUCKET_OTHER_META => Kind::OtherMeta,
            _ => Kind::OtherData,
        }
    }

    /// The bytes of a memory bucket (`None` for other kinds or on error).
    /// They stay valid until the bucket is deleted.
    pub fn bytes(&self, b: Bucket) -> Option<&'b [u8]> {
        if self.kind(b) != Kind::Memory {
            return None;
        }
        let (mut p, mut n): (*const std::ffi::c_char, sys::apr_size_t) = (std::ptr::null(), 0);
        // SAFETY: `b` is a live memory bucket, whose read never blocks nor
        // changes the brigade; `p`/`n` are valid out-parameters.
        let rv = unsafe { sys::rsession_bucket_read(b.0.as_ptr(), &mut p, &mut n) };
        if rv != sys::STATUS_SUCCESS {
            return None;
        }
        if n == 0 || p.is_null() {
            return Some(&[]);
        }
        // SAFETY: APR returned `n` readable bytes owned by the bucket.
        Some(unsafe { std::slice::from_raw_parts(p as *const u8, n) })
    }

    /// Removes and destroys `b`.
    pub fn delete(&self, b: Bucket) {
        // SAFETY: `b` is a live bucket of this brigade, not used afterwards.
        unsafe { sys::rsession_bucket_delete(b.0.as_ptr()) }
    }

    /// Inserts a copy of `bytes` before `b` (nothing when empty).
    pub fn insert_before(&self, b: Bucket, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        // SAFETY: the brigade and `b` are live; a heap bucket made with no
        // free function copies `bytes` into the brigade's allocator.
        unsafe {
            let list = (*self.as_ptr()).bucket_alloc;
            let e = sys::apr_bucket_heap_create(
                bytes.as_ptr() as *const _,
                bytes.len() as sys::apr_size_t,
                None,
                list,
            );
            sys::rsession_bucket_insert_before(b.0.as_ptr(), e);
        }
    }

    /// Destroys every bucket.
    pub fn clear(&self) {
        // SAFETY: the brigade is live.
        unsafe { sys::apr_brigade_cleanup(self.as_ptr() as *mut _) };
    }

    /// Appends an error bucket for `status` (ap_http_header_filter turns it
    /// into `ap_die`: the standard error response) and an EOS.
    pub fn append_error(&self, status: i32, pool: *mut sys::apr_pool_t) {
        // SAFETY: the brigade and the request pool are live; the buckets
        // come from the brigade's own allocator.
        unsafe {
            let list = (*self.as_ptr()).bucket_alloc;
            let e = sys::ap_bucket_error_create(status, std::ptr::null(), pool, list);
            sys::rsession_brigade_append(self.as_ptr(), e);
            sys::rsession_brigade_append(self.as_ptr(), sys::apr_bucket_eos_create(list));
        }
    }

    /// Appends an EOS: the end of the data.
    pub fn append_eos(&self) {
        // SAFETY: the brigade is live; the bucket comes from its allocator.
        unsafe {
            let list = (*self.as_ptr()).bucket_alloc;
            sys::rsession_brigade_append(self.as_ptr(), sys::apr_bucket_eos_create(list));
        }
    }

    /// Whether an EOS is in the brigade; buckets after it are deleted.
    pub fn cut_after_eos(&self) -> bool {
        let mut cur = self.first();
        while let Some(b) = cur {
            cur = self.next(b);
            if self.kind(b) == Kind::Eos {
                while let Some(after) = cur {
                    cur = self.next(after);
                    self.delete(after);
                }
                return true;
            }
        }
        false
    }
}
