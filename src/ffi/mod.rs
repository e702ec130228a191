//! The FFI layer: the only place with `unsafe`. Raw bindings live in `sys`;
//! the other modules wrap them in small safe types (`Request`, `Table`,
//! `Pool`), so `hooks` never touches a raw pointer. Nothing here knows of
//! sessions: per-request state is a typed slot (`Request::slot`), configs
//! are any `Default + Merge` type (`config`), and the entry points are
//! declared above, in src/module.rs, through the adapters and macros of
//! `entry`.

pub mod body;
pub mod bucket;
pub mod cmd;
pub mod config;
pub mod conn;
pub mod entry;
pub mod guard;
pub mod log;
pub mod module;
pub mod pool;
pub mod process;
pub mod request;
pub mod server;
pub mod shm;
pub mod sys;
