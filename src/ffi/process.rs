//! Processes the parent starts for work that needs root's sight but must
//! not run with root's powers (the scratch reaper, `reaper.rs`).

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, setgid, setgroups, setsid, setuid, ForkResult, Gid, Uid};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};

/// Runs `work` in a new process that is not httpd's child (forked twice,
/// so the MPM never sees it exit and nothing waits for it): its own
/// session, default signal handling, and no descriptor of the parent but
/// stdin, stdout, stderr and `keep` (the error log), so it holds no
/// listening socket across a restart. Returns once the first fork is
/// reaped, at once.
pub fn spawn_detached(keep: Option<RawFd>, work: impl FnOnce()) -> io::Result<()> {
    // SAFETY: httpd's parent is single-threaded where the monitor hook runs
    // (the MPM's main loop); the child only forks again and exits.
    match unsafe { fork() }.map_err(io::Error::from)? {
        ForkResult::Parent { child } => {
            let _ = waitpid(child, None);
            Ok(())
        }
        ForkResult::Child => {
            // SAFETY: as above: a single-threaded copy of the parent.
            if let Ok(ForkResult::Child) = unsafe { fork() } {
                let _ = setsid();
                reset_signals();
                close_inherited(keep);
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            }
            // SAFETY: leaves without running the parent's atexit handlers
            // or destructors, which belong to httpd.
            unsafe { libc::_exit(0) }
        }
    }
}

/// Closes every descriptor from 3 up but `keep`.
fn close_inherited(keep: Option<RawFd>) {
    let ranges = match keep
        .and_then(|k| libc::c_uint::try_from(k).ok())
        .filter(|&k| k >= 3)
    {
        Some(k) => [(3, k - 1), (k + 1, libc::c_uint::MAX)],
        None => [(3, libc::c_uint::MAX), (1, 0)],
    };
    for (first, last) in ranges {
        if first <= last {
            // SAFETY: closes descriptors this new process owns and nothing
            // here uses (it reopens what it needs by path).
            unsafe { libc::close_range(first, last, 0) };
        }
    }
}

/// httpd's handlers and mask are the parent's: a reaper takes the
/// defaults, so SIGTERM ends it and `waitpid` sees its own children.
fn reset_signals() {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for signal in Signal::iterator() {
        if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing the default disposition has no handler to
        // make safe.
        let _ = unsafe { sigaction(signal, &default) };
    }
    let _ = SigSet::empty().thread_set_mask();
}

/// Runs `remove(dir, name)` in a child process that has become the user
/// `uid` with group `gid` (and no other group) and waits for it; `false`
/// when that identity could not be taken or is root's. `dir` is inherited,
/// opened by the caller.
pub fn as_owner(
    uid: u32,
    gid: u32,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    remove: fn(BorrowedFd<'_>, &OsStr),
) -> io::Result<bool> {
    if uid == 0 {
        return Ok(false);
    }
    // SAFETY: called only in a reaper process (single-threaded).
    match unsafe { fork() }.map_err(io::Error::from)? {
        ForkResult::Parent { child } => match waitpid(child, None).map_err(io::Error::from)? {
            WaitStatus::Exited(_, 0) => Ok(true),
            _ => Ok(false),
        },
        ForkResult::Child => {
            // Not root (httpd started by a user): only that user itself.
            let already = nix::unistd::geteuid().as_raw() == uid;
            let became = already
                || setgroups(&[Gid::from_raw(gid)]).is_ok()
                    && setgid(Gid::from_raw(gid)).is_ok()
                    && setuid(Uid::from_raw(uid)).is_ok()
                    && nix::unistd::geteuid().as_raw() == uid
                    && nix::unistd::getuid().as_raw() == uid;
            let code = if became {
                let done =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| remove(dir, name)));
                i32::from(done.is_err())
            } else {
                1
            };
            // SAFETY: as in spawn_detached.
            unsafe { libc::_exit(code) }
        }
    }
}
