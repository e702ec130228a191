//! The `rsession_module` symbol mod_so looks up. Defined in Rust because
//! rustc's version script hides a C-defined one (HTTPD_RUST_NOTES); it
//! reproduces STANDARD20_MODULE_STUFF.

use super::config::{create_dir_config, create_server_config, merge_config};
use super::sys;
use crate::config::DirConfig;
use crate::hooks::ServerState;
use std::os::raw::{c_int, c_ulong};
use std::ptr::{addr_of, null_mut};

extern "C" {
    /// Registers every hook; defined in c_shim/shim.c.
    fn rsession_register_hooks(p: *mut sys::apr_pool_t);
}

/// httpd writes `module_index`, `next` and `dynamic_load_handle` into it.
#[no_mangle]
pub static mut rsession_module: sys::module = sys::module {
    version: sys::MODULE_MAGIC_NUMBER_MAJOR as c_int,
    minor_version: sys::MODULE_MAGIC_NUMBER_MINOR as c_int,
    module_index: -1,
    name: c"mod_rsession.c".as_ptr(),
    dynamic_load_handle: null_mut(),
    next: null_mut(),
    magic: sys::MODULE_MAGIC_COOKIE as c_ulong,
    rewrite_args: None,
    create_dir_config: Some(create_dir_config::<DirConfig>),
    merge_dir_config: Some(merge_config::<DirConfig>),
    create_server_config: Some(create_server_config::<ServerState>),
    merge_server_config: Some(merge_config::<ServerState>),
    cmds: addr_of!(sys::rsession_cmds) as *const sys::command_rec,
    register_hooks: Some(rsession_register_hooks),
    flags: 0,
};

/// Our index into httpd's config vectors and per-module log levels.
pub fn module_index() -> c_int {
    // SAFETY: httpd sets module_index once while loading the module, before
    // any hook or directive runs; afterwards it is only read.
    unsafe { (*addr_of!(rsession_module)).module_index }
}

/// `ap_get_module_config`: our slot in a config vector.
///
/// # Safety
/// `vector` must be a live config vector of this generation.
pub unsafe fn module_config(vector: *mut sys::ap_conf_vector_t) -> *mut std::ffi::c_void {
    let index = module_index();
    debug_assert!(index >= 0);
    // SAFETY: config vectors hold one pointer per loaded module, indexed by
    // module_index (the caller guarantees the vector is live).
    unsafe { *(vector as *mut *mut std::ffi::c_void).add(index as usize) }
}
