//! Issue 5: several httpd servers share sessions through a real Redis, with
//! a lock that holds across servers, Redis-side expiry, and 503s (not hangs)
//! while Redis is down. Issue 12 item 8: locks survive stalls, restarts and
//! long requests; a request that lost its lock never writes.

mod harness;

use harness::http::{get, get_with_cookie, try_send};
use harness::redis::Redis;
use harness::scripts::{COUNTER_CGI, ENV_CGI, HOLD_CGI};
use harness::{wait_for, Httpd, Mpm, Options};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Like COUNTER_CGI, but takes 3 s between reading and writing.
const SLOW_COUNTER_CGI: &str = r#"#!/bin/sh
n=$(printf '%s' "$RSESSION_DATA" | tr '&' '\n' | sed -n 's/^n=//p')
sleep 4
n=$(( ${n:-0} + 1 ))
printf 'Content-Type: text/plain\nX-RSession: set n=%s\n\n%s\n' "$n" "$n"
"#;

/// Like HOLD_CGI, but answers with the command in its query string
/// (`invalidate`, `regenerate`; else `set held=done`).
const HOLD_THEN_CGI: &str = r#"#!/bin/sh
echo $PPID > "$RSESSION_DIR/.holder.tmp" && mv "$RSESSION_DIR/.holder.tmp" "$RSESSION_DIR/holder.pid"
while [ ! -e "$RSESSION_DIR/release" ]; do sleep 0.05; done
case "$QUERY_STRING" in
  invalidate|regenerate) cmd=$QUERY_STRING ;;
  *) cmd='set held=done' ;;
esac
printf 'Content-Type: text/plain\nX-RSession: %s\n\nreleased\n' "$cmd"
"#;

fn node(redis: &Redis, mpm: Mpm, settings: &str) -> Httpd {
    node_with(redis, mpm, "", settings)
}

/// A server whose sessions live in `redis`, with server-wide settings and
/// settings for /cgi-bin/.
fn node_with(redis: &Redis, mpm: Mpm, server: &str, location: &str) -> Httpd {
    node_at(&redis.url("t:"), mpm, server, location)
}

/// `node_with` for the store URL `url`.
fn node_at(url: &str, mpm: Mpm, server: &str, location: &str) -> Httpd {
    let h = Httpd::start(Options {
        mpm,
        fragment: format!(
            "RSessionStore {url}\nRSessionGCInterval 1\n{server}\n<Location /cgi-bin/>\n  RSession On\n{location}\n</Location>"
        ),
        ..Options::default()
    });
    h.cgi("env.cgi", ENV_CGI);
    h.cgi("counter.cgi", COUNTER_CGI);
    h.cgi("hold.cgi", HOLD_CGI);
    h.cgi("slow-counter.cgi", SLOW_COUNTER_CGI);
    h.cgi("hold-then.cgi", HOLD_THEN_CGI);
    h
}

/// A new kept session (n=1): its cookie, id and scratch directory.
fn new_session(h: &Httpd) -> (String, String, String) {
    let r = get(&h.url("/cgi-bin/counter.cgi"), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    let cookie = r.cookie_pair();
    let env = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &cookie);
    let id = env.env("RSESSION_ID").unwrap();
    let dir = env.env("RSESSION_DIR").unwrap();
    (cookie, id, dir)
}

/// How many session records Redis holds.
fn records(redis: &Redis) -> usize {
    let keys = redis.cmd(&["KEYS", "t:????????????????????????????????"]);
    keys.lines().count()
}

/// Waits until the hold CGI of the session with scratch `dir` runs (and so
/// holds the session's lock).
fn wait_holding(dir: &str) {
    wait_for("the holder to start", Duration::from_secs(10), || {
        Path::new(dir).join("holder.pid").exists().then_some(())
    });
}

/// Lets the hold CGI of `dir` answer; ready for the next one.
fn release_holder(dir: &str) {
    std::fs::remove_file(Path::new(dir).join("holder.pid")).unwrap();
    std::fs::write(Path::new(dir).join("release"), "").unwrap();
}

/// No session lock is left in Redis (the lock TTL, 120 s, is far off).
fn wait_for_no_locks(redis: &Redis, what: &str) {
    wait_for(
        &format!("no lock left behind {what}"),
        Duration::from_secs(5),
        || redis.cmd(&["KEYS", "t:lock:*"]).is_empty().then_some(()),
    );
}

