//! Glue between httpd and the session logic: reads a request into plain
//! values, calls `session`, writes the results back (notes, environment,
//! headers, cookies). Called from the entry points in `crate::module`; no
//! `unsafe` here: `ffi` provides the safe wrappers.

use crate::config::{is_server_directive, DirConfig, ServerConfig};
use crate::cookie::{cookie_value, private_cache_control, signed_ids, Candidates};
use crate::error::ConfigError;
use crate::ffi::body::BodyError;
use crate::ffi::cmd::Directive;
use crate::ffi::config::Merge;
use crate::ffi::log::{rlog, slog, Level, ServerLog};
use crate::ffi::pool::Pool;
use crate::ffi::request::{FirstOutput, OutFilter, PoolText, Request};
use crate::ffi::server::{child_user, is_first_startup_pass, is_root, runtime_dir_path, Server};
use crate::ffi::shm::SharedCounters;
use crate::ffi::sys;
use crate::gc::{self, Sweeper, Target};
use crate::generation::{Builder, HostDefaults, Runtime};
use crate::id::SessionId;
use crate::interim::Event;
use crate::safe_fs::{Owner, Setup};
use crate::session::{ActiveSession, CookieChange, Notes, Outcome, SessionError};
use crate::status::{Counter, Stats};
use crate::store::{SessionStore, StoreError};
use crate::update;
use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::{c_int, CStr};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

const OK: c_int = sys::STATUS_OK;
const DECLINED: c_int = sys::STATUS_DECLINED;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the initial request of a chain holds: its session, or the status
/// with which getting one failed (so ErrorDocument redirects do not retry).
pub enum RequestState {
    Active(Box<RequestSession>),
    Failed(c_int),
}

/// A session with what it needs to finish: the runtime of its generation
/// and the config of the request that began it.
pub struct RequestSession {
    runtime: Arc<Runtime>,
    dir: DirConfig,
    session: ActiveSession,
    /// The save failed and the response became this error status: what the
    /// handler still writes is dropped.
    save_failed: Option<c_int>,
}

/// The chain's state, on its initial request (subrequests and redirects
/// share it).
struct ChainState(RefCell<RequestState>);

/// The state of a session a subrequest looked at on its own, for its
/// authorization only (the chain had none yet).
struct PeekState(RefCell<RequestState>);

/// The session state kept on `initial`, if any. Call it with `initial()`:
/// subrequests and redirects share the initial request's.
fn session_state(initial: Request<'_>) -> Option<&RefCell<RequestState>> {
    initial.slot::<ChainState>().map(|s| &s.0)
}

/// Keeps the chain's state on `initial`; dropped (unlocking the session)
/// when its pool goes, after logging, even on aborts.
fn set_session_state(initial: Request<'_>, state: RequestState) -> &RefCell<RequestState> {
    &initial.set_slot(ChainState(RefCell::new(state))).0
}

/// The session this (sub)request looked at on its own, if any. Kept on
/// this request_rec only: a subrequest's internal redirect (an included
/// CGI's local `Location:`) looks again with its own location's config.
fn session_peek(r: Request<'_>) -> Option<&RefCell<RequestState>> {
    r.slot::<PeekState>().map(|s| &s.0)
}

fn set_session_peek(r: Request<'_>, state: RequestState) -> &RefCell<RequestState> {
    &r.set_slot(PeekState(RefCell::new(state))).0
}

/// The answers `Require rsession` lines gave on the chain's session while
/// it was read without its lock (see `is_peeked`), kept
/// on the initial request: a handler that turns out to need the lock is
/// let in only if each line answers the same under it.
/// The lines are shared with the config (see `parse_require`), so
/// keeping one costs no copy on the static files it guards.
#[derive(Default)]
struct PeekedAnswers(RefCell<Vec<PeekedAnswer>>);

struct PeekedAnswer {
    /// The main request (initial or redirect) whose authorization asked:
    /// an error document is not let in on its failing request's answers.
    asked_by: *const sys::request_rec,
    terms: Arc<[crate::auth::Term]>,
    held: bool,
}

fn remember_peeked_answer(r: Request<'_>, terms: &Arc<[crate::auth::Term]>, held: bool) {
    let initial = r.initial();
    let answers = match initial.slot::<PeekedAnswers>() {
        Some(answers) => answers,
        None => initial.set_slot(PeekedAnswers::default()),
    };
    answers.0.borrow_mut().push(PeekedAnswer {
        asked_by: r.as_ptr(),
        terms: Arc::clone(terms),
        held,
    });
}

impl Drop for RequestSession {
    /// The pool cleanup path (the output filter never ran, e.g. an aborted
    /// client): save what was changed through the C API, then unlock.
    fn drop(&mut self) {
        if !self.session.is_finished() {
            let _ = self.session.finish(&self.runtime, &self.dir, now());
        }
    }
}

// ---- configuration --------------------------------------------------------

/// What our server config slot holds: the parsed directives, and the
/// runtime built from them in post_config (same pool, same generation).
#[derive(Default)]
pub struct ServerState {
    pub conf: ServerConfig,
    pub runtime: OnceLock<Arc<Runtime>>,
}

impl Merge for ServerState {
    /// A virtual host's directives over the main server's; its runtime is
    /// built afresh in post_config.
    fn merge(base: &ServerState, add: &ServerState) -> ServerState {
        ServerState {
            conf: ServerConfig::merge(&base.conf, &add.conf),
            ..Default::default()
        }
    }
}

impl Merge for DirConfig {
    fn merge(base: &DirConfig, add: &DirConfig) -> DirConfig {
        DirConfig::merge(base, add)
    }
}

fn server_state(r: Request<'_>) -> &ServerState {
    r.server().config::<ServerState>()
}

/// The argument as UTF-8 (configs are text; anything else is refused).
/// Such a value is not repeated in the error: it may be a secret or a
/// URL with a password, saved in another encoding.
fn argument<'a>(name: &str, arg: Option<&'a CStr>) -> Result<&'a str, ConfigError> {
    let Some(raw) = arg else {
        return Err(ConfigError::new(name, "", "a value"));
    };
    raw.to_str().map_err(|_| {
        ConfigError::new(
            name,
            "(not shown)",
            "UTF-8 text (the config file holds other bytes on this line)",
        )
    })
}

/// Every `RSession*` line: applies it to the container's DirConfig or the
/// server's config.
pub fn directive(
    directive: &Directive<'_>,
    dir: Option<&mut DirConfig>,
    arg: Option<&CStr>,
) -> Result<(), ConfigError> {
    let name = directive.name.as_str();
    let arg = argument(name, arg)?;
    if is_server_directive(name) {
        let is_virtual = directive.server.is_virtual();
        return directive
            .server
            .config_mut::<ServerState>()
            .conf
            .set(name, arg, is_virtual);
    }
    match dir {
        Some(dir) => dir.set(name, arg),
        None => Err(ConfigError::new(
            name,
            arg,
            "a container mod_rsession configures",
        )),
    }
}

/// `Require rsession …` in a section: its requests resolve the session
/// early (see `access_checker`).
pub fn mark_authz_section(dir: &mut DirConfig) {
    dir.uses_authz = Some(true);
}

// ---- startup --------------------------------------------------------------

