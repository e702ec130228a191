//! What a directive handler gets from httpd: the directive (`Directive`),
//! its argument, and the config of the section it is read in.

use super::pool::{tagged_mut, Pool};
use super::server::Server;
use super::sys;
use std::ffi::{c_char, CStr};
use std::fmt::Display;

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
    pub fn result<E: Display>(&self, r: Result<(), E>) -> *const c_char {
        match r {
            Ok(()) => std::ptr::null(),
            Err(e) => self.pool.strdup(e.to_string()),
        }
    }
}

/// The directive's argument (NULL when httpd passes none).
///
/// # Safety
/// `arg` must be null or NUL-terminated and live for `'a`.
pub unsafe fn argument<'a>(arg: *const c_char) -> Option<&'a CStr> {
    // SAFETY: NUL-terminated and live (caller's contract).
    (!arg.is_null()).then(|| unsafe { CStr::from_ptr(arg) })
}

/// Our per-directory config (a `C`, see `ffi::config`) of the section a
/// directive of another module (mod_authz_core's `Require`) is read in,
/// made if that section has none yet, as httpd makes it for our own
/// directives.
///
/// # Safety
/// `cmd` must be the live cmd_parms of a directive being read.
pub unsafe fn section_dir_config<'c, C: 'static>(cmd: *mut sys::cmd_parms) -> Option<&'c mut C> {
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
        tagged_mut::<C>(conf)
    }
}
