//! APR pools: Rust values whose `Drop` runs when a pool is cleared, and
//! strings copied into pool memory for httpd to keep.

use super::sys;
use std::any::TypeId;
use std::ffi::{c_char, c_void, CStr};
use std::marker::PhantomData;
use std::ptr::NonNull;

/// A pool that outlives `'p`.
#[derive(Clone, Copy)]
pub struct Pool<'p> {
    raw: NonNull<sys::apr_pool_t>,
    _life: PhantomData<&'p sys::apr_pool_t>,
}

extern "C" fn drop_boxed<T>(data: *mut c_void) -> sys::apr_status_t {
    // A panicking Drop must not unwind into APR.
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: `data` came from Box::into_raw in `attach` and this
        // cleanup runs exactly once, when the pool is cleared.
        drop(unsafe { Box::from_raw(data as *mut T) });
    });
    sys::STATUS_SUCCESS
}

/// What `apr_palloc` guarantees (APR_ALIGN_DEFAULT).
const POOL_ALIGN: usize = 8;

extern "C" fn drop_in_pool<T>(data: *mut c_void) -> sys::apr_status_t {
    // A panicking Drop must not unwind into APR.
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: `data` holds the T `attach` wrote into pool memory, and
        // this cleanup runs exactly once, before the pool frees that memory.
        unsafe { std::ptr::drop_in_place(data as *mut T) };
    });
    sys::STATUS_SUCCESS
}

impl<'p> Pool<'p> {
    /// # Safety
    /// `raw` must be a live pool that outlives `'p`.
    pub unsafe fn from_raw(raw: *mut sys::apr_pool_t) -> Option<Pool<'p>> {
        NonNull::new(raw).map(|raw| Pool {
            raw,
            _life: PhantomData,
        })
    }

    pub fn as_ptr(&self) -> *mut sys::apr_pool_t {
        self.raw.as_ptr()
    }

    /// Moves `value` into memory the pool owns: it is dropped when the pool
    /// is cleared or destroyed. The pointer stays valid until then.
    /// Values that fit the pool's alignment live in its own memory (no
    /// heap allocation per request); others are boxed.
    pub fn attach<T: 'static>(&self, value: T) -> *mut T {
        let size = std::mem::size_of::<T>();
        if std::mem::align_of::<T>() <= POOL_ALIGN && size > 0 {
            // SAFETY: the pool is live; APR returns `size` bytes aligned to
            // POOL_ALIGN (or null, without an abort function).
            let ptr = unsafe { sys::apr_palloc(self.as_ptr(), size) } as *mut T;
            if !ptr.is_null() {
                // SAFETY: `ptr` is valid, aligned and unused memory for a T;
                // `drop_in_pool::<T>` matches it, and APR runs cleanups
                // before it frees the pool's memory.
                unsafe {
                    ptr.write(value);
                    sys::apr_pool_cleanup_register(
                        self.as_ptr(),
                        ptr as *const c_void,
                        Some(drop_in_pool::<T>),
                        Some(sys::apr_pool_cleanup_null),
                    );
                }
                return ptr;
            }
        }
        let ptr = Box::into_raw(Box::new(value));
        // SAFETY: the pool is live; `drop_boxed::<T>` matches the pointer's
        // type, and `apr_pool_cleanup_null` is APR's no-op child cleanup.
        unsafe {
            sys::apr_pool_cleanup_register(
                self.as_ptr(),
                ptr as *const c_void,
                Some(drop_boxed::<T>),
                Some(sys::apr_pool_cleanup_null),
            );
        }
        ptr
    }

    /// Like `attach`, with the value's type recorded beside it, for a
    /// pointer httpd keeps untyped (a config, a parsed Require line):
    /// `tagged_ref` gives it back only as the same type.
    pub fn attach_tagged<T: 'static>(&self, value: T) -> *mut c_void {
        self.attach(Tagged {
            tag: TypeId::of::<T>(),
            value,
        }) as *mut c_void
    }

    /// A NUL-terminated copy of `s` in the pool (NUL bytes cut it short).
    /// Bytes, not only text: paths need no UTF-8 check to get here.
    pub fn strdup(&self, s: impl AsRef<[u8]>) -> *const c_char {
        let bytes = s.as_ref();
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        // SAFETY: the pool is live and `bytes[..len]` is readable.
        unsafe { sys::apr_pstrmemdup(self.as_ptr(), bytes.as_ptr() as *const c_char, len) }
    }

    /// Pool userdata under `key` (null when unset).
    pub fn userdata(&self, key: &CStr) -> *mut c_void {
        let mut out: *mut c_void = std::ptr::null_mut();
        // SAFETY: the pool is live, `key` is NUL-terminated and `out` is a
        // valid place for APR to write the pointer.
        unsafe { sys::apr_pool_userdata_get(&mut out, key.as_ptr(), self.as_ptr()) };
        out
    }

    /// Pool userdata under a key made at run time (null when unset).
    pub fn userdata_named(&self, key: &str) -> *mut c_void {
        match std::ffi::CString::new(key) {
            Ok(k) => self.userdata(&k),
            Err(_) => std::ptr::null_mut(),
        }
    }

    /// Sets userdata under a key made at run time; APR copies the key.
    pub fn set_userdata_named(&self, key: &str, value: *mut c_void) {
        let Ok(k) = std::ffi::CString::new(key) else {
            return;
        };
        // SAFETY: the pool is live; apr_pool_userdata_set copies `k` into
        // the pool when the key is new, so it need not outlive this call.
        unsafe { sys::apr_pool_userdata_set(value, k.as_ptr(), None, self.as_ptr()) };
    }

    /// Sets userdata without a cleanup (the value's own `attach` cleanup
    /// frees it); `key` must be static, as `setn` keeps the pointer.
    pub fn set_userdata(&self, key: &'static CStr, value: *mut c_void) {
        // SAFETY: the pool is live; `key` lives forever as setn requires.
        unsafe { sys::apr_pool_userdata_setn(value, key.as_ptr(), None, self.as_ptr()) };
    }
}

