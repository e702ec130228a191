//! Issues 12 and 13: the response path. A save that fails fails the
//! request (503 + Retry-After, never a 200 that loses the update); a 101
//! releases the session lock at the switch; no 1xx carries the update
//! header; commands the module cannot apply (subrequests, after the save,
//! interim responses) are removed and logged, never dropped silently.

mod harness;

use harness::http::{get, get_with_cookie, Response};
use harness::scripts::{COUNTER_CGI, ENV_CGI};
use harness::{session_data as data, wait_for, Httpd, Mpm, Options};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Sends the command given in the request header X-Cmd.
const CMD_CGI: &str = r#"#!/bin/sh
printf 'Content-Type: text/plain\n'
[ -n "$HTTP_X_CMD" ] && printf 'X-RSession: %s\n' "$HTTP_X_CMD"
printf '\ndone\n'
"#;

/// The ErrorDocument for 503; it tries to change the session too.
const SORRY_CGI: &str = r#"#!/bin/sh
printf 'Content-Type: text/plain\nX-RSession: set late=1\n\nsorry, try again\n'
"#;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn server(extra: &str, modules: Vec<&'static str>) -> Httpd {
    let h = Httpd::start(Options {
        mpm: Mpm::Event,
        modules,
        fragment: format!("<Location /cgi-bin/>\n  RSession On\n</Location>\n{extra}"),
        ..Options::default()
    });
    h.cgi("env.cgi", ENV_CGI);
    h.cgi("counter.cgi", COUNTER_CGI);
    h.cgi("cmd.cgi", CMD_CGI);
    h.cgi("sorry.cgi", SORRY_CGI);
    h
}

/// The shard directory that holds the session's record.
fn shard(h: &Httpd, cookie: &str) -> PathBuf {
    let record = h.record(&harness::id_of(cookie));
    assert!(record.exists(), "{}", record.display());
    record.parent().unwrap().to_path_buf()
}

/// Makes a directory unwritable for the children (www-data) or writable
/// again. The test runs as root, which modes do not stop.
fn set_writable(dir: &Path, writable: bool) {
    let mode = if writable { 0o700 } else { 0o500 };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Restores the mode even when an assertion fails.
struct Unwritable(PathBuf);
impl Unwritable {
    fn new(dir: PathBuf) -> Unwritable {
        set_writable(&dir, false);
        Unwritable(dir)
    }
}
impl Drop for Unwritable {
    fn drop(&mut self) {
        set_writable(&self.0, true);
    }
}

// ---- a raw HTTP/1.1 client, for keep-alive and interim responses ----------

struct Raw {
    head: String,
    status: u16,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

fn connect(h: &Httpd) -> BufReader<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    BufReader::new(s)
}

fn send(conn: &mut BufReader<TcpStream>, path: &str, cookie: &str, extra: &str) {
    write!(
        conn.get_mut(),
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nCookie: {cookie}\r\n{extra}\r\n"
    )
    .unwrap();
}

/// A status line and header block, up to and including its blank line.
fn read_head(conn: &mut BufReader<TcpStream>) -> (String, u16) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = conn.read_line(&mut line).unwrap();
        assert!(n > 0, "connection closed inside a header block: {head:?}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (head, status)
}

/// One final response (skipping nothing: the caller reads 1xx itself).
fn read_response(conn: &mut BufReader<TcpStream>) -> Raw {
    let (head, status) = read_head(conn);
    let mut r = Raw {
        head,
        status,
        body: Vec::new(),
    };
    if let Some(n) = r.header("Content-Length") {
        r.body = vec![0; n.parse().unwrap()];
        conn.read_exact(&mut r.body).unwrap();
    } else if r
        .header("Transfer-Encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            conn.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            conn.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            r.body.extend_from_slice(&chunk[..n]);
        }
    } else {
        conn.read_to_end(&mut r.body).unwrap();
    }
    r
}

/// What is left on a connection the server closed.
fn rest(mut conn: BufReader<TcpStream>) -> Vec<u8> {
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    rest
}

/// A Python backend from tests/support, killed on drop.
struct Backend(Child);