/// Builds each server's runtime (store, keys, scratch root) and prepares
/// its directories for `User` (`safe_fs::Setup`: never through a link,
/// handing over only what it creates; a link or a foreign directory where
/// a root should be fails the start). Skips the first startup pass, whose
/// config is thrown away.
pub fn post_config(ptemp: Pool<'_>, main: Server<'_>) -> c_int {
    if is_first_startup_pass() {
        return OK;
    }
    let host = HostDefaults {
        store_dir: runtime_dir_path(ptemp, "rsession"),
        scratch_root: runtime_dir_path(ptemp, "rsession-scratch"),
        key_file: runtime_dir_path(ptemp, "rsession.key"),
    };
    // Counters in memory shared by every child (else per child).
    // Counters in memory shared by every child and kept across restarts
    // (else per child and generation).
    let process = main.process_pool();
    let mut builder = Builder::with_stats(Box::new(move |store: &str| {
        process
            .and_then(|p| SharedCounters::persistent(p, store, crate::status::SLOTS).ok())
            .and_then(|shm| Stats::in_slots(Box::new(shm)))
            .unwrap_or_default()
    }));
    // The owner of the roots: `User` when the parent runs as root.
    let setup = Setup::new(if is_root() {
        let (uid, gid) = child_user();
        Owner { uid, gid }
    } else {
        Owner::current()
    });
    let mut prepared: HashSet<String> = HashSet::new();
    // The scratch root's group is one: two groups on one root would take
    // it from each other at every start.
    let mut root_groups: std::collections::HashMap<std::path::PathBuf, u32> =
        std::collections::HashMap::new();
    for server in main.iter() {
        let state = server.config::<ServerState>();
        let runtime = match builder.build(&state.conf, &host, &server.name()) {
            Ok(rt) => rt,
            Err(msg) => {
                slog!(
                    server,
                    Level::Emerg,
                    "RS0001 cannot start sessions for {}: {msg}",
                    server.name()
                );
                return sys::HTTP_INTERNAL_SERVER_ERROR as c_int;
            }
        };
        // Virtual hosts sharing a store or a scratch root prepare it once.
        let mut prepare = |what: String, step: &dyn Fn() -> Result<Vec<String>, String>| {
            if !prepared.insert(what) {
                return true;
            }
            match step() {
                Ok(repaired) => {
                    for line in repaired {
                        slog!(server, Level::Warning, "RS0050 {line}");
                    }
                    true
                }
                Err(e) => {
                    slog!(
                        server,
                        Level::Emerg,
                        "RS0002 cannot prepare {e}; not starting"
                    );
                    false
                }
            }
        };
        if let Some(gid) = runtime.scratch.group() {
            let root = runtime.scratch.root().to_path_buf();
            if *root_groups.entry(root.clone()).or_insert(gid) != gid {
                slog!(
                    server,
                    Level::Emerg,
                    "RS0002 cannot prepare {}: another server gives this scratch root another \
                     RSessionScratchGroup; give each group its own RSessionScratchRoot",
                    root.display()
                );
                return sys::HTTP_INTERNAL_SERVER_ERROR as c_int;
            }
        }
        let store_ready = prepare(format!("store {}", runtime.store.describe()), &|| {
            runtime.store.prepare_local(&setup)
        });
        let scratch_ready = store_ready
            && prepare(
                format!("scratch {}", runtime.scratch.store_dir().display()),
                &|| prepare_scratch(&setup, &runtime.scratch),
            );
        if !scratch_ready {
            return sys::HTTP_INTERNAL_SERVER_ERROR as c_int;
        }
        slog!(
            server,
            Level::Debug,
            "sessions for {}: store {}, scratch {}",
            server.name(),
            runtime.store.describe(),
            runtime.scratch.root().display()
        );
        // A fresh ServerState per generation: set exactly once.
        let _ = state.runtime.set(Arc::new(runtime));
    }
    OK
}

/// The scratch root, and with `RSessionScratchGroup` this store's shared
/// part of it (made here, by the parent: a child cannot give a directory
/// to a group it is not in).
fn prepare_scratch(
    setup: &Setup,
    scratch: &crate::scratch::ScratchRoot,
) -> Result<Vec<String>, String> {
    let root = setup.root(scratch.root())?;
    let (Some(gid), Some(tag)) = (scratch.group(), scratch.store_dir().file_name()) else {
        return Ok(Vec::new());
    };
    let inner: Vec<String> = crate::scratch::shard_names()
        .chain([crate::scratch::REAP_DIR.to_string()])
        .collect();
    root.shared_subtree(&tag.to_string_lossy(), gid, &inner)
}

/// Starts this child's sweeper (stopped and joined when the child's pool
/// goes), for every distinct store of every server.
pub fn child_init(pchild: Pool<'_>, main: Server<'_>) {
    let Some(main_rt) = main.config::<ServerState>().runtime.get() else {
        return;
    };
    // Registered before the sweeper, so it runs after it (cleanups run in
    // reverse): the stores' background work ends with the child. The
    // runtimes live in pconf, which a child never destroys.
    let mut stores: Vec<Arc<dyn SessionStore>> = Vec::new();
    for rt in main
        .iter()
        .filter_map(|s| s.config::<ServerState>().runtime.get())
    {
        if !stores.iter().any(|s| Arc::ptr_eq(s, &rt.store)) {
            stores.push(rt.store.clone());
        }
    }
    pchild.attach(StopAtChildExit(stores));
    if main_rt.gc_interval.is_zero() {
        return;
    }
    let mut targets: Vec<Target> = Vec::new();
    for server in main.iter() {
        let Some(rt) = server.config::<ServerState>().runtime.get() else {
            continue;
        };
        let known = targets
            .iter()
            .any(|t| Arc::ptr_eq(&t.store, &rt.store) && t.scratch.root() == rt.scratch.root());
        if !known {
            targets.push(Target {
                store: rt.store.clone(),
                scratch: rt.scratch.clone(),
                stats: rt.stats.clone(),
            });
        }
    }
    let log = ServerLog::new(main);
    // Sweeping records can wait, requests cannot: the threads that do it
    // take only CPU time nothing else wants (where the policy cannot be
    // had, they run at normal priority).
    crate::store::set_sweep_thread_setup(|| {
        let _ = crate::ffi::process::run_this_thread_when_idle();
    });
    let started = Sweeper::start(targets, main_rt.gc_interval, move |event| match event {
        gc::Event::Begun(store) => {
            log.log(Level::Debug, &format!("RS0150 sweep of {store} begins"))
        }
        gc::Event::Pass(report) => log.log(Level::Info, &format!("RS0040 {report}")),
        gc::Event::Unremovable(what) => log.log(
            Level::Warning,
            &format!("RS0051 the sweeper cannot remove the {what} (reported once)"),
        ),
        gc::Event::Failed(why) => log.log(Level::Err, &format!("RS0041 {why}")),
        gc::Event::RefusedAsRoot => log.log(
            Level::Err,
            "RS0042 the sweeper does not run as root; set User",
        ),
    });
    match started {
        Ok(sweeper) => {
            pchild.attach(sweeper);
        }
        Err(e) => slog!(
            main,
            Level::Err,
            "RS0043 cannot start the session sweeper: {e}"
        ),
    }
}

/// Stops the stores' background work when the child's pool goes.
struct StopAtChildExit(Vec<Arc<dyn SessionStore>>);

impl Drop for StopAtChildExit {
    fn drop(&mut self) {
        for store in &self.0 {
            store.stop_background();
        }
    }
}

/// The MPM is stopping this child. Ungracefully (stop, full restart), its
/// workers must end soon: lock waits end at once with 503. Gracefully, it
/// serves the requests it has, and those may wait for their lock as usual.
pub fn child_stopping(main: Option<Server<'_>>, graceful: bool) {
    if !graceful {
        crate::lock::abandon_waits();
    }
    if let Some(main) = main {
        let what = if graceful {
            "child stopping gracefully: its requests may still wait for session locks"
        } else {
            "child stopping: requests waiting for a session lock end with 503"
        };
        slog!(main, Level::Debug, "{what}");
    }
}

/// When the parent last started a reaper for each `.reap`, and how many
/// directories waited then.
static REAPER_STARTS: parking_lot::Mutex<
    std::collections::BTreeMap<std::path::PathBuf, Option<(std::time::Instant, usize)>>,
> = parking_lot::Mutex::new(std::collections::BTreeMap::new());

/// In the parent, about every ten seconds: when a store shared with
/// `RSessionScratchGroup` has directories waiting in `.reap`, starts a
/// reaper for them (`reaper.rs`; one at a time, by its lock).
pub fn monitor(main: Server<'_>) -> c_int {
    let (user, user_gid) = if is_root() {
        child_user()
    } else {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    };
    let mut jobs: Vec<crate::reaper::ReapJob> = Vec::new();
    for rt in main
        .iter()
        .filter_map(|s| s.config::<ServerState>().runtime.get())
    {
        let (Some(gid), Some(tag)) = (rt.scratch.group(), rt.scratch.store_dir().file_name())
        else {
            continue;
        };
        let job = crate::reaper::ReapJob {
            root: rt.scratch.root().to_path_buf(),
            tag: tag.to_os_string(),
            gid,
            user,
        };
        if jobs.contains(&job) {
            continue;
        }
        let waiting = crate::reaper::pending(&job);
        let mut starts = REAPER_STARTS.lock();
        let last = starts.entry(job.reap_dir()).or_default();
        if crate::reaper::due(last, waiting, std::time::Instant::now()) {
            jobs.push(job);
        }
    }
    if jobs.is_empty() {
        return OK;
    }
    let started = crate::ffi::process::spawn_detached(main.error_log_fd(), || {
        let as_owner = |uid: u32,
                        dir: std::os::fd::BorrowedFd<'_>,
                        name: &std::ffi::OsStr,
                        mark: crate::safe_fs::Mark| {
            // User keeps its own groups (it need not be in the group);
            // a member acts with the group alone.
            let groups = if uid == user {
                crate::reaper::login_groups(uid, user_gid)
            } else {
                vec![mark.gid]
            };
            crate::ffi::process::as_owner(uid, &groups, dir, name, |dir, name| {
                let stop = std::sync::atomic::AtomicBool::new(false);
                let _ = crate::safe_fs::remove_marked_tree_at(dir, name, mark, &stop);
            })
        };
        for line in crate::reaper::run(&jobs, &as_owner) {
            slog!(main, Level::Warning, "{line}");
        }
    });
    if let Err(e) = started {
        slog!(
            main,
            Level::Warning,
            "RS0141 cannot start the scratch reaper: {e}"
        );
    }
    OK
}

