//! Safe views of a `request_rec` and its tables, valid for one hook call.

use super::module::module_config;
use super::pool::tagged_ref;
use super::pool::Pool;
use super::server::Server;
use super::sys;
use std::any::Any;
use std::borrow::Cow;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::ptr::NonNull;

/// A request httpd keeps alive for at least `'r`.
#[derive(Clone, Copy)]
pub struct Request<'r> {
    raw: NonNull<sys::request_rec>,
    _life: PhantomData<&'r sys::request_rec>,
}

/// Text of a C string; invalid UTF-8 is replaced, never trusted.
fn text<'a>(p: *const c_char) -> Option<Cow<'a, str>> {
    // SAFETY: httpd's strings are NUL-terminated and outlive the hook call.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy())
}

impl<'r> Request<'r> {
    /// # Safety
    /// `raw` must be a request httpd keeps alive for `'r`.
    pub unsafe fn from_raw(raw: *mut sys::request_rec) -> Option<Request<'r>> {
        NonNull::new(raw).map(|raw| Request {
            raw,
            _life: PhantomData,
        })
    }

    pub fn as_ptr(&self) -> *mut sys::request_rec {
        self.raw.as_ptr()
    }

    fn rec(&self) -> &'r sys::request_rec {
        // SAFETY: the request is live for 'r (from_raw's contract), and we
        // only read fields here.
        unsafe { self.raw.as_ref() }
    }

    /// A main request (not a subrequest).
    pub fn is_main(&self) -> bool {
        self.rec().main.is_null()
    }

    /// The request this one was internally redirected from (mod_rewrite in
    /// a directory, mod_actions, a type map, ErrorDocument), if any.
    pub fn prev(&self) -> Option<Request<'r>> {
        // SAFETY: prev, when set, is a live request of this connection
        // that outlives the requests redirected from it.
        unsafe { Request::from_raw(self.rec().prev) }
    }

    /// An internal redirect to an error document (`ErrorDocument 404
    /// /missing.php`): the request it comes from answers an HTTP error.
    pub fn is_error_redirect(&self) -> bool {
        self.prev()
            .is_some_and(|p| (400..600).contains(&p.status()))
    }

    /// The request that started this chain: follows `main` (subrequests)
    /// and `prev` (internal redirects) to the first one. Its pool outlives
    /// every other request of the chain.
    pub fn initial(&self) -> Request<'r> {
        let mut r = self.raw.as_ptr();
        loop {
            // SAFETY: main/prev point at live requests of the same
            // connection, each outliving the requests derived from it.
            let rec = unsafe { &*r };
            if !rec.main.is_null() {
                r = rec.main;
            } else if !rec.prev.is_null() {
                r = rec.prev;
            } else {
                break;
            }
        }
        // SAFETY: `r` is a live request of this chain (see above).
        unsafe { Request::from_raw(r) }.unwrap_or(*self)
    }

    pub fn pool(&self) -> Pool<'r> {
        // SAFETY: a request's pool lives as long as the request.
        unsafe { Pool::from_raw(self.rec().pool) }.expect("requests always have a pool")
    }

    /// `value` copied into the request's pool (cut at a NUL), to be set
    /// in its tables with `Table::set_text`.
    pub fn pool_text(&self, value: &[u8]) -> PoolText<'r> {
        let pool = self.pool();
        PoolText {
            ptr: pool.strdup(value),
            pool: pool.as_ptr(),
            _life: PhantomData,
        }
    }

    pub fn server(&self) -> Server<'r> {
        // SAFETY: r->server is set before any hook runs and outlives it.
        unsafe { Server::from_raw(self.rec().server) }.expect("requests always have a server")
    }

    /// The merged per-directory config for this request, made by the
    /// module's create/merge_dir_config as a `C` (`ffi::config`).
    pub fn dir_config<C: 'static>(&self) -> Option<&'r C> {
        // SAFETY: per_dir_config is a live config vector; our slot holds a
        // tagged config made by create/merge_dir_config in a pool that
        // outlives the request (pconf, or this request's pool for
        // .htaccess), changed by nothing once requests are served.
        unsafe { tagged_ref::<C>(module_config(self.rec().per_dir_config)) }
    }

    pub fn status(&self) -> i32 {
        self.rec().status
    }

    pub fn handler(&self) -> Option<Cow<'r, str>> {
        text(self.rec().handler)
    }

    /// Served by the core's default handler from an existing regular
    /// file: a static file, which can never change a session. Without a
    /// handler name httpd picks the handler by content type, and the types
    /// handlers claim that way (`AddType application/x-httpd-cgi .cgi`,
    /// mod_php's `application/x-httpd-php`) are not static. Once the
    /// handler ran, httpd has written that type in as the handler's name.
    pub fn is_static_file(&self) -> bool {
        // Scripts mapped to URLs with no file behind them are the common
        // dynamic case: answered before any string is looked at.
        if self.rec().finfo.filetype != sys::apr_filetype_e_APR_REG {
            return false;
        }
        let content_type = || text(self.rec().content_type);
        let by_type = |t: &str| !crate::dispatch::names_a_handler(t);
        match self.handler() {
            Some(h) if h == "default-handler" => true,
            // ap_invoke_handler names it the type up to any parameters.
            Some(h) => {
                by_type(&h)
                    && content_type()
                        .is_some_and(|t| t.split(';').next().map(str::trim) == Some(&*h))
            }
            None => content_type().is_none_or(|t| by_type(&t)),
        }
    }

    /// A directory that no handler claimed (httpd's `DIR_MAGIC_TYPE`,
    /// as a content type): mod_dir (in fixups, after
    /// ours) turns it into its index file's request, or mod_autoindex
    /// lists it.
    pub fn is_directory(&self) -> bool {
        self.rec().finfo.filetype == sys::apr_filetype_e_APR_DIR
            && self.handler().is_none_or(|h| h == "httpd/unix-directory")
    }

    pub fn args(&self) -> Option<Cow<'r, str>> {
        text(self.rec().args)
    }

    pub fn is_https(&self) -> bool {
        // SAFETY: the request is live; the hook returns a static string.
        let scheme = unsafe { sys::ap_run_http_scheme(self.rec()) };
        text(scheme).is_some_and(|s| s == "https")
    }

    pub fn headers_in(&self) -> Table<'r> {
        Table::new(self.rec().headers_in)
    }
    /// The trailers of a chunked request body, once it was read.
    pub fn trailers_in(&self) -> Table<'r> {
        Table::new(self.rec().trailers_in)
    }
    pub fn headers_out(&self) -> Table<'r> {
        Table::new(self.rec().headers_out)
    }
    pub fn err_headers_out(&self) -> Table<'r> {
        Table::new(self.rec().err_headers_out)
    }
    pub fn notes(&self) -> Table<'r> {
        Table::new(self.rec().notes)
    }
    pub fn subprocess_env(&self) -> Table<'r> {
        Table::new(self.rec().subprocess_env)
    }

    /// Adds an instance of mod_rsession's response filter (registered in
    /// shim.c) in the given role.
    pub fn add_out_filter(&self, role: OutFilter) {
        // SAFETY: the request and its connection are live; the handle was
        // set by register_hooks before any request and is never changed;
        // the context is one of the static markers the filter reads.
        unsafe {
            sys::ap_add_output_filter_handle(
                sys::rsession_out_filter_handle,
                role.ctx(),
                self.as_ptr(),
                self.rec().connection,
            );
        }
    }

    /// Sets the response status (before the status line goes out).
    pub fn set_status(&self, status: i32) {
        // SAFETY: the request is live and httpd lets filters and handlers
        // set r->status while the response has not begun.
        unsafe { (*self.as_ptr()).status = status };
    }

    /// The connection's interim watch, added to the connection (with its
    /// filter) the first time a request on it asks.
    pub fn interim_watch(&self) -> &'r super::conn::InterimWatch {
        // SAFETY: r->connection is live for longer than the request.
        let c = unsafe { &*self.rec().connection };
        // SAFETY: a connection's pool outlives its requests.
        let pool: Pool<'r> =
            unsafe { Pool::from_raw(c.pool) }.expect("connections always have a pool");
        super::conn::InterimWatch::of_connection(pool, self.rec().connection)
    }

    pub fn set_content_type(&self, content_type: &str) {
        let ct = self.pool().strdup(content_type);
        // SAFETY: `ct` lives in the request pool, as httpd requires.
        unsafe { sys::ap_set_content_type(self.as_ptr(), ct) };
    }

    /// Writes body bytes; false when the client went away.
    pub fn write(&self, body: &[u8]) -> bool {
        // SAFETY: the request is live and `body` is readable for its length.
        let n =
            unsafe { sys::ap_rwrite(body.as_ptr() as *const _, body.len() as _, self.as_ptr()) };
        n >= 0
    }

    pub fn is_header_only(&self) -> bool {
        self.rec().header_only != 0
    }

    /// `ap_auth_type`: the AuthType in force (mod_authn_core), if any.
    pub fn auth_type(&self) -> Option<Cow<'r, str>> {
        // SAFETY: the request is live; the result lives in the config.
        text(unsafe { sys::ap_auth_type(self.as_ptr()) })
    }

    /// `r->user`.
    pub fn user(&self) -> Option<Cow<'r, str>> {
        text(self.rec().user)
    }

    /// Sets `r->user` (a copy in the request pool).
    pub fn set_user(&self, user: &str) {
        let copy = self.pool().strdup(user) as *mut c_char;
        // SAFETY: the request is live; httpd reads r->user as a string in
        // its pool, which `copy` is.
        unsafe { (*self.as_ptr()).user = copy };
    }

    /// Clears `r->user`: no authenticated user.
    pub fn clear_user(&self) {
        // SAFETY: the request is live; httpd takes a NULL user for none.
        unsafe { (*self.as_ptr()).user = std::ptr::null_mut() };
    }

    /// Decides again whether the request may go on, running the access and
    /// auth hooks as httpd's request processing does (server/request.c,
    /// for `Satisfy All` and `Any`): OK, or the status to answer.
    pub fn authorize_again(&self) -> c_int {
        let r = self.as_ptr();
        // What httpd answers where no module decides (decl_die).
        let decided = |status: c_int| match status {
            sys::STATUS_DECLINED => sys::HTTP_INTERNAL_SERVER_ERROR as c_int,
            status => status,
        };
        let run = |hook: unsafe extern "C" fn(*mut sys::request_rec) -> c_int| {
            // SAFETY: a live main request between its auth phase and its
            // handler, where httpd's auth hooks (and ap_satisfies) may run;
            // each takes only the request.
            unsafe { hook(r) }
        };
        let any = run(sys::ap_satisfies) == sys::SATISFY_ANY as c_int;
        let access = run(sys::ap_run_access_checker);
        if any && access == sys::STATUS_OK {
            return sys::STATUS_OK;
        }
        if !any && access != sys::STATUS_OK {
            return decided(access);
        }
        let access = run(sys::ap_run_access_checker_ex);
        let needs_user = access == sys::STATUS_DECLINED
            || (access == sys::STATUS_OK && run(sys::ap_run_force_authn) == sys::STATUS_OK);
        if !needs_user {
            return access;
        }
        let status = run(sys::ap_run_check_user_id);
        if status != sys::STATUS_OK {
            return decided(status);
        }
        if self.rec().user.is_null() {
            return sys::HTTP_INTERNAL_SERVER_ERROR as c_int;
        }
        decided(run(sys::ap_run_auth_checker))
    }

    /// Sets `r->ap_auth_type` (CGI's AUTH_TYPE), as authentication modules do.
    pub fn set_auth_type_name(&self, name: &str) {
        let copy = self.pool().strdup(name) as *mut c_char;
        // SAFETY: as in set_user.
        unsafe { (*self.as_ptr()).ap_auth_type = copy };
    }

    /// The path and query of the request line, as the client sent them
    /// (not decoded; from an absolute-form target, only its path).
    pub fn request_path_and_query(&self) -> (Option<Cow<'r, str>>, Option<Cow<'r, str>>) {
        let uri = &self.rec().parsed_uri;
        (text(uri.path), text(uri.query))
    }
}

