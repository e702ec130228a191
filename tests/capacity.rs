//! Issue 13: a ceiling on kept sessions, and figures that stay true (and
//! cheap) at any size and across restarts.

mod harness;

use harness::http::{get, get_with_cookie};
use harness::scripts::ENV_CGI;
use harness::{Httpd, Mpm, Options};

const STATUS: &str = "<Location /rsession-status>\n  SetHandler rsession-status\n</Location>";

fn records(h: &Httpd) -> usize {
    std::fs::read_dir(h.path("logs/rsession"))
        .unwrap()
        .flatten()
        .filter(|shard| shard.path().is_dir())
        .flat_map(|shard| std::fs::read_dir(shard.path()).unwrap().flatten())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.len() == 32 && name.bytes().all(|c| c.is_ascii_hexdigit())
        })
        .count()
}

#[test]
fn a_session_ceiling_refuses_new_sessions_while_existing_ones_work() {
    let h = Httpd::start(Options {
        fragment: format!(
            "RSessionMaxSessions 5\n<Location /cgi-bin/>\n  RSession On\n</Location>\n{STATUS}"
        ),
        ..Options::default()
    });
    h.cgi("env.cgi", ENV_CGI);
    let cookies: Vec<String> = (0..5)
        .map(|_| get(&h.url("/cgi-bin/env.cgi"), &[]).cookie_pair())
        .collect();
    for _ in 0..20 {
        let flood = get(&h.url("/cgi-bin/env.cgi"), &[]);
        assert_eq!(flood.status, 503, "{flood:?}");
        assert!(flood.header("Retry-After").is_some());
        assert!(flood.set_cookie().is_none());
    }
    assert_eq!(records(&h), 5, "the flood kept nothing");
    for cookie in &cookies {
        let r = get_with_cookie(&h.url("/cgi-bin/env.cgi"), cookie);
        assert_eq!(r.status, 200);
        assert_eq!(r.env("RSESSION_NEW").as_deref(), Some("0"));
    }
    assert_eq!(h.status_figure("live_sessions"), 5);
    let warnings = h.error_log().matches("RS0015").count();
    assert!(
        (1..=2).contains(&warnings),
        "one rate-limited warning per process, not one per request: {warnings}"
    );
}

#[test]
fn counters_and_the_live_count_survive_graceful_restarts() {
    let mut h = Httpd::start(Options {
        mpm: Mpm::Prefork,
        fragment: format!(
            "StartServers 3\nMinSpareServers 3\n<Location /cgi-bin/>\n  RSession On\n</Location>\n{STATUS}"
        ),
        ..Options::default()
    });
    h.cgi("env.cgi", ENV_CGI);
    let cookie = get(&h.url("/cgi-bin/env.cgi"), &[]).cookie_pair();
    for _ in 0..2 {
        get(&h.url("/cgi-bin/env.cgi"), &[]);
    }
    assert_eq!(h.status_figure("created"), 3);
    h.graceful();
    get_with_cookie(&h.url("/cgi-bin/env.cgi"), &cookie);
    assert_eq!(
        h.status_figure("created"),
        3,
        "graceful restarts keep the counters"
    );
    assert_eq!(h.status_figure("resumed"), 1);
    assert_eq!(h.status_figure("live_sessions"), 3);
    h.restart();
    assert_eq!(h.status_figure("created"), 3, "and so do full restarts");
    assert_eq!(h.status_figure("live_sessions"), 3);
}