// ---- requests --------------------------------------------------------------

/// Marks a directory's request whose session `fixups` left to
/// `fixups_after_index`.
struct AfterIndex;

/// The last fixups: a directory's request, now its index file's (or still
/// the directory's, for a listing), gets its session as any other request
/// would: a static index file reads it without waiting for its lock, a
/// script gets it locked.
pub fn fixups_after_index(r: Request<'_>) -> c_int {
    if r.is_main() && r.slot::<AfterIndex>().is_some() {
        fixups(r)
    } else {
        DECLINED
    }
}

/// Loads or creates the session before any handler runs, and exposes it.
pub fn fixups(r: Request<'_>) -> c_int {
    let Some(dir) = r.dir_config::<DirConfig>() else {
        return DECLINED;
    };
    if dir.enabled() {
        // Client-sent X-RSession-* headers and update commands (however
        // spelt) could pass for ours downstream (mod_headers' fixups come
        // next).
        strip_client_session_headers(r, dir);
    }
    if r.is_main() && r.is_directory() && r.slot::<AfterIndex>().is_none() {
        // Which file (static, or a script) serves the directory is known
        // only after mod_dir: decided then (fixups_after_index), under the
        // index file's settings (`<FilesMatch \.php$>` may be where
        // sessions are on).
        r.set_slot(AfterIndex);
        return DECLINED;
    }
    if !dir.enabled() {
        return DECLINED;
    }

    let initial = r.initial();
    let mut relocked = false;
    if r.is_main() && !r.is_static_file() && is_peeked(initial) {
        // The chain's session was read without its lock: taken as a static
        // file's, but this request's handler is not the core's (found after
        // authorization, AddHandler; or reached by an internal redirect
        // from the file: mod_actions, a type map, ErrorDocument), or read
        // so for the authorization of a request with a body. The handler
        // gets the session locked, as everywhere else: the same session,
        // under the chain's settings (those it was read with), whatever
        // cookie this request's location names.
        if let Some((id, chain_dir, runtime)) = peeked_session(initial) {
            if r.is_error_redirect() {
                // An error document answers for a request refused or
                // failed: that request's body is not its to read, and
                // reading it under the lock would let a trickling client
                // hold the lock.
                if r.has_body() && !r.body_is_spooled() {
                    r.discard_body();
                }
            } else if let Err(status) = spool_body(r, &chain_dir, &runtime) {
                return status;
            }
            let again = Candidates {
                signed: vec![id],
                rejected: 0,
            };
            let fresh = begin_with(r, &chain_dir, &runtime, &again, true);
            if let RequestState::Failed(status) = fresh {
                // The lock timed out or the store failed: the handler must
                // not run on the session read without its lock, nor without
                // one (its changes would be dropped behind a 200).
                replace_chain_session(initial, fresh);
                return status;
            }
            // The request itself was authorized (a handler known only
            // afterwards, a body): if the session changed in between,
            // httpd's authorization decides again, on the locked session.
            // Past an internal redirect only this request's lines could be
            // asked again, not those of the requests before it: any change
            // of what they were decided on refuses.
            let same_request = r.as_ptr() == initial.as_ptr();
            let changed = same_request
                && session_state(initial)
                    .is_some_and(|s| s.try_borrow().is_ok_and(|s| session_changed(&s, &fresh)));
            let stale =
                !same_request && (user_changed(r, dir, &fresh) || answers_changed(r, &fresh));
            relocked = true;
            replace_chain_session(initial, fresh);
            if changed {
                if let Err(status) = authorize_on_locked_session(r, dir, initial) {
                    return status;
                }
            }
            if stale {
                // Authorization let in a user the locked session no longer
                // names (signed out meanwhile), or on data it no longer
                // holds (a role taken away): its decision does not hold.
                rlog!(
                    r,
                    Level::Info,
                    "the session changed between authorization and the handler (its user, or a Require rsession line's answer); answering 403"
                );
                return sys::HTTP_FORBIDDEN as c_int;
            }
        }
    }
    let state = match session_state(initial) {
        Some(state) => state,
        None => {
            let Some(runtime) = server_state(r).runtime.get() else {
                rlog!(r, Level::Err, "RS0003 sessions are not initialised for this server; request served without one");
                return DECLINED;
            };
            // A lookup subrequest (mod_negotiation, mod_dir) before the main
            // request's own fixups must not decide the chain's session.
            if !r.is_main() {
                return DECLINED;
            }
            if r.is_static_file() {
                match begin_static(r, dir, runtime) {
                    Some(state) => set_session_state(initial, state),
                    None => return DECLINED,
                }
            } else {
                if let Err(status) = spool_body(r, dir, runtime) {
                    return status;
                }
                set_session_state(initial, begin(r, dir, runtime))
            }
        }
    };
    let state = state.borrow();
    match &*state {
        RequestState::Active(rs) => {
            if relocked && r.user().is_none() {
                // Let in without a user, and signed in since: the handler
                // sees the user its session now names.
                set_user(r, dir, &rs.session);
            }
            expose(r, dir, &rs.session);
            if !rs.session.is_finished() && !rs.session.is_read_only() {
                // Interim responses bypass request filters: watch the
                // connection until the final response begins. (A static
                // file sends none.)
                let header = own_update_header(r, &rs.dir).unwrap_or(rs.dir.update_header());
                r.interim_watch().arm(initial, header);
            }
            OK
        }
        // Only the initial request reports the failure; ErrorDocument and
        // other redirects go on without a session.
        // Authorization let the file through without its session (a
        // section that grants all): served as any static file whose
        // session cannot be read.
        RequestState::Failed(_) if r.is_static_file() => DECLINED,
        RequestState::Failed(status) if r.as_ptr() == initial.as_ptr() => *status,
        RequestState::Failed(_) => DECLINED,
    }
}

/// Removes the request headers a client could pass off downstream as the
/// module's (`expose::is_client_session_header`).
fn strip_client_session_headers(r: Request<'_>, dir: &DirConfig) {
    let update = dir.update_header();
    let ours = |name: &[u8]| crate::expose::is_client_session_header(name, update);
    r.headers_in().unset_where(ours);
    // A chunked body's trailers (merged into the headers with
    // `MergeTrailers on`) arrive once the body was read.
    r.trailers_in().unset_where(ours);
}

/// Reads the request body before the session's lock is taken, so a slow
/// or stalled upload keeps no other request of the session waiting, and
/// hands it to the handler from there (memory, or an unnamed file in the
/// scratch root). Without locking there is nothing to protect.
/// Only for the body's own request: the chain's initial one, or where a
/// file handed it on (mod_actions, a type map); not for an error document,
/// whose request was refused or failed (its body may be what failed).
fn spool_body(r: Request<'_>, dir: &DirConfig, runtime: &Runtime) -> Result<(), c_int> {
    if !dir.lock() || !r.is_main() || r.is_error_redirect() || !r.has_body() {
        return Ok(());
    }
    if r.body_is_spooled() {
        return Ok(()); // read by a request this one was redirected from
    }
    let mut spool = crate::body::Spool::new();
    let spool_dir = runtime.scratch.root();
    match r.read_body(|piece| spool.write(piece, spool_dir)) {
        Ok(()) => {
            rlog!(
                r,
                Level::Debug,
                "request body of {} bytes read before locking the session",
                spool.len()
            );
            r.replay_body(spool);
            // Its trailers came with it, after the first pass.
            strip_client_session_headers(r, dir);
            Ok(())
        }
        Err(BodyError::Client(status)) => Err(status),
        Err(BodyError::Keep(e)) => {
            rlog!(
                r,
                Level::Err,
                "RS0016 cannot keep the request body in {} ({e}); answering 503",
                spool_dir.display()
            );
            r.err_headers_out().set("Retry-After", "1");
            Err(sys::HTTP_SERVICE_UNAVAILABLE as c_int)
        }
    }
}

