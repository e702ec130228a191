//! Issue 16: Redis for real farms. TLS with a private CA and client
//! certificates, ACL users, passwords kept out of the config, Unix
//! sockets, a Sentinel failover under traffic, and a Cluster.

mod harness;

use harness::http::{get, get_with_cookie, try_send};
use harness::redis::{Cluster, Pki, Redis, SentinelFarm};
use harness::scripts::{COUNTER_CGI, ENV_CGI};
use harness::{check_config, wait_for, Httpd, Mpm, Options};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A server whose sessions live at `store`, with a status page.
fn node(store: &str, mpm: Mpm) -> Httpd {
    let h = Httpd::start(Options {
        mpm,
        fragment: format!(
            "RSessionStore {store}\nRSessionGCInterval 1\n<Location /cgi-bin/>\n  RSession On\n</Location>\n\
             <Location /status>\n  SetHandler rsession-status\n</Location>"
        ),
        ..Options::default()
    });
    h.cgi("env.cgi", ENV_CGI);
    h.cgi("counter.cgi", COUNTER_CGI);
    h
}

/// A new session through `h` (n=1) and its cookie.
fn new_session(h: &Httpd) -> String {
    let r = get(&h.url("/cgi-bin/counter.cgi"), &[]);
    assert_eq!(r.status, 200, "{r:?}\n{}", h.error_log());
    r.cookie_pair()
}

/// The session's counter, as the next request sees it.
fn counter(h: &Httpd, cookie: &str) -> Option<String> {
    let r = get_with_cookie(&h.url("/cgi-bin/env.cgi"), cookie);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.env("RSESSION_NEW").as_deref(),
        Some("0"),
        "resumed: {r:?}"
    );
    r.env("RSESSION_DATA")
}

/// `threads` clients increment the session `total` times in all, spread
/// over `servers`; every increment must succeed.
fn increment_in_parallel(servers: &[&Httpd], cookie: &str, threads: usize, total: usize) {
    let issued = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (issued, server) = (&issued, servers[t % servers.len()]);
            s.spawn(move || {
                while issued.fetch_add(1, Ordering::SeqCst) < total {
                    let r = get_with_cookie(&server.url("/cgi-bin/counter.cgi"), cookie);
                    assert_eq!(r.status, 200, "{r:?}");
                }
            });
        }
    });
}

#[test]
fn tls_with_a_private_ca_and_a_required_client_certificate() {
    let pki = Pki::new();
    let tls_port = harness::free_port();
    let redis = Redis::start_args(false, |_| pki.server_args(tls_port, true));
    let base = format!("rediss://127.0.0.1:{tls_port}/0?prefix=t:&timeout=1000");
    let with_cert = format!(
        "{base}&ca_file={}&cert_file={}&key_file={}",
        pki.file("ca.crt"),
        pki.file("client.crt"),
        pki.file("client.key")
    );
    let h = node(&with_cert, Mpm::Event);
    let cookie = new_session(&h);
    increment_in_parallel(&[&h], &cookie, 4, 20);
    assert_eq!(counter(&h, &cookie).as_deref(), Some("n=21"));
    let id = harness::id_of(&cookie);
    assert_eq!(
        redis.cmd(&["EXISTS", &format!("t:{id}")]),
        ":1",
        "stored over TLS"
    );

    // The server wants a client certificate: without one, 503s.
    let no_cert = node(
        &format!("{base}&ca_file={}", pki.file("ca.crt")),
        Mpm::Event,
    );
    // A CA that did not sign the server's certificate: 503s and a line
    // that says why, not a crash or a hang.
    let wrong_ca = node(
        &format!("{base}&ca_file={}", pki.file("other-ca.crt")),
        Mpm::Prefork,
    );
    for h in [&no_cert, &wrong_ca] {
        for _ in 0..3 {
            let started = Instant::now();
            let r = try_send(
                "GET",
                &h.url("/cgi-bin/env.cgi"),
                &[("Cookie", &cookie)],
                None,
            )
            .expect("an answer");
            assert_eq!(
                (r.status, r.header("Retry-After")),
                (503, Some("1")),
                "{r:?}"
            );
            assert!(started.elapsed() < Duration::from_secs(5), "no hang");
        }
    }
    let line = wait_for("the outage line", Duration::from_secs(5), || {
        wrong_ca
            .error_log()
            .lines()
            .find(|l| l.contains("RS0012"))
            .map(str::to_string)
    });
    println!("{line}");
    assert!(line.contains("rediss://127.0.0.1"), "{line}");
    assert!(
        line.contains("certificate is not trusted"),
        "names the certificate problem: {line}"
    );
}

