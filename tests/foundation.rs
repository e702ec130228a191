//! Issue 2: loading, cookies, strict acceptance, secrets, storage, exposure
//! to handlers, containers, config errors, MPMs and restarts — each against
//! a real httpd.

mod harness;

use harness::http::{self, get, get_with_cookie};
use harness::{check_config, id_of, session_data, sign, Httpd, Mpm, Options, SECRET};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// A CGI that prints what mod_rsession gave it.
pub const ENV_CGI: &str = r#"#!/bin/sh
printf 'Content-Type: text/plain\n\n'
env | grep -E '^(RSESSION_|REDIRECT_RSESSION_|HTTP_X_RSESSION|HTTP_X_SEEN)' | sort
if [ -n "$RSESSION_DIR" ] && [ -d "$RSESSION_DIR" ]; then stat -c 'DIRSTAT=%a %U' "$RSESSION_DIR"; fi
"#;

const SESSION_LOCATION: &str = r#"
<Location /cgi-bin/>
  RSession On
  RequestHeader set X-Seen "expr=%{note:rsession-id}"
  Header always set X-Session-New "expr=%{note:rsession-new}"
</Location>
"#;

fn server(mpm: Mpm, extra: &str) -> Httpd {
    let h = Httpd::start(Options {
        mpm,
        fragment: format!("{SESSION_LOCATION}\n{extra}"),
        ..Options::default()
    });
    h.cgi("env.cgi", ENV_CGI);
    h
}

#[test]
fn a_new_visitor_gets_a_signed_cookie_and_a_private_scratch_directory() {
    let h = server(Mpm::Event, "");
    let r = get(&h.url("/cgi-bin/env.cgi"), &[]);
    assert_eq!(r.status, 200);
    let line = r.set_cookie().expect("a new session sets its cookie");
    let value = line
        .strip_prefix("sid=")
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    let (id, mac) = value.split_once('.').unwrap();
    assert_eq!(id.len(), 32);
    assert!(id
        .bytes()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(mac.len(), 43);
    assert_eq!(
        mac,
        sign::mac(SECRET, "sid", id),
        "MAC as SPEC §6 defines it"
    );
    assert_eq!(line, format!("sid={value}; Path=/; HttpOnly; SameSite=Lax"));
    assert!(
        r.header("cache-control").unwrap().contains("private"),
        "shared caches must not store it"
    );

    assert_eq!(r.env("RSESSION_ID").as_deref(), Some(id));
    assert_eq!(r.env("RSESSION_NEW").as_deref(), Some("1"));
    assert_eq!(r.env("RSESSION_DATA").as_deref(), Some(""));
    assert_eq!(
        r.env("HTTP_X_SEEN").as_deref(),
        Some(id),
        "mod_headers sees the note"
    );
    assert_eq!(
        r.header("X-Session-New"),
        Some("1"),
        "Header expressions see the notes"
    );
    let dir = r.env("RSESSION_DIR").expect("scratch dir exported");
    assert_eq!(dir, h.scratch_dir(id).display().to_string());
    assert_eq!(r.env("DIRSTAT").as_deref(), Some("700 www-data"));
    // The access log is written after the response: wait for the line.
    let wanted = format!("sid={id} new=1");
    harness::wait_for(
        "LogFormat %{rsession-id}n in the access log",
        std::time::Duration::from_secs(10),
        || {
            std::fs::read_to_string(h.path("logs/access.log"))
                .ok()
                .filter(|log| log.contains(&wanted))
        },
    );
}

#[test]
fn a_returning_visitor_keeps_the_id_and_gets_no_new_cookie() {
    let h = server(Mpm::Event, "");
    let first = get(&h.url("/cgi-bin/env.cgi"), &[]);
    let cookie = first.cookie_pair();
    for _ in 0..3 {
        let again = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &cookie);
        assert_eq!(again.status, 200);
        assert_eq!(
            again.set_cookie(),
            None,
            "no Set-Cookie on resumed requests"
        );
        assert_eq!(again.env("RSESSION_ID"), first.env("RSESSION_ID"));
        assert_eq!(again.env("RSESSION_NEW").as_deref(), Some("0"));
    }
}

