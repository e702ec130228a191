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

use crate::safe_fs::{self, Mark};
use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// One store's shared part of a scratch root and who may empty its
/// `.reap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReapJob {
    /// The configured scratch root (the administrator's path).
    pub root: PathBuf,
    /// The store's tag directory inside it.
    pub tag: OsString,
    /// `RSessionScratchGroup`'s gid.
    pub gid: u32,
    /// `User`'s uid.
    pub user: u32,
}

impl ReapJob {
    /// `root/<tag>/.reap`, for the log.
    pub fn reap_dir(&self) -> PathBuf {
        self.root.join(&self.tag).join(crate::scratch::REAP_DIR)
    }
}

/// Removes, as the user `uid`, what that user can of `name` in `dir`,
/// entering only directories with `mark`; `Ok(false)` when the identity
/// could not be taken or the removal did not finish in time.
pub type AsOwner<'a> = &'a dyn Fn(u32, BorrowedFd<'_>, &OsStr, Mark) -> io::Result<bool>;

/// Rounds per directory: each one removes at least the deepest level of
/// another owner's directories, so this bounds the nesting of owners.
const ROUNDS: usize = 8;
/// Entries looked at per tree, at most, when finding its owners.
const WALK_LIMIT: usize = 200_000;
/// A reaper gives up (the next one goes on) after this long.
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// Entries of `.reap` the parent counts, at most (it only needs to know
/// whether more arrived).
const COUNT_LIMIT: usize = 1000;

/// Opens `job`'s `.reap` without trusting a path a CGI can change: the
/// root by its configured path (its last component never followed), then
/// the tag and `.reap` relative to descriptors, each a directory of
/// `User` with the group's mark on the root's file system. `None` when any
/// of them is missing or is not that.
fn open_reap(job: &ReapJob) -> io::Result<Option<(OwnedFd, Mark)>> {
    let Some(root) = safe_fs::open_dir(&job.root)? else {
        return Ok(None);
    };
    let dev = nix::sys::stat::fstat(&root)
        .map_err(io::Error::from)?
        .st_dev;
    let mark = Mark { gid: job.gid, dev };
    let step = |dir: &OwnedFd, name: &OsStr| -> io::Result<Option<OwnedFd>> {
        let Some(fd) = safe_fs::open_dir_at(dir, name)? else {
            return Ok(None);
        };
        let st = nix::sys::stat::fstat(&fd).map_err(io::Error::from)?;
        Ok((st.st_uid == job.user && mark.on(&st)).then_some(fd))
    };
    let Some(tag) = step(&root, &job.tag)? else {
        return Ok(None);
    };
    Ok(step(&tag, OsStr::new(crate::scratch::REAP_DIR))?.map(|reap| (reap, mark)))
}

/// How many directories wait in `job`'s `.reap` (a cheap check for the
/// parent, once per monitor run; counted up to `COUNT_LIMIT`).
pub fn pending(job: &ReapJob) -> usize {
    match open_reap(job) {
        Ok(Some((fd, _))) => safe_fs::count_entries(&fd, COUNT_LIMIT).unwrap_or(0),
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
    let deadline = Instant::now() + RUN_LIMIT;
    let mut notes = Vec::new();
    for job in jobs {
        let Ok(Some((reap, mark))) = open_reap(job) else {
            continue;
        };
        // One reaper per directory at a time; a busy lock means another
        // is at work (each is bounded by RUN_LIMIT).
        let Ok(reap) = nix::fcntl::Flock::lock(reap, nix::fcntl::FlockArg::LockExclusiveNonblock)
        else {
            continue;
        };
        let Ok(names) = safe_fs::list(&*reap) else {
            continue;
        };
        for name in names {
            if Instant::now() > deadline {
                return notes;
            }
            if let Err(why) = reap_one(job, reap.as_fd(), &name, mark, as_owner, deadline) {
                notes.push(format!(
                    "RS0140 cannot remove {}/{}: {why}",
                    job.reap_dir().display(),
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

/// Removes `name` in the `.reap` directory `reap`, owner by owner. Only a
/// session directory (User's, with the mark) is taken, and inside it only
/// directories with the mark are entered, by the owners' processes too.
fn reap_one(
    job: &ReapJob,
    reap: BorrowedFd<'_>,
    name: &OsStr,
    mark: Mark,
    as_owner: AsOwner<'_>,
    deadline: Instant,
) -> Result<(), String> {
    let mut refused: BTreeSet<u32> = BTreeSet::new();
    let mut unmarked = false;
    match safe_fs::stat_at(reap, name) {
        Ok(None) => return Ok(()),
        Ok(Some(st)) if st.st_uid == job.user && mark.on(&st) => {}
        Ok(Some(_)) => {
            return Err(
                "not a session directory of the shared scratch tree (owner, group \
                        or mark): left alone"
                    .into(),
            )
        }
        Err(e) => return Err(format!("cannot look at it: {e}")),
    }
    for _ in 0..ROUNDS {
        let owners = match marked_owners(reap, name, mark) {
            Ok(Some((owners, foreign))) => {
                unmarked |= foreign;
                owners
            }
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
            if Instant::now() > deadline {
                return Err("the reaper's time ran out; the next one goes on".into());
            }
            if uid == 0 || (uid != job.user && !is_member(uid, job.gid)) {
                refused.insert(uid);
                continue;
            }
            if as_owner(uid, reap, name, mark).unwrap_or(false) {
                acted = true;
            }
        }
        if !acted {
            break;
        }
    }
    match marked_owners(reap, name, mark) {
        Ok(None) => Ok(()),
        _ if !refused.is_empty() => Err(format!(
            "it holds directories of uid {refused:?}, neither User nor in RSessionScratchGroup: \
             remove them by hand"
        )),
        _ if unmarked => Err(
            "it holds directories that are not the group's (made elsewhere and moved in, or \
             given another group), which the reaper does not enter: look at them and remove \
             them by hand"
                .into(),
        ),
        _ => Err("its owners could not remove all of it".into()),
    }
}

/// The owners of `name` in `dir` and of every directory with `mark` below
/// it, looked at without following a link and without changing anything
/// (directories without the mark are not entered; the flag says whether
/// there were any); `None` when it is gone.
fn marked_owners(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    mark: Mark,
) -> io::Result<Option<(BTreeSet<u32>, bool)>> {
    let Some(st) = safe_fs::stat_at(dir, name)? else {
        return Ok(None);
    };
    let mut owners = BTreeSet::from([st.st_uid]);
    let mut unmarked = false;
    let mut stack: Vec<(OwnedFd, Vec<OsString>)> = Vec::new();
    if let Some(fd) = safe_fs::open_dir_at(dir, name)? {
        let st = nix::sys::stat::fstat(&fd).map_err(io::Error::from)?;
        if !mark.on(&st) {
            return Ok(Some((owners, true)));
        }
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
            Some(st) if mark.on(&st) => {
                owners.insert(st.st_uid);
                safe_fs::open_dir_at(&fd, &entry).ok().flatten()
            }
            Some(st) if safe_fs::is_dir(&st) => {
                unmarked = true;
                None
            }
            _ => None,
        };
        stack.push((fd, names));
        if let Some(sub) = sub {
            let still = nix::sys::stat::fstat(&sub).is_ok_and(|st| mark.on(&st));
            if still {
                if let Ok(names) = safe_fs::list(&sub) {
                    stack.push((sub, names));
                }
            }
        }
    }
    Ok(Some((owners, unmarked)))
}

/// Whether the user `uid` is in the group `gid` (as its primary group or
/// a supplementary one).
pub fn is_member(uid: u32, gid: u32) -> bool {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .is_some_and(|user| groups_of(&user, user.gid.as_raw()).contains(&gid))
}

/// The groups of `uid` as a login with primary group `gid` has them
/// (`gid` first): what httpd's children run with, for `User` and `Group`.
pub fn login_groups(uid: u32, gid: u32) -> Vec<u32> {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => groups_of(&user, gid),
        _ => vec![gid],
    }
}

fn groups_of(user: &nix::unistd::User, gid: u32) -> Vec<u32> {
    let mut groups = vec![gid];
    let all = std::ffi::CString::new(user.name.as_str())
        .ok()
        .and_then(|name| nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid)).ok());
    groups.extend(
        all.into_iter()
            .flatten()
            .map(|g| g.as_raw())
            .filter(|&g| g != gid),
    );
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }
    fn my_group() -> u32 {
        nix::unistd::getegid().as_raw()
    }
    /// `User` in these tests: this user, or (as root, whom the reaper
    /// never acts as) someone else.
    fn user() -> u32 {
        if me() == 0 {
            4_000_000_001
        } else {
            me()
        }
    }

    /// A directory of the shared tree: the group, setgid, 2770, User's.
    fn shared_dir(path: &Path) {
        fs::create_dir(path).unwrap();
        if me() == 0 {
            std::os::unix::fs::chown(path, Some(user()), Some(my_group())).unwrap();
        }
        fs::set_permissions(path, fs::Permissions::from_mode(0o2770)).unwrap();
    }

    /// A scratch root with one store's part and its `.reap`.
    fn job(dir: &Path) -> ReapJob {
        let root = dir.join("scratch");
        fs::create_dir(&root).unwrap();
        shared_dir(&root.join("tag"));
        shared_dir(&root.join("tag/.reap"));
        ReapJob {
            root,
            tag: "tag".into(),
            gid: my_group(),
            user: user(),
        }
    }

    /// Removes as the current user, whoever is asked for.
    fn in_place(_uid: u32, dir: BorrowedFd<'_>, name: &OsStr, mark: Mark) -> io::Result<bool> {
        let _ = safe_fs::remove_marked_tree_at(
            dir,
            name,
            mark,
            &std::sync::atomic::AtomicBool::new(false),
        );
        Ok(true)
    }

    #[test]
    fn a_reaped_tree_goes_and_links_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let job = job(dir.path());
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        let tree = job.reap_dir().join("0123.1");
        shared_dir(&tree);
        // Made inside: the setgid bit and the group come along.
        fs::create_dir_all(tree.join("sub/deeper")).unwrap();
        fs::write(tree.join("sub/deeper/f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();
        fs::set_permissions(tree.join("sub"), fs::Permissions::from_mode(0o000)).unwrap();
        assert_eq!(pending(&job), 1);
        let notes = run(std::slice::from_ref(&job), &in_place);
        assert!(notes.is_empty(), "{notes:?}");
        assert!(!tree.exists());
        assert_eq!(pending(&job), 0);
        assert!(outside.join("keep").exists(), "links are never followed");
    }

    #[test]
    fn a_directory_moved_in_from_elsewhere_is_never_entered() {
        let dir = tempfile::tempdir().unwrap();
        let job = job(dir.path());
        let tree = job.reap_dir().join("4567.1");
        shared_dir(&tree);
        fs::write(tree.join("upload"), "x").unwrap();
        // A victim's directory, made outside the tree (no mark) and moved in.
        let victim = dir.path().join("victim");
        fs::create_dir(&victim).unwrap();
        fs::write(victim.join("photo.jpg"), "precious").unwrap();
        if me() != 0 {
            // Without root, another group for it cannot be had.
            return;
        }
        std::os::unix::fs::chown(&victim, None, Some(4_000_000_002)).unwrap();
        fs::rename(&victim, tree.join("victim")).unwrap();
        let notes = run(std::slice::from_ref(&job), &in_place);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("not the group's"), "{notes:?}");
        assert!(
            tree.join("victim/photo.jpg").exists(),
            "not entered, not removed"
        );
        assert!(!tree.join("upload").exists(), "the session's own file went");
    }

    #[test]
    fn reap_is_not_reached_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let job = job(dir.path());
        // The tag replaced by a link to a tree of the attacker's choosing.
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        shared_dir(&elsewhere.join(".reap"));
        shared_dir(&elsewhere.join(".reap/0123.1"));
        fs::rename(job.root.join("tag"), job.root.join("tag.moved")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, job.root.join("tag")).unwrap();
        assert_eq!(pending(&job), 0);
        let notes = run(std::slice::from_ref(&job), &in_place);
        assert!(notes.is_empty());
        assert!(elsewhere.join(".reap/0123.1").exists());
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
        let mut job = job(dir.path());
        let tree = job.reap_dir().join("89ab.1");
        shared_dir(&tree);
        shared_dir(&tree.join("theirs"));
        let asked = std::cell::RefCell::new(Vec::new());
        let record = |uid: u32, _: BorrowedFd<'_>, _: &OsStr, _: Mark| -> io::Result<bool> {
            asked.borrow_mut().push(uid);
            Ok(false)
        };
        // A group nobody is in: only User may be acted as.
        job.gid = my_group();
        let stranger_group = 4_000_000_000;
        let notes = run(
            &[ReapJob {
                gid: stranger_group,
                ..job.clone()
            }],
            &record,
        );
        assert!(
            notes.is_empty(),
            "no mark of that group: not even looked into"
        );
        let notes = run(std::slice::from_ref(&job), &record);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("RS0140"), "{notes:?}");
        let asked = asked.into_inner();
        assert!(!asked.contains(&0), "never as root: {asked:?}");
        assert!(asked.contains(&user()), "User always: {asked:?}");
    }
}
