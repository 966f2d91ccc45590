//! tenured: the host daemon and the `tenure` command line.
//!
//! Library modules: [`config`] (tenured.toml and the embedded default), [`proto`] (the native
//! client protocol), [`client`] (its Rust client), [`host`] (decisions without I/O: local
//! exclusion between this host's clients), [`server`] (the reactor), [`supervise`] (holder
//! supervision and watchdog feeding), [`upgrade`] (the hand-over to a new tenured), and the `tenure` command line ([`cli`], [`daemon_cmd`],
//! [`render`], [`watchdog_cmd`]). The binaries are thin glue over these.

#![forbid(unsafe_code)]

pub mod assets;
pub mod cli;
pub mod client;
pub mod cluster_cmd;
pub mod config;
pub mod daemon_cmd;
pub mod doctor;
pub mod fuzzing;
pub mod host;
pub mod metrics;
pub mod proto;
pub mod render;
pub mod sanlock_wire;
pub mod server;
pub mod supervise;
pub mod upgrade;
pub mod watchdog_cmd;
