//! Every function httpd or the shim calls. Each wraps its raw pointers,
//! runs the body under the panic guard and hands plain types to `hooks`.

use super::bucket::Brigade;
use super::cmd::{self, Directive};
use super::conn::InterimWatch;
use super::guard;
use super::log::{self, Level};
use super::pool::{tagged_mut, tagged_ref, Pool};
use super::request::{OutFilter, Request};
use super::server::Server;
use super::sys;
use crate::config::DirConfig;
use crate::hooks;
use std::ffi::{c_char, c_int, c_void, CStr};

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

// ---- configuration -------------------------------------------------------

fn directive_entry(
    cmd: *mut sys::cmd_parms,
    dirconf: *mut c_void,
    arg: *const c_char,
) -> *const c_char {
    // SAFETY: httpd passes the live cmd_parms of the directive being read.
    let Some(directive) = (unsafe { Directive::from_raw(cmd) }) else {
        return c"mod_rsession: directive without context".as_ptr();
    };
    let result = guard::run(|| {
        // SAFETY: `arg` is the directive's NUL-terminated argument (or
        // NULL); for directives with ACCESS_CONF/RSRC_CONF, httpd passes
        // the container's config made by create_dir_config, and config
        // reading is single-threaded, so this is its only reference.
        let (arg, dir) = unsafe { (cmd::argument(arg), tagged_mut::<DirConfig>(dirconf)) };
        directive.result(hooks::directive(&directive, dir, arg))
    });
    result.unwrap_or_else(|panic| {
        directive
            .pool
            .strdup(&format!("{}: internal error ({panic})", directive.name))
    })
}

#[no_mangle]
pub extern "C" fn rsession_cmd_take1(
    cmd: *mut sys::cmd_parms,
    dirconf: *mut c_void,
    arg: *const c_char,
) -> *const c_char {
    directive_entry(cmd, dirconf, arg)
}

#[no_mangle]
pub extern "C" fn rsession_cmd_secret(
    cmd: *mut sys::cmd_parms,
    dirconf: *mut c_void,
    arg: *const c_char,
) -> *const c_char {
    directive_entry(cmd, dirconf, arg)
}

// ---- server lifecycle ----------------------------------------------------

#[no_mangle]
pub extern "C" fn rsession_post_config(
    _pconf: *mut sys::apr_pool_t,
    _plog: *mut sys::apr_pool_t,
    ptemp: *mut sys::apr_pool_t,
    s: *mut sys::server_rec,
) -> c_int {
    // SAFETY: httpd passes the main server_rec of the generation being built.
    let Some(server) = (unsafe { Server::from_raw(s) }) else {
        return HTTP_500;
    };
    // SAFETY: httpd passes the live ptemp of this post_config run.
    let Some(ptemp) = (unsafe { Pool::from_raw(ptemp) }) else {
        return HTTP_500;
    };
    guard::run(|| hooks::post_config(ptemp, server)).unwrap_or_else(|panic| {
        server_panic(s, "post_config", panic);
        HTTP_500
    })
}

#[no_mangle]
pub extern "C" fn rsession_child_init(pchild: *mut sys::apr_pool_t, s: *mut sys::server_rec) {
    // SAFETY: httpd passes the child's pool and the main server_rec.
    let (Some(pool), Some(server)) = (unsafe { Pool::from_raw(pchild) }, unsafe {
        Server::from_raw(s)
    }) else {
        return;
    };
    // For child_stopping, which gets only the pool.
    pool.set_userdata(MAIN_SERVER_KEY, s as *mut c_void);
    if let Err(panic) = guard::run(|| hooks::child_init(pool, server)) {
        server_panic(s, "child_init", panic);
    }
}

const MAIN_SERVER_KEY: &CStr = c"rsession:main-server";