/// The session resumes with its data, well before the lock wait (4 s in
/// these tests) or the lock TTL would have run out.
fn assert_served_promptly(h: &Httpd, cookie: &str, what: &str) {
    let started = Instant::now();
    let r = get_with_cookie(&h.url("/cgi-bin/env.cgi"), cookie);
    assert_eq!(
        (r.status, r.env("RSESSION_NEW").as_deref()),
        (200, Some("0")),
        "{what}: resumed, not kept waiting for a lock nobody holds ({:?}): {r:?}",
        started.elapsed()
    );
}

#[test]
fn two_servers_share_sessions_and_lose_no_update() {
    let redis = Redis::start();
    let a = node(&redis, Mpm::Event, "");
    let b = node(&redis, Mpm::Worker, "");
    let first = get(&a.url("/cgi-bin/counter.cgi"), &[]);
    let cookie = first.cookie_pair();
    let on_b = get_with_cookie(&b.url("/cgi-bin/env.cgi"), &cookie);
    assert_eq!(
        on_b.env("RSESSION_NEW").as_deref(),
        Some("0"),
        "created on A, resumed on B"
    );
    assert_eq!(on_b.env("RSESSION_DATA").as_deref(), Some("n=1"));
    assert!(on_b.set_cookie().is_none());

    let issued = AtomicUsize::new(1);
    std::thread::scope(|s| {
        for t in 0..16 {
            let (a, b, cookie, issued) = (&a, &b, &cookie, &issued);
            s.spawn(move || {
                let server = if t % 2 == 0 { a } else { b };
                while issued.fetch_add(1, Ordering::SeqCst) < 100 {
                    let r = get_with_cookie(&server.url("/cgi-bin/counter.cgi"), cookie);
                    assert_eq!(r.status, 200, "{r:?}");
                }
            });
        }
    });
    let end = get_with_cookie(&a.url("/cgi-bin/env.cgi"), &cookie);
    assert_eq!(
        end.env("RSESSION_DATA").as_deref(),
        Some("n=100"),
        "every increment across both servers kept"
    );
}

#[test]
fn keys_expire_with_the_idle_timeout_and_take_the_scratch_directory_along() {
    let redis = Redis::start();
    let h = node(&redis, Mpm::Event, "  RSessionTimeout 300");
    let r = get(&h.url("/cgi-bin/env.cgi"), &[]);
    let id = r.env("RSESSION_ID").unwrap();
    let ttl: i64 = redis
        .cmd(&["TTL", &format!("t:{id}")])
        .trim_start_matches(':')
        .parse()
        .unwrap();
    // The idle timeout, the next-second stamp and the touch lag allowed
    // (the 60 s touch interval) on top.
    assert!(
        (300..=361).contains(&ttl),
        "TTL follows RSessionTimeout: {ttl}"
    );

    let short = node(&redis, Mpm::Event, "  RSessionTimeout 1");
    let r = get(&short.url("/cgi-bin/env.cgi"), &[]);
    let cookie = r.cookie_pair();
    let id = r.env("RSESSION_ID").unwrap();
    let dir = r.env("RSESSION_DIR").unwrap();
    wait_for("Redis to expire the key", Duration::from_secs(10), || {
        (redis.cmd(&["EXISTS", &format!("t:{id}")]) == ":0").then_some(())
    });
    let again = get_with_cookie(&short.url("/cgi-bin/env.cgi"), &cookie);
    assert_eq!(again.env("RSESSION_NEW").as_deref(), Some("1"));
    wait_for(
        "the local scratch directory to be swept",
        Duration::from_secs(15),
        || (!Path::new(&dir).exists()).then_some(()),
    );
}