#[test]
fn acl_users_and_a_password_file_that_stays_out_of_the_config() {
    const PASSWORD: &str = "Zq8-correct-horse";
    let mut redis = Redis::start();
    let acl = format!(">{PASSWORD}");
    assert_eq!(
        redis.cmd(&["ACL", "SETUSER", "app", "on", &acl, "~*", "+@all"]),
        "+OK"
    );
    assert_eq!(redis.cmd(&["ACL", "SETUSER", "default", "off"]), "+OK");
    redis.login_as("app", PASSWORD);
    let port = redis.port;

    let inline = node(
        &format!("redis://app:{PASSWORD}@127.0.0.1:{port}/0?prefix=t:"),
        Mpm::Event,
    );
    let cookie = new_session(&inline);
    assert_eq!(
        counter(&inline, &cookie).as_deref(),
        Some("n=1"),
        "logged in as app"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis.pw");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let url = format!(
        "redis://app@127.0.0.1:{port}/0?prefix=t:&password_file={}",
        file.display()
    );
    let from_file = node(&url, Mpm::Worker);
    assert_eq!(
        counter(&from_file, &cookie).as_deref(),
        Some("n=1"),
        "the password read from the file (trailing newline stripped)"
    );
    let status = get(&from_file.url("/status"), &[]);
    assert!(
        status.body.contains("redis://app@127.0.0.1"),
        "{}",
        status.body
    );
    for h in [&inline, &from_file] {
        let shown = format!("{}{}", get(&h.url("/status"), &[]).body, h.error_log());
        assert!(!shown.contains(PASSWORD), "the password is never shown");
    }

    // Group- or world-readable: refused at the config check.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = check_config(&format!("RSessionStore {url}")).unwrap_err();
    assert!(
        err.contains("RSessionStore") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(!err.contains(PASSWORD));
}

#[test]
fn malformed_store_urls_fail_the_config_check_with_a_sentence() {
    let cases = [
        ("redis://app@127.0.0.1", "password_file"),
        (
            "redis://127.0.0.1?password_file=/nonexistent/pw",
            "password_file",
        ),
        ("rediss://127.0.0.1?ca_file=/nonexistent/ca.pem", "ca_file"),
        ("rediss://127.0.0.1?ca_file=/etc/hostname", "PEM"),
        ("rediss://127.0.0.1?cert_file=/etc/hostname", "key_file"),
        ("redis://127.0.0.1?ca_file=/etc/hostname", "TLS"),
        ("unix:relative.sock", "absolute"),
        ("redis-sentinel://127.0.0.1:26379", "MASTER"),
        ("redis-cluster://127.0.0.1:7000/1", "database 0"),
        ("redis://:Zq8-secret@h?bogus=1", "bogus"),
    ];
    for (url, expected) in cases {
        let err = check_config(&format!("RSessionStore {url}")).unwrap_err();
        assert!(
            err.contains("RSessionStore") && err.contains(expected),
            "{url}: {err}"
        );
        assert!(!err.contains("Zq8-secret"), "{err}");
    }
}

#[test]
fn a_unix_socket_with_a_database_number() {
    let redis = Redis::start_args(false, |dir| {
        vec![
            "--unixsocket".into(),
            dir.join("redis.sock").display().to_string(),
            "--unixsocketperm".into(),
            "777".into(),
        ]
    });
    let socket = redis.dir().join("redis.sock");
    let h = node(
        &format!("unix:{}?db=2&prefix=t:", socket.display()),
        Mpm::Event,
    );
    let cookie = new_session(&h);
    increment_in_parallel(&[&h], &cookie, 4, 10);
    assert_eq!(counter(&h, &cookie).as_deref(), Some("n=11"));
    assert!(
        redis.cmd(&["INFO", "keyspace"]).contains("db2:keys="),
        "stored in database 2"
    );
}

#[test]
fn after_a_restart_the_first_request_succeeds() {
    let mut redis = Redis::start_persistent();
    let h = node(&redis.url("t:"), Mpm::Event);
    let cookies: Vec<String> = (0..8).map(|_| new_session(&h)).collect();
    // Every pooled connection of every child dies with the server.
    redis.stop();
    redis.start_again();
    for cookie in &cookies {
        let r = get_with_cookie(&h.url("/cgi-bin/env.cgi"), cookie);
        assert_eq!(
            (r.status, r.env("RSESSION_DATA").as_deref()),
            (200, Some("n=1")),
            "no 503 once Redis is back: {r:?}"
        );
    }
}

#[test]
fn a_sentinel_failover_under_traffic_costs_a_few_503s_and_loses_nothing_after() {
    let mut farm = SentinelFarm::start();
    let h = node(&farm.url(""), Mpm::Event);
    let cookie = new_session(&h);
    let old_master = farm.master_port();
    assert_eq!(old_master, Some(farm.master.port));

    let stop = std::sync::atomic::AtomicBool::new(false);
    let (ok, unavailable) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let killed_at = std::sync::Mutex::new(None::<Instant>);
    let recovered = std::sync::Mutex::new(None::<Duration>);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    let r = try_send(
                        "GET",
                        &h.url("/cgi-bin/counter.cgi"),
                        &[("Cookie", &cookie)],
                        None,
                    )
                    .expect("an answer, not a hang");
                    match r.status {
                        200 => {
                            ok.fetch_add(1, Ordering::SeqCst);
                            // Only a request sent after the kill proves
                            // the new master is in use.
                            if let Some(at) = *killed_at.lock().unwrap() {
                                if sent > at {
                                    recovered.lock().unwrap().get_or_insert(at.elapsed());
                                }
                            }
                        }
                        503 => {
                            assert_eq!(r.header("Retry-After"), Some("1"));
                            unavailable.fetch_add(1, Ordering::SeqCst);
                        }
                        other => panic!("{other}: {r:?}"),
                    }
                }
            });
        }
        wait_for("traffic", Duration::from_secs(10), || {
            (ok.load(Ordering::SeqCst) > 20).then_some(())
        });
        *killed_at.lock().unwrap() = Some(Instant::now());
        farm.master.kill();
        wait_for(
            "the module to follow the promoted replica",
            Duration::from_secs(30),
            || recovered.lock().unwrap().map(|_| ()),
        );
        stop.store(true, Ordering::SeqCst);
    });
    let recovery = recovered.lock().unwrap().unwrap();
    println!(
        "failover: {} requests answered 503, service back {:.1} s after the master was killed",
        unavailable.load(Ordering::SeqCst),
        recovery.as_secs_f64()
    );
    assert_eq!(
        farm.master_port(),
        Some(farm.replica.port),
        "the replica was promoted"
    );

    // After the failover, parallel increments all count.
    let before: usize = counter(&h, &cookie)
        .and_then(|d| d.strip_prefix("n=")?.parse().ok())
        .expect("the session survived the failover");
    increment_in_parallel(&[&h], &cookie, 8, 40);
    assert_eq!(counter(&h, &cookie), Some(format!("n={}", before + 40)));
    assert!(h.error_log().contains("RS0013"), "the recovery is logged");
}

