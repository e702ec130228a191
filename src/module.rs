//! The top layer: every symbol httpd and the C shim call, each handed to
//! its hook in `hooks` through an adapter of `ffi::entry` (which wraps the
//! raw arguments, runs the hook under the panic guard and makes the C
//! return value), and the module record with its config types. The
//! signatures are those c_shim/shim.c declares, in its order.

use crate::config::DirConfig;
use crate::ffi::entry::{declare_module, exports};
use crate::ffi::sys;
use crate::hooks::{self, ServerState};
use std::ffi::{c_char, c_int, c_void};

declare_module!(dir: DirConfig, server: ServerState);

exports! {
    // ---- configuration ----
    fn rsession_cmd_take1(cmd: *mut sys::cmd_parms, dirconf: *mut c_void, arg: *const c_char)
        -> *const c_char = directive("directive", hooks::directive);
    fn rsession_cmd_secret(cmd: *mut sys::cmd_parms, dirconf: *mut c_void, arg: *const c_char)
        -> *const c_char = directive("directive", hooks::directive);

    // ---- server lifecycle ----
    fn rsession_post_config(
        pconf: *mut sys::apr_pool_t,
        plog: *mut sys::apr_pool_t,
        ptemp: *mut sys::apr_pool_t,
        s: *mut sys::server_rec,
    ) -> c_int = post_config("post_config", hooks::post_config);
    fn rsession_child_init(pchild: *mut sys::apr_pool_t, s: *mut sys::server_rec)
        = child_init("child_init", hooks::child_init);
    /// httpd 2.4.49 and later.
    fn rsession_child_stopping(pchild: *mut sys::apr_pool_t, graceful: c_int)
        = child_stopping("child_stopping", hooks::child_stopping);

    /// In the parent: starts the scratch reaper when something waits.
    fn rsession_monitor(p: *mut sys::apr_pool_t, s: *mut sys::server_rec) -> c_int
        = monitor("monitor", hooks::monitor);

    // ---- requests ----
    /// Also run for the request an internal redirect makes.
    fn rsession_post_read_request(r: *mut sys::request_rec) -> c_int
        = request("post_read_request", hooks::post_read_request);
    fn rsession_fixups(r: *mut sys::request_rec) -> c_int = request("fixups", hooks::fixups);
    fn rsession_fixups_after_index(r: *mut sys::request_rec) -> c_int
        = request("fixups", hooks::fixups_after_index);
    fn rsession_insert_filter(r: *mut sys::request_rec)
        = request_void("insert_filter", hooks::insert_filter);
    fn rsession_insert_error_filter(r: *mut sys::request_rec)
        = request_void("insert_filter", hooks::insert_error_filter);
    /// RSESSION_OUT: saves the session at the response's first bytes.
    fn rsession_out_filter(f: *mut sys::ap_filter_t, bb: *mut sys::apr_bucket_brigade)
        -> sys::apr_status_t = out_filter("output filter", hooks::at_first_output);
    /// Replays a request body read before the session lock (ffi/body.rs).
    fn rsession_body_filter(
        f: *mut sys::ap_filter_t,
        bb: *mut sys::apr_bucket_brigade,
        mode: sys::ap_input_mode_t,
        block: sys::apr_read_type_e,
        readbytes: sys::apr_off_t,
    ) -> sys::apr_status_t = body_filter("body filter");
    /// RSESSION_INTERIM, on the connection: 1xx responses and a 101's
    /// tunnel while a request's session is live.
    fn rsession_interim_filter(f: *mut sys::ap_filter_t, bb: *mut sys::apr_bucket_brigade)
        -> sys::apr_status_t = interim_filter("interim filter", hooks::interim_event);
    fn rsession_status_handler(r: *mut sys::request_rec) -> c_int
        = request("status handler", hooks::status_handler);
    /// mod_status's `status_hook`: our section of /server-status.
    fn rsession_status_hook(r: *mut sys::request_rec, flags: c_int) -> c_int
        = status_hook("status hook", hooks::status_section);

    // ---- C optional functions (c_shim/mod_rsession.h) ----
    fn rsession_id(r: *mut sys::request_rec) -> *const c_char = api_text("C API", hooks::api_id);
    fn rsession_dir(r: *mut sys::request_rec) -> *const c_char = api_text("C API", hooks::api_dir);
    fn rsession_get(r: *mut sys::request_rec, key: *const c_char) -> *const c_char
        = api_text_of("C API", hooks::api_get);
    fn rsession_set(r: *mut sys::request_rec, key: *const c_char, value: *const c_char)
        -> sys::apr_status_t = api_set("C API", hooks::api_set);
    fn rsession_invalidate(r: *mut sys::request_rec) -> sys::apr_status_t
        = api_status("C API", hooks::api_invalidate);
    fn rsession_regenerate(r: *mut sys::request_rec) -> sys::apr_status_t
        = api_status("C API", hooks::api_regenerate);
    fn rsession_invalidate_user(r: *mut sys::request_rec) -> sys::apr_status_t
        = api_status("C API", hooks::api_invalidate_user);

    // ---- authentication and authorization ----
    /// check_access, first: resolves the session where the location's
    /// authentication or authorization needs it.
    fn rsession_access_checker(r: *mut sys::request_rec) -> c_int
        = request("access checker", hooks::access_checker);
    /// check_authn: `AuthType RSession`.
    fn rsession_check_authn(r: *mut sys::request_rec) -> c_int
        = request("authentication", hooks::check_authn);
    fn rsession_note_auth_failure(r: *mut sys::request_rec, auth_type: *const c_char) -> c_int
        = note_auth_failure("note_auth_failure", hooks::note_auth_failure);
    /// `Require rsession …`: the provider's check (an authz_status value).
    fn rsession_authz_check(
        r: *mut sys::request_rec,
        require_line: *const c_char,
        parsed: *const c_void,
    ) -> c_int = authz_check("Require rsession", hooks::authz_check);
    /// `Require rsession …` at startup: checks the terms, keeps them
    /// parsed, and marks the section so its requests resolve the session
    /// early.
    fn rsession_authz_parse(
        cmd: *mut sys::cmd_parms,
        require_line: *const c_char,
        parsed: *mut *const c_void,
    ) -> *const c_char
        = authz_parse("Require rsession", hooks::parse_require, hooks::mark_authz_section);
}
