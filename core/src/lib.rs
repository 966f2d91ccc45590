//! tenure-core: storage I/O, the lease protocols and the lockspace API.
//!
//! - [`clock`]: time as an input ([`clock::Time`]); the only reader of the real clock, and the
//!   simulated clock.
//! - [`dev`]: opening and probing devices (O_DIRECT, O_DSYNC, BLKSSZGET).
//! - [`io`]: the I/O engine — io_uring, the pread/pwrite fallback and the simulated disk behind
//!   one `IoBackend` interface, with deadlines and never-reused in-flight buffers.
//! - [`direct`]: format and dump of lease areas without a daemon.
//! - [`timeouts`]: every timing rule derived from io_timeout and the watchdog fire timeout.
//! - [`delta`], [`lockspace`], [`hostname`]: delta leases as a sans-IO state machine, several
//!   lockspaces driven over one engine, the stable host name.
//! - [`paxos`]: paxos leases (exclusive acquire and release so far) as sans-IO state machines.
//!
//! Evidence for the protocols: `tests/delta_sim.rs` and `tests/paxos_sim.rs` (seeded
//! simulations with faults, the safety statement checked after every step) and
//! `tests/paxos_model.rs` (an exhaustive search over every interleaving of the real paxos
//! machines, sector-granular reads included, for small configurations).
//!
//! Protocol code never reads a clock, sleeps or touches a file descriptor: drivers feed it
//! completions and time. Unsafe code is denied everywhere except the block-device ioctls in
//! [`dev`] and the io_uring submission in [`io::uring`].

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
