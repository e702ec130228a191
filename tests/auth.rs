//! Issue 15: Apache itself protects a location with the session.
//! `RSessionUser` makes the session's user the request's (REMOTE_USER,
//! `%u`, `Require user`), `AuthType RSession` sends visitors without one to
//! sign in, `Require rsession KEY[=VALUE]` authorizes on the session's
//! data, and `invalidate-user` ends every session of a user, on every
//! server that shares the store.

mod harness;

use harness::http::{get, get_with_cookie, raw, raw_status, Response};
use harness::redis::Redis;
use harness::scripts::{Backend, COUNTER_CGI};
use harness::{free_port, id_of, wait_for, Httpd, Options};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Signs in as `?user=U&role=R` (a new id at sign-in), or shows where it
/// would send the visitor back to.
const LOGIN_CGI: &str = r#"#!/bin/sh
param() { printf '%s' "$QUERY_STRING" | tr '&' '\n' | sed -n "s/^$1=//p"; }
user=$(param user)
if [ -z "$user" ]; then
  printf 'Content-Type: text/plain\n\nlogin page, return=%s\n' "$(param return)"
  exit 0
fi
printf 'Content-Type: text/plain\nX-RSession: set user=%s&role=%s\nX-RSession: regenerate\n\nsigned in\n' "$user" "$(param role)"
"#;

/// What a handler behind the protection sees.
const WHO_CGI: &str = r#"#!/bin/sh
printf 'Content-Type: text/plain\n\n'
printf 'REMOTE_USER=%s\nAUTH_TYPE=%s\nRSESSION_ID=%s\n' "$REMOTE_USER" "$AUTH_TYPE" "$RSESSION_ID"
"#;

const LOGOUT_ALL_CGI: &str = r#"#!/bin/sh
printf 'Content-Type: text/plain\nX-RSession: invalidate-user\n\nsigned out everywhere\n'
"#;

const MODULES: [&str; 7] = [
    "authn_core",
    "authz_user",
    "authz_host",
    "auth_basic",
    "authn_file",
    "proxy",
    "proxy_http",
];

/// The protected site: `/private/` (static files and CGIs) needs a user,
/// `/admin/` the role admin (with an ErrorDocument CGI for refusals),
/// `/app/` is a proxied backend, `/either/` and `/local/` combine
/// providers, `/evil*` catches open-redirect attempts.
fn site(store: &str, backend_port: u16) -> Httpd {
    let fragment = format!(
        r#"{store}
RSessionUser user
RSessionLockTimeout 5
LogFormat "%h \"%r\" %>s user=%u" withuser
CustomLog {{ROOT}}/logs/users.log withuser
ScriptAlias /private/cgi/ {{ROOT}}/cgi-bin/
ScriptAlias /admin/ {{ROOT}}/cgi-bin/
<Location />
  RSession On
</Location>
<Location /private/>
  AuthType RSession
  RSessionLoginURL /cgi-bin/login.cgi
  Require valid-user
</Location>
<Location /private/open/>
  Require all granted
</Location>
<Location /admin/>
  AuthType RSession
  RSessionLoginURL /cgi-bin/login.cgi
  Require rsession role=admin
  ErrorDocument 403 /cgi-bin/who.cgi
</Location>
<Location /app/>
  AuthType RSession
  Require valid-user
  RSessionForwardHeaders On
  RequestHeader set X-Remote-User "expr=%{{REMOTE_USER}}"
  ProxyPass http://127.0.0.1:{backend_port}/
</Location>
<Location /either/>
  <RequireAny>
    Require ip 10.255.255.1
    Require rsession role=admin
  </RequireAny>
</Location>
<Location /local/>
  <RequireAny>
    Require ip 127.0.0.1
    Require rsession role=admin
  </RequireAny>
</Location>
<Directory {{ROOT}}/htdocs/private/h>
  Options +ExecCGI
  AddHandler cgi-script .cgi
</Directory>
<Location /basic/>
  AuthType Basic
  AuthName basic
  AuthBasicProvider file
  AuthUserFile {{ROOT}}/htpasswd
  Require valid-user
</Location>
<Location /expr/>
  Require expr "%{{env:RSESSION_DATA}} =~ /role=admin/"
</Location>
<LocationMatch "evil">
  AuthType RSession
  RSessionLoginURL /cgi-bin/login.cgi
  Require valid-user
</LocationMatch>
"#
    );
    let h = Httpd::start(Options {
        fragment,
        modules: MODULES.to_vec(),
        ..Options::default()
    });
    h.cgi("login.cgi", LOGIN_CGI);
    h.cgi("who.cgi", WHO_CGI);
    h.cgi("counter.cgi", COUNTER_CGI);
    h.cgi("logout-all.cgi", LOGOUT_ALL_CGI);
    for page in [
        "private/page.html",
        "either/index.html",
        "local/index.html",
        "expr/index.html",
        "basic/index.html",
        "public/page.html",
        "private/open/page.html",
    ] {
        h.htdoc(page, "<p>protected</p>\n");
    }
    // A CGI known as one only from its name (mod_mime, after
    // authorization), and a page that includes a protected CGI.
    h.htdoc_script("private/h/counter.cgi", COUNTER_CGI);
    h.htdoc(
        "private/inc.shtml",
        "<!--#include virtual=\"/private/cgi/who.cgi\" -->",
    );
    h
}

