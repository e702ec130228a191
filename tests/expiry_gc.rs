//! Issue 4: expiry, the background sweeper, and the status page — with
//! short timeouts against a real httpd.

mod harness;

use harness::http::{get, get_with_cookie, try_send};
use harness::scripts::{ENV_CGI, HOLD_CGI};
use harness::{wait_for, Httpd, Mpm, Options};
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Plants symbolic links to $OUTSIDE: one inside its scratch directory,
/// one beside it in the scratch root under an id-like name.
const PLANT_CGI: &str = r#"#!/bin/sh
ln -s "$HTTP_X_OUTSIDE" "$RSESSION_DIR/escape"
ln -s "$HTTP_X_OUTSIDE" "$(dirname "$RSESSION_DIR")/$HTTP_X_FAKE_ID"
printf 'Content-Type: text/plain\n\nplanted\n'
"#;

fn server(mpm: Mpm, settings: &str) -> Httpd {
    let h = Httpd::start(Options {
        mpm,
        fragment: format!(
            "RSessionGCInterval 1\n<Location /cgi-bin/>\n  RSession On\n{settings}\n</Location>"
        ),
        ..Options::default()
    });
    h.cgi("env.cgi", ENV_CGI);
    h.cgi("plant.cgi", PLANT_CGI);
    h.cgi("hold.cgi", HOLD_CGI);
    h
}

fn www_data() -> (u32, u32) {
    (33, 33)
}

fn store(h: &Httpd) -> PathBuf {
    h.path("logs/rsession")
}

fn records(h: &Httpd) -> usize {
    std::fs::read_dir(store(h))
        .unwrap()
        .flatten()
        .filter(|shard| shard.file_type().is_ok_and(|t| t.is_dir()))
        .map(|shard| {
            std::fs::read_dir(shard.path())
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().len() == 32)
                .count()
        })
        .sum()
}

#[test]
fn idle_sessions_are_swept_with_their_scratch_directories() {
    let h = server(Mpm::Event, "  RSessionTimeout 1");
    let r = get(&h.url("/cgi-bin/env.cgi"), &[]);
    let id = r.env("RSESSION_ID").unwrap();
    let dir = PathBuf::from(r.env("RSESSION_DIR").unwrap());
    assert!(h.record(&id).exists() && dir.exists());
    // No request touches the session again: only the sweeper can remove it.
    wait_for(
        "the sweeper to remove the record and scratch dir",
        Duration::from_secs(10),
        || {
            (!h.record(&id).exists()
                && !dir.exists()
                && !h.record(&id).with_extension("spare").exists())
            .then_some(())
        },
    );
    wait_for("the pass summary at info", Duration::from_secs(5), || {
        h.error_log()
            .contains("RS0040 sweep of file:")
            .then_some(())
    });
}

#[test]
fn absolute_lifetime_ends_even_a_busy_session() {
    let h = server(
        Mpm::Event,
        "  RSessionTimeout 100\n  RSessionMaxLifetime 2\n  RSessionTouchInterval 0",
    );
    let first = get(&h.url("/cgi-bin/env.cgi"), &[]);
    let cookie = first.cookie_pair();
    let id = first.env("RSESSION_ID").unwrap();
    assert_eq!(
        get_with_cookie(&h.url("/cgi-bin/env.cgi"), &cookie).env("RSESSION_ID"),
        Some(id.clone())
    );
    let fresh = wait_for("the lifetime to run out", Duration::from_secs(10), || {
        let r = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &cookie);
        (r.env("RSESSION_NEW").as_deref() == Some("1")).then_some(r)
    });
    assert_ne!(fresh.env("RSESSION_ID"), Some(id));
}

#[test]
fn a_locked_session_is_never_swept() {
    let h = server(
        Mpm::Event,
        "  RSessionTimeout 2\n  RSessionTouchInterval 0\n  RSessionLockTimeout 30",
    );
    let first = get(&h.url("/cgi-bin/env.cgi"), &[]);
    let cookie = first.cookie_pair();
    let id = first.env("RSESSION_ID").unwrap();
    let dir = PathBuf::from(first.env("RSESSION_DIR").unwrap());
    std::thread::scope(|s| {
        let holder = s.spawn(|| get_with_cookie(&h.url("/cgi-bin/hold.cgi"), &cookie));
        wait_for("the holder", Duration::from_secs(10), || {
            dir.join("holder.pid").exists().then_some(())
        });
        // The record expires while the request holds it; passes skip it.
        wait_for(
            "a pass that skipped the locked session",
            Duration::from_secs(15),
            || {
                h.error_log()
                    .lines()
                    .any(|l| l.contains("RS0040") && !l.contains("skipped 0 locked"))
                    .then_some(())
            },
        );
        assert!(h.record(&id).exists(), "the held record survives");
        std::fs::write(dir.join("release"), "").unwrap();
        assert_eq!(holder.join().unwrap().status, 200);
    });
    let again = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &cookie);
    assert_eq!(
        again.env("RSESSION_ID"),
        Some(id),
        "saved at the end of the held request, so still alive"
    );
}

