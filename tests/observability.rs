//! Issue 17: what operators see — lock waits counted and timed, mod_status
//! and Prometheus figures, debug lines for every session change, lock
//! timeouts rate-limited, and every RS code documented.

mod harness;

use harness::http::{get, get_with_cookie};
use harness::scripts::{COUNTER_CGI, ENV_CGI, HOLD_CGI};
use harness::{wait_for, Httpd, Mpm, Options};
use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const STATUS: &str = "<Location /rsession-status>\n  SetHandler rsession-status\n</Location>\n";

fn server(mpm: Mpm, extra: &str, modules: Vec<&'static str>) -> Httpd {
    let h = Httpd::start(Options {
        mpm,
        modules,
        fragment: format!("<Location /cgi-bin/>\n  RSession On\n</Location>\n{STATUS}{extra}"),
        ..Options::default()
    });
    h.cgi("counter.cgi", COUNTER_CGI);
    h.cgi("env.cgi", ENV_CGI);
    h.cgi("hold.cgi", HOLD_CGI);
    h.cgi(
        "regen.cgi",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\nX-RSession: regenerate\\n\\nok\\n'\n",
    );
    h.cgi(
        "inval.cgi",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\nX-RSession: invalidate\\n\\nok\\n'\n",
    );
    h
}

/// A request of `cookie` sent on a connection of our own, returned once
/// the server has read it (it is then in a child's hands, waiting for the
/// lock that `hold.cgi` keeps).
fn in_flight(h: &Httpd, cookie: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let port = s.local_addr().unwrap().port();
    write!(
        s,
        "GET /cgi-bin/counter.cgi HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    wait_for(
        "the server to read the request",
        Duration::from_secs(10),
        || h.has_read_request_from(port).then_some(()),
    );
    s
}

fn status_of(mut s: TcpStream) -> u16 {
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    harness::http::raw_status(&out)
}

/// A held session: the holder's thread, and the file that releases it.
fn hold<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    h: &'s Httpd,
    cookie: &'s str,
    dir: &str,
) -> (std::thread::ScopedJoinHandle<'s, u16>, std::path::PathBuf) {
    let holder = scope.spawn(move || get_with_cookie(&h.url("/cgi-bin/hold.cgi"), cookie).status);
    let dir = Path::new(dir).to_path_buf();
    wait_for("the holder to start", Duration::from_secs(10), || {
        dir.join("holder.pid").exists().then_some(())
    });
    (holder, dir.join("release"))
}

#[test]
fn every_request_that_waited_for_the_lock_is_counted_with_its_time() {
    let h = server(Mpm::Event, "", vec![]);
    let first = get(&h.url("/cgi-bin/env.cgi"), &[]);
    let cookie = first.cookie_pair();
    let dir = first.env("RSESSION_DIR").expect("RSESSION_DIR");
    assert_eq!(h.status_figure("lock_waits"), 0);
    std::thread::scope(|s| {
        let (holder, release) = hold(s, &h, &cookie, &dir);
        let waiting: Vec<_> = (0..4).map(|_| in_flight(&h, &cookie)).collect();
        std::fs::write(&release, "").unwrap();
        assert_eq!(holder.join().unwrap(), 200);
        for w in waiting {
            assert_eq!(status_of(w), 200);
        }
    });
    // The four waited; most of them briefly, in this process's gate.
    assert_eq!(h.status_figure("lock_waits"), 4);
    assert_eq!(h.status_figure("lock_timeouts"), 0);
    let total = h.status_figure("lock_wait_us");
    let max = h.status_figure("lock_wait_max_us");
    assert!(max > 0 && total >= max, "total {total} µs, max {max} µs");
    let log = h.error_log();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("for its lock") && l.contains("waited"))
            .count(),
        4,
        "one debug line per wait:\n{log}"
    );
}

