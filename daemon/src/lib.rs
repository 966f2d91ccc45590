//! tenured: the host daemon and the `tenure` command line.
//!
//! So far only the direct commands exist (`tenure lockspace init`, `tenure resource init`,
//! `tenure dump`), which work on storage without any daemon. The daemon itself, the client
//! protocol and the lease-holder supervision come with the daemon issue.

#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod config;
pub mod proto;
pub mod render;
pub mod server;
pub mod supervise;
pub mod watchdog_cmd;
