//! A real redis-server on a free loopback port, and a minimal RESP client
//! for the tests' own checks (TTL, KEYS, planting a stale lock). It can be
//! paused (a stall: connections are accepted, nothing is answered) and
//! restarted, optionally keeping its data across the restart.

use super::wait_for;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    persistent: bool,
    /// More `redis-server` arguments (TLS, Unix socket, replication...).
    extra: Vec<String>,
    /// Who the tests' own client logs in as (`AUTH user password`).
    auth: Option<(String, String)>,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_with(false)
    }

    /// A Redis that writes its data (keys with their expiry) to disk when
    /// stopped and reads it back on `start_again`, as a production one does.
    pub fn start_persistent() -> Redis {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> Redis {
        Self::start_args(persistent, |_| Vec::new())
    }

    /// A Redis with more arguments, made from its own directory (for
    /// sockets, certificates and config files that belong to it). The
    /// directory is readable by all, so children (www-data) reach a socket
    /// in it.
    pub fn start_args(persistent: bool, extra: impl FnOnce(&Path) -> Vec<String>) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let extra = extra(dir.path());
        let mut r = Redis {
            port: super::free_port(),
            child: None,
            dir,
            persistent,
            extra,
            auth: None,
        };
        r.launch();
        r
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// From now on the tests' own client logs in as `user`.
    pub fn login_as(&mut self, user: &str, password: &str) {
        self.auth = Some((user.into(), password.into()));
    }

    fn launch(&mut self) {
        // A save point makes the shutdown on SIGTERM write the snapshot.
        let save = if self.persistent { "3600 1" } else { "" };
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                save,
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (make deps installs it)");
        self.child = Some(child);
        super::wait_for("redis to answer PING", Duration::from_secs(20), || {
            (self.try_cmd(&["PING"]).ok()? == "+PONG").then_some(())
        });
    }

    /// The store URL for this server, with a timeout long enough that a
    /// loaded machine (the suite's two threads, a build beside them) never
    /// passes for an outage; tests of stalls set their own (`url_timeout`).
    pub fn url(&self, prefix: &str) -> String {
        self.url_timeout(prefix, 3000)
    }

    pub fn url_timeout(&self, prefix: &str, millis: u64) -> String {
        format!(
            "redis://127.0.0.1:{}/0?prefix={prefix}&timeout={millis}",
            self.port
        )
    }

    /// Kills the server (SIGKILL: a crash, nothing saved, no goodbye to
    /// replicas or clients) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling the pid of the child we started.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    /// Stops the server (SIGTERM to our pid) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling the pid of the child we started (SIGCONT
            // first, so a paused server can act on the SIGTERM).
            unsafe {
                libc::kill(child.id() as i32, libc::SIGCONT);
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
    }

    /// Stalls the server (SIGSTOP): the kernel still accepts connections
    /// and buffers what clients send, but nothing is answered until
    /// `resume`, when the server runs everything it was sent meanwhile.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        let child = self.child.as_ref().expect("redis runs");
        // SAFETY: signalling the pid of the child we started.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
    }

    /// Starts again on the same port (after `stop`).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none());
        self.launch();
    }

    /// One command; the reply as its first line (`+OK`, `:12`, `$-1`, ...),
    /// with bulk strings replaced by their content.
    pub fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    pub fn try_cmd(&self, args: &[&str]) -> std::io::Result<String> {
        resp(self.port, self.auth.as_ref(), args)
    }
}

