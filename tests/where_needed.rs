//! Issue 14: sessions only where they are needed. A request without a
//! session that writes nothing leaves nothing behind (RSessionCreate
//! OnWrite, the default); the first write keeps the session.

mod harness;

use harness::http::{get, get_with_cookie};
use harness::scripts::{COUNTER_CGI, ENV_CGI, HOLD_CGI};
use harness::{wait_for, Httpd, Options};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Leaves a file in its scratch directory and writes no data.
const UPLOAD_CGI: &str = r#"#!/bin/sh
echo kept > "$RSESSION_DIR/upload.txt"
printf 'Content-Type: text/plain\n\nstored\n'
"#;

const STATUS: &str = "<Location /rsession-status>\n  SetHandler rsession-status\n</Location>";

/// A server with the shipped default (no RSessionCreate line anywhere).
fn server() -> Httpd {
    let h = Httpd::start(Options {
        create_always: false,
        fragment: format!("<Location /cgi-bin/>\n  RSession On\n</Location>\n{STATUS}"),
        ..Options::default()
    });
    h.cgi("env.cgi", ENV_CGI);
    h.cgi("counter.cgi", COUNTER_CGI);
    h.cgi("upload.cgi", UPLOAD_CGI);
    h
}

/// Every file and directory below `dir`.
fn entries_below(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            out.push(e.path().display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn cookieless_requests_that_write_nothing_leave_no_trace() {
    let h = server();
    // The store and scratch root as the server made them at startup.
    let store_before = entries_below(&h.path("logs/rsession"));
    let scratch_before = entries_below(&h.path("logs/rsession-scratch"));
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..500 {
                    let r = get(&h.url("/cgi-bin/env.cgi"), &[]);
                    assert_eq!(r.status, 200);
                    assert!(
                        r.set_cookie().is_none(),
                        "no cookie for a session left untouched"
                    );
                    assert_eq!(r.env("RSESSION_NEW").as_deref(), Some("1"));
                    let dir = r
                        .env("RSESSION_DIR")
                        .expect("handlers still get a directory");
                    assert_eq!(r.env("RSESSION_ID").map(|i| i.len()), Some(32));
                    assert!(dir.ends_with(&r.env("RSESSION_ID").unwrap()));
                }
            });
        }
    });
    let store_after = entries_below(&h.path("logs/rsession"));
    let scratch_after = entries_below(&h.path("logs/rsession-scratch"));
    // The store's own structure may appear, once (a shard directory and
    // its lock file, made when first needed); no record, spare, or
    // anything per request.
    let is_structure = |p: &str| {
        let name = p.rsplit('/').next().unwrap_or("");
        name == ".locks" || (name.len() == 2 && name.bytes().all(|c| c.is_ascii_hexdigit()))
    };
    let new_in_store: Vec<_> = store_after
        .iter()
        .filter(|p| !store_before.contains(p) && !is_structure(p))
        .collect();
    assert!(new_in_store.is_empty(), "{new_in_store:?}");
    let new_in_scratch: Vec<_> = scratch_after
        .iter()
        .filter(|p| !scratch_before.contains(p))
        .filter(|p| {
            let name = p.rsplit('/').next().unwrap_or("");
            name.len() == 32 && name.bytes().all(|c| c.is_ascii_hexdigit())
        })
        .collect();
    assert!(new_in_scratch.is_empty(), "{new_in_scratch:?}");
    assert_eq!(h.status_figure("created"), 0, "not counted as created");
    assert_eq!(h.status_figure("discarded"), 1000);
    assert_eq!(h.status_figure("live_sessions"), 0);
}

