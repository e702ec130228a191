//! The Redis store, for server farms: records under `PREFIX<id>` with a
//! Redis expiry at the record's own deadline (so Redis does the sweeping),
//! per-session locks under `PREFIXlock:<id>` holding a random token, with a
//! TTL so that a holder that vanished frees them. Connections are made
//! lazily in each child (never in the parent, so none is shared across
//! fork) and reused; a connection that failed is dropped and the next call
//! reconnects.
//!
//! Locks can be lost (they expire), so each process has a keeper thread
//! (`Keeper`) that renews the locks it holds well before they run out, and
//! every write under a lock is fenced: a script applies it only while the
//! lock key still holds the writer's token. An acquire or release that
//! failed may leave a lock in Redis that nobody will release (the command
//! may still run after we gave up, or never have arrived): the keeper
//! remembers it and deletes it, if it is still ours, once Redis answers.

use super::redis_link::{Link, Target};
use super::{
    Created, Fence, HeldLock, LockedLoad, RedisUrl, SessionStore, StoreError, SweepCounts,
    UserIndex,
};
use crate::id::SessionId;
use crate::record::Record;
use parking_lot::{Condvar, Mutex};
use redis::{RedisError, Script};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Deletes the lock only if we still own it (our token), atomically.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end")
});

/// Takes the lock KEYS[1] (token ARGV[1], TTL ARGV[2] ms) if it is free,
/// already ours (a retry), or held by one of this process's abandoned
/// attempts (ARGV[3..]: no holder will release those); with KEYS[2], reads
/// that record in the same step. Replies {1, record} or {0, nil}.
static LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local held = redis.call('GET', KEYS[1]) \
         local free = not held or held == ARGV[1] \
         for i = 3, #ARGV do free = free or held == ARGV[i] end \
         if not free then return {0, false} end \
         redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) \
         if KEYS[2] then return {1, redis.call('GET', KEYS[2])} end \
         return {1, false}",
    )
});

/// Saves record KEYS[1] (body ARGV[1], expiry ARGV[2]) only while lock
/// KEYS[2] holds our token ARGV[3] (else -1) and the record exists (XX,
/// else 0).
static FENCED_SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[2]) ~= ARGV[3] then return -1 end \
         if redis.call('SET', KEYS[1], ARGV[1], 'XX', 'EXAT', ARGV[2]) then return 1 end \
         return 0",
    )
});

/// FENCED_SET, then releases lock KEYS[2] if it was ours: the last write
/// of a request and its release in one round trip.
static FENCED_SET_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[2]) ~= ARGV[3] then return -1 end \
         local saved = redis.call('SET', KEYS[1], ARGV[1], 'XX', 'EXAT', ARGV[2]) \
         redis.call('DEL', KEYS[2]) \
         if saved then return 1 end \
         return 0",
    )
});

/// RELEASE as EVAL, for a release sent without waiting for its reply (an
/// EVALSHA could come back NOSCRIPT when nobody reads the reply to retry).
const RELEASE_SRC: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// Deletes record KEYS[1] only while lock KEYS[2] holds our token ARGV[1].
static FENCED_DEL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end \
         redis.call('DEL', KEYS[1]) \
         return 1",
    )
});

/// Extends lock KEYS[1] to ARGV[2] ms if it still holds our token ARGV[1].
/// Sent as EVAL in a pipeline (one round trip for all held locks).
const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                     return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0";

/// Idle connections kept per process.
const MAX_IDLE: usize = 16;
/// Locks are renewed when this fraction of their TTL has passed.
const RENEW_AT: u32 = 3;
/// Locks due within this are renewed in the same round trip.
const RENEW_SLACK: Duration = Duration::from_millis(50);
/// A renewal that failed is tried again after this long.
const RENEW_RETRY: Duration = Duration::from_millis(200);
/// Pauses between attempts to clean up an abandoned lock grow to this.
const MAX_CLEAN_PAUSE: Duration = Duration::from_secs(1);
/// Abandoned locks remembered per process; beyond this, their TTL frees
/// them (and a release is then waited for instead).
const MAX_ABANDONED: usize = 4096;
/// Releases left unread on one connection; beyond this, they are read first.
const MAX_UNREAD: usize = 32;

pub struct RedisStore {
    url: RedisUrl,
    pool: Arc<Pool>,
    keeper: Arc<Keeper>,
}

struct Pool {
    target: Target,
    timeout: Duration,
    idle: Mutex<Vec<Conn>>,
    /// Where releases whose outcome is unknown go to be retried.
    keeper: std::sync::OnceLock<std::sync::Weak<Keeper>>,
}

/// A release sent on a connection whose reply is not read yet.
struct Unread {
    key: String,
    token: String,
    ttl: Duration,
}

