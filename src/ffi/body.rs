//! Request bodies through httpd's input filters: read whole before a
//! handler runs, and replayed to it by an input filter of ours.

use super::bucket::Brigade;
use super::request::Request;
use super::sys;
use crate::body::Spool;
use std::ffi::c_void;

/// Largest piece asked of the input filters (and handed out) at once.
const PIECE: usize = 64 * 1024;

pub enum BodyError {
    /// The client's body was refused (too large, malformed, timed out):
    /// the HTTP status to answer, as httpd maps it.
    Client(i32),
    /// Keeping what arrived failed.
    Keep(std::io::Error),
}

impl<'r> Request<'r> {
    /// Whether the client announced a body (chunked or a non-zero length).
    pub fn has_body(&self) -> bool {
        let headers = self.headers_in();
        !headers.get_all("Transfer-Encoding").is_empty()
            || headers
                .get_all("Content-Length")
                .iter()
                .any(|v| v.trim().parse::<u64>().map_or(true, |n| n > 0))
    }

    /// Reads the whole body through the request's input filters, handing
    /// each piece to `keep`.
    pub fn read_body(
        &self,
        mut keep: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), BodyError> {
        let rec = self.as_ptr();
        // SAFETY: the request and its connection are live for this call;
        // the brigade lives in the request pool.
        let bb = unsafe {
            sys::apr_brigade_create(self.pool().as_ptr(), (*(*rec).connection).bucket_alloc)
        };
        let mut buf = vec![0u8; PIECE];
        loop {
            // SAFETY: a live request's input filter chain and our brigade.
            let rv = unsafe {
                sys::ap_get_brigade(
                    (*rec).input_filters,
                    bb,
                    sys::ap_input_mode_t_AP_MODE_READBYTES,
                    sys::apr_read_type_e_APR_BLOCK_READ,
                    PIECE as sys::apr_off_t,
                )
            };
            if rv != sys::STATUS_SUCCESS {
                // SAFETY: maps a status code; no pointers.
                let status = unsafe { sys::ap_map_http_request_error(rv, 400) };
                // SAFETY: our brigade, emptied before returning.
                unsafe { sys::apr_brigade_cleanup(bb as *mut c_void) };
                return Err(BodyError::Client(status));
            }
            let mut len = buf.len() as sys::apr_size_t;
            // SAFETY: our brigade, live and changed by no one else here.
            let eos = unsafe { Brigade::from_raw(bb) }.is_some_and(|b| b.has_eos());
            // SAFETY: flattens our live brigade into `buf`, at most `len`
            // bytes (READBYTES returned at most PIECE).
            let flat =
                unsafe { sys::apr_brigade_flatten(bb, buf.as_mut_ptr() as *mut _, &mut len) };
            // SAFETY: our brigade; its buckets were copied out above.
            unsafe { sys::apr_brigade_cleanup(bb as *mut c_void) };
            if flat != sys::STATUS_SUCCESS {
                return Err(BodyError::Client(400));
            }
            keep(&buf[..len as usize]).map_err(BodyError::Keep)?;
            if eos {
                return Ok(());
            }
        }
    }

    /// Whether a body was spooled for this request or one it was
    /// redirected from (they share the pool).
    pub fn body_is_spooled(&self) -> bool {
        !self.pool().userdata(SPOOL_KEY).is_null()
    }

    /// Drops the body of a request answered without it (an error
    /// document's): httpd reads it off the connection now, or marks the
    /// connection to close where it will not, and the handler then reads
    /// an empty body, never the network.
    pub fn discard_body(&self) {
        // SAFETY: a live request; httpd's own discard, which reads through
        // its input filters and only touches the request and connection.
        unsafe { sys::ap_discard_request_body(self.as_ptr()) };
        self.replay_body(Spool::new());
    }

