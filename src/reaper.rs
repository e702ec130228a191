//! The reaper of shared scratch directories (`RSessionScratchGroup`).
//!
//! Members of the group (php-fpm pools, suEXEC users) write into session
//! directories as themselves; a subdirectory one of them made `chmod 700`
//! is theirs alone, and `User` cannot empty it. Such a session directory
//! is moved to `<tag>/.reap` by whoever failed to remove it (`scratch.rs`).
//! The parent, which runs as root, starts a reaper process for it (see the
//! monitor hook); the reaper only *looks* as root (directories opened
//! without following links, never written) and removes as the owners of
//! what it finds: for each owner it forks a process that takes that user's
//! identity and removes what that user can, round after round until the
//! tree is gone. It never acts as root, nor as a user who is neither
//! `User` nor a member of the group, so it can do nothing those users
//! could not do themselves.

use crate::safe_fs;
use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// One store's `.reap` directory and who may empty it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReapJob {
    pub reap_dir: PathBuf,
    /// `RSessionScratchGroup`'s gid.
    pub gid: u32,
    /// `User`'s uid.
    pub user: u32,
}

/// Removes, as the user `uid` (group `gid`), what that user can of
/// `name` in `dir`; `Ok(false)` when the identity could not be taken.
pub type AsOwner<'a> = &'a dyn Fn(u32, u32, BorrowedFd<'_>, &OsStr) -> io::Result<bool>;

/// Rounds per directory: each one removes at least the deepest level of
/// another owner's directories, so this bounds the nesting of owners.
const ROUNDS: usize = 8;
/// Entries looked at per tree, at most, when finding its owners.
const WALK_LIMIT: usize = 200_000;
/// A reaper gives up (the next one goes on) after this long.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// How many directories wait in `job`'s `.reap` (a cheap check for the
/// parent, once per monitor run).
pub fn pending(job: &ReapJob) -> usize {
    match safe_fs::open_dir(&job.reap_dir) {
        Ok(Some(fd)) => safe_fs::list(&fd).map_or(0, |names| names.len()),
        _ => 0,
    }
}

/// Whether the parent should start a reaper for `job`, which has `waiting`
/// directories in `.reap`: at once when that number grew since the last
/// start, else at most once every `RETRY` (what stayed is logged each
/// time, not every monitor run).
pub fn due(last: &mut Option<(Instant, usize)>, waiting: usize, now: Instant) -> bool {
    const RETRY: Duration = Duration::from_secs(300);
    let due = waiting > 0
        && match *last {
            None => true,
            Some((at, seen)) => waiting > seen || now.duration_since(at) >= RETRY,
        };
    if due {
        *last = Some((now, waiting));
    } else if waiting < last.map_or(0, |(_, seen)| seen) {
        *last = last.map(|(at, _)| (at, waiting));
    }
    due
}

/// Empties each job's `.reap` as far as its owners allow. Returns lines
/// for the log: what stayed, and why.
pub fn run(jobs: &[ReapJob], as_owner: AsOwner<'_>) -> Vec<String> {
    let started = Instant::now();
    let mut notes = Vec::new();
    for job in jobs {
        let Ok(Some(reap)) = safe_fs::open_dir(&job.reap_dir) else {
            continue;
        };
        // One reaper per directory at a time; a busy lock means another
        // is at work.
        let Ok(reap) = nix::fcntl::Flock::lock(reap, nix::fcntl::FlockArg::LockExclusiveNonblock)
        else {
            continue;
        };
        let Ok(names) = safe_fs::list(&*reap) else {
            continue;
        };
        for name in names {
            if started.elapsed() > RUN_LIMIT {
                return notes;
            }
            if let Err(why) = reap_one(job, reap.as_fd(), &name, as_owner) {
                notes.push(format!(
                    "RS0140 cannot remove {}/{}: {why}",
                    job.reap_dir.display(),
                    shown(&name)
                ));
            }
        }
    }
    notes
}

/// A `.reap` entry's name for the log: a session id, so only its start
/// (the log must never hold a whole id).
fn shown(name: &OsStr) -> String {
    let text = name.to_string_lossy();
    match text.get(..8) {
        Some(start) if text.len() > 8 => format!("{start}..."),
        _ => text.into_owned(),
    }
}

/// Removes `name` in the `.reap` directory `reap`, owner by owner.
fn reap_one(
    job: &ReapJob,
    reap: BorrowedFd<'_>,
    name: &OsStr,
    as_owner: AsOwner<'_>,
) -> Result<(), String> {
    let mut refused: BTreeSet<u32> = BTreeSet::new();
    for _ in 0..ROUNDS {
        let owners = match directory_owners(reap, name) {
            Ok(Some(owners)) => owners,
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("cannot look inside: {e}")),
        };
        let mut acted = false;
        // `User` last: it removes the top once the others emptied theirs.
        let order = owners
            .iter()
            .copied()
            .filter(|&u| u != job.user)
            .chain([job.user]);
        for uid in order {
            if uid == 0 || (uid != job.user && !is_member(uid, job.gid)) {
                refused.insert(uid);
                continue;
            }
            if as_owner(uid, job.gid, reap, name).unwrap_or(false) {
                acted = true;
            }
        }
        if !acted {
            break;
        }
    }
    match directory_owners(reap, name) {
        Ok(None) => Ok(()),
        _ if !refused.is_empty() => Err(format!(
            "it holds directories of uid {refused:?}, neither User nor in RSessionScratchGroup: \
             remove them by hand"
        )),
        _ => Err("its owners could not remove all of it".into()),
    }
}

