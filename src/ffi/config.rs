//! Per-directory and per-server configs for any type: httpd's create and
//! merge callbacks, generic over the config, instantiated by the layer
//! above (`declare_module!`), as ngx-rust's `HttpModule` does. Each config
//! lives in the pool httpd gives, tagged with its type, so it is only ever
//! read back as the type it was made as.

use super::guard;
use super::pool::Pool;
use super::sys;
use std::ffi::{c_char, c_void};

/// How a config inside a container combines with the one around it.
pub trait Merge {
    /// `add` (the inner container's) over `base` (the outer one's).
    fn merge(base: &Self, add: &Self) -> Self;
}

fn create<C: Default + 'static>(p: *mut sys::apr_pool_t) -> *mut c_void {
    guard::install_panic_hook();
    // SAFETY: httpd passes a live pool that owns the new config.
    let pool = unsafe { Pool::from_raw(p) };
    guard::run(|| pool.map_or(std::ptr::null_mut(), |p| p.attach_tagged(C::default())))
        .unwrap_or(std::ptr::null_mut())
}

/// `create_dir_config`: a default `C` for a container.
pub extern "C" fn create_dir_config<C: Default + 'static>(
    p: *mut sys::apr_pool_t,
    _dir: *mut c_char,
) -> *mut c_void {
    create::<C>(p)
}

/// `create_server_config`: a default `C` for a server (pconf owns it).
pub extern "C" fn create_server_config<C: Default + 'static>(
    p: *mut sys::apr_pool_t,
    _s: *mut sys::server_rec,
) -> *mut c_void {
    create::<C>(p)
}

/// `merge_dir_config` and `merge_server_config`: `C::merge` of two configs
/// made by the functions above, in the pool httpd gives for the result.
pub extern "C" fn merge_config<C: Merge + 'static>(
    p: *mut sys::apr_pool_t,
    base: *mut c_void,
    add: *mut c_void,
) -> *mut c_void {
    // SAFETY: httpd passes two configs made by create/merge (tagged, in
    // pools that outlive this call) and a live pool for the result; neither
    // input is modified.
    let (pool, base, add) = unsafe {
        (
            Pool::from_raw(p),
            super::pool::tagged_ref::<C>(base),
            super::pool::tagged_ref::<C>(add),
        )
    };
    guard::run(|| match (pool, base, add) {
        (Some(pool), Some(base), Some(add)) => pool.attach_tagged(C::merge(base, add)),
        _ => std::ptr::null_mut(),
    })
    .unwrap_or(std::ptr::null_mut())
}