    /// Puts `spool` before the handler: it reads the body from there. The
    /// spool lives in the request pool.
    pub fn replay_body(&self, spool: Spool) {
        let ctx = self.pool().attach(spool) as *mut c_void;
        // Found again by the requests an internal redirect makes of this
        // one (`replay_body_after_redirect`); they share its pool.
        self.pool().set_userdata(SPOOL_KEY, ctx);
        self.add_replay_filter(ctx);
    }

    /// Puts the body spooled for the chain's initial request (if any)
    /// before this request too (its post_read_request). An internal redirect (mod_rewrite
    /// in a directory, ErrorDocument) starts from the protocol's input
    /// filters only, so without this its handler would find the body gone:
    /// it was read from the network already. The two share one spool, so
    /// what the first handler read is not read again.
    pub fn replay_body_after_redirect(&self) {
        if self.prev().is_none() || !self.is_main() {
            return;
        }
        let ctx = self.initial().pool().userdata(SPOOL_KEY);
        if !ctx.is_null() {
            self.add_replay_filter(ctx);
        }
    }

    fn add_replay_filter(&self, ctx: *mut c_void) {
        // SAFETY: the request and connection are live; the handle was set
        // by register_hooks; `ctx` is a Spool attached to the pool of the
        // chain's initial request, which every request of it shares or
        // is outlived by.
        unsafe {
            sys::ap_add_input_filter_handle(
                sys::rsession_body_filter_handle,
                ctx,
                self.as_ptr(),
                (*self.as_ptr()).connection,
            );
        }
    }
}

/// Pool userdata key of the spooled body.
const SPOOL_KEY: &std::ffi::CStr = c"rsession-body-spool";

/// The replay filter's body (see `Request::replay_body`).
///
/// # Safety
/// `f` and `bb` are the live filter and brigade httpd passes.
pub unsafe fn replay(
    f: *mut sys::ap_filter_t,
    bb: *mut sys::apr_bucket_brigade,
    mode: sys::ap_input_mode_t,
    block: sys::apr_read_type_e,
    readbytes: sys::apr_off_t,
) -> sys::apr_status_t {
    // SAFETY: the filter is live; ctx is the Spool `replay_body` attached
    // to the request pool (or null).
    let spool = unsafe { ((*f).ctx as *mut Spool).as_mut() };
    let ours = matches!(
        mode,
        sys::ap_input_mode_t_AP_MODE_READBYTES
            | sys::ap_input_mode_t_AP_MODE_GETLINE
            | sys::ap_input_mode_t_AP_MODE_SPECULATIVE
            | sys::ap_input_mode_t_AP_MODE_EXHAUSTIVE
    );
    let Some(spool) = spool.filter(|_| ours) else {
        // SAFETY: as above; passing the call on is the filter contract.
        return unsafe { sys::ap_get_brigade((*f).next, bb, mode, block, readbytes) };
    };
    if spool.is_drained() {
        // The body ends here, never below: what httpd's own body filter
        // still holds is a body the request must not see (an error
        // document's, discarded where httpd would not read it).
        // SAFETY: bb is the live brigade httpd passed.
        if let Some(bb) = unsafe { Brigade::from_raw(bb) } {
            bb.append_eos();
        }
        return sys::STATUS_SUCCESS;
    }
    let max = match readbytes {
        n if n > 0 => (n as usize).min(PIECE),
        _ => PIECE,
    };
    let line = mode == sys::ap_input_mode_t_AP_MODE_GETLINE;
    let consume = mode != sys::ap_input_mode_t_AP_MODE_SPECULATIVE;
    match spool.read(max, line, consume) {
        Ok(bytes) => {
            // SAFETY: live brigade; APR copies the bytes into it.
            unsafe {
                sys::apr_brigade_write(
                    bb,
                    None,
                    std::ptr::null_mut(),
                    bytes.as_ptr() as *const _,
                    bytes.len() as sys::apr_size_t,
                )
            }
        }
        Err(_) => sys::STATUS_EGENERAL,
    }
}
