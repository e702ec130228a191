//! Directive handlers: every `RSession*` line reaches `take1` or `secret`,
//! which parse it into the typed config and return httpd's error string.

use super::pool::Pool;
use super::server::Server;
use super::sys;
use crate::config::{is_server_directive, DirConfig};
use crate::error::ConfigError;
use std::ffi::{c_char, c_void, CStr};

/// A directive handler's view of `cmd_parms`.
pub struct Directive<'c> {
    pub name: String,
    pub server: Server<'c>,
    pub pool: Pool<'c>,
}

impl<'c> Directive<'c> {
    /// # Safety
    /// `cmd` must be the live cmd_parms httpd passes to a directive handler.
    pub unsafe fn from_raw(cmd: *mut sys::cmd_parms) -> Option<Directive<'c>> {
        // SAFETY: the caller guarantees `cmd` is live for the call; its
        // command_rec name is a static C string from shim.c.
        unsafe {
            let cmd = cmd.as_ref()?;
            let name = CStr::from_ptr(cmd.cmd.as_ref()?.name)
                .to_string_lossy()
                .into_owned();
            Some(Directive {
                name,
                server: Server::from_raw(cmd.server)?,
                pool: Pool::from_raw(cmd.pool)?,
            })
        }
    }

    /// httpd's return value: NULL for success, else the message.
    pub fn result(&self, r: Result<(), ConfigError>) -> *const c_char {
        match r {
            Ok(()) => std::ptr::null(),
            Err(e) => self.pool.strdup(&e.to_string()),
        }
    }
}

/// The argument as UTF-8 (configs are text; anything else is refused).
///
/// # Safety
/// `arg` must be NUL-terminated and live for the call.
pub unsafe fn argument<'a>(name: &str, arg: *const c_char) -> Result<&'a str, ConfigError> {
    if arg.is_null() {
        return Err(ConfigError::new(name, "", "a value"));
    }
    // SAFETY: NUL-terminated (caller's contract).
    let raw = unsafe { CStr::from_ptr(arg) };
    raw.to_str()
        .map_err(|_| ConfigError::new(name, &raw.to_string_lossy(), "UTF-8 text"))
}

/// Applies one directive to the container's DirConfig or the server's config.
pub fn apply(
    directive: &Directive<'_>,
    dirconf: *mut c_void,
    arg: &str,
) -> Result<(), ConfigError> {
    let name = directive.name.as_str();
    if is_server_directive(name) {
        let is_virtual = directive.server.is_virtual();
        return directive.server.state_mut().conf.set(name, arg, is_virtual);
    }
    // SAFETY: for directives with ACCESS_CONF/RSRC_CONF, httpd passes the
    // container's config made by create_dir_config; config reading is
    // single-threaded, so this is the only reference.
    match unsafe { (dirconf as *mut DirConfig).as_mut() } {
        Some(dir) => dir.set(name, arg),
        None => Err(ConfigError::new(
            name,
            arg,
            "a container mod_rsession configures",
        )),
    }
}

/// The DirConfig of the section a directive of another module (mod_authz_core's
/// `Require`) is read in, made if that section has none yet, as httpd makes
/// it for our own directives.
///
/// # Safety
/// `cmd` must be the live cmd_parms of a directive being read.
pub unsafe fn section_dir_config<'c>(cmd: *mut sys::cmd_parms) -> Option<&'c mut DirConfig> {
    // SAFETY: the caller guarantees a live cmd_parms; `context` is the
    // enclosing section's config vector (set by ap_walk_config) and lives
    // in its pool; config reading is single-threaded, so the returned
    // config has no other reference meanwhile.
    unsafe {
        let c = cmd.as_ref()?;
        if c.context.is_null() {
            return None;
        }
        let conf = sys::ap_set_config_vectors(
            c.server,
            c.context,
            c.path,
            std::ptr::addr_of_mut!(super::module::rsession_module),
            c.pool,
        );
        (conf as *mut DirConfig).as_mut()
    }
}