/// child_stopping hook (httpd 2.4.49 and later).
#[no_mangle]
pub extern "C" fn rsession_child_stopping(pchild: *mut sys::apr_pool_t, graceful: c_int) {
    // SAFETY: httpd passes the child's pool, where child_init left the main
    // server_rec (of this generation, alive until the child exits).
    let main = unsafe { Pool::from_raw(pchild) }
        .and_then(|pool| unsafe { Server::from_raw(pool.userdata(MAIN_SERVER_KEY) as *mut _) });
    let _ = guard::run(|| hooks::child_stopping(main, graceful != 0));
}

// ---- requests ------------------------------------------------------------

#[no_mangle]
pub extern "C" fn rsession_fixups(r: *mut sys::request_rec) -> c_int {
    // SAFETY: httpd passes the live request the hook runs for.
    let Some(req) = (unsafe { Request::from_raw(r) }) else {
        return sys::STATUS_DECLINED;
    };
    guard::run(|| hooks::fixups(req)).unwrap_or_else(|p| request_panic(req, "fixups", p))
}

#[no_mangle]
pub extern "C" fn rsession_insert_filter(r: *mut sys::request_rec) {
    insert_filter_entry(r, false);
}

#[no_mangle]
pub extern "C" fn rsession_insert_error_filter(r: *mut sys::request_rec) {
    insert_filter_entry(r, true);
}

fn insert_filter_entry(r: *mut sys::request_rec, error: bool) {
    // SAFETY: as in rsession_fixups.
    let Some(req) = (unsafe { Request::from_raw(r) }) else {
        return;
    };
    if let Err(p) = guard::run(|| hooks::insert_filter(req, error)) {
        request_panic(req, "insert_filter", p);
    }
}

/// RSESSION_OUT, in the role its context names (see `OutFilter`).
#[no_mangle]
pub extern "C" fn rsession_out_filter(
    f: *mut sys::ap_filter_t,
    bb: *mut sys::apr_bucket_brigade,
) -> sys::apr_status_t {
    // SAFETY: httpd passes the live filter (with its request) and brigade,
    // which this call may change.
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
        Some(req) => guard::run(|| hooks::at_first_output(req))
            .unwrap_or_else(|p| hooks::FirstOutput::Fail(request_panic(req, "output filter", p))),
        None => hooks::FirstOutput::Pass,
    };
    match (outcome, req) {
        (hooks::FirstOutput::Fail(status), Some(req)) => {
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
/// only while a request's session is live (see `ffi::conn`).
#[no_mangle]
pub extern "C" fn rsession_interim_filter(
    f: *mut sys::ap_filter_t,
    bb: *mut sys::apr_bucket_brigade,
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
            if let Err(p) = guard::run(|| watch.inspect(&brigade, hooks::interim_event)) {
                if let Some(req) = watch.request() {
                    request_panic(req, "interim filter", p);
                }
                watch.abandon();
            }
        }
    }
    // SAFETY: `next` is the rest of the connection's chain.
    unsafe { sys::ap_pass_brigade(next, bb) }
}

/// Replays a request body read before the session lock (ffi/body.rs).
#[no_mangle]
pub extern "C" fn rsession_body_filter(
    f: *mut sys::ap_filter_t,
    bb: *mut sys::apr_bucket_brigade,
    mode: sys::ap_input_mode_t,
    block: sys::apr_read_type_e,
    readbytes: sys::apr_off_t,
) -> sys::apr_status_t {
    // SAFETY: httpd passes the live filter and brigade of this call.
    guard::run(|| unsafe { super::body::replay(f, bb, mode, block, readbytes) }).unwrap_or_else(
        |p| {
            // SAFETY: the filter is live; its request too.
            if let Some(req) = unsafe { Request::from_raw((*f).r) } {
                request_panic(req, "body filter", p);
            }
            sys::STATUS_EGENERAL
        },
    )
}