/// The roles an instance of the response filter (RSESSION_OUT) plays.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OutFilter {
    /// Decides at the response's first bytes: saves the session (the main
    /// response) or removes commands it cannot apply.
    First,
    /// After a failed save, on the error response: lets it through up to
    /// its end, then drops anything the handler still writes.
    Guard,
    /// After a failed save, where the handler's own output arrives:
    /// drops everything.
    Swallow,
}

/// What the response filter does after its first look at a response.
pub enum FirstOutput {
    /// Leave: the brigade passes on.
    Pass,
    /// The response must not go out: answer this status instead.
    Fail(i32),
}

// Distinct values: two statics alike must not share an address.
static GUARD_MARK: u8 = 1;
static SWALLOW_MARK: u8 = 2;

impl OutFilter {
    /// The filter context that stands for the role (httpd only stores it).
    pub fn ctx(self) -> *mut std::ffi::c_void {
        match self {
            OutFilter::First => std::ptr::null_mut(),
            OutFilter::Guard => &GUARD_MARK as *const u8 as *mut _,
            OutFilter::Swallow => &SWALLOW_MARK as *const u8 as *mut _,
        }
    }

    pub fn from_ctx(ctx: *mut std::ffi::c_void) -> OutFilter {
        if ctx == OutFilter::Guard.ctx() {
            OutFilter::Guard
        } else if ctx == OutFilter::Swallow.ctx() {
            OutFilter::Swallow
        } else {
            OutFilter::First
        }
    }
}

