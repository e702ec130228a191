//! Issue 8: mod_rsession as administrators meet it — `make install` and the
//! a2enmod files, and real PHP, mod_lua and proxied handlers sharing one
//! session.

mod harness;

use harness::http::{get, get_with_cookie, Response};
use harness::php::PhpFpm;
use harness::scripts::Backend;
use harness::{Httpd, Mpm, Options};
use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn line(r: &Response, key: &str) -> Option<String> {
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
}

#[test]
fn make_install_lays_out_files_that_apachectl_accepts() {
    let dest = tempfile::tempdir().unwrap();
    let out = Command::new("make")
        .args(["-C", repo().to_str().unwrap(), "install"])
        .arg(format!("DESTDIR={}", dest.path().display()))
        .output()
        .expect("make runs");
    assert!(
        out.status.success(),
        "make install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let libexec = String::from_utf8(
        Command::new("apxs")
            .args(["-q", "LIBEXECDIR"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let sysconf = String::from_utf8(
        Command::new("apxs")
            .args(["-q", "SYSCONFDIR"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let installed = dest
        .path()
        .join(libexec.trim().trim_start_matches('/'))
        .join("mod_rsession.so");
    let mods = dest
        .path()
        .join(sysconf.trim().trim_start_matches('/'))
        .join("mods-available");
    assert!(installed.exists(), "{}", installed.display());
    let load = std::fs::read_to_string(mods.join("rsession.load")).unwrap();
    assert!(load.contains("LoadModule rsession_module /usr/lib/apache2/modules/mod_rsession.so"));
    assert!(mods.join("rsession.conf").exists());
    // `a2enmod rsession` works on the installed files (it reads their
    // "# Depends:" lines, among other things).
    let confdir = dest.path().join("a2enmod-confdir");
    std::fs::create_dir_all(confdir.join("mods-enabled")).unwrap();
    std::fs::create_dir_all(confdir.join("mods-available")).unwrap();
    for f in ["rsession.load", "rsession.conf"] {
        std::fs::copy(mods.join(f), confdir.join("mods-available").join(f)).unwrap();
    }
    let enabled = Command::new("a2enmod")
        .arg("-q")
        .arg("rsession")
        .env("APACHE_CONFDIR", &confdir)
        .output()
        .expect("a2enmod runs");
    assert!(
        enabled.status.success(),
        "a2enmod: {}{}",
        String::from_utf8_lossy(&enabled.stdout),
        String::from_utf8_lossy(&enabled.stderr)
    );
    assert!(confdir.join("mods-enabled/rsession.load").exists());
    assert!(confdir.join("mods-enabled/rsession.conf").exists());
    // The shipped pair, pointed at the staged module, passes `apache2 -t`.
    let load = load.replace(
        "/usr/lib/apache2/modules/mod_rsession.so",
        installed.to_str().unwrap(),
    );
    std::fs::write(dest.path().join("rsession.load"), load).unwrap();
    let fragment = format!(
        "Include {}\nInclude {}\n<Location /app/>\n  RSession On\n</Location>",
        dest.path().join("rsession.load").display(),
        mods.join("rsession.conf").display()
    );
    let checked = harness::check_config_without_module(&fragment);
    assert!(checked.is_ok(), "{checked:?}");

    // Installed stripped: no debug information, a fraction of the build.
    let sections = Command::new("readelf")
        .arg("-S")
        .arg(&installed)
        .output()
        .expect("readelf runs");
    let sections = String::from_utf8_lossy(&sections.stdout);
    assert!(!sections.contains(".debug_"), "{sections}");
    let size = std::fs::metadata(&installed).unwrap().len();
    assert!(size < 4 << 20, "installed module is {size} bytes");

    // `make uninstall` takes back exactly what `make install` put there.
    for f in ["rsession.load", "a2enmod-confdir"] {
        let p = dest.path().join(f);
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_dir_all(&p);
    }
    let out = Command::new("make")
        .args(["-C", repo().to_str().unwrap(), "uninstall"])
        .arg(format!("DESTDIR={}", dest.path().display()))
        .output()
        .expect("make runs");
    assert!(
        out.status.success(),
        "make uninstall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Vec<_> = walk(dest.path());
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Every path under `dir` (not `dir` itself).
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        out.push(e.path());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

#[test]
fn php_mod_lua_and_a_proxied_app_share_one_session() {
    // PHP through php-fpm (mod_proxy_fcgi), a master of the test's own:
    // mod_php would need the prefork MPM system-wide.
    let fpm = PhpFpm::start();
    let backend_port = harness::free_port();
    let _backend = Backend::start(backend_port);
    let h = Httpd::start(Options {
        mpm: Mpm::Event,
        modules: vec!["lua", "proxy", "proxy_http", "proxy_fcgi"],
        fragment: format!(
            r#"Alias /php/ {root}/tests/support/
{php}LuaMapHandler ^/lua$ {root}/tests/support/session.lua handle
<Location /app/>
  RSessionForwardHeaders On
  ProxyPass http://127.0.0.1:{backend_port}/
</Location>
<LocationMatch "^/(php|lua|app)">
  RSession On
</LocationMatch>
"#,
            root = repo().display(),
            php = fpm.serve_directory(&repo().join("tests/support"))
        ),
        ..Options::default()
    });
    let first = get(&h.url("/php/session.php?user=Zo%C3%AB"), &[]);
    assert_eq!(first.status, 200, "{first:?}\nphp-fpm log:\n{}", fpm.log());
    let cookie = first.cookie_pair();
    let id = line(&first, "id").unwrap();
    assert_eq!(id.len(), 32);
    assert!(cookie.contains(&id));
    assert!(line(&first, "dir").unwrap().ends_with(&id));
    let lua = get_with_cookie(&h.url("/lua"), &cookie);
    assert_eq!(
        line(&lua, "id"),
        Some(id.clone()),
        "mod_lua reads r.notes['rsession-id']"
    );
    let app = get_with_cookie(&h.url("/app/"), &cookie);
    assert!(
        app.body.contains(&format!("\"X-RSession-Id\": \"{id}\"")),
        "{}",
        app.body
    );
    let again = get_with_cookie(&h.url("/php/session.php"), &cookie);
    assert_eq!(line(&again, "php_visits").as_deref(), Some("2"));
    assert_eq!(line(&again, "user").as_deref(), Some("Zoë"));
    let all = get_with_cookie(&h.url("/app/"), &cookie);
    assert!(all.body.contains("\"lua_visits\": \"1\""), "{}", all.body);
    assert!(all.body.contains("\"php_visits\": \"2\""), "{}", all.body);
    assert!(
        all.body.contains("\"visits\": \"1\""),
        "the backend's own update: {}",
        all.body
    );
}