/// Signs in on `h`; returns the cookie pair of the new session.
fn sign_in(h: &Httpd, user: &str, role: &str) -> String {
    let r = get(
        &h.url(&format!("/cgi-bin/login.cgi?user={user}&role={role}")),
        &[],
    );
    assert_eq!(r.status, 200, "{r:?}");
    r.cookie_pair()
}

/// The `return` parameter of a login redirect, decoded.
fn return_of(location: &str) -> String {
    let query = location.split_once('?').map_or("", |(_, q)| q);
    form_decode(query, "return").unwrap_or_else(|| panic!("no return in {location}"))
}

fn form_decode(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(&v.replace('+', " ")))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() + 1 && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn users_log(h: &Httpd) -> String {
    std::fs::read_to_string(h.path("logs/users.log")).unwrap_or_default()
}

#[test]
fn visitors_sign_in_and_come_back_as_their_user() {
    let h = site("", free_port());
    let away = get(&h.url("/private/page.html?tab=2&x=a%20b"), &[]);
    assert_eq!(away.status, 302, "{away:?}");
    let location = away.header("location").expect("a Location").to_string();
    assert!(
        location.starts_with("/cgi-bin/login.cgi?return="),
        "{location}"
    );
    assert_eq!(return_of(&location), "/private/page.html?tab=2&x=a%20b");
    assert!(
        away.set_cookie().is_none(),
        "a static file makes no session"
    );
    let login = get(&h.url(&location), &[]);
    assert_eq!(
        login.body.trim(),
        "login page, return=%2Fprivate%2Fpage.html%3Ftab%3D2%26x%3Da%2520b"
    );

    let cookie = sign_in(&h, "ann", "");
    let page = get_with_cookie(&h.url("/private/page.html"), &cookie);
    assert_eq!(
        (page.status, page.body.as_str()),
        (200, "<p>protected</p>\n")
    );
    // A file only ann may see must not reach a shared cache (her cookie,
    // not an Authorization header, let her in), and her browser must ask
    // again before it shows the file once more (she may have signed out);
    // a public one keeps its caching, session or not.
    assert_eq!(
        page.header("Cache-Control"),
        Some("private, no-cache"),
        "{page:?}"
    );
    let etag = page.header("ETag").expect("an ETag").to_string();
    let again = get(
        &h.url("/private/page.html"),
        &[
            ("Cookie", cookie.as_str()),
            ("If-None-Match", etag.as_str()),
        ],
    );
    assert_eq!(again.status, 304, "asking again is cheap: {again:?}");
    let refused = get(
        &h.url("/private/page.html"),
        &[("If-None-Match", etag.as_str())],
    );
    assert_eq!(refused.status, 302, "{refused:?}");
    // A directory's index file (mod_dir) the same.
    let admin_only = get_with_cookie(&h.url("/either/"), &sign_in(&h, "bo", "admin"));
    assert_eq!(admin_only.status, 200, "{admin_only:?}");
    assert_eq!(
        admin_only.header("Cache-Control"),
        Some("private, no-cache")
    );
    let public = get_with_cookie(&h.url("/public/page.html"), &cookie);
    assert_eq!(public.status, 200, "{public:?}");
    assert_eq!(public.header("Cache-Control"), None, "{public:?}");
    let who = get_with_cookie(&h.url("/private/cgi/who.cgi"), &cookie);
    assert_eq!(who.status, 200, "{who:?}");
    assert_eq!(who.env("REMOTE_USER").as_deref(), Some("ann"));
    assert_eq!(who.env("AUTH_TYPE").as_deref(), Some("RSession"));
    assert_eq!(who.env("RSESSION_ID"), Some(id_of(&cookie)));
    // An include (a subrequest into a protected CGI) shares the session.
    let started = Instant::now();
    let inc = get_with_cookie(&h.url("/private/inc.shtml"), &cookie);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(inc.status, 200, "{inc:?}");
    assert_eq!(inc.env("REMOTE_USER").as_deref(), Some("ann"));
    assert_eq!(inc.env("RSESSION_ID"), Some(id_of(&cookie)));
    wait_for("the access log lines", Duration::from_secs(10), || {
        let log = users_log(&h);
        (log.contains("\"GET /private/page.html HTTP/1.1\" 200 user=ann")
            && log.contains("\"GET /private/cgi/who.cgi HTTP/1.1\" 200 user=ann")
            && log.contains("\"GET /private/page.html?tab=2&x=a%20b HTTP/1.1\" 302 user=-"))
        .then_some(())
    });

    // A value that cannot be a user name is not used, and is logged.
    let odd = sign_in(&h, "a%0Db", "");
    assert_eq!(
        get_with_cookie(&h.url("/private/page.html"), &odd).status,
        302
    );
    wait_for("RS0110", Duration::from_secs(10), || {
        h.error_log().contains("RS0110").then_some(())
    });
    let long = sign_in(&h, &"x".repeat(300), "");
    assert_eq!(
        get_with_cookie(&h.url("/private/page.html"), &long).status,
        302
    );
}

