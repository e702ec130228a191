//! Issue 3: handlers change the session through the update header and the
//! C API, backends get forwarded headers, and the per-session lock never
//! loses an update or deadlocks — with real CGI, a real proxied backend
//! and a real module built with apxs.

mod harness;

use harness::http::{get, get_with_cookie, send, Response};
use harness::scripts::{Backend, COUNTER_CGI, ENV_CGI, HOLD_CGI};
use harness::{id_of, session_data as data, wait_for, Httpd, Mpm, Options};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Sends the commands given in request headers X-Cmd-1..3 (and a status).
const CMD_CGI: &str = r#"#!/bin/sh
printf 'Content-Type: text/plain\n'
[ -n "$HTTP_X_STATUS" ] && printf 'Status: %s\n' "$HTTP_X_STATUS"
[ -n "$HTTP_X_CMD_1" ] && printf 'X-RSession: %s\n' "$HTTP_X_CMD_1"
[ -n "$HTTP_X_CMD_2" ] && printf 'X-RSession: %s\n' "$HTTP_X_CMD_2"
[ -n "$HTTP_X_CMD_3" ] && printf 'X-RSession: %s\n' "$HTTP_X_CMD_3"
[ -n "$HTTP_X_FILE" ] && printf 'kept' > "$RSESSION_DIR/$HTTP_X_FILE"
printf '\n'
env | grep -E '^RSESSION_' | sort
"#;

fn server(mpm: Mpm, extra: &str) -> Httpd {
    let h = Httpd::start(Options {
        mpm,
        fragment: format!("<Location /cgi-bin/>\n  RSession On\n</Location>\n{extra}"),
        ..Options::default()
    });
    h.cgi("env.cgi", ENV_CGI);
    h.cgi("counter.cgi", COUNTER_CGI);
    h.cgi("cmd.cgi", CMD_CGI);
    h.cgi("hold.cgi", HOLD_CGI);
    h
}

fn new_session(h: &Httpd) -> (String, Response) {
    let r = get(&h.url("/cgi-bin/env.cgi"), &[]);
    (r.cookie_pair(), r)
}

fn cmd(h: &Httpd, cookie: &str, commands: &[&str]) -> Response {
    let names = ["X-Cmd-1", "X-Cmd-2", "X-Cmd-3"];
    let mut headers: Vec<(&str, &str)> = vec![("Cookie", cookie)];
    headers.extend(names.iter().copied().zip(commands.iter().copied()));
    let r = get(&h.url("/cgi-bin/cmd.cgi"), &headers);
    assert!(
        r.header("X-RSession").is_none(),
        "the update header must never reach the client"
    );
    r
}

#[test]
fn parallel_increments_of_one_session_lose_nothing_under_every_mpm() {
    for mpm in Mpm::ALL {
        let h = server(mpm, "");
        let (cookie, _) = new_session(&h);
        let issued = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    while issued.fetch_add(1, Ordering::SeqCst) < 100 {
                        let r = get_with_cookie(&h.url("/cgi-bin/counter.cgi"), &cookie);
                        assert_eq!(r.status, 200, "{mpm:?}: {r:?}");
                    }
                });
            }
        });
        assert_eq!(data(&h, &cookie), "n=100", "{mpm:?}: every increment kept");
    }
}

#[test]
fn a_busy_session_blocks_only_itself_and_times_out_with_503() {
    let h = server(
        Mpm::Event,
        "<Location /cgi-bin/>\n  RSessionLockTimeout 1.5\n</Location>",
    );
    let (a, first) = new_session(&h);
    let a_dir = first.env("RSESSION_DIR").unwrap();
    let (b, _) = new_session(&h);
    std::thread::scope(|s| {
        let holder = s.spawn(|| get_with_cookie(&h.url("/cgi-bin/hold.cgi"), &a));
        wait_for("the holder to start", Duration::from_secs(10), || {
            Path::new(&a_dir).join("holder.pid").exists().then_some(())
        });

        // Another session is served while A is held.
        let other = get_with_cookie(&h.url("/cgi-bin/counter.cgi"), &b);
        assert_eq!(other.status, 200);
        assert!(!holder.is_finished(), "A is still held while B was served");

        // A second request of A waits out the lock timeout and gets 503.
        let blocked = get_with_cookie(&h.url("/cgi-bin/counter.cgi"), &a);
        assert_eq!(blocked.status, 503);
        assert!(
            blocked.header("Retry-After").is_some(),
            "503 carries Retry-After"
        );
        assert!(!holder.is_finished(), "the holder is unaffected");

        std::fs::write(Path::new(&a_dir).join("release"), "").unwrap();
        let done = holder.join().unwrap();
        assert_eq!(done.status, 200);
    });
    assert_eq!(
        data(&h, &a),
        "held=done",
        "the holder's update was saved; the 503 changed nothing"
    );
    // One warning for the timeout (tests/observability.rs: rate-limited).
    assert!(h.error_log().contains("RS0130"));
}

