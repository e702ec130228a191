//! Garbage collection: a background thread per child process that, every
//! `RSessionGCInterval`, sweeps each store once (one sweeper per store at a
//! time across all children), removes the scratch directories of the
//! sessions it deletes and those whose session is gone. Never inside a
//! request, never as root, never on a session a request holds locked.

use crate::id::SessionId;
use crate::safe_fs;
use crate::scratch::{self, ScratchRoot};
use crate::status::{Counter, Stats};
use crate::store::{SessionStore, StoreError, SweepCounts};
use parking_lot::{Condvar, Mutex};
use std::collections::{HashSet, VecDeque};
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Entries examined per pass and store; the next pass resumes after them.
pub const PASS_BUDGET: usize = 250_000;
/// A scratch directory without a record is left alone for one interval
/// (at least this long). A new session's directory comes before its
/// record, but under a hold (or the store's lock) from the first moment
/// but one: this covers that moment, clock skew and operators' hands.
const MIN_ORPHAN_GRACE: Duration = Duration::from_secs(1);

/// One store and the scratch root of the sessions in it.
#[derive(Clone)]
pub struct Target {
    pub store: Arc<dyn SessionStore>,
    pub scratch: ScratchRoot,
    pub stats: Arc<Stats>,
}

/// Scratch directories whose removal failed, reported once each (per
/// process); at most this many are remembered.
const REPORTED_MAX: usize = 1024;

#[derive(Default)]
struct Cursor {
    store: usize,
    scratch: usize,
    /// Records seen since the store cursor last wrapped.
    records: u64,
    /// Sessions whose directory could not be removed and was reported.
    reported: HashSet<SessionId>,
}

/// What one pass did, for the log line.
#[derive(Debug, Default)]
pub struct PassReport {
    pub store: String,
    pub counts: SweepCounts,
    pub orphans: u64,
    pub elapsed: Duration,
    /// Scratch directories that stayed, each reported once.
    pub unremovable: Vec<String>,
}

impl std::fmt::Display for PassReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sweep of {}: scanned {}, removed {} expired and {} orphaned scratch directories, {} leftover temporary files, skipped {} locked, {} failed, in {} ms",
            self.store,
            self.counts.scanned,
            self.counts.expired,
            self.orphans,
            self.counts.debris,
            self.counts.skipped_locked,
            self.counts.failed,
            self.elapsed.as_millis()
        )
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs `work` on a thread of its own that ends with it, set up as the
/// host sets up sweeping threads (idle priority); on the caller if no
/// thread can be started.
fn on_sweep_thread<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    let work = Mutex::new(Some(work));
    let run = || (work.lock().take().expect("taken once"))();
    std::thread::scope(|s| {
        match crate::store::spawn_sweep_thread(s, "rsession-sweep".into(), run).map(|t| t.join()) {
            Ok(Ok(done)) => done,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => run(),
        }
    })
}

/// Runs one pass over `target` unless another sweeper holds the store or
/// swept it within `interval`.
/// Returns soon after `stop` is set, the figures then left as they were.
fn pass(
    target: &Target,
    cursor: &mut Cursor,
    interval: Duration,
    budget: usize,
    stop: &AtomicBool,
    begun: &dyn Fn(),
) -> Result<Option<PassReport>, StoreError> {
    let Some(_sweeping) = target
        .store
        .try_begin_sweep(interval, target.scratch.root())?
    else {
        return Ok(None);
    };
    begun();
    let started = Instant::now();
    let shards = ScratchShards::new(&target.scratch);
    let counts = target.store.sweep(
        now(),
        &mut cursor.store,
        budget,
        &|id| shards.remove(id, stop),
        stop,
    )?;
    drop(shards);
    if stop.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let grace = interval.max(MIN_ORPHAN_GRACE);
    let mut orphan_pass = || sweep_orphans(target, cursor, budget, grace, stop);
    let (orphans, unremovable) = match target.store.sweeps_locally() {
        true => on_sweep_thread(orphan_pass)?,
        false => orphan_pass()?,
    };
    if stop.load(Ordering::Relaxed) {
        return Ok(None);
    }
    target.stats.bump(Counter::GcRuns);
    target
        .stats
        .add(Counter::GcRemoved, counts.expired + orphans);
    target.stats.add(Counter::Expired, counts.expired);
    target.stats.sessions_removed(counts.expired);
    // A whole cycle over the store counted what it holds: that corrects
    // the live figure (other servers sharing the store, crashed requests).
    cursor.records += counts.records;
    if cursor.store == 0 {
        target.stats.set_live(std::mem::take(&mut cursor.records));
    }
    Ok(Some(PassReport {
        store: target.store.describe(),
        counts,
        orphans,
        elapsed: started.elapsed(),
        unremovable,
    }))
}