struct Conn {
    con: Link,
    /// `Target::epoch` when made: older ones reach a master that moved.
    epoch: u64,
    /// Who the server says we are, so that a command left running on this
    /// connection can be stopped by killing it (`CLIENT KILL`).
    client: Option<ClientId>,
    /// Releases sent without waiting: their replies come first on this
    /// connection, and are read (and checked) before its next use.
    unread: Vec<Unread>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ClientId {
    id: u64,
    addr: String,
}

/// How a call that failed left the server.
enum Sent {
    /// Nothing reached the server.
    No,
    /// The server answered (with an error): the command has run.
    Completed,
    /// The connection broke or timed out with the command possibly on its
    /// way: the server may still run it, on this client.
    Maybe(Option<ClientId>),
}

struct Failure {
    error: RedisError,
    sent: Sent,
}

fn unavailable(e: RedisError) -> StoreError {
    let text = e.to_string();
    let hint = if text.contains("invalid peer certificate") {
        " (the server's TLS certificate is not trusted: check ca_file, or the system's CAs without it, and that the certificate names the host in the URL)"
    } else {
        ""
    };
    StoreError::Unavailable(format!("redis: {text}{hint}"))
}

/// A connection that failed this way may be mid-reply: it must go.
fn is_broken(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

fn millis(d: Duration) -> u64 {
    d.as_millis().clamp(1, u64::MAX as u128) as u64
}

/// `id` and `addr` from a `CLIENT INFO` line.
fn parse_client_info(info: &str) -> Option<ClientId> {
    let field = |name: &str| {
        info.split_whitespace()
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
    };
    Some(ClientId {
        id: field("id")?.parse().ok()?,
        addr: field("addr")?.to_string(),
    })
}

impl Pool {
    /// A new connection; setting it up takes at most `timeout`.
    fn connect(&self) -> redis::RedisResult<Conn> {
        let started = Instant::now();
        let epoch = self.target.epoch();
        let mut con = self.target.connect(self.timeout)?;
        let client = if self.target.is_cluster() {
            // Commands go to several nodes: no one client id.
            None
        } else {
            let left = self
                .timeout
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(1));
            con.set_timeouts(left)?;
            match redis::cmd("CLIENT").arg("INFO").query::<String>(&mut con) {
                Ok(info) => parse_client_info(&info),
                Err(e) if is_broken(&e) => return Err(e),
                // An older server, or an ACL that forbids CLIENT.
                Err(_) => None,
            }
        };
        con.set_timeouts(self.timeout)?;
        Ok(Conn {
            con,
            epoch,
            client,
            unread: Vec::new(),
        })
    }

    fn put_back(&self, conn: Conn) {
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE && conn.epoch == self.target.epoch() {
            idle.push(conn);
        } else {
            drop(idle);
            self.discard(conn);
        }
    }

    /// An idle connection, unless the master moved since it was made.
    fn take_idle(&self) -> Option<Conn> {
        let epoch = self.target.epoch();
        let mut stale = Vec::new();
        let conn = {
            let mut idle = self.idle.lock();
            // Stale ones only after a failover: no new vectors per request.
            if idle.iter().any(|c| c.epoch != epoch) {
                let (keep, old): (Vec<Conn>, Vec<Conn>) = std::mem::take(&mut *idle)
                    .into_iter()
                    .partition(|c| c.epoch == epoch);
                *idle = keep;
                stale.extend(old);
            }
            idle.pop()
        };
        stale.into_iter().for_each(|c| self.discard(c));
        conn
    }

    /// Drops a connection; releases sent on it whose replies were not read
    /// may not have run: the keeper makes sure (repeating a release is
    /// harmless, it deletes only our token).
    fn discard(&self, conn: Conn) {
        self.orphan(conn.unread);
    }

    fn orphan(&self, unread: Vec<Unread>) {
        if unread.is_empty() {
            return;
        }
        if let Some(keeper) = self.keeper.get().and_then(std::sync::Weak::upgrade) {
            for u in unread {
                keeper.abandon(&u.key, &u.token, u.ttl, LateSet::No);
            }
        }
    }

    /// Reads the replies of the releases sent on `conn`; false when the
    /// connection broke (the releases not confirmed went to the keeper).
    fn read_unread(&self, conn: &mut Conn) -> bool {
        let Link::One(c) = &mut conn.con else {
            return true;
        };
        while !conn.unread.is_empty() {
            match c.recv_response() {
                // 1: released; 0: the lock was no longer ours.
                Ok(redis::Value::Int(_)) => {
                    conn.unread.remove(0);
                }
                // An error reply (the script did not run): try again later.
                Ok(_) => {
                    let u = conn.unread.remove(0);
                    self.orphan(vec![u]);
                }
                Err(e) if !is_broken(&e) => {
                    let u = conn.unread.remove(0);
                    self.orphan(vec![u]);
                }
                Err(_) => {
                    self.orphan(std::mem::take(&mut conn.unread));
                    return false;
                }
            }
        }
        true
    }

    /// Sends the release of `key` (our `token`) on an idle connection
    /// without waiting for the reply. False when there was no idle
    /// connection to send it on (a new one would cost round trips) or
    /// sending failed.
    fn send_release(&self, key: &str, token: &str, ttl: Duration) -> bool {
        let Some(mut conn) = self.take_idle() else {
            return false;
        };
        if conn.unread.len() >= MAX_UNREAD && !self.read_unread(&mut conn) {
            return false;
        }
        let Link::One(c) = &mut conn.con else {
            self.put_back(conn);
            return false;
        };
        let packed = redis::cmd("EVAL")
            .arg(RELEASE_SRC)
            .arg(1)
            .arg(key)
            .arg(token)
            .get_packed_command();
        match c.send_packed_command(&packed) {
            Ok(()) => {
                conn.unread.push(Unread {
                    key: key.to_string(),
                    token: token.to_string(),
                    ttl,
                });
                self.put_back(conn);
                true
            }
            Err(_) => {
                // Possibly half sent: the connection goes.
                self.discard(conn);
                false
            }
        }
    }

    /// Runs `f` on a pooled connection; a connection that failed goes away.
    /// A pooled connection the server has closed (it restarted) is retried
    /// once on a fresh one, so the first request after an outage succeeds;
    /// so is a command refused by a master that became a replica
    /// (`READONLY`: it did not run), on the master found anew. Every
    /// command we send is safe to repeat.
    fn run<T>(&self, mut f: impl FnMut(&mut Link) -> redis::RedisResult<T>) -> Result<T, Failure> {
        let mut pooled = self.take_idle();
        let mut first_sent = None;
        let mut retried = false;
        loop {
            let from_pool = pooled.is_some();
            let mut conn = match pooled.take() {
                Some(mut c) => {
                    if !self.read_unread(&mut c) {
                        // Broken while idle: nothing of `f` was sent; a
                        // fresh one.
                        continue;
                    }
                    c
                }
                None => match self.connect() {
                    Ok(c) => c,
                    Err(error) => {
                        let sent = first_sent.unwrap_or(Sent::No);
                        return Err(Failure { error, sent });
                    }
                },
            };
            match f(&mut conn.con) {
                Ok(v) => {
                    self.put_back(conn);
                    return Ok(v);
                }
                Err(error) if is_broken(&error) => {
                    let sent = Sent::Maybe(conn.client.take());
                    if from_pool && error.is_connection_dropped() && !error.is_timeout() {
                        first_sent = Some(sent);
                        continue;
                    }
                    return Err(Failure { error, sent });
                }
                Err(error) if self.target.is_stale(&error) => {
                    self.target.forget_master();
                    if !retried {
                        retried = true;
                        first_sent = first_sent.or(Some(Sent::Completed));
                        continue;
                    }
                    return Err(Failure {
                        error,
                        sent: Sent::Completed,
                    });
                }
                Err(error) => {
                    // A server's error reply leaves the connection usable.
                    self.put_back(conn);
                    return Err(Failure {
                        error,
                        sent: Sent::Completed,
                    });
                }
            }
        }
    }

    fn with<T>(&self, f: impl FnMut(&mut Link) -> redis::RedisResult<T>) -> Result<T, StoreError> {
        self.run(f).map_err(|f| unavailable(f.error))
    }
}

/// Keeps this process's locks alive and cleans up the ones it may have left
/// behind, from one thread per store and process. The thread starts with
/// the first lock (so in a child, never in the parent), sleeps while there
/// is nothing to do, and stops with the store.
struct Keeper {
    pool: Arc<Pool>,
    state: Mutex<Kept>,
    wake: Condvar,
}

#[derive(Default)]
struct Kept {
    held: HashMap<u64, Held>,
    serial: u64,
    /// By lock key.
    abandoned: HashMap<String, Vec<Abandoned>>,
    abandoned_count: usize,
    stop: bool,
    /// The thread, with the pid of the process that started it.
    thread: Option<(u32, JoinHandle<()>)>,
}

/// A lock a request holds.
struct Held {
    key: String,
    token: String,
    ttl: Duration,
    /// When to renew it next.
    due: Instant,
}

/// A lock this process may have left in Redis with no holder to release it.
struct Abandoned {
    token: String,
    ttl: Duration,
    /// When its TTL has freed it anyway.
    until: Instant,
    due: Instant,
    pause: Duration,
    late: LateSet,
}

/// Whether a SET of ours that takes the lock may still run in Redis after a
/// cleanup (then one compare-and-delete is not enough).
#[derive(Clone, Debug)]
enum LateSet {
    No,
    /// It may, on this connection, until that is killed.
    On(ClientId),
    /// It may, and we cannot tell: clean up until the TTL has passed.
    Unknown,
}

/// What the keeper thread does next, taken out of the lock.
#[derive(Default)]
struct Work {
    renew: Vec<(u64, String, String, Duration)>,
    clean: Vec<(String, String, LateSet)>,
}

impl Kept {
    fn next_due(&self) -> Option<Instant> {
        let held = self.held.values().map(|h| h.due);
        let abandoned = self.abandoned.values().flatten().map(|a| a.due);
        held.chain(abandoned).min()
    }

