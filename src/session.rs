//! One request's session, as pure steps: resolve the cookie, lock, load (or
//! create), apply the handler's changes, save, unlock. `hooks` calls these
//! with plain values and writes the results back into the request.

use crate::config::DirConfig;
use crate::cookie::Candidates;
use crate::generation::Runtime;
use crate::id::SessionId;
use crate::lock::{self, LockError, SessionLock};
use crate::record::{encode_data, Data, Record};
use crate::status::Counter;
use crate::store::{Created, Loaded, StoreError};
use crate::update::Command;
use std::path::PathBuf;

/// Why a request could not get its session. Client input never lands here.
#[derive(Debug)]
pub enum SessionError {
    LockTimeout,
    Store(StoreError),
    Scratch(std::io::Error),
    Id(std::io::Error),
}

impl SessionError {
    /// 503 for conditions that pass (the client should retry), else 500.
    pub fn http_status(&self) -> u16 {
        match self {
            SessionError::LockTimeout | SessionError::Store(StoreError::Unavailable(_)) => 503,
            _ => 500,
        }
    }
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::LockTimeout => write!(f, "timed out waiting for the session lock"),
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
    data_changed: bool,
    regenerate: bool,
    state: State,
    scratch_dir: Option<PathBuf>,
    cookie: Option<CookieChange>,
    lock: Option<SessionLock>,
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
    let acquired =
        lock::acquire(rt.store.as_ref(), id, dir.lock_timeout(), rt.lock_ttl).map(|l| (l, ()));
    counted(rt, acquired).map(|(l, ())| Some(l))
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
    let acquired = lock::acquire_and_load(rt.store.as_ref(), id, dir.lock_timeout(), rt.lock_ttl);
    counted(rt, acquired).map(|(l, loaded)| (Some(l), loaded))
}