#[test]
fn killing_the_child_that_holds_a_lock_frees_it_at_once() {
    let h = server(
        Mpm::Prefork,
        "<Location /cgi-bin/>\n  RSessionLockTimeout 3\n</Location>",
    );
    let (a, first) = new_session(&h);
    let a_dir = first.env("RSESSION_DIR").unwrap();
    let pid_file = Path::new(&a_dir).join("holder.pid");
    std::thread::scope(|s| {
        let holder = s.spawn(|| {
            // The connection dies with the child: any outcome but a hang.
            let _ = std::panic::catch_unwind(|| get_with_cookie(&h.url("/cgi-bin/hold.cgi"), &a));
        });
        let pid: i32 = wait_for("the holder's pid", Duration::from_secs(10), || {
            std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse().ok())
        });
        assert_ne!(
            pid,
            h.pid(),
            "the CGI's parent is a child, not the server's parent"
        );
        // SAFETY: killing the httpd child process that serves our request.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        // The CGI itself still runs (waiting for `release`) but inherited no lock.
        let r = get_with_cookie(&h.url("/cgi-bin/counter.cgi"), &a);
        assert_eq!(
            r.status, 200,
            "lock freed with its process, not after the timeout: {r:?}"
        );
        std::fs::write(Path::new(&a_dir).join("release"), "").unwrap();
        holder.join().unwrap();
    });
    assert_eq!(data(&h, &a), "n=1");
    // The killed child is reported by httpd itself; that is this test's doing.
}

#[test]
fn a_graceful_restart_lets_requests_waiting_for_a_lock_finish() {
    // Children of the old generation finish the requests they have; one
    // that waits for its session's lock must wait on, not answer 503.
    let mut h = server(
        Mpm::Event,
        "<Location /cgi-bin/>\n  RSessionLockTimeout 30\n</Location>",
    );
    let (a, first) = new_session(&h);
    let a_dir = first.env("RSESSION_DIR").unwrap();
    let hold_url = h.url("/cgi-bin/hold.cgi");
    std::thread::scope(|s| {
        let holder = s.spawn(|| get_with_cookie(&hold_url, &a));
        wait_for("the holder to start", Duration::from_secs(10), || {
            Path::new(&a_dir).join("holder.pid").exists().then_some(())
        });
        let mut waiter = TcpStream::connect(("127.0.0.1", h.port)).unwrap();
        write!(
            waiter,
            "GET /cgi-bin/counter.cgi HTTP/1.1\r\nHost: localhost\r\nCookie: {a}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let client_port = waiter.local_addr().unwrap().port();
        wait_for(
            "a child of this generation to read the request",
            Duration::from_secs(10),
            || h.has_read_request_from(client_port).then_some(()),
        );
        let old_children = h.worker_children();
        h.graceful();
        // Release the holder only once every old child knows it is stopping.
        wait_for(
            "the old children to stop gracefully",
            Duration::from_secs(10),
            || {
                let log = h.error_log();
                old_children
                    .iter()
                    .all(|pid| {
                        log.lines().any(|l| {
                            l.contains(&format!("[pid {pid}:"))
                                && l.contains("child stopping gracefully")
                        })
                    })
                    .then_some(())
            },
        );
        std::fs::write(Path::new(&a_dir).join("release"), "").unwrap();
        let mut response = String::new();
        waiter.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "the waiter is served once the holder is done: {response}"
        );
        assert_eq!(holder.join().unwrap().status, 200);
    });
    let saved = data(&h, &a);
    assert!(
        saved.contains("held=done") && saved.contains("n=1"),
        "both requests' updates were saved: {saved}"
    );
}