/// The signed session ids among the request's cookies.
fn cookie_candidates(r: Request<'_>, dir: &DirConfig, runtime: &Runtime) -> Candidates {
    let cookies = r.headers_in().get_all("Cookie");
    signed_ids(
        cookies.iter().map(|c| c.as_ref()),
        dir.cookie_name(),
        &runtime.keys,
    )
}

/// A static file sees its session read-only and never waits for its lock;
/// without a valid session it gets none (and makes none). If the store
/// cannot be read, the file is served without a session.
fn begin_static(r: Request<'_>, dir: &DirConfig, runtime: &Arc<Runtime>) -> Option<RequestState> {
    let found = cookie_candidates(r, dir, runtime);
    match ActiveSession::begin_read_only(runtime, dir, &found, now()) {
        Ok(session) => session.map(|session| {
            RequestState::Active(Box::new(RequestSession {
                runtime: runtime.clone(),
                dir: dir.clone(),
                session,
                save_failed: None,
            }))
        }),
        // Where the session may decide who sees the file, an outage cannot
        // mean "no user": that would send signed-in visitors to sign in.
        // Whether it does is up to authorization (see check_authn).
        Err(e) if e.http_status() == 503 && session_guards_access(r, dir) => {
            store_unavailable(r, runtime, &e);
            Some(RequestState::Failed(503))
        }
        Err(e) => {
            rlog!(
                r,
                Level::Debug,
                "static file served without its session: {e}"
            );
            None
        }
    }
}

fn begin(r: Request<'_>, dir: &DirConfig, runtime: &Arc<Runtime>) -> RequestState {
    let found = cookie_candidates(r, dir, runtime);
    begin_with(r, dir, runtime, &found, false)
}

/// Resumes, locked, the first session of `found` the store knows, or
/// creates one. `relock`: `found` is the session the chain read without its
/// lock (and counted as resumed then).
fn begin_with(
    r: Request<'_>,
    dir: &DirConfig,
    runtime: &Arc<Runtime>,
    found: &Candidates,
    relock: bool,
) -> RequestState {
    let mut notes = Notes::default();
    let result = if relock {
        ActiveSession::begin_locked(runtime, dir, found, now(), &mut notes)
    } else {
        ActiveSession::begin(runtime, dir, found, now(), &mut notes)
    };
    for what in notes.corrupt {
        rlog!(
            r,
            Level::Warning,
            "RS0010 unreadable session record ({what}); issuing a fresh session"
        );
    }
    if found.rejected > 0 {
        rlog!(
            r,
            Level::Debug,
            "rejected {} session cookie(s) that were malformed or badly signed",
            found.rejected
        );
    }
    let e = match result {
        Ok(session) => {
            // A new session nothing was written to yet has not been to the
            // store (unless a cookie was looked up there): no news of it.
            if !found.signed.is_empty() || session.is_kept() || session.is_locked() {
                store_answered(r, runtime);
            }
            let what = if session.is_new() {
                "created"
            } else {
                "resumed"
            };
            rlog!(
                r,
                Level::Debug,
                "session {}... {what}",
                session.id().short()
            );
            if let Some(wait) = session.lock_wait() {
                rlog!(
                    r,
                    Level::Debug,
                    "session {}... waited {:.3} s for its lock",
                    session.id().short(),
                    wait.as_secs_f64()
                );
            }
            return RequestState::Active(Box::new(RequestSession {
                runtime: runtime.clone(),
                dir: dir.clone(),
                session,
                save_failed: None,
            }));
        }
        Err(e) => e,
    };
    session_failed(r, dir, runtime, e)
}

/// The chain's session of a request whose body authorization must not wait
/// for: with a validly signed cookie and a body, the session is read
/// without its lock, and the body only once the request is let in (fixups
/// then reads it, takes the lock and checks that what authorization saw
/// still holds). A client refused here never has its body kept.
fn begin_for_authorization(
    r: Request<'_>,
    dir: &DirConfig,
    runtime: &Arc<Runtime>,
) -> RequestState {
    let found = cookie_candidates(r, dir, runtime);
    // Without a signed cookie, a new session: nobody else knows its id to
    // wait for its lock.
    if !dir.lock() || !r.has_body() || found.signed.is_empty() {
        return begin_with(r, dir, runtime, &found, false);
    }
    match ActiveSession::begin_read_only(runtime, dir, &found, now()) {
        Ok(Some(session)) => {
            store_answered(r, runtime);
            rlog!(
                r,
                Level::Debug,
                "session {}... read for authorization; its lock and the request body wait until the request is let in",
                session.id().short()
            );
            RequestState::Active(Box::new(RequestSession {
                runtime: runtime.clone(),
                dir: dir.clone(),
                session,
                save_failed: None,
            }))
        }
        // No live session behind the cookie: a new one.
        Ok(None) => begin_with(r, dir, runtime, &found, false),
        Err(e) => session_failed(r, dir, runtime, e),
    }
}

/// Logs why `r` has no session and what it is answered.
fn session_failed(
    r: Request<'_>,
    dir: &DirConfig,
    runtime: &Runtime,
    e: SessionError,
) -> RequestState {
    let status = e.http_status();
    if status == 503 {
        r.err_headers_out().set("Retry-After", "1");
    }
    if matches!(e, SessionError::Store(_)) {
        runtime.stats.bump(Counter::StoreErrors);
    }
    if let SessionError::LockTimeout(id) = &e {
        log_lock_timeout(r, dir, id);
    } else if matches!(e, SessionError::StoreFull(_)) {
        if runtime.full_warning_due(now()) {
            rlog!(r, Level::Warning, "RS0015 {e}: answering 503 (this warning repeats at most once a minute per process)");
        }
    } else if !matches!(e, SessionError::Store(StoreError::Unavailable(_))) {
        rlog!(
            r,
            Level::Err,
            "RS0011 no session for this request ({e}); answering {status}"
        );
    } else {
        store_unavailable(r, runtime, &e);
    }
    RequestState::Failed(status as c_int)
}

/// The store answered: the end of an outage is logged once.
fn store_answered(r: Request<'_>, runtime: &Runtime) {
    if runtime.outage_ended() {
        rlog!(
            r,
            Level::Notice,
            "RS0013 session store {} is reachable again",
            runtime.store.describe()
        );
    }
}

/// One line per outage and process, not one per request.
fn store_unavailable(r: Request<'_>, runtime: &Runtime, e: &SessionError) {
    if runtime.outage_began() {
        rlog!(
            r,
            Level::Err,
            "RS0012 session store {} unavailable ({e}); answering 503 until it is back",
            runtime.store.describe()
        );
    } else {
        rlog!(r, Level::Debug, "session store still unavailable: {e}");
    }
}

/// Lock timeouts come in bursts (every request of a stuck session): one
/// warning per session and minute per process, with how many were held back.
fn log_lock_timeout(r: Request<'_>, dir: &DirConfig, id: &SessionId) {
    static LIMIT: std::sync::LazyLock<crate::ratelimit::Limiter<SessionId>> =
        std::sync::LazyLock::new(|| crate::ratelimit::Limiter::new(60));
    if !crate::ffi::log::request_enabled(r.as_ptr(), Level::Warning) {
        return;
    }
    if let Some(held) = LIMIT.due(*id, now()) {
        let more = if held > 0 {
            format!("; {held} more since the last such line")
        } else {
            String::new()
        };
        rlog!(
            r,
            Level::Warning,
            "RS0130 session {}...: its lock stayed taken for RSessionLockTimeout ({:.3} s); answering 503 (at most one line a minute per session and process{more})",
            id.short(),
            dir.lock_timeout().as_secs_f64()
        );
    }
}

/// What the end of the request did with the session, at debug level.
fn log_outcome(r: Request<'_>, session: &ActiveSession) {
    // The id is formatted only when the line is logged (rlog! evaluates its
    // arguments then): this runs on every request.
    let id = session.id();
    match session.outcome() {
        Outcome::Unchanged => {}
        Outcome::Kept => rlog!(
            r,
            Level::Debug,
            "session {}... kept (first write)",
            id.short()
        ),
        Outcome::Saved => rlog!(r, Level::Debug, "session {}... saved", id.short()),
        Outcome::Regenerated(old) => rlog!(
            r,
            Level::Debug,
            "session {}... regenerated as {}...",
            old.short(),
            id.short()
        ),
        Outcome::Invalidated => rlog!(r, Level::Debug, "session {}... invalidated", id.short()),
        Outcome::Discarded => rlog!(
            r,
            Level::Debug,
            "session {}... discarded: nothing was written to it",
            id.short()
        ),
    }
}