/// One command to the Redis (or sentinel) on `port`, after `AUTH` when
/// given; the reply as `Redis::cmd` describes.
pub fn resp(port: u16, auth: Option<&(String, String)>, args: &[&str]) -> std::io::Result<String> {
    let encode = |args: &[&str]| {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        req
    };
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(s);
    if let Some((user, pw)) = auth {
        reader
            .get_mut()
            .write_all(encode(&["AUTH", user, pw]).as_bytes())?;
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if !line.starts_with("+OK") {
            return Err(std::io::Error::other(format!("AUTH: {line}")));
        }
    }
    reader.get_mut().write_all(encode(args).as_bytes())?;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end().to_string();
    if let Some(len) = line.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
        let mut body = vec![0u8; len + 2];
        reader.read_exact(&mut body)?;
        return Ok(String::from_utf8_lossy(&body[..len]).into_owned());
    }
    if let Some(n) = line.strip_prefix('*').and_then(|n| n.parse::<usize>().ok()) {
        let mut items = Vec::new();
        for _ in 0..n {
            let mut head = String::new();
            reader.read_line(&mut head)?;
            let len: usize = head.trim_end().trim_start_matches('$').parse().unwrap_or(0);
            let mut body = vec![0u8; len + 2];
            reader.read_exact(&mut body)?;
            items.push(String::from_utf8_lossy(&body[..len]).into_owned());
        }
        return Ok(items.join("\n"));
    }
    Ok(line)
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A throwaway certificate authority, made with `openssl`: a server
/// certificate for 127.0.0.1/localhost, a client certificate, and a second
/// CA that signed neither.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki { dir };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            pki.openssl(
                &[
                    &["req", "-x509"][..],
                    &ec,
                    &["-days", "2", "-subj", &format!("/CN={ca}")],
                    &[
                        "-keyout",
                        &pki.file(&format!("{ca}.key")),
                        "-out",
                        &pki.file(&format!("{ca}.crt")),
                    ],
                ]
                .concat(),
            );
        }
        for (name, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            fs::write(pki.path(&format!("{name}.ext")), ext).unwrap();
            pki.openssl(
                &[
                    &["req"][..],
                    &ec,
                    &["-subj", &format!("/CN={name}")],
                    &[
                        "-keyout",
                        &pki.file(&format!("{name}.key")),
                        "-out",
                        &pki.file(&format!("{name}.csr")),
                    ],
                ]
                .concat(),
            );
            pki.openssl(&[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &pki.file(&format!("{name}.csr")),
                "-CA",
                &pki.file("ca.crt"),
                "-CAkey",
                &pki.file("ca.key"),
                "-CAcreateserial",
                "-extfile",
                &pki.file(&format!("{name}.ext")),
                "-out",
                &pki.file(&format!("{name}.crt")),
            ]);
        }
        pki
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// `ca.crt`, `other-ca.crt`, `server.crt`, `server.key`, `client.crt`,
    /// `client.key`.
    pub fn file(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// redis-server arguments for a TLS port signed by this CA (clients
    /// must show a certificate when `client_certs`).
    pub fn server_args(&self, tls_port: u16, client_certs: bool) -> Vec<String> {
        let auth = if client_certs { "yes" } else { "no" };
        [
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &self.file("server.crt"),
            "--tls-key-file",
            &self.file("server.key"),
            "--tls-ca-cert-file",
            &self.file("ca.crt"),
            "--tls-auth-clients",
            auth,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// A master, one replica and three sentinels watching them as `mymaster`
/// (quorum 2), with short timeouts so that a failover takes seconds.
pub struct SentinelFarm {
    pub master: Redis,
    pub replica: Redis,
    pub sentinels: Vec<Redis>,
}

impl SentinelFarm {
    pub fn start() -> SentinelFarm {
        let master = Redis::start();
        let m = master.port;
        let replica = Redis::start_args(false, |_| {
            vec!["--replicaof".into(), "127.0.0.1".into(), m.to_string()]
        });
        wait_for("the replica to sync", Duration::from_secs(20), || {
            replica
                .cmd(&["INFO", "replication"])
                .contains("master_link_status:up")
                .then_some(())
        });
        let sentinels: Vec<Redis> = (0..3).map(|_| Redis::start_sentinel(m)).collect();
        wait_for(
            "the sentinels to know each other and the replica",
            Duration::from_secs(30),
            || {
                sentinels
                    .iter()
                    .all(|s| {
                        // A flat list of field, value lines.
                        let info = s.cmd(&["SENTINEL", "MASTER", "mymaster"]);
                        let lines: Vec<&str> = info.lines().collect();
                        let field = |name: &str| {
                            let at = lines.iter().position(|l| *l == name)?;
                            lines.get(at + 1)?.parse::<u32>().ok()
                        };
                        field("num-slaves") >= Some(1) && field("num-other-sentinels") >= Some(2)
                    })
                    .then_some(())
            },
        );
        SentinelFarm {
            master,
            replica,
            sentinels,
        }
    }

    pub fn url(&self, params: &str) -> String {
        let nodes: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!(
            "redis-sentinel://{}/mymaster/0?prefix=t:&timeout=2000{params}",
            nodes.join(",")
        )
    }

    /// The master's port, as the sentinels see it now.
    pub fn master_port(&self) -> Option<u16> {
        let addr = self.sentinels[0]
            .try_cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"])
            .ok()?;
        addr.lines().nth(1)?.parse().ok()
    }
}

impl Redis {
    /// A sentinel watching the master on `master_port`.
    fn start_sentinel(master_port: u16) -> Redis {
        let port = super::free_port();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("sentinel.conf");
        fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n\
                 sentinel parallel-syncs mymaster 1\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel runs");
        let r = Redis {
            port,
            child: Some(child),
            dir,
            persistent: false,
            extra: Vec::new(),
            auth: None,
        };
        wait_for(
            "the sentinel to answer PING",
            Duration::from_secs(20),
            || (r.try_cmd(&["PING"]).ok()? == "+PONG").then_some(()),
        );
        r
    }
}

/// Three masters (no replicas) made into a cluster by `redis-cli --cluster
/// create`.
pub struct Cluster {
    pub nodes: Vec<Redis>,
}

impl Cluster {
    pub fn start() -> Cluster {
        let nodes: Vec<Redis> = (0..3)
            .map(|_| {
                let bus = super::free_port();
                Redis::start_args(false, |dir| {
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        &bus.to_string(),
                        "--cluster-config-file",
                        &dir.join("nodes.conf").display().to_string(),
                        "--cluster-node-timeout",
                        "2000",
                    ]
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
                })
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        wait_for("the cluster to be ready", Duration::from_secs(30), || {
            nodes
                .iter()
                .all(|n| n.cmd(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
                .then_some(())
        });
        Cluster { nodes }
    }

    pub fn url(&self, params: &str) -> String {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!(
            "redis-cluster://{}?prefix=t:&timeout=3000{params}",
            addrs.join(",")
        )
    }

    /// Session records on each node.
    pub fn records_per_node(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .map(|n| {
                n.cmd(&["KEYS", "t:{????????????????????????????????}"])
                    .lines()
                    .count()
            })
            .collect()
    }
}