/// An `apr_table_t` of a live request.
#[derive(Clone, Copy)]
pub struct Table<'r> {
    raw: *mut sys::apr_table_t,
    _life: PhantomData<&'r sys::apr_table_t>,
}

/// A C string set under several keys and tables of one request (its
/// notes and environment hold the same id and path): copied once into the
/// request's pool, or a literal, never copied.
#[derive(Clone, Copy)]
pub struct PoolText<'r> {
    ptr: *const c_char,
    /// The pool holding the copy; null for a literal.
    pool: *mut sys::apr_pool_t,
    _life: PhantomData<&'r sys::apr_pool_t>,
}

impl PoolText<'static> {
    pub fn literal(text: &'static CStr) -> PoolText<'static> {
        PoolText {
            ptr: text.as_ptr(),
            pool: std::ptr::null_mut(),
            _life: PhantomData,
        }
    }
}

/// The bytes of a C string (empty for NULL).
fn bytes<'a>(p: *const c_char) -> &'a [u8] {
    if p.is_null() {
        return &[];
    }
    // SAFETY: table keys and values are NUL-terminated strings that live
    // as long as the table.
    unsafe { CStr::from_ptr(p) }.to_bytes()
}

/// Whether the table key `c` is `key`, ASCII case ignored, read no further
/// than the first byte that differs (a strlen of every key cost more than
/// the comparisons).
fn c_key_is(c: *const c_char, key: &[u8]) -> bool {
    for (i, &want) in key.iter().enumerate() {
        // SAFETY: `c` is a NUL-terminated table key, and bytes 0..i were
        // equal to non-NUL bytes of `key`, so byte i is still within it.
        let have = unsafe { *c.add(i) } as u8;
        if want == 0 || !have.eq_ignore_ascii_case(&want) {
            return false;
        }
    }
    // SAFETY: as above, with i = key.len().
    unsafe { *c.add(key.len()) == 0 }
}

