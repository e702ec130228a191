//! Waiting for a session's lock: stores supply the try-lock primitive, this
//! module bounds the wait. Threads of one process queue on an in-process
//! gate first (woken at once on release), so only one of them at a time
//! polls the store's cross-process lock.

use crate::id::{BuildIdHasher, SessionId};
use crate::store::{Fence, HeldLock, Loaded, SessionStore, StoreError};
use parking_lot::{Mutex, RawMutex};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

type Gate = Arc<Mutex<()>>;
type GateGuard = parking_lot::lock_api::ArcMutexGuard<RawMutex, ()>;

/// Set when this process is being stopped ungracefully: requests waiting
/// for a lock then give up at once (`Timeout`) instead of holding the worker
/// the server waits for. A graceful stop or restart lets them wait on: the
/// server finishes the requests it has.
static ABANDON_WAITS: AtomicBool = AtomicBool::new(false);

/// Ends every lock wait of this process, now and from now on.
pub fn abandon_waits() {
    ABANDON_WAITS.store(true, Ordering::SeqCst);
}

fn stopping() -> bool {
    ABANDON_WAITS.load(Ordering::Relaxed)
}

/// Waits are sliced so that a shutting-down process notices within this.
const WAIT_SLICE: Duration = Duration::from_millis(100);

/// Per-process gates of the sessions that some thread holds or awaits, in
/// several maps so that threads of different sessions rarely meet on one
/// mutex.
static GATES: LazyLock<[Mutex<GateMap>; GATE_MAPS]> =
    LazyLock::new(|| std::array::from_fn(|_| Mutex::default()));
const GATE_MAPS: usize = 16;
type GateMap = HashMap<SessionId, Gate, BuildIdHasher>;

fn gates(id: &SessionId) -> parking_lot::MutexGuard<'static, GateMap> {
    GATES[usize::from(id.shard()) % GATE_MAPS].lock()
}

#[derive(Debug)]
pub enum LockError {
    /// The lock stayed taken for the whole allowed wait.
    Timeout,
    Store(StoreError),
}

/// A held session lock. Dropping it releases the store lock, then the gate.
pub struct SessionLock {
    id: SessionId,
    store_lock: Option<Box<dyn HeldLock>>,
    gate: Option<GateGuard>,
    /// Whether the caller had to wait for another holder (in this
    /// process's gate or on the store's lock).
    pub waited: bool,
    /// How long it waited (zero when it did not).
    pub wait: Duration,
}

impl SessionLock {
    /// What writes under this lock pass to the store (`HeldLock::fence`).
    pub fn fence(&self) -> Option<&Fence> {
        self.store_lock.as_deref().and_then(|l| l.fence())
    }
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        self.store_lock.take();
        if self.gate.take().is_some() {
            release_gate(&self.id);
        }
    }
}

/// The lock of an id drawn just now, which no other request can know yet:
/// one attempt at the store and no gate (the gate only lines up threads of
/// this process that wait, and none can wait for an id it does not know).
/// `None` if the store says it is taken after all; the caller then waits
/// as for any other id.
pub fn take_unshared(
    store: &dyn SessionStore,
    id: &SessionId,
    ttl: Duration,
) -> Result<Option<SessionLock>, StoreError> {
    Ok(store.try_lock(id, ttl)?.map(|held| SessionLock {
        id: *id,
        store_lock: Some(held),
        gate: None,
        waited: false,
        wait: Duration::ZERO,
    }))
}

fn gate_for(id: &SessionId) -> Gate {
    gates(id).entry(*id).or_default().clone()
}

/// Forgets the gate once nobody holds or awaits it.
fn release_gate(id: &SessionId) {
    let mut gates = gates(id);
    if gates.get(id).is_some_and(|g| Arc::strong_count(g) == 1) {
        gates.remove(id);
    }
}

/// Takes the lock of `id`, waiting at most `timeout`.
pub fn acquire(
    store: &dyn SessionStore,
    id: &SessionId,
    timeout: Duration,
    ttl: Duration,
) -> Result<SessionLock, LockError> {
    acquire_with(id, timeout, || {
        store.try_lock(id, ttl).map(|l| l.map(|l| (l, ())))
    })
    .map(|(lock, ())| lock)
}

/// Takes the lock of `id` and reads its record in the same step (one round
/// trip for stores that can), waiting at most `timeout`.
pub fn acquire_and_load(
    store: &dyn SessionStore,
    id: &SessionId,
    timeout: Duration,
    ttl: Duration,
) -> Result<(SessionLock, Loaded), LockError> {
    acquire_with(id, timeout, || store.try_lock_and_load(id, ttl))
}