impl Backend {
    fn start(script: &str, port: u16) -> Backend {
        let mut child = Command::new("python3")
            .arg(repo().join("tests/support").join(script))
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Backend(child)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---- 1. saves that fail fail the request ------------------------------------

#[test]
fn an_unwritable_store_answers_503_and_every_200_is_kept() {
    let h = server("", vec![]);
    let first = get(&h.url("/cgi-bin/counter.cgi"), &[]);
    assert_eq!(first.status, 200);
    let cookie = first.cookie_pair();
    let dir = shard(&h, &cookie);
    let (ok, unavailable) = (AtomicUsize::new(1), AtomicUsize::new(0));
    let stop = AtomicBool::new(false);
    let odd: std::sync::Mutex<Vec<Response>> = Default::default();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let r = get_with_cookie(&h.url("/cgi-bin/counter.cgi"), &cookie);
                    match r.status {
                        200 => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        503 if r.header("Retry-After").is_some() => {
                            unavailable.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => odd.lock().unwrap().push(r),
                    }
                }
            });
        }
        let result = std::panic::catch_unwind(|| {
            for _ in 0..3 {
                let seen = unavailable.load(Ordering::SeqCst);
                let guard = Unwritable::new(dir.clone());
                wait_for(
                    "503s while the store is unwritable",
                    Duration::from_secs(20),
                    || (unavailable.load(Ordering::SeqCst) >= seen + 5).then_some(()),
                );
                drop(guard);
                let seen = ok.load(Ordering::SeqCst);
                wait_for("200s once it is writable", Duration::from_secs(20), || {
                    (ok.load(Ordering::SeqCst) >= seen + 5).then_some(())
                });
            }
        });
        stop.store(true, Ordering::SeqCst);
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    });
    let odd = odd.into_inner().unwrap();
    assert!(odd.is_empty(), "only 200 or 503 + Retry-After: {odd:?}");
    let answered = ok.load(Ordering::SeqCst);
    assert_eq!(
        data(&h, &cookie),
        format!("n={answered}"),
        "every increment answered 200 is in the record, no other"
    );
    assert!(h.error_log().contains("RS0022"));
}

#[test]
fn an_invalidate_that_cannot_delete_is_not_reported_as_done() {
    let h = server("", vec![]);
    let first = get(&h.url("/cgi-bin/cmd.cgi"), &[("X-Cmd", "set user=ann")]);
    let cookie = first.cookie_pair();
    let record = h.record(&harness::id_of(&cookie));
    {
        let _guard = Unwritable::new(shard(&h, &cookie));
        let r = get(
            &h.url("/cgi-bin/cmd.cgi"),
            &[("Cookie", &cookie), ("X-Cmd", "invalidate")],
        );
        assert_eq!(r.status, 503, "{r:?}");
        assert!(r.header("Retry-After").is_some(), "{r:?}");
        assert!(
            r.set_cookie().is_none(),
            "no expired cookie while the record lives on: {r:?}"
        );
        assert!(record.exists());
    }
    assert_eq!(data(&h, &cookie), "user=ann", "the session lives on");
    let r = get(
        &h.url("/cgi-bin/cmd.cgi"),
        &[("Cookie", &cookie), ("X-Cmd", "invalidate")],
    );
    assert_eq!(r.status, 200);
    assert!(r.set_cookie().unwrap().contains("Max-Age=0"));
    assert!(!record.exists());
}

#[test]
fn a_touch_that_cannot_be_written_is_not_a_200() {
    // Interval 0: every request writes the access time.
    let h = server(
        "<Location /cgi-bin/>\n  RSessionTouchInterval 0\n</Location>\n",
        vec![],
    );
    let cookie = get(&h.url("/cgi-bin/cmd.cgi"), &[("X-Cmd", "set k=1")]).cookie_pair();
    let _guard = Unwritable::new(shard(&h, &cookie));
    let r = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &cookie);
    assert_eq!(r.status, 503, "the session was not kept alive: {r:?}");
    assert!(r.header("Retry-After").is_some());
}

/// Removes its own session's record (the path comes in X-Record) while it
/// runs, as an expiry or another request's invalidation would.
const VANISH_CGI: &str = r#"#!/bin/sh
rm -f "$HTTP_X_RECORD"
printf 'Content-Type: text/plain\n'
[ -n "$HTTP_X_CMD" ] && printf 'X-RSession: %s\n' "$HTTP_X_CMD"
printf '\ngone\n'
"#;

