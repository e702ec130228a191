//! Garbage collection: a background thread per child process that, every
//! `RSessionGCInterval`, sweeps each store once (one sweeper per store at a
//! time across all children), removes the scratch directories of the
//! sessions it deletes and those whose session is gone. Never inside a
//! request, never as root, never on a session a request holds locked.

use crate::id::SessionId;
use crate::scratch::ScratchRoot;
use crate::status::{Counter, Stats};
use crate::store::{SessionStore, StoreError, SweepCounts};
use parking_lot::{Condvar, Mutex};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Entries examined per pass and store; the next pass resumes after them.
pub const PASS_BUDGET: usize = 250_000;
/// A scratch directory without a record is left alone for one interval
/// (at least this long). Sessions get their record before their
/// directory, so this only covers clock skew and operators' hands.
const MIN_ORPHAN_GRACE: Duration = Duration::from_secs(1);

/// One store and the scratch root of the sessions in it.
#[derive(Clone)]
pub struct Target {
    pub store: Arc<dyn SessionStore>,
    pub scratch: ScratchRoot,
    pub stats: Arc<Stats>,
}

#[derive(Default)]
struct Cursor {
    store: usize,
    scratch: usize,
    /// Records seen since the store cursor last wrapped.
    records: u64,
}

/// What one pass did, for the log line.
#[derive(Debug, Default)]
pub struct PassReport {
    pub store: String,
    pub counts: SweepCounts,
    pub orphans: u64,
    pub elapsed: Duration,
}

impl std::fmt::Display for PassReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sweep of {}: scanned {}, removed {} expired and {} orphaned scratch directories, {} leftover temporary files, skipped {} locked, in {} ms",
            self.store,
            self.counts.scanned,
            self.counts.expired,
            self.orphans,
            self.counts.debris,
            self.counts.skipped_locked,
            self.elapsed.as_millis()
        )
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs one pass over `target` unless another sweeper holds the store or
/// swept it within `interval`.
fn pass(
    target: &Target,
    cursor: &mut Cursor,
    interval: Duration,
    budget: usize,
) -> Result<Option<PassReport>, StoreError> {
    let Some(_sweeping) = target
        .store
        .try_begin_sweep(interval, target.scratch.root())?
    else {
        return Ok(None);
    };
    let started = Instant::now();
    let scratch = &target.scratch;
    let counts = target
        .store
        .sweep(now(), &mut cursor.store, budget, &mut |id| {
            let _ = scratch.remove(id);
        })?;
    let orphans = sweep_orphans(
        target,
        &mut cursor.scratch,
        budget,
        interval.max(MIN_ORPHAN_GRACE),
    )?;
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
    }))
}

/// Removes scratch directories (below the root only) whose session no
/// longer exists.
fn sweep_orphans(
    target: &Target,
    cursor: &mut usize,
    budget: usize,
    grace: Duration,
) -> Result<u64, StoreError> {
    let Ok(entries) = std::fs::read_dir(target.scratch.root()) else {
        return Ok(0);
    };
    let mut removed = 0;
    let mut examined = 0usize;
    let mut position = 0usize;
    let mut wrapped = true;
    for entry in entries.flatten() {
        position += 1;
        if position <= *cursor {
            continue;
        }
        if examined >= budget {
            wrapped = false;
            position -= 1;
            break;
        }
        examined += 1;
        let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<SessionId>().ok())
        else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        let changed = UNIX_EPOCH + Duration::from_secs(meta.ctime().max(0) as u64);
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
        // Under the session's lock, so a request creating it now is safe.
        let Some(_lock) = target.store.try_lock(&id, Duration::from_secs(1))? else {
            continue;
        };
        if !target.store.exists(&id)? && target.scratch.remove(&id).is_ok() {
            removed += 1;
        }
    }
    *cursor = if wrapped { 0 } else { position };
    Ok(removed)
}

/// True when this process may sweep: never as root.
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map_or(true, |m| m.uid() == 0)
}

/// Where a pass's outcome goes (the host logs it).
pub enum Event {
    Pass(PassReport),
    Failed(String),
    RefusedAsRoot,
}

type Stop = Arc<(Mutex<bool>, Condvar)>;

/// The background thread of one child. Dropping it stops and joins it.
pub struct Sweeper {
    stop: Stop,
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
                        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            pass(target, cursor, interval, PASS_BUDGET)
                        })) {
                            Ok(Ok(Some(done))) => report(Event::Pass(done)),
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
            thread: Some(thread),
        })
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
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

    fn target(dir: &std::path::Path) -> Target {
        let scratch = ScratchRoot::new(dir.join("scratch"));
        fs::create_dir_all(scratch.root()).unwrap();
        Target {
            store: Arc::new(FileStore::open(dir.join("store")).unwrap()),
            scratch,
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

    #[test]
    fn removes_expired_sessions_and_their_scratch_but_not_live_or_locked_ones() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path());
        let now = now();
        let expired = session(&t, now - 100, 10);
        let live = session(&t, now, 1000);
        let locked = session(&t, now - 100, 10);
        let held = t.store.try_lock(&locked, Duration::ZERO).unwrap().unwrap();
        let report = pass(&t, &mut Cursor::default(), Duration::ZERO, 1000)
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
        pass(&t, &mut Cursor::default(), Duration::ZERO, 1000)
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
        for _ in 0..5 {
            session(&t, now - 100, 10);
        }
        let mut cursor = Cursor::default();
        let first = pass(&t, &mut cursor, Duration::ZERO, 2).unwrap().unwrap();
        assert_eq!(first.counts.scanned, 2);
        assert!(
            pass(&t, &mut Cursor::default(), Duration::from_secs(3600), 2)
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
            total += pass(&t, &mut cursor, Duration::ZERO, 2)
                .unwrap()
                .unwrap()
                .counts
                .expired;
        }
        assert_eq!(total, 5);
        assert_eq!(t.store.count().unwrap(), 0);
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
            sweep_orphans(&t, &mut 0, 100, Duration::from_secs(3600)).unwrap(),
            0
        );
        assert!(path.exists());
        // A session that exists keeps its directory.
        let live = session(&t, now(), 1000);
        assert_eq!(sweep_orphans(&t, &mut 0, 100, Duration::ZERO).unwrap(), 1);
        assert!(!path.exists());
        assert!(t.scratch.path(&live).exists());
        assert!(
            outside.join("keep").exists(),
            "the link's target is untouched"
        );
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