/// Notes, environment and (optionally) forwarded request headers. Each
/// value is copied into the request's pool once, whatever sets it.
fn expose(r: Request<'_>, dir: &DirConfig, session: &ActiveSession) {
    let id = r.pool_text(session.id().text().as_bytes());
    let scratch = session
        .scratch_dir()
        .map(|p| r.pool_text(p.as_os_str().as_bytes()));
    let new = PoolText::literal(if session.is_new() { c"1" } else { c"0" });
    let notes = r.notes();
    notes.set_text(c"rsession-id", id);
    notes.set_text(c"rsession-new", new);
    match scratch {
        Some(path) => notes.set_text(c"rsession-dir", path),
        None => notes.unset("rsession-dir"),
    }
    let (env, forward) = (dir.env(), dir.forward_headers());
    if !env && !forward {
        return;
    }
    let data = session.encoded_data();
    let exportable = data.len() <= crate::expose::MAX_EXPORTABLE_DATA;
    // One pool copy, made only where some table takes it.
    let data_text = (forward || (env && exportable)).then(|| r.pool_text(data.as_bytes()));
    if env {
        let env = r.subprocess_env();
        env.set_text(c"RSESSION_ID", id);
        env.set_text(c"RSESSION_NEW", new);
        if let Some(text) = data_text.filter(|_| exportable) {
            env.set_text(c"RSESSION_DATA", text);
        } else {
            // Only data stored under an older, larger limit gets here; a
            // CGI could not start with it in its environment.
            env.unset("RSESSION_DATA");
            rlog!(
                r,
                Level::Warning,
                "RS0014 session {}...: its data ({} bytes) is too large for RSESSION_DATA and is not exported",
                session.id().short(),
                data.len()
            );
        }
        match scratch {
            Some(path) => env.set_text(c"RSESSION_DIR", path),
            None => env.unset("RSESSION_DIR"),
        }
    }
    if forward {
        let headers = r.headers_in();
        headers.set_text(c"X-RSession-Id", id);
        if let Some(text) = data_text {
            headers.set_text(c"X-RSession-Data", text);
        }
        if let Some(path) = scratch {
            headers.set_text(c"X-RSession-Dir", path);
        }
    }
}

/// Adds the response filter to every request of a chain with a session:
/// the main response saves through it, others (subrequests, responses
/// after the save) have their commands removed and logged.
pub fn insert_filter(r: Request<'_>) {
    add_out_filter(r, false);
}

/// The request an internal redirect makes (mod_rewrite in a directory,
/// ErrorDocument) starts from the protocol's input filters: a body
/// spooled ahead of the lock is put before it again here, so that its
/// authentication, fixups and handler all find it.
pub fn post_read_request(r: Request<'_>) -> c_int {
    r.replay_body_after_redirect();
    DECLINED
}

/// The insert_error_filter hook: as `insert_filter`, except that after a
/// failed save the error response gets the guard that ends the handler's
/// output with it.
pub fn insert_error_filter(r: Request<'_>) {
    add_out_filter(r, true);
}

fn add_out_filter(r: Request<'_>, error: bool) {
    let Some(state) = session_state(r.initial()) else {
        return;
    };
    let failed = match &*state.borrow() {
        RequestState::Active(rs) => rs.save_failed,
        RequestState::Failed(_) => None,
    };
    if failed == Some(503) {
        // ap_http_header_filter merged err_headers_out away before it
        // called ap_die: give the error response (or its ErrorDocument)
        // its Retry-After again.
        r.err_headers_out().set("Retry-After", "1");
    }
    r.add_out_filter(if failed.is_some() && error {
        OutFilter::Guard
    } else {
        OutFilter::First
    });
}

/// Runs when the first bytes of a response pass: the handler is done with
/// its headers, the status line has not gone out. The main response
/// applies the update header, saves, releases the lock and sets the
/// cookie; any other response only has its commands removed (and logged).
pub fn at_first_output(r: Request<'_>) -> FirstOutput {
    let Some(state) = session_state(r.initial()) else {
        return FirstOutput::Pass;
    };
    let Ok(mut state) = state.try_borrow_mut() else {
        return FirstOutput::Pass;
    };
    match &mut *state {
        RequestState::Active(rs) if r.is_main() && !rs.session.is_finished() => save(r, rs),
        RequestState::Active(rs) => {
            let why = if !r.is_main() {
                "sent by a subrequest (an include, for one): only the main response, its internal redirects and ErrorDocument pages change the session"
            } else {
                "sent after the session was saved"
            };
            let id_text = rs.session.id().text();
            let tag = if r.is_main() { "RS0082" } else { "RS0080" };
            drop_chain_commands(r, &rs.dir, None, tag, &id_text[..8], why);
            FirstOutput::Pass
        }
        RequestState::Failed(_) => {
            if let Some(dir) = r.dir_config::<DirConfig>() {
                drop_chain_commands(r, dir, None, "RS0083", "-", "this request has no session");
            }
            FirstOutput::Pass
        }
    }
}

/// Removes the update header from a response whose commands cannot apply,
/// with a warning: no command is dropped silently.
fn drop_commands(r: Request<'_>, header: &str, tag: &str, short: &str, why: &str) {
    let mut lines = 0;
    for table in [r.headers_out(), r.err_headers_out()] {
        let found = table.get_all(header).len();
        if found > 0 {
            lines += found;
            table.unset(header);
        }
    }
    if lines > 0 {
        rlog!(
            r,
            Level::Warning,
            "{tag} session {short}...: {lines} {header} line(s) not applied: {why}"
        );
    }
}

/// Removes the lines under the update header of the location the session
/// began in (`chain`) and of every location the request was redirected
/// through on its way to `r`, except `applied`, the one that counts.
fn drop_chain_commands(
    r: Request<'_>,
    chain: &DirConfig,
    applied: Option<&str>,
    tag: &str,
    short: &str,
    why: &str,
) {
    let other = |name: &str| !applied.is_some_and(|a| a.eq_ignore_ascii_case(name));
    if other(chain.update_header()) {
        drop_commands(r, chain.update_header(), tag, short, why);
    }
    // A name met twice finds nothing left to remove the second time. A
    // location with RSession Off counts too: its lines reach no one else.
    let mut hop = Some(r);
    while let Some(request) = hop {
        if let Some(dir) = request.dir_config::<DirConfig>() {
            if other(dir.update_header()) {
                drop_commands(r, dir.update_header(), tag, short, why);
            }
        }
        hop = request.prev();
    }
}

/// The update header this response's own location names, where it names
/// one other than `chain`'s (the location the session began in: an
/// internal redirect or ErrorDocument may be configured otherwise).
fn own_update_header<'r>(r: Request<'r>, chain: &DirConfig) -> Option<&'r str> {
    r.dir_config::<DirConfig>()
        .filter(|own| own.enabled())
        .map(DirConfig::update_header)
        .filter(|own| !own.eq_ignore_ascii_case(chain.update_header()))
}

