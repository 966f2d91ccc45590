//! tenure-watchdog: self-fencing for tenure hosts.
//!
//! This crate will hold the `/dev/watchdog` driver, the deadline multiplexer that feeds it
//! only while every lockspace's renewal deadline lies ahead, and the emulated watchdog used by
//! tests and the daemon's embedded default (DESIGN.md "Watchdog"). It is empty so far: no code
//! in the workspace may claim fencing protection until it exists.