#[test]
fn a_proxied_backend_sees_the_user_and_without_a_login_url_the_answer_is_401() {
    let backend_port = free_port();
    let _backend = Backend::start(backend_port);
    let h = site("", backend_port);
    let anonymous = get(&h.url("/app/x"), &[]);
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    let cookie = sign_in(&h, "bob", "");
    let r = get_with_cookie(&h.url("/app/x"), &cookie);
    assert_eq!(r.status, 200, "{r:?}");
    let json: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(json["headers"]["X-Remote-User"], "bob", "{json}");
    // The backend's own update header still reaches the session.
    assert_eq!(json["visits"], 1);
    let again = get_with_cookie(&h.url("/app/x"), &cookie);
    let json: serde_json::Value = serde_json::from_str(&again.body).unwrap();
    assert_eq!(json["visits"], 2);
}

#[test]
fn require_rsession_grants_denies_and_combines_with_other_providers() {
    let h = site("", free_port());
    let admin = sign_in(&h, "ann", "admin");
    let user = sign_in(&h, "bob", "user");
    let ok = get_with_cookie(&h.url("/admin/who.cgi"), &admin);
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.env("REMOTE_USER").as_deref(), Some("ann"));

    // Refused: the ErrorDocument CGI runs with the same session and
    // promptly (it must not wait for the lock its own request holds:
    // RSessionLockTimeout is 5 s).
    let started = Instant::now();
    let refused = get_with_cookie(&h.url("/admin/who.cgi"), &user);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_eq!(refused.env("RSESSION_ID"), Some(id_of(&user)));
    assert_eq!(refused.env("REMOTE_USER").as_deref(), Some("bob"));

    // Not signed in: asked to sign in, not refused.
    let anonymous = get(&h.url("/admin/who.cgi"), &[]);
    assert_eq!(anonymous.status, 302, "{anonymous:?}");
    assert_eq!(
        return_of(anonymous.header("location").unwrap()),
        "/admin/who.cgi"
    );

    // <RequireAny>: an address that does not match leaves it to the session.
    assert_eq!(get_with_cookie(&h.url("/either/"), &admin).status, 200);
    assert_eq!(get_with_cookie(&h.url("/either/"), &user).status, 403);
    assert_eq!(get(&h.url("/either/"), &[]).status, 403);
    // The session is there for every provider, `Require expr` included.
    assert_eq!(get_with_cookie(&h.url("/expr/"), &admin).status, 200);
    assert_eq!(get_with_cookie(&h.url("/expr/"), &user).status, 403);
    // Under another AuthType the session's user lets nobody past it.
    let basic = get_with_cookie(&h.url("/basic/"), &admin);
    assert_eq!(basic.status, 401, "{basic:?}");
    assert!(basic
        .header("www-authenticate")
        .unwrap()
        .starts_with("Basic"));
    // One that matches grants without any session.
    assert_eq!(get(&h.url("/local/"), &[]).status, 200);
    assert_eq!(get_with_cookie(&h.url("/local/"), &user).status, 200);
}

