//! One request's session, as pure steps: resolve the cookie, lock, load (or
//! create), apply the handler's changes, save, unlock. `hooks` calls these
//! with plain values and writes the results back into the request.

use crate::auth::user_index_key;
use crate::config::DirConfig;
use crate::cookie::Candidates;
use crate::generation::Runtime;
use crate::id::SessionId;
use crate::lock::{self, LockError, SessionLock};
use crate::record::{encode_data, encoded_len, stamp, Data, Record};
use crate::scratch::HeldDir;
use crate::status::Counter;
use crate::store::{Created, Fence, Loaded, StoreError};
use crate::update::Command;
use std::borrow::Cow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What the end of a request did with its session (for the debug log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not finished yet, or nothing was written.
    Unchanged,
    /// A new session's record stored for the first time.
    Kept,
    /// The record rewritten (data, limits or the access time).
    Saved,
    /// Given a new id (the old one, for the log, is here).
    Regenerated(SessionId),
    Invalidated,
    /// New and untouched: nothing was kept.
    Discarded,
}

/// Why a request could not get its session. Client input never lands here.
#[derive(Debug)]
pub enum SessionError {
    /// This session's lock stayed taken for the whole `RSessionLockTimeout`.
    LockTimeout(SessionId),
    /// `RSessionMaxSessions` live sessions already: no new one is kept.
    StoreFull(u64),
    Store(StoreError),
    Scratch(std::io::Error),
    Id(std::io::Error),
}

impl SessionError {
    /// 503 for conditions that pass (the client should retry), else 500.
    /// A store that is full, read-only, over quota or refused us passes:
    /// an operator frees space or fixes modes. A lost lock passes too:
    /// when stores report one (`StoreError::LockLost`, Redis fencing), it
    /// joins the first arm.
    pub fn http_status(&self) -> u16 {
        match self {
            SessionError::LockTimeout(_)
            | SessionError::StoreFull(_)
            | SessionError::Store(StoreError::Unavailable(_) | StoreError::LockLost) => 503,
            SessionError::Store(StoreError::Io { source, .. }) | SessionError::Scratch(source)
                if io_passes(source) =>
            {
                503
            }
            _ => 500,
        }
    }
}

/// File system conditions that an operator clears without a restart.
fn io_passes(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        StorageFull | ReadOnlyFilesystem | QuotaExceeded | PermissionDenied
    )
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::LockTimeout(_) => write!(f, "timed out waiting for the session lock"),
            SessionError::StoreFull(max) => write!(
                f,
                "the store holds RSessionMaxSessions ({max}) live sessions; no new one is kept"
            ),
            SessionError::Store(e) => write!(f, "{e}"),
            SessionError::Scratch(e) => write!(f, "cannot prepare the scratch directory: {e}"),
            SessionError::Id(e) => write!(f, "cannot draw a session id from the OS: {e}"),
        }
    }
}

impl From<StoreError> for SessionError {
    fn from(e: StoreError) -> Self {
        SessionError::Store(e)
    }
}

/// What the response must do with the cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CookieChange {
    Set(SessionId),
    Expire,
}

/// Things worth a log line, reported to the caller (which owns logging).
#[derive(Debug, Default)]
pub struct Notes {
    pub corrupt: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Live,
    Invalidated,
    Finished,
}

/// The session a request works on, from fixups to the end of the request.
pub struct ActiveSession {
    id: SessionId,
    record: Record,
    is_new: bool,
    /// Whether the store has a record of it (a new session is kept only
    /// once written to, unless `RSessionCreate Always`).
    kept: bool,
    /// Seen by a static file: loaded without the lock, never changed
    /// (but for its access time, when the lock happens to be free).
    read_only: bool,
    data_changed: bool,
    regenerate: bool,
    state: State,
    scratch_dir: Option<PathBuf>,
    /// A new session's directory, held while the store knows nothing of
    /// the session (it has no record and no lock there until kept).
    scratch_hold: Option<HeldDir>,
    cookie: Option<CookieChange>,
    lock: Option<SessionLock>,
    outcome: Outcome,
    /// The user the stored record is indexed under (`Record::user` as
    /// loaded, then as last written).
    stored_user: Option<String>,
    /// `invalidate-user`: end every session of this session's user.
    invalidate_user: bool,
    /// How many other sessions `invalidate-user` ended.
    ended_others: u64,
}

/// Most sessions of a user listed at once by `invalidate-user`.
const USER_SESSIONS_BATCH: usize = 100_000;

/// Best effort: the entry of a session whose record is gone is dropped by
/// the next listing or sweep anyway.
fn unindex(rt: &Runtime, user: Option<&str>, id: &SessionId) {
    if let (Some(index), Some(user)) = (rt.store.user_index(), user) {
        let _ = index.remove(&user_index_key(&rt.scope, user), id);
    }
}

/// Adds `id` to its user's index, before its record names that user: a
/// failure leaves an extra entry at worst, never a session the index
/// cannot find.
fn index(rt: &Runtime, user: Option<&str>, id: &SessionId) -> Result<(), SessionError> {
    if let (Some(index), Some(user)) = (rt.store.user_index(), user) {
        index.add(&user_index_key(&rt.scope, user), id)?;
    }
    Ok(())
}

/// Takes the lock of a session that nobody else knows yet (when locking is
/// on).
fn lock_session(
    rt: &Runtime,
    dir: &DirConfig,
    id: &SessionId,
) -> Result<Option<SessionLock>, SessionError> {
    if !dir.lock() {
        return Ok(None);
    }
    if let Some(lock) = lock::take_unshared(rt.store.as_ref(), id, rt.lock_ttl)? {
        return Ok(Some(lock));
    }
    let started = Instant::now();
    let acquired =
        lock::acquire(rt.store.as_ref(), id, dir.lock_timeout(), rt.lock_ttl).map(|l| (l, ()));
    counted(rt, id, started, acquired).map(|(l, ())| Some(l))
}

/// Locks (when locking is on) and loads, in one step where the store can.
fn lock_and_load(
    rt: &Runtime,
    dir: &DirConfig,
    id: &SessionId,
) -> Result<(Option<SessionLock>, Loaded), SessionError> {
    if !dir.lock() {
        return Ok((None, rt.store.load(id)));
    }
    let started = Instant::now();
    let acquired = lock::acquire_and_load(rt.store.as_ref(), id, dir.lock_timeout(), rt.lock_ttl);
    counted(rt, id, started, acquired).map(|(l, loaded)| (Some(l), loaded))
}