    fn forget_expired(&mut self, now: Instant) {
        let mut left = 0;
        self.abandoned.retain(|_, list| {
            list.retain(|a| a.until > now);
            left += list.len();
            !list.is_empty()
        });
        self.abandoned_count = left;
    }

    /// Redis is not answering: a SET of ours still on its way will run
    /// when it does, and its TTL counts from then.
    fn postpone_late_sets(&mut self, now: Instant) {
        for a in self.abandoned.values_mut().flatten() {
            if !matches!(a.late, LateSet::No) {
                a.until = a.until.max(now + a.ttl);
            }
        }
    }

    fn take_due(&mut self, now: Instant) -> Work {
        let mut work = Work::default();
        for (serial, h) in &mut self.held {
            // Early by a little, so that locks taken together renew together.
            if h.due <= now + RENEW_SLACK {
                work.renew
                    .push((*serial, h.key.clone(), h.token.clone(), h.ttl));
                // Moved on again when the renewal succeeds.
                h.due = now + RENEW_RETRY;
            }
        }
        for (key, list) in &mut self.abandoned {
            for a in list.iter_mut().filter(|a| a.due <= now) {
                work.clean
                    .push((key.clone(), a.token.clone(), a.late.clone()));
                a.due = now + a.pause;
                a.pause = (a.pause * 2).min(MAX_CLEAN_PAUSE);
            }
        }
        work
    }

