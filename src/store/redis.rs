//! The Redis store, for server farms: records under `PREFIX<id>` with a
//! Redis expiry at the record's own deadline (so Redis does the sweeping),
//! per-session locks as `SET PREFIXlock:<id> TOKEN NX PX ttl` released by a
//! compare-and-delete script. Connections are made lazily in each child
//! (never in the parent, so none is shared across fork) and reused; a
//! connection that failed is dropped and the next call reconnects.

use super::{Created, HeldLock, LockedLoad, RedisUrl, SessionStore, StoreError, SweepCounts};
use crate::id::SessionId;
use crate::record::Record;
use parking_lot::Mutex;
use redis::{Connection, IntoConnectionInfo, RedisConnectionInfo, Script};
use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// Deletes the lock only if we still own it (our token), atomically.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end")
});

/// Takes the lock and reads the record in one round trip.
static LOCK_AND_GET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then \
           return {1, redis.call('GET', KEYS[2])} \
         end \
         return {0, false}",
    )
});

/// Idle connections kept per process.
const MAX_IDLE: usize = 16;

pub struct RedisStore {
    url: RedisUrl,
    pool: Arc<Pool>,
}

struct Pool {
    client: redis::Client,
    timeout: Duration,
    idle: Mutex<Vec<Connection>>,
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

impl Pool {
    /// Runs `f` on a pooled connection; a connection that failed goes away.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let pooled = self.idle.lock().pop();
        let mut con = match pooled {
            Some(c) => c,
            None => {
                let con = self
                    .client
                    .get_connection_with_timeout(self.timeout)
                    .map_err(unavailable)?;
                con.set_read_timeout(Some(self.timeout))
                    .map_err(unavailable)?;
                con.set_write_timeout(Some(self.timeout))
                    .map_err(unavailable)?;
                con
            }
        };
        match f(&mut con) {
            Ok(v) => {
                let mut idle = self.idle.lock();
                if idle.len() < MAX_IDLE {
                    idle.push(con);
                }
                Ok(v)
            }
            Err(e) => {
                // A server's error reply leaves the connection usable; a
                // broken or timed-out one may be mid-reply, so it goes.
                let broken = e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal();
                if !broken {
                    self.idle.lock().push(con);
                }
                Err(unavailable(e))
            }
        }
    }
}

struct RedisLock {
    pool: Arc<Pool>,
    key: String,
    token: String,
}

impl HeldLock for RedisLock {}

impl Drop for RedisLock {
    fn drop(&mut self) {
        // If Redis is unreachable now, the lock frees itself after its TTL.
        let _ = self
            .pool
            .with(|c| RELEASE.key(&self.key).arg(&self.token).invoke::<i64>(c));
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

impl RedisStore {
    pub fn open(url: &RedisUrl) -> Result<RedisStore, StoreError> {
        let mut settings = RedisConnectionInfo::default()
            .set_db(url.db as i64)
            .set_skip_set_lib_name();
        if let Some(pw) = &url.password {
            settings = settings.set_password(pw);
        }
        let info = (url.host.clone(), url.port)
            .into_connection_info()
            .map_err(unavailable)?
            .set_redis_settings(settings);
        let client = redis::Client::open(info).map_err(unavailable)?;
        Ok(RedisStore {
            url: url.clone(),
            pool: Arc::new(Pool {
                client,
                timeout: url.timeout,
                idle: Mutex::new(Vec::new()),
            }),
        })
    }

    fn key(&self, id: &SessionId) -> String {
        format!("{}{}", self.url.prefix, id)
    }

    fn lock_key(&self, id: &SessionId) -> String {
        format!("{}lock:{}", self.url.prefix, id)
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
}

impl SessionStore for RedisStore {
    fn describe(&self) -> String {
        super::StoreUrl::Redis(self.url.clone()).to_string()
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

    fn save(&self, id: &SessionId, record: &Record) -> Result<(), StoreError> {
        // XX: a record that expired (or was deleted) meanwhile stays gone.
        if self.set(id, record, "XX")? {
            Ok(())
        } else {
            Err(StoreError::Vanished)
        }
    }

    fn delete(&self, id: &SessionId) -> Result<(), StoreError> {
        let key = self.key(id);
        self.pool
            .with(|c| redis::cmd("DEL").arg(&key).query::<i64>(c))
            .map(|_| ())
    }

    fn try_lock(
        &self,
        id: &SessionId,
        ttl: Duration,
    ) -> Result<Option<Box<dyn HeldLock>>, StoreError> {
        let key = self.lock_key(id);
        let token = random_token()?;
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let reply: Option<String> = self.pool.with(|c| {
            redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query(c)
        })?;
        Ok(reply.map(|_| {
            Box::new(RedisLock {
                pool: self.pool.clone(),
                key,
                token,
            }) as Box<dyn HeldLock>
        }))
    }

    fn try_lock_and_load(
        &self,
        id: &SessionId,
        ttl: Duration,
    ) -> Result<Option<LockedLoad>, StoreError> {
        let key = self.lock_key(id);
        let token = random_token()?;
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let (locked, bytes): (i64, Option<Vec<u8>>) = self.pool.with(|c| {
            LOCK_AND_GET
                .key(&key)
                .key(self.key(id))
                .arg(&token)
                .arg(ttl_ms)
                .invoke::<(i64, Option<Vec<u8>>)>(c)
        })?;
        if locked != 1 {
            return Ok(None);
        }
        let lock: Box<dyn HeldLock> = Box::new(RedisLock {
            pool: self.pool.clone(),
            key,
            token,
        });
        let loaded = super::decode_stored(bytes.as_deref(), id, || self.describe());
        Ok(Some((lock, loaded)))
    }

    fn count(&self) -> Result<u64, StoreError> {
        // Session keys are the prefix plus exactly 32 characters; lock keys
        // are longer.
        let pattern = format!("{}{}", self.url.prefix, "?".repeat(32));
        self.pool.with(|c| {
            let mut cursor: u64 = 0;
            let mut total = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(c)?;
                total += keys.len() as u64;
                if next == 0 {
                    return Ok(total);
                }
                cursor = next;
            }
        })
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
        _removed: &mut dyn FnMut(&SessionId),
    ) -> Result<SweepCounts, StoreError> {
        *cursor = 0;
        Ok(SweepCounts {
            records: self.count()?,
            ..SweepCounts::default()
        })
    }
}