/// Counts a lock attempt's waits, their time and timeouts for the status
/// page. A request that timed out waited too.
fn counted<T>(
    rt: &Runtime,
    id: &SessionId,
    started: Instant,
    acquired: Result<(SessionLock, T), LockError>,
) -> Result<(SessionLock, T), SessionError> {
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    match acquired {
        Ok((l, extra)) => {
            if l.waited {
                rt.stats.lock_waited(micros(l.wait));
            }
            Ok((l, extra))
        }
        Err(LockError::Timeout) => {
            rt.stats.lock_waited(micros(started.elapsed()));
            rt.stats.bump(Counter::LockTimeouts);
            Err(SessionError::LockTimeout(*id))
        }
        Err(LockError::Store(e)) => Err(e.into()),
    }
}

/// Creates a record under a fresh id, never reusing one that exists.
fn create_record(rt: &Runtime, record: &Record) -> Result<SessionId, SessionError> {
    for _ in 0..4 {
        let id = SessionId::generate().map_err(SessionError::Id)?;
        if rt.store.create(&id, record)? == Created::Yes {
            return Ok(id);
        }
    }
    Err(SessionError::Store(StoreError::Corrupt(
        "four id collisions in a row".into(),
    )))
}

impl ActiveSession {
    /// Resumes the first signed candidate that the store knows and that has
    /// not expired; otherwise creates a new session.
    pub fn begin(
        rt: &Runtime,
        dir: &DirConfig,
        found: &Candidates,
        now: u64,
        notes: &mut Notes,
    ) -> Result<ActiveSession, SessionError> {
        Self::resume_or_create(rt, dir, found, now, notes, true)
    }

    /// `begin` for the session a request already read without its lock
    /// (`begin_read_only`, which counted it as resumed): now locked.
    pub fn begin_locked(
        rt: &Runtime,
        dir: &DirConfig,
        found: &Candidates,
        now: u64,
        notes: &mut Notes,
    ) -> Result<ActiveSession, SessionError> {
        Self::resume_or_create(rt, dir, found, now, notes, false)
    }