#[test]
fn illegal_cookies_get_a_fresh_session_never_an_error() {
    let h = server(Mpm::Event, "");
    let stranger = sign::stranger_id();
    let issued = id_of(&get(&h.url("/cgi-bin/env.cgi"), &[]).cookie_pair());
    let cases = [
        ("path traversal", "/path/traversal/attack/bad".to_string()),
        ("384 characters", "a".repeat(384)),
        ("unsigned id", issued.clone()),
        ("bad signature", format!("{issued}.{}", "A".repeat(43))),
        (
            "signed by another key",
            sign::cookie_value("some-other-secret-key", "sid", &issued),
        ),
        (
            "signed for another cookie name",
            sign::cookie_value(SECRET, "other", &issued),
        ),
        (
            "signed but unknown",
            sign::cookie_value(SECRET, "sid", &stranger),
        ),
        (
            "uppercase id",
            sign::cookie_value(SECRET, "sid", &issued.to_uppercase()),
        ),
        ("empty", String::new()),
        ("quotes and separators", "\"a,b\\c\"".to_string()),
    ];
    for (what, value) in cases {
        let r = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &format!("sid={value}"));
        assert_eq!(r.status, 200, "{what}");
        let new_id = id_of(&r.cookie_pair());
        assert_ne!(new_id, issued, "{what}: must not resume");
        assert_ne!(new_id, stranger, "{what}: never the client's id");
        assert_eq!(r.env("RSESSION_NEW").as_deref(), Some("1"), "{what}");
        assert_eq!(r.env("RSESSION_ID"), Some(new_id), "{what}");
    }
    // Raw bytes no polite client sends.
    // (httpd itself answers 400 to control characters in headers.)
    let raw = http::raw(h.port, b"GET /cgi-bin/env.cgi HTTP/1.0\r\nCookie: sid=\xff\xfe\xc3\xa9; sid=\"\"; ;;=; sid\r\n\r\n");
    assert_eq!(http::raw_status(&raw), 200, "{raw}");
    assert!(raw.contains("RSESSION_NEW=1"));
}

#[test]
fn the_first_valid_of_duplicate_cookies_wins() {
    let h = server(Mpm::Event, "");
    let a = get(&h.url("/cgi-bin/env.cgi"), &[]).cookie_pair();
    let b = get(&h.url("/cgi-bin/env.cgi"), &[]).cookie_pair();
    let r = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &format!("sid=junk; {b}; {a}"));
    assert_eq!(r.env("RSESSION_ID"), Some(id_of(&b)));
    assert_eq!(r.set_cookie(), None);
    let unknown = format!(
        "sid={}",
        sign::cookie_value(SECRET, "sid", &sign::stranger_id())
    );
    let r = get(
        &h.url("/cgi-bin/env.cgi"),
        &[("Cookie", &unknown), ("Cookie", &a)],
    );
    assert_eq!(
        r.env("RSESSION_ID"),
        Some(id_of(&a)),
        "an unknown id is skipped, not fatal"
    );
}

#[test]
fn expired_sessions_are_replaced() {
    let h = server(
        Mpm::Event,
        "<Location /cgi-bin/>\n  RSessionTimeout 1\n  RSessionTouchInterval 0\n</Location>",
    );
    let first = get(&h.url("/cgi-bin/env.cgi"), &[]);
    let cookie = first.cookie_pair();
    let old = first.env("RSESSION_ID").unwrap();
    let old_dir = first.env("RSESSION_DIR").unwrap();
    // Asking would renew it: wait, without requests, until the moment the
    // record says it expires (its mtime) has passed.
    let expires = std::fs::metadata(h.record(&old))
        .unwrap()
        .modified()
        .unwrap();
    harness::wait_for(
        "the session's expiry moment",
        std::time::Duration::from_secs(10),
        || (std::time::SystemTime::now() > expires).then_some(()),
    );
    let fresh = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &cookie);
    assert_eq!(fresh.env("RSESSION_NEW").as_deref(), Some("1"));
    assert_ne!(fresh.env("RSESSION_ID").unwrap(), old);
    assert!(fresh.set_cookie().is_some());
    assert!(
        !std::path::Path::new(&old_dir).exists(),
        "expired scratch directory removed"
    );
    assert!(!h.record(&old).exists(), "expired record removed");
}

