//! A private php-fpm master for one test: its own config (`-n -y`, never
//! the system's pool or service), a Unix socket under a temporary
//! directory, workers as www-data like the httpd children. Killed on drop.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct PhpFpm {
    dir: tempfile::TempDir,
    child: Child,
}

/// The php-fpm binary Debian installs (`php8.2-fpm` in bookworm), if any.
pub fn binary() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir("/usr/sbin")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("php-fpm"))
        })
        .collect();
    found.sort();
    found.pop()
}

impl PhpFpm {
    pub fn start() -> PhpFpm {
        Self::start_as("www-data", "www-data")
    }

    /// A pool whose workers run as `user`:`group` (the socket stays
    /// www-data's, for httpd's children).
    pub fn start_as(user: &str, group: &str) -> PhpFpm {
        let bin = binary().expect("php-fpm is missing: make test installs php8.2-fpm");
        let dir = tempfile::Builder::new()
            .prefix("rsession-fpm-")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let d = dir.path().display();
        let conf = format!(
            "[global]\nerror_log = {d}/error.log\ndaemonize = no\npid = {d}/fpm.pid\n\
             [test]\nuser = {user}\ngroup = {group}\nlisten = {d}/fpm.sock\n\
             listen.owner = www-data\nlisten.group = www-data\nlisten.mode = 0600\n\
             pm = static\npm.max_children = 2\nclear_env = no\n"
        );
        fs::write(dir.path().join("fpm.conf"), conf).unwrap();
        let child = Command::new(bin)
            .args(["-n", "-F", "-y"])
            .arg(dir.path().join("fpm.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("php-fpm runs");
        let fpm = PhpFpm { dir, child };
        let sock = fpm.socket();
        super::wait_for("php-fpm's socket", Duration::from_secs(20), || {
            sock.exists().then_some(())
        });
        fpm
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("fpm.sock")
    }

    /// What routes `.php` files to this master (mod_proxy_fcgi).
    pub fn handler(&self) -> String {
        format!("proxy:unix:{}|fcgi://localhost", self.socket().display())
    }

    /// The config that lets httpd serve `dir` and hand its `.php` files
    /// to this master.
    pub fn serve_directory(&self, dir: &Path) -> String {
        format!(
            "<Directory {dir}>\n  Require all granted\n  <FilesMatch \"\\.php$\">\n    SetHandler \"{handler}\"\n  </FilesMatch>\n</Directory>\n",
            dir = dir.display(),
            handler = self.handler()
        )
    }

    pub fn log(&self) -> String {
        fs::read_to_string(Path::new(self.dir.path()).join("error.log")).unwrap_or_default()
    }
}

impl Drop for PhpFpm {
    fn drop(&mut self) {
        // SAFETY: SIGTERM to the master we started: it stops its workers.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