#[no_mangle]
pub extern "C" fn rsession_status_handler(r: *mut sys::request_rec) -> c_int {
    // SAFETY: as in rsession_fixups.
    let Some(req) = (unsafe { Request::from_raw(r) }) else {
        return sys::STATUS_DECLINED;
    };
    guard::run(|| hooks::status_handler(req))
        .unwrap_or_else(|p| request_panic(req, "status handler", p))
}

/// mod_status's optional `status_hook`: our section of /server-status.
/// `flags` carries AP_STATUS_SHORT for `?auto`.
#[no_mangle]
pub extern "C" fn rsession_status_hook(r: *mut sys::request_rec, flags: c_int) -> c_int {
    // SAFETY: as in rsession_fixups (mod_status calls this from its handler).
    let Some(req) = (unsafe { Request::from_raw(r) }) else {
        return sys::STATUS_OK;
    };
    guard::run(|| hooks::status_section(req, flags & AP_STATUS_SHORT != 0)).unwrap_or_else(|p| {
        request_panic(req, "status hook", p);
        sys::STATUS_OK
    })
}

/// mod_status.h's flag for the `?auto` form (not in our bindings: the
/// header is mod_status's own).
const AP_STATUS_SHORT: c_int = 0x1;

// ---- C optional functions (c_shim/mod_rsession.h) ------------------------

