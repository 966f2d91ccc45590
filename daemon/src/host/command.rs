//! What clients ask of the host, typed: both front ends (the native JSON protocol in
//! `crate::proto`, sanlock's wire protocol in `crate::server::sanlock`) decode their requests
//! into a [`Command`] with structured specs, and [`crate::host::Host::execute`] decides it. No
//! spec string is built or parsed past this point: a front end that reads structs from the
//! wire builds [`ResourceSpec`]s from them directly.
//!
//! Invariant: a `Command` is well formed as far as its own fields go (names are names, paths
//! are within sanlock's limits, an LVB is bytes); what depends on the host's state (the
//! lockspace exists, the lease is held, the caller may act for a pid) is decided by the host.

use tenure_format::{LeaseRef, LockspaceSpec, Name, ResourceSpec, RindexSpec};

use crate::proto::RindexAction;

use super::registry::ClientKey;

/// A request of a client to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Join a lockspace.
    LockspaceAdd {
        /// Where and as which host id.
        spec: LockspaceSpec,
        /// Reply when the join ended (or failed) rather than at once.
        wait: bool,
        /// This lockspace's io_timeout T in seconds (absent: the host's).
        io_timeout_s: Option<u64>,
    },
    /// Leave a lockspace: refused while leases are held in it, or (`kill_holders`, sanlock's
    /// REM_LOCKSPACE without REM_UNUSED) after SIGKILLing every holder and waiting for their
    /// leases to go.
    LockspaceRemove {
        /// The lockspace.
        name: Name,
        /// Reply when left.
        wait: bool,
        /// Kill the holders first instead of refusing.
        kill_holders: bool,
    },
    /// Mark a lockspace used, or used while orphans exist (sanlock's SET_CONFIG).
    LockspaceConfig {
        /// The lockspace.
        name: Name,
        /// Set or clear "used".
        used: Option<bool>,
        /// Set or clear "used while orphans exist".
        used_by_orphans: Option<bool>,
    },
    /// Acquire resources, all or nothing.
    Acquire {
        /// One to eight resources of one lockspace, all shared or all exclusive.
        resources: Vec<ResourceSpec>,
        /// Fail at once when an owner is not yet dead.
        no_wait: bool,
        /// Read the lock value blocks.
        lvb: bool,
        /// Who holds them (see [`Holder`]).
        holder: Holder,
        /// Per resource (missing entries: false): kept as an orphan when the holder goes
        /// (sanlock's RES_PERSISTENT).
        persistent: Vec<bool>,
        /// Adopt an orphan of a resource held in the mode asked for (sanlock's
        /// ACQUIRE_ORPHAN, and ACQUIRE_ORPHAN_ONLY, which sanlock 3.8.5 treats alike: with no
        /// orphan, the resource is acquired). Without it, a resource with an orphan is
        /// refused (`orphan`, sanlock's −EUCLEAN).
        adopt_orphan: bool,
    },
    /// Release leases.
    Release {
        /// Which.
        leases: Leases,
        /// Whose (see [`Holder`]).
        holder: Holder,
        /// A lock value block to write first (one lease only).
        lvb: Option<Vec<u8>>,
    },
    /// The leases of a holder, with their state strings.
    Inquire {
        /// Whose.
        holder: Holder,
    },
    /// Convert a lease between exclusive and shared.
    Convert {
        /// The lease.
        lease: LeaseRef,
        /// The mode wanted.
        shared: bool,
        /// Whose.
        holder: Holder,
        /// To exclusive: fail at once instead of waiting for a silent owner to die.
        no_wait: bool,
    },
    /// The lock value block read at acquire.
    LvbGet {
        /// The lease.
        lease: LeaseRef,
        /// Whose.
        holder: Holder,
    },
    /// Set the lock value block written at release.
    LvbSet {
        /// The lease.
        lease: LeaseRef,
        /// The value (at most one sector; the host checks against the lease's sector size).
        value: Vec<u8>,
        /// Whose.
        holder: Holder,
    },
    /// Ask the host holding a lease to give it up (PROTOCOL "Requests").
    Request {
        /// The lease (one disk).
        resource: ResourceSpec,
        /// The lver asked for (`None`: the owner's lver + 1).
        lver: Option<u64>,
        /// 0 (clear the request), 1 FORCE, 2 GRACEFUL (any other: graceful, as the owner
        /// reads it).
        force_mode: u32,
    },
    /// Read the request records of our leases in a lockspace again (sanlock's EXAMINE).
    Examine {
        /// The lockspace.
        space: Name,
        /// Only this lease's.
        resource: Option<Name>,
    },
    /// Restrictions the client puts on itself (sanlock's RESTRICT bits).
    Restrict {
        /// `RESTRICT_*` bits of `crate::sanlock_wire::flags`.
        bits: u32,
    },
    /// A program run instead of SIGTERM when the client's leases are lost.
    KillPath {
        /// Absolute program path.
        path: String,
        /// Its arguments (at most [`KILL_PATH_ARGS_MAX`]).
        args: Vec<String>,
    },
}

/// Arguments a kill path takes at most.
pub const KILL_PATH_ARGS_MAX: usize = 16;

/// Who a lease command is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// The asking client itself (its connection owns the leases).
    Me,
    /// A pid: leases acquired on its behalf, owned by the pid (privileged clients only; the
    /// pid of the asking client itself means [`Holder::Me`]).
    Pid(i32),
    /// Another registered client of the same front end (sanlock's "on behalf of" a
    /// registered pid): its connection owns the leases.
    Client(ClientKey),
}

impl Holder {
    /// `Me`, or `Pid` when a pid is given.
    pub fn of_pid(pid: Option<i32>) -> Self {
        pid.map_or(Holder::Me, Holder::Pid)
    }
}

/// Which leases a release takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leases {
    /// Every lease of the holder.
    All,
    /// These (one at least).
    These(Vec<LeaseRef>),
    /// This one, its freed leader renamed `to` (sanlock's REL_RENAME).
    Renamed {
        /// The lease.
        lease: LeaseRef,
        /// Its new resource name on disk.
        to: Name,
    },
    /// The orphans of a lockspace (every one, or the one named), whoever asks (sanlock's
    /// REL_ORPHAN).
    Orphans {
        /// The lockspace.
        space: Name,
        /// Only this resource's.
        name: Option<Name>,
    },
}

/// A resource index request (sanlock's rindex), carried out by the front end's helper
/// threads; the private lease of `create`, `delete` and `rebuild` goes through the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RindexCommand {
    /// Where the index is, and its lockspace.
    pub spec: RindexSpec,
    /// What to do.
    pub action: RindexAction,
    /// Resource name (lookup, add, create, delete).
    pub name: Option<Name>,
    /// Lease offset (lookup, add, remove; 0 when not given).
    pub offset: u64,
    /// num_hosts of a created lease (0: the geometry's maximum).
    pub num_hosts: u64,
    /// Entries of a formatted index (0: 4096).
    pub max_resources: u32,
    /// Sector size for format (absent: the device's).
    pub sector_size: Option<u32>,
    /// Align size in MiB for format.
    pub align_mb: Option<u32>,
    /// Without the private lease.
    pub no_lockspace: bool,
}