#[test]
fn secrets_rotate_the_first_signs_all_verify() {
    let mut h = server(Mpm::Event, "");
    let old = get(&h.url("/cgi-bin/env.cgi"), &[]).cookie_pair();
    let old_id = id_of(&old);
    h.options.secret = false;
    h.set_fragment(&format!(
        "{SESSION_LOCATION}\nRSessionSecret new-secret-0123456789abcdef {SECRET}"
    ));
    h.restart();
    let r = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &old);
    assert_eq!(
        r.env("RSESSION_ID"),
        Some(old_id.clone()),
        "old key still verifies"
    );
    let fresh = get(&h.url("/cgi-bin/env.cgi"), &[]).cookie_pair();
    assert_eq!(
        fresh.split_once('.').unwrap().1,
        sign::mac("new-secret-0123456789abcdef", "sid", &id_of(&fresh)),
        "the first key signs"
    );
    h.set_fragment(&format!(
        "{SESSION_LOCATION}\nRSessionSecret new-secret-0123456789abcdef"
    ));
    h.restart();
    let r = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &old);
    assert_ne!(
        r.env("RSESSION_ID"),
        Some(old_id),
        "a removed key no longer verifies"
    );
    assert_eq!(
        get_with_cookie(&h.url("/cgi-bin/env.cgi"), &fresh)
            .env("RSESSION_NEW")
            .as_deref(),
        Some("0")
    );
}

#[test]
fn secret_files_work_and_must_be_private() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "file-secret-0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = check_config(&format!("RSessionSecret file:{}", key.display())).unwrap_err();
    assert!(
        err.contains("RSessionSecret") && err.contains("readable only by its owner"),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    check_config(&format!("RSessionSecret file:{}", key.display())).unwrap();

    let mut h = Httpd::start(Options {
        fragment: format!("{SESSION_LOCATION}\nRSessionSecret file:{}", key.display()),
        secret: false,
        ..Options::default()
    });
    h.cgi("env.cgi", ENV_CGI);
    let pair = get(&h.url("/cgi-bin/env.cgi"), &[]).cookie_pair();
    assert_eq!(
        pair.split_once('.').unwrap().1,
        sign::mac("file-secret-0123456789abcdef", "sid", &id_of(&pair))
    );
    h.stop();
}

#[test]
fn the_generated_key_survives_a_full_restart() {
    let mut h = Httpd::start(Options {
        fragment: SESSION_LOCATION.into(),
        secret: false,
        ..Options::default()
    });
    h.cgi("env.cgi", ENV_CGI);
    let pair = get(&h.url("/cgi-bin/env.cgi"), &[]).cookie_pair();
    let key_file = h.path("logs/rsession.key");
    let meta = std::fs::metadata(&key_file).expect("key kept in DefaultRuntimeDir");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(key.trim().len(), 64, "256 bits as hex");
    h.stop();
    h.start_again();
    let r = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &pair);
    assert_eq!(
        r.env("RSESSION_NEW").as_deref(),
        Some("0"),
        "still valid after a stop and start"
    );
    assert_eq!(r.env("RSESSION_ID"), Some(id_of(&pair)));
    let log = h.error_log();
    assert!(!log.contains(key.trim()), "the key must never be logged");
}

