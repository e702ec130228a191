//! Issue 7: hostile clients and backends, crashes mid-write, a full store,
//! HTTPS cookie rules, logs without secrets — against real servers.

mod harness;

use harness::http::{get, get_with_cookie, raw, raw_status};
use harness::scripts::{Backend, COUNTER_CGI, ENV_CGI};
use harness::{wait_for, Httpd, Mpm, Options, SECRET};
use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Echoes the request header X-Cmd as the update header, verbatim.
const ECHO_CGI: &str = r#"#!/bin/sh
printf 'Content-Type: text/plain\nX-RSession: %s\n\nok\n' "$HTTP_X_CMD"
"#;

fn server(options: Options) -> Httpd {
    let fragment = format!(
        "<Location /cgi-bin/>\n  RSession On\n</Location>\n{}",
        options.fragment
    );
    let h = Httpd::start(Options {
        fragment,
        ..options
    });
    h.cgi("env.cgi", ENV_CGI);
    h.cgi("echo.cgi", ECHO_CGI);
    h.cgi("counter.cgi", COUNTER_CGI);
    h
}

/// A small deterministic generator, so failures can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Bytes httpd itself accepts in a header value (it answers 400 to
    /// control characters, which is not ours to test).
    fn header_bytes(&mut self, len: usize) -> Vec<u8> {
        const ALPHABET: &[u8] = b"sid=;,. \"\\'abcdef0123456789ABCDEF-_+/%&\xc3\xa9\xff\xfe\x80";
        (0..len)
            .map(|_| ALPHABET[self.below(ALPHABET.len())])
            .collect()
    }
}

fn adversarial_cookies(rng: &mut XorShift, valid: &str) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = vec![
        "sid=".repeat(1500).into_bytes(),
        "a=b; ".repeat(1500).into_bytes(),
        format!("sid={}", "x".repeat(8000)).into_bytes(),
        format!("sid=\"{valid}").into_bytes(),
        format!("sid={valid}x").into_bytes(),
        format!("sid={}", valid.replace('.', "..")).into_bytes(),
        b"sid=\xc3\xa9\xc3\xa9; sid=\xff".to_vec(),
        b"=;=;=;;;,,,sid".to_vec(),
        b"sid=====".to_vec(),
    ];
    for _ in 0..1000 {
        let len = 1 + rng.below(300);
        let mut v = b"sid=".to_vec();
        v.extend(rng.header_bytes(len));
        out.push(v);
    }
    out
}

#[test]
fn a_thousand_hostile_cookie_headers_each_get_a_fresh_valid_session() {
    let h = server(Options::default());
    let valid = get(&h.url("/cgi-bin/env.cgi"), &[]).cookie_pair();
    let valid_value = valid.split_once('=').unwrap().1.to_string();
    let mut rng = XorShift(0x5eed_1234_abcd_ef01);
    for cookie in adversarial_cookies(&mut rng, &valid_value) {
        let mut req = b"GET /cgi-bin/env.cgi HTTP/1.0\r\nHost: localhost\r\nCookie: ".to_vec();
        req.extend(&cookie);
        req.extend(b"\r\n\r\n");
        let resp = raw(h.port, &req);
        let shown = String::from_utf8_lossy(&cookie[..cookie.len().min(80)]).into_owned();
        assert_eq!(raw_status(&resp), 200, "cookie {shown:?}: {resp}");
        let line = resp
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
            .unwrap_or("");
        let value = line
            .split_once("sid=")
            .map(|(_, v)| v.split(';').next().unwrap())
            .unwrap_or("");
        assert_eq!(
            value.len(),
            32 + 1 + 43,
            "cookie {shown:?}: a fresh signed cookie, got {line:?}"
        );
        assert!(resp.contains("RSESSION_NEW=1"), "cookie {shown:?}");
    }
}