    fn resume_or_create(
        rt: &Runtime,
        dir: &DirConfig,
        found: &Candidates,
        now: u64,
        notes: &mut Notes,
        count_resumed: bool,
    ) -> Result<ActiveSession, SessionError> {
        let mut rejected = found.rejected as u64;
        for id in &found.signed {
            let (lock, loaded) = lock_and_load(rt, dir, id)?;
            let record = match loaded {
                Ok(Some(r)) => r,
                Ok(None) => {
                    rejected += 1;
                    continue;
                }
                Err(StoreError::Corrupt(what)) => {
                    notes.corrupt.push(what);
                    rejected += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if record.scope != rt.scope {
                // Another scope's session (or one from before scopes): not
                // ours to resume, nor to remove.
                rejected += 1;
                continue;
            }
            // The lag a non-writing request allowed is the larger of the
            // grace the record was written with and this location's.
            let grace = record.grace.max(dir.effective_touch_interval());
            if record.is_expired_under(now, dir.timeout(), dir.max_lifetime(), grace) {
                // We hold its lock (or locking is off): remove it now rather
                // than leave it to the sweeper.
                rt.store
                    .delete(id, lock.as_ref().and_then(SessionLock::fence))?;
                unindex(rt, record.user.as_deref(), id);
                let _ = rt.scratch.remove(id);
                rt.stats.bump(Counter::Expired);
                rt.stats.sessions_removed(1);
                rejected += 1;
                continue;
            }
            rt.stats.add(Counter::RejectedCookies, rejected);
            if count_resumed {
                rt.stats.bump(Counter::Resumed);
            }
            // The directory was made with the session and goes with it; it
            // is checked (and remade if someone removed it) only when the
            // access time is due for a write, not on every request.
            let touch_due =
                stamp(now).saturating_sub(record.accessed) >= dir.effective_touch_interval();
            let scratch_dir = match (dir.scratch(), touch_due) {
                (true, true) => Some(rt.scratch.ensure(id).map_err(SessionError::Scratch)?),
                (true, false) => Some(rt.scratch.path(id)),
                (false, _) => None,
            };
            return Ok(ActiveSession {
                id: *id,
                stored_user: record.user.clone(),
                record,
                is_new: false,
                kept: true,
                read_only: false,
                data_changed: false,
                regenerate: false,
                state: State::Live,
                scratch_dir,
                scratch_hold: None,
                cookie: None,
                lock,
                outcome: Outcome::Unchanged,
                invalidate_user: false,
                ended_others: 0,
            });
        }
        rt.stats.add(Counter::RejectedCookies, rejected);
        Self::create(rt, dir, now)
    }

    /// The session a static file sees: the first signed candidate that the
    /// store knows, in scope and unexpired, loaded without waiting for its
    /// lock. None creates nothing: static files never make a session.
    pub fn begin_read_only(
        rt: &Runtime,
        dir: &DirConfig,
        found: &Candidates,
        now: u64,
    ) -> Result<Option<ActiveSession>, SessionError> {
        for id in &found.signed {
            let record = match rt.store.load(id) {
                Ok(Some(r)) => r,
                Ok(None) | Err(StoreError::Corrupt(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            let grace = record.grace.max(dir.effective_touch_interval());
            if record.scope != rt.scope
                || record.is_expired_under(now, dir.timeout(), dir.max_lifetime(), grace)
            {
                continue;
            }
            rt.stats.bump(Counter::Resumed);
            return Ok(Some(ActiveSession {
                id: *id,
                stored_user: record.user.clone(),
                invalidate_user: false,
                ended_others: 0,
                record,
                is_new: false,
                kept: true,
                read_only: true,
                data_changed: false,
                regenerate: false,
                state: State::Live,
                scratch_dir: dir.scratch().then(|| rt.scratch.path(id)),
                scratch_hold: None,
                cookie: None,
                lock: None,
                outcome: Outcome::Unchanged,
            }));
        }
        Ok(None)
    }

    /// A session for a request that brought none. It has an id and (when
    /// configured) a scratch directory at once. With `RSessionCreate
    /// Always` it is kept and locked now; else the store hears of it only
    /// once something is written to it (see `save`): until then its
    /// directory is held against the sweeper instead, and a request that
    /// writes nothing costs the store nothing (no round trip to Redis, and
    /// no 503 while the store is down).
    fn create(rt: &Runtime, dir: &DirConfig, now: u64) -> Result<ActiveSession, SessionError> {
        let record = Record {
            grace: dir.effective_touch_interval(),
            scope: rt.scope.clone(),
            ..Record::new(stamp(now), dir.timeout(), dir.max_lifetime())
        };
        let mut session = ActiveSession {
            id: SessionId::generate().map_err(SessionError::Id)?,
            record,
            is_new: true,
            kept: false,
            read_only: false,
            data_changed: false,
            regenerate: false,
            state: State::Live,
            scratch_dir: None,
            scratch_hold: None,
            cookie: None,
            lock: None,
            outcome: Outcome::Unchanged,
            stored_user: None,
            invalidate_user: false,
            ended_others: 0,
        };
        if dir.create_always() {
            session.keep(rt, true)?;
            // Nobody else knows the id yet, so this never waits; it keeps
            // the sweeper away (from its directory too) for the rest of the
            // request.
            session.lock = lock_session(rt, dir, &session.id)?;
        }
        if dir.scratch() {
            let held = !session.kept && rt.scratch.holds_work();
            if !session.kept && !held {
                // No holds on this file system: the store's lock keeps the
                // sweeper away, taken before the directory exists.
                session.lock = lock_session(rt, dir, &session.id)?;
            }
            let made = match held {
                false => rt.scratch.create(&session.id),
                true => rt.scratch.create_held(&session.id).map(|(p, hold)| {
                    session.scratch_hold = hold;
                    p
                }),
            };
            if made.is_ok() && held && session.scratch_hold.is_none() {
                // The flock was refused after all: the store's lock it is.
                match lock_session(rt, dir, &session.id) {
                    Ok(lock) => session.lock = lock,
                    Err(e) => {
                        let _ = rt.scratch.remove(&session.id);
                        return Err(e);
                    }
                }
            }
            match made {
                Ok(p) => session.scratch_dir = Some(p),
                Err(e) => {
                    if session.kept {
                        let _ = rt.store.delete(&session.id, session.fence());
                        rt.stats.sessions_removed(1);
                    }
                    return Err(SessionError::Scratch(e));
                }
            }
        }
        Ok(session)
    }

    /// Stores a new session's record for the first time, within
    /// `RSessionMaxSessions`. Before anyone saw the id (`may_redraw`), a
    /// colliding id is drawn again; after, a collision is an error, never
    /// an overwrite.
    fn keep(&mut self, rt: &Runtime, may_redraw: bool) -> Result<(), SessionError> {
        if rt.max_sessions > 0 && rt.stats.live() >= rt.max_sessions {
            return Err(SessionError::StoreFull(rt.max_sessions));
        }
        if may_redraw {
            self.id = create_record(rt, &self.record)?;
        } else if rt.store.create(&self.id, &self.record)? == Created::Collision {
            return Err(SessionError::Store(StoreError::Corrupt(
                "a new session's id is taken in the store".into(),
            )));
        }
        self.kept = true;
        self.cookie = Some(CookieChange::Set(self.id));
        rt.stats.bump(Counter::Created);
        rt.stats.sessions_added(1);
        Ok(())
    }

    pub fn id(&self) -> &SessionId {
        &self.id
    }
    pub fn is_new(&self) -> bool {
        self.is_new
    }
    /// How long this request waited for the session's lock, if it did.
    pub fn lock_wait(&self) -> Option<Duration> {
        self.lock.as_ref().filter(|l| l.waited).map(|l| l.wait)
    }
    /// What `finish` did with the session.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }
    pub fn scratch_dir(&self) -> Option<&PathBuf> {
        self.scratch_dir.as_ref()
    }
    pub fn data(&self) -> &Data {
        &self.record.data
    }
    pub fn encoded_data(&self) -> String {
        encode_data(&self.record.data)
    }
    /// Whether the store holds its record (resumed, or kept by this
    /// request).
    pub fn is_kept(&self) -> bool {
        self.kept
    }
    /// Whether it holds its lock in the store.
    pub fn is_locked(&self) -> bool {
        self.lock.is_some()
    }
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }
    /// Whether finishing must write something the handler asked for (data,
    /// a new id, a removal), beyond the access time.
    pub fn has_changes(&self) -> bool {
        self.data_changed
            || self.regenerate
            || self.invalidate_user
            || self.state == State::Invalidated
    }

    /// How many other sessions of this session's user `invalidate-user`
    /// ended (known once the session is finished).
    pub fn ended_others(&self) -> u64 {
        self.ended_others
    }

    /// `invalidate-user`: at the end of the request, every session of this
    /// session's user is ended, this one included.
    pub fn request_invalidate_user(&mut self) -> Result<(), &'static str> {
        if self.read_only {
            return Err("a static file sees the session read-only");
        }
        match self.state {
            State::Finished => Err("the session was already saved"),
            _ => {
                self.invalidate_user = true;
                Ok(())
            }
        }
    }

    /// The user the record is to be stored (and indexed) under: the value
    /// of the location's `RSessionUser` key, if it is a plausible name;
    /// where no `RSessionUser` is configured, the one stored before.
    fn user_for_record(&self, dir: &DirConfig) -> Option<String> {
        match dir.user_key() {
            Some(key) => crate::auth::user_of(&self.record.data, key)
                .and_then(Result::ok)
                .map(str::to_string),
            None => self.stored_user.clone(),
        }
    }

    /// Ends every other session the index lists for this session's user.
    /// Listed again until a round finds none it has not ended, so a
    /// session regenerated meanwhile (see `save`) is caught too.
    fn end_user_sessions(&mut self, rt: &Runtime, dir: &DirConfig) -> Result<(), SessionError> {
        let user = self
            .user_for_record(dir)
            .or_else(|| self.stored_user.clone());
        let (Some(user), Some(index)) = (user, rt.store.user_index()) else {
            return Ok(());
        };
        let key = user_index_key(&rt.scope, &user);
        let mut ended = std::collections::HashSet::from([self.id]);
        for _ in 0..4 {
            let fresh: Vec<SessionId> = index
                .sessions(&key, USER_SESSIONS_BATCH)?
                .into_iter()
                .filter(|id| !ended.contains(id))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for id in fresh {
                ended.insert(id);
                // An entry left behind (a crash between a user change's
                // two index updates) must not end another user's session:
                // only a record stored under this user goes.
                let theirs = match rt.store.load(&id) {
                    Ok(Some(record)) => record.user.as_deref() == Some(user.as_str()),
                    Ok(None) => false,
                    Err(StoreError::Corrupt(_)) => true,
                    Err(e) => return Err(e.into()),
                };
                if theirs {
                    // Not under its lock: a request holding it finds its
                    // session gone when it saves (and answers 503).
                    rt.store.delete(&id, None)?;
                    let _ = rt.scratch.remove(&id);
                    rt.stats.bump(Counter::Invalidated);
                    rt.stats.sessions_removed(1);
                    self.ended_others += 1;
                }
                index.remove(&key, &id)?;
            }
        }
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) one key; refused when the encoded
    /// data would exceed `max_size`, leaving the session as it was.
    pub fn set_value(
        &mut self,
        key: &str,
        value: Option<&str>,
        max_size: usize,
    ) -> Result<(), &'static str> {
        let value = value.map(Cow::Borrowed);
        self.apply_one(max_size, std::iter::once((Cow::Borrowed(key), value)))
    }

    /// Applies `edits` in order (a value to set, or `None` to remove the
    /// key) to the data in place, and puts back what they replaced if the
    /// result would exceed `max_size`: the data is never copied whole.
    fn apply_one<'a>(
        &mut self,
        max_size: usize,
        edits: impl IntoIterator<Item = (Cow<'a, str>, Option<Cow<'a, str>>)>,
    ) -> Result<(), &'static str> {
        if self.state != State::Live {
            return Err("the session is no longer live");
        }
        if self.read_only {
            return Err("a static file sees the session read-only");
        }
        let data = &mut self.record.data;
        // Each edit's key with the value it replaced (`None`: absent); the
        // first beside the rest, as most commands make one edit.
        let mut first: Option<(Cow<'a, str>, Option<String>)> = None;
        let mut undo: Vec<(Cow<'a, str>, Option<String>)> = Vec::new();
        for (key, value) in edits {
            let before = match value {
                Some(value) => match data.get_mut(key.as_ref()) {
                    Some(current) if *current == *value => continue,
                    Some(current) => Some(std::mem::replace(current, value.into_owned())),
                    None => {
                        data.insert(key.clone().into_owned(), value.into_owned());
                        None
                    }
                },
                None => match data.remove(key.as_ref()) {
                    Some(removed) => Some(removed),
                    None => continue,
                },
            };
            match first {
                None => first = Some((key, before)),
                Some(_) => undo.push((key, before)),
            }
        }
        let Some(first) = first else {
            return Ok(());
        };
        if encoded_len(data) > max_size {
            for (key, before) in undo.into_iter().rev().chain([first]) {
                match before {
                    Some(value) => data.insert(key.into_owned(), value),
                    None => data.remove(key.as_ref()),
                };
            }
            return Err("the data would exceed RSessionMaxDataSize");
        }
        // Changed unless every key touched holds what it held before its
        // first edit (`set a=x&a=1` with `a=1` needs no save). One edit
        // that was not skipped above is always a change.
        let edited = |i: usize| if i == 0 { &first } else { &undo[i - 1] };
        let changed = undo.is_empty()
            || (0..=undo.len()).any(|i| {
                let (key, before) = edited(i);
                !(0..i).any(|j| edited(j).0 == *key)
                    && data.get(key.as_ref()).map(String::as_str) != before.as_deref()
            });
        self.data_changed |= changed;
        Ok(())
    }

    /// Applies the handler's commands in order. On a 5xx response only
    /// `invalidate` takes effect. Returns why each refused command failed.
    pub fn apply(
        &mut self,
        commands: &[Command<'_>],
        max_size: usize,
        server_error: bool,
    ) -> Vec<&'static str> {
        let mut refused = Vec::new();
        for cmd in commands {
            let result = match cmd {
                Command::Invalidate => self.invalidate(),
                Command::InvalidateUser => self.request_invalidate_user(),
                _ if server_error => Err("changes sent with a 5xx response are discarded"),
                Command::Set(pairs) => self.apply_one(
                    max_size,
                    pairs
                        .iter()
                        .map(|(k, v)| (Cow::Borrowed(k.as_ref()), Some(Cow::Borrowed(v.as_ref())))),
                ),
                Command::Unset(keys) => self.apply_one(
                    max_size,
                    keys.iter().map(|k| (Cow::Borrowed(k.as_ref()), None)),
                ),
                Command::Regenerate => self.request_regenerate(),
            };
            if let Err(why) = result {
                refused.push(why);
            }
        }
        refused
    }

    pub fn invalidate(&mut self) -> Result<(), &'static str> {
        if self.read_only {
            return Err("a static file sees the session read-only");
        }
        match self.state {
            State::Finished => Err("the session was already saved"),
            _ => {
                self.state = State::Invalidated;
                Ok(())
            }
        }
    }

    pub fn request_regenerate(&mut self) -> Result<(), &'static str> {
        match self.state {
            State::Live if self.read_only => Err("a static file sees the session read-only"),
            State::Live => {
                self.regenerate = true;
                Ok(())
            }
            _ => Err("the session is no longer live"),
        }
    }