#[test]
fn cookie_attributes_follow_the_directives() {
    let h = server(
        Mpm::Event,
        r#"
ScriptAlias /app/ {ROOT}/cgi-bin/
ScriptAlias /host/ {ROOT}/cgi-bin/
<Location /app/>
  RSession On
  RSessionCookieName appsess
  RSessionCookiePath /app/
  RSessionCookieDomain Example.ORG
  RSessionCookieSecure On
  RSessionCookieHttpOnly Off
  RSessionCookieSameSite Strict
  RSessionCookieMaxAge 3600
</Location>
<Location /host/>
  RSession On
  RSessionCookieName __Host-s
  RSessionCookieSameSite None
</Location>
"#,
    );
    let r = get(&h.url("/app/env.cgi"), &[]);
    let line = r.set_cookie().unwrap();
    let value = r.cookie_pair();
    assert!(value.starts_with("appsess="));
    assert_eq!(
        line,
        format!("{value}; Path=/app/; Domain=example.org; Max-Age=3600; Secure; SameSite=Strict")
    );
    let id = id_of(&value);
    assert_eq!(
        value.split_once('.').unwrap().1,
        sign::mac(SECRET, "appsess", &id),
        "MAC bound to the cookie name"
    );
    let r = get(&h.url("/host/env.cgi"), &[]);
    let line = r.set_cookie().unwrap();
    assert!(line.starts_with("__Host-s="), "{line}");
    assert!(
        line.ends_with("; Path=/; Secure; HttpOnly; SameSite=None"),
        "__Host- forces Secure and Path=/: {line}"
    );
}

#[test]
fn sessions_only_where_rsession_is_on() {
    let h = server(
        Mpm::Event,
        "ScriptAlias /plain/ {ROOT}/cgi-bin/\n<Location /cgi-bin/off.cgi>\n  RSession Off\n</Location>",
    );
    h.cgi("off.cgi", ENV_CGI);
    for path in ["/plain/env.cgi", "/cgi-bin/off.cgi", "/index.html"] {
        let r = get(&h.url(path), &[("X-RSession-Id", "spoofed")]);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.set_cookie(), None, "{path}: no session");
        assert_eq!(r.env("RSESSION_ID"), None, "{path}");
    }
    let r = get(
        &h.url("/cgi-bin/env.cgi"),
        &[("X-RSession-Id", "spoofed"), ("X-RSession-Data", "admin=1")],
    );
    assert!(r.env("RSESSION_ID").is_some());
    assert_eq!(
        r.env("HTTP_X_RSESSION_ID"),
        None,
        "client X-RSession-* headers are removed"
    );
    assert_eq!(r.env("HTTP_X_RSESSION_DATA"), None);
}

#[test]
fn bad_directive_values_fail_the_config_test_with_a_clear_message() {
    let cases = [
        ("RSession maybe", "On or Off"),
        ("RSessionTimeout ten", "whole number of seconds"),
        ("RSessionTimeout 0", "whole number of seconds"),
        ("RSessionMaxLifetime -5", "whole number of seconds"),
        ("RSessionLockTimeout soon", "decimals allowed"),
        ("RSessionCookieSecure sometimes", "On, Off or Auto"),
        ("RSessionCookieSameSite loose", "Strict, Lax, None or Off"),
        ("RSessionCookieName \"bad name\"", "cookie name"),
        ("RSessionCookiePath relative", "starting with /"),
        ("RSessionMaxDataSize 0", "number of bytes"),
        ("RSessionStore ftp://example.org/x", "file: or redis://"),
        ("RSessionStore file:relative/dir", "absolute path"),
        ("RSessionStore redis://:pw@host:99999", "port"),
        ("RSessionScratchRoot tmp/scratch", "absolute path"),
        (
            "RSessionSecret file:/nonexistent/key",
            "readable secret file",
        ),
        ("RSessionSecret short", "at least 16 characters"),
        ("RSessionLockTTL 0", "whole number of seconds"),
        ("RSessionUpdateHeader \"X Bad\"", "header name"),
        (
            "<VirtualHost 127.0.0.1:80>\nRSessionGCInterval 5\n</VirtualHost>",
            "main server config",
        ),
        (
            "<Location />\nRSessionStore file:/tmp/x\n</Location>",
            "RSessionStore",
        ),
        (
            "RSessionCookieName __Host-x\nRSessionCookiePath /app",
            "__Host-",
        ),
        (
            "RSessionCookiePath /app\nRSessionCookieName __Host-x",
            "__Host-",
        ),
        (
            "RSessionCookieSameSite None\nRSessionCookieSecure Off",
            "SameSite None",
        ),
    ];
    for (line, expected) in cases {
        let out = check_config(line).expect_err(line);
        // The directive on the line that fails: the last one of the case.
        let directive = line
            .split_whitespace()
            .rfind(|w| w.starts_with("RSession"))
            .unwrap();
        assert!(
            out.contains(directive),
            "{line}: message must name {directive}: {out}"
        );
        assert!(
            out.contains(expected),
            "{line}: expected '{expected}' in: {out}"
        );
        assert!(
            !out.contains(":pw@"),
            "passwords stay out of messages: {out}"
        );
    }
    check_config("RSession On\nRSessionLockTimeout 2.5\nRSessionStore redis://127.0.0.1:6379/0?prefix=x:&timeout=100").unwrap();
}

