//! What the host answers, typed: a [`Done`] per kind of success or an [`ErrorReply`] (a
//! code, a sentence and typed [`crate::proto::Details`]). Front ends encode it: the native
//! protocol as JSON (`crate::proto::Reply::from`, the same bytes as version 1 always sent),
//! sanlock's as a result number (`crate::server::sanlock`); neither reads a reply back by
//! string keys.

use serde::Serialize;

use crate::proto::{ErrorCode, ErrorReply};

/// The host's answer to a [`super::command::Command`].
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// It was done.
    Done(Done),
    /// It was refused or failed.
    Error(ErrorReply),
}

impl Reply {
    /// An error reply without details.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Reply::Error(ErrorReply::new(code, message))
    }
}

/// What was done.
#[derive(Debug, Clone, PartialEq)]
pub enum Done {
    /// Nothing to report (restrict, kill path).
    Nothing,
    /// The join started.
    Joining {
        /// Lockspace.
        lockspace: String,
    },
    /// The join ended: joined with this generation.
    Joined {
        /// Lockspace.
        lockspace: String,
        /// Our generation in it.
        generation: u64,
    },
    /// The leave started.
    Leaving {
        /// Lockspace.
        lockspace: String,
    },
    /// Left (or forgotten).
    Left {
        /// Lockspace.
        lockspace: String,
    },
    /// A lockspace's "used" marks now.
    Config {
        /// Lockspace.
        lockspace: String,
        /// Used.
        used: bool,
        /// Used while orphans exist.
        used_by_orphans: bool,
    },
    /// The leases acquired (with their LVBs when asked for).
    Acquired(Vec<LeaseView>),
    /// The resources released (names).
    Released(Vec<String>),
    /// The orphans whose release started (names; sanlock's REL_ORPHAN answers their count).
    OrphansReleased(Vec<String>),
    /// A conversion ended in this mode.
    Converted {
        /// Resource name.
        resource: String,
        /// Shared now.
        shared: bool,
        /// A conversion to shared that ended with an error but may have landed: the hold is
        /// shared from here on, and this says what failed.
        warning: Option<String>,
    },
    /// A holder's leases and their state strings (inquire).
    Leases {
        /// Each lease.
        leases: Vec<LeaseView>,
        /// The state strings, space separated.
        state: String,
    },
    /// A lease's lock value block.
    Lvb {
        /// `LS:NAME`.
        resource: String,
        /// The value.
        value: Vec<u8>,
    },
    /// A lock value block was set: it is written at release.
    LvbSet {
        /// `LS:NAME`.
        resource: String,
    },
    /// A request record was written: the owner asked (`None`: the lease was free and
    /// nothing was written).
    Requested {
        /// The owner's host id.
        owner: Option<u64>,
    },
    /// A resource index operation ended.
    Rindex(RindexDone),
    /// A view the front end renders itself (hello, status, listings, owners, requests).
    View(serde_json::Value),
}

/// What a resource index operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RindexDone {
    /// An empty index was written, with this geometry.
    Formatted(tenure_format::Geometry),
    /// An entry: found (lookup) or written (add).
    Entry {
        /// Resource name (empty for a free slot found by lookup).
        name: String,
        /// Its lease offset.
        offset: u64,
    },
    /// The entry at this offset was cleared.
    Removed(u64),
    /// A lease was written in a free slot, and its entry.
    Created {
        /// Resource name.
        name: String,
        /// Its lease offset.
        offset: u64,
    },
    /// A named lease and its entry were cleared.
    Deleted {
        /// Resource name.
        name: String,
        /// Its lease offset.
        offset: u64,
    },
    /// The entries were rebuilt: this many.
    Rebuilt(u64),
}

/// A lease as replies and `status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseView {
    /// Lockspace.
    pub lockspace: String,
    /// Resource name.
    pub resource: String,
    /// Device path of its area.
    pub path: String,
    /// Offset of its area.
    pub offset: u64,
    /// Lease version.
    pub lver: u64,
    /// Held shared.
    pub shared: bool,
    /// Holder pid.
    pub pid: i32,
    /// The holder's client name.
    pub client: String,
    /// Who owns it: `connection`, `pid`, `orphan` (a persistent lease whose holder went) or
    /// `orphan (release failed)`.
    pub owner: &'static str,
    /// Kept as an orphan when its holder goes.
    pub persistent: bool,
    /// When it was acquired (wall clock, ms).
    pub acquired_unix_ms: u64,
    /// `LS:NAME:PATH:OFFSET:LVER`.
    pub state: String,
    /// Its lock value block, hex (acquire with `lvb` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lvb_hex: Option<String>,
}