impl<'r> Table<'r> {
    fn new(raw: *mut sys::apr_table_t) -> Table<'r> {
        Table {
            raw,
            _life: PhantomData,
        }
    }

    /// Every (key, value) entry, in order, without copying. Both are left
    /// as C strings, measured only by callers that want them: most look
    /// for one key among many entries and reject the others at their first
    /// byte.
    fn raw_entries(&self) -> impl Iterator<Item = (*const c_char, *const c_char)> {
        let (elts, n) = if self.raw.is_null() {
            (std::ptr::null(), 0)
        } else {
            // SAFETY: an apr_table_t starts with its apr_array_header_t of
            // apr_table_entry_t; the table is live and not modified while
            // the iterator is used (it borrows nothing mutable).
            let arr = unsafe { &*sys::apr_table_elts(self.raw) };
            (
                arr.elts as *const sys::apr_table_entry_t,
                arr.nelts.max(0) as usize,
            )
        };
        (0..n).filter_map(move |i| {
            // SAFETY: `i < nelts`, within the array (see above).
            let e = unsafe { &*elts.add(i) };
            (!e.key.is_null()).then_some((e.key as *const c_char, e.val as *const c_char))
        })
    }

    /// The pool that owns the table's strings.
    fn pool(&self) -> *mut sys::apr_pool_t {
        // SAFETY: as in raw_entries; the array header names its pool.
        unsafe { (*sys::apr_table_elts(self.raw)).pool }
    }

    /// A NUL-terminated copy of `b` in the table's pool (cut at a NUL).
    fn copy(&self, b: &[u8]) -> *const c_char {
        // SAFETY: the table's pool lives at least as long as the table.
        unsafe { Pool::from_raw(self.pool()) }
            .expect("tables always have a pool")
            .strdup(b)
    }

    /// Every value under `key` (ASCII case ignored), in order.
    pub fn get_all(&self, key: &str) -> Vec<Cow<'r, str>> {
        self.raw_entries()
            .filter(|&(k, _)| c_key_is(k, key.as_bytes()))
            .map(|(_, v)| bytes(v))
            .map(|v| match std::str::from_utf8(v) {
                Ok(text) => Cow::Borrowed(text),
                Err(_) => String::from_utf8_lossy(v),
            })
            .collect()
    }

    /// Replaces every value under `key`, copying both into the table's pool.
    /// Values are bytes: paths need no UTF-8 check to get here.
    pub fn set(&self, key: &str, value: impl AsRef<[u8]>) {
        let (k, v) = (self.copy(key.as_bytes()), self.copy(value.as_ref()));
        // SAFETY: live table; both strings live in its pool, as setn needs.
        unsafe { sys::apr_table_setn(self.raw, k, v) };
    }

    /// Replaces every value under the literal `key` with `value`, copying
    /// neither when the table lives in the pool that holds `value` (as a
    /// request's own tables do); into another table's pool both are copied.
    pub fn set_text(&self, key: &'static CStr, value: PoolText<'r>) {
        // SAFETY: live table; a literal key lives for ever, and `value`
        // either does too or lives in this table's own pool, as setn needs.
        // Elsewhere apr_table_set copies both into the table's pool.
        unsafe {
            if value.pool.is_null() || value.pool == self.pool() {
                sys::apr_table_setn(self.raw, key.as_ptr(), value.ptr)
            } else {
                sys::apr_table_set(self.raw, key.as_ptr(), value.ptr)
            }
        };
    }

    /// Adds one more value under `key`.
    pub fn add(&self, key: &str, value: &str) {
        let (k, v) = (self.copy(key.as_bytes()), self.copy(value.as_bytes()));
        // SAFETY: as in `set`.
        unsafe { sys::apr_table_addn(self.raw, k, v) };
    }

    pub fn unset(&self, key: &str) {
        // No key of a table holds a NUL: such a key names nothing here.
        if key.as_bytes().contains(&0) {
            return;
        }
        // A copy in the pool, not a CString: no allocation to free.
        let k = self.copy(key.as_bytes());
        // SAFETY: live table, NUL-terminated key.
        unsafe { sys::apr_table_unset(self.raw, k) };
    }

    /// Removes every entry whose key `reserved` says is ours; returns how
    /// many distinct keys went.
    pub fn unset_where(&self, reserved: impl Fn(&[u8]) -> bool) -> usize {
        let mut keys: Vec<Vec<u8>> = self
            .raw_entries()
            .map(|(k, _)| bytes(k))
            .filter(|k| reserved(k))
            .map(<[u8]>::to_vec)
            .collect();
        keys.sort();
        keys.dedup();
        for k in &keys {
            // Keys of a live table hold no NUL, so they cannot fail here.
            if let Ok(k) = CString::new(k.as_slice()) {
                // SAFETY: live table, NUL-terminated key.
                unsafe { sys::apr_table_unset(self.raw, k.as_ptr()) };
            }
        }
        keys.len()
    }
}

