//! The daemon's decisions, apart from its I/O (DESIGN.md, "Daemon"): what the reactor asks
//! before it acts. So far: [`admission`], local exclusion between this host's clients, and
//! [`registry`], the leases they hold and who owns each.

pub mod admission;
pub mod guard;
pub mod registry;