#[test]
fn set_unset_and_percent_encoding_round_trip() {
    let h = server(Mpm::Event, "");
    let (c, _) = new_session(&h);
    cmd(
        &h,
        &c,
        &[
            "set a=1&b=x%20y",
            "set name=J%C3%BCrgen&tricky=a%26b%3Dc%0D%0Ad",
        ],
    );
    assert_eq!(
        data(&h, &c),
        "a=1&b=x+y&name=J%C3%BCrgen&tricky=a%26b%3Dc%0D%0Ad"
    );
    cmd(&h, &c, &["unset a&name, set c=3"]);
    assert_eq!(
        data(&h, &c),
        "b=x+y&c=3&tricky=a%26b%3Dc%0D%0Ad",
        "comma-joined commands apply in order"
    );
    cmd(&h, &c, &["set z=1", "unset z"]);
    assert!(
        !data(&h, &c).contains("z="),
        "several header lines apply in order"
    );
}

#[test]
fn bad_commands_are_logged_and_ignored() {
    let h = server(Mpm::Event, "");
    let (c, _) = new_session(&h);
    let r = cmd(&h, &c, &["frobnicate now", "set novalue", "set ok=1"]);
    assert_eq!(r.status, 200);
    assert_eq!(data(&h, &c), "ok=1");
    wait_for("the warning", Duration::from_secs(5), || {
        h.error_log().contains("RS0020").then_some(())
    });
}

#[test]
fn changes_with_a_server_error_are_discarded_except_invalidate() {
    let h = server(Mpm::Event, "");
    let (c, _) = new_session(&h);
    cmd(&h, &c, &["set keep=1"]);
    let r = get(
        &h.url("/cgi-bin/cmd.cgi"),
        &[
            ("Cookie", &c),
            ("X-Status", "500 Broken"),
            ("X-Cmd-1", "set keep=2"),
        ],
    );
    assert_eq!(r.status, 500);
    assert_eq!(data(&h, &c), "keep=1");
    let r = get(
        &h.url("/cgi-bin/cmd.cgi"),
        &[
            ("Cookie", &c),
            ("X-Status", "502 Bad"),
            ("X-Cmd-1", "invalidate"),
        ],
    );
    assert_eq!(r.status, 502);
    assert!(r.set_cookie().unwrap().contains("Max-Age=0"));
    assert_eq!(
        get_with_cookie(&h.url("/cgi-bin/env.cgi"), &c)
            .env("RSESSION_NEW")
            .as_deref(),
        Some("1")
    );
}

#[test]
fn the_size_limit_refuses_updates_and_keeps_the_session() {
    let h = server(
        Mpm::Event,
        "<Location /cgi-bin/>\n  RSessionMaxDataSize 64\n</Location>",
    );
    let (c, _) = new_session(&h);
    cmd(&h, &c, &["set small=1"]);
    let big = format!("set big={}", "x".repeat(100));
    let r = cmd(&h, &c, &[big.as_str()]);
    assert_eq!(r.status, 200);
    assert_eq!(data(&h, &c), "small=1");
    wait_for("the refusal in the log", Duration::from_secs(5), || {
        h.error_log().contains("RSessionMaxDataSize").then_some(())
    });
}

#[test]
fn invalidate_removes_everything_and_expires_the_cookie() {
    let h = server(Mpm::Event, "");
    let (c, first) = new_session(&h);
    let id = first.env("RSESSION_ID").unwrap();
    let dir = first.env("RSESSION_DIR").unwrap();
    let r = cmd(&h, &c, &["set user=ann", "invalidate"]);
    let line = r.set_cookie().expect("invalidate expires the cookie");
    assert!(
        line.starts_with("sid=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"),
        "{line}"
    );
    assert!(!h.record(&id).exists());
    assert!(!Path::new(&dir).exists());
    let after = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &c);
    assert_ne!(after.env("RSESSION_ID"), Some(id));
    assert_eq!(after.env("RSESSION_DATA").as_deref(), Some(""));
}

#[test]
fn regenerate_issues_a_new_id_and_keeps_data_and_files() {
    let h = server(Mpm::Event, "");
    let (old_cookie, first) = new_session(&h);
    let old_id = first.env("RSESSION_ID").unwrap();
    let r = get(
        &h.url("/cgi-bin/cmd.cgi"),
        &[
            ("Cookie", &old_cookie),
            ("X-Cmd-1", "set user=ann"),
            ("X-Cmd-2", "regenerate"),
            ("X-File", "upload.txt"),
        ],
    );
    let new_cookie = r.cookie_pair();
    let after = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &new_cookie);
    let new_id = after.env("RSESSION_ID").unwrap();
    assert_ne!(new_id, old_id);
    assert_eq!(after.env("RSESSION_DATA").as_deref(), Some("user=ann"));
    let new_dir = after.env("RSESSION_DIR").unwrap();
    assert_eq!(
        std::fs::read_to_string(Path::new(&new_dir).join("upload.txt")).unwrap(),
        "kept"
    );
    assert!(
        !Path::new(&first.env("RSESSION_DIR").unwrap()).exists(),
        "scratch moved, not copied"
    );
    let stale = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &old_cookie);
    assert_ne!(
        stale.env("RSESSION_ID").as_deref(),
        Some(old_id.as_str()),
        "the old id is dead"
    );
    assert_ne!(stale.env("RSESSION_ID").as_deref(), Some(new_id.as_str()));
}

