//! mod_rsession: server-side sessions for Apache httpd 2.4.
//!
//! Layers, each using only those below it: `module` (the top: every symbol
//! httpd and the C shim call, and the module record) → `hooks` (the module's
//! logic on httpd's side: turns requests into plain values for `session` and
//! writes the results back) → `ffi` (safe wrappers over httpd and APR that
//! know nothing of sessions: request, pool, server, typed per-request slot,
//! generic config create/merge, and the entry-point adapters and macros
//! `module` uses). `ffi` is the only module allowed `unsafe`. Everything
//! outside these three is host-free: it never calls httpd or APR, so
//! `cargo test` builds and runs it without a server (`ffi` itself uses only
//! two host-free helpers, `body::Spool` and the `interim` parser).
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
// Unit-test and fuzzing builds leave out the host glue, which is what uses
// much of the rest.
#![cfg_attr(any(test, not(feature = "host")), allow(dead_code))]

mod auth;
mod body;
mod config;
mod cookie;
mod dispatch;
mod error;
mod expose;
mod gc;
mod generation;
mod id;
mod interim;
mod lock;
mod ratelimit;
mod reaper;
mod record;
mod safe_fs;
mod scratch;
mod session;
mod signing;
mod status;
mod store;
mod update;

#[cfg(all(feature = "host", not(test)))]
#[allow(unsafe_code)]
mod ffi;
#[cfg(all(feature = "host", not(test)))]
mod hooks;
#[cfg(all(feature = "host", not(test)))]
mod module;

#[doc(hidden)]
pub mod fuzzing;
