//! Issue 8: the demo, driven in a real headless Chromium through
//! chromedriver's WebDriver protocol (plain HTTP + JSON). Skipped, saying
//! so, where Chromium or chromedriver is not installed.

mod harness;

use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

struct Killed(Child);

/// On a failure, the demo's logs: they go with its root.
struct PrintLogsOnFailure<'a>(&'a Path);

impl Drop for PrintLogsOnFailure<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in ["logs/access.log", "logs/error.log"] {
                let text = std::fs::read_to_string(self.0.join(log)).unwrap_or_default();
                eprintln!("---- the demo's {log} ----\n{text}");
            }
        }
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        // SAFETY: SIGTERM to a process this test started.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// A WebDriver session on a local chromedriver.
struct Browser {
    base: String,
    session: String,
}

fn post(url: &str, body: &Value) -> Value {
    let r = harness::http::send(
        "POST",
        url,
        &[("Content-Type", "application/json")],
        Some(&body.to_string()),
    );
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{url}: {e}: {}", r.body))
}

impl Browser {
    fn start(driver_port: u16, profile: &Path) -> Browser {
        let base = format!("http://127.0.0.1:{driver_port}");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
        }}});
        let reply = post(&format!("{base}/session"), &caps);
        let session = reply["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {reply}"))
            .to_string();
        let b = Browser { base, session };
        // Element look-ups wait for pages that are still loading.
        post(
            &b.url("/timeouts"),
            &json!({"implicit": 10_000, "pageLoad": 30_000}),
        );
        b
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{}", self.base, self.session, path)
    }

    fn go(&self, url: &str) {
        post(&self.url("/url"), &json!({ "url": url }));
    }

    /// The element's WebDriver id, or None when there is none (after the
    /// implicit wait).
    fn element(&self, css: &str) -> Option<String> {
        let v = post(
            &self.url("/element"),
            &json!({"using": "css selector", "value": css}),
        );
        v["value"]["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .map(str::to_string)
    }

    /// Waits until the element's text satisfies `ok` (pages load after a
    /// click on their own schedule).
    fn text_when(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Duration::from_secs(20);
        let end = Instant::now() + deadline;
        loop {
            if let Some(t) = self.element(css).map(|_| self.text(css)).filter(|t| ok(t)) {
                return t;
            }
            if Instant::now() >= end {
                panic!(
                    "timed out after {deadline:?} waiting for {what}: the browser shows {} with {:?}",
                    self.script("return location.href"),
                    self.script("return document.body ? document.body.innerText : ''")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn text(&self, css: &str) -> String {
        let id = self
            .element(css)
            .unwrap_or_else(|| panic!("no element {css}"));
        let r = harness::http::get(&self.url(&format!("/element/{id}/text")), &[]);
        serde_json::from_str::<Value>(&r.body).unwrap()["value"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn click(&self, css: &str) {
        let id = self
            .element(css)
            .unwrap_or_else(|| panic!("no element {css}"));
        post(&self.url(&format!("/element/{id}/click")), &json!({}));
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self
            .element(css)
            .unwrap_or_else(|| panic!("no element {css}"));
        post(
            &self.url(&format!("/element/{id}/value")),
            &json!({ "text": text }),
        );
    }

    fn script(&self, js: &str) -> Value {
        post(
            &self.url("/execute/sync"),
            &json!({"script": js, "args": []}),
        )["value"]
            .clone()
    }

    fn cookies(&self) -> Vec<Value> {
        let r = harness::http::get(&self.url("/cookie"), &[]);
        serde_json::from_str::<Value>(&r.body).unwrap()["value"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = harness::http::try_send(
            "DELETE",
            &format!("{}/session/{}", self.base, self.session),
            &[],
            None,
        );
    }
}

#[test]
fn the_demo_works_in_a_real_browser() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        eprintln!("skipped: {CHROMIUM} or {CHROMEDRIVER} is missing (make deps installs them where Debian has them)");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let demo_root = tempfile::Builder::new()
        .prefix("rsession-demo-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let port = harness::free_port();
    let demo = Killed(
        Command::new("bash")
            .arg(repo.join("apache/demo.sh"))
            .arg(port.to_string())
            .env("RSESSION_DEMO_ROOT", demo_root.path())
            .env("RSESSION_MODULE", harness::module_path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let _logs = PrintLogsOnFailure(demo_root.path());
    let site = format!("http://127.0.0.1:{port}/");
    harness::wait_for("the demo", Duration::from_secs(30), || {
        harness::http::try_send("GET", &site, &[], None)
            .ok()
            .filter(|r| r.status == 200)
    });
    // As old as a real site's files: a browser may show a page again from
    // its cache, unasked, for a tenth of its age unless told to ask.
    std::fs::File::options()
        .write(true)
        .open(demo_root.path().join("htdocs/private/index.html"))
        .and_then(|f| f.set_modified(SystemTime::now() - Duration::from_secs(86_400)))
        .unwrap();
    let driver_port = harness::free_port();
    let _driver = Killed(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    harness::wait_for("chromedriver", Duration::from_secs(30), || {
        harness::http::try_send(
            "GET",
            &format!("http://127.0.0.1:{driver_port}/status"),
            &[],
            None,
        )
        .ok()
    });
    let profile = tempfile::tempdir().unwrap();
    let b = Browser::start(driver_port, profile.path());

    b.go(&site);
    let sid = b.text("#sid");
    assert_eq!(sid.len(), 32, "the page shows the session id");
    b.go(&site);
    assert_eq!(b.text("#sid"), sid, "the browser keeps its session");
    let visits: u32 = b.text("#visits").parse().unwrap();
    assert!(visits >= 2, "the counter counts: {visits}");
    let cookie = b
        .cookies()
        .into_iter()
        .find(|c| c["name"] == "sid")
        .expect("a sid cookie");
    assert_eq!(cookie["httpOnly"], true);
    assert_eq!(
        b.script("return document.cookie.indexOf('sid=')"),
        json!(-1),
        "page script cannot read it"
    );

    // Upload a text file into the scratch directory and see it processed.
    let upload = tempfile::Builder::new().suffix(".txt").tempfile().unwrap();
    std::fs::write(upload.path(), "one two three\nfour five\n").unwrap();
    b.type_into("input[type=file]", upload.path().to_str().unwrap());
    b.click("form[action='/upload'] button");
    let stats = b.text_when(".stats", "the analysed upload", |t| t.contains("lines:"));
    assert!(
        stats.contains("lines: 2") && stats.contains("words: 5"),
        "{stats}"
    );
    assert!(b.text("#scratch").ends_with(&sid));

    // Members only: Apache sends us to sign in, and back after.
    b.go(&format!("{site}private/"));
    b.text_when("#user-none", "the sign-in page", |t| {
        t.contains("Not signed in")
    });
    b.type_into("input[name=user]", "Ann");
    b.type_into("input[name=password]", "wrong");
    b.click("#login");
    b.text_when("body", "the refusal", |t| {
        t.contains("Wrong name or password")
    });
    b.type_into("input[name=user]", "Ann");
    b.type_into("input[name=password]", "demo");
    b.click("#login");
    b.text_when("#members", "the members page", |t| {
        t.contains("Members only")
    });
    b.go(&format!("{site}private/app/"));
    assert_eq!(
        b.text_when("#remote-user", "the proxied app", |t| !t.is_empty()),
        "Ann",
        "the proxied app knows the user"
    );

    // Signed in: a new id, same data and files.
    b.go(&site);
    assert_eq!(
        b.text_when("#user", "the signed-in page", |t| !t.is_empty()),
        "Ann"
    );
    let signed_in = b.text("#sid");
    assert_ne!(signed_in, sid, "sign-in regenerates the id");
    assert!(
        b.text("#files").contains(".txt"),
        "the upload moved with the session"
    );

    // Log out everywhere: the session and its files are gone.
    b.click("#logout-all");
    b.text_when("#user-none", "the signed-out page", |t| {
        t.contains("Not signed in")
    });
    assert_ne!(b.text("#sid"), signed_in);
    let store = format!("file:{}/sessions", demo_root.path().display());
    let scratch = harness::scratch_dir_in(&demo_root.path().join("scratch"), &store, &signed_in);
    assert!(
        scratch.parent().unwrap().is_dir() && !scratch.exists(),
        "the scratch directory went with the session"
    );
    b.go(&format!("{site}private/"));
    b.text_when("#user-none", "the sign-in page again", |t| {
        t.contains("Not signed in")
    });
    drop(demo);
}