#[test]
fn unchanged_sessions_are_rewritten_only_after_the_touch_interval() {
    let h = server(
        Mpm::Event,
        "<Location /cgi-bin/>\n  RSessionTouchInterval 2\n</Location>",
    );
    let (c, first) = new_session(&h);
    let record = h.record(&first.env("RSESSION_ID").unwrap());
    let accessed = || -> u64 {
        let v: serde_json_lite::Value =
            serde_json_lite::parse(&std::fs::read_to_string(&record).unwrap());
        v.0
    };
    let created = accessed();
    get_with_cookie(&h.url("/cgi-bin/env.cgi"), &c);
    assert_eq!(accessed(), created, "no write inside the touch interval");
    wait_for(
        "a rewrite after the interval",
        Duration::from_secs(10),
        || {
            get_with_cookie(&h.url("/cgi-bin/env.cgi"), &c);
            (accessed() >= created + 2).then_some(())
        },
    );
}

/// Just enough JSON to read the record's access time (`"a":N`).
mod serde_json_lite {
    pub struct Value(pub u64);
    pub fn parse(text: &str) -> Value {
        let at = text.find("\"a\":").expect("record has an access time") + 4;
        Value(
            text[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .unwrap(),
        )
    }
}

#[test]
fn proxied_backends_get_the_session_and_update_it() {
    let backend_port = harness::free_port();
    let _backend = Backend::start(backend_port);
    let h = server(
        Mpm::Event,
        &format!(
            "LoadModule proxy_module {m}/mod_proxy.so\nLoadModule proxy_http_module {m}/mod_proxy_http.so\n\
             <Location /app/>\n  RSession On\n  RSessionForwardHeaders On\n  ProxyPass http://127.0.0.1:{backend_port}/\n</Location>",
            m = harness::MODULES
        ),
    );
    let first = get(
        &h.url("/app/?user=J%C3%BCrgen"),
        &[("X-RSession-Id", "spoofed")],
    );
    assert_eq!(first.status, 200, "{first:?}");
    assert!(
        first.header("X-RSession").is_none(),
        "backend's update header is removed"
    );
    let cookie = first.cookie_pair();
    let id = harness::id_of(&cookie);
    assert!(
        first.body.contains(&format!("\"X-RSession-Id\": \"{id}\"")),
        "{}",
        first.body
    );
    assert!(first.body.contains("X-RSession-Dir"));
    let second = get_with_cookie(&h.url("/app/"), &cookie);
    assert!(second.body.contains("\"visits\": 2"), "{}", second.body);
    assert!(
        second.body.contains("\"user\": \"J\\u00fcrgen\""),
        "{}",
        second.body
    );
    assert!(
        second
            .body
            .contains("\"X-RSession-Data\": \"user=J%C3%BCrgen&visits=1\""),
        "{}",
        second.body
    );
}

/// Builds tests/support/mod_rsession_test.c with apxs into `dir`.
fn build_test_module(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("mod_rsession_test.c");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/mod_rsession_test.c"),
        &src,
    )
    .unwrap();
    let include = format!(
        "-I{}",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("c_shim")
            .display()
    );
    let out = Command::new("apxs")
        .args(["-c", &include, src.to_str().unwrap()])
        .current_dir(dir)
        .output()
        .expect("apxs runs");
    assert!(
        out.status.success(),
        "apxs -c failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let so = dir.join(".libs/mod_rsession_test.so");
    assert!(so.exists());
    so
}

#[test]
fn the_c_api_reads_and_changes_the_session() {
    let build = tempfile::tempdir().unwrap();
    let so = build_test_module(build.path());
    let h = server(
        Mpm::Event,
        &format!(
            "LoadModule rsession_test_module {}\n<Location /api>\n  RSession On\n  RSessionMaxDataSize 200\n  SetHandler rsession-test\n</Location>",
            so.display()
        ),
    );
    let line = |r: &Response, key: &str| {
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
    };
    let r = get(&h.url("/api?op=set&k=user&v=ann%20lee"), &[]);
    assert_eq!(line(&r, "set").as_deref(), Some("0"), "{}", r.body);
    let cookie = r.cookie_pair();
    let id = line(&r, "id").unwrap();
    assert!(cookie.contains(&id));
    assert!(line(&r, "dir").unwrap().ends_with(&id));
    assert_eq!(data(&h, &cookie), "user=ann+lee", "rsession_set was saved");
    let r = get_with_cookie(&h.url("/api?op=show&k=user"), &cookie);
    assert_eq!(line(&r, "get").as_deref(), Some("ann lee"));
    let r = get_with_cookie(
        &h.url(&format!("/api?op=set&k=huge&v={}", "x".repeat(300))),
        &cookie,
    );
    assert_ne!(
        line(&r, "set").as_deref(),
        Some("0"),
        "over RSessionMaxDataSize is refused"
    );
    let r = get_with_cookie(&h.url("/api?op=unset&k=user"), &cookie);
    assert_eq!(line(&r, "get").as_deref(), Some("(null)"));
    let r = get_with_cookie(&h.url("/api?op=regenerate"), &cookie);
    assert_eq!(line(&r, "regenerate").as_deref(), Some("0"));
    let fresh = r.cookie_pair();
    assert!(!fresh.contains(&id), "regenerate issued a new id");
    let r = get_with_cookie(&h.url("/api?op=invalidate"), &fresh);
    assert_eq!(line(&r, "invalidate").as_deref(), Some("0"));
    assert!(r.set_cookie().unwrap().contains("Max-Age=0"));
    // Outside a session location the functions report no session.
    let plain = Httpd::start(Options {
        fragment: format!("LoadModule rsession_test_module {}\n<Location /api>\n  SetHandler rsession-test\n</Location>", so.display()),
        ..Options::default()
    });
    let r = get(&plain.url("/api?op=set&k=a&v=1"), &[]);
    assert_eq!(line(&r, "id").as_deref(), Some("(null)"));
    assert_ne!(line(&r, "set").as_deref(), Some("0"));
}

#[test]
fn a_cgi_chosen_by_content_type_can_write_its_session() {
    // The old way to name CGIs (and mod_php's): `AddType` instead of a
    // handler. httpd picks the handler by content type, after fixups, so
    // such a script is not a static file that can only read its session.
    let h = Httpd::start(Options {
        fragment: r#"<Location />
  RSession On
</Location>
<Directory {ROOT}/htdocs/typed>
  Options +ExecCGI
  AddType application/x-httpd-cgi .cgi
</Directory>
"#
        .into(),
        ..Options::default()
    });
    h.htdoc_script("typed/count.cgi", COUNTER_CGI);
    let first = get(&h.url("/typed/count.cgi"), &[]);
    assert_eq!(
        (first.status, first.body.as_str()),
        (200, "1\n"),
        "{first:?}"
    );
    let cookie = first.cookie_pair();
    let counts: Vec<String> = (0..3)
        .map(|_| get_with_cookie(&h.url("/typed/count.cgi"), &cookie).body)
        .collect();
    assert_eq!(counts, ["2\n", "3\n", "4\n"], "every increment stored");
    assert!(!h.error_log().contains("RS0021"), "no command dropped");
}

#[test]
fn a_script_a_file_hands_its_request_to_runs_on_the_file_s_session_and_waits_for_its_lock() {
    // The script's location names another cookie; the session is still the
    // chain's (the file's). And the lock is waited for as anywhere else: a
    // timeout is a 503, not the script run without its session (its
    // changes dropped behind a 200).
    let h = Httpd::start(Options {
        modules: vec!["actions"],
        fragment: r#"ScriptAlias /app/ {ROOT}/cgi-bin/
<Location />
  RSession On
  RSessionLockTimeout 1
</Location>
<Location /cgi-bin/>
  RSessionCookieName adm
</Location>
Action image/gif /cgi-bin/counter.cgi
<Location /rsession-status>
  SetHandler rsession-status
</Location>
"#
        .into(),
        ..Options::default()
    });
    h.cgi("counter.cgi", COUNTER_CGI);
    h.cgi("hold.cgi", HOLD_CGI);
    h.htdoc("pics/a.gif", "GIF89a");
    let resumed = || {
        let page = get(&h.url("/rsession-status"), &[]).body;
        page.lines()
            .find_map(|l| l.strip_prefix("resumed: ")?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no resumed line: {page}"))
    };
    let first = get(&h.url("/app/counter.cgi"), &[]);
    let cookie = first.cookie_pair();
    assert!(cookie.starts_with("sid="), "{cookie}");
    let resumed_before = resumed();
    let gif = get_with_cookie(&h.url("/pics/a.gif"), &cookie);
    assert_eq!((gif.status, gif.body.as_str()), (200, "2\n"), "{gif:?}");
    assert!(gif.set_cookie().is_none(), "no session of its own: {gif:?}");
    assert_eq!(resumed(), resumed_before + 1, "one request, one resume");
    let dir = h.scratch_dir(&id_of(&cookie));
    std::thread::scope(|s| {
        let holder = s.spawn(|| get_with_cookie(&h.url("/app/hold.cgi"), &cookie));
        wait_for("the holder to start", Duration::from_secs(10), || {
            dir.join("holder.pid").exists().then_some(())
        });
        let waited = get_with_cookie(&h.url("/pics/a.gif"), &cookie);
        assert_eq!(waited.status, 503, "{waited:?}");
        assert!(waited.header("Retry-After").is_some(), "{waited:?}");
        std::fs::write(dir.join("release"), "").unwrap();
        assert_eq!(holder.join().unwrap().status, 200);
    });
    let after = get_with_cookie(&h.url("/app/counter.cgi"), &cookie);
    assert_eq!(
        after.body, "3\n",
        "nothing counted behind the 503: {after:?}"
    );
}

#[test]
fn a_script_a_static_file_hands_its_request_to_can_write_its_session() {
    // mod_actions, a type map and ErrorDocument hand a request for a file
    // to a script by an internal redirect. The file is static, so the
    // session was read-only; the script answers the request, and its
    // writes were dropped (RS0021) while the client got its answer.
    let h = Httpd::start(Options {
        modules: vec!["actions", "negotiation"],
        fragment: r#"<Location />
  RSession On
</Location>
Action image/gif /cgi-bin/counter.cgi
Action application/x-upload /cgi-bin/upload.cgi
AddType application/x-upload .up
AddType application/x-type-map .var
ErrorDocument 404 /cgi-bin/counter.cgi
<Directory {ROOT}/htdocs/maps>
  Options +ExecCGI
  AddHandler cgi-script .cgi
</Directory>
"#
        .into(),
        ..Options::default()
    });
    h.cgi("counter.cgi", COUNTER_CGI);
    h.cgi("env.cgi", ENV_CGI);
    h.cgi(
        "upload.cgi",
        "#!/bin/sh\nn=$(wc -c | tr -d ' ')\nprintf 'Content-Type: text/plain\\nX-RSession: set got=%s\\n\\n%s\\n' \"$n\" \"$n\"\n",
    );
    h.htdoc("pics/a.gif", "GIF89a");
    h.htdoc("files/in.up", "file");
    h.htdoc(
        "maps/count.var",
        "URI: count.cgi\nContent-type: text/plain\n",
    );
    h.htdoc_script("maps/count.cgi", COUNTER_CGI);
    let cookie = get(&h.url("/cgi-bin/counter.cgi"), &[]).cookie_pair();
    let answers: Vec<(u16, String)> = ["/pics/a.gif", "/maps/count.var", "/no/such.html"]
        .iter()
        .map(|path| {
            let r = get_with_cookie(&h.url(path), &cookie);
            (r.status, r.body)
        })
        .collect();
    assert_eq!(
        answers,
        [
            (200, "2\n".to_string()),
            (200, "3\n".to_string()),
            (404, "4\n".to_string()),
        ],
        "each script's increment stored"
    );
    // A body sent to the file reaches the script (read before the lock,
    // as for any script).
    let body = "x".repeat(100_000);
    let up = send(
        "POST",
        &h.url("/files/in.up"),
        &[("Cookie", cookie.as_str())],
        Some(&body),
    );
    assert_eq!((up.status, up.body.as_str()), (200, "100000\n"), "{up:?}");
    let after = get_with_cookie(&h.url("/cgi-bin/counter.cgi"), &cookie);
    assert_eq!(after.body, "5\n", "{after:?}");
    let data = data(&h, &cookie);
    assert!(data.contains("got=100000"), "{data}");
    assert!(!h.error_log().contains("RS0021"), "no command dropped");
}