/// How many scratch shards a pass keeps open at once. The file store's
/// sweeping threads each finish a shard before they take the next, and
/// the directories of a store shard's sessions are in the scratch shard
/// of the same name, so a few cover a whole pass. Keeping every shard a
/// pass touched open until its end held up to 256 descriptors per child,
/// beside the lock files' 256 (`make soak` counted 534 in one child).
const OPEN_SCRATCH_SHARDS: usize = 8;

/// The scratch shards of one store a pass removes directories in, each
/// opened once for the run of sessions in it rather than once per
/// session, shared by the store's sweeping threads; the least recently
/// opened is closed to make room.
struct ScratchShards<'a> {
    scratch: &'a ScratchRoot,
    /// (shard, its directory, or none if it was missing when looked at).
    open: Mutex<VecDeque<(u8, Option<Arc<OwnedFd>>)>>,
}

impl<'a> ScratchShards<'a> {
    fn new(scratch: &'a ScratchRoot) -> ScratchShards<'a> {
        ScratchShards {
            scratch,
            open: Mutex::new(VecDeque::with_capacity(OPEN_SCRATCH_SHARDS)),
        }
    }

    /// Removes the directory of `id`, if any (a shard missing when first
    /// looked at is left to the orphan pass).
    fn remove(&self, id: &SessionId, stop: &AtomicBool) {
        let text = id.text();
        if let Some(shard) = self.shard(id.shard(), OsStr::new(&text[..2])) {
            let _ = self.scratch.remove_at(&*shard, OsStr::new(&*text), stop);
        }
    }

    fn shard(&self, shard: u8, name: &OsStr) -> Option<Arc<OwnedFd>> {
        let mut open = self.open.lock();
        if let Some((_, dir)) = open.iter().find(|(s, _)| *s == shard) {
            return dir.clone();
        }
        let dir = self.scratch.open_shard(name).ok().flatten().map(Arc::new);
        if open.len() >= OPEN_SCRATCH_SHARDS {
            // A thread still removing in it keeps its own handle.
            open.pop_front();
        }
        open.push_back((shard, dir.clone()));
        dir
    }
}

/// Removes the scratch directories of this store's sessions (its own part
/// of the root only: other stores' sessions are theirs to judge) whose
/// session no longer exists. Returns how many went, and a line for each
/// directory that stayed and was not reported before.
fn sweep_orphans(
    target: &Target,
    cursor: &mut Cursor,
    budget: usize,
    grace: Duration,
    stop: &AtomicBool,
) -> Result<(u64, Vec<String>), StoreError> {
    let mut removed = 0;
    let mut unremovable = Vec::new();
    let store_dir = target.scratch.store_dir();
    let (Some(parent), Some(tag_name)) = (store_dir.parent(), store_dir.file_name()) else {
        return Ok((0, unremovable));
    };
    let Ok(Some(root)) = safe_fs::open_dir(parent) else {
        return Ok((0, unremovable));
    };
    let Ok(Some(tag)) = safe_fs::open_dir_repairing(root.as_fd(), tag_name) else {
        return Ok((0, unremovable));
    };
    let Ok(mut shards) = safe_fs::list(&tag) else {
        return Ok((0, unremovable));
    };
    shards.sort();
    let mut examined = 0usize;
    let mut position = 0usize;
    let mut wrapped = true;
    'shards: for shard_name in shards {
        if !scratch::is_shard_name(&shard_name) {
            continue;
        }
        // A link or file planted where a shard should be: never followed,
        // unlinked so that the shard can be made again.
        let Ok(Some(shard)) = safe_fs::open_dir_repairing(tag.as_fd(), &shard_name) else {
            continue;
        };
        let Ok(entries) = safe_fs::list(&shard) else {
            continue;
        };
        for name in entries {
            if stop.load(Ordering::Relaxed) {
                return Ok((removed, unremovable));
            }
            position += 1;
            if position <= cursor.scratch {
                continue;
            }
            if examined >= budget {
                wrapped = false;
                position -= 1;
                break 'shards;
            }
            examined += 1;
            let Some(id) = name.to_str().and_then(|n| n.parse::<SessionId>().ok()) else {
                continue;
            };
            let Ok(Some(meta)) = safe_fs::stat_at(&shard, &name) else {
                continue;
            };
            let changed = UNIX_EPOCH + Duration::from_secs(meta.st_ctime.max(0) as u64);
            if SystemTime::now()
                .duration_since(changed)
                .unwrap_or_default()
                < grace
            {
                continue;
            }
            if target.store.exists(&id)? {
                continue;
            }
            // A request's new session that is not kept yet: the store knows
            // nothing of it, its request holds the directory.
            if target.scratch.is_held_at(shard.as_fd(), &name) {
                continue;
            }
            // Under the session's lock, so a request creating it now is safe.
            let Some(_lock) = target.store.try_lock(&id, Duration::from_secs(1))? else {
                continue;
            };
            if target.store.exists(&id)? {
                continue;
            }
            match target
                .scratch
                .remove_at(&shard, OsStr::new(&*id.text()), stop)
            {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(()) => {
                    removed += 1;
                    cursor.reported.remove(&id);
                }
                Err(e) => {
                    if cursor.reported.len() < REPORTED_MAX && cursor.reported.insert(id) {
                        unremovable.push(format!(
                            "scratch directory of session {}... in {}: {e}",
                            id.short(),
                            target.scratch.store_dir().display()
                        ));
                    }
                }
            }
        }
    }
    cursor.scratch = if wrapped { 0 } else { position };
    Ok((removed, unremovable))
}

