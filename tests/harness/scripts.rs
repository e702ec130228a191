//! CGI scripts and a proxied backend that several test files use.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Prints what mod_rsession gave it: RSESSION_* and forwarded headers.
pub const ENV_CGI: &str = r#"#!/bin/sh
printf 'Content-Type: text/plain\n\n'
env | grep -E '^(RSESSION_|HTTP_X_RSESSION)' | sort
"#;

/// Reads n from the session, writes n+1 back, prints it.
pub const COUNTER_CGI: &str = r#"#!/bin/sh
n=$(printf '%s' "$RSESSION_DATA" | tr '&' '\n' | sed -n 's/^n=//p')
n=$(( ${n:-0} + 1 ))
printf 'Content-Type: text/plain\nX-RSession: set n=%s\n\n%s\n' "$n" "$n"
"#;

/// Holds its request (and so the session lock) until the test creates
/// `release` in the scratch directory; writes its parent's pid first
/// (`holder.pid`, which also says it has started; written whole, by rename,
/// so a reader never sees it empty).
pub const HOLD_CGI: &str = r#"#!/bin/sh
echo $PPID > "$RSESSION_DIR/.holder.tmp" && mv "$RSESSION_DIR/.holder.tmp" "$RSESSION_DIR/holder.pid"
while [ ! -e "$RSESSION_DIR/release" ]; do sleep 0.05; done
printf 'Content-Type: text/plain\nX-RSession: set held=done\n\nreleased\n'
"#;

/// tests/support/echo_backend.py on a port of its own, killed on drop.
pub struct Backend(Child);

impl Backend {
    pub fn start(port: u16) -> Backend {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/echo_backend.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
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
