//! Issue 12 (items 1, 2, 5, 6) and issue 13 item 7: what a CGI running as
//! the server's User can plant in the store and the scratch root, and what
//! the root-run parent makes of configured roots — against real servers.

mod harness;

use harness::http::{get, get_with_cookie, try_send, Response};
use harness::scripts::ENV_CGI;
use harness::{free_port, id_of, wait_for, Httpd, Options};
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

const WWW_DATA: u32 = 33;

/// Replaces every shard of the store named by X-Store with a symbolic
/// link to X-Outside, as a CGI (running as User, which owns the store) can.
const PLANT_SHARDS_CGI: &str = r#"#!/bin/sh
cd "$HTTP_X_STORE" || exit 1
for a in 0 1 2 3 4 5 6 7 8 9 a b c d e f; do
  for b in 0 1 2 3 4 5 6 7 8 9 a b c d e f; do
    rm -rf "$a$b"; ln -s "$HTTP_X_OUTSIDE" "$a$b"
  done
done
printf 'Content-Type: text/plain\n\nplanted\n'
"#;

/// Leaves a subdirectory that its owner cannot enter or change in its
/// scratch directory, and sends X-Cmd as the update header.
const LOCKED_SUBDIR_CGI: &str = r#"#!/bin/sh
mkdir "$RSESSION_DIR/sub" && touch "$RSESSION_DIR/sub/f" && chmod 000 "$RSESSION_DIR/sub"
printf 'Content-Type: text/plain\nX-RSession: %s\n\n' "${HTTP_X_CMD:-set k=v}"
env | grep '^RSESSION_' | sort
"#;

/// Writes a file into the scratch directory.
const KEEP_CGI: &str = r#"#!/bin/sh
echo kept > "$RSESSION_DIR/keep"
printf 'Content-Type: text/plain\nX-RSession: set k=v\n\n'
env | grep '^RSESSION_' | sort
"#;

fn server(settings: &str, extra: &str) -> Httpd {
    server_after(settings, extra, |_| {})
}

fn server_after(settings: &str, extra: &str, prepare: impl FnOnce(&Path)) -> Httpd {
    let h = Httpd::start_after(
        Options {
            fragment: format!(
                "<Location /cgi-bin/>\n  RSession On\n{settings}\n</Location>\n{extra}"
            ),
            ..Options::default()
        },
        prepare,
    );
    h.cgi("env.cgi", ENV_CGI);
    h.cgi("plant.cgi", PLANT_SHARDS_CGI);
    h.cgi("locked.cgi", LOCKED_SUBDIR_CGI);
    h.cgi("keep.cgi", KEEP_CGI);
    h
}

fn uid_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().uid()
}