#[test]
fn the_first_write_keeps_the_session_and_sets_the_cookie() {
    let h = server();
    let first = get(&h.url("/cgi-bin/counter.cgi"), &[]);
    assert_eq!(first.body.trim(), "1");
    let cookie = first.cookie_pair();
    let id = harness::id_of(&cookie);
    assert!(h.record(&id).exists());
    let second = get_with_cookie(&h.url("/cgi-bin/counter.cgi"), &cookie);
    assert_eq!(second.body.trim(), "2");
    assert!(second.set_cookie().is_none());
    assert_eq!(h.status_figure("created"), 1);
}

#[test]
fn a_file_left_in_the_scratch_directory_keeps_the_session() {
    let h = server();
    let first = get(&h.url("/cgi-bin/upload.cgi"), &[]);
    let cookie = first.cookie_pair();
    let again = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &cookie);
    assert_eq!(again.env("RSESSION_NEW").as_deref(), Some("0"));
    let dir = again.env("RSESSION_DIR").unwrap();
    assert_eq!(
        std::fs::read_to_string(Path::new(&dir).join("upload.txt")).unwrap(),
        "kept\n"
    );
}

#[test]
fn create_always_keeps_every_new_session() {
    let h = Httpd::start(Options {
        create_always: false,
        fragment: "<Location /cgi-bin/>\n  RSession On\n  RSessionCreate Always\n</Location>"
            .into(),
        ..Options::default()
    });
    h.cgi("env.cgi", ENV_CGI);
    let r = get(&h.url("/cgi-bin/env.cgi"), &[]);
    let cookie = r.cookie_pair();
    assert!(h.record(&harness::id_of(&cookie)).exists());
}

#[test]
fn static_files_never_make_a_session() {
    // Even where every other new session is kept.
    let h = Httpd::start(Options {
        fragment: "<Location />\n  RSession On\n</Location>".into(),
        ..Options::default()
    });
    h.htdoc("static/logo.png", "not really a png");
    let store_before = entries_below(&h.path("logs/rsession"));
    for _ in 0..100 {
        let r = get(&h.url("/static/logo.png"), &[]);
        assert_eq!(r.status, 200);
        assert!(r.set_cookie().is_none(), "{r:?}");
    }
    let store_after = entries_below(&h.path("logs/rsession"));
    assert_eq!(store_before, store_after, "no record, no lock file");
    let sessions: Vec<_> = entries_below(&h.path("logs/rsession-scratch"))
        .into_iter()
        .filter(|p| p.rsplit('/').next().is_some_and(|n| n.len() == 32))
        .collect();
    assert!(sessions.is_empty(), "{sessions:?}");
}

#[test]
fn a_static_file_of_a_busy_session_answers_at_once() {
    static_files_of_a_busy_session_answer_at_once("");
}

#[test]
fn a_static_file_of_a_busy_session_answers_at_once_where_the_session_names_the_user() {
    // RSessionUser reads the session before authorization, not in fixups.
    static_files_of_a_busy_session_answer_at_once("  RSessionUser user\n");
}