    /// Saves what changed, performs invalidate/regenerate, then releases the
    /// lock. Returns the cookie change the response must carry. The lock is
    /// released even when saving fails.
    pub fn finish(
        &mut self,
        rt: &Runtime,
        dir: &DirConfig,
        now: u64,
    ) -> Result<Option<CookieChange>, SessionError> {
        let result = self.save(rt, dir, now);
        self.state = State::Finished;
        self.lock.take();
        self.scratch_hold.take();
        result.map(|()| self.cookie.take())
    }

    /// Done with, without a save or a touch: the request took the same
    /// session again under its lock (which writes what is due), or gave up.
    pub fn set_aside(&mut self) {
        self.state = State::Finished;
        self.lock.take();
        self.scratch_hold.take();
    }

    /// Records this request's access and the location's limits.
    fn stamp_access(&mut self, dir: &DirConfig, now: u64) {
        self.record.accessed = stamp(now);
        self.record.idle_timeout = dir.timeout();
        self.record.max_lifetime = dir.max_lifetime();
        self.record.grace = dir.effective_touch_interval();
    }

    /// Writes under a lock that may have been lost pass this to the store.
    fn fence(&self) -> Option<&Fence> {
        self.lock.as_ref().and_then(SessionLock::fence)
    }

    /// A static file's visit keeps the session alive when its access time
    /// is due, but only if the lock is free right now (a static file never
    /// waits): re-read and touched under it, never a write over someone
    /// else's change.
    fn touch_read_only(
        &mut self,
        rt: &Runtime,
        dir: &DirConfig,
        now: u64,
    ) -> Result<(), SessionError> {
        let due = stamp(now).saturating_sub(self.record.accessed) >= dir.effective_touch_interval();
        if !due {
            return Ok(());
        }
        let Some(lock) = rt.store.try_lock(&self.id, rt.lock_ttl)? else {
            return Ok(());
        };
        if let Some(mut record) = rt.store.load(&self.id)? {
            if stamp(now).saturating_sub(record.accessed) >= dir.effective_touch_interval() {
                record.accessed = stamp(now);
                match lock.fence() {
                    Some(fence) => rt.store.save_and_release(&self.id, &record, fence)?,
                    None => rt.store.save(&self.id, &record, None)?,
                }
                rt.stats.bump(Counter::Saved);
                self.outcome = Outcome::Saved;
            }
        }
        Ok(())
    }