/// A GET that fails the test if no answer comes within `limit` (a hung
/// request thread must fail the test, not hang the suite).
fn get_within(url: &str, cookie: &str, limit: Duration) -> Response {
    let (tx, rx) = std::sync::mpsc::channel();
    let (owned_url, cookie) = (url.to_string(), cookie.to_string());
    std::thread::spawn(move || {
        let _ = tx.send(try_send("GET", &owned_url, &[("Cookie", &cookie)], None));
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("no answer from {url} within {limit:?}: the request hangs"))
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

#[test]
fn shards_planted_as_links_are_set_aside_at_a_graceful_restart_and_never_followed() {
    let mut h = server("", "");
    let outside = tempfile::tempdir().unwrap();
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = h.path("logs/rsession");
    let r = get(
        &h.url("/cgi-bin/plant.cgi"),
        &[
            ("X-Store", store.to_str().unwrap()),
            ("X-Outside", outside.path().to_str().unwrap()),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(std::fs::symlink_metadata(store.join("a7"))
        .unwrap()
        .file_type()
        .is_symlink());

    h.graceful();
    assert_eq!(
        uid_of(outside.path()),
        0,
        "root must not hand the link's target to User"
    );
    for shard in ["00", "a7", "ff"] {
        let planted = store.join(shard);
        assert!(
            !std::fs::symlink_metadata(&planted).is_ok_and(|m| m.file_type().is_symlink()),
            "{shard} is still a link"
        );
    }
    let log = h.error_log();
    let named = format!("RS0050 {}", store.join("a7").display());
    assert!(log.contains(&named), "no line naming the shard:\n{log}");

    // Sessions work, in real shards, and nothing lands behind the links.
    for _ in 0..5 {
        let r = get(&h.url("/cgi-bin/env.cgi"), &[]);
        assert_eq!(r.status, 200);
        let id = r.env("RSESSION_ID").unwrap();
        assert!(h.record(&id).is_file());
        let shard = std::fs::symlink_metadata(store.join(&id[..2])).unwrap();
        assert!(shard.is_dir() && shard.uid() == WWW_DATA);
        let again = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &r.cookie_pair());
        assert_eq!(again.env("RSESSION_ID"), Some(id));
    }
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn a_configured_root_that_is_a_link_or_not_users_stops_the_start() {
    // An existing directory owned by root (think /tmp, or /).
    let theirs = tempfile::tempdir().unwrap();
    std::fs::set_permissions(theirs.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = Httpd::start_refused(
        Options {
            fragment: format!("RSessionStore file:{}", theirs.path().display()),
            ..Options::default()
        },
        |_| {},
    );
    assert!(
        out.contains("RS0002") && out.contains(&theirs.path().display().to_string()),
        "{out}"
    );
    assert_eq!(uid_of(theirs.path()), 0, "never chowned");

    // A symbolic link where the scratch root should be.
    let target = tempfile::tempdir().unwrap();
    let link_target = target.path().to_path_buf();
    let out = Httpd::start_refused(
        Options {
            fragment: "RSessionScratchRoot {ROOT}/scratch-link".into(),
            ..Options::default()
        },
        |root| std::os::unix::fs::symlink(&link_target, root.join("scratch-link")).unwrap(),
    );
    assert!(
        out.contains("RS0002") && out.contains("scratch-link") && out.contains("symbolic link"),
        "{out}"
    );
    assert_eq!(
        uid_of(target.path()),
        0,
        "the link's target keeps its owner"
    );
}

#[test]
fn missing_parents_of_the_roots_are_made_so_that_children_can_reach_them() {
    let h = server(
        "",
        "RSessionStore file:{ROOT}/var/lib/a/store\nRSessionScratchRoot {ROOT}/var/cache/b/scratch",
    );
    let r = get(&h.url("/cgi-bin/env.cgi"), &[]);
    assert_eq!(r.status, 200, "{}", h.error_log());
    let dir = PathBuf::from(r.env("RSESSION_DIR").unwrap());
    assert!(dir.starts_with(h.path("var/cache/b/scratch")) && dir.is_dir());
    for parent in ["var", "var/lib/a", "var/cache/b"] {
        let m = std::fs::metadata(h.path(parent)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o755), "{parent}");
    }
    for root in ["var/lib/a/store", "var/cache/b/scratch"] {
        let m = std::fs::metadata(h.path(root)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (WWW_DATA, 0o700), "{root}");
    }
}

/// Lines `RS0040 sweep of STORE:` in the log.
fn sweeps_of(h: &Httpd, store: &str) -> usize {
    let wanted = format!("RS0040 sweep of {store}:");
    h.error_log().matches(&wanted).count()
}

#[test]
fn a_vhost_s_sweeper_never_removes_another_store_s_live_scratch_directories() {
    let port_b = free_port();
    let h = server(
        "",
        &format!(
            "RSessionGCInterval 1\nListen 127.0.0.1:{port_b}\n<VirtualHost 127.0.0.1:{port_b}>\n  RSessionStore file:{{ROOT}}/store-b\n</VirtualHost>"
        ),
    );
    let r = get(&h.url("/cgi-bin/keep.cgi"), &[]);
    assert_eq!(r.status, 200);
    let dir = PathBuf::from(r.env("RSESSION_DIR").unwrap());
    assert!(dir.join("keep").is_file());
    let b = get(&format!("http://127.0.0.1:{port_b}/cgi-bin/keep.cgi"), &[]);
    assert_eq!(b.status, 200);
    let store_a = format!("file:{}", h.path("logs/rsession").display());
    let store_b = format!("file:{}", h.path("store-b").display());
    wait_for(
        "three sweeps of each store",
        Duration::from_secs(30),
        || (sweeps_of(&h, &store_a) >= 3 && sweeps_of(&h, &store_b) >= 3).then_some(()),
    );
    assert!(
        dir.join("keep").is_file(),
        "vhost B's sweeper removed vhost A's live scratch directory"
    );
    assert!(PathBuf::from(b.env("RSESSION_DIR").unwrap())
        .join("keep")
        .is_file());
    let again = get_with_cookie(&h.url("/cgi-bin/env.cgi"), &r.cookie_pair());
    assert_eq!(again.env("RSESSION_NEW").as_deref(), Some("0"));
}

#[test]
fn a_store_shared_by_two_scratch_roots_gets_both_swept() {
    let port_b = free_port();
    let h = server(
        "  RSessionTimeout 1",
        &format!(
            "RSessionGCInterval 1\nListen 127.0.0.1:{port_b}\n<VirtualHost 127.0.0.1:{port_b}>\n  RSessionScratchRoot {{ROOT}}/scratch-b\n</VirtualHost>"
        ),
    );
    let a = get(&h.url("/cgi-bin/keep.cgi"), &[]);
    let b = get(&format!("http://127.0.0.1:{port_b}/cgi-bin/keep.cgi"), &[]);
    assert_eq!((a.status, b.status), (200, 200));
    let dir_a = PathBuf::from(a.env("RSESSION_DIR").unwrap());
    let dir_b = PathBuf::from(b.env("RSESSION_DIR").unwrap());
    assert!(dir_b.starts_with(h.path("scratch-b")));
    assert!(dir_a.is_dir() && dir_b.is_dir());
    wait_for(
        "both expired sessions' directories to be swept",
        Duration::from_secs(20),
        || (!dir_a.exists() && !dir_b.exists()).then_some(()),
    );
}

#[test]
fn a_fifo_planted_as_a_record_never_hangs_a_request_the_sweeper_or_a_restart() {
    let mut h = server("", "RSessionGCInterval 1");
    let first = get(&h.url("/cgi-bin/env.cgi"), &[]);
    let cookie = first.cookie_pair();
    let id = id_of(&cookie);
    let record = h.record(&id);
    // What a CGI (owner of the store) can do to any record.
    std::fs::remove_file(&record).unwrap();
    nix_mkfifo(&record);
    // And to the shard's lock file.
    let locks = record.parent().unwrap().join(".locks");
    let _ = std::fs::remove_file(&locks);
    nix_mkfifo(&locks);

    let r = get_within(&h.url("/cgi-bin/env.cgi"), &cookie, Duration::from_secs(10));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.env("RSESSION_NEW").as_deref(),
        Some("1"),
        "a fresh session"
    );
    assert_ne!(r.env("RSESSION_ID"), Some(id.clone()));
    assert!(h.error_log().contains("RS0010"), "the bad record is logged");
    // Its old cookie keeps getting fresh sessions, never a hang.
    let again = get_within(&h.url("/cgi-bin/env.cgi"), &cookie, Duration::from_secs(10));
    assert_eq!(again.env("RSESSION_NEW").as_deref(), Some("1"));
    wait_for(
        "the sweeper to remove the FIFO",
        Duration::from_secs(15),
        || std::fs::symlink_metadata(&record).is_err().then_some(()),
    );

    // The old generation's children end: none is stuck in open().
    let before = h.worker_children();
    h.graceful();
    wait_for(
        "the old generation's children to exit",
        Duration::from_secs(15),
        || {
            let now = harness::children_of(h.pid());
            (!before.iter().any(|c| now.contains(c))).then_some(())
        },
    );
    assert_eq!(get(&h.url("/cgi-bin/env.cgi"), &[]).status, 200);
}

fn nix_mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
    chown(path, Some(WWW_DATA), Some(WWW_DATA)).unwrap();
}

#[test]
fn a_locked_subdirectory_goes_with_invalidate() {
    let h = server("", "");
    let r = get(&h.url("/cgi-bin/locked.cgi"), &[("X-Cmd", "invalidate")]);
    assert_eq!(r.status, 200);
    let dir = PathBuf::from(r.env("RSESSION_DIR").unwrap());
    wait_for(
        "invalidate to remove the scratch directory",
        Duration::from_secs(5),
        || std::fs::symlink_metadata(&dir).is_err().then_some(()),
    );
    assert!(!h.error_log().contains("RS0051"), "nothing stayed");
}

#[test]
fn a_locked_subdirectory_goes_with_the_sweeper() {
    let h = server("  RSessionTimeout 2", "RSessionGCInterval 1");
    let r = get(&h.url("/cgi-bin/locked.cgi"), &[]);
    assert_eq!(r.status, 200);
    let dir = PathBuf::from(r.env("RSESSION_DIR").unwrap());
    assert!(dir.join("sub").exists());
    wait_for(
        "the sweeper to remove the expired session's directory",
        Duration::from_secs(20),
        || std::fs::symlink_metadata(&dir).is_err().then_some(()),
    );
    assert!(!h.error_log().contains("RS0051"), "nothing stayed");
}

#[test]
fn a_fifo_planted_as_the_generated_key_fails_the_start_at_once() {
    let out = Httpd::start_refused(
        Options {
            secret: false,
            ..Options::default()
        },
        |root| {
            let status = std::process::Command::new("mkfifo")
                .arg(root.join("logs/rsession.key"))
                .status()
                .unwrap();
            assert!(status.success());
        },
    );
    assert!(
        out.contains("RS0001")
            && out.contains("rsession.key")
            && out.contains("not a regular file"),
        "{out}"
    );
}
