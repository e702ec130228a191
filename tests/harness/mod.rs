//! Test harness: a real, private httpd per test (free 127.0.0.1 port,
//! temporary ServerRoot, `-DFOREGROUND`), an HTTP client, readiness and
//! waits by condition with deadlines, and a log scan that fails the test on
//! any crash or panic line.
#![allow(dead_code)]

pub mod http;
pub mod php;
pub mod redis;
pub mod scripts;
pub mod sign;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const MODULES: &str = "/usr/lib/apache2/modules";
/// The secret tests configure, so they can sign cookies themselves.
pub const SECRET: &str = "test-secret-0123456789abcdef";

/// The module under test: `make test` passes its path.
pub fn module_path() -> PathBuf {
    std::env::var_os("RSESSION_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/mod_rsession.so")
        })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mpm {
    Event,
    Worker,
    Prefork,
}

impl Mpm {
    pub const ALL: [Mpm; 3] = [Mpm::Event, Mpm::Worker, Mpm::Prefork];
    fn module(self) -> &'static str {
        match self {
            Mpm::Event => "event",
            Mpm::Worker => "worker",
            Mpm::Prefork => "prefork",
        }
    }
}

/// Pids of `parent`'s children, from /proc.
pub fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| proc_stat_field(*pid, 1) == Some(parent as i64))
        .collect()
}

/// Field `n` (0-based) after the command name in /proc/PID/stat.
fn proc_stat_field(pid: i32, n: usize) -> Option<i64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(n)?
        .parse()
        .ok()
}

const TCP_ESTABLISHED: &str = "01";
const TCP_CLOSE_WAIT: &str = "08";

/// One row of /proc/net/tcp or tcp6.
struct TcpSocket {
    local_port: u16,
    remote_port: u16,
    state: String,
    receive_queue: u64,
}