    fn settle(&mut self, key: &str, token: &str, late: Option<LateSet>) {
        let Some(list) = self.abandoned.get_mut(key) else {
            return;
        };
        match late {
            None => {
                list.retain(|a| a.token != token);
                if list.is_empty() {
                    self.abandoned.remove(key);
                }
                self.abandoned_count = self.abandoned.values().map(Vec::len).sum();
            }
            Some(late) => {
                for a in list.iter_mut().filter(|a| a.token == token) {
                    a.late = late.clone();
                }
            }
        }
    }
}

impl Keeper {
    fn new(pool: Arc<Pool>) -> Keeper {
        Keeper {
            pool,
            state: Mutex::new(Kept::default()),
            wake: Condvar::new(),
        }
    }

    /// Starts the thread unless this process has it. After a fork the
    /// parent's thread and locks are not ours: forget them.
    fn ensure_thread(self: &Arc<Self>, kept: &mut Kept) {
        let pid = std::process::id();
        if kept.stop || kept.thread.as_ref().is_some_and(|(p, _)| *p == pid) {
            return;
        }
        if let Some((_, inherited)) = kept.thread.take() {
            // Not a thread of this process: never join or detach it.
            std::mem::forget(inherited);
            kept.held.clear();
            kept.abandoned.clear();
            kept.abandoned_count = 0;
        }
        let keeper = Arc::clone(self);
        // Without the thread, locks still work, but only for their TTL; the
        // next lock tries again.
        if let Ok(t) = std::thread::Builder::new()
            .name("rsession-locks".into())
            .spawn(move || keeper.run())
        {
            kept.thread = Some((pid, t));
        }
    }

    /// Registers a lock taken at `taken`, for renewal; returns its serial.
    fn hold(self: &Arc<Self>, key: &str, token: &str, ttl: Duration, taken: Instant) -> u64 {
        let mut kept = self.state.lock();
        self.ensure_thread(&mut kept);
        kept.serial += 1;
        let serial = kept.serial;
        let due = taken + ttl / RENEW_AT;
        // The thread sleeps until the earliest due time: wake it only if
        // this one comes sooner.
        if kept.next_due().is_none_or(|next| due < next) {
            self.wake.notify_all();
        }
        let (key, token) = (key.to_string(), token.to_string());
        kept.held.insert(
            serial,
            Held {
                key,
                token,
                ttl,
                due,
            },
        );
        serial
    }

    fn forget(&self, serial: u64) {
        self.state.lock().held.remove(&serial);
    }

    /// Remembers a lock that may be in Redis with nobody to release it;
    /// false when too many are remembered already.
    fn abandon(self: &Arc<Self>, key: &str, token: &str, ttl: Duration, late: LateSet) -> bool {
        let mut kept = self.state.lock();
        if kept.abandoned_count >= MAX_ABANDONED {
            return false;
        }
        self.ensure_thread(&mut kept);
        let now = Instant::now();
        kept.abandoned
            .entry(key.to_string())
            .or_default()
            .push(Abandoned {
                token: token.to_string(),
                ttl,
                until: now + ttl,
                due: now,
                pause: Duration::from_millis(50),
                late,
            });
        kept.abandoned_count += 1;
        self.wake.notify_all();
        true
    }

    /// Tokens of this process's abandoned locks on `key`.
    fn abandoned_tokens(&self, key: &str) -> Vec<String> {
        let kept = self.state.lock();
        kept.abandoned
            .get(key)
            .map(|l| l.iter().map(|a| a.token.clone()).collect())
            .unwrap_or_default()
    }

    fn stop(&self) {
        let thread = {
            let mut kept = self.state.lock();
            kept.stop = true;
            self.wake.notify_all();
            kept.thread.take()
        };
        if let Some((pid, t)) = thread {
            if pid == std::process::id() && t.thread().id() != std::thread::current().id() {
                // Bounded: the thread waits at most one `timeout` for Redis.
                let _ = t.join();
                self.flush();
            } else {
                std::mem::forget(t);
            }
        }
    }

    fn run(&self) {
        while let Some(work) = self.next_work() {
            if !work.renew.is_empty() {
                self.renew(&work.renew);
            }
            let (plain, late): (Vec<_>, Vec<_>) = work
                .clean
                .into_iter()
                .partition(|(.., late)| matches!(late, LateSet::No));
            if !plain.is_empty() {
                let plain: Vec<_> = plain.into_iter().map(|(k, t, _)| (k, t)).collect();
                if !self.release_all(&plain) {
                    self.state.lock().postpone_late_sets(Instant::now());
                    continue;
                }
            }
            for (key, token, late) in late {
                if self.state.lock().stop {
                    break;
                }
                if !self.clean(&key, &token, late) {
                    // Redis is not answering: the rest waits for next time.
                    self.state.lock().postpone_late_sets(Instant::now());
                    break;
                }
            }
        }
    }

    /// Waits until something is due; `None` when the store is closing.
    fn next_work(&self) -> Option<Work> {
        let mut kept = self.state.lock();
        loop {
            if kept.stop {
                return None;
            }
            let now = Instant::now();
            kept.forget_expired(now);
            match kept.next_due() {
                Some(due) if due <= now => return Some(kept.take_due(now)),
                Some(due) => {
                    self.wake.wait_until(&mut kept, due);
                }
                None => self.wake.wait(&mut kept),
            }
        }
    }

    /// Sends `cmds` (EVALs, on any nodes) in one round trip.
    fn pipelined(&self, cmds: &[redis::Cmd]) -> Result<Vec<i64>, StoreError> {
        self.pool.with(|c| match c {
            Link::One(c) => {
                let mut p = redis::pipe();
                cmds.iter().for_each(|cmd| {
                    p.add_command(cmd.clone());
                });
                p.query(c)
            }
            // Locks live on several nodes: the cluster pipeline sends each
            // node its part.
            Link::Cluster(c) => {
                let mut p = redis::cluster::cluster_pipe();
                cmds.iter().for_each(|cmd| {
                    p.add_command(cmd.clone());
                });
                p.query(c)
            }
        })
    }

