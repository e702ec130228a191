//! Issue 5: several httpd servers share sessions through a real Redis, with
//! a lock that holds across servers, Redis-side expiry, and 503s (not hangs)
//! while Redis is down.

mod harness;

use harness::http::{get, get_with_cookie, try_send};
use harness::redis::Redis;
use harness::scripts::{COUNTER_CGI, ENV_CGI, HOLD_CGI};
use harness::{wait_for, Httpd, Mpm, Options};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn node(redis: &Redis, mpm: Mpm, settings: &str) -> Httpd {
    let h = Httpd::start(Options {
        mpm,
        fragment: format!(
            "RSessionStore {}\nRSessionGCInterval 1\n<Location /cgi-bin/>\n  RSession On\n{settings}\n</Location>",
            redis.url("t:")
        ),
        ..Options::default()
    });
    h.cgi("env.cgi", ENV_CGI);
    h.cgi("counter.cgi", COUNTER_CGI);
    h.cgi("hold.cgi", HOLD_CGI);
    h
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
    wait_for("the recovery line", Duration::from_secs(5), || {
        h.error_log().contains("RS0013").then_some(())
    });
}