/// This machine's TCP sockets, from /proc/net/tcp and /proc/net/tcp6.
fn tcp_sockets() -> Vec<TcpSocket> {
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .flat_map(|table| {
            fs::read_to_string(table)
                .unwrap_or_default()
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    let queues = f.get(4)?.split_once(':')?;
                    Some(TcpSocket {
                        local_port: port(f.get(1)?)?,
                        remote_port: port(f.get(2)?)?,
                        state: f.get(3)?.to_string(),
                        receive_queue: u64::from_str_radix(queues.1, 16).ok()?,
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The session data the server holds for `cookie`, as the test's
/// `/cgi-bin/env.cgi` sees it in `RSESSION_DATA` (empty when unset).
pub fn session_data(h: &Httpd, cookie: &str) -> String {
    http::get_with_cookie(&h.url("/cgi-bin/env.cgi"), cookie)
        .env("RSESSION_DATA")
        .unwrap_or_default()
}

/// The session id in a `NAME=ID.MAC` cookie pair.
pub fn id_of(cookie_pair: &str) -> String {
    let value = cookie_pair.split_once('=').expect("NAME=VALUE").1;
    value.split('.').next().unwrap_or_default().to_string()
}

/// The part of a scratch root that belongs to the store `describe`d so
/// (src/scratch.rs: 12 hex characters of the SHA-256 of its description).
pub fn scratch_store_dir(root: &Path, describe: &str) -> PathBuf {
    use sha2::Digest;
    let tag: String = sha2::Sha256::digest(describe.as_bytes())[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    root.join(tag)
}

/// The scratch directory of `id` under `root`, for the store `describe`d
/// so: `root/<tag>/<first two hex digits>/<id>`.
pub fn scratch_dir_in(root: &Path, describe: &str, id: &str) -> PathBuf {
    scratch_store_dir(root, describe).join(&id[..2]).join(id)
}

/// Polls `check` until it returns `Some` or `deadline` passes.
pub fn wait_for<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// What a test server looks like. `fragment` is appended to the base config;
/// `{ROOT}` in it stands for the server root.
#[derive(Clone)]
pub struct Options {
    pub mpm: Mpm,
    pub fragment: String,
    pub modules: Vec<&'static str>,
    pub secret: bool,
    /// `RSessionCreate Always` server-wide (see `config_text`).
    pub create_always: bool,
    pub log_level: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mpm: Mpm::Event,
            fragment: String::new(),
            modules: Vec::new(),
            secret: true,
            create_always: true,
            // Our module at its most verbose in every test: the Drop check
            // below then proves no secret or whole id is ever logged.
            log_level: "info rsession:trace8",
        }
    }
}

pub struct Httpd {
    pub root: tempfile::TempDir,
    pub port: u16,
    pub options: Options,
    child: Option<Child>,
    starts: usize,
}

const CRASH_MARKERS: [&str; 5] = [
    "exit signal",
    "panicked",
    "fatal runtime error",
    "RS0100",
    "RS0101",
];

impl Httpd {
    pub fn start(options: Options) -> Httpd {
        Self::start_after(options, |_| {})
    }

    /// `start`, after `prepare` has run on the server root (to plant what
    /// the server will find there).
    pub fn start_after(options: Options, prepare: impl FnOnce(&Path)) -> Httpd {
        let mut h = Self::unstarted(options);
        prepare(h.root.path());
        h.write_config();
        h.launch();
        h
    }

    /// Starts httpd after `prepare` has run on its root, expecting it to
    /// refuse to start: returns its stderr and error log. Fails the test if
    /// it starts.
    pub fn start_refused(options: Options, prepare: impl FnOnce(&Path)) -> String {
        let mut h = Self::unstarted(options);
        prepare(h.root.path());
        h.write_config();
        let mut child = Command::new("apache2")
            .args(["-f", h.conf_path().to_str().unwrap(), "-DFOREGROUND"])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("apache2 runs");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            if h.ready_count() > 0 || Instant::now() >= deadline {
                let what = if h.ready_count() > 0 {
                    "started although it should not have"
                } else {
                    "neither started nor gave up within 30s (hung?)"
                };
                h.child = Some(child);
                panic!("httpd {what}:\n{}", h.error_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        format!("{stderr}\n{}", h.error_log())
    }

    fn unstarted(options: Options) -> Httpd {
        let root = tempfile::Builder::new()
            .prefix("rsession-test-")
            .tempdir()
            .expect("temp dir");
        // Children run as www-data and must reach the htdocs and cgi trees.
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
        for d in ["logs", "htdocs", "cgi-bin"] {
            fs::create_dir(root.path().join(d)).unwrap();
            fs::set_permissions(root.path().join(d), fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::write(
            root.path().join("htdocs/index.html"),
            "<p>static page</p>\n",
        )
        .unwrap();
        Httpd {
            root,
            port: free_port(),
            options,
            child: None,
            starts: 0,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    /// Where the default file store keeps the record of `id` (sharded by
    /// the id's first byte).
    pub fn record(&self, id: &str) -> PathBuf {
        self.path("logs/rsession").join(&id[..2]).join(id)
    }

    /// Where the default scratch root keeps the directory of `id` of the
    /// default store.
    pub fn scratch_dir(&self, id: &str) -> PathBuf {
        let store = format!("file:{}", self.path("logs/rsession").display());
        scratch_dir_in(&self.path("logs/rsession-scratch"), &store, id)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn conf_path(&self) -> PathBuf {
        self.path("httpd.conf")
    }

    /// Installs an executable CGI script under /cgi-bin/.
    pub fn cgi(&self, name: &str, script: &str) {
        let path = self.path("cgi-bin").join(name);
        fs::write(&path, script).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    pub fn htdoc(&self, name: &str, body: &str) {
        let path = self.path("htdocs").join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
            fs::set_permissions(parent, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::write(path, body).unwrap();
    }

    /// An executable under htdocs: a script run by file name (AddHandler,
    /// a DirectoryIndex), not from cgi-bin.
    pub fn htdoc_script(&self, name: &str, script: &str) {
        self.htdoc(name, script);
        let path = self.path("htdocs").join(name);
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    pub fn config_text(&self) -> String {
        config_text(self.root.path(), self.port, &self.options)
    }

    fn write_config(&self) {
        fs::write(self.conf_path(), self.config_text()).unwrap();
    }

    /// Rewrites the config (for a restart with other settings).
    pub fn set_fragment(&mut self, fragment: &str) {
        self.options.fragment = fragment.to_string();
        self.write_config();
    }

    pub fn error_log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(self.path("logs/error.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    fn ready_count(&self) -> usize {
        self.error_log()
            .matches("resuming normal operations")
            .count()
    }

    fn launch(&mut self) {
        let before = self.ready_count();
        // Its own process group: on restart httpd signals its whole group,
        // which would otherwise include this test runner.
        let child = Command::new("apache2")
            .args(["-f", self.conf_path().to_str().unwrap(), "-DFOREGROUND"])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("apache2 runs (make deps installs it)");
        self.child = Some(child);
        self.starts += 1;
        self.wait_ready(before);
    }

    /// Until this generation's "resuming normal operations" and, where
    /// CGIs go through mod_cgid, its daemon's socket is this generation's
    /// and handed to www-data: mod_cgid binds it as root and chowns it a
    /// moment later, and a child connecting in between gets EACCES, which
    /// mod_cgid does not retry (a 503 for the first CGI on a loaded
    /// machine).
    fn wait_ready(&mut self, before: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let asked = std::time::SystemTime::now() - Duration::from_secs(1);
        loop {
            if self.ready_count() > before && self.cgid_ready(asked) {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let mut stderr = String::new();
                if let Some(mut e) = self.child.as_mut().and_then(|c| c.stderr.take()) {
                    let _ = e.read_to_string(&mut stderr);
                }
                self.child = None;
                panic!("httpd exited ({status}) before it was ready\nstderr:\n{stderr}\nerror log:\n{}", self.error_log());
            }
            if Instant::now() >= deadline {
                panic!("httpd not ready in 30s\nerror log:\n{}", self.error_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True without mod_cgid (prefork), else once its socket was made or
    /// changed after `since` and belongs to www-data.
    fn cgid_ready(&self, since: std::time::SystemTime) -> bool {
        use std::os::unix::fs::MetadataExt;
        if matches!(self.options.mpm, Mpm::Prefork) {
            return true;
        }
        // mod_cgid appends the parent's pid to ScriptSock.
        let Some(child) = self.child.as_ref() else {
            return false;
        };
        let socket = self.path(&format!("logs/cgid.sock.{}", child.id()));
        fs::symlink_metadata(socket).is_ok_and(|m| {
            let changed = std::time::UNIX_EPOCH + Duration::from_secs(m.ctime().max(0) as u64);
            m.uid() == 33 && changed >= since
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to the pid of the child we started.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// `apachectl -k graceful`: SIGUSR1 to the parent; returns when the
    /// new generation is ready.
    pub fn graceful(&mut self) {
        let before = self.ready_count();
        self.signal(libc::SIGUSR1);
        self.wait_ready(before);
    }

    /// `apachectl -k restart`: SIGHUP. Children end ungracefully, so this
    /// first lets closing connections settle (see `stop`).
    pub fn restart(&mut self) {
        self.wait_children_started();
        self.wait_connections_settled();
        let before = self.ready_count();
        self.signal(libc::SIGHUP);
        self.wait_ready(before);
    }

    /// httpd 2.4.71's event MPM, stopping a child ungracefully (SIGTERM,
    /// SIGHUP), closes the sockets its workers hold from the main thread
    /// (`close_worker_sockets`) while a worker may be freeing the same
    /// connection: the child dies in `apr_os_sock_get` (cores inspected; no
    /// module frame, seen with mod_session alone). A worker holds a socket
    /// when a client has just closed its keep-alive connection, as every
    /// test's client does when it ends. Wait (bounded) until no connection
    /// to this server is half-closed by the client (CLOSE_WAIT).
    fn wait_connections_settled(&self) {
        let half_closed = || {
            tcp_sockets()
                .iter()
                .any(|t| t.local_port == self.port && t.state == TCP_CLOSE_WAIT)
        };
        let end = Instant::now() + Duration::from_secs(2);
        while half_closed() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The MPM's children (a threaded MPM's have many threads; the cgid
    /// daemon has one), once none is still starting.
    pub fn worker_children(&self) -> Vec<i32> {
        self.wait_children_started();
        children_of(self.pid())
            .into_iter()
            .filter(|&c| proc_stat_field(c, 17).unwrap_or(0) > 1)
            .collect()
    }

    /// Whether the server has read everything the client at `client_port`
    /// sent (its end of the connection has nothing left to receive): the
    /// request is in a child's hands.
    pub fn has_read_request_from(&self, client_port: u16) -> bool {
        tcp_sockets().iter().any(|t| {
            t.local_port == self.port
                && t.remote_port == client_port
                && t.state == TCP_ESTABLISHED
                && t.receive_queue == 0
        })
    }

    /// httpd 2.4.71's event and worker MPMs crash a child (SIGSEGV in
    /// apr_os_sock_get) when it is stopped before it has started all its
    /// threads; seen with and without this module. Before stopping, wait
    /// (bounded) until the StartServers children (2) run their listener and
    /// 25 workers and no child is half-way there. Single-threaded children
    /// are the cgid daemon (or a child forked this instant).
    fn wait_children_started(&self) {
        if self.options.mpm == Mpm::Prefork {
            return;
        }
        let Some(parent) = self.child.as_ref().map(|c| c.id() as i32) else {
            return;
        };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            // Field 17 after the name is num_threads.
            let threads: Vec<i64> = children_of(parent)
                .iter()
                .map(|&c| proc_stat_field(c, 17).unwrap_or(0))
                .collect();
            let started = threads.iter().filter(|&&t| t >= 27).count();
            let starting = threads.iter().any(|&t| (2..27).contains(&t));
            if started >= 2 && !starting {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the server as `apachectl -k graceful-stop` does (SIGWINCH):
    /// children finish what they do and exit, which avoids the ungraceful
    /// path's crash (see `wait_connections_settled`). GracefulShutdownTimeout
    /// in the config bounds it; SIGTERM and then SIGKILL follow if not.
    pub fn stop(&mut self) {
        self.wait_children_started();
        self.wait_connections_settled();
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as i32;
            let mut exited = || child.try_wait().ok().flatten().is_some();
            for (sig, wait) in [(libc::SIGWINCH, 20), (libc::SIGTERM, 10)] {
                // SAFETY: signalling the pid of the child we started.
                unsafe { libc::kill(pid, sig) };
                let deadline = Instant::now() + Duration::from_secs(wait);
                while !exited() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if exited() {
                    return;
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again with the same root (and so the same store and key).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "stop() first");
        self.write_config();
        self.launch();
    }

    /// Lines of the error log that leak a secret or a whole session id
    /// (our lines may show at most 8 characters of an id).
    pub fn leak_lines(&self) -> Vec<String> {
        self.error_log()
            .lines()
            .filter(|l| l.contains(SECRET) || (l.contains("[rsession:") && has_hex_run(l, 32)))
            .map(str::to_string)
            .collect()
    }

    /// A figure of the `rsession-status` page served at /rsession-status
    /// (the test's config must have that location).
    pub fn status_figure(&self, key: &str) -> u64 {
        let page = http::get(&self.url("/rsession-status"), &[]);
        page.body
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(": ")?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {}", page.body))
    }

    /// Lines of the error log that mean a crash or a panic.
    pub fn crash_lines(&self) -> Vec<String> {
        self.error_log()
            .lines()
            .filter(|l| CRASH_MARKERS.iter().any(|m| l.contains(m)))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Httpd {
    fn drop(&mut self) {
        self.stop();
        let crashes = self.crash_lines();
        if std::thread::panicking() {
            eprintln!(
                "---- error log of the failed test ----\n{}",
                self.error_log()
            );
        } else if !crashes.is_empty() {
            panic!(
                "crash or panic in the error log:\n{}\n---- full log ----\n{}",
                crashes.join("\n"),
                self.error_log()
            );
        } else if !self.leak_lines().is_empty() {
            panic!(
                "a secret or a whole session id in the error log:\n{}",
                self.leak_lines().join("\n")
            );
        }
    }
}

/// True when `line` holds `n` or more lowercase hex digits in a row.
fn has_hex_run(line: &str, n: usize) -> bool {
    let mut run = 0;
    for c in line.bytes() {
        run = if c.is_ascii_digit() || (b'a'..=b'f').contains(&c) {
            run + 1
        } else {
            0
        };
        if run >= n {
            return true;
        }
    }
    false
}

/// `apache2 -t` on a config made from `fragment`: Ok(output) or Err(output).
pub fn check_config(fragment: &str) -> Result<String, String> {
    check(fragment, true)
}

/// Like `check_config`, for a fragment that loads the module itself.
pub fn check_config_without_module(fragment: &str) -> Result<String, String> {
    check(fragment, false)
}

fn check(fragment: &str, load_module: bool) -> Result<String, String> {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir(root.path().join("logs")).unwrap();
    fs::create_dir(root.path().join("htdocs")).unwrap();
    fs::create_dir(root.path().join("cgi-bin")).unwrap();
    let options = Options {
        fragment: fragment.to_string(),
        // Without our LoadModule line, the secret directive would be unknown.
        secret: load_module,
        create_always: load_module,
        ..Options::default()
    };
    let conf = root.path().join("httpd.conf");
    let mut text = config_text(root.path(), free_port(), &options);
    if !load_module {
        text = text
            .lines()
            .filter(|l| !l.starts_with("LoadModule rsession_module"))
            .collect::<Vec<_>>()
            .join("\n");
    }
    fs::write(&conf, text).unwrap();
    let out = Command::new("apache2")
        .args(["-t", "-f", conf.to_str().unwrap()])
        .output()
        .expect("apache2 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

fn config_text(root: &Path, port: u16, o: &Options) -> String {
    let root = root.display();
    let mpm = o.mpm.module();
    let cgi = match o.mpm {
        Mpm::Prefork => "LoadModule cgi_module {M}/mod_cgi.so".to_string(),
        _ => format!("LoadModule cgid_module {{M}}/mod_cgid.so\nScriptSock {root}/logs/cgid.sock"),
    };
    let extra: String = o
        .modules
        .iter()
        .map(|m| format!("LoadModule {m}_module {{M}}/mod_{m}.so\n"))
        .collect();
    let secret = if o.secret {
        format!("RSessionSecret {SECRET}")
    } else {
        String::new()
    };
    // Most tests make a session with a request that writes nothing and
    // then look at it; the OnWrite default has tests of its own, which set
    // `RSessionCreate OnWrite` where they need it. RSESSION_OLD_MODULE=1
    // leaves the line out, to run tests against a build from before the
    // directive existed and see which of them fail there.
    let create = match std::env::var_os("RSESSION_OLD_MODULE") {
        Some(_) => "",
        None if o.create_always => "RSessionCreate Always",
        None => "",
    };
    let module = module_path().display().to_string();
    let text = format!(
        r#"ServerRoot {root}
Listen 127.0.0.1:{port}
LoadModule mpm_{mpm}_module {{M}}/mod_mpm_{mpm}.so
LoadModule authz_core_module {{M}}/mod_authz_core.so
LoadModule mime_module {{M}}/mod_mime.so
LoadModule alias_module {{M}}/mod_alias.so
LoadModule headers_module {{M}}/mod_headers.so
LoadModule include_module {{M}}/mod_include.so
LoadModule rewrite_module {{M}}/mod_rewrite.so
LoadModule env_module {{M}}/mod_env.so
LoadModule dir_module {{M}}/mod_dir.so
{cgi}
{extra}LoadModule rsession_module {module}
ServerName localhost
PidFile {root}/logs/httpd.pid
ErrorLog {root}/logs/error.log
LogLevel {level}
LogFormat "%h pid=%P \"%r\" %>s sid=%{{rsession-id}}n new=%{{rsession-new}}n" rs
CustomLog {root}/logs/access.log rs
DefaultRuntimeDir {root}/logs
TypesConfig /etc/mime.types
User www-data
Group www-data
StartServers 2
Timeout 30
GracefulShutdownTimeout 10
DocumentRoot {root}/htdocs
DirectoryIndex index.html
ScriptAlias /cgi-bin/ {root}/cgi-bin/
{secret}
{create}
<Directory {root}/htdocs>
  Options +Includes
  AddOutputFilter INCLUDES .shtml
</Directory>
{fragment}
"#,
        level = o.log_level,
        fragment = o.fragment,
    );
    text.replace("{M}", MODULES)
        .replace("{ROOT}", &root.to_string())
}