#[test]
fn require_rsession_lines_are_checked_at_startup() {
    let fragment = "<Location /x>\n  Require rsession =admin\n</Location>";
    let err = harness::check_config(fragment).unwrap_err();
    assert!(err.contains("Require rsession"), "{err}");
    let err = harness::check_config("<Location /x>\n  Require rsession\n</Location>").unwrap_err();
    assert!(err.contains("at least one"), "{err}");
    let err =
        harness::check_config("<Location /x>\n  RSessionLoginURL //evil.example/\n</Location>")
            .unwrap_err();
    assert!(err.contains("RSessionLoginURL"), "{err}");
}

/// A raw request's response: status and the Location header.
fn raw_get(h: &Httpd, target: &str) -> (u16, Option<String>, String) {
    let resp = raw(
        h.port,
        format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let head = resp.split("\r\n\r\n").next().unwrap_or("").to_string();
    let location = head
        .lines()
        .find_map(|l| l.strip_prefix("Location: ").map(str::to_string));
    (raw_status(&resp), location, head)
}

#[test]
fn login_redirects_never_leave_the_site() {
    let h = site("", free_port());
    let attempts = [
        "/evil",
        "//evil.example/",
        "///evil.example/",
        "/\\evil.example/",
        "/%5Cevil.example/",
        "/%2F%2Fevil.example/",
        "/%252F%252Fevil.example/",
        "/evil?next=%0D%0ALocation:%20http://evil.example/",
        "/evil?x=%0d%0aSet-Cookie:%20a=b",
        "http://evil.example/evil",
        "http://evil.example//evil.example/",
    ];
    let mut redirected = 0;
    for target in attempts {
        let (status, location, head) = raw_get(&h, target);
        assert!(
            !head.to_ascii_lowercase().contains("set-cookie: a=b"),
            "{target}: header injected:\n{head}"
        );
        if status != 302 {
            assert!((400..500).contains(&status), "{target}: {status}\n{head}");
            continue;
        }
        redirected += 1;
        let location = location.unwrap_or_else(|| panic!("{target}: no Location\n{head}"));
        assert!(
            location.starts_with("/cgi-bin/login.cgi?return="),
            "{target}: {location}"
        );
        let back = return_of(&location);
        assert!(back.starts_with('/'), "{target}: return={back:?}");
        let mut decoded = back.clone();
        for _ in 0..3 {
            assert!(
                !decoded.starts_with("//") && !decoded.starts_with("/\\"),
                "{target}: return={back:?} leaves the site"
            );
            assert!(
                !decoded.chars().any(|c| c.is_control()),
                "{target}: {back:?}"
            );
            decoded = percent_decode(&decoded);
        }
    }
    assert!(redirected >= 5, "most attempts reach the login redirect");
}

#[test]
fn parallel_increments_under_authtype_rsession_lose_nothing() {
    let h = site("", free_port());
    let cookie = sign_in(&h, "ann", "");
    // Half through a ScriptAlias (a CGI from the start), half through
    // AddHandler (taken for a static file until mod_mime names it).
    std::thread::scope(|s| {
        for t in 0..10 {
            let cookie = &cookie;
            let h = &h;
            s.spawn(move || {
                let path = if t % 2 == 0 {
                    "/private/cgi/counter.cgi"
                } else {
                    "/private/h/counter.cgi"
                };
                for _ in 0..10 {
                    let r = get_with_cookie(&h.url(path), cookie);
                    assert_eq!(r.status, 200, "{r:?}");
                }
            });
        }
    });
    let last = get_with_cookie(&h.url("/private/cgi/counter.cgi"), &cookie);
    assert_eq!(last.body.trim(), "101");
}

/// Whether the session behind `cookie` still opens `/private/` on `h`.
fn signed_in(h: &Httpd, cookie: &str) -> bool {
    let r: Response = get_with_cookie(&h.url("/private/page.html"), cookie);
    assert!(matches!(r.status, 200 | 302), "{r:?}");
    r.status == 200
}

#[test]
fn log_out_everywhere_ends_every_session_of_the_user_in_the_file_store() {
    let h = site("", free_port());
    let ann: Vec<String> = (0..3).map(|_| sign_in(&h, "ann", "")).collect();
    let bob = sign_in(&h, "bob", "");
    assert!(ann.iter().chain([&bob]).all(|c| signed_in(&h, c)));
    let out = get_with_cookie(&h.url("/cgi-bin/logout-all.cgi"), &ann[1]);
    assert_eq!(out.status, 200, "{out:?}");
    assert!(out.set_cookie().unwrap().contains("Max-Age=0"), "{out:?}");
    for c in &ann {
        assert!(!signed_in(&h, c), "a session of ann survived");
        assert!(!h.record(&id_of(c)).exists());
    }
    assert!(signed_in(&h, &bob), "other users are untouched");
    wait_for("RS0113", Duration::from_secs(10), || {
        h.error_log()
            .contains("ended 2 other session(s)")
            .then_some(())
    });
    // Nothing of ann is left in the index; bob's entry is.
    let index = h.path("logs/rsession/users");
    let entries: usize = walk(&index);
    assert_eq!(entries, 1, "only bob's session is indexed");
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.flatten()
            .map(|e| {
                if e.file_type().unwrap().is_dir() {
                    walk(&e.path())
                } else {
                    1
                }
            })
            .sum()
    })
}

