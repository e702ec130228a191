//! Issue 12 and 13: what one site, one client or one cookie must not be able
//! to do to another's session — virtual-host scopes, forged forwarded
//! headers, planted cookies — and sessions that never end early.

mod harness;

use harness::http::{get, get_with_cookie, raw};
use harness::scripts::{Backend, ENV_CGI};
use harness::{check_config, sign, Httpd, Options, SECRET};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Echoes the request header X-Cmd as the update header, verbatim.
const ECHO_CGI: &str = r#"#!/bin/sh
printf 'Content-Type: text/plain\nX-RSession: %s\n\n' "$HTTP_X_CMD"
env | grep -E '^RSESSION_' | sort
"#;

fn server(fragment: &str) -> Httpd {
    let h = Httpd::start(Options {
        fragment: fragment.to_string(),
        ..Options::default()
    });
    h.cgi("env.cgi", ENV_CGI);
    h.cgi("echo.cgi", ECHO_CGI);
    h
}

/// A raw HTTP/1.1 GET for `host`, with extra header lines.
fn get_on(h: &Httpd, host: &str, path: &str, extra: &[&str]) -> String {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for line in extra {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    raw(h.port, request.as_bytes())
}

fn cookie_pair_of(raw_response: &str) -> String {
    let line = raw_response
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .unwrap_or_else(|| panic!("no Set-Cookie in {raw_response}"));
    line.split(';').next().unwrap().to_string()
}

fn env_line<'a>(raw_response: &'a str, key: &str) -> Option<&'a str> {
    raw_response
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// Two name-based virtual hosts sharing the default store and secret.
fn two_sites(scope_lines: [&str; 2]) -> Httpd {
    server(&format!(
        "<VirtualHost *>\n  ServerName a.test\n  {}\n  <Location /cgi-bin/>\n    RSession On\n  </Location>\n</VirtualHost>\n\
         <VirtualHost *>\n  ServerName b.test\n  {}\n  <Location /cgi-bin/>\n    RSession On\n  </Location>\n</VirtualHost>",
        scope_lines[0], scope_lines[1]
    ))
}

#[test]
fn a_cookie_from_one_virtual_host_gets_a_fresh_session_on_another() {
    let h = two_sites(["", ""]);
    let on_a = get_on(
        &h,
        "a.test",
        "/cgi-bin/echo.cgi",
        &["X-Cmd: set role=admin-of-a"],
    );
    let cookie = cookie_pair_of(&on_a);
    let again_on_a = get_on(
        &h,
        "a.test",
        "/cgi-bin/echo.cgi",
        &[&format!("Cookie: {cookie}")],
    );
    assert_eq!(
        env_line(&again_on_a, "RSESSION_DATA"),
        Some("role=admin-of-a")
    );

    let on_b = get_on(
        &h,
        "b.test",
        "/cgi-bin/echo.cgi",
        &[&format!("Cookie: {cookie}")],
    );
    assert_eq!(
        env_line(&on_b, "RSESSION_NEW"),
        Some("1"),
        "b.test must not resume a.test's session: {on_b}"
    );
    assert_eq!(env_line(&on_b, "RSESSION_DATA"), Some(""), "{on_b}");
    assert_ne!(
        cookie_pair_of(&on_b),
        cookie,
        "b.test issues its own cookie"
    );

    let back_on_a = get_on(
        &h,
        "a.test",
        "/cgi-bin/echo.cgi",
        &[&format!("Cookie: {cookie}")],
    );
    assert_eq!(
        env_line(&back_on_a, "RSESSION_DATA"),
        Some("role=admin-of-a"),
        "a.test's session survived the attempt"
    );
}

#[test]
fn virtual_hosts_with_one_scope_share_sessions() {
    let h = two_sites(["RSessionScope shop", "RSessionScope shop"]);
    let on_a = get_on(&h, "a.test", "/cgi-bin/echo.cgi", &["X-Cmd: set cart=3"]);
    let cookie = cookie_pair_of(&on_a);
    let on_b = get_on(
        &h,
        "b.test",
        "/cgi-bin/echo.cgi",
        &[&format!("Cookie: {cookie}")],
    );
    assert_eq!(env_line(&on_b, "RSESSION_NEW"), Some("0"), "{on_b}");
    assert_eq!(env_line(&on_b, "RSESSION_DATA"), Some("cart=3"));
}