#[test]
fn a_session_that_vanishes_during_the_request_fails_only_if_it_changed() {
    // Interval 0: the request without a command still writes the access time.
    let h = server(
        "<Location /cgi-bin/>\n  RSessionTouchInterval 0\n</Location>\n",
        vec![],
    );
    h.cgi("vanish.cgi", VANISH_CGI);
    for (cmd, want) in [("set late=1", 503), ("", 200)] {
        let cookie = get(&h.url("/cgi-bin/cmd.cgi"), &[("X-Cmd", "set k=1")]).cookie_pair();
        let record = h.record(&harness::id_of(&cookie));
        let r = get(
            &h.url("/cgi-bin/vanish.cgi"),
            &[
                ("Cookie", &cookie),
                ("X-Cmd", cmd),
                ("X-Record", record.to_str().unwrap()),
            ],
        );
        assert_eq!(r.status, want, "command {cmd:?}: {r:?}");
        assert!(!record.exists(), "not resurrected");
    }
    assert!(h.error_log().contains("RS0023"));
}

#[test]
fn failed_saves_of_cgi_lua_and_proxy_are_whole_error_responses() {
    let backend_port = harness::free_port();
    let _backend = harness::scripts::Backend::start(backend_port);
    let h = server(
        &format!(
            "LuaMapHandler ^/lua$ {root}/tests/support/session.lua handle\n\
             <Location /app/>\n  ProxyPass http://127.0.0.1:{backend_port}/\n</Location>\n\
             <LocationMatch \"^/(lua|app)\">\n  RSession On\n</LocationMatch>\n\
             ErrorDocument 503 /cgi-bin/sorry.cgi\n",
            root = repo().display()
        ),
        vec!["lua", "proxy", "proxy_http"],
    );
    let cookie = get(&h.url("/cgi-bin/cmd.cgi"), &[("X-Cmd", "set k=1")]).cookie_pair();
    let dir = shard(&h, &cookie);
    for path in ["/cgi-bin/counter.cgi", "/lua", "/app/"] {
        // Keep-alive: a request that changes nothing, then the failing one.
        let mut conn = connect(&h);
        send(&mut conn, "/cgi-bin/env.cgi", &cookie, "");
        let fine = read_response(&mut conn);
        assert_eq!(fine.status, 200, "{}", fine.head);
        let guard = Unwritable::new(dir.clone());
        send(&mut conn, path, &cookie, "");
        let failed = read_response(&mut conn);
        drop(guard);
        assert_eq!(failed.status, 503, "{path}: {}", failed.head);
        assert!(failed.header("Retry-After").is_some(), "{path}");
        assert!(failed.header("X-RSession").is_none(), "{path}");
        assert_eq!(
            String::from_utf8_lossy(&failed.body),
            "sorry, try again\n",
            "{path}: the ErrorDocument is the body"
        );
        let after = rest(conn);
        assert!(
            after.is_empty(),
            "{path}: nothing follows the error response: {:?}",
            String::from_utf8_lossy(&after)
        );
        // The connection that follows works as usual.
        let mut conn = connect(&h);
        send(&mut conn, "/cgi-bin/env.cgi", &cookie, "");
        assert_eq!(read_response(&mut conn).status, 200);
    }
    assert_eq!(
        data(&h, &cookie),
        "k=1",
        "no failed update, and not the ErrorDocument's, was applied"
    );
    let log = h.error_log();
    assert!(
        log.contains("RS0082"),
        "the ErrorDocument's command is logged"
    );
}

/// Changes the session, then writes 200 KB in small pieces: mod_lua
/// flushes as it goes and ignores write errors, so pieces keep coming after
/// the failed save has turned the response into an error.
const CHATTY_LUA: &str = r#"
function handle(r)
  r.headers_out['X-RSession'] = 'set chatty=1'
  r.content_type = 'text/plain'
  for i = 1, 2000 do
    r:puts(string.rep('x', 99) .. '\n')
  end
  return apache2.OK
end
"#;