#[test]
fn planted_symlinks_never_lead_the_sweeper_outside() {
    let h = server(Mpm::Event, "  RSessionTimeout 1");
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), "keep me").unwrap();
    let fake_id = "0123456789abcdef0123456789abcdef";
    let r = get(
        &h.url("/cgi-bin/plant.cgi"),
        &[
            ("X-Outside", outside.path().to_str().unwrap()),
            ("X-Fake-Id", fake_id),
        ],
    );
    assert_eq!(r.status, 200);
    // The CGI planted the id-like link beside its own directory.
    let own = h.scratch_dir(&harness::id_of(&r.cookie_pair()));
    let scratch = own.parent().unwrap().to_path_buf();
    assert!(
        scratch.join(fake_id).symlink_metadata().is_ok(),
        "the CGI planted its links"
    );
    wait_for("both links to be swept", Duration::from_secs(15), || {
        let entries = std::fs::read_dir(&scratch).unwrap().count();
        (entries == 0).then_some(())
    });
    assert_eq!(
        std::fs::read_to_string(outside.path().join("precious")).unwrap(),
        "keep me"
    );
}

#[test]
fn orphaned_scratch_directories_and_stale_temporary_files_are_removed() {
    let h = server(Mpm::Event, "");
    let (uid, gid) = www_data();
    let orphan = h.scratch_dir("fedcba9876543210fedcba9876543210");
    make_scratch_dir(&h, &orphan);
    std::fs::write(orphan.join("left-behind"), "x").unwrap();
    chown(orphan.join("left-behind"), Some(uid), Some(gid)).unwrap();
    let stale = store(&h).join("fe/.tmp-fedcba9876543210fedcba9876543210-999999999-0");
    make_store_shard(&h, "fe");
    std::fs::write(&stale, "{\"torn").unwrap();
    let f = std::fs::File::options().write(true).open(&stale).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let unrelated = h.path("logs/rsession-scratch/not-a-session");
    std::fs::create_dir(&unrelated).unwrap();
    wait_for(
        "the orphan and the temp file to go",
        Duration::from_secs(15),
        || (!orphan.exists() && !stale.exists()).then_some(()),
    );
    assert!(
        unrelated.exists(),
        "names that are not session ids are left alone"
    );
}

/// Makes a scratch directory (and its missing parents) as a child would:
/// owned by www-data.
fn make_scratch_dir(h: &Httpd, dir: &Path) {
    let (uid, gid) = www_data();
    let root = h.path("logs/rsession-scratch");
    std::fs::create_dir_all(dir).unwrap();
    let mut d = dir.to_path_buf();
    while d != root {
        chown(&d, Some(uid), Some(gid)).unwrap();
        d.pop();
    }
}

/// Makes a shard of the default store as a child would (children make
/// them when first needed).
fn make_store_shard(h: &Httpd, shard: &str) {
    let (uid, gid) = www_data();
    let dir = store(h).join(shard);
    if std::fs::create_dir(&dir).is_ok() {
        chown(&dir, Some(uid), Some(gid)).unwrap();
    }
}

/// Writes `n` expired records straight into the store, as a crashed or
/// long-stopped server would leave them.
fn plant_expired(h: &Httpd, n: usize) {
    plant_expired_with_scratch(h, n, 2)
}

/// `plant_expired`, with a scratch directory for one in `every` sessions.
fn plant_expired_with_scratch(h: &Httpd, n: usize, every: usize) {
    let (uid, gid) = www_data();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let past = SystemTime::now() - Duration::from_secs(7200);
    for i in 0..n {
        let id = format!("{:016x}{:016x}", 0xabcd_u64, i);
        let path = h.record(&id);
        make_store_shard(h, &id[..2]);
        // The server's sweeper is running: each session appears whole (its
        // directory first, then its record by rename, owner and mtime
        // already set), never half-made under the sweeper's eyes.
        if i % every == 0 {
            make_scratch_dir(h, &h.scratch_dir(&id));
        }
        let staged = path.with_file_name(format!(".plant-{id}"));
        std::fs::write(
            &staged,
            format!(
                "{{\"v\":1,\"c\":{t},\"a\":{t},\"t\":60,\"l\":0,\"d\":{{}}}}",
                t = now - 7200
            ),
        )
        .unwrap();
        std::fs::File::options()
            .write(true)
            .open(&staged)
            .unwrap()
            .set_modified(past)
            .unwrap();
        chown(&staged, Some(uid), Some(gid)).unwrap();
        std::fs::rename(&staged, &path).unwrap();
    }
}

