//! tenure-core: storage I/O, the lease protocols and the lockspace API.
//!
//! So far: device probing and blocking O_DIRECT/O_DSYNC I/O ([`dev`]) and the direct
//! commands that format and dump lease areas ([`direct`]). The io_uring engine, simulated
//! disk and the delta/paxos state machines arrive with the following issues.
//!
//! Unsafe code is denied everywhere except the block-device ioctl module in [`dev`].

#![deny(unsafe_code)]

pub mod clock;
pub mod delta;
pub mod dev;
pub mod direct;
pub mod hostname;
pub mod io;
pub mod lockspace;
pub mod paxos;
pub mod timeouts;