fn save(r: Request<'_>, rs: &mut RequestSession) -> FirstOutput {
    // This response's handler writes under its own location's header name;
    // lines under the first location's name are removed, not applied.
    // The most of an id logs may show; formatted without allocating.
    let id_text = rs.session.id().text();
    let short = &id_text[..8];
    let header = own_update_header(r, &rs.dir).unwrap_or(rs.dir.update_header());
    drop_chain_commands(
        r,
        &rs.dir,
        Some(header),
        "RS0086",
        short,
        "this response's location reads another RSessionUpdateHeader",
    );
    // The values stay in the request's pool after the unset: the commands
    // borrow them.
    let (out, err) = (r.headers_out(), r.err_headers_out());
    let (out_lines, err_lines) = (out.get_all(header), err.get_all(header));
    if !out_lines.is_empty() {
        out.unset(header);
    }
    if !err_lines.is_empty() {
        err.unset(header);
    }
    let mut commands = Vec::new();
    for parsed in update::parse(out_lines.iter().chain(&err_lines).map(|line| line.as_ref())) {
        match parsed {
            Ok(c) => commands.push(c),
            Err(why) => rlog!(
                r,
                Level::Warning,
                "RS0020 session {short}...: ignored a {header} command: {}",
                why.0
            ),
        }
    }
    let server_error = r.status() >= 500;
    for why in rs
        .session
        .apply(&commands, rs.dir.max_data_size(), server_error)
    {
        rlog!(
            r,
            Level::Warning,
            "RS0021 session {short}...: update refused: {why}"
        );
    }
    let changed = rs.session.has_changes();
    let result = rs.session.finish(&rs.runtime, &rs.dir, now());
    log_outcome(r, &rs.session);
    r.interim_watch().disarm(r.initial());
    if rs.session.ended_others() > 0 {
        rlog!(
            r,
            Level::Info,
            "RS0113 session {short}...: invalidate-user ended {} other session(s) of its user",
            rs.session.ended_others()
        );
    }
    if result.is_ok()
        && !matches!(
            rs.session.outcome(),
            Outcome::Unchanged | Outcome::Discarded
        )
    {
        // Written to the store (for a new session under OnWrite, its first
        // visit there).
        store_answered(r, &rs.runtime);
    }
    let e = match result {
        Ok(Some(change)) => {
            set_cookie(r, rs, &change);
            return FirstOutput::Pass;
        }
        Ok(None) => {
            mark_private(r, &rs.session);
            return FirstOutput::Pass;
        }
        Err(SessionError::Store(StoreError::Vanished)) if !changed => {
            // Only the access time was due: nothing the handler did is lost,
            // and the next request starts a fresh session anyway.
            rlog!(
                r,
                Level::Info,
                "RS0023 session {short}... expired during the request; it had nothing to save"
            );
            return FirstOutput::Pass;
        }
        Err(e) => e,
    };
    // A session that vanished (expired, removed) lost the changes; a retry
    // runs against a fresh session, as a moment later it would have.
    let vanished = matches!(e, SessionError::Store(StoreError::Vanished));
    let status = if vanished { 503 } else { e.http_status() };
    rs.runtime.stats.bump(Counter::StoreErrors);
    if r.status() >= 500 {
        rlog!(
            r,
            Level::Err,
            "RS0022 session {short}... not saved: {e}; the response stays {}",
            r.status()
        );
        return FirstOutput::Pass;
    }
    if rs.session.is_new() && matches!(e, SessionError::Store(StoreError::Unavailable(_))) {
        // A new session's first write is its first visit to the store: in
        // an outage, every bot that writes would say so otherwise. (A
        // resumed session's lost change is logged with its id, below.)
        store_unavailable(r, &rs.runtime, &e);
    } else {
        let code = if vanished { "RS0023" } else { "RS0022" };
        rlog!(
            r,
            Level::Err,
            "{code} session {short}... not saved: {e}; answering {status} instead of {}",
            r.status()
        );
    }
    rs.save_failed = Some(status as c_int);
    FirstOutput::Fail(status as c_int)
}

/// The connection filter's report of an interim response (or of one too
/// large to inspect). A `101` ends the request's HTTP exchange: the
/// session is finished there (what the C API changed is saved, the lock
/// released) and its cookie, if it changed, joins the 101.
pub fn interim_event(r: Request<'_>, header: &str, event: Event) -> Vec<String> {
    let state = session_state(r);
    let mut state = state.and_then(|s| s.try_borrow_mut().ok());
    let rs = match state.as_deref_mut() {
        Some(RequestState::Active(rs)) => Some(rs),
        _ => None,
    };
    let id_text = rs.as_ref().map(|rs| rs.session.id().text());
    let short = id_text.as_deref().map_or("-", |t| &t[..8]);
    let (status, removed) = match event {
        Event::Block { status, removed } => (status, removed),
        Event::TooLarge => {
            rlog!(
                r,
                Level::Warning,
                "RS0085 session {short}...: an interim response's header is too large to inspect; passed on as it was"
            );
            return Vec::new();
        }
    };
    if removed > 0 {
        rlog!(
            r,
            Level::Warning,
            "RS0081 session {short}...: {removed} {header} line(s) on a {status} interim response not applied (removed): interim responses carry no session changes"
        );
    }
    let Some(rs) = rs else {
        return Vec::new();
    };
    if status != 101 || rs.session.is_finished() {
        return Vec::new();
    }
    match rs.session.finish(&rs.runtime, &rs.dir, now()) {
        Ok(change) => {
            rlog!(
                r,
                Level::Debug,
                "session {short}... finished at the protocol switch; lock released"
            );
            change
                .map(|c| vec![format!("Set-Cookie: {}", cookie_line(r, rs, &c))])
                .unwrap_or_default()
        }
        Err(e) => {
            rs.runtime.stats.bump(Counter::StoreErrors);
            rlog!(
                r,
                Level::Err,
                "RS0084 session {short}... not saved at the protocol switch: {e}; lock released"
            );
            Vec::new()
        }
    }
}

fn cookie_line(r: Request<'_>, rs: &RequestSession, change: &CookieChange) -> String {
    let attrs = rs.dir.cookie_attrs(r.is_https());
    match change {
        CookieChange::Set(id) => attrs.set(&cookie_value(id, &attrs.name, &rs.runtime.keys)),
        CookieChange::Expire => attrs.expire(),
    }
}

/// A handler's response made with a kept session in hand is personal:
/// shared caches must not store it, unless the handler said otherwise
/// (its own Cache-Control stays). Static files keep their caching, except
/// where the session decided who may see them (`AuthType RSession`,
/// `Require rsession`): a shared cache would hand such a file to anyone,
/// as the credentials ride in a cookie, not in `Authorization`. Such a file
/// also gets `no-cache`: it has a Last-Modified, so without it a browser
/// shows it again from its own cache, unasked, for a tenth of the file's
/// age (heuristic freshness), after its user signed out; asking costs a
/// 304 while access stands.
fn mark_private(r: Request<'_>, session: &ActiveSession) {
    let guarded = || {
        r.dir_config::<DirConfig>()
            .is_some_and(|dir| session_guards_access(r, dir))
    };
    // A directory's index file is a static file too, though its request
    // began as the directory's.
    let value = if (session.is_read_only() || r.is_static_file()) && guarded() {
        c"private, no-cache"
    } else if !session.is_read_only() && session.is_kept() {
        c"private"
    } else {
        return;
    };
    let (out, err) = (r.headers_out(), r.err_headers_out());
    if out.get_all("Cache-Control").is_empty() && err.get_all("Cache-Control").is_empty() {
        err.set_text(c"Cache-Control", PoolText::literal(value));
    }
}

fn set_cookie(r: Request<'_>, rs: &RequestSession, change: &CookieChange) {
    let line = cookie_line(r, rs, change);
    let (out, err) = (r.headers_out(), r.err_headers_out());
    // err_headers_out survives error responses and internal redirects.
    err.add("Set-Cookie", &line);
    let existing: Vec<String> = [out, err]
        .iter()
        .flat_map(|t| t.get_all("Cache-Control"))
        .map(|v| v.into_owned())
        .collect();
    let joined = existing.join(", ");
    out.unset("Cache-Control");
    err.set(
        "Cache-Control",
        private_cache_control((!joined.is_empty()).then_some(joined.as_str())),
    );
}

/// `SetHandler rsession-status`.
pub fn status_handler(r: Request<'_>) -> c_int {
    if r.handler().as_deref() != Some("rsession-status") {
        return DECLINED;
    }
    let Some(rt) = server_state(r).runtime.get() else {
        return DECLINED;
    };
    let asked = |what: &str| r.args().is_some_and(|a| a.split('&').any(|p| p == what));
    let (json, metrics) = (asked("json"), asked("metrics"));
    // The live count is kept current: listing the store here would cost
    // O(sessions) inside a worker.
    let body = if metrics {
        crate::status::render_prometheus(&rt.store.describe(), &rt.stats)
    } else {
        crate::status::render(&rt.store.describe(), &rt.stats, json)
    };
    r.set_content_type(if metrics {
        "text/plain; version=0.0.4; charset=utf-8"
    } else if json {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    });
    r.headers_out().set("Cache-Control", "no-store");
    if !r.is_header_only() {
        r.write(body.as_bytes());
    }
    OK
}

/// Our section of mod_status's /server-status (`short`: its `?auto` form,
/// `key: value` lines), the figures of `rsession-status`.
pub fn status_section(r: Request<'_>, short: bool) -> c_int {
    let Some(rt) = server_state(r).runtime.get() else {
        return OK;
    };
    let store = rt.store.describe();
    let body = if short {
        crate::status::render_auto(&store, &rt.stats)
    } else {
        crate::status::render_html(&store, &rt.stats)
    };
    r.write(body.as_bytes());
    OK
}

// ---- authentication and authorization --------------------------------------

/// The `AuthType` this module answers for.
pub const AUTH_TYPE: &str = "RSession";

use sys::{AUTHZ_DENIED, AUTHZ_DENIED_NO_USER, AUTHZ_GENERAL_ERROR, AUTHZ_GRANTED};

/// note_auth_failure: nothing to add to a response for `AuthType RSession`
/// (claiming it keeps mod_authz_core from logging that nobody did).
pub fn note_auth_failure(_r: Request<'_>, auth_type: Option<&str>) -> c_int {
    if auth_type.is_some_and(|t| t.eq_ignore_ascii_case(AUTH_TYPE)) {
        OK
    } else {
        DECLINED
    }
}