#[test]
fn hostile_update_headers_never_break_the_response_or_the_session() {
    let h = server(Options::default());
    let cookie = get(&h.url("/cgi-bin/env.cgi"), &[]).cookie_pair();
    let mut rng = XorShift(0xfeed_beef_0bad_cafe);
    let mut cases: Vec<String> = vec![
        "set".into(),
        "set =".into(),
        "set &&&&".into(),
        format!("set k={}", "%".repeat(500)),
        "set a=%zz&b=%".into(),
        "unset".into(),
        "regenerate now".into(),
        ",,,,".into(),
        format!("set {}", "k=v&".repeat(2000)),
    ];
    for _ in 0..300 {
        let len = 1 + rng.below(200);
        let bytes: Vec<u8> = rng
            .header_bytes(len)
            .into_iter()
            .filter(u8::is_ascii)
            .collect();
        cases.push(format!("set {}", String::from_utf8(bytes).unwrap()));
    }
    for cmd in &cases {
        let r = get(
            &h.url("/cgi-bin/echo.cgi"),
            &[("Cookie", &cookie), ("X-Cmd", cmd)],
        );
        assert_eq!(r.status, 200, "{cmd:?}");
        assert!(r.header("X-RSession").is_none());
    }
    let after = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &cookie);
    assert_eq!(
        after.env("RSESSION_NEW").as_deref(),
        Some("0"),
        "the session survived"
    );
}

#[test]
fn control_characters_stay_encoded_everywhere_they_surface() {
    let backend_port = harness::free_port();
    let _backend = Backend::start(backend_port);
    let h = server(Options {
        fragment: format!(
            "LoadModule proxy_module {m}/mod_proxy.so\nLoadModule proxy_http_module {m}/mod_proxy_http.so\n\
             <Location /app/>\n  RSession On\n  RSessionForwardHeaders On\n  ProxyPass http://127.0.0.1:{backend_port}/\n</Location>",
            m = harness::MODULES
        ),
        ..Options::default()
    });
    let cookie = get(&h.url("/app/"), &[]).cookie_pair();
    let evil = "set note=x%0D%0AInjected:%20yes%00%C3%A9%0Aend";
    let r = get(
        &h.url("/cgi-bin/echo.cgi"),
        &[("Cookie", &cookie), ("X-Cmd", evil)],
    );
    assert_eq!(r.status, 200);
    let env = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &cookie);
    assert_eq!(env.env("RSESSION_NEW").as_deref(), Some("0"));
    let data = env.env("RSESSION_DATA").unwrap();
    assert!(
        data.contains("note=x%0D%0AInjected%3A+yes%00%C3%A9%0Aend"),
        "{data}"
    );
    assert!(
        !env.body.contains("\nInjected"),
        "no raw newline in the environment"
    );
    let proxied = get_with_cookie(&h.url("/app/"), &cookie);
    assert!(
        !proxied.body.to_ascii_lowercase().contains("\"injected\""),
        "no injected header: {}",
        proxied.body
    );
    assert!(
        proxied.body.contains("x%0D%0AInjected%3A+yes"),
        "{}",
        proxied.body
    );
}

#[test]
fn ids_are_unique_across_prefork_children() {
    let h = server(Options {
        mpm: Mpm::Prefork,
        fragment: "StartServers 4\nMinSpareServers 4\nMaxSpareServers 8".into(),
        ..Options::default()
    });
    let ids = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..125 {
                    let r = get(&h.url("/cgi-bin/env.cgi"), &[]);
                    ids.lock().unwrap().push(r.env("RSESSION_ID").unwrap());
                }
            });
        }
    });
    let ids = ids.into_inner().unwrap();
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), 1000);
    assert_eq!(distinct.len(), 1000, "every session id is unique");
    let access = wait_for("the access log", Duration::from_secs(10), || {
        let log = std::fs::read_to_string(h.path("logs/access.log")).ok()?;
        (log.matches("new=1").count() >= 1000).then_some(log)
    });
    let pids: HashSet<&str> = access
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert!(pids.len() > 1, "served by several children: {pids:?}");
}