#[test]
fn output_written_after_a_failed_save_never_follows_the_error_response() {
    let h = server("", vec!["lua"]);
    std::fs::write(h.path("chatty.lua"), CHATTY_LUA).unwrap();
    let mut h = h;
    h.stop();
    h.set_fragment(&format!(
        "<Location /cgi-bin/>\n  RSession On\n</Location>\n\
         LuaMapHandler ^/chatty$ {} handle\n<Location /chatty>\n  RSession On\n</Location>\n",
        h.path("chatty.lua").display()
    ));
    h.start_again();
    let cookie = get(&h.url("/cgi-bin/cmd.cgi"), &[("X-Cmd", "set k=1")]).cookie_pair();
    let guard = Unwritable::new(shard(&h, &cookie));
    let mut conn = connect(&h);
    send(&mut conn, "/chatty", &cookie, "");
    let failed = read_response(&mut conn);
    let after = rest(conn);
    drop(guard);
    assert_eq!(failed.status, 503, "{}", failed.head);
    assert!(
        !String::from_utf8_lossy(&failed.body).contains("xxxx"),
        "none of the handler's output is in the error response"
    );
    assert!(
        after.is_empty(),
        "nothing follows the error response: {} bytes",
        after.len()
    );
    assert_eq!(data(&h, &cookie), "k=1");
}

// ---- 2. protocol switches and interim responses ---------------------------

fn proxy_server(backend_port: u16) -> Httpd {
    server(
        &format!(
            "<Location /cgi-bin/>\n  RSessionLockTimeout 3\n</Location>\n\
             <Location /ws>\n  RSession On\n  RSessionLockTimeout 3\n  \
             ProxyPass http://127.0.0.1:{backend_port}/ws upgrade=websocket\n</Location>\n\
             <Location /hints>\n  RSession On\n  ProxyPass http://127.0.0.1:{backend_port}/hints\n</Location>\n"
        ),
        vec!["proxy", "proxy_http"],
    )
}

