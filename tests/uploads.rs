//! Issue 13: request bodies are read before the session's lock is taken, so
//! a slow upload keeps no other request of the session waiting, and the
//! handler still gets every byte.

mod harness;

use harness::http::{get, get_with_cookie, send};
use harness::scripts::ENV_CGI;
use harness::{wait_for, Httpd, Options};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Answers with the length and SHA-256 of the body it read.
const DIGEST_CGI: &str = r#"#!/bin/sh
printf 'Content-Type: text/plain\nX-RSession: set uploaded=1\n\n'
cat | tee /tmp/.rsession-test-$$ | wc -c
sha256sum < /tmp/.rsession-test-$$ | cut -d' ' -f1
rm -f /tmp/.rsession-test-$$
"#;

fn server(extra: &str) -> Httpd {
    let h = Httpd::start(Options {
        fragment: format!(
            "<Location /cgi-bin/>\n  RSession On\n  RSessionLockTimeout 2\n</Location>\n{extra}"
        ),
        ..Options::default()
    });
    h.cgi("env.cgi", ENV_CGI);
    h.cgi("digest.cgi", DIGEST_CGI);
    h
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a whole response; returns its head and its (de-chunked) body.
fn read_response(s: &mut TcpStream) -> (String, String) {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, mut rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return (head.to_string(), rest.to_string());
    }
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        body.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    (head.to_string(), body)
}

#[test]
fn a_slow_upload_does_not_hold_the_session_lock() {
    let h = server("");
    slow_upload_keeps_no_one_waiting(&h, "/cgi-bin/digest.cgi");
}

#[test]
fn a_slow_upload_to_a_file_a_script_answers_for_does_not_hold_the_lock() {
    // mod_actions hands the file's request to the script by an internal
    // redirect, after the file's own fixups: the body is read there.
    let h = Httpd::start(Options {
        modules: vec!["actions"],
        fragment: "<Location />\n  RSession On\n  RSessionLockTimeout 2\n</Location>
Action application/x-upload /cgi-bin/digest.cgi
AddType application/x-upload .up\n"
            .into(),
        ..Options::default()
    });
    h.cgi("env.cgi", ENV_CGI);
    h.cgi("digest.cgi", DIGEST_CGI);
    h.htdoc("files/in.up", "a file");
    slow_upload_keeps_no_one_waiting(&h, "/files/in.up");
}

#[test]
fn a_slow_upload_to_a_protected_script_does_not_hold_the_lock() {
    // Authorization reads the session without its lock; the body is read
    // once the request is let in, and still before the lock is taken.
    let h = server(
        "<Location /cgi-bin/digest.cgi>
  <RequireAll>
    Require all granted
    Require not rsession banned
  </RequireAll>
</Location>
",
    );
    slow_upload_keeps_no_one_waiting(&h, "/cgi-bin/digest.cgi");
}

#[test]
fn a_slow_body_of_a_refused_request_does_not_hold_the_lock_for_its_error_page() {
    // The error document (a script) answers for a refused request: it gets
    // the lock, but not the body, which httpd reads away first, or (for a
    // status that closes the connection: 500) leaves unread.
    let h = Httpd::start(Options {
        fragment: "<Location />
  RSession On
  RSessionLockTimeout 2
</Location>
<Location /private/>
  Require rsession admin
</Location>
<Location /broken/>
  <RequireAll>
    Require not rsession banned
    Require expr \"file('/nonexistent/file') == 'x'\"
  </RequireAll>
</Location>
ErrorDocument 403 /cgi-bin/env.cgi
ErrorDocument 500 /cgi-bin/env.cgi
"
        .into(),
        ..Options::default()
    });
    h.cgi("env.cgi", ENV_CGI);
    h.htdoc("private/x.gif", "GIF89a");
    h.htdoc("broken/x.gif", "GIF89a");
    for (path, refusal) in [("/private/x.gif", "403"), ("/broken/x.gif", "500")] {
        trickle_to_an_error_page(&h, path, refusal);
    }
}

/// A body sent a byte at a time to `path`, which is refused with
/// `refusal` and answered by env.cgi as its error document, keeps no other
/// request of the session waiting.
fn trickle_to_an_error_page(h: &Httpd, path: &str, refusal: &str) {
    let (cookie, upload, client_port) = start_trickle(h, path);
    // Refused (logged), and so handed to the error page; its body may never
    // be read (a 500 closes the connection).
    let client = format!("client 127.0.0.1:{client_port}]");
    wait_for("the refusal", Duration::from_secs(10), || {
        h.error_log().contains(&client).then_some(())
    });
    std::thread::scope(|s| {
        let sender = s.spawn(move || finish_trickle(upload));
        for _ in 0..3 {
            let r = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &cookie);
            assert_eq!(r.status, 200, "{path}: another tab of the session: {r:?}");
        }
        let (head, page) = sender.join().unwrap();
        assert!(
            head.starts_with(&format!("HTTP/1.1 {refusal}")),
            "{path}: {head}"
        );
        assert!(
            page.contains("RSESSION_ID="),
            "{path}: the error page ran: {page}"
        );
    });
}