#[test]
fn forged_session_headers_never_reach_a_backend_however_they_are_spelt() {
    let backend_port = harness::free_port();
    let _backend = Backend::start(backend_port);
    let h = Httpd::start(Options {
        modules: vec!["proxy", "proxy_http"],
        fragment: format!(
            "<Location /app/>\n  RSession On\n  RSessionForwardHeaders On\n  ProxyPass http://127.0.0.1:{backend_port}/\n</Location>"
        ),
        ..Options::default()
    });
    let r = get(
        &h.url("/app/"),
        &[
            ("X-RSession_Dir", "/etc"),
            ("X_RSession_Data", "user=admin"),
            ("x-rsession-id", "forged"),
            ("X_RSESSION_ID", "forged"),
            // The update header: a backend that reflects request headers
            // would hand the client's commands back to the module.
            ("X-RSession", "set role=admin"),
            ("x_rsession", "set role=admin"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    for forged in [
        "/etc",
        "user=admin",
        "role=admin",
        "forged",
        "_Dir",
        "X_RSession",
        "X_RSESSION",
    ] {
        assert!(
            !r.body.contains(forged),
            "the backend saw a forged header ({forged}): {}",
            r.body
        );
    }
    assert!(
        r.body.contains("\"X-RSession-Id\""),
        "our own headers still arrive: {}",
        r.body
    );
}

#[test]
fn forged_session_headers_never_reach_a_directory_s_index_script_through_mod_headers() {
    // A directory's session is decided after mod_dir (fixups, last), which
    // is after mod_headers' RequestHeader: the client's copy must be gone
    // before that.
    let h = Httpd::start(Options {
        fragment: "<Directory {ROOT}/htdocs/app>\n  Options +ExecCGI\n  AddHandler cgi-script .cgi\n  DirectoryIndex show.cgi\n</Directory>\n<Location /app/>\n  RSession On\n  RequestHeader set X-Copy \"expr=%{req:X-RSession-Data}\"\n</Location>".into(),
        ..Options::default()
    });
    h.htdoc_script(
        "app/show.cgi",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\nenv | grep -E '^(RSESSION_|HTTP_X_)' | sort\n",
    );
    for path in ["/app/show.cgi", "/app/"] {
        let r = get(&h.url(path), &[("X-RSession-Data", "user=admin")]);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(r.body.contains("HTTP_X_COPY="), "{path}: {}", r.body);
        assert!(!r.body.contains("user=admin"), "{path}: {}", r.body);
        assert!(
            r.body.contains("RSESSION_ID="),
            "{path} has its session: {}",
            r.body
        );
    }
}

#[test]
fn forged_session_headers_in_a_chunked_body_s_trailers_never_reach_a_script() {
    // The body is read before the handler (ahead of the session's lock);
    // with MergeTrailers on, its trailers then join the request headers.
    let h = server("MergeTrailers on\n<Location /cgi-bin/>\n  RSession On\n</Location>");
    let cookie = get(&h.url("/cgi-bin/env.cgi"), &[]).cookie_pair();
    let response = raw(
        h.port,
        format!(
            "POST /cgi-bin/env.cgi HTTP/1.1\r\nHost: localhost\r\nCookie: {cookie}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\nX-RSession: set role=root\r\nX_RSession_Data: role=root\r\n\r\n"
        )
        .as_bytes(),
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("RSESSION_ID="), "{response}");
    assert!(
        !response.contains("role=root"),
        "the script saw a forged trailer: {response}"
    );
}

#[test]
fn a_valid_cookie_behind_many_planted_ones_keeps_the_session() {
    let h = server("<Location /cgi-bin/>\n  RSession On\n</Location>");
    let first = get(&h.url("/cgi-bin/echo.cgi"), &[("X-Cmd", "set user=ann")]);
    let mine = first.cookie_pair();
    // Well-formed, signed for ids the store does not know: what a sibling
    // subdomain can plant for the parent domain.
    let planted: Vec<String> = (0..40)
        .map(|_| {
            format!(
                "sid={}",
                sign::cookie_value(SECRET, "sid", &sign::stranger_id())
            )
        })
        .collect();
    let header = format!("{}; {mine}", planted.join("; "));
    let r = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &header);
    assert_eq!(r.env("RSESSION_NEW").as_deref(), Some("0"), "{r:?}");
    assert_eq!(r.env("RSESSION_DATA").as_deref(), Some("user=ann"));
    assert!(r.set_cookie().is_none());
}

#[test]
fn a_session_used_every_second_outlives_a_short_idle_timeout() {
    // The shipped touch interval (60 s) is far longer than this timeout.
    let h = server("<Location /cgi-bin/>\n  RSession On\n  RSessionTimeout 3\n</Location>");
    let cookie = get(&h.url("/cgi-bin/env.cgi"), &[]).cookie_pair();
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(8) {
        n += 1;
        let next = started + Duration::from_secs(n);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let r = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &cookie);
        assert_eq!(
            r.env("RSESSION_NEW").as_deref(),
            Some("0"),
            "ended after {:?} although used every second",
            started.elapsed()
        );
    }
}

#[test]
fn the_absolute_lifetime_is_never_cut_short() {
    let h = server("<Location /cgi-bin/>\n  RSession On\n  RSessionMaxLifetime 2\n</Location>");
    // Create the session late in a second, where whole-second rounding
    // would cost it most of a second.
    loop {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        if (850..900).contains(&ms) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let created = Instant::now();
    let cookie = get(&h.url("/cgi-bin/env.cgi"), &[]).cookie_pair();
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(created.elapsed()));
    let r = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &cookie);
    assert_eq!(
        r.env("RSESSION_NEW").as_deref(),
        Some("0"),
        "ended {:?} after creation, before its 2 s lifetime",
        created.elapsed()
    );
    std::thread::sleep(Duration::from_millis(3200).saturating_sub(created.elapsed()));
    let r = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &cookie);
    assert_eq!(
        r.env("RSESSION_NEW").as_deref(),
        Some("1"),
        "but it does end (at most a second late)"
    );
}

#[test]
fn data_too_large_for_a_cgi_environment_is_refused_at_startup() {
    let err = check_config("RSessionMaxDataSize 200000").unwrap_err();
    assert!(
        err.contains("RSessionMaxDataSize") && err.contains("131057"),
        "{err}"
    );
    check_config("RSessionMaxDataSize 131057").expect("the largest exportable size is accepted");
}
