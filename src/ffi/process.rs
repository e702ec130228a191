//! Processes the parent starts for work that needs root's sight but must
//! not run with root's powers (the scratch reaper, `reaper.rs`).

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, setgid, setgroups, setsid, setuid, ForkResult, Gid, Uid};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

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
                if close_inherited(keep) {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
                }
            }
            // SAFETY: leaves without running the parent's atexit handlers
            // or destructors, which belong to httpd.
            unsafe { libc::_exit(0) }
        }
    }
}

/// Closes every descriptor from 3 up but `keep`; false if that could
/// not be done (the caller then does no work).
fn close_inherited(keep: Option<RawFd>) -> bool {
    let keep = keep
        .and_then(|k| libc::c_uint::try_from(k).ok())
        .filter(|&k| k >= 3);
    let ranges = match keep {
        Some(k) => [(3, k - 1), (k + 1, libc::c_uint::MAX)],
        None => [(3, libc::c_uint::MAX), (1, 0)],
    };
    let mut closed = true;
    for (first, last) in ranges {
        if first <= last {
            // SAFETY: closes descriptors this new process owns and nothing
            // here uses (it reopens what it needs).
            closed &= unsafe { libc::close_range(first, last, 0) } == 0;
        }
    }
    if closed {
        return true;
    }
    // Kernels before 5.9, or a filter refusing close_range: one by one.
    let Ok(listed) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    let open: Vec<RawFd> = listed
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open {
        if fd >= 3 && Some(fd) != keep.map(|k| k as RawFd) {
            // SAFETY: as above, one descriptor of this process.
            unsafe { libc::close(fd) };
        }
    }
    true
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

/// How long one owner's removal may take before it is killed (a member
/// can stop its own process with SIGSTOP; the reaper must not wait for it
/// forever, holding its lock).
const OWNER_LIMIT: Duration = Duration::from_secs(60);

/// Runs `remove(dir, name)` in a child process that has become the user
/// `uid` with the groups `groups` (the first one its primary), keeps no
/// descriptor but a fresh one of `dir`, cannot be attached to (not
/// dumpable), and is killed after `OWNER_LIMIT`; waits for it. `false`
/// when that identity could not be taken, is root's, or the removal did
/// not end in time.
pub fn as_owner(
    uid: u32,
    groups: &[u32],
    dir: BorrowedFd<'_>,
    name: &OsStr,
    remove: impl FnOnce(BorrowedFd<'_>, &OsStr),
) -> io::Result<bool> {
    let Some(&primary) = groups.first() else {
        return Ok(false);
    };
    if uid == 0 {
        return Ok(false);
    }
    // SAFETY: called only in a reaper process (single-threaded).
    match unsafe { fork() }.map_err(io::Error::from)? {
        ForkResult::Parent { child } => wait_bounded(child, OWNER_LIMIT),
        ForkResult::Child => {
            // A description of its own (the reaper's holds the lock) and
            // nothing else of the parent's.
            let fresh = nix::fcntl::openat(
                dir,
                ".",
                nix::fcntl::OFlag::O_RDONLY
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            );
            let mut code = 1;
            if let Ok(fresh) = fresh {
                let kept = fresh.as_raw_fd();
                // Not root (httpd started by a user): only that user itself.
                let already = nix::unistd::geteuid().as_raw() == uid;
                let gids: Vec<Gid> = groups.iter().map(|&g| Gid::from_raw(g)).collect();
                let became = close_inherited(Some(kept))
                    && (already
                        || setgroups(&gids).is_ok()
                            && setgid(Gid::from_raw(primary)).is_ok()
                            && setuid(Uid::from_raw(uid)).is_ok())
                    && nix::unistd::geteuid().as_raw() == uid
                    && nix::unistd::getuid().as_raw() == uid;
                // SAFETY: a plain prctl on this process; setuid resets
                // dumpability to fs.suid_dumpable, which may allow it.
                let sealed = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } == 0;
                if became && sealed {
                    let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        remove(fresh.as_fd(), name)
                    }));
                    code = i32::from(done.is_err());
                }
            }
            // SAFETY: as in spawn_detached.
            unsafe { libc::_exit(code) }
        }
    }
}

/// Waits for `child` until `limit`, then kills it (stopped or not) and
/// reaps it: true only for a clean exit in time.
fn wait_bounded(child: nix::unistd::Pid, limit: Duration) -> io::Result<bool> {
    use nix::sys::wait::WaitPidFlag;
    let deadline = Instant::now() + limit;
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)).map_err(io::Error::from)? {
            WaitStatus::Exited(_, code) => return Ok(code == 0),
            WaitStatus::Signaled(..) => return Ok(false),
            _ if Instant::now() >= deadline => {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                return Ok(false);
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Puts the calling thread (and the threads it starts later, which
/// inherit it) under `SCHED_IDLE`: it runs only on a CPU that nothing of
/// normal priority wants, so background work never delays a request the
/// way a busy thread of equal weight does (a `nice` value only shrinks its
/// share). Lowering one's own policy needs no privilege.
pub fn run_this_thread_when_idle() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread; `param` is a valid
    // sched_param that lives across the call, which only reads it.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