/// The typed slots of one request: values of any type, found by type,
/// dropped (newest first, each under its own panic guard) when the
/// request's pool goes, after logging, even on aborts.
struct Slots {
    values: RefCell<Vec<Box<dyn Any>>>,
    /// The pool it is attached to: a request_rec copied into another pool
    /// (httpd never does; a module could) shares the vector, not the pool,
    /// and must not find it.
    pool: *mut sys::apr_pool_t,
    /// The `request_config` that points here (null: pool userdata does),
    /// cleared once the values are gone, so that nothing later in the
    /// pool's cleanup finds a dropped Slots.
    vector: *mut sys::ap_conf_vector_t,
}

impl Drop for Slots {
    fn drop(&mut self) {
        loop {
            // The borrow ends before the value's Drop runs, which may look
            // at the slots again.
            let Some(value) = self.values.borrow_mut().pop() else {
                break;
            };
            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| drop(value)));
        }
        if !self.vector.is_null() {
            let me = self as *mut Slots as *mut std::ffi::c_void;
            // SAFETY: the vector lives in the same pool as this Slots, whose
            // cleanups run before its memory goes; only our entry changes,
            // and only if it still names this Slots.
            unsafe {
                if super::module::module_config(self.vector) == me {
                    super::module::set_module_config(self.vector, std::ptr::null_mut());
                }
            }
        }
    }
}

