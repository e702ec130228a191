//! Logging through httpd with our module index, so `LogLevel rsession:debug`
//! works. The level is checked before any formatting; text always goes
//! through a constant "%s". Callers never pass secrets or whole ids.

use super::module::module_index;
use super::sys;
use std::ffi::{c_int, CString};
use std::panic::Location;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[repr(i32)]
pub enum Level {
    Emerg = sys::APLOG_EMERG as i32,
    Err = sys::APLOG_ERR as i32,
    Warning = sys::APLOG_WARNING as i32,
    Notice = sys::APLOG_NOTICE as i32,
    Info = sys::APLOG_INFO as i32,
    Debug = sys::APLOG_DEBUG as i32,
}

fn c_text(msg: &str) -> CString {
    CString::new(msg.replace('\0', "\\0")).unwrap_or_default()
}

fn c_file(location: &Location<'_>) -> CString {
    CString::new(location.file()).unwrap_or_default()
}

/// Is `level` logged for this request? (Notice and above always are.)
pub fn request_enabled(r: *const sys::request_rec, level: Level) -> bool {
    level <= Level::Notice
        // SAFETY: `r` is the live request of the calling hook.
        || unsafe { sys::ap_get_request_module_loglevel(r, module_index()) } >= level as c_int
}

/// Is `level` logged for this server?
pub fn server_enabled(s: *const sys::server_rec, level: Level) -> bool {
    level <= Level::Notice
        || s.is_null()
        // SAFETY: `s` is a live server_rec of this generation.
        || unsafe { sys::ap_get_server_module_loglevel(s, module_index()) } >= level as c_int
}

#[track_caller]
pub fn request(r: *const sys::request_rec, level: Level, status: sys::apr_status_t, msg: &str) {
    let location = Location::caller();
    let (file, text) = (c_file(location), c_text(msg));
    // SAFETY: `r` is live; the format is the constant "%s" and `text` is a
    // NUL-terminated string that outlives the call.
    unsafe {
        sys::ap_log_rerror_(
            file.as_ptr(),
            location.line() as c_int,
            module_index(),
            level as c_int,
            status,
            r,
            c"%s".as_ptr(),
            text.as_ptr(),
        )
    }
}

#[track_caller]
pub fn server(s: *const sys::server_rec, level: Level, status: sys::apr_status_t, msg: &str) {
    let location = Location::caller();
    let (file, text) = (c_file(location), c_text(msg));
    // SAFETY: as in `request`; a null server_rec is allowed by httpd.
    unsafe {
        sys::ap_log_error_(
            file.as_ptr(),
            location.line() as c_int,
            module_index(),
            level as c_int,
            status,
            s,
            c"%s".as_ptr(),
            text.as_ptr(),
        )
    }
}

/// `rlog!(r, Level::Warning, "RS0001 ...", args)`: formats only if logged.
macro_rules! rlog {
    ($r:expr, $level:expr, $($arg:tt)+) => {{
        let r = $r.as_ptr();
        if $crate::ffi::log::request_enabled(r, $level) {
            $crate::ffi::log::request(r, $level, 0, &format!($($arg)+));
        }
    }};
}

/// `slog!(s, Level::Err, "...")` for server-level messages.
macro_rules! slog {
    ($s:expr, $level:expr, $($arg:tt)+) => {{
        let s = $s.as_ptr();
        if $crate::ffi::log::server_enabled(s, $level) {
            $crate::ffi::log::server(s, $level, 0, &format!($($arg)+));
        }
    }};
}

pub(crate) use {rlog, slog};

/// A server to log against from a background thread (the sweeper).
#[derive(Clone, Copy)]
pub struct ServerLog(*const sys::server_rec);

// SAFETY: the server_rec lives in pconf, which outlives the child's pchild
// pool; the sweeper thread is joined by a pchild cleanup before either
// goes, and ap_log_error is thread-safe.
unsafe impl Send for ServerLog {}

impl ServerLog {
    pub fn new(s: super::server::Server<'_>) -> ServerLog {
        ServerLog(s.as_ptr())
    }

    #[track_caller]
    pub fn log(&self, level: Level, msg: &str) {
        if server_enabled(self.0, level) {
            server(self.0, level, 0, msg);
        }
    }
}
