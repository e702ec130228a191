//! Adapters for every kind of function httpd or the shim calls, and the
//! macros the module's top layer (src/module.rs) declares its entry
//! points with. An adapter takes the raw arguments of one C signature,
//! wraps them in safe types, runs the module's hook under the panic guard
//! and turns the result (or a caught panic) into the C return value. It
//! knows nothing of what the hook does.

use super::bucket::Brigade;
use super::cmd::{self, Directive};
use super::conn::InterimWatch;
use super::guard;
use super::log::{self, Level};
use super::pool::{tagged_mut, tagged_ref, Pool};
use super::request::{FirstOutput, OutFilter, Request};
use super::server::Server;
use super::sys;
use crate::interim::Event;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::fmt::Display;

/// Declares `extern "C"` entry points, each calling one adapter of this
/// module with all its arguments, then the hook name (for logs) and the
/// hooks (paths: no code of the caller runs inside the `unsafe` block):
///
/// ```ignore
/// ffi::exports! {
///     fn rsession_fixups(r: *mut sys::request_rec) -> c_int = request("fixups", hooks::fixups);
/// }
/// ```
///
/// The signature must be the one c_shim/shim.c declares for the symbol;
/// the adapter's is the same, so a mismatch does not compile.
macro_rules! exports {
    ($(
        $(#[$attr:meta])*
        fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?
            = $adapter:ident($what:literal $(, $hook:path)* $(,)?);
    )*) => {$(
        $(#[$attr])*
        #[allow(unsafe_code)]
        #[no_mangle]
        pub extern "C" fn $name($($arg: $ty),*) $(-> $ret)? {
            // SAFETY: httpd (or the shim) calls this symbol with the live
            // arguments of its C declaration in c_shim/shim.c, which are
            // what the adapter's `# Safety` section asks for.
            unsafe { $crate::ffi::entry::$adapter($($arg,)* $what $(, $hook)*) }
        }
    )*};
}

/// Declares the `rsession_module` symbol mod_so looks up, with the
/// module's config types: `declare_module!(dir: D, server: S)`, each
/// `Default + Merge` (`ffi::config`). Defined in Rust because rustc's
/// version script hides a C-defined one (HTTPD_RUST_NOTES); it reproduces
/// STANDARD20_MODULE_STUFF. `ffi::module` reads it back by that name.
macro_rules! declare_module {
    (dir: $dir:ty, server: $server:ty $(,)?) => {
        /// httpd writes `module_index`, `next` and `dynamic_load_handle`
        /// into it.
        #[allow(unsafe_code)]
        #[no_mangle]
        pub static mut rsession_module: $crate::ffi::sys::module = $crate::ffi::sys::module {
            version: $crate::ffi::sys::MODULE_MAGIC_NUMBER_MAJOR as ::std::ffi::c_int,
            minor_version: $crate::ffi::sys::MODULE_MAGIC_NUMBER_MINOR as ::std::ffi::c_int,
            module_index: -1,
            name: c"mod_rsession.c".as_ptr(),
            dynamic_load_handle: ::std::ptr::null_mut(),
            next: ::std::ptr::null_mut(),
            magic: $crate::ffi::sys::MODULE_MAGIC_COOKIE as ::std::ffi::c_ulong,
            rewrite_args: None,
            create_dir_config: Some($crate::ffi::config::create_dir_config::<$dir>),
            merge_dir_config: Some($crate::ffi::config::merge_config::<$dir>),
            create_server_config: Some($crate::ffi::config::create_server_config::<$server>),
            merge_server_config: Some($crate::ffi::config::merge_config::<$server>),
            cmds: ::std::ptr::addr_of!($crate::ffi::sys::rsession_cmds)
                as *const $crate::ffi::sys::command_rec,
            register_hooks: Some($crate::ffi::module::rsession_register_hooks),
            flags: 0,
        };
    };
}

pub(crate) use {declare_module, exports};

const HTTP_500: c_int = sys::HTTP_INTERNAL_SERVER_ERROR as c_int;

/// Logs a caught panic against the request and returns 500.
fn request_panic(r: Request<'_>, hook: &str, panic: String) -> c_int {
    log::request(
        r.as_ptr(),
        Level::Err,
        0,
        &format!("RS0100 panic in {hook}, request failed: {panic}"),
    );
    HTTP_500
}

fn server_panic(s: *const sys::server_rec, hook: &str, panic: String) {
    log::server(
        s,
        Level::Err,
        0,
        &format!("RS0101 panic in {hook}: {panic}"),
    );
}

/// A C string argument as text (invalid UTF-8 replaced).
///
/// # Safety
/// `p` is null or NUL-terminated.
unsafe fn c_arg(p: *const c_char) -> Option<String> {
    (!p.is_null()).then(|| {
        // SAFETY: NUL-terminated (the caller's contract).
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    })
}

/// Runs `hook` with a live request: `absent` without one, `panicked` (and
/// a logged RS0100) when it panics.
///
/// # Safety
/// `r` is null or the live request of the calling hook.
unsafe fn with_request<'r, T>(
    r: *mut sys::request_rec,
    what: &str,
    absent: T,
    panicked: impl FnOnce() -> T,
    hook: impl FnOnce(Request<'r>) -> T,
) -> T {
    // SAFETY: the caller's contract.
    let Some(req) = (unsafe { Request::from_raw(r) }) else {
        return absent;
    };
    guard::run(|| hook(req)).unwrap_or_else(|p| {
        request_panic(req, what, p);
        panicked()
    })
}

// ---- configuration -------------------------------------------------------

/// A directive handler (TAKE1, ITERATE): `apply` gets the directive, the
/// container's config (a `C`, `ffi::config`) and the argument; its error
/// becomes httpd's message.
///
/// # Safety
/// httpd's arguments to a directive handler: the live cmd_parms, the
/// container's config made by our create_dir_config (or NULL), the
/// NUL-terminated argument (or NULL).
pub unsafe fn directive<C: 'static, E: Display>(
    cmd: *mut sys::cmd_parms,
    dirconf: *mut c_void,
    arg: *const c_char,
    _what: &str,
    apply: impl FnOnce(&Directive<'_>, Option<&mut C>, Option<&CStr>) -> Result<(), E>,
) -> *const c_char {
    // SAFETY: the caller's contract.
    let Some(directive) = (unsafe { Directive::from_raw(cmd) }) else {
        return c"mod_rsession: directive without context".as_ptr();
    };
    let result = guard::run(|| {
        // SAFETY: the caller's contract; config reading is single-threaded,
        // so this is the config's only reference.
        let (arg, dir) = unsafe { (cmd::argument(arg), tagged_mut::<C>(dirconf)) };
        directive.result(apply(&directive, dir, arg))
    });
    result.unwrap_or_else(|panic| {
        directive
            .pool
            .strdup(format!("{}: internal error ({panic})", directive.name))
    })
}

/// An authz provider's parse function (`Require <provider> …` at
/// startup): `parse` checks the line and its result is kept (as a `T`,
/// read back by `authz_check`); `mark` then gets the section's config.
///
/// # Safety
/// mod_authz_core's arguments: the live cmd_parms of the Require
/// directive, its NUL-terminated line (or NULL), its slot for the parsed
/// form (or NULL).
pub unsafe fn authz_parse<T: 'static, C: 'static, E: Display>(
    cmd: *mut sys::cmd_parms,
    require_line: *const c_char,
    parsed: *mut *const c_void,
    what: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
    mark: impl FnOnce(&mut C),
) -> *const c_char {
    // SAFETY: the caller's contract.
    let Some(directive) = (unsafe { Directive::from_raw(cmd) }) else {
        return c"mod_rsession: Require rsession without context".as_ptr();
    };
    // SAFETY: the caller's contract.
    let line = unsafe { c_arg(require_line) }.unwrap_or_default();
    let result = guard::run(|| match parse(&line) {
        Ok(terms) => {
            let kept = directive.pool.attach_tagged(terms);
            if !parsed.is_null() {
                // SAFETY: `parsed` is mod_authz_core's slot for this line.
                unsafe { *parsed = kept as *const c_void };
            }
            // SAFETY: as above; the section is the one being read.
            if let Some(dir) = unsafe { cmd::section_dir_config::<C>(cmd) } {
                mark(dir);
            }
            std::ptr::null()
        }
        Err(e) => directive.pool.strdup(e.to_string()),
    });
    result.unwrap_or_else(|panic| {
        directive
            .pool
            .strdup(format!("{what}: internal error ({panic})"))
    })
}

/// An authz provider's check (returns an authz_status value): `check`
/// gets the request and what `authz_parse` kept for the line.
///
/// # Safety
/// mod_authz_core's arguments: the live request, the line, and what
/// `authz_parse` stored for it (attached to the config pool, which
/// outlives every request of its generation).
pub unsafe fn authz_check<'r, T: 'static>(
    r: *mut sys::request_rec,
    _require_line: *const c_char,
    parsed: *const c_void,
    what: &str,
    check: impl FnOnce(Request<'r>, &'r T) -> c_int,
) -> c_int {
    // SAFETY: the caller's contract.
    let Some(parsed) = (unsafe { tagged_ref::<T>(parsed) }) else {
        return sys::AUTHZ_GENERAL_ERROR;
    };
    // SAFETY: the caller's contract.
    unsafe {
        with_request(
            r,
            what,
            sys::AUTHZ_GENERAL_ERROR,
            || sys::AUTHZ_GENERAL_ERROR,
            |req| check(req, parsed),
        )
    }
}

// ---- server lifecycle ----------------------------------------------------

/// post_config: `hook` gets ptemp and the main server.
///
/// # Safety
/// httpd's arguments to post_config.
pub unsafe fn post_config(
    _pconf: *mut sys::apr_pool_t,
    _plog: *mut sys::apr_pool_t,
    ptemp: *mut sys::apr_pool_t,
    s: *mut sys::server_rec,
    what: &str,
    hook: impl FnOnce(Pool<'_>, Server<'_>) -> c_int,
) -> c_int {
    // SAFETY: httpd passes the live ptemp and the main server_rec of the
    // generation being built.
    let (Some(ptemp), Some(server)) = (unsafe { Pool::from_raw(ptemp) }, unsafe {
        Server::from_raw(s)
    }) else {
        return HTTP_500;
    };
    guard::run(|| hook(ptemp, server)).unwrap_or_else(|panic| {
        server_panic(s, what, panic);
        HTTP_500
    })
}

const MAIN_SERVER_KEY: &CStr = c"rsession:main-server";

/// child_init: `hook` gets the child's pool and the main server.
///
/// # Safety
/// httpd's arguments to child_init.
pub unsafe fn child_init(
    pchild: *mut sys::apr_pool_t,
    s: *mut sys::server_rec,
    what: &str,
    hook: impl FnOnce(Pool<'_>, Server<'_>),
) {
    // SAFETY: httpd passes the child's pool and the main server_rec.
    let (Some(pool), Some(server)) = (unsafe { Pool::from_raw(pchild) }, unsafe {
        Server::from_raw(s)
    }) else {
        return;
    };
    // For child_stopping, which gets only the pool.
    pool.set_userdata(MAIN_SERVER_KEY, s as *mut c_void);
    if let Err(panic) = guard::run(|| hook(pool, server)) {
        server_panic(s, what, panic);
    }
}

/// child_stopping (httpd 2.4.49 and later): `hook` gets the main server
/// (as child_init saw it) and whether the stop is graceful.
///
/// # Safety
/// httpd's arguments to child_stopping.
pub unsafe fn child_stopping(
    pchild: *mut sys::apr_pool_t,
    graceful: c_int,
    _what: &str,
    hook: impl FnOnce(Option<Server<'_>>, bool),
) {
    // SAFETY: httpd passes the child's pool, where child_init left the main
    // server_rec (of this generation, alive until the child exits).
    let main = unsafe { Pool::from_raw(pchild) }
        .and_then(|pool| unsafe { Server::from_raw(pool.userdata(MAIN_SERVER_KEY) as *mut _) });
    let _ = guard::run(|| hook(main, graceful != 0));
}

/// monitor: runs in the parent, from the MPM's maintenance loop; `hook`
/// gets the main server.
///
/// # Safety
/// httpd's arguments to monitor.
pub unsafe fn monitor(
    _p: *mut sys::apr_pool_t,
    s: *mut sys::server_rec,
    what: &str,
    hook: impl FnOnce(Server<'_>) -> c_int,
) -> c_int {
    // SAFETY: httpd passes the main server_rec of the running generation.
    let Some(server) = (unsafe { Server::from_raw(s) }) else {
        return sys::STATUS_DECLINED;
    };
    guard::run(|| hook(server)).unwrap_or_else(|panic| {
        server_panic(s, what, panic);
        sys::STATUS_DECLINED
    })
}

// ---- requests ------------------------------------------------------------

/// A request hook returning an HTTP status (OK, DECLINED, an error):
/// DECLINED without a request, 500 after a panic.
///
/// # Safety
/// `r` is null or the live request the hook runs for.
pub unsafe fn request<'r>(
    r: *mut sys::request_rec,
    what: &str,
    hook: impl FnOnce(Request<'r>) -> c_int,
) -> c_int {
    // SAFETY: the caller's contract.
    unsafe { with_request(r, what, sys::STATUS_DECLINED, || HTTP_500, hook) }
}

/// A request hook without a result (insert_filter).
///
/// # Safety
/// As `request`.
pub unsafe fn request_void<'r>(
    r: *mut sys::request_rec,
    what: &str,
    hook: impl FnOnce(Request<'r>),
) {
    // SAFETY: the caller's contract.
    unsafe { with_request(r, what, (), || (), hook) }
}

/// mod_status's optional `status_hook`: `hook` gets the request and
/// whether the short (`?auto`) form is asked for.
///
/// # Safety
/// As `request` (mod_status calls it from its handler).
pub unsafe fn status_hook<'r>(
    r: *mut sys::request_rec,
    flags: c_int,
    what: &str,
    hook: impl FnOnce(Request<'r>, bool) -> c_int,
) -> c_int {
    // SAFETY: the caller's contract.
    unsafe {
        with_request(
            r,
            what,
            sys::STATUS_OK,
            || sys::STATUS_OK,
            |req| hook(req, flags & AP_STATUS_SHORT != 0),
        )
    }
}

/// mod_status.h's flag for the `?auto` form (not in our bindings: the
/// header is mod_status's own).
const AP_STATUS_SHORT: c_int = 0x1;

/// note_auth_failure: `hook` gets the request and the AuthType.
///
/// # Safety
/// As `request`; `auth_type` is null or NUL-terminated.
pub unsafe fn note_auth_failure<'r>(
    r: *mut sys::request_rec,
    auth_type: *const c_char,
    what: &str,
    hook: impl FnOnce(Request<'r>, Option<&str>) -> c_int,
) -> c_int {
    // SAFETY: the caller's contract.
    let auth_type = unsafe { c_arg(auth_type) };
    // SAFETY: the caller's contract.
    unsafe {
        with_request(
            r,
            what,
            sys::STATUS_DECLINED,
            || sys::STATUS_DECLINED,
            |req| hook(req, auth_type.as_deref()),
        )
    }
}

/// The response filter (RSESSION_OUT), in the role its context names (see
/// `OutFilter`): `First` asks `at_first` what to do with the response.
///
/// # Safety
/// httpd's arguments to an output filter: the live filter (with its
/// request) and brigade, which this call may change.
pub unsafe fn out_filter<'r>(
    f: *mut sys::ap_filter_t,
    bb: *mut sys::apr_bucket_brigade,
    what: &str,
    at_first: impl FnOnce(Request<'r>) -> FirstOutput,
) -> sys::apr_status_t {
    // SAFETY: the caller's contract.
    let (filter, req, brigade) =
        unsafe { (&mut *f, Request::from_raw((*f).r), Brigade::from_raw(bb)) };
    let Some(brigade) = brigade else {
        return sys::STATUS_SUCCESS;
    };
    match OutFilter::from_ctx(filter.ctx) {
        OutFilter::Swallow => {
            brigade.clear();
            return sys::AP_FILTER_ERROR;
        }
        OutFilter::Guard => {
            if brigade.cut_after_eos() {
                filter.ctx = OutFilter::Swallow.ctx();
            }
            // SAFETY: `f` is live and `next` is the rest of its chain.
            return unsafe { sys::ap_pass_brigade(filter.next, bb) };
        }
        OutFilter::First => {}
    }
    let outcome = match req {
        Some(req) => guard::run(|| at_first(req))
            .unwrap_or_else(|p| FirstOutput::Fail(request_panic(req, what, p))),
        None => FirstOutput::Pass,
    };
    match (outcome, req) {
        (FirstOutput::Fail(status), Some(req)) => {
            // Stay, to drop what the handler still sends; the error bucket
            // makes ap_http_header_filter answer `status` (ErrorDocument
            // included). Status 200 first, as byterange's 416 does, so
            // ap_die sees no earlier error and uses the ErrorDocument.
            filter.ctx = OutFilter::Swallow.ctx();
            req.set_status(sys::HTTP_OK as c_int);
            brigade.clear();
            brigade.append_error(status, req.pool().as_ptr());
        }
        _ => {
            // SAFETY: `f` is live; a one-shot filter removes itself, then
            // passes the brigade on.
            unsafe { sys::ap_remove_output_filter(f) };
        }
    }
    // SAFETY: `f` is live (removal only unlinks it) and `next` is the rest
    // of the chain.
    unsafe { sys::ap_pass_brigade(filter.next, bb) }
}

/// RSESSION_INTERIM, on the connection: passes brigades on, reading them
/// only while the watch is armed (see `ffi::conn`), with `on_event`
/// hearing of each interim response.
///
/// # Safety
/// httpd's arguments to an output filter; the filter is one
/// `InterimWatch::of_connection` added (its context is that watch).
pub unsafe fn interim_filter(
    f: *mut sys::ap_filter_t,
    bb: *mut sys::apr_bucket_brigade,
    what: &str,
    on_event: fn(Request<'_>, &str, Event) -> Vec<String>,
) -> sys::apr_status_t {
    // SAFETY: httpd passes the live filter and brigade; the context is the
    // InterimWatch that `of_connection` attached to this connection's pool
    // when it added the filter.
    let (next, watch, brigade) = unsafe {
        (
            (*f).next,
            ((*f).ctx as *const InterimWatch).as_ref(),
            Brigade::from_raw(bb),
        )
    };
    if let (Some(watch), Some(brigade)) = (watch, brigade) {
        if watch.is_watching() {
            if let Err(p) = guard::run(|| watch.inspect(&brigade, on_event)) {
                if let Some(req) = watch.request() {
                    request_panic(req, what, p);
                }
                watch.abandon();
            }
        }
    }
    // SAFETY: `next` is the rest of the connection's chain.
    unsafe { sys::ap_pass_brigade(next, bb) }
}

/// RSESSION_BODY: replays a request body read before the hook that needed
/// it read first (`Request::replay_body`).
///
/// # Safety
/// httpd's arguments to an input filter; the filter is one
/// `replay_body` added.
pub unsafe fn body_filter(
    f: *mut sys::ap_filter_t,
    bb: *mut sys::apr_bucket_brigade,
    mode: sys::ap_input_mode_t,
    block: sys::apr_read_type_e,
    readbytes: sys::apr_off_t,
    what: &str,
) -> sys::apr_status_t {
    // SAFETY: httpd passes the live filter and brigade of this call.
    guard::run(|| unsafe { super::body::replay(f, bb, mode, block, readbytes) }).unwrap_or_else(
        |p| {
            // SAFETY: the filter is live; its request too.
            if let Some(req) = unsafe { Request::from_raw((*f).r) } {
                request_panic(req, what, p);
            }
            sys::STATUS_EGENERAL
        },
    )
}

// ---- C optional functions (c_shim/mod_rsession.h) ------------------------

/// An API call returning a string (copied into the request pool) or NULL.
///
/// # Safety
/// `r` is null or a request its caller is serving.
pub unsafe fn api_text<'r>(
    r: *mut sys::request_rec,
    what: &str,
    hook: impl FnOnce(Request<'r>) -> Option<String>,
) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe {
        with_request(r, what, std::ptr::null(), std::ptr::null, |req| {
            hook(req).map_or(std::ptr::null(), |s| req.pool().strdup(&s))
        })
    }
}

/// As `api_text`, for a call with a key (NULL: no result).
///
/// # Safety
/// As `api_text`; `key` is null or NUL-terminated.
pub unsafe fn api_text_of<'r>(
    r: *mut sys::request_rec,
    key: *const c_char,
    what: &str,
    hook: impl FnOnce(Request<'r>, &str) -> Option<String>,
) -> *const c_char {
    // SAFETY: the caller's contract.
    let key = unsafe { c_arg(key) };
    // SAFETY: the caller's contract.
    unsafe {
        with_request(r, what, std::ptr::null(), std::ptr::null, |req| {
            key.and_then(|k| hook(req, &k))
                .map_or(std::ptr::null(), |v| req.pool().strdup(&v))
        })
    }
}

/// An API call setting a key to a value (NULL: unset); a NULL key is
/// APR_EINVAL.
///
/// # Safety
/// As `api_text`; `key` and `value` are null or NUL-terminated.
pub unsafe fn api_set<'r>(
    r: *mut sys::request_rec,
    key: *const c_char,
    value: *const c_char,
    what: &str,
    hook: impl FnOnce(Request<'r>, &str, Option<&str>) -> sys::apr_status_t,
) -> sys::apr_status_t {
    // SAFETY: the caller's contract.
    let (key, value) = unsafe { (c_arg(key), c_arg(value)) };
    // SAFETY: the caller's contract.
    unsafe {
        with_request(
            r,
            what,
            sys::STATUS_EGENERAL,
            || sys::STATUS_EGENERAL,
            |req| match key {
                Some(k) => hook(req, &k, value.as_deref()),
                None => sys::STATUS_EINVAL,
            },
        )
    }
}

/// An API call returning an APR status.
///
/// # Safety
/// As `api_text`.
pub unsafe fn api_status<'r>(
    r: *mut sys::request_rec,
    what: &str,
    hook: impl FnOnce(Request<'r>) -> sys::apr_status_t,
) -> sys::apr_status_t {
    // SAFETY: the caller's contract.
    unsafe { with_request(r, what, sys::STATUS_EGENERAL, || sys::STATUS_EGENERAL, hook) }
}
