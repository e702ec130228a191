//! A real redis-server on a free loopback port, and a minimal RESP client
//! for the tests' own checks (TTL, KEYS, planting a stale lock). It can be
//! paused (a stall: connections are accepted, nothing is answered) and
//! restarted, optionally keeping its data across the restart.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    persistent: bool,
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
        let mut r = Redis {
            port: super::free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
            persistent,
        };
        r.launch();
        r
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
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (make deps installs it)");
        self.child = Some(child);
        super::wait_for("redis to answer PING", Duration::from_secs(20), || {
            (self.try_cmd(&["PING"]).ok()? == "+PONG").then_some(())
        });
    }

    pub fn url(&self, prefix: &str) -> String {
        format!(
            "redis://127.0.0.1:{}/0?prefix={prefix}&timeout=500",
            self.port
        )
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

    fn try_cmd(&self, args: &[&str]) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes())?;
        let mut reader = BufReader::new(s);
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
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