#[test]
fn a_lock_whose_holder_died_frees_itself_after_the_lock_ttl() {
    let redis = Redis::start();
    let a = node(&redis, Mpm::Prefork, "");
    let b = Httpd::start(Options {
        fragment: format!(
            "RSessionStore {}\nRSessionLockTTL 2\n<Location /cgi-bin/>\n  RSession On\n  RSessionLockTimeout 20\n</Location>",
            redis.url("t:")
        ),
        ..Options::default()
    });
    b.cgi("env.cgi", ENV_CGI);
    // A's holder takes the lock with A's TTL (the default 120 s); plant one
    // with B's TTL instead, as a node that died mid-request leaves it.
    let r = get(&a.url("/cgi-bin/env.cgi"), &[]);
    let cookie = r.cookie_pair();
    let id = r.env("RSESSION_ID").unwrap();
    assert_eq!(
        redis.cmd(&["SET", &format!("t:lock:{id}"), "dead-node", "PX", "2000"]),
        "+OK"
    );
    let resumed = get_with_cookie(&b.url("/cgi-bin/env.cgi"), &cookie);
    assert_eq!(resumed.status, 200);
    assert_eq!(
        resumed.env("RSESSION_ID"),
        Some(id.clone()),
        "waited for the stale lock, then resumed"
    );
    // A killed child never releases: its lock lasts exactly its TTL.
    let dir = r.env("RSESSION_DIR").unwrap();
    std::thread::scope(|s| {
        let holder = s.spawn(|| {
            let _ =
                std::panic::catch_unwind(|| get_with_cookie(&a.url("/cgi-bin/hold.cgi"), &cookie));
        });
        let pid: i32 = wait_for("the holder's pid", Duration::from_secs(10), || {
            std::fs::read_to_string(Path::new(&dir).join("holder.pid"))
                .ok()?
                .trim()
                .parse()
                .ok()
        });
        let ttl: i64 = redis
            .cmd(&["PTTL", &format!("t:lock:{id}")])
            .trim_start_matches(':')
            .parse()
            .unwrap();
        assert!(
            ttl > 100_000,
            "A holds the lock with its RSessionLockTTL of 120 s: {ttl}"
        );
        // SAFETY: killing the httpd child that serves our request.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        std::fs::write(Path::new(&dir).join("release"), "").unwrap();
        holder.join().unwrap();
    });
    assert_eq!(
        redis.cmd(&["EXISTS", &format!("t:lock:{id}")]),
        ":1",
        "the dead holder's lock stays until its TTL"
    );
}

#[test]
fn a_redis_outage_costs_503s_not_hangs_and_service_returns_by_itself() {
    let mut redis = Redis::start();
    let h = node(&redis, Mpm::Event, "");
    let cookie = get(&h.url("/cgi-bin/env.cgi"), &[]).cookie_pair();
    redis.stop();
    for _ in 0..20 {
        let r = try_send(
            "GET",
            &h.url("/cgi-bin/env.cgi"),
            &[("Cookie", &cookie)],
            None,
        )
        .expect("an answer, not a hang");
        assert_eq!(r.status, 503);
        assert_eq!(r.header("Retry-After"), Some("1"));
    }
    let outage_lines = h.error_log().matches("RS0012").count();
    assert!(
        (1..20).contains(&outage_lines),
        "one line per outage and process, not per request: {outage_lines}"
    );
    redis.start_again();
    let back = wait_for(
        "service to come back without a restart",
        Duration::from_secs(20),
        || {
            let r = get(&h.url("/cgi-bin/env.cgi"), &[]);
            (r.status == 200).then_some(r)
        },
    );
    assert_eq!(
        back.env("RSESSION_NEW").as_deref(),
        Some("1"),
        "sessions were in the stopped Redis: a fresh one"
    );
    // The child that saw the outage logs its end when it next serves a
    // request; the first one after recovery may have gone to another.
    wait_for("the recovery line", Duration::from_secs(10), || {
        assert_eq!(get(&h.url("/cgi-bin/env.cgi"), &[]).status, 200);
        h.error_log().contains("RS0013").then_some(())
    });
}