/// Whether the session may decide who gets `r` (`AuthType RSession`, or a
/// `Require rsession` line here or inherited).
fn session_guards_access(r: Request<'_>, dir: &DirConfig) -> bool {
    is_rsession_auth(r) || dir.uses_authz()
}

/// Whether another module's AuthType (Basic, Digest, form) authenticates
/// `r`: then `r->user` is that module's, not the session's.
fn other_auth_type(r: Request<'_>) -> bool {
    r.auth_type().is_some() && !is_rsession_auth(r)
}

fn is_rsession_auth(r: Request<'_>) -> bool {
    r.auth_type()
        .is_some_and(|t| t.eq_ignore_ascii_case(AUTH_TYPE))
}

/// Puts `fresh` in place of the chain's session read without its lock,
/// which goes without a touch of its own (`fresh` writes what is due).
fn replace_chain_session(initial: Request<'_>, fresh: RequestState) {
    if let Some(state) = session_state(initial) {
        if let Ok(mut state) = state.try_borrow_mut() {
            if let RequestState::Active(peeked) = &mut *state {
                peeked.session.set_aside();
            }
            *state = fresh;
        }
    }
}

/// Whether `fresh`, the chain's session under its lock, is not the one
/// `peeked` read without it: another session, or other data (the user
/// included).
fn session_changed(peeked: &RequestState, fresh: &RequestState) -> bool {
    match (peeked, fresh) {
        (RequestState::Active(before), RequestState::Active(now)) => {
            before.session.id() != now.session.id()
                || now.session.is_new()
                || before.session.data() != now.session.data()
        }
        _ => true,
    }
}

/// The request's session changed between its authorization and its lock:
/// its user and environment become the locked session's, and httpd's own
/// authorization (every provider's Require lines, `Require expr` on
/// `RSESSION_DATA` included) decides again.
fn authorize_on_locked_session(
    r: Request<'_>,
    dir: &DirConfig,
    initial: Request<'_>,
) -> Result<(), c_int> {
    {
        let Some(state) = session_state(initial) else {
            return Ok(());
        };
        let Ok(state) = state.try_borrow() else {
            return Ok(());
        };
        let RequestState::Active(rs) = &*state else {
            return Ok(());
        };
        if dir.user_key().is_some() && !other_auth_type(r) {
            r.clear_user();
        }
        set_user(r, dir, &rs.session);
        expose(r, dir, &rs.session);
    } // the auth hooks below read the session: no borrow may be held
    match r.authorize_again() {
        OK => {
            rlog!(
                r,
                Level::Debug,
                "the session changed between authorization and the handler; authorization, asked again, still lets the request in"
            );
            Ok(())
        }
        status => {
            rlog!(
                r,
                Level::Info,
                "the session changed between authorization and the handler, and authorization, asked again, answers {status}"
            );
            Err(status)
        }
    }
}

/// The id, settings and runtime of the chain's session read without its
/// lock (`is_peeked`).
fn peeked_session(initial: Request<'_>) -> Option<(SessionId, DirConfig, Arc<Runtime>)> {
    let state = session_state(initial)?.try_borrow().ok()?;
    match &*state {
        RequestState::Active(rs) if rs.session.is_read_only() => {
            Some((*rs.session.id(), rs.dir.clone(), rs.runtime.clone()))
        }
        _ => None,
    }
}

/// Whether the chain's session was taken read-only, i.e. without its lock
/// (a static file's, or one read for authorization: begin_for_authorization).
fn is_peeked(initial: Request<'_>) -> bool {
    session_state(initial).is_some_and(|s| {
        s.try_borrow()
            .is_ok_and(|s| matches!(&*s, RequestState::Active(rs) if rs.session.is_read_only()))
    })
}

/// The first auth phase. Wherever `RSessionUser`, `AuthType RSession` or
/// `Require rsession` is in use, the chain's session is resolved here,
/// once, as fixups would otherwise do (a static file's read-only and
/// without waiting, anything else locked, except that a request with a
/// body is only read: begin_for_authorization), so that `r->user`, the
/// notes and the environment are there for every Require line.
/// Elsewhere this costs one config lookup.
pub fn access_checker(r: Request<'_>) -> c_int {
    let Some(dir) = r.dir_config::<DirConfig>() else {
        return DECLINED;
    };
    if !dir.enabled() || !(dir.needs_early_session() || is_rsession_auth(r)) {
        return DECLINED;
    }
    match resolve_early(r, dir) {
        Ok(()) => DECLINED,
        Err(status) => status,
    }
}

/// Resolves (or reuses) the session of `r`'s chain before authorization,
/// sets the user and exposes the session. A subrequest that comes before
/// its chain has a session (a lookup from another location's handler)
/// only looks, read-only, for its own decision.
fn resolve_early(r: Request<'_>, dir: &DirConfig) -> Result<(), c_int> {
    strip_client_session_headers(r, dir);
    let Some(runtime) = server_state(r).runtime.get() else {
        rlog!(
            r,
            Level::Err,
            "RS0003 sessions are not initialised for this server; request served without one"
        );
        return Ok(());
    };
    let initial = r.initial();
    if session_state(initial).is_none() && r.is_main() {
        // A directory is read as its index would be if that is a static
        // file; the last fixups lock it where the index is a script.
        if r.is_static_file() || r.is_directory() {
            if let Some(state) = begin_static(r, dir, runtime) {
                set_session_state(initial, state);
            }
        } else {
            set_session_state(initial, begin_for_authorization(r, dir, runtime));
        }
    }
    let state = match session_state(initial) {
        Some(state) => state,
        None if r.is_main() => return Ok(()),
        None => match session_peek(r) {
            Some(peek) => peek,
            None => match begin_static(r, dir, runtime) {
                Some(state) => set_session_peek(r, state),
                None => return Ok(()),
            },
        },
    };
    let Ok(state) = state.try_borrow() else {
        return Ok(());
    };
    match &*state {
        RequestState::Active(rs) => {
            set_user(r, dir, &rs.session);
            expose(r, dir, &rs.session);
            Ok(())
        }
        // A static file's session that could not be read stops it only if
        // authorization turns out to need it (check_authn, authz_check):
        // a section below that grants all still serves its files.
        RequestState::Failed(_) if r.is_static_file() => Ok(()),
        RequestState::Failed(status) if r.as_ptr() == initial.as_ptr() => Err(*status),
        RequestState::Failed(_) => Ok(()),
    }
}

/// The status of the decision's session if it could not be read (a store
/// outage: 503), for the auth hooks that needed it.
fn failed_decision(r: Request<'_>) -> Option<c_int> {
    decision_state(r)?
        .try_borrow()
        .ok()
        .and_then(|s| match &*s {
            RequestState::Failed(status) => Some(*status),
            RequestState::Active(_) => None,
        })
}

/// `RSessionUser`: the session's user becomes `r->user`, if it is a
/// plausible name. Not under another module's AuthType (Basic, Digest,
/// form): that module authenticates there, and a session must not let
/// anyone past it.
fn set_user(r: Request<'_>, dir: &DirConfig, session: &ActiveSession) {
    let Some(key) = dir.user_key() else {
        return;
    };
    if other_auth_type(r) {
        rlog!(
            r,
            Level::Debug,
            "another AuthType authenticates here: the session's user is not the request's"
        );
        return;
    }
    match crate::auth::user_of(session.data(), key) {
        None => {}
        Some(Ok(user)) => {
            r.set_user(user);
            if is_rsession_auth(r) {
                r.set_auth_type_name(AUTH_TYPE);
            }
        }
        Some(Err(why)) => rlog!(
            r,
            Level::Warning,
            "RS0110 session {}...: the value under RSessionUser key '{key}' is not used as the user: {why}",
            session.id().short()
        ),
    }
}

/// Whether `r->user`, set from the session read for authorization, is not
/// the user of `fresh`, the same chain's session read again under its lock.
fn user_changed(r: Request<'_>, dir: &DirConfig, fresh: &RequestState) -> bool {
    let (Some(key), Some(decided)) = (dir.user_key(), r.user()) else {
        return false;
    };
    if other_auth_type(r) {
        return false;
    }
    let now = match fresh {
        RequestState::Active(rs) => {
            crate::auth::user_of(rs.session.data(), key).and_then(Result::ok)
        }
        RequestState::Failed(_) => return false, // answered with its own status
    };
    now != Some(decided.as_ref())
}