/// The bounded wait around a store's try-lock step, which may return
/// something besides the lock (`T`).
fn acquire_with<T>(
    id: &SessionId,
    timeout: Duration,
    mut try_once: impl FnMut() -> Result<Option<(Box<dyn HeldLock>, T)>, StoreError>,
) -> Result<(SessionLock, T), LockError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let gate = gate_for(id);
    // A thread of this process holds it: that is a wait too, however
    // short (the gate wakes the next one at once on release).
    let mut waited = false;
    let gate_guard = match gate.try_lock_arc() {
        Some(g) => g,
        None => loop {
            waited = true;
            if let Some(g) = gate.try_lock_arc_until(deadline.min(Instant::now() + WAIT_SLICE)) {
                break g;
            }
            if Instant::now() >= deadline || stopping() {
                drop(gate);
                release_gate(id);
                return Err(LockError::Timeout);
            }
        },
    };
    drop(gate);
    let mut lock = SessionLock {
        id: *id,
        store_lock: None,
        gate: Some(gate_guard),
        waited,
        wait: Duration::ZERO,
    };
    // Another process holds it: poll with a short, growing pause.
    let mut pause = Duration::from_micros(50);
    loop {
        match try_once() {
            Ok(Some((held, extra))) => {
                lock.store_lock = Some(held);
                lock.waited = waited;
                if waited {
                    lock.wait = started.elapsed();
                }
                return Ok((lock, extra));
            }
            Ok(None) => {}
            Err(e) => return Err(LockError::Store(e)),
        }
        let now = Instant::now();
        if now >= deadline || stopping() {
            return Err(LockError::Timeout);
        }
        waited = true;
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::file::FileStore;

    /// A file store in a temporary directory and an id it has not seen.
    fn store_and_id() -> (tempfile::TempDir, FileStore, SessionId) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().to_path_buf()).unwrap();
        (dir, store, SessionId::generate().unwrap())
    }

    /// A second thread waits for `id` and must get it, but only after
    /// `release` ran.
    fn assert_waiter_gets_it_after_release(
        store: &FileStore,
        id: &SessionId,
        release: impl FnOnce(),
    ) {
        use std::sync::atomic::{AtomicBool, Ordering};
        let released = AtomicBool::new(false);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let got = acquire(store, id, Duration::from_secs(5), Duration::from_secs(10));
                (got.is_ok(), released.load(Ordering::SeqCst))
            });
            std::thread::sleep(Duration::from_millis(20));
            released.store(true, Ordering::SeqCst);
            release();
            assert_eq!(
                waiter.join().unwrap(),
                (true, true),
                "got the lock only after release"
            );
        });
    }

    #[test]
    fn waits_then_times_out_then_succeeds() {
        let (_dir, store, id) = store_and_id();
        let ttl = Duration::from_secs(10);
        let first = acquire(&store, &id, Duration::ZERO, ttl).unwrap();
        assert!(!first.waited);
        let started = Instant::now();
        let second = acquire(&store, &id, Duration::from_millis(50), ttl);
        assert!(matches!(second, Err(LockError::Timeout)));
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_waiter_gets_it_after_release(&store, &id, || drop(first));
        assert!(
            gates(&id).get(&id).is_none(),
            "gates are forgotten when free"
        );
    }

    #[test]
    fn a_short_wait_in_the_gate_counts_as_a_wait() {
        let (_dir, store, id) = store_and_id();
        let ttl = Duration::from_secs(10);
        let first = acquire(&store, &id, Duration::ZERO, ttl).unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let l = acquire(&store, &id, Duration::from_secs(5), ttl).unwrap();
                (l.waited, l.wait)
            });
            // The waiter holds the gate too (map, holder, waiter)...
            while gates(&id).get(&id).map_or(0, Arc::strong_count) < 3 {
                std::thread::yield_now();
            }
            // ...and is released well within one WAIT_SLICE.
            std::thread::sleep(Duration::from_millis(30));
            drop(first);
            let (waited, wait) = waiter.join().unwrap();
            assert!(waited, "a wait in the gate is a wait");
            assert!(wait >= Duration::from_millis(10), "{wait:?}");
        });
    }

    #[test]
    fn an_unshared_lock_excludes_everyone_without_a_gate() {
        let (_dir, store, id) = store_and_id();
        let ttl = Duration::from_secs(10);
        let held = take_unshared(&store, &id, ttl)
            .unwrap()
            .expect("a new id is free");
        assert!(
            gates(&id).get(&id).is_none(),
            "no gate for an id nobody knows"
        );
        // The sweeper (another thread) and other requests are kept out...
        let other = std::thread::scope(|s| {
            s.spawn(|| store.try_lock(&id, ttl).unwrap().is_none())
                .join()
                .unwrap()
        });
        assert!(other, "held against another thread's attempt");
        assert!(take_unshared(&store, &id, ttl).unwrap().is_none());
        assert!(matches!(
            acquire(&store, &id, Duration::from_millis(20), ttl),
            Err(LockError::Timeout)
        ));
        // ...until it goes; the waiter's gate is forgotten after it.
        assert_waiter_gets_it_after_release(&store, &id, || drop(held));
        assert!(gates(&id).get(&id).is_none());
    }

    #[test]
    fn a_lock_held_by_another_process_is_polled_until_free() {
        // A second descriptor stands in for another process: flock does not
        // care which process holds the other one.
        let (_dir, store, id) = store_and_id();
        let ttl = Duration::from_secs(10);
        let foreign = store.try_lock(&id, ttl).unwrap().unwrap();
        assert_waiter_gets_it_after_release(&store, &id, || drop(foreign));
    }
}