/// Issues 14 and 16: under `RSessionCreate OnWrite` a request that brought
/// no session and writes nothing (a bot, a health check) sends Redis
/// nothing, and so is served while Redis is down; a request that writes
/// still cannot have a 200 without its session stored. Before, each such
/// request cost a lock and a release (two round trips) and got 503 in an
/// outage. (The harness's scratch root is on a local file system; on NFS a
/// new session takes its lock in Redis, and this does not hold.)
#[test]
fn without_a_session_a_request_that_writes_nothing_needs_no_redis() {
    let mut redis = Redis::start();
    // No sweeper: its marker and counting would add commands.
    let h = node_with(
        &redis,
        Mpm::Event,
        "RSessionGCInterval 0",
        "RSessionCreate OnWrite",
    );
    // Warm up the connections (set-up commands are not counted anyway).
    get(&h.url("/cgi-bin/counter.cgi"), &[]);
    let mut m = Monitor::start(&redis);
    m.sent(&redis);
    for _ in 0..3 {
        let r = get(&h.url("/cgi-bin/env.cgi"), &[]);
        assert!(
            r.status == 200 && r.set_cookie().is_none() && r.env("RSESSION_DIR").is_some(),
            "{r:?}"
        );
    }
    assert_eq!(m.sent(&redis), Vec::<String>::new(), "commands sent");
    let kept = get(&h.url("/cgi-bin/counter.cgi"), &[]);
    assert!(
        kept.status == 200 && kept.set_cookie().is_some(),
        "{kept:?}"
    );
    assert!(!m.sent(&redis).is_empty(), "a session kept in Redis");
    let cookie = kept.cookie_pair();
    redis.stop();
    for _ in 0..5 {
        let r = get(&h.url("/cgi-bin/env.cgi"), &[]);
        assert_eq!(r.status, 200, "nothing to store, served: {r:?}");
        for (what, cookie) in [("a write", None), ("a resumed session", Some(&cookie))] {
            let headers: Vec<(&str, &str)> =
                cookie.iter().map(|c| ("Cookie", c.as_str())).collect();
            let path = if cookie.is_some() {
                "/cgi-bin/env.cgi"
            } else {
                "/cgi-bin/counter.cgi"
            };
            let r = try_send("GET", &h.url(path), &headers, None).expect("an answer");
            assert_eq!(
                (r.status, r.header("Retry-After"), r.set_cookie()),
                (503, Some("1"), None),
                "{what} while Redis is down: {r:?}"
            );
        }
    }
    // The bots served meanwhile say nothing of the store: one line per
    // outage and process, no "reachable again", no error per refused write.
    let log = h.error_log();
    let outage_lines = log.matches("RS0012").count();
    assert!(
        (1..10).contains(&outage_lines),
        "{outage_lines} RS0012 lines"
    );
    assert!(!log.contains("RS0013") && !log.contains("RS0022"), "{log}");
}

#[test]
fn a_stall_during_lock_or_unlock_leaves_no_lock_behind() {
    let redis = Redis::start();
    // A short store timeout: the stalled requests give up well within
    // their lock timeout.
    let h = node_at(
        &redis.url_timeout("t:", 500),
        Mpm::Event,
        "",
        "  RSessionLockTimeout 4",
    );
    let sessions: Vec<_> = (0..6).map(|_| new_session(&h)).collect();

    // Stalled while locking: each request gives up after `timeout` (503),
    // while its SET waits in Redis's socket buffer and runs on resume.
    redis.pause();
    std::thread::scope(|s| {
        for (cookie, ..) in &sessions {
            let h = &h;
            s.spawn(move || {
                let r = get_with_cookie(&h.url("/cgi-bin/env.cgi"), cookie);
                assert_eq!(r.status, 503, "{r:?}");
            });
        }
    });
    redis.resume();
    // The SETs that ran after their requests gave up are undone, whether or
    // not anyone asks for these sessions again.
    wait_for_no_locks(&redis, "after a stall while locking");
    for (cookie, ..) in &sessions {
        assert_served_promptly(&h, cookie, "after a stall while locking");
    }

    // Stalled while saving and unlocking.
    let (cookie, _, dir) = &sessions[0];
    std::thread::scope(|s| {
        let holder = s.spawn(|| get_with_cookie(&h.url("/cgi-bin/hold.cgi"), cookie));
        wait_holding(dir);
        redis.pause();
        release_holder(dir);
        // Its save and release time out (an error, not a hang).
        holder.join().unwrap();
        redis.resume();
    });
    wait_for_no_locks(&redis, "after a stall while unlocking");
    assert_served_promptly(&h, cookie, "after a stall while unlocking");
}

#[test]
fn a_request_longer_than_the_lock_ttl_keeps_its_lock() {
    // Two servers, so that only the Redis lock serialises the two requests
    // (threads of one process also queue on an in-process gate).
    let redis = Redis::start();
    // TTL 3: renewed every second, lost only if Redis stayed silent for
    // two (a loaded machine stalls it for a fraction of that).
    let a = node_with(&redis, Mpm::Event, "RSessionLockTTL 3", "");
    let b = node_with(&redis, Mpm::Prefork, "RSessionLockTTL 3", "");
    let (cookie, ..) = new_session(&a);
    std::thread::scope(|s| {
        for h in [&a, &b] {
            let cookie = &cookie;
            s.spawn(move || {
                let r = get_with_cookie(&h.url("/cgi-bin/slow-counter.cgi"), cookie);
                assert_eq!(r.status, 200, "{r:?}");
            });
        }
    });
    let end = get_with_cookie(&a.url("/cgi-bin/env.cgi"), &cookie);
    assert_eq!(
        end.env("RSESSION_DATA").as_deref(),
        Some("n=3"),
        "both 4 s increments kept, though each outlasted the 3 s lock TTL"
    );
    for h in [&a, &b] {
        assert!(!h.error_log().contains("RS0022"), "{}", h.error_log());
    }
}