/// Whether a `Require rsession` line answered on the chain's session read
/// without its lock answers otherwise on `fresh`, that session under its
/// lock, `r` taking it. Any change counts, a refusal become a grant too:
/// under `Require not rsession` that is a refusal. The lines that let the
/// chain's requests in all count, except for an error document: it
/// answers for a request refused or failed, so only its own lines do (and
/// those of the requests between it and `r`: `error_handling`).
fn answers_changed(r: Request<'_>, fresh: &RequestState) -> bool {
    let Some(answers) = r.initial().slot::<PeekedAnswers>() else {
        return false;
    };
    let RequestState::Active(rs) = fresh else {
        return false; // answered with its own status
    };
    let data = rs.session.data();
    let error_pages = error_handling(r);
    answers
        .0
        .borrow()
        .iter()
        .filter(|a| error_pages.is_empty() || error_pages.contains(&a.asked_by))
        .any(|a| crate::auth::require_holds(&a.terms, data) != a.held)
}

/// The requests of `r`'s chain that answer for the one that was refused or
/// failed: from its error document on (which may hand its request on in
/// turn: mod_actions), `r` included. Empty outside error documents.
fn error_handling(r: Request<'_>) -> Vec<*const sys::request_rec> {
    let mut pages = Vec::new();
    let mut at = Some(r);
    while let Some(page) = at.filter(|p| p.is_error_redirect()) {
        pages.push(page.as_ptr() as *const sys::request_rec);
        at = page.prev();
    }
    pages
}

/// The session `r`'s authorization looks at: its chain's, or the one a
/// subrequest looked at on its own.
fn decision_state(r: Request<'_>) -> Option<&RefCell<RequestState>> {
    session_state(r.initial()).or_else(|| session_peek(r))
}

/// check_authn for `AuthType RSession`. It runs only when a Require line
/// needs a user that the session did not provide: the visitor is sent to
/// `RSessionLoginURL` (with where it was going), else answered 401.
pub fn check_authn(r: Request<'_>) -> c_int {
    if !is_rsession_auth(r) {
        return DECLINED;
    }
    if r.user().is_some() {
        return OK;
    }
    if let Some(status) = failed_decision(r) {
        // Nobody can tell who this visitor is right now: not a sign-in.
        r.err_headers_out().set("Retry-After", "1");
        return status;
    }
    let Some(dir) = r.dir_config::<DirConfig>() else {
        return sys::HTTP_UNAUTHORIZED as c_int;
    };
    if !dir.enabled() {
        rlog!(
            r,
            Level::Warning,
            "RS0112 AuthType RSession where RSession is Off: nobody can sign in here"
        );
    } else if dir.user_key().is_none() {
        rlog!(
            r,
            Level::Warning,
            "RS0111 AuthType RSession without RSessionUser: nobody can sign in here"
        );
    }
    // No cache may keep a redirect or refusal meant for this visitor.
    r.err_headers_out().set("Cache-Control", "no-store");
    let Some(login) = dir.login_url() else {
        rlog!(r, Level::Debug, "no user in the session: answering 401");
        r.err_headers_out().set("WWW-Authenticate", AUTH_TYPE);
        return sys::HTTP_UNAUTHORIZED as c_int;
    };
    let (path, query) = r.initial().request_path_and_query();
    let location =
        crate::auth::login_location(login, path.as_deref().unwrap_or("/"), query.as_deref());
    rlog!(
        r,
        Level::Debug,
        "no user in the session: sending the visitor to {login}"
    );
    r.headers_out().set("Location", &location);
    sys::HTTP_MOVED_TEMPORARILY as c_int
}

/// A `Require rsession` line at startup: its terms, kept where a request
/// can hold on to them without copying (`PeekedAnswers`).
pub fn parse_require(line: &str) -> Result<Arc<[crate::auth::Term]>, ConfigError> {
    crate::auth::parse_require(line).map(Arc::from)
}

/// `Require rsession KEY[=VALUE] …`: granted when every term holds in the
/// session's data. Without a user under `AuthType RSession`, a refusal
/// asks for one (the visitor is sent to sign in); otherwise it is final.
/// `terms` is what `parse_require` made of the line at
/// startup, read back as that type.
pub fn authz_check(r: Request<'_>, terms: &Arc<[crate::auth::Term]>) -> c_int {
    let Some(dir) = r.dir_config::<DirConfig>() else {
        return AUTHZ_DENIED;
    };
    if dir.enabled() && !dir.needs_early_session() && decision_state(r).is_none() {
        // The section was not marked at startup (no config vector to
        // mark): resolve now.
        if resolve_early(r, dir).is_err() {
            return AUTHZ_GENERAL_ERROR;
        }
    }
    let holds = decision_state(r).map(|state| {
        state.try_borrow().map_or(Some(false), |s| match &*s {
            RequestState::Active(rs) => Some(crate::auth::require_holds(terms, rs.session.data())),
            RequestState::Failed(_) => None,
        })
    });
    // A session that could not be read decides nothing: "no user yet",
    // so that under `AuthType RSession` check_authn answers 503 (other
    // lines, `Require ip` in a RequireAny, may still grant).
    let Some(holds) = holds.unwrap_or(Some(false)) else {
        return AUTHZ_DENIED_NO_USER;
    };
    // Only the lines of the chain's main requests: a lookup subrequest
    // before its fixups (MultiViews) decides about another resource.
    if r.is_main() && is_peeked(r.initial()) {
        remember_peeked_answer(r, terms, holds);
    }
    if holds {
        return AUTHZ_GRANTED;
    }
    if r.user().is_none() && is_rsession_auth(r) {
        return AUTHZ_DENIED_NO_USER;
    }
    AUTHZ_DENIED
}

// ---- C API -----------------------------------------------------------------

/// Runs `f` on the session of the request's chain, if it has one.
fn with_session<T>(r: Request<'_>, f: impl FnOnce(&mut RequestSession) -> T) -> Option<T> {
    let state = session_state(r.initial())?;
    let mut state = state.try_borrow_mut().ok()?;
    match &mut *state {
        RequestState::Active(rs) => Some(f(rs)),
        RequestState::Failed(_) => None,
    }
}

pub fn api_id(r: Request<'_>) -> Option<String> {
    with_session(r, |rs| rs.session.id().to_string())
}

pub fn api_dir(r: Request<'_>) -> Option<String> {
    with_session(r, |rs| {
        rs.session
            .scratch_dir()
            .map(|p| p.to_string_lossy().into_owned())
    })
    .flatten()
}

pub fn api_get(r: Request<'_>, key: &str) -> Option<String> {
    with_session(r, |rs| rs.session.data().get(key).cloned()).flatten()
}

pub fn api_set(r: Request<'_>, key: &str, value: Option<&str>) -> sys::apr_status_t {
    let result = with_session(r, |rs| {
        if rs.session.is_finished() {
            return sys::STATUS_EGENERAL;
        }
        match rs.session.set_value(key, value, rs.dir.max_data_size()) {
            Ok(()) => sys::STATUS_SUCCESS,
            Err(why) => {
                rlog!(
                    r,
                    Level::Warning,
                    "RS0030 session {}...: rsession_set refused: {why}",
                    rs.session.id().short()
                );
                sys::STATUS_EINVAL
            }
        }
    });
    result.unwrap_or(sys::STATUS_ENOENT)
}

pub fn api_invalidate(r: Request<'_>) -> sys::apr_status_t {
    with_session(r, |rs| match rs.session.invalidate() {
        Ok(()) => sys::STATUS_SUCCESS,
        Err(_) => sys::STATUS_EGENERAL,
    })
    .unwrap_or(sys::STATUS_ENOENT)
}

pub fn api_invalidate_user(r: Request<'_>) -> sys::apr_status_t {
    with_session(r, |rs| match rs.session.request_invalidate_user() {
        Ok(()) => sys::STATUS_SUCCESS,
        Err(_) => sys::STATUS_EGENERAL,
    })
    .unwrap_or(sys::STATUS_ENOENT)
}

pub fn api_regenerate(r: Request<'_>) -> sys::apr_status_t {
    with_session(r, |rs| match rs.session.request_regenerate() {
        Ok(()) => sys::STATUS_SUCCESS,
        Err(_) => sys::STATUS_EGENERAL,
    })
    .unwrap_or(sys::STATUS_ENOENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_that_is_not_utf8_is_not_repeated() {
        // A secret saved in Latin-1.
        let raw = std::ffi::CString::new(b"Geheimnis-schl\xfcssel-0123".to_vec()).unwrap();
        let e = argument("RSessionSecret", Some(&raw))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("RSessionSecret"), "{e}");
        assert!(!e.contains("Geheimnis"), "{e}");
    }
}