#[test]
fn neither_secrets_nor_whole_ids_reach_the_log_even_at_trace8() {
    let h = server(Options {
        log_level: "trace8",
        ..Options::default()
    });
    let mut ids = Vec::new();
    let first = get(&h.url("/cgi-bin/env.cgi"), &[]);
    let cookie = first.cookie_pair();
    ids.push(first.env("RSESSION_ID").unwrap());
    for cmd in ["set user=ann", "bogus command", "regenerate"] {
        let r = get(
            &h.url("/cgi-bin/echo.cgi"),
            &[("Cookie", &cookie), ("X-Cmd", cmd)],
        );
        if let Some(line) = r.set_cookie() {
            ids.push(line.split_once('=').unwrap().1[..32].to_string());
        }
    }
    get(
        &h.url("/cgi-bin/env.cgi"),
        &[("Cookie", "sid=forged.value")],
    );
    get(
        &h.url("/cgi-bin/echo.cgi"),
        &[("Cookie", &cookie), ("X-Cmd", "invalidate")],
    );
    let log = h.error_log();
    assert!(log.contains("rsession"), "trace8 logging is on");
    assert!(!log.contains(SECRET), "the secret was logged");
    for id in &ids {
        // mod_cgid at trace level logs the request headers, cookie included;
        // our own lines never carry more than 8 characters of an id.
        for line in log.lines().filter(|l| l.contains("[rsession:")) {
            assert!(
                !line.contains(id.as_str()),
                "a whole id in our log line: {line}"
            );
        }
    }
}

fn curl_https(port: u16, path: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-sk",
            "-D",
            "-",
            "-o",
            "/dev/null",
            &format!("https://127.0.0.1:{port}{path}"),
        ])
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn over_https_auto_mode_marks_the_cookie_secure() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs")
        .status
        .success();
    assert!(ok, "a test certificate");
    let tls_port = harness::free_port();
    let h = server(Options {
        fragment: format!(
            "LoadModule socache_shmcb_module {m}/mod_socache_shmcb.so\nLoadModule ssl_module {m}/mod_ssl.so\n\
             Listen 127.0.0.1:{tls_port}\n<VirtualHost 127.0.0.1:{tls_port}>\n  SSLEngine on\n  SSLCertificateFile {c}\n  SSLCertificateKeyFile {k}\n\
             <Location /cgi-bin/>\n    RSession On\n  </Location>\n</VirtualHost>\n\
             <Location /cgi-bin/none.cgi>\n  RSessionCookieSameSite None\n</Location>",
            m = harness::MODULES,
            c = cert.display(),
            k = key.display()
        ),
        ..Options::default()
    });
    h.cgi("none.cgi", ENV_CGI);
    let headers = curl_https(tls_port, "/cgi-bin/env.cgi");
    let line = headers
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie"))
        .unwrap_or_else(|| panic!("{headers}"));
    assert!(line.contains("; Secure"), "HTTPS in Auto mode: {line}");
    let plain = get(&h.url("/cgi-bin/env.cgi"), &[]);
    assert!(
        !plain.set_cookie().unwrap().contains("Secure"),
        "plain HTTP in Auto mode"
    );
    let none = get(&h.url("/cgi-bin/none.cgi"), &[]);
    assert!(
        none.set_cookie()
            .unwrap()
            .contains("; Secure; HttpOnly; SameSite=None"),
        "{:?}",
        none.set_cookie()
    );
}