    /// Deletes abandoned locks no late SET can retake (releases, mostly),
    /// if still ours, in one round trip; false when Redis did not answer.
    fn release_all(&self, locks: &[(String, String)]) -> bool {
        let cmds: Vec<redis::Cmd> = locks
            .iter()
            .map(|(key, token)| {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(RELEASE_SRC).arg(1).arg(key).arg(token);
                cmd
            })
            .collect();
        if self.pipelined(&cmds).is_err() {
            return false;
        }
        let mut kept = self.state.lock();
        for (key, token) in locks {
            kept.settle(key, token, None);
        }
        true
    }

    /// On stop (a graceful restart): the releases still pending are sent
    /// now, in one round trip bounded by `timeout`, rather than left to
    /// hold their sessions until the TTL.
    fn flush(&self) {
        let pending: Vec<(String, String)> = {
            let kept = self.state.lock();
            kept.abandoned
                .iter()
                .flat_map(|(key, list)| {
                    list.iter()
                        .filter(|a| matches!(a.late, LateSet::No))
                        .map(|a| (key.clone(), a.token.clone()))
                })
                .collect()
        };
        if !pending.is_empty() {
            self.release_all(&pending);
        }
    }

    /// Extends every due lock in one round trip. A lock found lost (it
    /// expired, or another holder has it) is no longer renewed; its
    /// holder's fenced write will be refused.
    fn renew(&self, due: &[(u64, String, String, Duration)]) {
        let sent = Instant::now();
        let cmds: Vec<redis::Cmd> = due
            .iter()
            .map(|(_, key, token, ttl)| {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(RENEW).arg(1).arg(key).arg(token).arg(millis(*ttl));
                cmd
            })
            .collect();
        let replies = self.pipelined(&cmds);
        let Ok(replies) = replies else { return };
        let mut kept = self.state.lock();
        for ((serial, ..), reply) in due.iter().zip(replies) {
            if reply == 1 {
                if let Some(h) = kept.held.get_mut(serial) {
                    h.due = sent + h.ttl / RENEW_AT;
                }
            } else {
                kept.held.remove(serial);
            }
        }
    }

    /// One attempt to delete an abandoned lock if it is still ours; false
    /// when Redis did not answer. A SET of ours still on its way on a dead
    /// connection is first stopped by killing that connection: after
    /// that, one compare-and-delete is final.
    fn clean(&self, key: &str, token: &str, late: LateSet) -> bool {
        let result = self.pool.with(|c| {
            let mut late = late.clone();
            if let LateSet::On(client) = &late {
                let killed = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("ID")
                    .arg(client.id)
                    .arg("ADDR")
                    .arg(&client.addr)
                    .query::<i64>(c);
                late = match killed {
                    Ok(_) => LateSet::No,
                    Err(e) if is_broken(&e) => return Err(e),
                    Err(_) => LateSet::Unknown,
                };
            }
            let deleted: i64 = RELEASE.key(key).arg(token).invoke(c)?;
            Ok((deleted, late))
        });
        let Ok((deleted, late)) = result else {
            return false;
        };
        let done = deleted == 1 || matches!(late, LateSet::No);
        self.state
            .lock()
            .settle(key, token, (!done).then_some(late));
        true
    }
}

/// A lock just taken, with the record's bytes read under it (if asked).
type Taken = (Box<dyn HeldLock>, Option<Vec<u8>>);

struct RedisLock {
    keeper: Arc<Keeper>,
    serial: u64,
    key: String,
    fence: Fence,
    ttl: Duration,
}

impl HeldLock for RedisLock {
    fn fence(&self) -> Option<&Fence> {
        Some(&self.fence)
    }
}

impl Drop for RedisLock {
    /// The request does not wait for the release: it is sent on an idle
    /// connection whose next use reads the reply first, or else handed to
    /// the keeper, which sends it. Both end with the keeper's retries when
    /// the outcome is unknown; only a full keeper makes us wait.
    fn drop(&mut self) {
        self.keeper.forget(self.serial);
        if self.fence.is_released() {
            return;
        }
        let token = self.fence.token();
        let pool = &self.keeper.pool;
        if pool.send_release(&self.key, token, self.ttl)
            || self.keeper.abandon(&self.key, token, self.ttl, LateSet::No)
        {
            return;
        }
        // The keeper is full: wait for the release; if that fails too, the
        // lock's TTL frees it.
        let _ = pool.run(|c| RELEASE.key(&self.key).arg(token).invoke::<i64>(c));
    }
}

fn random_token() -> Result<String, StoreError> {
    SessionId::generate()
        .map(|t| t.to_string())
        .map_err(|e| StoreError::Unavailable(format!("no randomness for a lock token: {e}")))
}

/// This node's name, so each node runs its own scratch sweeps.
fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.keeper.stop();
    }
}

impl RedisStore {
    /// Runs a fenced write script (record key, lock key; body, expiry,
    /// token): 1 written, 0 the record vanished, else the lock was lost.
    fn fenced_set(
        &self,
        script: &Script,
        id: &SessionId,
        record: &Record,
        fence: &Fence,
    ) -> Result<(), StoreError> {
        let (key, lock_key, body) = (self.key(id), self.lock_key(id), record.encode());
        let reply: i64 = self.pool.with(|c| {
            script
                .key(&key)
                .key(&lock_key)
                .arg(&body)
                .arg(record.expires_at())
                .arg(fence.token())
                .invoke(c)
        })?;
        match reply {
            1 => Ok(()),
            0 => Err(StoreError::Vanished),
            _ => Err(StoreError::LockLost),
        }
    }