fn static_files_of_a_busy_session_answer_at_once(extra: &str) {
    let h = Httpd::start(Options {
        fragment: format!("Alias /static/ {{ROOT}}/htdocs/static/\n<LocationMatch ^/(cgi-bin|static)/>\n  RSession On\n  RSessionLockTimeout 2\n{extra}</LocationMatch>"),
        ..Options::default()
    });
    h.cgi("hold.cgi", harness::scripts::HOLD_CGI);
    h.cgi("counter.cgi", COUNTER_CGI);
    h.htdoc("static/logo.png", "logo");
    h.htdoc("static/index.html", "index");
    let cookie = get(&h.url("/cgi-bin/counter.cgi"), &[]).cookie_pair();
    std::thread::scope(|s| {
        let holder = s.spawn(|| get_with_cookie(&h.url("/cgi-bin/hold.cgi"), &cookie));
        let dir = harness::wait_for(
            "the holder to start",
            std::time::Duration::from_secs(10),
            || {
                entries_below(&h.path("logs/rsession-scratch"))
                    .into_iter()
                    .find(|p| p.ends_with("/holder.pid"))
                    .map(|p| p.trim_end_matches("/holder.pid").to_string())
            },
        );
        // The lock is held for as long as the test likes: a static file
        // that waited for it would get 503 after 2 s.
        for _ in 0..5 {
            let r = get_with_cookie(&h.url("/static/logo.png"), &cookie);
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.body, "logo");
        }
        // A directory's index file (mod_dir) is a static file too.
        let index = get_with_cookie(&h.url("/static/"), &cookie);
        assert_eq!(
            (index.status, index.body.as_str()),
            (200, "index"),
            "{index:?}"
        );
        assert!(!holder.is_finished(), "the CGI still holds the session");
        std::fs::write(Path::new(&dir).join("release"), "").unwrap();
        assert_eq!(holder.join().unwrap().status, 200);
    });
    // Parallel increments through the CGI still lose nothing.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..10 {
                    assert_eq!(
                        get_with_cookie(&h.url("/cgi-bin/counter.cgi"), &cookie).status,
                        200
                    );
                }
            });
        }
    });
    let last = get_with_cookie(&h.url("/cgi-bin/counter.cgi"), &cookie);
    assert_eq!(last.body.trim(), "42");
}

#[test]
fn a_directory_s_index_script_gets_the_session_its_own_settings_give_it() {
    // Sessions on for the scripts only: `/app/` is served by counter.cgi,
    // and gets the session /app/counter.cgi would.
    let h = Httpd::start(Options {
        fragment: "<Directory {ROOT}/htdocs/app>\n  Options +ExecCGI\n  AddHandler cgi-script .cgi\n  DirectoryIndex counter.cgi\n  <Files \"*.cgi\">\n    RSession On\n  </Files>\n</Directory>".into(),
        ..Options::default()
    });
    h.htdoc_script("app/counter.cgi", COUNTER_CGI);
    let first = get(&h.url("/app/"), &[]);
    assert_eq!((first.status, first.body.trim()), (200, "1"), "{first:?}");
    let cookie = first.cookie_pair();
    let second = get_with_cookie(&h.url("/app/"), &cookie);
    assert_eq!(second.body.trim(), "2", "{second:?}");
    let by_name = get_with_cookie(&h.url("/app/counter.cgi"), &cookie);
    assert_eq!(by_name.body.trim(), "3", "{by_name:?}");
}

/// Sets its own caching policy.
const CACHED_CGI: &str = r#"#!/bin/sh
printf 'Content-Type: text/plain\nCache-Control: max-age=60\n\nmine\n'
"#;

#[test]
fn personal_responses_are_private_static_ones_keep_their_caching() {
    let h = Httpd::start(Options {
        fragment: "Alias /static/ {ROOT}/htdocs/static/\n<LocationMatch ^/(cgi-bin|static)/>\n  RSession On\n</LocationMatch>".into(),
        ..Options::default()
    });
    h.cgi("env.cgi", ENV_CGI);
    h.cgi("cached.cgi", CACHED_CGI);
    h.htdoc("static/logo.png", "logo");
    let cookie = get(&h.url("/cgi-bin/env.cgi"), &[]).cookie_pair();
    let resumed = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &cookie);
    assert!(resumed.set_cookie().is_none());
    assert_eq!(
        resumed.header("Cache-Control"),
        Some("private"),
        "a returning visitor's page must not reach shared caches"
    );
    let own = get_with_cookie(&h.url("/cgi-bin/cached.cgi"), &cookie);
    assert_eq!(
        own.header("Cache-Control"),
        Some("max-age=60"),
        "the handler's own policy stays"
    );
    let logo = get_with_cookie(&h.url("/static/logo.png"), &cookie);
    assert_eq!(
        logo.header("Cache-Control"),
        None,
        "static files keep their caching"
    );
}