    fn save(&mut self, rt: &Runtime, dir: &DirConfig, now: u64) -> Result<(), SessionError> {
        if self.read_only {
            return match self.state {
                State::Live => self.touch_read_only(rt, dir, now),
                _ => Ok(()),
            };
        }
        if self.invalidate_user && self.state != State::Finished {
            self.end_user_sessions(rt, dir)?;
            self.state = State::Invalidated;
        }
        match self.state {
            State::Finished => return Ok(()),
            State::Invalidated if !self.kept => {
                // Never stored, never given a cookie: nothing to undo.
                let _ = rt.scratch.remove(&self.id);
                self.cookie = None;
                return Ok(());
            }
            State::Invalidated => {
                rt.store.delete(&self.id, self.fence())?;
                unindex(rt, self.stored_user.as_deref(), &self.id);
                let _ = rt.scratch.remove(&self.id);
                rt.stats.bump(Counter::Invalidated);
                self.outcome = Outcome::Invalidated;
                rt.stats.sessions_removed(1);
                self.cookie = Some(CookieChange::Expire);
                return Ok(());
            }
            State::Live => {}
        }
        if !self.kept {
            let written = self.data_changed
                || self.regenerate
                || (self.scratch_dir.is_some() && !rt.scratch.remove_if_empty(&self.id));
            if !written {
                // Left untouched: nothing remains, not even its directory.
                rt.stats.bump(Counter::Discarded);
                self.outcome = Outcome::Discarded;
                return Ok(());
            }
            self.stamp_access(dir, now);
            let user = self.user_for_record(dir);
            self.record.user = user.clone();
            index(rt, user.as_deref(), &self.id)?;
            if let Err(e) = self.keep(rt, false) {
                unindex(rt, user.as_deref(), &self.id);
                return Err(e);
            }
            self.stored_user = user;
            rt.stats.bump(Counter::Saved);
            self.outcome = Outcome::Kept;
            if !self.regenerate {
                return Ok(());
            }
        }
        let user = self.user_for_record(dir);
        let user_changed = user != self.stored_user;
        let touch_due =
            stamp(now).saturating_sub(self.record.accessed) >= dir.effective_touch_interval();
        let limits_changed = self.record.idle_timeout != dir.timeout()
            || self.record.max_lifetime != dir.max_lifetime()
            || self.record.grace != dir.effective_touch_interval();
        if self.regenerate {
            self.stamp_access(dir, now);
            self.record.user = user.clone();
            let new_id = create_record(rt, &self.record)?;
            // Nobody knows the new id yet: on failure the session stays as
            // it was.
            let undo = |e: SessionError| {
                let _ = rt.store.delete(&new_id, None);
                unindex(rt, user.as_deref(), &new_id);
                Err(e)
            };
            if let Err(e) = index(rt, user.as_deref(), &new_id) {
                return undo(e);
            }
            // The new id is listed before the old one is checked: an
            // invalidate-user that ended the old id meanwhile either ended
            // it before this check (the new one dies here) or lists again
            // after and finds the new one.
            match rt.store.exists(&self.id) {
                Ok(true) => {}
                Ok(false) => return undo(SessionError::Store(StoreError::Vanished)),
                Err(e) => return undo(e.into()),
            }
            if let Err(e) = rt.store.delete(&self.id, self.fence()) {
                return undo(e.into());
            }
            unindex(rt, self.stored_user.as_deref(), &self.id);
            self.stored_user = user;
            if self.scratch_dir.is_some() {
                self.scratch_dir = Some(
                    rt.scratch
                        .rename(&self.id, &new_id)
                        .map_err(SessionError::Scratch)?,
                );
            }
            let old_id = self.id;
            self.id = new_id;
            self.cookie = Some(CookieChange::Set(new_id));
            rt.stats.bump(Counter::Regenerated);
            rt.stats.bump(Counter::Saved);
            self.outcome = Outcome::Regenerated(old_id);
        } else if self.data_changed || touch_due || limits_changed || user_changed {
            self.stamp_access(dir, now);
            self.record.user = user.clone();
            if user_changed {
                index(rt, user.as_deref(), &self.id)?;
            }
            let saved = match self.fence() {
                // The last write: the lock goes with it (one round trip),
                // unless the old user's entry is still to be removed.
                Some(fence) if !user_changed => {
                    rt.store.save_and_release(&self.id, &self.record, fence)
                }
                fence => rt.store.save(&self.id, &self.record, fence),
            };
            if let Err(e) = saved {
                if user_changed {
                    unindex(rt, user.as_deref(), &self.id);
                }
                return Err(e.into());
            }
            if user_changed {
                unindex(rt, self.stored_user.as_deref(), &self.id);
            }
            self.stored_user = user;
            rt.stats.bump(Counter::Saved);
            self.outcome = Outcome::Saved;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;
    use crate::cookie::{cookie_value, signed_ids};
    use crate::generation::{Builder, HostDefaults};

    struct Fixture {
        _dir: tempfile::TempDir,
        rt: Runtime,
        conf: DirConfig,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let host = HostDefaults {
            store_dir: dir.path().join("store"),
            scratch_root: dir.path().join("scratch"),
            key_file: dir.path().join("key"),
        };
        std::fs::create_dir(&host.scratch_root).unwrap();
        std::fs::create_dir(&host.store_dir).unwrap();
        let rt = Builder::default()
            .build(&ServerConfig::default(), &host, "test.example")
            .unwrap();
        let mut conf = DirConfig::default();
        conf.set("RSessionTimeout", "100").unwrap();
        // Most tests start from a kept session; OnWrite has its own.
        conf.set("RSessionCreate", "Always").unwrap();
        Fixture {
            _dir: dir,
            rt,
            conf,
        }
    }

    fn cookies(f: &Fixture, id: &SessionId) -> Candidates {
        let header = format!("sid={}", cookie_value(id, "sid", &f.rt.keys));
        signed_ids([header.as_str()], "sid", &f.rt.keys)
    }

    fn start(f: &Fixture, found: &Candidates, now: u64) -> ActiveSession {
        ActiveSession::begin(&f.rt, &f.conf, found, now, &mut Notes::default()).unwrap()
    }

    #[test]
    fn new_then_resumed_with_data() {
        let f = fixture();
        let mut s = start(&f, &Candidates::default(), 1000);
        assert!(s.is_new());
        assert!(s.scratch_dir().unwrap().is_dir());
        let refused = s.apply(&[Command::Set(vec![("n".into(), "1".into())])], 1000, false);
        assert!(refused.is_empty());
        let id = *s.id();
        assert_eq!(
            s.finish(&f.rt, &f.conf, 1000).unwrap(),
            Some(CookieChange::Set(id))
        );

        let mut again = start(&f, &cookies(&f, &id), 1010);
        assert!(!again.is_new());
        assert_eq!(again.id(), &id);
        assert_eq!(again.encoded_data(), "n=1");
        assert_eq!(again.finish(&f.rt, &f.conf, 1010).unwrap(), None);
    }

    #[test]
    fn unknown_and_expired_ids_get_a_fresh_session() {
        let f = fixture();
        let stranger = SessionId::generate().unwrap();
        let s = start(&f, &cookies(&f, &stranger), 1000);
        assert_ne!(s.id(), &stranger);
        let mut s = s;
        let id = *s.id();
        s.finish(&f.rt, &f.conf, 1000).unwrap();
        // Idle deadline: the stamp (1001) + timeout (100) + the touch lag
        // allowed (50).
        let still = start(&f, &cookies(&f, &id), 1150);
        assert!(!still.is_new());
        drop(still);
        let later = start(&f, &cookies(&f, &id), 1151);
        assert!(later.is_new());
        assert!(
            f.rt.store.load(&id).unwrap().is_none(),
            "expired record removed"
        );
        assert!(!f.rt.scratch.path(&id).exists(), "expired scratch removed");
    }

    #[test]
    fn the_size_limit_refuses_and_keeps_the_old_data() {
        let f = fixture();
        let mut s = start(&f, &Candidates::default(), 1000);
        s.apply(&[Command::Set(vec![("a".into(), "1".into())])], 10, false);
        let refused = s.apply(
            &[Command::Set(vec![("b".into(), "x".repeat(20).into())])],
            10,
            false,
        );
        assert_eq!(refused.len(), 1);
        assert_eq!(s.encoded_data(), "a=1");
    }

    #[test]
    fn a_refused_command_puts_back_every_key_it_touched() {
        let f = fixture();
        let mut s = start(&f, &Candidates::default(), 1000);
        s.apply(
            &[Command::Set(vec![
                ("a".into(), "1".into()),
                ("b".into(), "2".into()),
            ])],
            30,
            false,
        );
        let refused = s.apply(
            &[
                Command::Set(vec![
                    ("a".into(), "x".into()),
                    ("c".into(), "new".into()),
                    ("a".into(), "y".into()),
                    ("b".into(), "z".repeat(40).into()),
                ]),
                Command::Unset(vec!["b".into()]),
                Command::Set(vec![("a".into(), "1".into())]),
            ],
            30,
            false,
        );
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(
            s.encoded_data(),
            "a=1",
            "the unset still applied; a=1 is no change"
        );
        assert!(s.has_changes());
        let mut same = start(&f, &Candidates::default(), 1000);
        same.apply(&[Command::Set(vec![("k".into(), "v".into())])], 30, false);
        let before = same.encoded_data();
        same.set_value("k", Some("v"), 30).unwrap();
        same.set_value("gone", None, 30).unwrap();
        assert_eq!(same.encoded_data(), before);
    }

    #[test]
    fn server_errors_discard_all_but_invalidate() {
        let f = fixture();
        let mut s = start(&f, &Candidates::default(), 1000);
        let refused = s.apply(
            &[
                Command::Set(vec![("a".into(), "1".into())]),
                Command::Invalidate,
            ],
            1000,
            true,
        );
        assert_eq!(refused.len(), 1);
        let id = *s.id();
        assert_eq!(
            s.finish(&f.rt, &f.conf, 1000).unwrap(),
            Some(CookieChange::Expire)
        );
        assert!(f.rt.store.load(&id).unwrap().is_none());
    }

    #[test]
    fn regenerate_moves_data_and_scratch_and_kills_the_old_id() {
        let f = fixture();
        let mut s = start(&f, &Candidates::default(), 1000);
        s.apply(
            &[Command::Set(vec![("user".into(), "ann".into())])],
            1000,
            false,
        );
        let old = *s.id();
        s.finish(&f.rt, &f.conf, 1000).unwrap();
        std::fs::write(f.rt.scratch.path(&old).join("f"), "x").unwrap();

        let mut s = start(&f, &cookies(&f, &old), 1001);
        s.apply(&[Command::Regenerate], 1000, false);
        let Some(CookieChange::Set(new)) = s.finish(&f.rt, &f.conf, 1001).unwrap() else {
            panic!("no new cookie")
        };
        assert_ne!(new, old);
        assert!(f.rt.store.load(&old).unwrap().is_none());
        assert_eq!(f.rt.store.load(&new).unwrap().unwrap().data["user"], "ann");
        assert!(f.rt.scratch.path(&new).join("f").exists());
        assert!(start(&f, &cookies(&f, &old), 1002).is_new());
    }

    #[test]
    fn unchanged_sessions_are_written_only_when_the_touch_interval_passed() {
        let mut f = fixture();
        f.conf.set("RSessionTouchInterval", "60").unwrap();
        let mut s = start(&f, &Candidates::default(), 1000);
        let id = *s.id();
        s.finish(&f.rt, &f.conf, 1000).unwrap();
        let mut s = start(&f, &cookies(&f, &id), 1030);
        s.finish(&f.rt, &f.conf, 1030).unwrap();
        // Stamped with the next second; the timeout (100) caps the
        // interval at 50.
        assert_eq!(f.rt.store.load(&id).unwrap().unwrap().accessed, 1001);
        let mut s = start(&f, &cookies(&f, &id), 1065);
        s.finish(&f.rt, &f.conf, 1065).unwrap();
        assert_eq!(f.rt.store.load(&id).unwrap().unwrap().accessed, 1066);
    }

    #[test]
    fn the_ceiling_refuses_new_sessions_but_not_existing_ones() {
        let f = fixture();
        let mut conf = ServerConfig::default();
        conf.set("RSessionMaxSessions", "2", false).unwrap();
        let host = HostDefaults {
            store_dir: f._dir.path().join("store"),
            scratch_root: f._dir.path().join("scratch"),
            key_file: f._dir.path().join("key"),
        };
        let rt = Builder::default().build(&conf, &host, "t").unwrap();
        let begin = |found: &Candidates| {
            ActiveSession::begin(&rt, &f.conf, found, 1000, &mut Notes::default())
        };
        let mut first = begin(&Candidates::default()).unwrap();
        let id = *first.id();
        first.finish(&rt, &f.conf, 1000).unwrap();
        begin(&Candidates::default())
            .unwrap()
            .finish(&rt, &f.conf, 1000)
            .unwrap();
        assert_eq!(rt.stats.live(), 2);
        let refused = begin(&Candidates::default()).err().unwrap();
        assert_eq!(refused.http_status(), 503);
        let cookie = format!("sid={}", cookie_value(&id, "sid", &rt.keys));
        let mut resumed = begin(&signed_ids([cookie.as_str()], "sid", &rt.keys)).unwrap();
        assert!(!resumed.is_new(), "existing sessions keep working");
        resumed.invalidate().unwrap();
        resumed.finish(&rt, &f.conf, 1000).unwrap();
        assert_eq!(rt.stats.live(), 1);
        assert!(begin(&Candidates::default()).is_ok(), "room again");
    }

    #[test]
    fn on_write_a_new_session_leaves_nothing_until_written() {
        let mut f = fixture();
        f.conf.set("RSessionCreate", "OnWrite").unwrap();
        let count = |f: &Fixture| f.rt.store.count().unwrap();

        let mut untouched = start(&f, &Candidates::default(), 1000);
        assert!(untouched.is_new());
        let dir = untouched.scratch_dir().unwrap().clone();
        assert!(dir.is_dir(), "handlers get a directory to write into");
        assert_eq!(
            untouched.finish(&f.rt, &f.conf, 1000).unwrap(),
            None,
            "no cookie"
        );
        assert!(!dir.exists(), "its empty directory is gone");
        assert_eq!(count(&f), 0);
        assert_eq!(f.rt.stats.get(Counter::Created), 0);
        assert_eq!(f.rt.stats.get(Counter::Discarded), 1);

        let mut invalidated = start(&f, &Candidates::default(), 1000);
        invalidated.invalidate().unwrap();
        assert_eq!(invalidated.finish(&f.rt, &f.conf, 1000).unwrap(), None);

        let mut written = start(&f, &Candidates::default(), 1000);
        written.apply(&[Command::Set(vec![("n".into(), "1".into())])], 1000, false);
        let id = *written.id();
        assert_eq!(
            written.finish(&f.rt, &f.conf, 1000).unwrap(),
            Some(CookieChange::Set(id))
        );
        assert_eq!(f.rt.store.load(&id).unwrap().unwrap().data["n"], "1");

        let with_file = start(&f, &Candidates::default(), 1000);
        std::fs::write(with_file.scratch_dir().unwrap().join("upload"), "x").unwrap();
        let mut with_file = with_file;
        let id = *with_file.id();
        assert_eq!(
            with_file.finish(&f.rt, &f.conf, 1000).unwrap(),
            Some(CookieChange::Set(id)),
            "a file left in the directory keeps the session"
        );
        assert!(f.rt.scratch.path(&id).join("upload").exists());
        assert_eq!(count(&f), 2);
        assert_eq!(f.rt.stats.live(), 2);
    }

    #[test]
    fn a_session_is_valid_only_under_the_scope_that_created_it() {
        let f = fixture();
        let host = HostDefaults {
            store_dir: f._dir.path().join("store"),
            scratch_root: f._dir.path().join("scratch"),
            key_file: f._dir.path().join("key"),
        };
        let mut builder = Builder::default();
        let a = builder
            .build(&ServerConfig::default(), &host, "a.test")
            .unwrap();
        let b = builder
            .build(&ServerConfig::default(), &host, "b.test")
            .unwrap();
        let begin = |rt: &Runtime, found: &Candidates| {
            ActiveSession::begin(rt, &f.conf, found, 1000, &mut Notes::default()).unwrap()
        };
        let mut on_a = begin(&a, &Candidates::default());
        on_a.apply(
            &[Command::Set(vec![("role".into(), "admin-of-a".into())])],
            1000,
            false,
        );
        let id = *on_a.id();
        on_a.finish(&a, &f.conf, 1000).unwrap();
        let cookie = format!("sid={}", cookie_value(&id, "sid", &a.keys));
        let found = signed_ids([cookie.as_str()], "sid", &b.keys);
        assert_eq!(found.signed, vec![id], "same key: the MAC checks out");
        let mut on_b = begin(&b, &found);
        assert!(
            on_b.is_new() && on_b.data().is_empty(),
            "b.test gets a fresh session"
        );
        on_b.finish(&b, &f.conf, 1000).unwrap();
        let mut again_on_a = begin(&a, &found);
        assert!(!again_on_a.is_new(), "a.test's session is untouched");
        assert_eq!(again_on_a.data()["role"], "admin-of-a");
        again_on_a.finish(&a, &f.conf, 1000).unwrap();
    }

    #[test]
    fn a_session_used_more_often_than_its_timeout_never_expires() {
        for (timeout, touch) in [("3", "60"), ("3", "0"), ("10", "9"), ("1", "60")] {
            let mut f = fixture();
            f.conf.set("RSessionTimeout", timeout).unwrap();
            f.conf.set("RSessionTouchInterval", touch).unwrap();
            let timeout: u64 = timeout.parse().unwrap();
            let mut s = start(&f, &Candidates::default(), 1000);
            let id = *s.id();
            s.finish(&f.rt, &f.conf, 1000).unwrap();
            // A request just under the idle timeout after the previous
            // one (whole seconds: timeout - 1 apart, the worst case).
            let mut now = 1000;
            for _ in 0..50 {
                now += timeout.saturating_sub(1).max(1) - u64::from(timeout == 1);
                let mut s = start(&f, &cookies(&f, &id), now);
                assert!(
                    !s.is_new(),
                    "ended early at {now} (timeout {timeout}, touch {touch:?})"
                );
                s.finish(&f.rt, &f.conf, now).unwrap();
            }
        }
    }

    #[test]
    fn the_absolute_lifetime_is_never_cut_short_by_whole_seconds() {
        let mut f = fixture();
        f.conf.set("RSessionMaxLifetime", "2").unwrap();
        // Created at 1000.9 (second 1000): alive throughout 1001.x and
        // 1002.x-before-1002.9, so at second 1002 it must still be there.
        let mut s = start(&f, &Candidates::default(), 1000);
        let id = *s.id();
        s.finish(&f.rt, &f.conf, 1000).unwrap();
        let mut s = start(&f, &cookies(&f, &id), 1002);
        assert!(!s.is_new());
        s.finish(&f.rt, &f.conf, 1002).unwrap();
        assert!(
            start(&f, &cookies(&f, &id), 1003).is_new(),
            "ends at most a second late"
        );
    }

    #[test]
    fn failures_that_pass_answer_503_and_others_500() {
        use std::io::{Error, ErrorKind};
        let io = |kind| {
            SessionError::Store(StoreError::Io {
                what: "save".into(),
                source: Error::from(kind),
            })
        };
        for errno in [
            libc::ENOSPC,
            libc::EROFS,
            libc::EDQUOT,
            libc::EACCES,
            libc::EPERM,
        ] {
            let e = SessionError::Store(StoreError::Io {
                what: "save".into(),
                source: Error::from_raw_os_error(errno),
            });
            assert_eq!(e.http_status(), 503, "errno {errno}");
        }
        assert_eq!(io(ErrorKind::InvalidData).http_status(), 500);
        assert_eq!(
            SessionError::Store(StoreError::Unavailable("down".into())).http_status(),
            503
        );
        assert_eq!(
            SessionError::Store(StoreError::Corrupt("x".into())).http_status(),
            500
        );
        assert_eq!(
            SessionError::Scratch(Error::from_raw_os_error(libc::ENOSPC)).http_status(),
            503
        );
    }

    #[test]
    fn only_handler_changes_count_as_changes() {
        let f = fixture();
        let mut s = start(&f, &Candidates::default(), 1000);
        assert!(!s.has_changes(), "a new session alone is no change");
        s.apply(&[Command::Set(vec![("a".into(), "1".into())])], 1000, false);
        assert!(s.has_changes());
        let mut t = start(&f, &Candidates::default(), 1000);
        t.apply(&[Command::Invalidate], 1000, false);
        assert!(t.has_changes());
        // Edits that end where they began change nothing.
        let mut z = start(&f, &Candidates::default(), 1000);
        z.set_value("a", Some("x"), 1000).unwrap();
        let mut resumed_like = z;
        resumed_like.data_changed = false;
        resumed_like.apply(
            &[Command::Set(vec![
                ("a".into(), "y".into()),
                ("a".into(), "x".into()),
            ])],
            1000,
            false,
        );
        assert!(!resumed_like.has_changes(), "set a=y&a=x with a=x");
    }

    /// The ids the index lists for `user` under the fixture's scope.
    fn indexed(f: &Fixture, user: &str) -> Vec<SessionId> {
        let key = user_index_key(&f.rt.scope, user);
        let mut ids =
            f.rt.store
                .user_index()
                .unwrap()
                .sessions(&key, 1000)
                .unwrap();
        ids.sort_by_key(|id| id.to_string());
        ids
    }

    fn signed_in(f: &Fixture, user: &str, now: u64) -> SessionId {
        let mut s = start(f, &Candidates::default(), now);
        s.apply(
            &[Command::Set(vec![("user".into(), user.into())])],
            1000,
            false,
        );
        s.finish(&f.rt, &f.conf, now).unwrap();
        *s.id()
    }

    #[test]
    fn the_user_index_follows_sign_in_regenerate_sign_out_and_expiry() {
        let mut f = fixture();
        f.conf.set("RSessionUser", "user").unwrap();
        let id = signed_in(&f, "ann", 1000);
        assert_eq!(indexed(&f, "ann"), vec![id]);

        let mut s = start(&f, &cookies(&f, &id), 1001);
        s.apply(&[Command::Regenerate], 1000, false);
        let Some(CookieChange::Set(new)) = s.finish(&f.rt, &f.conf, 1001).unwrap() else {
            panic!("no new id")
        };
        assert_eq!(indexed(&f, "ann"), vec![new], "regenerate moves the entry");

        let mut s = start(&f, &cookies(&f, &new), 1002);
        s.apply(
            &[Command::Set(vec![("user".into(), "bob".into())])],
            1000,
            false,
        );
        s.finish(&f.rt, &f.conf, 1002).unwrap();
        assert!(indexed(&f, "ann").is_empty());
        assert_eq!(indexed(&f, "bob"), vec![new], "a new user moves it");

        // A location without RSessionUser leaves the index alone.
        let mut elsewhere = f.conf.clone();
        elsewhere.user_key = None;
        let mut s = ActiveSession::begin(
            &f.rt,
            &elsewhere,
            &cookies(&f, &new),
            1003,
            &mut Notes::default(),
        )
        .unwrap();
        s.apply(&[Command::Set(vec![("x".into(), "1".into())])], 1000, false);
        s.finish(&f.rt, &elsewhere, 1003).unwrap();
        assert_eq!(indexed(&f, "bob"), vec![new]);

        let mut s = start(&f, &cookies(&f, &new), 1004);
        s.apply(&[Command::Unset(vec!["user".into()])], 1000, false);
        s.finish(&f.rt, &f.conf, 1004).unwrap();
        assert!(indexed(&f, "bob").is_empty(), "signing out drops it");

        let gone = signed_in(&f, "cy", 1005);
        let mut s = start(&f, &cookies(&f, &gone), 1006);
        s.invalidate().unwrap();
        s.finish(&f.rt, &f.conf, 1006).unwrap();
        assert!(indexed(&f, "cy").is_empty(), "invalidate drops it");

        let expiring = signed_in(&f, "dee", 1007);
        let later = start(&f, &cookies(&f, &expiring), 2000);
        assert!(later.is_new());
        let key = user_index_key(&f.rt.scope, "dee");
        let dir = f._dir.path().join("store/users").join(&key[..2]).join(&key);
        assert!(!dir.exists(), "an expired session leaves the index");
    }

    #[test]
    fn invalidate_user_ends_every_session_of_the_user_and_no_other() {
        let mut f = fixture();
        f.conf.set("RSessionUser", "user").unwrap();
        let ann: Vec<SessionId> = (0..3).map(|_| signed_in(&f, "ann", 1000)).collect();
        let bob = signed_in(&f, "bob", 1000);
        let mut s = start(&f, &cookies(&f, &ann[0]), 1001);
        s.apply(&[Command::InvalidateUser], 1000, false);
        assert_eq!(
            s.finish(&f.rt, &f.conf, 1001).unwrap(),
            Some(CookieChange::Expire)
        );
        assert_eq!(s.ended_others(), 2);
        for id in &ann {
            assert!(f.rt.store.load(id).unwrap().is_none());
            assert!(!f.rt.scratch.path(id).exists());
        }
        assert!(indexed(&f, "ann").is_empty());
        assert!(f.rt.store.load(&bob).unwrap().is_some());
        assert_eq!(indexed(&f, "bob"), vec![bob]);
        assert_eq!(f.rt.stats.live(), 1);
    }

    #[test]
    fn a_stale_index_entry_does_not_end_another_users_session() {
        let mut f = fixture();
        f.conf.set("RSessionUser", "user").unwrap();
        let ann = signed_in(&f, "ann", 1000);
        let bob = signed_in(&f, "bob", 1000);
        // Left in ann's list by a crash between a user change's two steps.
        let key = user_index_key(&f.rt.scope, "ann");
        f.rt.store.user_index().unwrap().add(&key, &bob).unwrap();
        let mut s = start(&f, &cookies(&f, &ann), 1001);
        s.apply(&[Command::InvalidateUser], 1000, false);
        s.finish(&f.rt, &f.conf, 1001).unwrap();
        assert_eq!(s.ended_others(), 0);
        assert!(
            f.rt.store.load(&bob).unwrap().is_some(),
            "bob is still signed in"
        );
        assert!(indexed(&f, "ann").is_empty(), "the stale entry went");
        assert_eq!(indexed(&f, "bob"), vec![bob]);
    }

    #[test]
    fn a_regenerate_racing_invalidate_user_does_not_survive_it() {
        let mut f = fixture();
        f.conf.set("RSessionUser", "user").unwrap();
        let id = signed_in(&f, "ann", 1000);
        let mut racing = start(&f, &cookies(&f, &id), 1001);
        racing.apply(&[Command::Regenerate], 1000, false);
        // invalidate-user elsewhere ends the old id while it is held.
        f.rt.store.delete(&id, None).unwrap();
        assert!(racing.finish(&f.rt, &f.conf, 1001).is_err());
        assert!(indexed(&f, "ann").is_empty(), "no new id survives");
    }

    #[test]
    fn a_held_session_times_out_other_requests() {
        let mut f = fixture();
        f.conf.set("RSessionLockTimeout", "0.05").unwrap();
        let mut s = start(&f, &Candidates::default(), 1000);
        let id = *s.id();
        let err = ActiveSession::begin(
            &f.rt,
            &f.conf,
            &cookies(&f, &id),
            1000,
            &mut Notes::default(),
        )
        .err()
        .unwrap();
        assert_eq!(err.http_status(), 503);
        s.finish(&f.rt, &f.conf, 1000).unwrap();
        assert!(!start(&f, &cookies(&f, &id), 1000).is_new());
    }
}