#[test]
fn killing_children_mid_write_leaves_every_session_whole() {
    let h = server(Options {
        mpm: Mpm::Prefork,
        fragment: "StartServers 6\nMinSpareServers 6\nMaxSpareServers 12\n<Location /cgi-bin/>\n  RSessionLockTimeout 5\n</Location>".into(),
        ..Options::default()
    });
    let sessions: Vec<String> = (0..8)
        .map(|_| get(&h.url("/cgi-bin/env.cgi"), &[]).cookie_pair())
        .collect();
    let acknowledged: Vec<Mutex<u64>> = sessions.iter().map(|_| Mutex::new(0)).collect();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        for (i, cookie) in sessions.iter().enumerate() {
            let (done, acked, url) = (&done, &acknowledged[i], h.url("/cgi-bin/counter.cgi"));
            s.spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    // Killed children cost some requests; what was
                    // acknowledged must never be lost.
                    if let Ok(r) = harness::http::try_send("GET", &url, &[("Cookie", cookie)], None)
                    {
                        // A killed child can cut a 200 short: only a whole
                        // body says which value was confirmed.
                        let confirmed = (r.status == 200)
                            .then(|| r.body.trim().parse::<u64>().ok())
                            .flatten();
                        if let Some(n) = confirmed {
                            let mut acked = acked.lock().unwrap();
                            *acked = (*acked).max(n);
                        }
                    }
                }
            });
        }
        let mut killed = 0;
        while killed < 20 {
            let children = harness::children_of(h.pid());
            if let Some(&victim) = children.get(killed % children.len().max(1)) {
                // SAFETY: SIGKILL to a child of the httpd we started.
                unsafe { libc::kill(victim, libc::SIGKILL) };
                killed += 1;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        done.store(true, Ordering::SeqCst);
    });
    for (cookie, acked) in sessions.iter().zip(&acknowledged) {
        let r = get_with_cookie(&h.url("/cgi-bin/env.cgi"), cookie);
        assert_eq!(
            r.env("RSESSION_NEW").as_deref(),
            Some("0"),
            "the session survived the kills"
        );
        let n: u64 = r
            .env("RSESSION_DATA")
            .unwrap()
            .trim_start_matches("n=")
            .parse()
            .unwrap();
        let acked = *acked.lock().unwrap();
        assert!(
            n >= acked && acked > 0,
            "stored {n} but {acked} was acknowledged"
        );
    }
    // Every record on disk is whole JSON.
    for shard in std::fs::read_dir(h.path("logs/rsession"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
    {
        for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            assert!(!name.starts_with(".tmp-"), "no temporary file left: {name}");
            if name.len() == 32 {
                let text = std::fs::read_to_string(f.path()).unwrap();
                assert!(
                    text.trim_end().ends_with('}') && text.starts_with("{\"v\":1"),
                    "torn record {name}: {text:?}"
                );
            }
        }
    }
}

#[test]
fn a_full_store_answers_503_names_the_store_and_recovers() {
    let mnt = tempfile::Builder::new()
        .prefix("rsession-full-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs"])
        .arg(mnt.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN)");
        return;
    }
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(mnt.path());
    let store = mnt.path().join("store");
    let h = server(Options {
        fragment: format!("RSessionStore file:{}", store.display()),
        ..Options::default()
    });
    let kept = get(&h.url("/cgi-bin/counter.cgi"), &[]).cookie_pair();
    let filler = mnt.path().join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k", "count=64"])
        .arg(format!("of={}", filler.display()))
        .output();
    let mut inodes = 0;
    // tmpfs also runs out of inodes' worth of pages; fill with small files too.
    while std::fs::write(mnt.path().join(format!("f{inodes}")), "x").is_ok() && inodes < 100_000 {
        inodes += 1;
    }
    let r = get(&h.url("/cgi-bin/env.cgi"), &[]);
    // A full store passes (SPEC §6): 503 with Retry-After, not 500.
    assert_eq!(r.status, 503, "a new session cannot be stored: {r:?}");
    assert!(r.header("Retry-After").is_some(), "{r:?}");
    wait_for(
        "a log line naming the store",
        Duration::from_secs(5),
        || {
            h.error_log()
                .lines()
                .any(|l| l.contains("RS0011") && l.contains(&store.display().to_string()))
                .then_some(())
        },
    );
    let old = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &kept);
    assert_eq!(old.status, 200);
    assert_eq!(
        old.env("RSESSION_DATA").as_deref(),
        Some("n=1"),
        "existing records are intact and readable"
    );
    std::fs::remove_file(&filler).unwrap();
    for i in 0..inodes {
        let _ = std::fs::remove_file(mnt.path().join(format!("f{i}")));
    }
    let back = get(&h.url("/cgi-bin/env.cgi"), &[]);
    assert_eq!(back.status, 200, "service is back when space returns");
    drop(h);
}

/// Holds its request until the test creates `release` in the scratch
/// directory, then writes; `holder.pid` says it has started.
const HOLD_THEN_WRITE_CGI: &str = harness::scripts::HOLD_CGI;

/// Every name below the file store that is a temporary (`.tmp-*`).
fn temporaries(h: &Httpd) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![h.path("logs/rsession")];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            } else if e.file_name().to_string_lossy().starts_with(".tmp-") {
                found.push(e.path().display().to_string());
            }
        }
    }
    found
}