#[test]
fn records_and_directories_belong_to_the_server_user() {
    let h = server(Mpm::Event, "");
    let r = get(&h.url("/cgi-bin/env.cgi"), &[]);
    let id = r.env("RSESSION_ID").unwrap();
    let www = nix_uid("www-data");
    let record = std::fs::metadata(h.record(&id)).expect("record in the default store");
    assert_eq!(record.permissions().mode() & 0o777, 0o600);
    assert_eq!(record.uid(), www);
    let shard = format!("logs/rsession/{}", &id[..2]);
    for dir in ["logs/rsession", shard.as_str(), "logs/rsession-scratch"] {
        let meta = std::fs::metadata(h.path(dir)).unwrap();
        assert_eq!(meta.uid(), www, "{dir} handed to User");
        assert_eq!(meta.permissions().mode() & 0o777, 0o700, "{dir}");
    }
    let scratch = std::fs::metadata(r.env("RSESSION_DIR").unwrap()).unwrap();
    assert_eq!(
        (scratch.uid(), scratch.permissions().mode() & 0o777),
        (www, 0o700)
    );
}

fn nix_uid(user: &str) -> u32 {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0] == user).then(|| f[2].parse().unwrap())
        })
        .expect("user exists")
}

#[test]
fn works_under_every_mpm_and_across_graceful_and_full_restarts() {
    for mpm in Mpm::ALL {
        let mut h = server(mpm, "");
        let pair = get(&h.url("/cgi-bin/env.cgi"), &[]).cookie_pair();
        let id = id_of(&pair);
        for _ in 0..5 {
            assert_eq!(
                get_with_cookie(&h.url("/cgi-bin/env.cgi"), &pair).env("RSESSION_ID"),
                Some(id.clone()),
                "{mpm:?}"
            );
        }
        h.graceful();
        let r = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &pair);
        assert_eq!(
            r.env("RSESSION_ID"),
            Some(id.clone()),
            "{mpm:?} after graceful"
        );
        h.restart();
        let r = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &pair);
        assert_eq!(
            r.env("RSESSION_ID"),
            Some(id.clone()),
            "{mpm:?} after restart"
        );
        assert_eq!(r.set_cookie(), None);
    }
}

#[test]
fn subrequests_and_redirects_see_the_same_session() {
    let h = server(
        Mpm::Event,
        "<Location /ssi/>\n  RSession On\n</Location>\n<Location /cgi-bin/>\n  ErrorDocument 404 /cgi-bin/env.cgi\n</Location>\n",
    );
    h.htdoc(
        "ssi/page.shtml",
        "<p>page</p>\n<!--#include virtual=\"/cgi-bin/env.cgi\" -->\n",
    );
    // An SSI page is a static file: it sees the visitor's session (read
    // only) and never makes one.
    let fresh = get(&h.url("/ssi/page.shtml"), &[]);
    assert_eq!(fresh.status, 200);
    assert_eq!(fresh.set_cookie(), None);
    let pair = get(&h.url("/cgi-bin/env.cgi"), &[]).cookie_pair();
    let r = get_with_cookie(&h.url("/ssi/page.shtml"), &pair);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.env("RSESSION_ID"),
        Some(id_of(&pair)),
        "include virtual sees the page's session: {}",
        r.body
    );
    assert_eq!(r.set_cookie(), None);

    let r = get_with_cookie(&h.url("/cgi-bin/missing.cgi"), &pair);
    assert_eq!(r.status, 404);
    assert_eq!(
        r.env("RSESSION_ID"),
        Some(id_of(&pair)),
        "ErrorDocument sees the session: {}",
        r.body
    );
    assert_eq!(r.set_cookie(), None);
}

