//! The daemon's decisions, apart from its I/O (DESIGN.md, "Daemon"): what the reactor asks
//! before it acts. So far: [`admission`], local exclusion between this host's clients.

pub mod admission;