/// The owners of `name` in `dir` and of every directory below it, looked
/// at without following a link and without changing anything; `None` when
/// it is gone.
fn directory_owners(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<BTreeSet<u32>>> {
    let Some(st) = safe_fs::stat_at(dir, name)? else {
        return Ok(None);
    };
    let mut owners = BTreeSet::from([st.st_uid]);
    if !safe_fs::is_dir(&st) {
        return Ok(Some(owners));
    }
    let mut stack: Vec<(OwnedFd, Vec<OsString>)> = Vec::new();
    if let Some(fd) = safe_fs::open_dir_at(dir, name)? {
        let names = safe_fs::list(&fd)?;
        stack.push((fd, names));
    }
    let mut seen = 0usize;
    while let Some((fd, mut names)) = stack.pop() {
        let Some(entry) = names.pop() else { continue };
        seen += 1;
        if seen > WALK_LIMIT {
            break;
        }
        let sub = match safe_fs::stat_at(&fd, &entry)? {
            Some(st) if safe_fs::is_dir(&st) => {
                owners.insert(st.st_uid);
                safe_fs::open_dir_at(&fd, &entry).ok().flatten()
            }
            _ => None,
        };
        stack.push((fd, names));
        if let Some(sub) = sub {
            if let Ok(names) = safe_fs::list(&sub) {
                stack.push((sub, names));
            }
        }
    }
    Ok(Some(owners))
}

/// Whether the user `uid` is in the group `gid` (as its primary group or
/// a supplementary one).
fn is_member(uid: u32, gid: u32) -> bool {
    use nix::unistd::{Gid, Uid, User};
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return false;
    };
    if user.gid.as_raw() == gid {
        return true;
    }
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return false;
    };
    nix::unistd::getgrouplist(&name, user.gid)
        .is_ok_and(|groups| groups.contains(&Gid::from_raw(gid)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    /// Removes as the current user, whoever is asked for.
    fn in_place(_uid: u32, _gid: u32, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<bool> {
        let _ = safe_fs::remove_tree_at(dir, name);
        Ok(true)
    }

    #[test]
    fn a_reaped_tree_goes_and_the_owners_are_found_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let reap = dir.path().join(".reap");
        fs::create_dir(&reap).unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        let tree = reap.join("0123.1");
        fs::create_dir_all(tree.join("sub/deeper")).unwrap();
        fs::write(tree.join("sub/deeper/f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();
        fs::set_permissions(tree.join("sub"), fs::Permissions::from_mode(0o000)).unwrap();
        // User: someone else (always acted as); this test's user is in its
        // own primary group, or is root (never acted as: User does it).
        let job = ReapJob {
            reap_dir: reap.clone(),
            gid: nix::unistd::getegid().as_raw(),
            user: 4_000_000_001,
        };
        assert_eq!(pending(&job), 1);
        let fd = safe_fs::open_dir(&reap).unwrap().unwrap();
        let owners = directory_owners(fd.as_fd(), OsStr::new("0123.1"))
            .unwrap()
            .unwrap();
        assert_eq!(owners, BTreeSet::from([me()]));
        let notes = run(std::slice::from_ref(&job), &in_place);
        assert!(notes.is_empty(), "{notes:?}");
        assert!(!tree.exists());
        assert_eq!(pending(&job), 0);
        assert!(outside.join("keep").exists(), "links are never followed");
    }

    #[test]
    fn reapers_start_when_more_waits_and_otherwise_seldom() {
        let t0 = Instant::now();
        let mut last = None;
        assert!(!due(&mut last, 0, t0));
        assert!(due(&mut last, 1, t0));
        assert!(
            !due(&mut last, 1, t0 + Duration::from_secs(10)),
            "stuck: not again at once"
        );
        assert!(
            due(&mut last, 2, t0 + Duration::from_secs(20)),
            "a new one: at once"
        );
        assert!(!due(&mut last, 1, t0 + Duration::from_secs(30)));
        assert!(
            due(&mut last, 2, t0 + Duration::from_secs(40)),
            "grew again"
        );
        assert!(
            due(&mut last, 2, t0 + Duration::from_secs(400)),
            "retried later"
        );
    }

    #[test]
    fn root_and_strangers_are_never_acted_as() {
        let dir = tempfile::tempdir().unwrap();
        let reap = dir.path().join(".reap");
        fs::create_dir_all(reap.join("x.1")).unwrap();
        let asked = std::cell::RefCell::new(Vec::new());
        let record = |uid: u32, _: u32, _: BorrowedFd<'_>, _: &OsStr| -> io::Result<bool> {
            asked.borrow_mut().push(uid);
            Ok(false)
        };
        // The tree's owner is this test's user; pretend User is someone
        // else and the group one nobody is in.
        let job = ReapJob {
            reap_dir: reap,
            gid: 4_000_000_000,
            user: 4_000_000_001,
        };
        let notes = run(&[job], &record);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("RS0140"), "{notes:?}");
        let asked = asked.into_inner();
        assert!(!asked.contains(&0), "never as root: {asked:?}");
        if me() != 0 {
            assert!(!asked.contains(&me()), "not User, not a member: {asked:?}");
        }
    }
}