#[test]
fn a_directory_index_handler_has_one_session_and_loses_no_increment() {
    // mod_dir answers /dix/ with a lookup subrequest for index.cgi and an
    // internal fast redirect into it: the chain must still have exactly
    // one session, locked once and saved once, or parallel requests of one
    // visitor would deadlock or overwrite each other.
    let h = server(
        Mpm::Event,
        "<Location /dix/>\n  RSession On\n</Location>\n\
         <Directory {ROOT}/htdocs/dix>\n  Options +ExecCGI\n  AddHandler cgi-script .cgi\n  DirectoryIndex index.cgi\n</Directory>\n",
    );
    h.htdoc_script("dix/index.cgi", harness::scripts::COUNTER_CGI);
    let first = get(&h.url("/dix/"), &[]);
    assert_eq!((first.status, first.body.trim()), (200, "1"), "{first:?}");
    let pair = first.cookie_pair();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..10 {
                    let r = get_with_cookie(&h.url("/dix/"), &pair);
                    assert_eq!(r.status, 200, "{r:?}");
                    assert_eq!(r.set_cookie(), None, "the same session, no new cookie");
                }
            });
        }
    });
    let last = get_with_cookie(&h.url("/dix/"), &pair);
    assert_eq!(
        last.body.trim(),
        "42",
        "every increment through the index kept"
    );
    let log = h.error_log();
    assert!(
        !log.contains("[rsession:warn]") && !log.contains("[rsession:error]"),
        "no warning on the way: {log}"
    );
}

