//! The module record: `rsession_module`, declared by the top layer with
//! `declare_module!` (which names the config types) and read back here by
//! its symbol name, for our config slots and log levels.

use super::sys;
use std::os::raw::c_int;
use std::ptr::addr_of;

extern "C" {
    /// Registers every hook; defined in c_shim/shim.c.
    pub fn rsession_register_hooks(p: *mut sys::apr_pool_t);
    /// The module record (`declare_module!`, invoked in src/module.rs).
    pub static mut rsession_module: sys::module;
}

/// Our index into httpd's config vectors and per-module log levels.
pub fn module_index() -> c_int {
    // SAFETY: httpd sets module_index once while loading the module, before
    // any hook or directive runs; afterwards it is only read.
    unsafe { (*addr_of!(rsession_module)).module_index }
}

/// Where our pointer sits in a config vector: one pointer per loaded
/// module, indexed by module_index.
///
/// # Safety
/// `vector` must be a live config vector of this generation.
unsafe fn our_entry(vector: *mut sys::ap_conf_vector_t) -> *mut *mut std::ffi::c_void {
    let index = module_index();
    debug_assert!(index >= 0);
    // SAFETY: the vector holds an entry for every loaded module, ours
    // included (the caller guarantees it is live).
    unsafe { (vector as *mut *mut std::ffi::c_void).add(index as usize) }
}

/// `ap_get_module_config`: our slot in a config vector.
///
/// # Safety
/// `vector` must be a live config vector of this generation.
pub unsafe fn module_config(vector: *mut sys::ap_conf_vector_t) -> *mut std::ffi::c_void {
    // SAFETY: as `our_entry` requires, which the caller guarantees.
    unsafe { *our_entry(vector) }
}

/// `ap_set_module_config`: stores `value` in our slot of a config vector.
///
/// # Safety
/// `vector` must be a live config vector of this generation, and `value`
/// must live as long as whatever reads the vector.
pub unsafe fn set_module_config(vector: *mut sys::ap_conf_vector_t, value: *mut std::ffi::c_void) {
    // SAFETY: as in `module_config`; the caller vouches for `value`.
    unsafe { *our_entry(vector) = value };
}
