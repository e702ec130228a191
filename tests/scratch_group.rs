//! RSessionScratchGroup: a php-fpm pool running as a user of its own (in
//! the group; `User` is not) writes files and a `chmod 700` subdirectory
//! into its session's scratch directory, and invalidate, regenerate and
//! the sweeper still leave nothing behind.

mod harness;

use harness::http::{get, get_with_cookie, Response};
use harness::php::PhpFpm;
use harness::{scratch_store_dir, wait_for, Httpd, Options};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::Duration;

const GROUP: &str = "rsession-pool";
/// The pool's user: a group of its own, the scratch group as a
/// supplementary one (its primary group would mark all its files, also
/// those elsewhere, as the scratch tree's).
const POOL_USER: &str = "rsession-fpm";

/// The pool's group and user, made once on this machine (system
/// accounts, no home, no shell; www-data stays out of the group).
fn pool_identity() -> (u32, u32) {
    // (uid, gid of the scratch group)
    static MADE: Once = Once::new();
    MADE.call_once(|| {
        let exists = |db: &str, name: &str| {
            Command::new("getent")
                .args([db, name])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !exists("group", GROUP) {
            let ok = Command::new("groupadd").args(["--system", GROUP]).status();
            assert!(ok.is_ok_and(|s| s.success()), "groupadd {GROUP}");
        }
        if !exists("passwd", POOL_USER) {
            let ok = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--user-group",
                    "--groups",
                    GROUP,
                ])
                .args(["--shell", "/usr/sbin/nologin", POOL_USER])
                .status();
            assert!(ok.is_ok_and(|s| s.success()), "useradd {POOL_USER}");
        }
    });
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, POOL_USER]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let group = Command::new("getent")
        .args(["group", GROUP])
        .output()
        .unwrap();
    let gid = String::from_utf8_lossy(&group.stdout)
        .split(':')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    (id("-u"), gid)
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The pool user's own (primary) group.
fn pool_uid_group() -> u32 {
    let out = Command::new("id").args(["-g", POOL_USER]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn line(r: &Response, key: &str) -> String {
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {r:?}"))
        .to_string()
}

fn server(fpm: &PhpFpm) -> Httpd {
    Httpd::start(Options {
        modules: vec!["proxy", "proxy_fcgi"],
        create_always: false,
        fragment: format!(
            r#"RSessionScratchGroup {GROUP}
RSessionGCInterval 1
Alias /php/ {root}/tests/support/
Alias /short/ {root}/tests/support/
{php}<LocationMatch "^/(php|short)/">
  RSession On
</LocationMatch>
<Location /short/>
  RSessionTimeout 2
</Location>
"#,
            root = repo().display(),
            php = fpm.serve_directory(&repo().join("tests/support"))
        ),
        ..Options::default()
    })
}

/// This store's part of the scratch root (the group is in its tag).
fn store_part(h: &Httpd) -> PathBuf {
    let store = format!("file:{}", h.path("logs/rsession").display());
    scratch_store_dir(
        &h.path("logs/rsession-scratch"),
        &format!("{store}\ngroup={GROUP}"),
    )
}

fn waiting_for_the_reaper(h: &Httpd) -> Vec<String> {
    fs::read_dir(store_part(h).join(".reap"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn write_as_the_pool(h: &Httpd, prefix: &str, pool_uid: u32) -> (String, PathBuf) {
    let r = get(
        &h.url(&format!("/{prefix}/scratch_group.php?do=write")),
        &[],
    );
    assert_eq!(r.status, 200, "{r:?}\n{}", h.error_log());
    assert_eq!(line(&r, "wrote"), "yes", "the pool can write: {r:?}");
    let dir = PathBuf::from(line(&r, "dir"));
    let private = fs::metadata(dir.join("private")).unwrap();
    assert_eq!(private.uid(), pool_uid, "made by the pool's own user");
    assert_eq!(private.mode() & 0o777, 0o700);
    (r.cookie_pair(), dir)
}

#[test]
fn a_pool_under_its_own_user_shares_the_scratch_directory_and_leaves_nothing() {
    let (pool_uid, gid) = pool_identity();
    let fpm = PhpFpm::start_as(POOL_USER, POOL_USER);
    let h = server(&fpm);

    let (cookie, dir) = write_as_the_pool(&h, "php", pool_uid);
    let made = fs::metadata(&dir).unwrap();
    assert_eq!(made.gid(), gid, "the session's directory is the group's");
    assert_eq!(made.mode() & 0o7777, 0o2770, "setgid, group-writable");
    let upload = fs::metadata(dir.join("upload.txt")).unwrap();
    assert_eq!(upload.gid(), gid, "what the pool makes is the group's too");
    assert!(dir.starts_with(store_part(&h)));

    // Regenerate moves everything, the pool's private part included.
    let moved = get_with_cookie(&h.url("/php/scratch_group.php?do=regenerate"), &cookie);
    assert_eq!(moved.status, 200, "{moved:?}\n{}", h.error_log());
    let cookie = moved.cookie_pair();
    let new_dir = Path::new(&dir)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join(&harness::id_of(&cookie)[..2])
        .join(harness::id_of(&cookie));
    assert!(!dir.exists());
    assert!(new_dir.join("private/secret.txt").exists());

    // Invalidate: the id's directory is gone at once; what User could not
    // remove waits in .reap for the parent's reaper, which empties it as
    // the pool's user.
    let ended = get_with_cookie(&h.url("/php/scratch_group.php?do=end"), &cookie);
    assert_eq!(ended.status, 200, "{ended:?}\n{}", h.error_log());
    assert!(!new_dir.exists(), "invalidated: its directory is gone");
    wait_for("the reaper to empty .reap", Duration::from_secs(90), || {
        waiting_for_the_reaper(&h).is_empty().then_some(())
    });
    let log = h.error_log();
    assert!(!log.contains("RS0140"), "{log}");
    assert!(!log.contains("RS0141"), "{log}");
}

#[test]
fn the_sweeper_removes_what_a_pool_left_in_an_expired_session() {
    let (pool_uid, _) = pool_identity();
    let fpm = PhpFpm::start_as(POOL_USER, POOL_USER);
    let h = server(&fpm);
    let (cookie, dir) = write_as_the_pool(&h, "short", pool_uid);
    let record = h.record(&harness::id_of(&cookie));
    assert!(record.exists());
    wait_for(
        "the sweeper and the reaper to remove the expired session",
        Duration::from_secs(90),
        || {
            (!record.exists() && !dir.exists() && waiting_for_the_reaper(&h).is_empty())
                .then_some(())
        },
    );
    // And a permission the group lacks stays lacking: the scratch root
    // lets the group through, no more.
    let root = fs::metadata(h.path("logs/rsession-scratch")).unwrap();
    assert_eq!(root.mode() & 0o777, 0o710);
    assert!(!h.error_log().contains("RS0140"), "{}", h.error_log());
}

#[test]
fn the_reaper_never_acts_as_a_user_outside_the_group() {
    let (pool_uid, _) = pool_identity();
    let fpm = PhpFpm::start_as(POOL_USER, POOL_USER);
    let h = server(&fpm);
    let (cookie, dir) = write_as_the_pool(&h, "php", pool_uid);
    // A directory of `nobody` (not in the group) inside the session's.
    let planted = dir.join("planted");
    fs::create_dir(&planted).unwrap();
    fs::write(planted.join("theirs"), "not the reaper's to take").unwrap();
    // nobody's, in the group (what a member could do is the same as
    // what nobody cannot: be acted as).
    std::os::unix::fs::chown(planted.join("theirs"), Some(65534), None).unwrap();
    std::os::unix::fs::chown(&planted, Some(65534), None).unwrap();
    fs::set_permissions(
        &planted,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();

    let ended = get_with_cookie(&h.url("/php/scratch_group.php?do=end"), &cookie);
    assert_eq!(ended.status, 200, "{ended:?}\n{}", h.error_log());
    let line = wait_for(
        "the reaper's refusal in the log",
        Duration::from_secs(90),
        || {
            h.error_log()
                .lines()
                .find(|l| l.contains("RS0140"))
                .map(str::to_string)
        },
    );
    assert!(line.contains("uid {65534}"), "{line}");
    // The pool's part is gone, the stranger's stays (nothing as root).
    let waiting = waiting_for_the_reaper(&h);
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    let left = store_part(&h).join(".reap").join(&waiting[0]);
    assert!(left.join("planted/theirs").exists());
    assert!(!left.join("private").exists(), "the pool's directory went");
    assert!(!left.join("upload.txt").exists());
}

/// Runs `sh -c script` as www-data: what any CGI can do.
fn as_www_data(script: &str) -> (bool, String) {
    let out = Command::new("setpriv")
        .args([
            "--reuid=www-data",
            "--regid=www-data",
            "--init-groups",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_members_directory_moved_into_reap_is_never_removed_for_www_data() {
    // Found in review: www-data moved a pool user's directory (which it
    // could move but not empty) into .reap, and the reaper deleted it as
    // that user.
    let (pool_uid, _) = pool_identity();
    let pool_gid = pool_uid_group();
    let fpm = PhpFpm::start_as(POOL_USER, POOL_USER);
    let h = server(&fpm);
    let reap = store_part(&h).join(".reap");
    assert!(reap.is_dir(), "{}", h.error_log());
    // Another site's uploads: the pool user's, group-writable by www-data
    // (so www-data can move it), with a subdirectory www-data cannot touch.
    let base = h.path("elsewhere");
    fs::create_dir(&base).unwrap();
    std::os::unix::fs::chown(&base, Some(33), Some(33)).unwrap();
    let uploads = base.join("uploads");
    fs::create_dir_all(uploads.join("2024")).unwrap();
    fs::write(uploads.join("2024/photo.jpg"), "not www-data's to delete").unwrap();
    for p in [uploads.join("2024/photo.jpg"), uploads.join("2024")] {
        std::os::unix::fs::chown(&p, Some(pool_uid), Some(pool_gid)).unwrap();
    }
    std::os::unix::fs::chown(&uploads, Some(pool_uid), Some(33)).unwrap();
    fs::set_permissions(
        &uploads,
        std::os::unix::fs::PermissionsExt::from_mode(0o2775),
    )
    .unwrap();
    let photo = uploads.join("2024/photo.jpg");
    let (deleted, _) = as_www_data(&format!("rm -f '{}'", photo.display()));
    assert!(
        !deleted && photo.exists(),
        "www-data cannot delete it itself"
    );

    let (moved, out) = as_www_data(&format!(
        "mv '{}' '{}/evil'",
        uploads.display(),
        reap.display()
    ));
    assert!(moved, "www-data can move it: {out}");
    let line = wait_for("the reaper's refusal", Duration::from_secs(90), || {
        h.error_log()
            .lines()
            .find(|l| l.contains("RS0140"))
            .map(str::to_string)
    });
    assert!(line.contains("left alone"), "{line}");
    assert!(
        reap.join("evil/2024/photo.jpg").exists(),
        "nothing of it was removed"
    );
}