#[test]
fn a_websocket_switch_releases_the_lock_and_hides_the_update_header() {
    let backend_port = harness::free_port();
    let _backend = Backend::start("interim_backend.py", backend_port);
    let h = proxy_server(backend_port);
    let cookie = get(&h.url("/cgi-bin/counter.cgi"), &[]).cookie_pair();
    let mut tunnel = connect(&h);
    send(
        &mut tunnel,
        "/ws",
        &cookie,
        "Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    );
    let (head, status) = read_head(&mut tunnel);
    assert_eq!(status, 101, "{head}");
    // While the tunnel is open, the session is free for other requests.
    let started = Instant::now();
    let other = get_with_cookie(&h.url("/cgi-bin/counter.cgi"), &cookie);
    let waited = started.elapsed();
    // Both defects are reported, whichever comes first.
    let mut problems = Vec::new();
    if head.to_ascii_lowercase().contains("x-rsession") {
        problems.push(format!("the 101 carries the update header: {head}"));
    }
    if other.status != 200 || waited >= Duration::from_secs(3) {
        problems.push(format!(
            "the tunnel holds the session lock: {} after {waited:?}",
            other.status
        ));
    }
    assert!(problems.is_empty(), "{problems:#?}");
    // The tunnel still works after the switch.
    tunnel.get_mut().write_all(b"ping over the tunnel").unwrap();
    let mut echo = [0u8; 20];
    tunnel.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping over the tunnel");
    drop(tunnel);
    assert_eq!(data(&h, &cookie), "n=2", "the 101's command is not applied");
    // A session the upgrade itself creates gets its cookie on the 101.
    let mut fresh = connect(&h);
    write!(
        fresh.get_mut(),
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let (head, status) = read_head(&mut fresh);
    assert_eq!(status, 101, "{head}");
    let line = head
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .unwrap_or_else(|| panic!("no Set-Cookie on the 101: {head}"));
    let pair = line.split(';').next().unwrap().to_string();
    let again = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &pair);
    assert_eq!(again.env("RSESSION_NEW").as_deref(), Some("0"), "{again:?}");
    assert_eq!(again.env("RSESSION_ID"), Some(harness::id_of(&pair)));
    wait_for("the not-applied warning", Duration::from_secs(5), || {
        h.error_log().contains("RS0081").then_some(())
    });
}

/// Requests `path` on a new connection and checks what `/hints` answers:
/// a 103 with its Link and no update header, then the 200. Returns the
/// connection for more requests.
fn hinted_without_update_header(h: &Httpd, path: &str, cookie: &str) -> BufReader<TcpStream> {
    let mut conn = connect(h);
    send(&mut conn, path, cookie, "");
    let (hints, status) = read_head(&mut conn);
    assert_eq!(status, 103, "{hints}");
    assert!(hints.contains("Link: </style.css>"), "{hints}");
    assert!(
        !hints.to_ascii_lowercase().contains("x-rsession"),
        "the 103 carries no update header: {hints}"
    );
    let fin = read_response(&mut conn);
    assert_eq!(fin.status, 200, "{}", fin.head);
    assert!(fin.header("X-RSession").is_none(), "{}", fin.head);
    assert_eq!(fin.body, b"hinted\n");
    conn
}

#[test]
fn early_hints_never_carry_the_update_header() {
    let backend_port = harness::free_port();
    let _backend = Backend::start("interim_backend.py", backend_port);
    let h = proxy_server(backend_port);
    let cookie = get(&h.url("/cgi-bin/counter.cgi"), &[]).cookie_pair();
    let mut conn = hinted_without_update_header(&h, "/hints", &cookie);
    // The same connection serves the next request.
    send(&mut conn, "/cgi-bin/env.cgi", &cookie, "");
    let next = read_response(&mut conn);
    assert_eq!(next.status, 200);
    let body = String::from_utf8_lossy(&next.body).into_owned();
    assert!(
        body.contains("RSESSION_DATA=final=1&n=1"),
        "the final response's command applies, the 103's does not: {body}"
    );
    wait_for("the not-applied warning", Duration::from_secs(5), || {
        h.error_log().contains("RS0081").then_some(())
    });
}

// ---- 3. commands the module cannot apply are logged --------------------------

#[test]
fn commands_from_an_included_cgi_are_removed_logged_and_not_applied() {
    let h = server(
        "<Location /page.shtml>\n  RSession On\n</Location>\n",
        vec![],
    );
    h.cgi(
        "sets.cgi",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\nX-RSession: set a=1\\n\\nincluded\\n'\n",
    );
    h.htdoc(
        "page.shtml",
        "<p>before</p>\n<!--#include virtual=\"/cgi-bin/sets.cgi\" -->\n<p>after</p>\n",
    );
    let cookie = get(&h.url("/cgi-bin/cmd.cgi"), &[("X-Cmd", "set k=1")]).cookie_pair();
    let page = get_with_cookie(&h.url("/page.shtml"), &cookie);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("included"), "{}", page.body);
    assert!(page.header("X-RSession").is_none());
    assert_eq!(
        data(&h, &cookie),
        "k=1",
        "the subrequest's command is not applied"
    );
    wait_for("the not-applied warning", Duration::from_secs(5), || {
        h.error_log()
            .lines()
            .any(|l| l.contains("RS0080") && l.contains("subrequest"))
            .then_some(())
    });
}

#[test]
fn early_hints_after_an_internal_redirect_carry_neither_update_header() {
    // The request begins under /hop/ (update header X-Other); its CGI
    // redirects to /hints, whose backend sends a 103 with X-RSession.
    let backend_port = harness::free_port();
    let _backend = Backend::start("interim_backend.py", backend_port);
    let h = server(
        &format!(
            "ScriptAlias /hop/ {{ROOT}}/cgi-bin/\n\
             <Location /hop/>\n  RSession On\n  RSessionUpdateHeader X-Other\n</Location>\n\
             <Location /hints>\n  RSession On\n  ProxyPass http://127.0.0.1:{backend_port}/hints\n</Location>\n"
        ),
        vec!["proxy", "proxy_http"],
    );
    h.cgi("hop.cgi", "#!/bin/sh\nprintf 'Location: /hints\\n\\n'\n");
    let cookie = get(&h.url("/cgi-bin/counter.cgi"), &[]).cookie_pair();
    hinted_without_update_header(&h, "/hop/hop.cgi", &cookie);
}