#[test]
fn log_out_everywhere_reaches_every_server_sharing_redis() {
    let redis = Redis::start();
    let store = format!("RSessionStore {}", redis.url("auth:"));
    let a = site(&store, free_port());
    let b = site(&store, free_port());
    let ann = [
        sign_in(&a, "ann", ""),
        sign_in(&b, "ann", ""),
        sign_in(&a, "ann", ""),
    ];
    let bob = sign_in(&b, "bob", "");
    for c in &ann {
        assert!(signed_in(&a, c) && signed_in(&b, c), "sessions are shared");
    }
    let out = get_with_cookie(&a.url("/cgi-bin/logout-all.cgi"), &ann[0]);
    assert_eq!(out.status, 200, "{out:?}");
    for c in &ann {
        assert!(!signed_in(&b, c), "a session of ann survived on B");
        assert!(!signed_in(&a, c), "a session of ann survived on A");
        assert_eq!(redis.cmd(&["EXISTS", &format!("auth:{}", id_of(c))]), ":0");
    }
    assert!(
        signed_in(&b, &bob) && signed_in(&a, &bob),
        "other users are untouched"
    );
    let sets = redis.cmd(&["KEYS", "auth:user:*"]);
    assert_eq!(sets.lines().count(), 1, "only bob's index is left: {sets}");
}