/// A value with its type beside it; `tag` is first in every `Tagged<T>`
/// (`repr(C)`), so it can be read before the type is known.
#[repr(C)]
struct Tagged<T> {
    tag: TypeId,
    value: T,
}

/// Whether `p` points at a `Tagged<T>`.
///
/// # Safety
/// `p` is non-null and came from `attach_tagged` on a live pool.
unsafe fn is_tagged<T: 'static>(p: *const c_void) -> bool {
    // SAFETY: every `Tagged<_>` starts with its TypeId (repr(C), first
    // field), so reading one is valid whatever the value's type (the
    // caller guarantees it is such a live value).
    unsafe { *(p as *const TypeId) == TypeId::of::<T>() }
}

/// The `T` behind a pointer `attach_tagged` returned; `None` for null or
/// for a value of another type.
///
/// # Safety
/// `p` is null or came from `attach_tagged` on a pool that outlives `'a`,
/// and nothing changes the value meanwhile.
pub unsafe fn tagged_ref<'a, T: 'static>(p: *const c_void) -> Option<&'a T> {
    // SAFETY: the caller's contract; the tag says the value is a Tagged<T>.
    unsafe { (!p.is_null() && is_tagged::<T>(p)).then(|| &(*(p as *const Tagged<T>)).value) }
}

/// As `tagged_ref`, for the only reference to the value while it lives.
///
/// # Safety
/// As `tagged_ref`, and no other reference to the value exists for `'a`.
pub unsafe fn tagged_mut<'a, T: 'static>(p: *mut c_void) -> Option<&'a mut T> {
    // SAFETY: as in `tagged_ref`, with the only reference (the caller's
    // contract).
    unsafe { (!p.is_null() && is_tagged::<T>(p)).then(|| &mut (*(p as *mut Tagged<T>)).value) }
}