#[test]
fn ten_thousand_expired_sessions_are_swept_while_requests_are_served() {
    let h = server(Mpm::Event, "");
    plant_expired(&h, 10_000);
    let live = get(&h.url("/cgi-bin/env.cgi"), &[]).cookie_pair();
    let done = AtomicBool::new(false);
    let served = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !done.load(Ordering::SeqCst) {
                    let r = try_send(
                        "GET",
                        &h.url("/cgi-bin/env.cgi"),
                        &[("Cookie", &live)],
                        None,
                    )
                    .expect("request served");
                    assert_eq!(r.status, 200);
                    assert_eq!(r.env("RSESSION_NEW").as_deref(), Some("0"));
                    served.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        wait_for(
            "the store to shrink to the one live session",
            Duration::from_secs(120),
            || (records(&h) == 1).then_some(()),
        );
        done.store(true, Ordering::SeqCst);
    });
    assert!(served.load(Ordering::SeqCst) > 0);
    let leftovers: usize = std::fs::read_dir(
        h.scratch_dir(&harness::id_of(&live))
            .parent()
            .unwrap()
            .parent()
            .unwrap(),
    )
    .unwrap()
    .flatten()
    .map(|shard| std::fs::read_dir(shard.path()).unwrap().count())
    .sum();
    assert_eq!(
        leftovers, 1,
        "only the live session's scratch directory remains"
    );
}

#[test]
fn the_status_page_counts_every_child_of_a_prefork_server() {
    let h = Httpd::start(Options {
        mpm: Mpm::Prefork,
        fragment: "StartServers 4\nMinSpareServers 4\nMaxSpareServers 8\n<Location /cgi-bin/>\n  RSession On\n</Location>\n<Location /rsession-status>\n  SetHandler rsession-status\n</Location>".into(),
        ..Options::default()
    });
    h.cgi("env.cgi", ENV_CGI);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..5 {
                    assert_eq!(get(&h.url("/cgi-bin/env.cgi"), &[]).status, 200);
                }
            });
        }
    });
    let access = wait_for("40 logged requests", Duration::from_secs(10), || {
        let log = std::fs::read_to_string(h.path("logs/access.log")).ok()?;
        (log.matches("new=1").count() == 40).then_some(log)
    });
    let pids: std::collections::HashSet<&str> = access
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert!(
        pids.len() > 1,
        "requests were spread over several children: {pids:?}"
    );
    let text = get(&h.url("/rsession-status"), &[]);
    assert_eq!(text.status, 200);
    assert!(text.body.contains("created: 40\n"), "{}", text.body);
    assert!(text.body.contains("live_sessions: 40\n"), "{}", text.body);
    assert!(text.body.starts_with("store: file:"), "{}", text.body);
    let json = get(&h.url("/rsession-status?json"), &[]);
    assert_eq!(json.header("content-type"), Some("application/json"));
    assert!(json.body.contains("\"created\":40"), "{}", json.body);
}