/// A body sent to `path` a byte at a time keeps no other request of its
/// session waiting for the lock, and reaches digest.cgi whole.
fn slow_upload_keeps_no_one_waiting(h: &Httpd, path: &str) {
    let (cookie, upload, client_port) = start_trickle(h, path);
    wait_for(
        "the server to read the upload's start",
        Duration::from_secs(10),
        || h.has_read_request_from(client_port).then_some(()),
    );
    // The upload trickles on (a byte every 200 ms, 4 s in all) while other
    // requests of the session come and go; with the lock held by the
    // upload they would get 503 after RSessionLockTimeout (2 s).
    std::thread::scope(|s| {
        let sender = s.spawn(move || finish_trickle(upload));
        for _ in 0..3 {
            let r = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &cookie);
            assert_eq!(r.status, 200, "another tab of the session: {r:?}");
            assert_eq!(r.env("RSESSION_NEW").as_deref(), Some("0"));
        }
        assert!(!sender.is_finished(), "the upload is still arriving");
        let (head, got) = sender.join().unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(
            got,
            format!("{}\n{}\n", TRICKLED.len(), hex(&Sha256::digest(TRICKLED))),
            "the handler got the whole body"
        );
    });
    let after = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &cookie);
    assert_eq!(
        after.env("RSESSION_DATA").as_deref(),
        Some("uploaded=1"),
        "the upload's own session change was kept"
    );
}

/// A POST of `TRICKLED` to `path` on the session of a new cookie, its
/// first byte sent: (the cookie, the connection, its local port).
fn start_trickle(h: &Httpd, path: &str) -> (String, TcpStream, u16) {
    let cookie = get(&h.url("/cgi-bin/env.cgi"), &[]).cookie_pair();
    let mut upload = TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    let client_port = upload.local_addr().unwrap().port();
    write!(
        upload,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nCookie: {cookie}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        TRICKLED.len()
    )
    .unwrap();
    upload.write_all(&TRICKLED[..1]).unwrap();
    (cookie, upload, client_port)
}

/// Sends the rest of `TRICKLED`, a byte every 200 ms (4 s in all), and
/// reads the response. The server may answer before the last byte.
fn finish_trickle(mut upload: TcpStream) -> (String, String) {
    for b in &TRICKLED[1..] {
        std::thread::sleep(Duration::from_millis(200));
        let _ = upload.write_all(&[*b]);
    }
    read_response(&mut upload)
}

const TRICKLED: &[u8] = b"0123456789abcdefghij";

#[test]
fn large_and_chunked_uploads_reach_the_handler_whole() {
    let h = server("");
    let big: String = (0..3_000_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let r = send("POST", &h.url("/cgi-bin/digest.cgi"), &[], Some(&big));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body,
        format!("{}\n{}\n", big.len(), hex(&Sha256::digest(big.as_bytes()))),
        "a body spooled beyond memory arrives whole"
    );
    // Nothing of the spool is left with a name in the scratch root.
    let leftovers: Vec<_> = std::fs::read_dir(h.path("logs/rsession-scratch"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".upload"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let mut s = TcpStream::connect(("127.0.0.1", h.port)).unwrap();
    s.write_all(
        b"POST /cgi-bin/digest.cgi HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .unwrap();
    let (head, got) = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        got,
        format!("11\n{}\n", hex(&Sha256::digest(b"hello world")))
    );
}

#[test]
fn a_body_over_the_server_limit_gets_413() {
    let h = server("LimitRequestBody 1000");
    let r = send(
        "POST",
        &h.url("/cgi-bin/digest.cgi"),
        &[],
        Some(&"x".repeat(5000)),
    );
    assert_eq!(r.status, 413, "{r:?}");
    assert!(r.set_cookie().is_none(), "no session for a refused request");
}

#[test]
fn a_body_reaches_the_handler_an_internal_redirect_leads_to() {
    // A front controller: .htaccess-style rewriting (per directory) hands
    // every request to one script by an internal redirect, after fixups
    // read the body ahead of the lock.
    let h = Httpd::start(Options {
        fragment: r#"<Location />
  RSession On
</Location>
<Directory {ROOT}/htdocs/app>
  Options +FollowSymLinks
  RewriteEngine On
  RewriteRule ^ /cgi-bin/digest.cgi [L]
</Directory>
<Directory {ROOT}/htdocs/form>
  Options +FollowSymLinks
  RewriteEngine On
  RewriteRule ^ /cgi-bin/env.cgi [L]
</Directory>
<Location /cgi-bin/env.cgi>
  LuaHookFixups {ROOT}/seen.lua seen
</Location>
"#
        .into(),
        modules: vec!["lua"],
        ..Options::default()
    });
    // A module that reads the body before the handler (mod_auth_form
    // while authenticating, a Lua hook) finds it there too.
    std::fs::write(
        h.path("seen.lua"),
        "function seen(r)\n  r.err_headers_out['X-Body-Seen'] = tostring(#(r:requestbody() or ''))\n  return apache2.DECLINED\nend\n",
    )
    .unwrap();
    h.htdoc("form/index.html", "front controller\n");
    h.cgi("digest.cgi", DIGEST_CGI);
    h.cgi("env.cgi", ENV_CGI);
    h.htdoc("app/index.html", "front controller\n");
    let body = "title=hello&text=".to_string() + &"x".repeat(300 * 1024);
    let r = send("POST", &h.url("/app/articles/new"), &[], Some(&body));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body,
        format!(
            "{}\n{}\n",
            body.len(),
            hex(&Sha256::digest(body.as_bytes()))
        ),
        "the script behind the rewrite got the whole body"
    );
    let form = send("POST", &h.url("/form/login"), &[], Some("user=ann&pw=x"));
    assert_eq!(form.status, 200, "{form:?}");
    assert_eq!(form.header("X-Body-Seen"), Some("13"), "{form:?}");
    // The script's session write was kept too.
    let seen = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &r.cookie_pair());
    assert_eq!(
        seen.env("RSESSION_DATA").as_deref(),
        Some("uploaded=1"),
        "{seen:?}"
    );
}