#[test]
fn a_redirected_include_is_authorized_under_its_own_location() {
    // An included CGI (a subrequest of a page without sessions) that
    // answers with a local `Location:` is redirected internally. The
    // redirect's location names another cookie: it must decide with that,
    // as a direct request there would, not reuse the look the include's own
    // location took with the visitor's `sid` cookie.
    let h = server(
        Mpm::Event,
        "ScriptAlias /pk/ {ROOT}/pk/\n<Location /pk/>\n  RSession On\n  Require rsession n\n</Location>\n\
         ScriptAlias /pk2/ {ROOT}/pk2/\n<Location /pk2/>\n  RSession On\n  RSessionCookieName sid2\n  Require rsession n\n</Location>\n",
    );
    for (dir, name, script) in [
        ("pk", "env.cgi", ENV_CGI),
        (
            "pk",
            "redir.cgi",
            "#!/bin/sh\nprintf 'Location: /pk2/env.cgi\\n\\n'\n",
        ),
        ("pk2", "env.cgi", ENV_CGI),
    ] {
        let path = h.path(dir).join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::set_permissions(
            path.parent().unwrap(),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    h.cgi("counter.cgi", harness::scripts::COUNTER_CGI);
    h.htdoc(
        "plain/direct.shtml",
        "<!--#include virtual=\"/pk/env.cgi\" -->\n",
    );
    h.htdoc(
        "plain/redirected.shtml",
        "<!--#include virtual=\"/pk/redir.cgi\" -->\n",
    );
    let pair = get(&h.url("/cgi-bin/counter.cgi"), &[]).cookie_pair();
    assert!(pair.starts_with("sid="), "{pair}");

    // The include's own location admits the session (it holds n)...
    let r = get_with_cookie(&h.url("/plain/direct.shtml"), &pair);
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains(&format!("RSESSION_ID={}", id_of(&pair))),
        "{}",
        r.body
    );
    // ...the redirect's location knows no `sid2` session: refused there,
    // directly and through the include alike.
    assert_eq!(get_with_cookie(&h.url("/pk2/env.cgi"), &pair).status, 403);
    let r = get_with_cookie(&h.url("/plain/redirected.shtml"), &pair);
    assert_eq!(r.status, 200);
    assert!(
        !r.body.contains("RSESSION_"),
        "the redirected include ran with the other location's session: {}",
        r.body
    );
}

/// Sets k=1: makes the session the redirect tests start from.
const SET_K1_CGI: &str =
    "#!/bin/sh\nprintf 'Content-Type: text/plain\\nX-RSession: set k=1\\n\\nset\\n'\n";

/// A CGI whose answer is a local redirect: an internal redirect to `to`.
fn redirect_cgi(to: &str) -> String {
    format!("#!/bin/sh\nprintf 'Location: {to}\\n\\n'\n")
}

#[test]
fn a_redirect_target_writes_under_its_own_locations_update_header() {
    let h = server(
        Mpm::Event,
        "ScriptAlias /app/ {ROOT}/cgi-bin/\n<Location /app/>\n  RSession On\n  RSessionUpdateHeader X-App\n</Location>\n",
    );
    h.cgi("set.cgi", SET_K1_CGI);
    h.cgi("hop.cgi", &redirect_cgi("/cgi-bin/set2.cgi"));
    // The redirect's target, under /cgi-bin/, writes under X-RSession.
    h.cgi(
        "set2.cgi",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\nX-RSession: set k=2\\nX-App: set wrong=1\\n\\nset2\\n'\n",
    );
    let pair = get(&h.url("/cgi-bin/set.cgi"), &[]).cookie_pair();
    let hop = get_with_cookie(&h.url("/app/hop.cgi"), &pair);
    assert_eq!((hop.status, hop.body.as_str()), (200, "set2\n"), "{hop:?}");
    assert_eq!(hop.header("X-RSession"), None, "{hop:?}");
    assert_eq!(hop.header("X-App"), None, "{hop:?}");
    assert_eq!(session_data(&h, &pair), "k=2");
    assert!(h.error_log().contains("RS0086"), "{}", h.error_log());
}

#[test]
fn no_location_of_a_redirect_chain_leaks_its_update_header_to_the_client() {
    // /app/ (X-App) redirects to /mid/ (X-Mid), then to /off/ (RSession
    // Off, X-Off), then to /cgi-bin/ (X-RSession): the last location's
    // lines are applied, the other names' lines removed, the middle ones'
    // too.
    let h = server(
        Mpm::Event,
        "ScriptAlias /app/ {ROOT}/cgi-bin/\n<Location /app/>\n  RSession On\n  RSessionUpdateHeader X-App\n</Location>\n\
         ScriptAlias /mid/ {ROOT}/cgi-bin/\n<Location /mid/>\n  RSession On\n  RSessionUpdateHeader X-Mid\n</Location>\n\
         ScriptAlias /off/ {ROOT}/cgi-bin/\n<Location /off/>\n  RSession Off\n  RSessionUpdateHeader X-Off\n</Location>\n",
    );
    h.cgi("first.cgi", &redirect_cgi("/mid/second.cgi"));
    h.cgi("second.cgi", &redirect_cgi("/off/third.cgi"));
    h.cgi("third.cgi", &redirect_cgi("/cgi-bin/last.cgi"));
    h.cgi(
        "last.cgi",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\nX-RSession: set k=3\\nX-App: set wrong=1\\nX-Mid: set wrong=2\\nX-Off: set wrong=3\\n\\nlast\\n'\n",
    );
    h.cgi("set.cgi", SET_K1_CGI);
    let pair = get(&h.url("/cgi-bin/set.cgi"), &[]).cookie_pair();
    let hop = get_with_cookie(&h.url("/app/first.cgi"), &pair);
    assert_eq!((hop.status, hop.body.as_str()), (200, "last\n"), "{hop:?}");
    for name in ["X-RSession", "X-App", "X-Mid", "X-Off"] {
        assert_eq!(hop.header(name), None, "{name}: {hop:?}");
    }
    assert_eq!(session_data(&h, &pair), "k=3");
    let log = h.error_log();
    assert!(
        log.lines()
            .any(|l| l.contains("RS0086") && l.contains("X-Mid")),
        "{log}"
    );
}