/// Holds the session's lock until the test lets it go (writing the
/// update command into `go`), then sends that command.
const SLOW_CHANGE_CGI: &str = r#"#!/bin/sh
touch "$RSESSION_DIR/started"
i=0
while [ ! -e "$RSESSION_DIR/go" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
command=$(cat "$RSESSION_DIR/go")
rm -f "$RSESSION_DIR/started" "$RSESSION_DIR/go"
printf 'Content-Type: text/plain\nX-RSession: %s\n\nchanged\n' "$command"
"#;

#[test]
fn a_session_changed_between_authorization_and_the_handler_refuses_the_request() {
    // A CGI known as one only from its name is authorized as a static file
    // (read-only, without the lock) and then runs with the session locked:
    // if the session it was let in on changed meanwhile in a way that
    // changes a decision, the handler does not run. So with a script a
    // file hands its request to (mod_actions), on the file's decision.
    let h = Httpd::start(Options {
        fragment: r#"RSessionUser user
RSessionLockTimeout 20
LogLevel authz_core:debug
<Location />
  RSession On
</Location>
<Location /private/>
  AuthType RSession
  Require valid-user
</Location>
<Location /admin/>
  AuthType RSession
  Require rsession role=admin
</Location>
<Location /open/>
  Require all granted
</Location>
<Location /guarded/>
  Require rsession role=admin
  ErrorDocument 403 /errors/e.gif
</Location>
<Location /exprd/>
  Require expr "%{env:RSESSION_DATA} =~ /role=admin/"
</Location>
<Location /errors/>
  Require rsession staff
</Location>
<Location /unbanned/>
  AuthType RSession
  <RequireAll>
    Require valid-user
    Require not rsession banned
  </RequireAll>
</Location>
<Directory {ROOT}/htdocs>
  Options +ExecCGI
  AddHandler cgi-script .cgi
</Directory>
Action image/gif /cgi-bin/who.cgi
<Directory {ROOT}/htdocs/m>
  Options +MultiViews +ExecCGI
  MultiviewsMatch Handlers
  <Files who.cgi>
    Require rsession role=admin
  </Files>
</Directory>
"#
        .into(),
        modules: [&MODULES[..], &["actions", "negotiation"]].concat(),
        ..Options::default()
    });
    h.cgi("login.cgi", LOGIN_CGI);
    h.cgi("slow-change.cgi", SLOW_CHANGE_CGI);
    h.cgi("who.cgi", WHO_CGI);
    for place in ["private", "admin"] {
        h.htdoc(&format!("{place}/pic.gif"), "GIF89a");
    }
    h.htdoc("errors/e.gif", "GIF89a");
    h.htdoc("guarded/page.html", "<p>guarded</p>\n");
    // (m/who.cgi is POSTed to: it reads its body, as mod_cgid wants.)
    let who_reading = WHO_CGI.replacen("\n", "\ncat >/dev/null\n", 1);
    for place in ["private", "admin", "unbanned", "open", "exprd", "m"] {
        let script = format!("{place}/who.cgi");
        h.htdoc(&script, if place == "m" { &who_reading } else { WHO_CGI });
        std::fs::set_permissions(
            h.path(&format!("htdocs/{script}")),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
    }
    // (where, the change made while the request waits for the lock, what
    // it then gets, what the next request gets)
    let cases = [
        // Asked again on the locked session, as the next request will be.
        ("/private/who.cgi", "unset user", 401, 401),
        ("/admin/who.cgi", "set role=guest", 403, 403),
        ("/unbanned/who.cgi", "set banned=1", 403, 403),
        // A change no Require line looks at lets the request through.
        ("/admin/who.cgi", "set cart=3", 200, 200),
        // Every provider is asked again, not only Require rsession.
        ("/exprd/who.cgi", "set role=guest", 403, 403),
        ("/private/pic.gif", "unset user", 403, 401),
        ("/admin/pic.gif", "set role=guest", 403, 403),
        ("/admin/pic.gif", "set cart=3", 200, 200),
    ];
    for (page, change, during, after) in cases {
        let cookie = sign_in(&h, "ann", "admin");
        let before = get_with_cookie(&h.url(page), &cookie);
        assert_eq!(
            before.env("REMOTE_USER").as_deref(),
            Some("ann"),
            "{page}: {before:?}"
        );
        let who = change_while_authorized(&h, &cookie, page, change);
        assert_eq!(who.status, during, "{page} after {change}: {who:?}");
        assert_eq!(
            who.body.contains("REMOTE_USER=ann"),
            during == 200,
            "{page} after {change}: {who:?}"
        );
        let next = get_with_cookie(&h.url(page), &cookie);
        assert_eq!(next.status, after, "{page} after {change}, next: {next:?}");
    }
    // An error page handed on to a script (its own location's line let it
    // in) is asked that line again; the refused request's are not.
    let cookie = sign_in(&h, "ann", "guest");
    std::fs::write(h.scratch_dir(&id_of(&cookie)).join("go"), "set staff=1").unwrap();
    let staff = get_with_cookie(&h.url("/cgi-bin/slow-change.cgi"), &cookie);
    assert_eq!(staff.status, 200, "{staff:?}");
    let page = get_with_cookie(&h.url("/guarded/page.html"), &cookie);
    assert_eq!(page.status, 403, "{page:?}");
    assert!(
        page.body.contains("REMOTE_USER=ann"),
        "the error page ran: {page:?}"
    );
    let page = change_while_authorized(&h, &cookie, "/guarded/page.html", "unset staff");
    assert_eq!(page.status, 403, "{page:?}");
    assert!(
        !page.body.contains("REMOTE_USER="),
        "the error page's script did not run on the staff it no longer has: {page:?}"
    );
    // A POST is authorized without the lock too, here on the variant
    // MultiViews found (a subrequest, whose lines are the request's once
    // it becomes the variant): asked again under the lock.
    let cookie = sign_in(&h, "ann", "admin");
    let post = || {
        harness::http::send(
            "POST",
            &h.url("/m/who"),
            &[("Cookie", cookie.as_str())],
            Some("a=1"),
        )
    };
    let first = post();
    assert!(
        first.body.contains("REMOTE_USER=ann"),
        "the variant ran: {first:?}"
    );
    let who = change_while_authorized_with(&h, &cookie, "set role=guest", post);
    assert_eq!(who.status, 403, "{who:?}");
    // Signed out meanwhile, on a page anyone may see: the handler runs,
    // as nobody.
    let cookie = sign_in(&h, "ann", "admin");
    let who = change_while_authorized(&h, &cookie, "/open/who.cgi", "unset user");
    assert_eq!(who.status, 200, "{who:?}");
    assert!(who.body.contains("REMOTE_USER=\n"), "{who:?}");
    // Let in as nobody, signed in meanwhile: the handler runs as the
    // user its session names now.
    let cookie = get(&h.url("/open/who.cgi"), &[]).cookie_pair();
    let who = change_while_authorized(&h, &cookie, "/open/who.cgi", "set user=bob");
    assert_eq!(
        (who.status, who.env("REMOTE_USER")),
        (200, Some("bob".to_string())),
        "{who:?}"
    );
}

/// Requests `page` while slow-change.cgi holds the session's lock, and
/// has that script make `change` once `page` was authorized (on the
/// session read without its lock) and waits for the lock.
fn change_while_authorized(h: &Httpd, cookie: &str, page: &str, change: &str) -> Response {
    change_while_authorized_with(h, cookie, change, || get_with_cookie(&h.url(page), cookie))
}

/// `change_while_authorized` for a request `send` makes.
fn change_while_authorized_with(
    h: &Httpd,
    cookie: &str,
    change: &str,
    send: impl FnOnce() -> Response + Send,
) -> Response {
    let dir = h.scratch_dir(&id_of(cookie));
    std::thread::scope(|s| {
        let slow = s.spawn(|| get_with_cookie(&h.url("/cgi-bin/slow-change.cgi"), cookie));
        wait_for(
            "the change to hold the lock",
            Duration::from_secs(10),
            || dir.join("started").exists().then_some(()),
        );
        let granted_before = h.error_log().matches("granted").count();
        let who = s.spawn(send);
        wait_for(
            "authorization of the second request",
            Duration::from_secs(10),
            || (h.error_log().matches("granted").count() > granted_before).then_some(()),
        );
        std::fs::write(dir.join("go"), change).unwrap();
        assert_eq!(slow.join().unwrap().status, 200);
        who.join().unwrap()
    })
}

#[test]
fn a_refused_upload_is_answered_before_its_body_is_read() {
    // Authorization decides on the session read without its lock; the body
    // is read (and the lock taken) only once the request is let in. Before,
    // any validly signed cookie had its body read and kept (memory, or the
    // scratch root) before it was refused: the client got its go-ahead.
    let h = site("", free_port());
    let guest = sign_in(&h, "bob", "guest");
    let nobody = get(&h.url("/cgi-bin/counter.cgi"), &[]).cookie_pair();
    for (page, cookie, refusal) in [
        ("/admin/who.cgi", &guest, 403),
        ("/private/cgi/who.cgi", &nobody, 302),
    ] {
        let (head, _) = upload_head(&h, page, cookie, 100_000_000);
        assert_eq!(raw_status(&head), refusal, "{page}: {head}");
    }
    // Let in: the client gets its go-ahead, and the handler its body and
    // the session locked.
    // (It reads its body: mod_cgid drops the answer of a CGI that does not.)
    h.cgi(
        "count-upload.cgi",
        "#!/bin/sh\ngot=$(wc -c | tr -d ' ')\nn=$(printf '%s' \"$RSESSION_DATA\" | tr '&' '\\n' | sed -n 's/^n=//p')\nn=$(( ${n:-0} + 1 ))\nprintf 'Content-Type: text/plain\\nX-RSession: set n=%s\\n\\n%s %s\\n' \"$n\" \"$n\" \"$got\"\n",
    );
    let admin = sign_in(&h, "ann", "admin");
    let (head, mut conn) = upload_head(&h, "/private/cgi/count-upload.cgi", &admin, 5);
    assert_eq!(raw_status(&head), 100, "{head}");
    conn.get_mut().write_all(b"12345").unwrap();
    let mut rest = String::new();
    let _ = conn.read_to_string(&mut rest);
    assert_eq!(raw_status(&rest), 200, "{rest}");
    assert!(rest.contains("\n1 5\n"), "the script got the body: {rest}");
    let after = get_with_cookie(&h.url("/private/cgi/counter.cgi"), &admin);
    assert_eq!(
        after.body.trim(),
        "2",
        "the upload's count was kept: {after:?}"
    );
}

/// Sends the head of a POST of `len` bytes to `page` that waits for the
/// server's go-ahead (`Expect: 100-continue`); returns the head of the
/// server's first answer (the go-ahead or the final response) and the
/// connection to go on with.
fn upload_head(h: &Httpd, page: &str, cookie: &str, len: usize) -> (String, BufReader<TcpStream>) {
    let mut s = TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {page} HTTP/1.1\r\nHost: localhost\r\nCookie: {cookie}\r\nContent-Type: text/plain\r\nContent-Length: {len}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut conn = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    (head, conn)
}

#[test]
fn an_outage_answers_503_on_protected_static_files_not_a_sign_in() {
    let mut redis = Redis::start_persistent();
    let store = format!("RSessionStore {}", redis.url_timeout("auth:", 300));
    let h = site(&store, free_port());
    let ann = sign_in(&h, "ann", "");
    assert_eq!(
        get_with_cookie(&h.url("/private/page.html"), &ann).status,
        200
    );
    redis.stop();
    let down = get_with_cookie(&h.url("/private/page.html"), &ann);
    assert_eq!(down.status, 503, "{down:?}");
    assert_eq!(down.header("Retry-After"), Some("1"), "{down:?}");
    // Files the session does not guard are served as ever: elsewhere, in a
    // section below that grants all, or where another Require line grants.
    for page in [
        "/public/page.html",
        "/private/open/page.html",
        "/local/index.html",
    ] {
        assert_eq!(get_with_cookie(&h.url(page), &ann).status, 200, "{page}");
    }
    redis.start_again();
    wait_for("the store back", Duration::from_secs(20), || {
        (get_with_cookie(&h.url("/private/page.html"), &ann).status == 200).then_some(())
    });
}