#[test]
fn renewal_ends_with_the_holder() {
    let redis = Redis::start();
    let h = node_with(&redis, Mpm::Prefork, "RSessionLockTTL 2", "");
    let (cookie, id, dir) = new_session(&h);
    let lock = format!("t:lock:{id}");
    std::thread::scope(|s| {
        let holder = s.spawn(|| {
            let url = h.url("/cgi-bin/hold.cgi");
            let _ = try_send("GET", &url, &[("Cookie", &cookie)], None);
        });
        wait_holding(&dir);
        let pid: i32 = std::fs::read_to_string(Path::new(&dir).join("holder.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Renewed while its holder lives, past its 2 s TTL...
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(redis.cmd(&["EXISTS", &lock]), ":1", "renewed");
        // ...and gone within its TTL once the holder is killed.
        // SAFETY: killing the httpd child that serves our request.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        wait_for(
            "the dead holder's lock to expire",
            Duration::from_secs(5),
            || (redis.cmd(&["EXISTS", &lock]) == ":0").then_some(()),
        );
        std::fs::write(Path::new(&dir).join("release"), "").unwrap();
        holder.join().unwrap();
    });
    assert_served_promptly(&h, &cookie, "after its holder was killed");
    // Children whose lock keeper ran still end promptly on a graceful
    // restart.
    let mut h = h;
    let old = h.worker_children();
    h.graceful();
    wait_for("the old children to exit", Duration::from_secs(10), || {
        let now = harness::children_of(h.pid());
        (!old.iter().any(|c| now.contains(c))).then_some(())
    });
    assert_served_promptly(&h, &cookie, "after a graceful restart");
}

#[test]
fn a_request_that_lost_its_lock_changes_nothing() {
    let redis = Redis::start();
    let h = node(&redis, Mpm::Event, "");
    for command in ["set", "invalidate", "regenerate"] {
        let (cookie, id, dir) = new_session(&h);
        let lock = format!("t:lock:{id}");
        let before = redis.cmd(&["GET", &format!("t:{id}")]);
        let logged = h.error_log().matches("RS0022").count();
        let records_before = records(&redis);
        let url = h.url(&format!("/cgi-bin/hold-then.cgi?{command}"));
        let r = std::thread::scope(|s| {
            let holder = s.spawn(|| get_with_cookie(&url, &cookie));
            wait_holding(&dir);
            // Another request took the session over (its lock expired in a
            // stall, say) and holds it now.
            assert_eq!(redis.cmd(&["SET", &lock, "thief", "PX", "60000"]), "+OK");
            release_holder(&dir);
            holder.join().unwrap()
        });
        assert_eq!(
            redis.cmd(&["GET", &format!("t:{id}")]),
            before,
            "{command}: the record is as it was"
        );
        assert_eq!(redis.cmd(&["GET", &lock]), "thief", "{command}: lock kept");
        assert_eq!(records(&redis), records_before, "{command}: no new record");
        assert!(
            r.set_cookie().is_none(),
            "{command}: no cookie for a change that did not happen: {r:?}"
        );
        wait_for("the refusal in the log", Duration::from_secs(5), || {
            (h.error_log().matches("RS0022").count() > logged).then_some(())
        });
        let line = h
            .error_log()
            .lines()
            .rfind(|l| l.contains("RS0022"))
            .unwrap()
            .to_string();
        assert!(line.contains("lock was lost"), "{line}");
        assert_eq!(redis.cmd(&["DEL", &lock]), ":1");
        let after = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &cookie);
        assert_eq!(
            (
                after.env("RSESSION_NEW").as_deref(),
                after.env("RSESSION_DATA").as_deref()
            ),
            (Some("0"), Some("n=1")),
            "{command}: the session lives on unchanged"
        );
    }
}