#[test]
fn a_reboot_that_keeps_the_records_keeps_the_sessions() {
    // As the shipped rsession.conf does: durable store and scratch root,
    // no RSessionSecret.
    let mut h = Httpd::start(Options {
        secret: false,
        fragment: "RSessionStore file:{ROOT}/lib-rsession\nRSessionScratchRoot {ROOT}/lib-rsession-scratch\n<Location /cgi-bin/>\n  RSession On\n</Location>".into(),
        ..Options::default()
    });
    h.cgi("counter.cgi", COUNTER_CGI);
    let cookie = get(&h.url("/cgi-bin/counter.cgi"), &[]).cookie_pair();
    h.stop();
    // What a reboot does to /run (here DefaultRuntimeDir): empty it.
    for e in std::fs::read_dir(h.path("logs")).unwrap().flatten() {
        let name = e.file_name();
        if name == "error.log" || name == "access.log" {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            std::fs::remove_dir_all(e.path()).unwrap();
        } else {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    h.start_again();
    let r = get_with_cookie(&h.url("/cgi-bin/counter.cgi"), &cookie);
    assert_eq!(r.body.trim(), "2", "the session survived the reboot: {r:?}");
    assert!(r.set_cookie().is_none());
}

/// A cookieless request that runs long, with the sweeper running every
/// second: its new session is not in the store yet (no record, and under
/// OnWrite no lock there either), so only the hold on its scratch
/// directory keeps the sweeper from taking the directory for an orphan
/// while the handler still writes into it. With `RSessionLock Off` the
/// directory was swept under the running handler before (its session,
/// kept at the end, then lacked what the handler had written). Needs a
/// scratch root on a local file system, as the harness's is.
#[test]
fn a_long_request_without_a_session_keeps_its_scratch_directory_through_sweeps() {
    let h = Httpd::start(Options {
        create_always: false,
        fragment: "RSessionGCInterval 1\n<Location /cgi-bin/>\n  RSession On\n</Location>\n\
                   <Location /cgi-bin/hold-unlocked.cgi>\n  RSessionLock Off\n</Location>"
            .to_string(),
        ..Options::default()
    });
    h.cgi("env.cgi", ENV_CGI);
    h.cgi("hold.cgi", HOLD_CGI);
    h.cgi("hold-unlocked.cgi", HOLD_CGI);
    for cgi in ["hold.cgi", "hold-unlocked.cgi"] {
        let url = h.url(&format!("/cgi-bin/{cgi}"));
        // Not scoped: should the directory go, the handler never ends and
        // the failed test must not wait for it.
        let request = std::thread::spawn(move || get(&url, &[]));
        let pid_file = wait_for("the handler to start", Duration::from_secs(10), || {
            entries_below(&h.path("logs/rsession-scratch"))
                .into_iter()
                .find(|e| e.ends_with("/holder.pid"))
        });
        let dir = Path::new(&pid_file).parent().unwrap().to_path_buf();
        let started = Instant::now();
        let sweeps = |h: &Httpd| h.error_log().matches("RS0040 sweep of file:").count();
        let before = sweeps(&h);
        // Passes that ran once the directory was past the orphans' grace
        // (one second, the interval).
        wait_for("two sweeps past the grace", Duration::from_secs(40), || {
            (sweeps(&h) >= before + 3 && started.elapsed() > Duration::from_secs(2)).then_some(())
        });
        assert!(
            dir.join("holder.pid").exists(),
            "{cgi}: the running request's directory was swept"
        );
        std::fs::remove_file(dir.join("holder.pid")).unwrap();
        std::fs::write(dir.join("release"), "").unwrap();
        let r = request.join().unwrap();
        assert_eq!(r.status, 200, "{cgi}: {r:?}");
        let again = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &r.cookie_pair());
        assert_eq!(
            again.env("RSESSION_DIR").map(PathBuf::from),
            Some(dir.clone()),
            "{cgi}: kept, with its directory"
        );
        assert!(dir.join("release").exists(), "{cgi}: with what was in it");
    }
}