    pub fn open(url: &RedisUrl) -> Result<RedisStore, StoreError> {
        let pool = Arc::new(Pool {
            target: Target::new(url).map_err(unavailable)?,
            timeout: url.timeout,
            idle: Mutex::new(Vec::new()),
            keeper: std::sync::OnceLock::new(),
        });
        let keeper = Arc::new(Keeper::new(pool.clone()));
        let _ = pool.keeper.set(Arc::downgrade(&keeper));
        Ok(RedisStore {
            url: url.clone(),
            keeper,
            pool,
        })
    }

    /// A session's keys. In a cluster the id is a hash tag (`{id}`), so a
    /// session's record and lock share a slot and one script can touch
    /// both; elsewhere the names stay as they always were.
    fn key(&self, id: &SessionId) -> String {
        match self.pool.target.is_cluster() {
            true => format!("{}{{{}}}", self.url.prefix, id),
            false => format!("{}{}", self.url.prefix, id),
        }
    }

    fn lock_key(&self, id: &SessionId) -> String {
        match self.pool.target.is_cluster() {
            true => format!("{}lock:{{{}}}", self.url.prefix, id),
            false => format!("{}lock:{}", self.url.prefix, id),
        }
    }

    /// SET with the record's deadline as the key's expiry; `mode` is NX or XX.
    fn set(&self, id: &SessionId, record: &Record, mode: &str) -> Result<bool, StoreError> {
        let key = self.key(id);
        let body = record.encode();
        let reply: Option<String> = self.pool.with(|c| {
            redis::cmd("SET")
                .arg(&key)
                .arg(&body)
                .arg(mode)
                .arg("EXAT")
                .arg(record.expires_at())
                .query(c)
        })?;
        Ok(reply.is_some())
    }

    /// Takes the lock of `id` if free and, with `load`, reads its record in
    /// the same round trip. An attempt that failed after it may have
    /// reached Redis is handed to the keeper to undo.
    fn lock(&self, id: &SessionId, ttl: Duration, load: bool) -> Result<Option<Taken>, StoreError> {
        let key = self.lock_key(id);
        let token = random_token()?;
        let abandoned = self.keeper.abandoned_tokens(&key);
        let record_key = load.then(|| self.key(id));
        let taken = Instant::now();
        let reply = self.pool.run(|c| {
            let mut call = LOCK.prepare_invoke();
            call.key(&key);
            if let Some(k) = &record_key {
                call.key(k);
            }
            call.arg(&token).arg(millis(ttl));
            for t in &abandoned {
                call.arg(t);
            }
            call.invoke::<(i64, Option<Vec<u8>>)>(c)
        });
        let (locked, bytes) = match reply {
            Ok(r) => r,
            Err(Failure { error, sent }) => {
                let late = match sent {
                    Sent::No => None,
                    Sent::Completed => Some(LateSet::No),
                    Sent::Maybe(Some(client)) => Some(LateSet::On(client)),
                    Sent::Maybe(None) => Some(LateSet::Unknown),
                };
                if let Some(late) = late {
                    let _ = self.keeper.abandon(&key, &token, ttl, late);
                }
                return Err(unavailable(error));
            }
        };
        if locked != 1 {
            return Ok(None);
        }
        let serial = self.keeper.hold(&key, &token, ttl, taken);
        let lock = RedisLock {
            keeper: self.keeper.clone(),
            serial,
            key,
            fence: Fence::new(token),
            ttl,
        };
        Ok(Some((Box::new(lock), bytes)))
    }
}

impl SessionStore for RedisStore {
    fn stop_background(&self) {
        self.keeper.stop();
    }

    fn describe(&self) -> String {
        match self.pool.target.current_master() {
            Some(at) => format!("{} (master at {at})", self.url),
            None => self.url.to_string(),
        }
    }

    fn create(&self, id: &SessionId, record: &Record) -> Result<Created, StoreError> {
        Ok(if self.set(id, record, "NX")? {
            Created::Yes
        } else {
            Created::Collision
        })
    }

    fn load(&self, id: &SessionId) -> Result<Option<Record>, StoreError> {
        let key = self.key(id);
        let bytes: Option<Vec<u8>> = self.pool.with(|c| redis::cmd("GET").arg(&key).query(c))?;
        super::decode_stored(bytes.as_deref(), id, || self.describe())
    }

    fn save(
        &self,
        id: &SessionId,
        record: &Record,
        fence: Option<&Fence>,
    ) -> Result<(), StoreError> {
        let Some(fence) = fence else {
            // XX: a record that expired (or was deleted) meanwhile stays gone.
            return match self.set(id, record, "XX")? {
                true => Ok(()),
                false => Err(StoreError::Vanished),
            };
        };
        self.fenced_set(&FENCED_SET, id, record, fence)
    }

    fn save_and_release(
        &self,
        id: &SessionId,
        record: &Record,
        fence: &Fence,
    ) -> Result<(), StoreError> {
        let result = self.fenced_set(&FENCED_SET_RELEASE, id, record, fence);
        // Any reply: the lock is released, or was no longer ours. Without
        // one, the lock's own release follows as usual.
        if !matches!(result, Err(StoreError::Unavailable(_))) {
            fence.mark_released();
        }
        result
    }