#[test]
fn a_cluster_spreads_sessions_over_its_masters_and_two_servers_share_them() {
    let cluster = Cluster::start();
    let a = node(&cluster.url(""), Mpm::Event);
    let b = node(&cluster.url(""), Mpm::Worker);
    let cookies: Vec<String> = (0..12)
        .map(|i| new_session(if i % 2 == 0 { &a } else { &b }))
        .collect();
    let spread = cluster.records_per_node();
    assert_eq!(spread.iter().sum::<usize>(), 12, "{spread:?}");
    assert!(
        spread.iter().filter(|n| **n > 0).count() >= 2,
        "sessions on several masters: {spread:?}"
    );
    // Record and lock share a slot (the lock script touches both), on
    // whichever node holds it; both servers see every session.
    for cookie in cookies.iter().take(4) {
        increment_in_parallel(&[&a, &b], cookie, 6, 20);
        assert_eq!(counter(&b, cookie).as_deref(), Some("n=21"));
        assert_eq!(counter(&a, cookie).as_deref(), Some("n=21"));
    }
    // The live count (corrected by the sweeper's count) covers every
    // master: remove one record behind the module's back, on the fullest
    // node; a count of one node alone could not come to 11.
    let fullest = &cluster.nodes[(0..3).max_by_key(|i| spread[*i]).unwrap()];
    let key = fullest.cmd(&["KEYS", "t:{????????????????????????????????}"]);
    let key = key.lines().next().unwrap();
    assert_eq!(fullest.cmd(&["DEL", key]), ":1");
    wait_for(
        "the sweeper to count every master",
        Duration::from_secs(15),
        || {
            let status = get(&a.url("/status"), &[]).body;
            status
                .lines()
                .any(|l| l == "live_sessions: 11")
                .then_some(())
        },
    );
}