/// Pool userdata key of a pool's `Slots`, for a request without a
/// `request_config` vector (none of httpd's own; a module's hand-made one).
const SLOTS_KEY: &CStr = c"rsession:request-slots";

impl<'r> Request<'r> {
    /// Our entry of `r->request_config` (one pointer per module, indexed by
    /// module_index: no hashing, unlike pool userdata), which holds this
    /// request's `Slots` once something was kept. An internal redirect's
    /// request has a vector of its own (and shares the pool), so callers
    /// that share state along a chain keep it on `initial()`.
    fn slots(&self) -> Option<&'r Slots> {
        let vector = self.rec().request_config;
        let p = if vector.is_null() {
            self.pool().userdata(SLOTS_KEY)
        } else {
            // SAFETY: request_config is this live request's vector.
            unsafe { super::module::module_config(vector) }
        } as *const Slots;
        // SAFETY: only `slots_or_new` stores there, always a Slots
        // attached to the pool it names, and Slots::drop clears the entry:
        // a Slots of this request's own pool lives as long as it (so for 'r).
        let slots = unsafe { p.as_ref() }?;
        (slots.pool == self.pool().as_ptr()).then_some(slots)
    }

    fn slots_or_new(&self) -> &'r Slots {
        if let Some(slots) = self.slots() {
            return slots;
        }
        let pool = self.pool();
        let vector = self.rec().request_config;
        let p = pool.attach(Slots {
            values: RefCell::new(Vec::new()),
            pool: pool.as_ptr(),
            vector,
        });
        if vector.is_null() {
            pool.set_userdata(SLOTS_KEY, p as *mut std::ffi::c_void);
        } else {
            // SAFETY: the vector is this live request's; the Slots lives in
            // its pool and clears the entry when it goes.
            unsafe { super::module::set_module_config(vector, p as *mut std::ffi::c_void) };
        }
        // SAFETY: `attach` returned a live pointer owned by the pool.
        unsafe { &*p }
    }

    /// The value of type `T` kept on this request (its `request_rec`, not
    /// its pool: an internal redirect's request has slots of its own), if
    /// any (the newest, if it was set more than once).
    pub fn slot<T: 'static>(&self) -> Option<&'r T> {
        let slots = self.slots()?;
        let found = slots
            .values
            .borrow()
            .iter()
            .rev()
            .find_map(|v| v.downcast_ref::<T>())
            .map(|v| v as *const T)?;
        // SAFETY: the value is boxed, so it stays where it is while the
        // vector grows, and no box leaves the vector before the pool's
        // cleanup drops the Slots: it lives for 'r.
        Some(unsafe { &*found })
    }

    /// Keeps `value` on this request, where `slot::<T>()` finds it; it is
    /// dropped when the request's pool goes. An earlier value of the type stays
    /// alive (and is dropped) with the pool too, but is no longer found.
    pub fn set_slot<T: 'static>(&self, value: T) -> &'r T {
        let boxed = Box::new(value);
        let p: *const T = &*boxed;
        self.slots_or_new().values.borrow_mut().push(boxed);
        // SAFETY: as in `slot`: the box now belongs to the pool's Slots.
        unsafe { &*p }
    }
}