/// True when this process may sweep: never as root.
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map_or(true, |m| m.uid() == 0)
}

/// Where a pass's outcome goes (the host logs it).
pub enum Event {
    /// A pass over this store begins.
    Begun(String),
    Pass(PassReport),
    /// A scratch directory the sweeper cannot remove (once per directory).
    Unremovable(String),
    Failed(String),
    RefusedAsRoot,
}

type Stop = Arc<(Mutex<bool>, Condvar)>;

/// The background thread of one child. Dropping it stops and joins it,
/// within moments even in the middle of a pass.
pub struct Sweeper {
    stop: Stop,
    /// Set with `stop`, read by passes before every entry.
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sweeper {
    pub fn start(
        targets: Vec<Target>,
        interval: Duration,
        report: impl Fn(Event) + Send + 'static,
    ) -> std::io::Result<Sweeper> {
        let stop: Stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let stopping = Arc::new(AtomicBool::new(false));
        let stopped = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("rsession-gc".into())
            .spawn(move || {
                let mut cursors: Vec<Cursor> = targets.iter().map(|_| Cursor::default()).collect();
                loop {
                    {
                        let (lock, cvar) = &*flag;
                        let mut stopped = lock.lock();
                        if !*stopped {
                            cvar.wait_for(&mut stopped, interval);
                        }
                        if *stopped {
                            return;
                        }
                    }
                    if running_as_root() {
                        report(Event::RefusedAsRoot);
                        return;
                    }
                    for (target, cursor) in targets.iter().zip(cursors.iter_mut()) {
                        if stopped.load(Ordering::Relaxed) {
                            return;
                        }
                        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            pass(target, cursor, interval, PASS_BUDGET, &stopped, &|| {
                                report(Event::Begun(target.store.describe()))
                            })
                        })) {
                            Ok(Ok(Some(mut done))) => {
                                for what in std::mem::take(&mut done.unremovable) {
                                    report(Event::Unremovable(what));
                                }
                                report(Event::Pass(done))
                            }
                            Ok(Ok(None)) => {}
                            Ok(Err(e)) => report(Event::Failed(format!(
                                "sweep of {} failed: {e}",
                                target.store.describe()
                            ))),
                            Err(_) => report(Event::Failed(format!(
                                "sweep of {} panicked",
                                target.store.describe()
                            ))),
                        }
                    }
                }
            })?;
        Ok(Sweeper {
            stop,
            stopping,
            thread: Some(thread),
        })
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        let (lock, cvar) = &*self.stop;
        *lock.lock() = true;
        cvar.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;
    use crate::store::file::FileStore;
    use std::fs;

    static RUNNING: AtomicBool = AtomicBool::new(false);

    /// A pass nothing stops.
    fn run(
        t: &Target,
        cursor: &mut Cursor,
        interval: Duration,
        budget: usize,
    ) -> Result<Option<PassReport>, StoreError> {
        pass(t, cursor, interval, budget, &RUNNING, &|| {})
    }

    fn orphans(
        t: &Target,
        cursor: &mut Cursor,
        budget: usize,
        grace: Duration,
    ) -> Result<(u64, Vec<String>), StoreError> {
        sweep_orphans(t, cursor, budget, grace, &RUNNING)
    }

    fn target(dir: &std::path::Path) -> Target {
        target_in(dir, "store", "scratch")
    }

    /// A file store under `dir/store` and its part of `dir/scratch`.
    fn target_in(dir: &std::path::Path, store: &str, scratch: &str) -> Target {
        let _ = fs::create_dir(dir.join(store));
        let _ = fs::create_dir(dir.join(scratch));
        let store: Arc<dyn SessionStore> = Arc::new(FileStore::open(dir.join(store)).unwrap());
        Target {
            scratch: ScratchRoot::new(dir.join(scratch), &store.describe()),
            store,
            stats: Arc::new(Stats::default()),
        }
    }

    fn session(t: &Target, accessed: u64, timeout: u64) -> SessionId {
        let id = SessionId::generate().unwrap();
        let record = Record {
            accessed,
            ..Record::new(accessed, timeout, 0)
        };
        t.store.create(&id, &record).unwrap();
        t.scratch.ensure(&id).unwrap();
        id
    }

    /// This process's descriptors open on something under `dir`.
    fn open_under(dir: &std::path::Path) -> usize {
        fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.starts_with(dir))
            .count()
    }

    #[test]
    fn a_pass_keeps_only_a_few_scratch_shards_open() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path());
        // The order the file store's sweep finds them in: shard by shard.
        let ids: Vec<SessionId> = (0..=255u8)
            .flat_map(|b| {
                (0..2u8).map(move |n| format!("{b:02x}{n:030x}").parse::<SessionId>().unwrap())
            })
            .collect();
        for id in &ids {
            t.scratch.ensure(id).unwrap();
        }
        let shards = ScratchShards::new(&t.scratch);
        let mut most = 0;
        for id in &ids {
            shards.remove(id, &RUNNING);
            most = most.max(open_under(t.scratch.root()));
        }
        assert!(
            most <= OPEN_SCRATCH_SHARDS,
            "{most} descriptors open under the scratch root during the pass"
        );
        assert!(ids.iter().all(|id| !t.scratch.path(id).exists()));
        drop(shards);
        assert_eq!(open_under(t.scratch.root()), 0);
    }

    #[test]
    fn removes_expired_sessions_and_their_scratch_but_not_live_or_locked_ones() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path());
        let now = now();
        let expired = session(&t, now - 100, 10);
        let live = session(&t, now, 1000);
        let locked = session(&t, now - 100, 10);
        let held = t.store.try_lock(&locked, Duration::ZERO).unwrap().unwrap();
        let report = run(&t, &mut Cursor::default(), Duration::ZERO, 1000)
            .unwrap()
            .unwrap();
        assert_eq!(report.counts.expired, 1);
        assert_eq!(report.counts.skipped_locked, 1);
        assert_eq!(t.stats.live(), 2, "a whole pass sets the live count");
        assert!(!t.store.exists(&expired).unwrap());
        assert!(!t.scratch.path(&expired).exists());
        assert!(t.store.exists(&live).unwrap() && t.scratch.path(&live).exists());
        assert!(
            t.store.exists(&locked).unwrap(),
            "a locked session is never swept"
        );
        drop(held);
        run(&t, &mut Cursor::default(), Duration::ZERO, 1000)
            .unwrap()
            .unwrap();
        assert!(!t.store.exists(&locked).unwrap());
        assert_eq!(t.stats.get(Counter::GcRuns), 2);
    }

    #[test]
    fn one_pass_per_interval_and_bounded_work_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path());
        let now = now();
        // One per shard: a pass finishes the shards it begins.
        for shard in 1..=5u8 {
            let id: SessionId = format!("{shard:02x}{}", "0".repeat(30)).parse().unwrap();
            let record = Record {
                accessed: now - 100,
                ..Record::new(now - 100, 10, 0)
            };
            t.store.create(&id, &record).unwrap();
        }
        let mut cursor = Cursor::default();
        let first = run(&t, &mut cursor, Duration::ZERO, 2).unwrap().unwrap();
        assert_eq!(first.counts.scanned, 2);
        assert_eq!(first.counts.expired, 2);
        assert!(
            run(&t, &mut Cursor::default(), Duration::from_secs(3600), 2)
                .unwrap()
                .is_none(),
            "swept moments ago"
        );
        let mut total = first.counts.expired;
        // Removals shift later entries, so a pass may skip one until the
        // cursor wraps; bounded passes still reach every session.
        for _ in 0..100 {
            if t.store.count().unwrap() == 0 {
                break;
            }
            total += run(&t, &mut cursor, Duration::ZERO, 2)
                .unwrap()
                .unwrap()
                .counts
                .expired;
        }
        assert_eq!(total, 5);
        assert_eq!(t.store.count().unwrap(), 0);
    }

    #[test]
    fn a_new_sessions_held_directory_is_no_orphan_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path());
        // What a request that brought no session has: a directory, no
        // record, no lock in the store.
        let id = SessionId::generate().unwrap();
        let (path, hold) = t.scratch.create_held(&id).unwrap();
        fs::write(path.join("upload.part"), "x").unwrap();
        assert_eq!(
            orphans(&t, &mut Cursor::default(), 100, Duration::ZERO)
                .unwrap()
                .0,
            0
        );
        assert!(path.join("upload.part").exists());
        // The request ended without keeping it (it crashed, say): an orphan.
        drop(hold);
        assert_eq!(
            orphans(&t, &mut Cursor::default(), 100, Duration::ZERO)
                .unwrap()
                .0,
            1
        );
        assert!(!path.exists());
    }

    #[test]
    fn orphaned_scratch_directories_go_but_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path());
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        let orphan = SessionId::generate().unwrap();
        let path = t.scratch.ensure(&orphan).unwrap();
        std::os::unix::fs::symlink(&outside, path.join("link")).unwrap();
        // Too young: left alone.
        assert_eq!(
            orphans(&t, &mut Cursor::default(), 100, Duration::from_secs(3600))
                .unwrap()
                .0,
            0
        );
        assert!(path.exists());
        // A session that exists keeps its directory.
        let live = session(&t, now(), 1000);
        assert_eq!(
            orphans(&t, &mut Cursor::default(), 100, Duration::ZERO)
                .unwrap()
                .0,
            1
        );
        assert!(!path.exists());
        assert!(t.scratch.path(&live).exists());
        assert!(
            outside.join("keep").exists(),
            "the link's target is untouched"
        );
    }

    #[test]
    fn stores_sharing_a_scratch_root_never_sweep_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let a = target_in(dir.path(), "a", "scratch");
        let b = target_in(dir.path(), "b", "scratch");
        let live_a = session(&a, now(), 1000);
        for _ in 0..2 {
            run(&b, &mut Cursor::default(), Duration::ZERO, 1000).unwrap();
        }
        assert!(
            a.scratch.path(&live_a).is_dir(),
            "b's sweeper left a's directory"
        );
        // And each store's orphans are still found by its own sweeper.
        a.store.delete(&live_a, None).unwrap();
        let (n, _) = orphans(&a, &mut Cursor::default(), 1000, Duration::ZERO).unwrap();
        assert_eq!(n, 1);
        assert!(!a.scratch.path(&live_a).exists());
    }

    #[test]
    fn a_store_shared_by_two_scratch_roots_gets_both_swept() {
        let dir = tempfile::tempdir().unwrap();
        let one = target_in(dir.path(), "store", "one");
        let two = Target {
            scratch: ScratchRoot::new(dir.path().join("two"), &one.store.describe()),
            ..one.clone()
        };
        let interval = Duration::from_secs(3600);
        assert!(run(&one, &mut Cursor::default(), interval, 10)
            .unwrap()
            .is_some());
        assert!(
            run(&two, &mut Cursor::default(), interval, 10)
                .unwrap()
                .is_some(),
            "the other scratch root has a sweep of its own"
        );
        assert!(run(&two, &mut Cursor::default(), interval, 10)
            .unwrap()
            .is_none());
    }

    /// Runs `f` on a thread that acts, for the file system, as `nobody`
    /// (root's overrides would hide what an unprivileged sweeper meets).
    fn as_nobody<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::unistd::setfsgid(nix::unistd::Gid::from_raw(65534));
                nix::unistd::setfsuid(nix::unistd::Uid::from_raw(65534));
                f()
            })
            .join()
            .unwrap()
        })
    }

    #[test]
    fn a_directory_that_stays_is_reported_once() {
        if !nix::unistd::geteuid().is_root() {
            return; // needs a second user to own what stays
        }
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
        let (t, orphan) = as_nobody(|| {
            let t = target(dir.path());
            let orphan = SessionId::generate().unwrap();
            t.scratch.ensure(&orphan).unwrap();
            (t, orphan)
        });
        // Something its owner cannot remove: another user's directory.
        let theirs = t.scratch.path(&orphan).join("theirs");
        fs::create_dir(&theirs).unwrap();
        fs::write(theirs.join("f"), "x").unwrap();
        let mut cursor = Cursor::default();
        let (first, second) = as_nobody(|| {
            let first = orphans(&t, &mut cursor, 100, Duration::ZERO).unwrap();
            let second = orphans(&t, &mut cursor, 100, Duration::ZERO).unwrap();
            (first, second)
        });
        assert_eq!(first.0, 0);
        assert_eq!(first.1.len(), 1, "{:?}", first.1);
        assert!(first.1[0].contains("theirs/f"), "{:?}", first.1);
        assert!(second.1.is_empty(), "reported once, not every pass");
        fs::remove_file(theirs.join("f")).unwrap();
        let third = as_nobody(|| orphans(&t, &mut cursor, 100, Duration::ZERO).unwrap());
        assert_eq!(third.0, 1, "once it can go, it goes");
    }

    #[test]
    fn a_shard_shut_by_a_handler_is_opened_not_wiped() {
        if !nix::unistd::geteuid().is_root() {
            return; // the unprivileged part needs setfsuid
        }
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
        let (t, live, orphan) = as_nobody(|| {
            let t = target(dir.path());
            let live: SessionId = "ab000000000000000000000000000001".parse().unwrap();
            let orphan: SessionId = "ab000000000000000000000000000002".parse().unwrap();
            t.store.create(&live, &Record::new(now(), 1000, 0)).unwrap();
            t.scratch.ensure(&live).unwrap();
            t.scratch.ensure(&orphan).unwrap();
            let shard = t.scratch.path(&live).parent().unwrap().to_path_buf();
            fs::set_permissions(&shard, fs::Permissions::from_mode(0o000)).unwrap();
            (t, live, orphan)
        });
        let (n, _) =
            as_nobody(|| orphans(&t, &mut Cursor::default(), 100, Duration::ZERO).unwrap());
        assert_eq!(n, 1);
        assert!(
            t.scratch.path(&live).is_dir(),
            "the live session's directory stays"
        );
        assert!(!t.scratch.path(&orphan).exists());
    }

    #[test]
    fn planted_records_do_not_stop_the_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path());
        let store = FileStore::open(dir.path().join("store")).unwrap();
        // A FIFO and a directory under session ids, old enough to be due.
        let fifo = SessionId::generate().unwrap();
        let planted_dir = SessionId::generate().unwrap();
        for id in [&fifo, &planted_dir] {
            let _ = fs::create_dir(store.record_path(id).parent().unwrap());
        }
        nix::unistd::mkfifo(&store.record_path(&fifo), nix::sys::stat::Mode::S_IRWXU).unwrap();
        fs::create_dir(store.record_path(&planted_dir)).unwrap();
        fs::write(store.record_path(&planted_dir).join("x"), "x").unwrap();
        let past = SystemTime::now() - Duration::from_secs(100);
        for id in [&fifo, &planted_dir] {
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &store.record_path(id),
                &nix::sys::time::TimeSpec::from(past.duration_since(UNIX_EPOCH).unwrap()),
                &nix::sys::time::TimeSpec::from(past.duration_since(UNIX_EPOCH).unwrap()),
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .unwrap();
        }
        let live = session(&t, now(), 1000);
        let report = run(&t, &mut Cursor::default(), Duration::ZERO, 1000)
            .unwrap()
            .unwrap();
        assert_eq!(report.counts.expired, 2, "{report}");
        assert!(!t.store.exists(&fifo).unwrap());
        assert!(!t.store.exists(&planted_dir).unwrap());
        assert!(t.store.exists(&live).unwrap());
    }

    #[test]
    fn a_pass_stops_within_moments_of_a_stop() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path());
        // Records alone (cheaper to make than whole sessions): the pass
        // still takes far longer than the bound below.
        let record = Record::new(now() - 100, 10, 0);
        for _ in 0..20_000 {
            t.store
                .create(&SessionId::generate().unwrap(), &record)
                .unwrap();
        }
        let stop = AtomicBool::new(false);
        let (tx, rx) = std::sync::mpsc::channel();
        let stopped_after = std::thread::scope(|s| {
            let sweeping = s.spawn(|| {
                pass(
                    &t,
                    &mut Cursor::default(),
                    Duration::ZERO,
                    usize::MAX,
                    &stop,
                    &|| {
                        let _ = tx.send(());
                    },
                )
            });
            rx.recv_timeout(Duration::from_secs(60)).unwrap();
            stop.store(true, Ordering::Relaxed);
            let asked = Instant::now();
            let outcome = sweeping.join().unwrap().unwrap();
            assert!(outcome.is_none(), "a stopped pass reports nothing");
            asked.elapsed()
        });
        assert!(stopped_after < Duration::from_secs(2), "{stopped_after:?}");
        let left = t.store.count().unwrap();
        assert!(left > 0, "the pass was stopped, not finished");
        assert_eq!(t.stats.get(Counter::GcRuns), 0);
    }

    #[test]
    fn several_threads_sweep_every_shard_once() {
        let dir = tempfile::tempdir().unwrap();
        let _ = fs::create_dir(dir.path().join("store"));
        let store: Arc<dyn SessionStore> = Arc::new(
            FileStore::open(dir.path().join("store"))
                .unwrap()
                .with_sweep_workers(3),
        );
        let _ = fs::create_dir(dir.path().join("scratch"));
        let t = Target {
            scratch: ScratchRoot::new(dir.path().join("scratch"), &store.describe()),
            store,
            stats: Arc::new(Stats::default()),
        };
        let now = now();
        let expired: Vec<_> = (0..600).map(|_| session(&t, now - 100, 10)).collect();
        let live: Vec<_> = (0..300).map(|_| session(&t, now, 1000)).collect();
        let locked = session(&t, now - 100, 10);
        let _held = t.store.try_lock(&locked, Duration::ZERO).unwrap().unwrap();
        let report = run(&t, &mut Cursor::default(), Duration::ZERO, usize::MAX)
            .unwrap()
            .unwrap();
        assert_eq!(report.counts.expired, 600, "{report}");
        assert_eq!(report.counts.skipped_locked, 1);
        assert_eq!(report.counts.records, 301);
        assert!(expired
            .iter()
            .all(|id| !t.store.exists(id).unwrap() && !t.scratch.path(id).exists()));
        assert!(live
            .iter()
            .all(|id| t.store.exists(id).unwrap() && t.scratch.path(id).is_dir()));
        assert!(t.store.exists(&locked).unwrap());
    }

    #[test]
    fn the_thread_stops_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path());
        let expired = session(&t, now() - 100, 10);
        let (tx, rx) = std::sync::mpsc::channel();
        let sweeper = Sweeper::start(vec![t.clone()], Duration::from_millis(10), move |e| {
            if let Event::Pass(r) = e {
                let _ = tx.send(r.counts.expired);
            }
        })
        .unwrap();
        if !running_as_root() {
            assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 1);
            assert!(!t.store.exists(&expired).unwrap());
        }
        drop(sweeper);
    }
}