/// Runs a C API call with a live request, or returns `fallback`.
fn api<T>(r: *mut sys::request_rec, fallback: T, f: impl FnOnce(Request<'_>) -> T) -> T {
    // SAFETY: callers pass the request they are serving.
    let Some(req) = (unsafe { Request::from_raw(r) }) else {
        return fallback;
    };
    guard::run(|| f(req)).unwrap_or_else(|p| {
        request_panic(req, "C API", p);
        fallback
    })
}

/// A C string argument as text (invalid UTF-8 replaced).
fn c_arg(p: *const c_char) -> Option<String> {
    (!p.is_null()).then(|| {
        // SAFETY: the C API's callers pass NUL-terminated strings or NULL.
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .into_owned()
    })
}

#[no_mangle]
pub extern "C" fn rsession_id(r: *mut sys::request_rec) -> *const c_char {
    api(r, std::ptr::null(), |req| {
        hooks::api_id(req).map_or(std::ptr::null(), |s| req.pool().strdup(&s))
    })
}

#[no_mangle]
pub extern "C" fn rsession_dir(r: *mut sys::request_rec) -> *const c_char {
    api(r, std::ptr::null(), |req| {
        hooks::api_dir(req).map_or(std::ptr::null(), |s| req.pool().strdup(&s))
    })
}

#[no_mangle]
pub extern "C" fn rsession_get(r: *mut sys::request_rec, key: *const c_char) -> *const c_char {
    let key = c_arg(key);
    api(r, std::ptr::null(), |req| {
        key.and_then(|k| hooks::api_get(req, &k))
            .map_or(std::ptr::null(), |v| req.pool().strdup(&v))
    })
}

#[no_mangle]
pub extern "C" fn rsession_set(
    r: *mut sys::request_rec,
    key: *const c_char,
    value: *const c_char,
) -> sys::apr_status_t {
    let (key, value) = (c_arg(key), c_arg(value));
    api(r, sys::STATUS_EGENERAL, |req| match key {
        Some(k) => hooks::api_set(req, &k, value.as_deref()),
        None => sys::STATUS_EINVAL,
    })
}

#[no_mangle]
pub extern "C" fn rsession_invalidate(r: *mut sys::request_rec) -> sys::apr_status_t {
    api(r, sys::STATUS_EGENERAL, hooks::api_invalidate)
}

#[no_mangle]
pub extern "C" fn rsession_regenerate(r: *mut sys::request_rec) -> sys::apr_status_t {
    api(r, sys::STATUS_EGENERAL, hooks::api_regenerate)
}

#[no_mangle]
pub extern "C" fn rsession_invalidate_user(r: *mut sys::request_rec) -> sys::apr_status_t {
    api(r, sys::STATUS_EGENERAL, hooks::api_invalidate_user)
}

// ---- authentication and authorization ------------------------------------

/// The first auth phase (check_access): resolves the session where the
/// location's authentication or authorization needs it.
#[no_mangle]
pub extern "C" fn rsession_access_checker(r: *mut sys::request_rec) -> c_int {
    // SAFETY: as in rsession_fixups.
    let Some(req) = (unsafe { Request::from_raw(r) }) else {
        return sys::STATUS_DECLINED;
    };
    guard::run(|| hooks::access_checker(req))
        .unwrap_or_else(|p| request_panic(req, "access checker", p))
}

/// check_authn: `AuthType RSession`.
#[no_mangle]
pub extern "C" fn rsession_check_authn(r: *mut sys::request_rec) -> c_int {
    // SAFETY: as in rsession_fixups.
    let Some(req) = (unsafe { Request::from_raw(r) }) else {
        return sys::STATUS_DECLINED;
    };
    guard::run(|| hooks::check_authn(req))
        .unwrap_or_else(|p| request_panic(req, "authentication", p))
}

/// note_auth_failure: nothing to add to a response for `AuthType RSession`
/// (claiming it keeps mod_authz_core from logging that nobody did).
#[no_mangle]
pub extern "C" fn rsession_note_auth_failure(
    r: *mut sys::request_rec,
    auth_type: *const c_char,
) -> c_int {
    let ours = c_arg(auth_type).is_some_and(|t| t.eq_ignore_ascii_case(hooks::AUTH_TYPE));
    if r.is_null() || !ours {
        return sys::STATUS_DECLINED;
    }
    sys::STATUS_OK
}

/// `Require rsession …`: the provider's check (an authz_status value).
#[no_mangle]
pub extern "C" fn rsession_authz_check(
    r: *mut sys::request_rec,
    _require_line: *const c_char,
    parsed: *const c_void,
) -> c_int {
    // SAFETY: as in rsession_fixups; `parsed` is what rsession_authz_parse
    // stored for this line: a Vec<Term> attached to the config pool, which
    // outlives every request of its generation.
    let (req, terms) = unsafe {
        (
            Request::from_raw(r),
            tagged_ref::<Vec<crate::auth::Term>>(parsed),
        )
    };
    let (Some(req), Some(terms)) = (req, terms) else {
        return hooks::AUTHZ_GENERAL_ERROR;
    };
    guard::run(|| hooks::authz_check(req, terms)).unwrap_or_else(|p| {
        request_panic(req, "Require rsession", p);
        hooks::AUTHZ_GENERAL_ERROR
    })
}

/// `Require rsession …` at startup: checks the terms, keeps them parsed,
/// and marks the section so its requests resolve the session early.
#[no_mangle]
pub extern "C" fn rsession_authz_parse(
    cmd: *mut sys::cmd_parms,
    require_line: *const c_char,
    parsed: *mut *const c_void,
) -> *const c_char {
    // SAFETY: httpd passes the live cmd_parms of the Require directive.
    let Some(directive) = (unsafe { Directive::from_raw(cmd) }) else {
        return c"mod_rsession: Require rsession without context".as_ptr();
    };
    let line = c_arg(require_line).unwrap_or_default();
    let result = guard::run(|| match crate::auth::parse_require(&line) {
        Ok(terms) => {
            let kept = directive.pool.attach_tagged(terms);
            if !parsed.is_null() {
                // SAFETY: `parsed` is mod_authz_core's slot for this line.
                unsafe { *parsed = kept as *const c_void };
            }
            // SAFETY: as above; the section is the one being read.
            if let Some(dir) = unsafe { cmd::section_dir_config::<DirConfig>(cmd) } {
                hooks::mark_authz_section(dir);
            }
            std::ptr::null()
        }
        Err(e) => directive.pool.strdup(&e.to_string()),
    });
    result.unwrap_or_else(|panic| {
        directive
            .pool
            .strdup(&format!("Require rsession: internal error ({panic})"))
    })
}