#[test]
fn locks_of_requests_that_ended_while_redis_was_down_do_not_outlive_its_restart() {
    let mut redis = Redis::start_persistent();
    let h = node(&redis, Mpm::Event, "  RSessionLockTimeout 4");
    let sessions: Vec<_> = (0..4).map(|_| new_session(&h)).collect();
    std::thread::scope(|s| {
        let holders: Vec<_> = sessions
            .iter()
            .map(|(cookie, ..)| {
                let url = h.url("/cgi-bin/hold.cgi");
                s.spawn(move || try_send("GET", &url, &[("Cookie", cookie)], None))
            })
            .collect();
        for (_, id, dir) in &sessions {
            wait_holding(dir);
            assert_eq!(redis.cmd(&["EXISTS", &format!("t:lock:{id}")]), ":1");
        }
        // Stopped with the locks held: they are in its snapshot.
        redis.stop();
        for (_, _, dir) in &sessions {
            release_holder(dir);
        }
        // Their saves and releases fail: Redis is down.
        for holder in holders {
            let _ = holder.join().unwrap();
        }
    });
    redis.start_again();
    wait_for_no_locks(&redis, "after the restart");
    std::thread::scope(|s| {
        for (cookie, ..) in &sessions {
            let h = &h;
            s.spawn(move || assert_served_promptly(h, cookie, "after the restart"));
        }
    });
}

/// Watches what clients send `redis` (`MONITOR`), leaving out what
/// scripts run inside Redis, connection setup, and this test's own checks.
struct Monitor(BufReader<TcpStream>);

impl Monitor {
    fn start(redis: &Redis) -> Monitor {
        let s = TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut m = Monitor(BufReader::new(s));
        m.0.get_mut().write_all(b"MONITOR\r\n").unwrap();
        let mut ok = String::new();
        m.0.read_line(&mut ok).unwrap();
        assert!(ok.starts_with("+OK"), "{ok}");
        m
    }

    /// The commands sent since the last call, by name.
    fn sent(&mut self, redis: &Redis) -> Vec<String> {
        let mark = format!("rsession-mark-{:?}", Instant::now());
        redis.cmd(&["ECHO", &mark]);
        let skip = ["keys", "info", "client", "select", "hello", "auth", "ping"];
        let mut sent = Vec::new();
        loop {
            let mut line = String::new();
            self.0.read_line(&mut line).expect("MONITOR stopped");
            if line.contains(&mark) {
                return sent;
            }
            // +1700000000.000000 [0 127.0.0.1:40000] "evalsha" ...
            let Some((source, command)) = line.split_once("] ") else {
                continue;
            };
            let name = command.split('"').nth(1).unwrap_or("").to_lowercase();
            if !source.contains("lua") && !skip.contains(&name.as_str()) {
                sent.push(name);
            }
        }
    }
}

/// The commands one request to `path` sends Redis, until its lock is
/// released.
fn commands_per_request(
    redis: &Redis,
    m: &mut Monitor,
    h: &Httpd,
    path: &str,
    cookie: &str,
) -> Vec<String> {
    m.sent(redis);
    let r = get_with_cookie(&h.url(path), cookie);
    assert!(
        r.status == 200 && r.set_cookie().is_none(),
        "resumed: {r:?}"
    );
    wait_for_no_locks(redis, path);
    m.sent(redis)
}

/// Issue 16: a resumed request costs Redis two commands (lock and load in
/// one, the release the request does not wait for), and one that changes
/// the session two as well (lock and load, then save and release in one):
/// an operator pays for every round trip.
#[test]
fn a_request_costs_two_redis_commands() {
    let redis = Redis::start();
    // No sweeper: its marker and counting would add commands.
    let h = node_with(&redis, Mpm::Event, "RSessionGCInterval 0", "");
    let (cookie, ..) = new_session(&h);
    // Warm up the connections (set-up commands are not counted anyway).
    for _ in 0..3 {
        get_with_cookie(&h.url("/cgi-bin/env.cgi"), &cookie);
    }
    wait_for_no_locks(&redis, "after warming up");
    let mut m = Monitor::start(&redis);
    assert_eq!(
        commands_per_request(&redis, &mut m, &h, "/cgi-bin/env.cgi", &cookie).len(),
        2,
        "a resumed request: lock+load, release"
    );
    let r = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &cookie);
    let n: u64 = r
        .env("RSESSION_DATA")
        .unwrap()
        .trim_start_matches("n=")
        .parse()
        .unwrap();
    assert_eq!(
        commands_per_request(&redis, &mut m, &h, "/cgi-bin/counter.cgi", &cookie).len(),
        2,
        "a read+write request: lock+load, save+release"
    );
    let r = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &cookie);
    assert_eq!(
        r.env("RSESSION_DATA"),
        Some(format!("n={}", n + 1)),
        "saved"
    );
}
