//! Safe views of `server_rec` and of the config in its slot for us.

use super::module::module_config;
use super::pool::{tagged_mut, tagged_ref, Pool};
use super::sys;
use std::ffi::{CStr, CString};
use std::marker::PhantomData;
use std::path::PathBuf;
use std::ptr::NonNull;

#[derive(Clone, Copy)]
pub struct Server<'s> {
    raw: NonNull<sys::server_rec>,
    _life: PhantomData<&'s sys::server_rec>,
}

impl<'s> Server<'s> {
    /// # Safety
    /// `raw` must be a server_rec of the current generation, alive for `'s`.
    pub unsafe fn from_raw(raw: *mut sys::server_rec) -> Option<Server<'s>> {
        NonNull::new(raw).map(|raw| Server {
            raw,
            _life: PhantomData,
        })
    }

    pub fn as_ptr(&self) -> *mut sys::server_rec {
        self.raw.as_ptr()
    }

    fn rec(&self) -> &'s sys::server_rec {
        // SAFETY: live for 's (from_raw's contract); read only.
        unsafe { self.raw.as_ref() }
    }

    /// The descriptor of this server's error log file, if it has one
    /// (not syslog), for a process the parent starts to keep.
    pub fn error_log_fd(&self) -> Option<std::os::fd::RawFd> {
        let file = self.rec().error_log;
        if file.is_null() {
            return None;
        }
        let mut fd: std::os::fd::RawFd = -1;
        // SAFETY: `file` is the server's open apr_file_t (httpd opened it
        // before post_config); apr_os_file_get only reads its descriptor.
        let status = unsafe { sys::apr_os_file_get(&mut fd, file) };
        (status == sys::STATUS_SUCCESS && fd >= 0).then_some(fd)
    }

    pub fn is_virtual(&self) -> bool {
        self.rec().is_virtual != 0
    }

    /// Our config in this server's config vector, made by the module's
    /// create/merge_server_config as a `C` (`ffi::config`).
    pub fn config<C: 'static>(&self) -> &'s C {
        // SAFETY: module_config is a live vector; our slot holds a tagged
        // config made by create/merge_server_config in pconf, which
        // outlives every hook of this generation.
        unsafe { tagged_ref::<C>(module_config(self.rec().module_config)) }
            .expect("every server has our config")
    }

    /// The config, mutable: for directive handlers only (single-threaded
    /// config reading, before any request).
    #[allow(clippy::mut_from_ref)]
    pub fn config_mut<C: 'static>(&self) -> &'s mut C {
        // SAFETY: as in `config`; httpd reads configuration on one thread
        // and no request holds a reference yet.
        unsafe { tagged_mut::<C>(module_config(self.rec().module_config)) }
            .expect("every server has our config")
    }

    /// The httpd process's own pool: it lives until the process exits,
    /// across every restart.
    pub fn process_pool(&self) -> Option<Pool<'static>> {
        // SAFETY: every server_rec points at the one live process_rec,
        // whose pool is destroyed only when httpd exits.
        unsafe {
            let process = self.rec().process.as_ref()?;
            Pool::from_raw(process.pool)
        }
    }

    /// This server and every virtual host after it.
    pub fn iter(self) -> impl Iterator<Item = Server<'s>> {
        std::iter::successors(Some(self), |s| {
            // SAFETY: `next` links live server_recs of the same generation.
            unsafe { Server::from_raw(s.rec().next) }
        })
    }

    pub fn name(&self) -> String {
        let p = self.rec().server_hostname;
        if p.is_null() {
            return "(unnamed)".into();
        }
        // SAFETY: NUL-terminated string owned by pconf.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// `ap_runtime_dir_relative`: `name` under DefaultRuntimeDir.
pub fn runtime_dir_path(pool: Pool<'_>, name: &str) -> PathBuf {
    let name = CString::new(name).unwrap_or_default();
    // SAFETY: `pool` is live (ptemp) and `name` is NUL-terminated; the
    // result is a pool string we copy at once.
    let p = unsafe { sys::ap_runtime_dir_relative(pool.as_ptr(), name.as_ptr()) };
    if p.is_null() {
        return PathBuf::from("/var/run/apache2").join(name.to_string_lossy().as_ref());
    }
    // SAFETY: a NUL-terminated pool string, copied before the pool goes.
    PathBuf::from(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// The uid and gid children switch to (`User`, `Group`).
pub fn child_user() -> (u32, u32) {
    // SAFETY: mod_unixd fills ap_unixd_config while reading the config,
    // before post_config; we only read it.
    unsafe {
        let c = &*std::ptr::addr_of!(sys::ap_unixd_config);
        (c.user_id, c.group_id)
    }
}

/// True while starting up (the pass whose config is thrown away), when
/// post_config must do nothing lasting.
pub fn is_first_startup_pass() -> bool {
    // SAFETY: a plain query of httpd's state, valid in any hook.
    unsafe {
        sys::ap_state_query(sys::AP_SQ_MAIN_STATE as i32) == sys::AP_SQ_MS_CREATE_PRE_CONFIG as i32
    }
}

/// Running as root (the parent before it forks, in a normal start).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