    fn delete(&self, id: &SessionId, fence: Option<&Fence>) -> Result<(), StoreError> {
        let key = self.key(id);
        let Some(fence) = fence else {
            return self
                .pool
                .with(|c| redis::cmd("DEL").arg(&key).query::<i64>(c))
                .map(|_| ());
        };
        let lock_key = self.lock_key(id);
        let reply: i64 = self.pool.with(|c| {
            FENCED_DEL
                .key(&key)
                .key(&lock_key)
                .arg(fence.token())
                .invoke(c)
        })?;
        match reply {
            1 => Ok(()),
            _ => Err(StoreError::LockLost),
        }
    }

    fn try_lock(
        &self,
        id: &SessionId,
        ttl: Duration,
    ) -> Result<Option<Box<dyn HeldLock>>, StoreError> {
        Ok(self.lock(id, ttl, false)?.map(|(lock, _)| lock))
    }

    fn try_lock_and_load(
        &self,
        id: &SessionId,
        ttl: Duration,
    ) -> Result<Option<LockedLoad>, StoreError> {
        Ok(self.lock(id, ttl, true)?.map(|(lock, bytes)| {
            let loaded = super::decode_stored(bytes.as_deref(), id, || self.describe());
            (lock, loaded)
        }))
    }

    fn count(&self) -> Result<u64, StoreError> {
        self.count_until(&AtomicBool::new(false))
    }

    fn exists(&self, id: &SessionId) -> Result<bool, StoreError> {
        let key = self.key(id);
        self.pool
            .with(|c| redis::cmd("EXISTS").arg(&key).query::<i64>(c))
            .map(|n| n > 0)
    }

    fn try_begin_sweep(
        &self,
        interval: Duration,
        scope: &Path,
    ) -> Result<Option<Box<dyn HeldLock>>, StoreError> {
        // Redis expires records itself; what is left to sweep is each
        // machine's own scratch directories, so one sweeper per machine and
        // scratch root.
        let key = format!(
            "{}sweeper:{}:{}",
            self.url.prefix,
            node_name(),
            scope.display()
        );
        let ttl_ms = interval.mul_f64(0.9).as_millis().max(1) as u64;
        let reply: Option<String> = self.pool.with(|c| {
            redis::cmd("SET")
                .arg(&key)
                .arg(std::process::id())
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query(c)
        })?;
        // The key is left to expire: it marks the interval as swept.
        struct Marker;
        impl HeldLock for Marker {}
        Ok(reply.map(|_| Box::new(Marker) as Box<dyn HeldLock>))
    }

    /// Redis expires records itself; the pass only counts them (SCAN, in
    /// the background), which corrects the live-session figure.
    fn sweep(
        &self,
        _now: u64,
        cursor: &mut usize,
        _budget: usize,
        _removed: &(dyn Fn(&SessionId) + Sync),
        stop: &AtomicBool,
    ) -> Result<SweepCounts, StoreError> {
        *cursor = 0;
        Ok(SweepCounts {
            records: self.count_until(stop)?,
            ..SweepCounts::default()
        })
    }

    fn user_index(&self) -> Option<&dyn UserIndex> {
        Some(self)
    }
}

impl RedisStore {
    /// `count`, cut short (the figure too) once `stop` is set.
    fn count_until(&self, stop: &AtomicBool) -> Result<u64, StoreError> {
        // Session keys are the prefix plus exactly 32 characters (in braces
        // in a cluster); lock keys are longer. A cluster's keys are spread
        // over its masters: each is scanned.
        let id = "?".repeat(32);
        let pattern = match self.pool.target.is_cluster() {
            true => format!("{}{{{id}}}", self.url.prefix),
            false => format!("{}{id}", self.url.prefix),
        };
        let per_node = self.pool.with(|c| {
            c.each_master(|query| {
                let mut cursor: u64 = 0;
                let mut total = 0u64;
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(total);
                    }
                    let mut scan = redis::cmd("SCAN");
                    scan.arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000);
                    let (next, keys): (u64, Vec<String>) = redis::from_redis_value(query(&scan)?)?;
                    total += keys.len() as u64;
                    if next == 0 {
                        return Ok(total);
                    }
                    cursor = next;
                }
            })
        })?;
        Ok(per_node.iter().sum())
    }
}

/// A user's index is pruned when it reaches this many members, and then
/// each time its size doubles (so pruning costs O(1) per sign-in).
const PRUNE_AT: u64 = 64;
/// Members checked per round trip.
const INDEX_BATCH: usize = 500;

/// The user index: a set per user, `PREFIXuser:<key>` (`key` a hash of
/// the scope and the name), holding session ids. Every command on it names
/// that one key alone: in Redis Cluster it lives in a slot of its own,
/// apart from the records' and locks' slots, and is never combined with
/// them in a script or transaction. Redis expires records by itself, so a
/// set may keep ids whose record is gone: they are dropped when the set is
/// listed and whenever it has grown to PRUNE_AT and then twice its size.
impl RedisStore {
    fn user_set(&self, user: &str) -> String {
        format!("{}user:{}", self.url.prefix, user)
    }