#[test]
fn lock_timeouts_count_as_waits_and_log_one_warning_per_session() {
    let h = server(
        Mpm::Event,
        "<Location /cgi-bin/counter.cgi>\n  RSessionLockTimeout 0.2\n</Location>\n",
        vec![],
    );
    let first = get(&h.url("/cgi-bin/env.cgi"), &[]);
    let cookie = first.cookie_pair();
    let dir = first.env("RSESSION_DIR").expect("RSESSION_DIR");
    std::thread::scope(|s| {
        let (holder, release) = hold(s, &h, &cookie, &dir);
        for _ in 0..5 {
            let r = get_with_cookie(&h.url("/cgi-bin/counter.cgi"), &cookie);
            assert_eq!(r.status, 503, "{r:?}");
        }
        std::fs::write(&release, "").unwrap();
        assert_eq!(holder.join().unwrap(), 200);
    });
    assert_eq!(h.status_figure("lock_timeouts"), 5);
    assert_eq!(
        h.status_figure("lock_waits"),
        5,
        "a request that timed out waited"
    );
    assert!(h.status_figure("lock_wait_us") >= 5 * 200_000);
    let log = h.error_log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("RS0130")).collect();
    // One line per session and minute in each child process.
    let children = h.worker_children().len();
    assert!(
        (1..=children).contains(&lines.len()),
        "{} lines for 5 timeouts in {children} children:\n{log}",
        lines.len()
    );
    assert!(lines[0].contains(":warn]"), "{}", lines[0]);
    assert!(
        !log.lines()
            .any(|l| l.contains("timed out waiting") && l.contains(":error]")),
        "no error line per timeout:\n{log}"
    );
}

#[test]
fn debug_lines_for_saves_regeneration_and_invalidation() {
    let h = server(Mpm::Event, "", vec![]);
    let first = get(&h.url("/cgi-bin/counter.cgi"), &[]);
    let cookie = first.cookie_pair();
    get_with_cookie(&h.url("/cgi-bin/counter.cgi"), &cookie);
    let regen = get_with_cookie(&h.url("/cgi-bin/regen.cgi"), &cookie);
    let new_cookie = regen.cookie_pair();
    let old_id = harness::id_of(&cookie);
    let new_id = harness::id_of(&new_cookie);
    get_with_cookie(&h.url("/cgi-bin/inval.cgi"), &new_cookie);
    let log = h.error_log();
    let has = |needle: &str| log.lines().any(|l| l.contains(needle));
    assert!(has(&format!("session {}... saved", &old_id[..8])), "{log}");
    assert!(
        has(&format!(
            "session {}... regenerated as {}...",
            &old_id[..8],
            &new_id[..8]
        )),
        "{log}"
    );
    assert!(
        has(&format!("session {}... invalidated", &new_id[..8])),
        "{log}"
    );
    assert!(h.status_figure("saved") >= 3, "kept, saved, regenerated");
    assert_eq!(h.status_figure("regenerated"), 1);
    assert_eq!(h.status_figure("invalidated"), 1);
}

#[test]
fn mod_status_shows_a_session_section_and_auto_lines() {
    let h = server(
        Mpm::Event,
        "<Location /server-status>\n  SetHandler server-status\n</Location>\n",
        vec!["status"],
    );
    let first = get(&h.url("/cgi-bin/counter.cgi"), &[]);
    get_with_cookie(&h.url("/cgi-bin/counter.cgi"), &first.cookie_pair());
    let page = get(&h.url("/server-status"), &[]);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<h2>mod_rsession</h2>"), "{}", page.body);
    assert!(page.body.contains("<dt>resumed: 1</dt>"), "{}", page.body);
    let auto = get(&h.url("/server-status?auto"), &[]);
    let lines: HashMap<&str, &str> = auto
        .body
        .lines()
        .filter_map(|l| l.split_once(": "))
        .collect();
    assert_eq!(lines.get("rsession_created"), Some(&"1"), "{}", auto.body);
    assert_eq!(lines.get("rsession_resumed"), Some(&"1"));
    assert_eq!(lines.get("rsession_live_sessions"), Some(&"1"));
    assert!(lines.contains_key("rsession_store"));
    assert!(
        lines.contains_key("Total Accesses"),
        "mod_status's own lines stay"
    );
}

