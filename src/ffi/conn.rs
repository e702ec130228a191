//! The connection's interim watch. Interim responses (1xx) go straight to
//! the connection's filters, and after a `101` mod_proxy tunnels bytes
//! there too, so no request filter sees them. While a request holds a
//! live session, the RSESSION_INTERIM filter reads what passes with
//! `interim::Interim`; otherwise it only passes brigades on.

use super::bucket::{Brigade, Kind};
use super::pool::Pool;
use super::request::Request;
use super::sys;
use crate::interim::{Event, Interim};
use std::cell::{Cell, RefCell};
use std::ffi::{c_void, CStr};

const WATCH_KEY: &CStr = c"rsession:interim-watch";

/// What a connection's RSESSION_INTERIM filter knows (its context).
pub struct InterimWatch {
    /// The connection pool it lives in: a conn_rec some module copied,
    /// config vector and all, must not take another connection's watch.
    pool: *mut sys::apr_pool_t,
    /// The initial request whose live session arms the watch; null when
    /// idle. A cleanup on that request's pool clears it before it goes.
    armed: Cell<*mut sys::request_rec>,
    parser: RefCell<Option<Interim>>,
    header: RefCell<String>,
}

/// Clears the watch when its request's pool goes (only if it is still
/// that request's: a pipelined next request may have armed it since).
struct Disarm {
    watch: *const InterimWatch,
    request: *mut sys::request_rec,
}

impl Drop for Disarm {
    fn drop(&mut self) {
        // SAFETY: the watch lives in the connection's pool, a parent of the
        // request pool whose cleanup runs this.
        unsafe { &*self.watch }.disarm_raw(self.request);
    }
}

impl InterimWatch {
    /// The connection's watch; the first call creates it in the
    /// connection's pool and adds the filter to the connection. It is
    /// found through our entry of the connection's config vector (an
    /// index, where pool userdata would hash a key on every request), or
    /// pool userdata for a connection some module made without one.
    pub fn of_connection<'c>(pool: Pool<'c>, c: *mut sys::conn_rec) -> &'c InterimWatch {
        // SAFETY: the connection is live for 'c.
        let vector = unsafe { (*c).conn_config };
        let found = if vector.is_null() {
            pool.userdata(WATCH_KEY)
        } else {
            // SAFETY: a live connection's vector, of this generation.
            unsafe { super::module::module_config(vector) }
        } as *const InterimWatch;
        // SAFETY: only this function stores our entry of a connection's
        // vector and WATCH_KEY, always an InterimWatch attached to the pool
        // of the connection that owns the vector.
        if let Some(w) = unsafe { found.as_ref() } {
            if w.pool == pool.as_ptr() {
                return w;
            }
        }
        let w = pool.attach(InterimWatch {
            pool: pool.as_ptr(),
            armed: Cell::default(),
            parser: RefCell::default(),
            header: RefCell::default(),
        });
        if vector.is_null() {
            pool.set_userdata(WATCH_KEY, w as *mut c_void);
        } else {
            // SAFETY: as above; the watch lives as long as the connection's
            // pool, which holds the vector too.
            unsafe { super::module::set_module_config(vector, w as *mut c_void) };
        }
        // SAFETY: the connection is live; the handle was set at
        // register_hooks; the context lives as long as the connection.
        unsafe {
            sys::ap_add_output_filter_handle(
                sys::rsession_interim_filter_handle,
                w as *mut c_void,
                std::ptr::null_mut(),
                c,
            );
            &*w
        }
    }

    /// Watches for interim responses on behalf of `initial`'s session,
    /// removing `header` from them.
    pub fn arm(&self, initial: Request<'_>, header: &str) {
        if self.armed.get() == initial.as_ptr() {
            // Armed again by an internal redirect, whose location may
            // name another header: that one goes too.
            if let Some(parser) = self.parser.borrow_mut().as_mut() {
                parser.also_strip(header);
            }
            return;
        }
        self.armed.set(initial.as_ptr());
        // The connection's earlier requests leave their buffers to reuse.
        let mut parser = self.parser.borrow_mut();
        match parser.as_mut() {
            Some(parser) => parser.restart(header),
            None => *parser = Some(Interim::new(header)),
        }
        drop(parser);
        let mut name = self.header.borrow_mut();
        name.clear();
        name.push_str(header);
        initial.pool().attach(Disarm {
            watch: self,
            request: initial.as_ptr(),
        });
    }

    /// Stops watching for `initial` (its final response is under way).
    pub fn disarm(&self, initial: Request<'_>) {
        self.disarm_raw(initial.as_ptr());
    }

    fn disarm_raw(&self, request: *mut sys::request_rec) {
        // The parser stays for the connection's next request to restart:
        // nothing reads it while the watch is disarmed.
        if self.armed.get() == request {
            self.armed.set(std::ptr::null_mut());
        }
    }

    /// Whether a brigade must be read (cheap: the normal path's only cost).
    pub fn is_watching(&self) -> bool {
        !self.armed.get().is_null()
            && self
                .parser
                .try_borrow()
                .is_ok_and(|p| p.as_ref().is_some_and(|p| !p.is_done()))
    }

    /// The request the watch is armed for.
    pub fn request(&self) -> Option<Request<'_>> {
        // SAFETY: an armed pointer is a live request: the Disarm cleanup
        // on its pool clears it first.
        unsafe { Request::from_raw(self.armed.get()) }
    }

    /// Ends the watch for the armed request (after a panic, for one).
    pub fn abandon(&self) {
        self.disarm_raw(self.armed.get());
    }

    /// Reads the memory buckets of `bb` through the parser and puts back
    /// what may go to the client. `on_event(request, header, event)` hears
    /// of each interim block and returns header lines to add to it. Never
    /// reads a file, pipe or socket bucket: one ends the watch.
    pub fn inspect(&self, bb: &Brigade<'_>, on_event: fn(Request<'_>, &str, Event) -> Vec<String>) {
        let Some(req) = self.request() else {
            return;
        };
        let Ok(mut slot) = self.parser.try_borrow_mut() else {
            return;
        };
        let Some(parser) = slot.as_mut() else {
            return;
        };
        let header = self.header.borrow();
        let mut event = |e: Event| on_event(req, &header, e);
        let mut out = Vec::new();
        let mut cur = bb.first();
        while let Some(b) = cur {
            if parser.is_done() {
                break;
            }
            cur = bb.next(b);
            out.clear();
            match bb.kind(b) {
                Kind::Memory => match bb.bytes(b) {
                    Some(data) => {
                        parser.feed(data, &mut out, &mut event);
                        if out != data {
                            bb.insert_before(b, &out);
                            bb.delete(b);
                        }
                    }
                    None => {
                        parser.finish(&mut out);
                        bb.insert_before(b, &out);
                    }
                },
                Kind::OtherData => {
                    parser.finish(&mut out);
                    bb.insert_before(b, &out);
                }
                Kind::Eos | Kind::Flush | Kind::OtherMeta => {
                    parser.give_up(&mut out);
                    bb.insert_before(b, &out);
                }
            }
        }
    }
}