#[test]
fn graceful_restarts_under_load_fail_no_request_and_the_sweeper_goes_on() {
    // Static files under RSession On: mod_cgid itself drops a request now
    // and then while its daemon restarts (AH10246), which is not ours to test.
    let mut h = Httpd::start(Options {
        fragment: "RSessionGCInterval 1\nAlias /s/ {ROOT}/htdocs/\n<LocationMatch ^/(s|cgi-bin)/>\n  RSession On\n  RSessionTimeout 2\n</LocationMatch>".into(),
        ..Options::default()
    });
    h.cgi("env.cgi", ENV_CGI);
    // Static files never make a session; a CGI makes it, once.
    let cookie = get(&h.url("/cgi-bin/env.cgi"), &[]).cookie_pair();
    let done = AtomicBool::new(false);
    let failures = std::sync::Mutex::new(Vec::new());
    let served = AtomicUsize::new(0);
    let url = h.url("/s/index.html");
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !done.load(Ordering::SeqCst) {
                    match try_send("GET", &url, &[("Cookie", &cookie)], None) {
                        // No Set-Cookie: the session was resumed, not replaced.
                        Ok(r) if r.status == 200 && r.set_cookie().is_none() => {
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                        other => failures.lock().unwrap().push(format!("{other:?}")),
                    }
                }
            });
        }
        for _ in 0..3 {
            let before = served.load(Ordering::SeqCst);
            wait_for(
                "requests before the restart",
                Duration::from_secs(10),
                || (served.load(Ordering::SeqCst) > before + 5).then_some(()),
            );
            h.graceful();
        }
        let before = served.load(Ordering::SeqCst);
        wait_for(
            "requests after the restarts",
            Duration::from_secs(10),
            || (served.load(Ordering::SeqCst) > before + 5).then_some(()),
        );
        done.store(true, Ordering::SeqCst);
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "no request may fail across graceful restarts: {failures:?}"
    );
    // The new generation's sweeper works: an abandoned session goes.
    let fresh = get(&h.url("/cgi-bin/env.cgi"), &[]).cookie_pair();
    let id = harness::id_of(&fresh);
    wait_for(
        "the new generation to sweep",
        Duration::from_secs(15),
        || (!h.record(&id).exists()).then_some(()),
    );
    assert!(Path::new(&store(&h)).exists());
}

/// Issue 13: a graceful stop in the middle of a long sweep (real files on
/// the disk: about a thousand a second before) waited for the pass, past
/// GracefulShutdownTimeout (10 s in the harness), until httpd killed it.
#[test]
fn a_graceful_stop_during_a_long_sweep_is_prompt() {
    let mut h = server(Mpm::Event, "");
    // Planted while the server is down, so that one pass meets them all;
    // enough that the old sweeper's pass outlasts the timeout here.
    let n = 60_000;
    h.stop();
    plant_expired_with_scratch(&h, n, 1);
    h.start_again();
    wait_for("a sweep to begin", Duration::from_secs(60), || {
        (h.error_log().contains("RS0150 sweep of file:") || records(&h) < n).then_some(())
    });
    let asked = std::time::Instant::now();
    h.stop();
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "the server took {took:?} to stop (GracefulShutdownTimeout is 10 s)"
    );
    // Before, the stop waited for the whole pass (here all of it).
    assert!(records(&h) > 0, "the stop cut the pass short");
}

/// `SCHED_IDLE` in the policy field of /proc/PID/task/TID/stat.
const SCHED_IDLE: i64 = 5;

/// (name, policy) of every thread of `pid`.
fn thread_policies(pid: i32) -> Vec<(String, i64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let (head, tail) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1.to_string();
            // The policy is field 41; the fields after the name begin at 3.
            let policy = tail.split_whitespace().nth(41 - 3)?.parse().ok()?;
            Some((name, policy))
        })
        .collect()
}

#[test]
fn the_sweep_runs_only_on_cpu_time_requests_leave_idle() {
    // A busy machine's requests once shared the CPU with the sweep as with
    // one of their own: its threads now take only idle time. The sweeper's
    // own thread, which lives on (and may start the Redis lock keeper),
    // keeps normal priority.
    let mut h = server(Mpm::Event, "");
    h.stop();
    plant_expired_with_scratch(&h, 30_000, 10);
    h.start_again();
    let (sweepers, passes) = wait_for(
        "a pass's threads at idle priority",
        Duration::from_secs(60),
        || {
            let threads: Vec<_> = h
                .worker_children()
                .into_iter()
                .flat_map(thread_policies)
                .collect();
            let of = |prefix: &str| -> Vec<i64> {
                threads
                    .iter()
                    .filter(|(n, _)| n.starts_with(prefix))
                    .map(|(_, p)| *p)
                    .collect()
            };
            let passes = of("rsession-sweep");
            // Policies are read while the pass runs; a thread is named
            // before it lowers itself, so wait until all have.
            (!passes.is_empty() && passes.iter().all(|&p| p == SCHED_IDLE))
                .then(|| (of("rsession-gc"), passes))
        },
    );
    assert!(
        !sweepers.is_empty() && sweepers.iter().all(|&p| p != SCHED_IDLE),
        "the sweeper's own threads keep their priority: {sweepers:?}"
    );
    assert!(passes.iter().all(|&p| p == SCHED_IDLE));
    // Requests are served as usual beside it.
    assert_eq!(get(&h.url("/cgi-bin/env.cgi"), &[]).status, 200);
}