/// One session written at once by a locked location (through its spare
/// file) and by an `RSessionLock Off` one (through temporaries of its own):
/// every save answers 200, the record stays whole and nothing is left
/// behind.
#[test]
fn locked_and_unlocked_saves_of_one_session_keep_it_whole() {
    let h = server(Options {
        fragment: "<Location /cgi-bin/counter-unlocked.cgi>\n  RSessionLock Off\n</Location>"
            .into(),
        ..Options::default()
    });
    h.cgi("counter-unlocked.cgi", COUNTER_CGI);
    let cookie = get(&h.url("/cgi-bin/counter.cgi"), &[]).cookie_pair();
    std::thread::scope(|s| {
        for cgi in [
            "counter.cgi",
            "counter-unlocked.cgi",
            "counter.cgi",
            "counter-unlocked.cgi",
        ] {
            let (url, cookie) = (h.url(&format!("/cgi-bin/{cgi}")), &cookie);
            s.spawn(move || {
                for _ in 0..40 {
                    let r = get_with_cookie(&url, cookie);
                    assert_eq!(r.status, 200, "{cgi}: {r:?}");
                    assert!(r.body.trim().parse::<u64>().is_ok(), "{cgi}: {r:?}");
                    assert!(r.set_cookie().is_none(), "{cgi}: the session stayed: {r:?}");
                }
            });
        }
    });
    let r = get_with_cookie(&h.url("/cgi-bin/counter.cgi"), &cookie);
    assert!(r.body.trim().parse::<u64>().unwrap() > 1, "{r:?}");
    assert!(r.set_cookie().is_none(), "{r:?}");
    assert_eq!(temporaries(&h), Vec::<String>::new());
    assert!(h.crash_lines().is_empty(), "{:?}", h.crash_lines());
}

/// A request under `RSessionLock Off` that loaded its session before
/// another request invalidated it does not bring the session back when
/// it saves: it answers 503 and the old cookie gets a fresh session.
#[test]
fn an_unlocked_save_after_invalidate_does_not_bring_the_session_back() {
    let h = server(Options {
        fragment: "<Location /cgi-bin/hold-unlocked.cgi>\n  RSessionLock Off\n</Location>".into(),
        ..Options::default()
    });
    h.cgi("hold-unlocked.cgi", HOLD_THEN_WRITE_CGI);
    let first = get(&h.url("/cgi-bin/counter.cgi"), &[]);
    let cookie = first.cookie_pair();
    let id = harness::id_of(&cookie);
    let dir = h.scratch_dir(&id);
    let url = h.url("/cgi-bin/hold-unlocked.cgi");
    let held = {
        let cookie = cookie.clone();
        // Not scoped: a failed test must not wait for the handler.
        std::thread::spawn(move || get_with_cookie(&url, &cookie))
    };
    wait_for(
        "the unlocked handler to start",
        Duration::from_secs(10),
        || dir.join("holder.pid").exists().then_some(()),
    );
    let bye = get(
        &h.url("/cgi-bin/echo.cgi"),
        &[("Cookie", &cookie), ("X-Cmd", "invalidate")],
    );
    assert_eq!(bye.status, 200, "{bye:?}");
    assert!(!h.record(&id).exists(), "invalidated");
    // The handler only waits for the name: give it one where its
    // directory was.
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("release"), "").unwrap();
    // www-data's, as its own directory was: the sweeper can remove it.
    for path in [dir.clone(), dir.join("release")] {
        std::os::unix::fs::chown(path, Some(33), Some(33)).unwrap();
    }
    let r = held.join().unwrap();
    assert_eq!(r.status, 503, "its change could not be kept: {r:?}");
    assert!(!h.record(&id).exists(), "not brought back");
    let after = get_with_cookie(&h.url("/cgi-bin/counter.cgi"), &cookie);
    assert_eq!(after.body.trim(), "1", "a fresh session: {after:?}");
    assert!(after.set_cookie().is_some(), "{after:?}");
    assert_eq!(temporaries(&h), Vec::<String>::new());
}