/// Counts a lock attempt's waits and timeouts for the status page.
fn counted<T>(
    rt: &Runtime,
    acquired: Result<(SessionLock, T), LockError>,
) -> Result<(SessionLock, T), SessionError> {
    match acquired {
        Ok((l, extra)) => {
            if l.waited {
                rt.stats.bump(Counter::LockWaits);
            }
            Ok((l, extra))
        }
        Err(LockError::Timeout) => {
            rt.stats.bump(Counter::LockTimeouts);
            Err(SessionError::LockTimeout)
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
            if record.is_expired_under(now, dir.timeout(), dir.max_lifetime()) {
                // We hold its lock (or locking is off): remove it now rather
                // than leave it to the sweeper.
                rt.store.delete(id)?;
                let _ = rt.scratch.remove(id);
                rt.stats.bump(Counter::Expired);
                rejected += 1;
                continue;
            }
            rt.stats.add(Counter::RejectedCookies, rejected);
            rt.stats.bump(Counter::Resumed);
            // The directory was made with the session and goes with it; it
            // is checked (and remade if someone removed it) only when the
            // access time is due for a write, not on every request.
            let touch_due = now.saturating_sub(record.accessed) >= dir.touch_interval();
            let scratch_dir = match (dir.scratch(), touch_due) {
                (true, true) => Some(rt.scratch.ensure(id).map_err(SessionError::Scratch)?),
                (true, false) => Some(rt.scratch.path(id)),
                (false, _) => None,
            };
            return Ok(ActiveSession {
                id: *id,
                record,
                is_new: false,
                data_changed: false,
                regenerate: false,
                state: State::Live,
                scratch_dir,
                cookie: None,
                lock,
            });
        }
        rt.stats.add(Counter::RejectedCookies, rejected);
        Self::create(rt, dir, now)
    }

    fn create(rt: &Runtime, dir: &DirConfig, now: u64) -> Result<ActiveSession, SessionError> {
        let record = Record::new(now, dir.timeout(), dir.max_lifetime());
        let id = create_record(rt, &record)?;
        // Nobody else knows the id yet, so this never waits; it keeps the
        // sweeper away for the rest of the request.
        let lock = lock_session(rt, dir, &id)?;
        let scratch_dir = match dir.scratch() {
            true => match rt.scratch.create(&id) {
                Ok(p) => Some(p),
                Err(e) => {
                    let _ = rt.store.delete(&id);
                    return Err(SessionError::Scratch(e));
                }
            },
            false => None,
        };
        rt.stats.bump(Counter::Created);
        Ok(ActiveSession {
            id,
            record,
            is_new: true,
            data_changed: false,
            regenerate: false,
            state: State::Live,
            scratch_dir,
            cookie: Some(CookieChange::Set(id)),
            lock,
        })
    }

    pub fn id(&self) -> &SessionId {
        &self.id
    }
    pub fn is_new(&self) -> bool {
        self.is_new
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
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// Sets (`Some`) or removes (`None`) one key; refused when the encoded
    /// data would exceed `max_size`, leaving the session as it was.
    pub fn set_value(
        &mut self,
        key: &str,
        value: Option<&str>,
        max_size: usize,
    ) -> Result<(), &'static str> {
        self.apply_one(max_size, |data| match value {
            Some(v) => {
                data.insert(key.to_string(), v.to_string());
            }
            None => {
                data.remove(key);
            }
        })
    }

    fn apply_one(
        &mut self,
        max_size: usize,
        change: impl FnOnce(&mut Data),
    ) -> Result<(), &'static str> {
        if self.state != State::Live {
            return Err("the session is no longer live");
        }
        let mut data = self.record.data.clone();
        change(&mut data);
        if data == self.record.data {
            return Ok(());
        }
        if encode_data(&data).len() > max_size {
            return Err("the data would exceed RSessionMaxDataSize");
        }
        self.record.data = data;
        self.data_changed = true;
        Ok(())
    }

    /// Applies the handler's commands in order. On a 5xx response only
    /// `invalidate` takes effect. Returns why each refused command failed.
    pub fn apply(
        &mut self,
        commands: &[Command],
        max_size: usize,
        server_error: bool,
    ) -> Vec<&'static str> {
        let mut refused = Vec::new();
        for cmd in commands {
            let result = match cmd {
                Command::Invalidate => self.invalidate(),
                _ if server_error => Err("changes sent with a 5xx response are discarded"),
                Command::Set(pairs) => self.apply_one(max_size, |d| {
                    d.extend(pairs.iter().cloned());
                }),
                Command::Unset(keys) => self.apply_one(max_size, |d| {
                    for k in keys {
                        d.remove(k);
                    }
                }),
                Command::Regenerate => self.request_regenerate(),
            };
            if let Err(why) = result {
                refused.push(why);
            }
        }
        refused
    }

    pub fn invalidate(&mut self) -> Result<(), &'static str> {
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
        result.map(|()| self.cookie.take())
    }

    fn save(&mut self, rt: &Runtime, dir: &DirConfig, now: u64) -> Result<(), SessionError> {
        match self.state {
            State::Finished => return Ok(()),
            State::Invalidated => {
                rt.store.delete(&self.id)?;
                let _ = rt.scratch.remove(&self.id);
                rt.stats.bump(Counter::Invalidated);
                self.cookie = Some(CookieChange::Expire);
                return Ok(());
            }
            State::Live => {}
        }
        let touch_due = now.saturating_sub(self.record.accessed) >= dir.touch_interval();
        let limits_changed = self.record.idle_timeout != dir.timeout()
            || self.record.max_lifetime != dir.max_lifetime();
        if self.regenerate {
            self.record.accessed = now;
            self.record.idle_timeout = dir.timeout();
            self.record.max_lifetime = dir.max_lifetime();
            let new_id = create_record(rt, &self.record)?;
            rt.store.delete(&self.id)?;
            if self.scratch_dir.is_some() {
                self.scratch_dir = Some(
                    rt.scratch
                        .rename(&self.id, &new_id)
                        .map_err(SessionError::Scratch)?,
                );
            }
            self.id = new_id;
            self.cookie = Some(CookieChange::Set(new_id));
            rt.stats.bump(Counter::Regenerated);
        } else if self.data_changed || touch_due || limits_changed {
            self.record.accessed = now;
            self.record.idle_timeout = dir.timeout();
            self.record.max_lifetime = dir.max_lifetime();
            rt.store.save(&self.id, &self.record)?;
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
            .build(&ServerConfig::default(), &host)
            .unwrap();
        let mut conf = DirConfig::default();
        conf.set("RSessionTimeout", "100").unwrap();
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
        let later = start(&f, &cookies(&f, &id), 1100);
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
            &[Command::Set(vec![("b".into(), "x".repeat(20))])],
            10,
            false,
        );
        assert_eq!(refused.len(), 1);
        assert_eq!(s.encoded_data(), "a=1");
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
        assert_eq!(f.rt.store.load(&id).unwrap().unwrap().accessed, 1000);
        let mut s = start(&f, &cookies(&f, &id), 1065);
        s.finish(&f.rt, &f.conf, 1065).unwrap();
        assert_eq!(f.rt.store.load(&id).unwrap().unwrap().accessed, 1065);
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