    /// Which of `ids` still have a record, in one round trip.
    fn existing(&self, ids: &[SessionId]) -> Result<Vec<bool>, StoreError> {
        let keys: Vec<String> = ids.iter().map(|id| self.key(id)).collect();
        self.pool.with(|c| {
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("EXISTS").arg(k);
            }
            pipe.query::<Vec<bool>>(c)
        })
    }

    /// Every member of the set (SSCAN, so the server never blocks on a
    /// big one), keeping those with a record and removing the others.
    fn live_members(&self, set: &str, limit: usize) -> Result<Vec<SessionId>, StoreError> {
        let mut cursor: u64 = 0;
        let mut live = Vec::new();
        loop {
            let (next, members): (u64, Vec<String>) = self.pool.with(|c| {
                redis::cmd("SSCAN")
                    .arg(set)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(INDEX_BATCH)
                    .query(c)
            })?;
            let mut junk: Vec<String> = Vec::new();
            let mut ids = Vec::new();
            for m in members {
                match m.parse::<SessionId>() {
                    Ok(id) => ids.push(id),
                    Err(_) => junk.push(m),
                }
            }
            for chunk in ids.chunks(INDEX_BATCH) {
                for (id, exists) in chunk.iter().zip(self.existing(chunk)?) {
                    if exists {
                        live.push(*id);
                    } else {
                        junk.push(id.to_string());
                    }
                }
            }
            if !junk.is_empty() {
                self.pool
                    .with(|c| redis::cmd("SREM").arg(set).arg(&junk).query::<i64>(c))?;
            }
            if next == 0 || live.len() >= limit {
                live.truncate(limit);
                return Ok(live);
            }
            cursor = next;
        }
    }
}

impl UserIndex for RedisStore {
    fn add(&self, user: &str, id: &SessionId) -> Result<(), StoreError> {
        let set = self.user_set(user);
        let member = id.to_string();
        let (_, size): (i64, u64) = self.pool.with(|c| {
            redis::pipe()
                .cmd("SADD")
                .arg(&set)
                .arg(&member)
                .cmd("SCARD")
                .arg(&set)
                .query(c)
        })?;
        if size >= PRUNE_AT && size.is_power_of_two() {
            self.live_members(&set, usize::MAX)?;
        }
        Ok(())
    }

    fn remove(&self, user: &str, id: &SessionId) -> Result<(), StoreError> {
        let set = self.user_set(user);
        let member = id.to_string();
        self.pool
            .with(|c| redis::cmd("SREM").arg(&set).arg(&member).query::<i64>(c))
            .map(drop)
    }

    fn sessions(&self, user: &str, limit: usize) -> Result<Vec<SessionId>, StoreError> {
        self.live_members(&self.user_set(user), limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_who_we_are_from_client_info() {
        let info = "id=42 addr=127.0.0.1:50412 laddr=127.0.0.1:6379 fd=8 name= age=0";
        assert_eq!(
            parse_client_info(info),
            Some(ClientId {
                id: 42,
                addr: "127.0.0.1:50412".into()
            })
        );
        assert_eq!(parse_client_info("laddr=127.0.0.1:6379 id=x"), None);
        assert_eq!(parse_client_info(""), None);
    }

    /// An abandoned lock, due for cleanup since before `until - 2 s`.
    fn abandoned(kept: &mut Kept, key: &str, token: &str, late: LateSet, until: Instant) {
        kept.abandoned
            .entry(key.into())
            .or_default()
            .push(Abandoned {
                token: token.into(),
                ttl: Duration::from_secs(2),
                until,
                due: until - Duration::from_secs(2),
                pause: Duration::from_millis(50),
                late,
            });
        kept.abandoned_count += 1;
    }

    #[test]
    fn due_locks_are_renewed_and_abandoned_ones_retried_with_growing_pauses() {
        let now = Instant::now();
        let mut kept = Kept::default();
        let ttl = Duration::from_secs(3);
        for (serial, due) in [(1, now), (2, now + Duration::from_secs(1))] {
            let (key, token) = (format!("k{serial}"), format!("t{serial}"));
            kept.held.insert(
                serial,
                Held {
                    key,
                    token,
                    ttl,
                    due,
                },
            );
        }
        abandoned(
            &mut kept,
            "a",
            "x",
            LateSet::No,
            now + Duration::from_secs(2),
        );
        let work = kept.take_due(now);
        assert_eq!(work.renew.len(), 1, "only the due lock");
        assert_eq!(work.renew[0].0, 1);
        assert_eq!(work.clean.len(), 1);
        assert_eq!(
            kept.held[&1].due,
            now + RENEW_RETRY,
            "retried unless renewed"
        );
        assert_eq!(kept.abandoned["a"][0].pause, Duration::from_millis(100));
        assert_eq!(kept.next_due(), Some(now + Duration::from_millis(50)));
    }

    #[test]
    fn abandoned_locks_are_forgotten_once_settled_or_past_their_ttl() {
        let now = Instant::now();
        let mut kept = Kept::default();
        abandoned(
            &mut kept,
            "a",
            "x",
            LateSet::No,
            now + Duration::from_secs(2),
        );
        abandoned(
            &mut kept,
            "a",
            "y",
            LateSet::Unknown,
            now + Duration::from_secs(2),
        );
        abandoned(&mut kept, "b", "z", LateSet::No, now);
        kept.forget_expired(now);
        assert_eq!(kept.abandoned_count, 2, "b's TTL has passed");
        kept.settle("a", "x", None);
        assert_eq!(kept.abandoned_count, 1);
        // Redis not answering pushes back the end of a late SET's cleanup.
        let later = now + Duration::from_secs(10);
        kept.postpone_late_sets(later);
        kept.forget_expired(later);
        assert_eq!(kept.abandoned_count, 1);
        kept.settle("a", "y", None);
        assert!(kept.abandoned.is_empty());
        assert_eq!(kept.abandoned_count, 0);
    }
}