/// `?metrics` through Python's prometheus_client parser: sample name ->
/// (family type, value, documentation).
fn parsed_metrics(h: &Httpd) -> HashMap<String, (String, f64, String)> {
    let page = get(&h.url("/rsession-status?metrics"), &[]);
    assert_eq!(page.status, 200);
    assert!(
        page.header("Content-Type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{page:?}"
    );
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out[s.name] = [fam.type, s.value, fam.documentation]
print(json.dumps(out))
"#;
    // Debian's python3, where python3-prometheus-client lives (a pyenv or
    // venv python3 earlier on PATH would not see it).
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client (make test installs python3-prometheus-client) rejects:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        page.body
    );
    serde_json::from_slice(&out.stdout).expect("the parser's JSON")
}

#[test]
fn prometheus_metrics_parse_and_survive_graceful_under_prefork() {
    let mut h = server(Mpm::Prefork, "", vec![]);
    // Concurrent connections, so several children serve them.
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| {
                let first = get(&h.url("/cgi-bin/counter.cgi"), &[]);
                assert_eq!(first.status, 200);
                let again = get_with_cookie(&h.url("/cgi-bin/counter.cgi"), &first.cookie_pair());
                assert_eq!(again.status, 200);
            });
        }
    });
    let before = parsed_metrics(&h);
    let value = |m: &HashMap<String, (String, f64, String)>, name: &str| {
        m.get(name)
            .unwrap_or_else(|| panic!("no {name} in {m:?}"))
            .1
    };
    assert_eq!(value(&before, "rsession_created_total"), 6.0);
    assert_eq!(value(&before, "rsession_resumed_total"), 6.0);
    assert_eq!(value(&before, "rsession_live_sessions"), 6.0);
    assert!(value(&before, "rsession_saved_total") >= 12.0);
    assert!(before.contains_key("rsession_lock_wait_seconds_total"));
    for (name, (kind, _, doc)) in &before {
        let expected = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        assert_eq!(kind, expected, "{name}");
        assert!(!doc.is_empty(), "{name} has HELP");
    }
    h.graceful();
    let after = parsed_metrics(&h);
    for name in [
        "rsession_created_total",
        "rsession_resumed_total",
        "rsession_saved_total",
    ] {
        assert_eq!(
            value(&after, name),
            value(&before, name),
            "{name} after graceful"
        );
    }
}

/// Every `RSnnnn` code that src/ can log has an entry in
/// docs/log-messages.md.
#[test]
fn every_rs_code_in_src_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut codes = BTreeSet::new();
    let mut stack = vec![root.join("src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                codes.extend(rs_codes(&std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    assert!(codes.len() > 10, "{codes:?}");
    let docs = std::fs::read_to_string(root.join("docs/log-messages.md")).unwrap();
    let documented: BTreeSet<String> = docs
        .lines()
        .filter(|l| l.starts_with("| RS") || l.starts_with("### RS"))
        .flat_map(rs_codes)
        .collect();
    let missing: Vec<_> = codes.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "not in docs/log-messages.md: {missing:?}"
    );
}

fn rs_codes(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    (0..b.len().saturating_sub(5))
        .filter(|&i| {
            &b[i..i + 2] == b"RS"
                && b[i + 2..i + 6].iter().all(u8::is_ascii_digit)
                && b.get(i + 6).is_none_or(|c| !c.is_ascii_digit())
                && (i == 0 || !b[i - 1].is_ascii_alphanumeric())
        })
        .map(|i| text[i..i + 6].to_string())
        .collect()
}
