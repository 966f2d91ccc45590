//! The daemon's decisions, apart from its I/O (DESIGN.md, "Daemon"). [`Host`] holds them: the
//! lockspaces this host joins and their lifecycle, the leases its clients hold and who owns
//! each (per connection, per pid, orphans), local exclusion between its clients
//! ([`admission`], [`registry`]), and what supervision is told ([`guard`] decides kills and
//! feeding). It holds no socket, thread or clock: time is an input, replies and effects are
//! polled, and the storage engine and the supervisor are handed in ([`LockspaceSet`] over any
//! [`tenure_core::io::IoBackend`], any [`Supervision`]). The reactor (`crate::server`) and
//! the whole-cluster simulation drive the same `Host`.
//!
//! Call order, as quinn-proto's `Connection` has it:
//! 1. feed inputs, each with `now`: a client's [`command::Command`] ([`Host::execute`]: typed,
//!    with structured specs; both front ends decode into it), a client's identity
//!    ([`Host::client_connected`], [`Host::client_mut`], [`Host::client_closed`]), a pid that
//!    exited ([`Host::pid_exited`]), a probe result ([`Host::probe_done`]: the commands waiting
//!    for it are decided again here), the front end's own lease operations
//!    ([`Host::private_acquire`], [`Host::private_release`]);
//! 2. [`Host::step`] at `now`: runs the engine and handles what completed (operation results,
//!    lockspace events, lockspaces cleared by supervision);
//! 3. drain [`Host::poll_output`] until `None`: replies to clients (typed [`reply::Reply`],
//!    encoded by each front end) and effects to carry out;
//! 4. sleep until [`Host::next_wakeup`] or the next input.
//!
//! Its state is private: front ends read it through [`Host::spaces`], [`Host::leases`],
//! [`Host::engine`] and the like, and change it only through the methods above.
//!
//! Invariants (asserted by the tests of [`registry`] and by the cluster simulation):
//! - per resource, one exclusive holder or any number of shared ones, and one operation of
//!   this host in flight at most;
//! - a lease's holder pid is registered with supervision before the grant is replied, and
//!   removed only when the pid holds nothing more in that lockspace;
//! - a lease of a lost lockspace is never released on disk and never given to anyone: it is
//!   dropped only when supervision reports every holder dead.

pub mod admission;
pub mod command;
pub mod guard;
pub mod handover;
pub mod journal;
pub mod registry;
pub mod reply;
pub mod requests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;

use tenure_core::clock::Time;
use tenure_core::delta::{DeltaConfig, DeltaEvent};
use tenure_core::dev::Device;
use tenure_core::io::DiskId;
use tenure_core::lockspace::{
    AcquireOptions, HeldResource, LockspaceId, LockspaceSet, LockspaceState, OpError, OpId,
    OpOutcome, ResourceTarget,
};
use tenure_core::paxos::PaxosError;
use tenure_core::timeouts::Timeouts;
use tenure_format::{Geometry, LeaseRef, LockspaceSpec, Name, ResourceMode, ResourceSpec};
use tenure_watchdog::fence::RenewalNote;

use crate::proto::{Details, ErrorCode, ErrorReply};
use admission::{Admit, InFlight, Refusal, ResourceKey};
use command::{Command, Holder, Leases, KILL_PATH_ARGS_MAX};
use registry::{ClientKey, Lease, Owner, Registry};
use reply::{Done, Reply};

/// Leases held at once (a host may hold one per VM disk; the state file stays below
/// [`handover::STATE_BYTES_MAX`] at this many).
pub const LEASES_MAX: usize = 16384;

/// A lease area's location: a device path and the offset of the area on it.
pub type ProbeKey = (PathBuf, u64);

/// What a probe learned of a lease area.
#[derive(Debug, Clone, Copy)]
pub struct AreaInfo {
    /// Its geometry.
    pub geometry: Geometry,
}

/// What supervision is told (the real one: `crate::supervise::Supervisor`, a thread that
/// carries out [`guard`]'s decisions; the simulation's: a [`guard::Guard`] it steps itself).
pub trait Supervision: std::fmt::Debug + Send {
    /// A lockspace is about to be joined (the watchdog is armed if needed).
    fn add_space(&mut self, name: &str, host_id: u64) -> Result<(), String>;
    /// It was joined: its deadline gates feeding.
    fn joined(&mut self, name: &str, generation: u64, deadline: Time) -> Result<(), String>;
    /// A renewal succeeded at `now`; the deadline moves on.
    fn renewed(&mut self, name: &str, now: Time, deadline: Time, note: RenewalNote);
    /// A renewal failed.
    fn renewal_failed(&mut self, name: &str, note: RenewalNote);
    /// It was found lost before its deadline.
    fn lost(&mut self, name: &str, now: Time);
    /// `pid` holds leases in it now (an error when the pid is gone).
    fn add_holder(
        &mut self,
        name: &str,
        pid: i32,
        kill_path: Option<(String, Vec<String>)>,
        restrict: u32,
    ) -> Result<(), String>;
    /// `pid` holds nothing more in it.
    fn remove_holder(&mut self, name: &str, pid: i32);
    /// Marks it used (a loss is never cleared).
    fn set_used(&mut self, name: &str, used: bool) -> Result<(), String>;
    /// It was left cleanly, or cleared and forgotten.
    fn remove_space(&mut self, name: &str) -> Result<(), String>;
    /// Lost lockspaces whose holders are all dead since the last call.
    fn take_cleared(&mut self) -> Vec<String>;
    /// For `status`.
    fn status(&self) -> serde_json::Value;
    /// An adoption was refused: a dead predecessor's armed marker must not be taken over
    /// by a later arming (crate::host::handover).
    fn forget_predecessor(&mut self) {}
    /// A hand-over to a successor starts: stop every decision (no feeding, no kill) and give
    /// a duplicate of the armed watchdog's fd (crate::upgrade).
    fn freeze(&mut self) -> Result<Option<std::os::fd::OwnedFd>, String> {
        Ok(None)
    }
    /// The hand-over failed: decide again.
    fn thaw(&mut self) {}
}

/// Who a client is (SO_PEERCRED and what it said about itself).
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Its pid.
    pub pid: i32,
    /// Its uid.
    pub uid: u32,
    /// The name it gave (status, lease records).
    pub name: String,
    /// Its kill path, if it set one.
    pub kill_path: Option<(String, Vec<String>)>,
    /// sanlock RESTRICT bits it set on itself.
    pub restrict: u32,
}

/// A lockspace this host added.
#[derive(Debug)]
pub struct Space {
    /// Its name (escaped).
    pub name: String,
    /// Its id in the lockspace set.
    pub id: LockspaceId,
    /// How it was added.
    pub spec: LockspaceSpec,
    /// Clients waiting for the join.
    pub join_waiters: Vec<ClientKey>,
    /// Clients waiting for the leave.
    pub leave_waiters: Vec<ClientKey>,
    /// Why it was lost.
    pub lost: Option<String>,
    /// Supervision cleared it (all holders dead), or it was left; forgotten once no
    /// operation of it runs.
    pub cleared: bool,
    /// Marked used (LockspaceConfig / SET_CONFIG).
    pub used: bool,
    /// Marked used while orphans exist.
    pub used_by_orphans: bool,
    /// Its join failed (why).
    pub join_failed: Option<String>,
}

/// A lease operation in flight.
#[derive(Debug)]
enum Pending {
    /// An acquire.
    Acquire {
        /// Who asked.
        client: ClientKey,
        /// The holder's name.
        client_name: String,
        /// Lockspace.
        space: String,
        /// The disks named (path, offset), per resource run on disk.
        locations: Vec<Vec<(String, u64)>>,
        /// Who will own the leases.
        owner: Owner,
        /// The holder pid.
        pid: i32,
        /// The resources run on disk (claimed in flight); the others joined shared holds.
        on_disk: Vec<ResourceKey>,
        /// Per resource run on disk: persistent.
        persistent: Vec<bool>,
        /// The owner pid exited while it ran: nothing is granted (found by the sequence
        /// fuzzer: a grant to an exited pid lost the joiners it had given back).
        owner_gone: bool,
    },
    /// A release.
    Release {
        /// Who to answer.
        client: Option<ClientKey>,
        /// The leases.
        leases: Vec<Lease>,
        /// Released by this host's other holders of a shared hold without disk I/O, reported
        /// with this release.
        local: Vec<Name>,
    },
    /// A conversion.
    Convert {
        /// Who asked.
        client: ClientKey,
        /// Lockspace.
        space: String,
        /// Resource.
        resource: Name,
    },
    /// An operation a front end started itself (the resource index's private lease): its
    /// result goes back as [`Output::OpDone`].
    Front {
        /// Lockspace.
        space: String,
    },
}

/// What the host asks its driver to do.
#[derive(Debug)]
pub enum Output {
    /// Send a reply.
    Reply(ClientKey, Reply),
    /// Probe these lease areas (open the device if new, read the geometry), then call
    /// [`Host::probe_done`] for each.
    Probe(Vec<ProbeKey>),
    /// Watch `pid` for exit ([`Host::pid_exited`]): it holds leases acquired on its behalf.
    WatchPid(i32),
    /// Deliver these events (sanlock's SET_EVENT, from hosts that set our bit in `space`) to
    /// the lockspace's event listeners.
    Events {
        /// Lockspace.
        space: String,
        /// Our host id in it.
        our_host_id: u64,
        /// The events.
        events: Vec<tenure_core::delta::ReceivedEvent>,
    },
    /// Read these request records, then call [`Host::request_record_read`] for each.
    ReadRequests(Vec<requests::RecordToRead>),
    /// Write a request record ([`requests::request_for`]), then call
    /// [`Host::request_written`].
    WriteRequest(requests::RecordToWrite),
    /// Signal a holder (a request of another host for its lease).
    Signal {
        /// The holder.
        pid: i32,
        /// Which signal.
        signal: guard::KillSignal,
    },
    /// Run a holder's kill path (a graceful request for its lease).
    RunKillPath {
        /// The holder.
        pid: i32,
        /// Program.
        path: String,
        /// Its arguments.
        args: Vec<String>,
    },
    /// An operation the front end started itself ([`Host::private_acquire`],
    /// [`Host::private_release`]) ended.
    OpDone(OpId, OpOutcome),
    /// A lockspace was forgotten (left, failed or cleared and no operation runs).
    SpaceGone {
        /// Its name.
        name: String,
        /// Why, when it did not go by a leave: lost (and cleared), or its join failed. The
        /// front end joins the lockspaces of its configuration again after these.
        unplanned: Option<String>,
    },
}

/// Why a local lease's LVB was not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LvbRefusal {
    /// No such lease is held on this host.
    NotHeld,
    /// It was acquired without reading its LVB.
    NotRead,
    /// Longer than one sector (and 4096 bytes).
    TooLong {
        /// The most it takes.
        max: usize,
    },
}

/// A local lease's lock value block.
#[derive(Debug, Clone)]
pub struct LocalLvb {
    /// Read at acquire (`None`: acquired without reading it).
    pub read: Option<Vec<u8>>,
    /// Set since, to be written at release.
    pub to_write: Option<Vec<u8>>,
    /// The lease's sector size (an LVB is at most one sector).
    pub sector_size: usize,
}

/// Settings of the host's decisions.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// This host's name.
    pub host_name: Name,
    /// io_timeout of lockspaces added without one.
    pub io_timeout_s: u64,
    /// W assumed for the other hosts.
    pub other_hosts_fire_timeout_s: u32,
    /// Local exclusion disabled (bite tests only).
    pub no_local_exclusion: bool,
}

/// The daemon's decisions (see the module docs).
#[derive(Debug)]
pub struct Host {
    cfg: HostConfig,
    /// The lockspaces and their operations (the engine inside).
    set: LockspaceSet,
    /// The lockspaces added.
    spaces: Vec<Space>,
    /// The leases of this host's clients, and local exclusion.
    reg: Registry,
    /// Operations in flight.
    pending: HashMap<OpId, Pending>,
    /// Who each connected client is.
    clients: HashMap<ClientKey, ClientInfo>,
    /// Devices registered with the engine.
    disks: HashMap<PathBuf, DiskId>,
    /// Lease areas probed.
    areas: HashMap<ProbeKey, Result<AreaInfo, String>>,
    sup: Box<dyn Supervision>,
    /// Pids owning leases acquired on their behalf that exited while a conversion ran.
    exited: HashSet<i32>,
    /// Stopping: no new lockspaces or leases; every lockspace is left once no lease is held.
    stopping: bool,
    /// The last input waits for probes (its command goes to `waiting`).
    deferred: bool,
    /// Commands waiting for probes, given again after each probe.
    waiting: Vec<(ClientKey, Command)>,
    /// Lockspaces to leave once the holders killed for their removal have no lease left, and
    /// who waits for the leave (sanlock's REM_LOCKSPACE).
    removals: Vec<(Option<ClientKey>, String)>,
    out: VecDeque<Output>,
    /// The time of the input being handled.
    now: Time,
    /// Wall-clock milliseconds at `Time::ZERO` (for lease and renewal records).
    wall_epoch_ms: u64,
    /// Moves with every change of lockspaces (with the registry's count:
    /// [`Host::state_epoch`]).
    epoch: u64,
    /// Renewal counters (crate::metrics; the front end renders them).
    metrics: crate::metrics::Metrics,
}

fn err(code: ErrorCode, message: impl Into<String>) -> Reply {
    Reply::Error(ErrorReply::new(code, message))
}

/// Hex of bytes (LVBs).
pub fn hex(b: &[u8]) -> String {
    // On every grant's path (the state file holds each lease's records in hex): one
    // allocation, no formatting per byte.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(char::from(DIGITS[usize::from(x >> 4)]));
        s.push(char::from(DIGITS[usize::from(x & 0xf)]));
    }
    s
}

/// Bytes of hex, any length.
pub fn unhex_any(s: &str) -> Result<Vec<u8>, String> {
    if s.len() % 2 != 0 {
        return Err("an odd number of hex digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .ok_or_else(|| "not hex".to_owned())
                .and_then(|d| u8::from_str_radix(d, 16).map_err(|e| e.to_string()))
        })
        .collect()
}

/// Bytes of hex (at most 4096 bytes).
pub fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if s.len() % 2 != 0 || s.len() > 8192 {
        return Err("even number of hex digits, at most 8192".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

/// The answer to a request refused by local exclusion (sanlock's codes: crate::host::admission).
pub fn refusal_reply(key: &ResourceKey, r: Refusal) -> Reply {
    let what = format!("{}:{}", key.space, key.name.escaped());
    match r {
        Refusal::Held => err(
            ErrorCode::Exists,
            format!("{what} is already held on this host"),
        ),
        Refusal::Busy => err(
            ErrorCode::Busy,
            format!("{what}: another operation of this host is working on it"),
        ),
        Refusal::Releasing => err(
            ErrorCode::Releasing,
            format!("{what} is being released on this host; try again"),
        ),
        Refusal::SharedHere => err(
            ErrorCode::Busy,
            format!(
                "{what} is held shared by other processes of this host: it cannot become exclusive"
            ),
        ),
    }
}

/// The leases an acquire won: one per resource run on disk, at the disks the client named.
#[allow(clippy::too_many_arguments)]
fn won_leases(
    held: Vec<HeldResource>,
    locations: Vec<Vec<(String, u64)>>,
    persistent: Vec<bool>,
    space: &str,
    owner: Owner,
    pid: i32,
    client_name: &str,
    wall: u64,
) -> Vec<Lease> {
    held.into_iter()
        .zip(locations)
        .zip(persistent)
        .map(|((h, mut loc), p)| {
            let mirrors = loc.split_off(1);
            let first = loc.pop().unwrap_or_default();
            let mut l = Lease::new(space, first, h, owner, pid, client_name, wall);
            l.mirrors = mirrors;
            l.persistent = p;
            l
        })
        .collect()
}

/// A spec's disks as (path, offset).
fn disks_of(s: &ResourceSpec) -> Vec<(String, u64)> {
    s.disks.iter().map(|d| (d.path.clone(), d.offset)).collect()
}

/// A converted lease's new record, keeping the LVB read at acquire (a conversion reads none,
/// and lvmlockd sets the LVB of a lock it converted to exclusive).
fn keep_lvb(before: &HeldResource, mut after: HeldResource) -> HeldResource {
    if after.acquired.lvb.is_none() {
        after.acquired.lvb.clone_from(&before.acquired.lvb);
    }
    after
}

/// An operation's failure as the native protocol reports it: the code (sanlock's result is
/// derived from it), the holder's identity where there is one, and in `details.fault` who is
/// at fault (contention, storage, damaged, configuration, misuse, internal).
pub fn op_error_reply(resource: Name, e: &OpError) -> Reply {
    use tenure_core::paxos::Fault;
    let r = resource.escaped();
    let holder = |host_id: &u64, generation: &u64| Details {
        host_id: Some(*host_id),
        generation: Some(*generation),
        ..Details::default()
    };
    let (code, mut details) = match e {
        OpError::Paxos(PaxosError::OwnerAlive {
            host_id,
            generation,
        }) => (ErrorCode::OwnerAlive, holder(host_id, generation)),
        OpError::Paxos(PaxosError::OwnedRetry {
            host_id,
            generation,
        }) => (ErrorCode::OwnedRetry, holder(host_id, generation)),
        // Contention inside one ballot: the other host holds it now, as if we had found it
        // held.
        OpError::Paxos(PaxosError::AcquiredByOther { host_id }) => (
            ErrorCode::OwnerAlive,
            Details {
                host_id: Some(*host_id),
                ..Details::default()
            },
        ),
        OpError::Paxos(PaxosError::LverMismatch { .. }) => {
            (ErrorCode::LverMismatch, Details::default())
        }
        OpError::Paxos(PaxosError::SharedBusy {
            host_id,
            generation,
        }) => (ErrorCode::SharedBusy, holder(host_id, generation)),
        OpError::NotJoined => (ErrorCode::NotJoined, Details::default()),
        OpError::LockspaceLost => (ErrorCode::LockspaceLost, Details::default()),
        OpError::Full(_) => (ErrorCode::Full, Details::default()),
        OpError::UnknownLockspace => (ErrorCode::NotFound, Details::default()),
        OpError::Paxos(PaxosError::NameMismatch { lockspace, .. }) => (
            ErrorCode::Corrupt,
            Details {
                sanlock_result: Some(if *lockspace { -226 } else { -227 }),
                ..Details::default()
            },
        ),
        // The rest by fault: no failure is reported as another kind (a stalled machine is
        // a bug, not damage on disk).
        other => (
            match other.fault() {
                Fault::Storage => ErrorCode::Io,
                Fault::Damaged => ErrorCode::Corrupt,
                Fault::Misuse => ErrorCode::BadRequest,
                Fault::Contention | Fault::Configuration | Fault::Internal => ErrorCode::Failed,
            },
            Details::default(),
        ),
    };
    details.fault = Some(e.fault());
    let mut reply = ErrorReply::new(code, format!("{r}: {e}"));
    reply.details = Some(details);
    Reply::Error(reply)
}

impl Host {
    /// A host deciding over `set` (its engine inside) and telling `sup` what it decides;
    /// `wall_epoch_ms` is the wall-clock time, in ms, of `Time::ZERO`.
    pub fn new(
        cfg: HostConfig,
        set: LockspaceSet,
        sup: Box<dyn Supervision>,
        wall_epoch_ms: u64,
    ) -> Self {
        Host {
            reg: Registry::new(cfg.no_local_exclusion),
            cfg,
            set,
            spaces: Vec::new(),
            pending: HashMap::new(),
            clients: HashMap::new(),
            disks: HashMap::new(),
            areas: HashMap::new(),
            sup,
            exited: HashSet::new(),
            stopping: false,
            deferred: false,
            waiting: Vec::new(),
            removals: Vec::new(),
            out: VecDeque::new(),
            now: Time::ZERO,
            wall_epoch_ms,
            epoch: 0,
            metrics: crate::metrics::Metrics::new(),
        }
    }

    /// Counts renewals into `m` (shared with the front end that renders it).
    pub fn set_metrics(&mut self, m: crate::metrics::Metrics) {
        self.metrics = m;
    }

    /// This host's name.
    pub fn host_name(&self) -> Name {
        self.cfg.host_name
    }

    /// The settings.
    pub fn config(&self) -> &HostConfig {
        &self.cfg
    }

    /// The engine, to read (lockspace states, host tables, renewal history, notify fd).
    pub fn engine(&self) -> &LockspaceSet {
        &self.set
    }

    /// The lockspaces added, in the order they were.
    pub fn spaces(&self) -> &[Space] {
        &self.spaces
    }

    /// The lockspace state of an added lockspace.
    pub fn space_state(&self, s: &Space) -> Option<LockspaceState> {
        self.set.state(s.id)
    }

    /// Every lease of this host's clients (granted, joining a shared hold, or orphaned).
    pub fn leases(&self) -> impl ExactSizeIterator<Item = &Lease> + Clone + '_ {
        self.reg.iter()
    }

    /// Local operations in flight per resource (`status`).
    pub fn in_flight(&self) -> Vec<(&ResourceKey, InFlight)> {
        self.reg.claims().in_flight_all()
    }

    /// Stopping: no new lockspaces or leases.
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// Any operation of `space` still running (acquires, conversions, releases, the front
    /// end's own).
    fn space_busy(&self, space: &str) -> bool {
        self.pending.values().any(|p| match p {
            Pending::Release { leases, .. } => leases.iter().any(|l| l.space == space),
            Pending::Acquire { space: s, .. }
            | Pending::Convert { space: s, .. }
            | Pending::Front { space: s } => s == space,
        })
    }

    /// The engine's disk for a device path, once probed.
    pub fn disk_of(&self, path: &std::path::Path) -> Option<DiskId> {
        self.disks.get(path).copied()
    }

    /// Refuses new lockspaces and leases from now on (sanlock's SHUTDOWN: the front end
    /// decides when to leave).
    pub fn refuse_new_work(&mut self) {
        self.stopping = true;
    }

    /// A forced stop (sanlock's SHUTDOWN with force): SIGKILL every lease holder, refuse new
    /// work, and leave every lockspace once their leases are released.
    pub fn stop_killing_holders(&mut self, now: Time) {
        self.at(now);
        let mut pids: Vec<i32> = self.reg.iter().map(|l| l.pid).filter(|p| *p > 0).collect();
        pids.sort_unstable();
        pids.dedup();
        tracing::warn!(
            ?pids,
            "forced shutdown: killing lease holders, then leaving every lockspace"
        );
        for pid in pids {
            self.out.push_back(Output::Signal {
                pid,
                signal: guard::KillSignal::Kill,
            });
        }
        self.stopping = true;
    }

    /// Leaves a lockspace at once, without a waiter (sanlock's asynchronous removal after
    /// its holders were killed).
    fn leave_now(&mut self, now: Time, name: &str) {
        self.at(now);
        if let Some(i) = self.space_index(name) {
            let id = self.spaces[i].id;
            if self.set.leave(id, now).is_ok() {
                self.drop_orphans(name);
            }
        }
    }

    /// Sets a host event in `space` (sanlock's SET_EVENT).
    pub fn set_event(
        &mut self,
        now: Time,
        space: &str,
        req: tenure_core::lockspace::SetEvent,
    ) -> Option<Result<(), tenure_core::lockspace::EventError>> {
        self.at(now);
        let i = self.space_index(space)?;
        self.epoch = self.epoch.wrapping_add(1);
        Some(self.set.set_event(self.spaces[i].id, req, now))
    }

    /// Sets `host_id`'s bit in our bitmap of `space` until `until` (requests).
    fn set_bitmap_bit_until(&mut self, space: &str, host_id: u64, until: Time) -> bool {
        match self.space_index(space) {
            Some(i) => self
                .set
                .set_bitmap_bit_until(self.spaces[i].id, host_id, until)
                .is_ok(),
            None => false,
        }
    }

    /// The LVB of a lease held on this host by any client (sanlock's GET_LVB acts on the
    /// host's lease, whoever holds it).
    pub fn local_lvb(&self, lease: &LeaseRef) -> Option<LocalLvb> {
        let i = self.local_lease(lease)?;
        let l = &self.reg[i];
        Some(LocalLvb {
            read: l.held.acquired.lvb.clone(),
            to_write: l.lvb_to_write.clone(),
            sector_size: l.held.target.geometry.sector_size_bytes() as usize,
        })
    }

    /// Sets the LVB written at release of a lease held on this host by any client (sanlock's
    /// SET_LVB): refused when no such lease is held, when it was acquired without reading its
    /// LVB, or for more than one sector (at most 4096 bytes).
    pub fn set_local_lvb(&mut self, lease: &LeaseRef, value: Vec<u8>) -> Result<(), LvbRefusal> {
        let i = self.local_lease(lease).ok_or(LvbRefusal::NotHeld)?;
        let l = &mut self.reg[i];
        if l.held.acquired.lvb.is_none() {
            return Err(LvbRefusal::NotRead);
        }
        let max = (l.held.target.geometry.sector_size_bytes() as usize).min(4096);
        if value.len() > max {
            return Err(LvbRefusal::TooLong { max });
        }
        l.lvb_to_write = Some(value);
        Ok(())
    }

    /// Asked to stop (SIGTERM, SIGINT): refused while leases are held — exiting would leave
    /// the watchdog to reset this host — with the holders' pids; otherwise every lockspace is
    /// left and the host is ready to exit once they are ([`Host::ready_to_exit`]).
    pub fn stop_if_idle(&mut self, now: Time) -> Result<(), Vec<i32>> {
        if !self.reg.is_empty() {
            return Err(self.reg.iter().map(|l| l.pid).collect());
        }
        self.stop(now);
        Ok(())
    }

    fn local_lease(&self, lease: &LeaseRef) -> Option<usize> {
        let space = lease.lockspace.escaped();
        self.reg
            .iter()
            .position(|l| l.joining.is_none() && l.space == space && l.resource == lease.name)
    }

    /// Starts an acquire of a lease the front end holds itself (the resource index's private
    /// lease) in a joined lockspace, under local exclusion like any other; its result comes
    /// back as [`Output::OpDone`]. The claim lasts until [`Host::private_end`].
    pub fn private_acquire(
        &mut self,
        now: Time,
        space: &str,
        target: ResourceTarget,
    ) -> Result<OpId, Reply> {
        self.at(now);
        let joined = self.space_index(space).filter(|&i| {
            matches!(
                self.set.state(self.spaces[i].id),
                Some(LockspaceState::Joined { .. })
            ) && self.spaces[i].lost.is_none()
        });
        let Some(si) = joined else {
            return Err(err(
                ErrorCode::NotFound,
                format!("lockspace {space} is not joined on this host"),
            ));
        };
        let name = target.name;
        if let Err((key, r)) = self.reg.admit_acquire(space, &[name], false) {
            return Err(refusal_reply(&key, r));
        }
        match self.set.start_acquire(
            self.spaces[si].id,
            vec![target],
            AcquireOptions::default(),
            now,
        ) {
            Ok(id) => {
                self.reg
                    .begin(ResourceKey::new(space, name), InFlight::Acquire);
                self.pending.insert(
                    id,
                    Pending::Front {
                        space: space.to_owned(),
                    },
                );
                Ok(id)
            }
            Err(e) => Err(op_error_reply(name, &e)),
        }
    }

    /// Starts the release of a lease the front end held itself; the claim of `op` ends in
    /// [`Host::private_end`].
    pub fn private_release(
        &mut self,
        now: Time,
        space: &str,
        held: HeldResource,
    ) -> Result<OpId, String> {
        self.at(now);
        let name = held.target.name;
        let i = self
            .space_index(space)
            .ok_or_else(|| format!("lockspace {space} gone"))?;
        let id = self
            .set
            .start_release(self.spaces[i].id, vec![(held, None)], now)
            .map_err(|e| e.to_string())?;
        self.reg
            .begin(ResourceKey::new(space, name), InFlight::Release);
        self.pending.insert(
            id,
            Pending::Front {
                space: space.to_owned(),
            },
        );
        Ok(id)
    }

    /// The front end's operation `op` on its own lease `name` ended (its claim goes).
    pub fn private_end(&mut self, space: &str, name: Name, op: InFlight) {
        self.reg.end(&ResourceKey::new(space, name), op);
    }

    fn at(&mut self, now: Time) {
        self.now = self.now.max(now);
    }

    fn unix_ms(&self) -> u64 {
        self.wall_epoch_ms + self.now.as_nanos() / 1_000_000
    }

    fn reply(&mut self, k: ClientKey, r: Reply) {
        self.out.push_back(Output::Reply(k, r));
    }

    /// The next reply or effect.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// A client's command, decided at `now`: the reply when there is one at once; otherwise
    /// it comes through [`Host::poll_output`] (after the operation, the join or the probes it
    /// waits for; a command waiting for probes is kept here and decided again after each
    /// [`Host::probe_done`]).
    pub fn execute(&mut self, now: Time, k: ClientKey, cmd: Command) -> Option<Reply> {
        self.at(now);
        self.deferred = false;
        let r = match &cmd {
            Command::LockspaceAdd {
                spec,
                wait,
                io_timeout_s,
            } => self.lockspace_add(Some(k), spec, *wait, *io_timeout_s),
            Command::LockspaceRemove {
                name,
                wait,
                kill_holders: false,
            } => self.lockspace_remove(k, &name.escaped(), *wait),
            Command::LockspaceRemove {
                name,
                wait,
                kill_holders: true,
            } => self.lockspace_remove_killing(k, &name.escaped(), *wait),
            Command::LockspaceConfig {
                name,
                used,
                used_by_orphans,
            } => Some(self.lockspace_config(&name.escaped(), *used, *used_by_orphans)),
            Command::Acquire {
                resources,
                no_wait,
                lvb,
                holder,
                persistent,
                adopt_orphan,
            } => self.acquire(
                k,
                resources,
                (*no_wait, *lvb),
                *holder,
                persistent,
                *adopt_orphan,
            ),
            Command::Release {
                leases,
                holder,
                lvb,
            } => self.release(k, leases, *holder, lvb.clone()),
            Command::Inquire { holder } => Some(self.inquire(k, *holder)),
            Command::Convert {
                lease,
                shared,
                holder,
                no_wait,
            } => self.convert(k, lease, *shared, *holder, *no_wait),
            Command::LvbGet { lease, holder } => Some(self.lvb_get(k, lease, *holder)),
            Command::LvbSet {
                lease,
                value,
                holder,
            } => Some(self.lvb_set(k, lease, value, *holder)),
            Command::Restrict { bits } => Some(self.restrict(k, *bits)),
            Command::Request {
                resource,
                lver,
                force_mode,
            } => self.request(k, resource, *lver, *force_mode),
            Command::Examine { space, resource } => {
                let space = space.escaped();
                if self.space_index(&space).is_some() {
                    self.examine(&space, *resource);
                }
                Some(Reply::Done(Done::Nothing))
            }
            Command::KillPath { path, args } => Some(self.kill_path(k, path, args)),
        };
        if std::mem::take(&mut self.deferred) {
            self.waiting.push((k, cmd));
        }
        r
    }

    fn restrict(&mut self, k: ClientKey, bits: u32) -> Reply {
        use crate::sanlock_wire::flags::{RESTRICT_SIGKILL, RESTRICT_SIGTERM};
        if bits & RESTRICT_SIGKILL != 0 && bits & RESTRICT_SIGTERM != 0 {
            return err(
                ErrorCode::BadRequest,
                "a holder must be killable by one of SIGKILL and SIGTERM",
            );
        }
        match self.clients.get_mut(&k) {
            Some(c) => {
                c.restrict = bits;
                // The state file records each lease's holder restrictions.
                self.reg
                    .touch_where(|l| l.owner == registry::Owner::Conn(k));
                Reply::Done(Done::Nothing)
            }
            None => err(ErrorCode::Failed, "client gone"),
        }
    }

    fn kill_path(&mut self, k: ClientKey, path: &str, args: &[String]) -> Reply {
        if !path.starts_with('/') || args.len() > KILL_PATH_ARGS_MAX {
            return err(
                ErrorCode::BadRequest,
                format!("kill path must be an absolute program path with at most {KILL_PATH_ARGS_MAX} arguments"),
            );
        }
        match self.clients.get_mut(&k) {
            Some(c) => {
                c.kill_path = Some((path.to_owned(), args.to_vec()));
                // The state file records each lease's kill path.
                self.reg
                    .touch_where(|l| l.owner == registry::Owner::Conn(k));
                Reply::Done(Done::Nothing)
            }
            None => err(ErrorCode::Failed, "client gone"),
        }
    }

    /// Start-up: joins a lockspace of the configuration (its area probed already).
    pub fn lockspace_add_configured(&mut self, now: Time, spec: &LockspaceSpec) -> Reply {
        self.at(now);
        self.deferred = false;
        let r = self.lockspace_add(None, spec, false, None);
        if std::mem::take(&mut self.deferred) {
            return err(
                ErrorCode::Io,
                format!("{}: lease area not probed", spec.disk.path),
            );
        }
        r.unwrap_or_else(|| err(ErrorCode::Failed, "internal: no reply to a configured join"))
    }

    /// When [`Host::step`] is due at the latest.
    pub fn next_wakeup(&self) -> Option<Time> {
        self.set.next_wakeup()
    }

    /// What supervision shows.
    pub fn supervision_status(&self) -> serde_json::Value {
        self.sup.status()
    }

    /// A client connected.
    pub fn client_connected(&mut self, k: ClientKey, info: ClientInfo) {
        self.clients.insert(k, info);
    }

    /// A connected client.
    pub fn client(&self, k: ClientKey) -> Option<&ClientInfo> {
        self.clients.get(&k)
    }

    /// A connected client, to record what it said about itself (name, kill path, restrict).
    pub fn client_mut(&mut self, k: ClientKey) -> Option<&mut ClientInfo> {
        self.clients.get_mut(&k)
    }

    /// Every connected client.
    pub fn clients(&self) -> impl Iterator<Item = (&ClientKey, &ClientInfo)> {
        self.clients.iter()
    }

    /// A client's connection closed: its leases are released.
    pub fn client_closed(&mut self, now: Time, k: ClientKey) {
        self.at(now);
        self.clients.remove(&k);
        self.waiting.retain(|(w, _)| *w != k);
        self.release_owner(Owner::Conn(k), None);
    }

    /// A pid that owns leases acquired on its behalf exited: they are released.
    pub fn pid_exited(&mut self, now: Time, pid: i32) {
        self.at(now);
        for p in self.pending.values_mut() {
            if let Pending::Acquire {
                owner, owner_gone, ..
            } = p
            {
                if *owner == Owner::Pid(pid) {
                    *owner_gone = true;
                }
            }
        }
        if self
            .reg
            .iter()
            .any(|l| l.owner == Owner::Pid(pid) && l.converting)
        {
            self.exited.insert(pid);
        }
        self.release_owner(Owner::Pid(pid), None);
    }

    /// Lease areas in `keys` not probed yet (asked for through [`Output::Probe`]).
    fn missing(&mut self, keys: &[ProbeKey]) -> bool {
        let missing: Vec<ProbeKey> = keys
            .iter()
            .filter(|k| !self.areas.contains_key(*k))
            .cloned()
            .collect();
        if missing.is_empty() {
            return false;
        }
        self.out.push_back(Output::Probe(missing));
        self.deferred = true;
        true
    }

    /// Whether a device is registered with the engine already.
    pub fn has_disk(&self, path: &std::path::Path) -> bool {
        self.disks.contains_key(path)
    }

    /// A probe ended: `device` is the opened device when it was not registered yet. The
    /// commands waiting for probes are decided again (those still waiting keep waiting); a
    /// failed probe makes its commands fail with its error, and is forgotten by
    /// [`Host::forget_failed_probes`] so that a later command tries again.
    pub fn probe_done(
        &mut self,
        key: ProbeKey,
        device: Option<Result<Device, String>>,
        geometry: Result<Geometry, String>,
    ) -> Result<(), String> {
        let mut result = geometry.map(|geometry| AreaInfo { geometry });
        match device {
            Some(Ok(dev)) if !self.disks.contains_key(&key.0) => {
                match self.set.backend_mut().add_disk(dev) {
                    Ok(id) => {
                        self.disks.insert(key.0.clone(), id);
                    }
                    Err(e) => result = Err(e.to_string()),
                }
            }
            Some(Err(e)) if !self.disks.contains_key(&key.0) => result = Err(e),
            _ => {}
        }
        let r = result.as_ref().map(|_| ()).map_err(Clone::clone);
        self.areas.insert(key, result);
        let now = self.now;
        for (k, cmd) in std::mem::take(&mut self.waiting) {
            if let Some(reply) = self.execute(now, k, cmd) {
                self.reply(k, reply);
            }
        }
        r
    }

    /// Forgets failed probes once the requests waiting for them were given again.
    pub fn forget_failed_probes(&mut self) {
        self.areas.retain(|_, r| r.is_ok());
    }

    /// Registers a device under `path` directly (the simulation's disks), with the geometry
    /// of the lease areas at `offsets`.
    pub fn add_known_disk(&mut self, path: PathBuf, disk: DiskId, areas: &[(u64, Geometry)]) {
        for (off, g) in areas {
            self.areas
                .insert((path.clone(), *off), Ok(AreaInfo { geometry: *g }));
        }
        self.disks.insert(path, disk);
    }

    /// Runs the engine at `now` and handles what completed.
    pub fn step(&mut self, now: Time) -> Result<(), tenure_core::lockspace::LockspaceError> {
        self.at(now);
        self.set.step(now)?;
        self.after_step();
        Ok(())
    }

    /// Asks every lockspace to be left once no lease is held, and refuses new work.
    pub fn stop(&mut self, now: Time) {
        self.at(now);
        self.stopping = true;
        self.begin_leaving_all(now);
    }

    /// Nothing is left to do before exiting.
    pub fn ready_to_exit(&self) -> bool {
        self.spaces.is_empty() && self.pending.is_empty()
    }

    fn after_step(&mut self) {
        let now = self.now;
        while let Some((id, outcome)) = self.set.take_op_result() {
            self.op_done(now, id, outcome);
        }
        for i in 0..self.spaces.len() {
            let id = self.spaces[i].id;
            for ev in self.set.take_events(id) {
                self.space_event(now, i, ev);
            }
        }
        for name in self.sup.take_cleared() {
            if let Some(s) = self.spaces.iter_mut().find(|s| s.name == name) {
                s.cleared = true;
            }
            let dropped = self.reg.take(|l| l.space == name);
            tracing::warn!(lockspace = %name, leases = dropped.len(), "lost lockspace cleared: its leases are gone");
        }
        // Forget cleared, left or failed lockspaces once no operation of theirs runs.
        let mut i = 0;
        while i < self.spaces.len() {
            let s = &self.spaces[i];
            let done = s.cleared
                && !self.pending.values().any(|p| match p {
                    Pending::Acquire { space, .. }
                    | Pending::Convert { space, .. }
                    | Pending::Front { space } => *space == s.name,
                    Pending::Release { leases, .. } => leases.iter().any(|l| l.space == s.name),
                });
            if done && self.set.remove(s.id).is_ok() {
                self.epoch = self.epoch.wrapping_add(1);
                let s = self.spaces.remove(i);
                let _ = self.sup.remove_space(&s.name);
                for w in s.join_waiters.iter().chain(&s.leave_waiters) {
                    let reason = s.lost.clone().unwrap_or_else(|| "lockspace gone".into());
                    self.reply(*w, err(ErrorCode::LockspaceLost, reason));
                }
                let unplanned = s
                    .lost
                    .clone()
                    .or_else(|| s.join_failed.clone().map(|e| format!("join failed: {e}")));
                self.out.push_back(Output::SpaceGone {
                    name: s.name,
                    unplanned,
                });
                continue;
            }
            i += 1;
        }
        self.removals_after_kill();
        if self.stopping {
            self.begin_leaving_all(now);
        }
    }

    /// sanlock's lockspace removal: SIGKILL every holder of a lease in it (no kill path), then
    /// leave once their leases are gone (answered then when `wait`, at once otherwise).
    fn lockspace_remove_killing(&mut self, k: ClientKey, name: &str, wait: bool) -> Option<Reply> {
        if let Err(r) = self.removable(name) {
            return Some(r);
        }
        let mut holders: Vec<i32> = self
            .reg
            .iter()
            .filter(|l| l.space == name && l.pid > 0)
            .map(|l| l.pid)
            .collect();
        holders.sort_unstable();
        holders.dedup();
        if holders.is_empty() && !self.space_busy(name) && !self.kept_by_orphans(name) {
            return self.leave_space(k, name, wait, true);
        }
        for pid in holders {
            tracing::warn!(lockspace = %name, pid, "lockspace removal: killing lease holder");
            self.out.push_back(Output::Signal {
                pid,
                signal: guard::KillSignal::Kill,
            });
        }
        self.removals.push((wait.then_some(k), name.to_owned()));
        (!wait).then(|| {
            Reply::Done(Done::Leaving {
                lockspace: name.to_owned(),
            })
        })
    }

    /// Whether a lockspace marked used by orphans has orphans: its removal waits until they
    /// are released or the mark is cleared (sanlock's USED_BY_ORPHANS).
    fn kept_by_orphans(&self, name: &str) -> bool {
        self.space_index(name)
            .is_some_and(|i| self.spaces[i].used_by_orphans)
            && self
                .reg
                .iter()
                .any(|l| l.space == name && l.owner == Owner::Orphan)
    }

    /// Forgets the orphans of a lockspace being left: they stay owned on disk by our old
    /// generation, which is dead once we are gone (as sanlock leaves them).
    fn drop_orphans(&mut self, name: &str) {
        let gone = self
            .reg
            .take(|l| l.space == name && l.owner == Owner::Orphan);
        for l in &gone {
            tracing::info!(lockspace = %name, resource = %l.resource.escaped(), "leaving the lockspace: orphan forgotten (it stays owned by this generation on disk)");
        }
        if !gone.is_empty() {
            self.refresh_used(name);
        }
    }

    /// Removals whose killed holders' leases are gone: leave now.
    fn removals_after_kill(&mut self) {
        for (k, name) in std::mem::take(&mut self.removals) {
            let holders = self
                .reg
                .iter()
                .any(|l| l.space == name && l.owner != Owner::Orphan);
            if holders || self.space_busy(&name) || self.kept_by_orphans(&name) {
                self.removals.push((k, name));
                continue;
            }
            match k {
                Some(k) => {
                    if let Some(r) = self.leave_space(k, &name, true, true) {
                        self.reply(k, r);
                    }
                }
                None => {
                    // Answered already; leave without a waiter.
                    let now = self.now;
                    self.leave_now(now, &name);
                }
            }
        }
    }

    fn space_event(&mut self, now: Time, i: usize, ev: DeltaEvent) {
        self.epoch = self.epoch.wrapping_add(1);
        let name = self.spaces[i].name.clone();
        let id = self.spaces[i].id;
        match ev {
            DeltaEvent::Joined { generation } => {
                let deadline = self.set.renewal_deadline(id).unwrap_or(now);
                tracing::info!(lockspace = %name, generation, "joined");
                if let Err(e) = self.sup.joined(&name, generation, deadline) {
                    tracing::error!(lockspace = %name, error = %e, "supervisor refused the join: leaving");
                    let _ = self.set.leave(id, now);
                }
                let waiters = std::mem::take(&mut self.spaces[i].join_waiters);
                for w in waiters {
                    self.reply(
                        w,
                        Reply::Done(Done::Joined {
                            lockspace: name.clone(),
                            generation,
                        }),
                    );
                }
            }
            DeltaEvent::JoinFailed { error } => {
                tracing::error!(lockspace = %name, error = %error, "join failed");
                let waiters = std::mem::take(&mut self.spaces[i].join_waiters);
                for w in waiters {
                    self.reply(w, err(ErrorCode::Failed, format!("join {name}: {error}")));
                }
                self.spaces[i].join_failed = Some(error.to_string());
                self.spaces[i].cleared = true;
            }
            DeltaEvent::Renewed {
                read_latency,
                write_latency,
            } => {
                self.metrics.renewed(&name, read_latency + write_latency);
                if let Some(d) = self.set.renewal_deadline(id) {
                    let note = RenewalNote {
                        at_unix_ms: self.unix_ms(),
                        latency_ms: (read_latency + write_latency).as_millis() as u64,
                        ok: true,
                        error: None,
                    };
                    self.sup.renewed(&name, now, d, note);
                }
            }
            DeltaEvent::RenewalFailed { error } => {
                tracing::warn!(lockspace = %name, error = %error, "renewal failed");
                self.metrics.renewal_failed(&name, &error);
                self.sup.renewal_failed(
                    &name,
                    RenewalNote {
                        at_unix_ms: self.unix_ms(),
                        latency_ms: 0,
                        ok: false,
                        error: Some(error.to_string()),
                    },
                );
            }
            DeltaEvent::Lost { error } => {
                tracing::error!(lockspace = %name, error = %error, "lockspace lost: its lease holders will be killed");
                self.spaces[i].lost = Some(error.to_string());
                self.sup.lost(&name, now);
                for w in std::mem::take(&mut self.spaces[i].join_waiters) {
                    self.reply(
                        w,
                        err(ErrorCode::LockspaceLost, format!("join {name}: {error}")),
                    );
                }
            }
            DeltaEvent::BitSet { from, events } => {
                tracing::info!(lockspace = %name, ?from, "hosts set our bit: examining request records");
                self.examine(&name, None);
                if !events.is_empty() {
                    self.out.push_back(Output::Events {
                        space: name.clone(),
                        our_host_id: self.spaces[i].spec.host_id,
                        events,
                    });
                }
            }
            DeltaEvent::Released => {
                tracing::info!(lockspace = %name, "left");
                let waiters = std::mem::take(&mut self.spaces[i].leave_waiters);
                for w in waiters {
                    self.reply(
                        w,
                        Reply::Done(Done::Left {
                            lockspace: name.clone(),
                        }),
                    );
                }
                self.spaces[i].cleared = true;
            }
        }
    }

    fn begin_leaving_all(&mut self, now: Time) {
        if self.reg.iter().any(|l| l.owner != Owner::Orphan) {
            return;
        }
        // Orphans do not outlive tenured's leaving its lockspaces.
        let names: Vec<String> = self.spaces.iter().map(|s| s.name.clone()).collect();
        for n in names {
            self.drop_orphans(&n);
        }
        // Joined lockspaces release their host id (Left follows); a joining one is left once
        // joined (the next pass); failed, left, idle and lost ones (holding no lease, checked
        // above) have nothing to release on disk.
        for s in &mut self.spaces {
            match self.set.state(s.id) {
                Some(LockspaceState::Joined { .. }) => {
                    let _ = self.set.leave(s.id, now);
                }
                Some(LockspaceState::Joining { .. }) => {}
                _ => s.cleared = true,
            }
        }
    }

    pub fn space_index(&self, name: &str) -> Option<usize> {
        self.spaces.iter().position(|s| s.name == name)
    }

    pub fn area(&self, key: &ProbeKey) -> Option<Result<AreaInfo, String>> {
        self.areas.get(key).cloned()
    }

    fn lockspace_add(
        &mut self,
        k: Option<ClientKey>,
        spec: &LockspaceSpec,
        wait: bool,
        io_timeout_s: Option<u64>,
    ) -> Option<Reply> {
        let io_timeout = io_timeout_s.unwrap_or(self.cfg.io_timeout_s);
        if !(1..=crate::config::IO_TIMEOUT_MAX_S).contains(&io_timeout) {
            return Some(err(
                ErrorCode::BadRequest,
                format!(
                    "io_timeout_s {io_timeout} is out of range (1..={})",
                    crate::config::IO_TIMEOUT_MAX_S
                ),
            ));
        }
        let name = spec.name.escaped();
        if self.space_index(&name).is_some() {
            return Some(err(
                ErrorCode::Exists,
                format!("lockspace {name} is already added"),
            ));
        }
        if self.stopping {
            return Some(err(ErrorCode::Busy, "tenured is stopping"));
        }
        let key = (PathBuf::from(&spec.disk.path), spec.disk.offset);
        if self.missing(std::slice::from_ref(&key)) {
            return None;
        }
        let info = match self.areas.get(&key).cloned() {
            Some(Ok(i)) => i,
            Some(Err(e)) => return Some(err(ErrorCode::Io, format!("{}: {e}", spec.disk.path))),
            None => return Some(err(ErrorCode::Io, "probe failed")),
        };
        if spec.host_id == 0 || spec.host_id > info.geometry.hosts_max() {
            return Some(err(
                ErrorCode::BadRequest,
                format!(
                    "host id {} is out of range (1..={})",
                    spec.host_id,
                    info.geometry.hosts_max()
                ),
            ));
        }
        let Some(&disk) = self.disks.get(&key.0) else {
            return Some(err(ErrorCode::Io, "device not open"));
        };
        if let Err(e) = self.sup.add_space(&name, spec.host_id) {
            return Some(err(
                ErrorCode::Failed,
                format!("cannot supervise {name}: {e}"),
            ));
        }
        let dcfg = DeltaConfig {
            space_name: spec.name,
            host_id: spec.host_id,
            host_name: self.cfg.host_name,
            geometry: info.geometry,
            area_offset: spec.disk.offset,
            // Validated above: 1..=IO_TIMEOUT_MAX_S fits u16.
            // W in the lockspace's rules is only ever another host's: when it is dead, when
            // its slot may be taken over (core/src/timeouts.rs).
            timeouts: Timeouts::new(
                u16::try_from(io_timeout).unwrap_or(u16::MAX),
                self.cfg.other_hosts_fire_timeout_s,
            ),
        };
        let id = match self.set.add(dcfg, disk) {
            Ok(id) => id,
            Err(e) => {
                let _ = self.sup.remove_space(&name);
                return Some(err(ErrorCode::Full, e.to_string()));
            }
        };
        let now = self.now;
        if let Err(e) = self.set.join(id, now) {
            let _ = self.set.remove(id);
            let _ = self.sup.remove_space(&name);
            return Some(err(ErrorCode::Failed, e.to_string()));
        }
        tracing::info!(lockspace = %name, host_id = spec.host_id, path = %spec.disk.path, "joining");
        let mut space = Space {
            name: name.clone(),
            id,
            spec: spec.clone(),
            join_waiters: Vec::new(),
            leave_waiters: Vec::new(),
            lost: None,
            cleared: false,
            used: false,
            used_by_orphans: false,
            join_failed: None,
        };
        match (k, wait) {
            (Some(k), true) => {
                space.join_waiters.push(k);
                self.epoch = self.epoch.wrapping_add(1);
                self.spaces.push(space);
                None
            }
            _ => {
                self.epoch = self.epoch.wrapping_add(1);
                self.spaces.push(space);
                Some(Reply::Done(Done::Joining { lockspace: name }))
            }
        }
    }

    /// Marks a lockspace used / used while orphans exist, and tells the supervisor what that
    /// means now.
    fn lockspace_config(
        &mut self,
        name: &str,
        used: Option<bool>,
        used_by_orphans: Option<bool>,
    ) -> Reply {
        let Some(i) = self.space_index(name) else {
            return err(ErrorCode::NotFound, format!("no lockspace {name}"));
        };
        let lost = self.spaces[i].lost.is_some()
            || !matches!(
                self.set.state(self.spaces[i].id),
                Some(LockspaceState::Joined { .. } | LockspaceState::Joining { .. })
            );
        if lost && (used == Some(true) || used_by_orphans == Some(true)) {
            return err(
                ErrorCode::LockspaceLost,
                format!("lockspace {name} is lost or left: it cannot be marked used"),
            );
        }
        if let Some(u) = used {
            self.epoch = self.epoch.wrapping_add(1);
            self.spaces[i].used = u;
        }
        if let Some(u) = used_by_orphans {
            self.epoch = self.epoch.wrapping_add(1);
            self.spaces[i].used_by_orphans = u;
        }
        self.refresh_used(name);
        let s = &self.spaces[i];
        tracing::info!(lockspace = %name, used = s.used, used_by_orphans = s.used_by_orphans, "lockspace config");
        Reply::Done(Done::Config {
            lockspace: name.to_owned(),
            used: s.used,
            used_by_orphans: s.used_by_orphans,
        })
    }

    /// Tells the supervisor whether a lockspace counts as used now.
    fn refresh_used(&mut self, name: &str) {
        let Some(i) = self.space_index(name) else {
            return;
        };
        let orphans = self
            .reg
            .iter()
            .any(|l| l.space == name && l.owner == Owner::Orphan);
        let s = &self.spaces[i];
        let used = s.used || (s.used_by_orphans && orphans);
        let _ = self.sup.set_used(name, used);
    }

    /// The index of a lockspace that may be removed: added, and not marked used.
    fn removable(&self, name: &str) -> Result<usize, Reply> {
        let i = self
            .space_index(name)
            .ok_or_else(|| err(ErrorCode::NotFound, format!("no lockspace {name}")))?;
        if self.spaces[i].used {
            return Err(err(
                ErrorCode::Busy,
                format!("lockspace {name} is marked used: clear it first (lockspace config)"),
            ));
        }
        Ok(i)
    }

    fn lockspace_remove(&mut self, k: ClientKey, name: &str, wait: bool) -> Option<Reply> {
        self.leave_space(k, name, wait, false)
    }

    /// Leaves a lockspace without leases (`orphans_go`: but for orphans, forgotten once the
    /// leave started).
    fn leave_space(
        &mut self,
        k: ClientKey,
        name: &str,
        wait: bool,
        orphans_go: bool,
    ) -> Option<Reply> {
        let i = match self.removable(name) {
            Ok(i) => i,
            Err(r) => return Some(r),
        };
        let held = self
            .reg
            .iter()
            .filter(|l| l.space == name && !(orphans_go && l.owner == Owner::Orphan))
            .count();
        if held > 0 {
            return Some(err(
                ErrorCode::Busy,
                format!("lockspace {name} has {held} lease(s) held; release them first"),
            ));
        }
        // An acquire, conversion or release still runs in it (sanlock: EBUSY while a
        // resource is being added or released): leaving now would cut it off mid-way.
        if self.space_busy(name) {
            return Some(err(
                ErrorCode::Busy,
                format!("lockspace {name} has a lease operation in progress; try again"),
            ));
        }
        let now = self.now;
        let id = self.spaces[i].id;
        match self.set.state(id) {
            Some(LockspaceState::Joined { .. } | LockspaceState::Joining { .. }) => {
                if let Err(e) = self.set.leave(id, now) {
                    return Some(err(ErrorCode::Busy, e.to_string()));
                }
                if orphans_go {
                    self.drop_orphans(name);
                }
                if wait {
                    self.spaces[i].leave_waiters.push(k);
                    return None;
                }
                Some(Reply::Done(Done::Leaving {
                    lockspace: name.to_owned(),
                }))
            }
            _ => {
                if orphans_go {
                    self.drop_orphans(name);
                }
                self.spaces[i].cleared = true;
                Some(Reply::Done(Done::Left {
                    lockspace: name.to_owned(),
                }))
            }
        }
    }

    /// Whom a lease command acts for: the client whose connection owns the leases, the
    /// holder pid, and whether the leases are "on behalf of" that pid (owned and matched by
    /// pid) rather than the connection's own.
    fn holder(&self, k: ClientKey, h: Holder) -> Result<(ClientKey, i32, bool), Reply> {
        let me = match h {
            Holder::Client(t) => t,
            Holder::Me | Holder::Pid(_) => k,
        };
        let c = self.clients.get(&me).ok_or_else(|| match h {
            Holder::Client(_) => err(ErrorCode::NotFound, "client gone"),
            Holder::Me | Holder::Pid(_) => err(ErrorCode::Failed, "client gone"),
        })?;
        match h {
            Holder::Me | Holder::Client(_) => Ok((me, c.pid, false)),
            Holder::Pid(p) if p == c.pid => Ok((me, p, false)),
            Holder::Pid(p) if c.uid == 0 => {
                if p <= 0 {
                    return Err(err(ErrorCode::BadRequest, format!("pid {p} is not valid")));
                }
                Ok((me, p, true))
            }
            Holder::Pid(p) => Err(err(
                ErrorCode::Permission,
                format!(
                    "only root may act for another pid ({p}); this client runs as uid {}",
                    c.uid
                ),
            )),
        }
    }

    fn acquire(
        &mut self,
        k: ClientKey,
        specs: &[ResourceSpec],
        (no_wait, lvb): (bool, bool),
        holder: Holder,
        persistent: &[bool],
        adopt_orphan: bool,
    ) -> Option<Reply> {
        let persistent_at = |i: usize| persistent.get(i).copied().unwrap_or(false);
        let (me, pid, on_behalf) = match self.holder(k, holder) {
            Ok(x) => x,
            Err(r) => return Some(r),
        };
        let resources = specs;
        if resources.is_empty() || resources.len() > tenure_core::lockspace::RESOURCES_PER_OP_MAX {
            return Some(err(
                ErrorCode::BadRequest,
                format!(
                    "acquire takes 1 to {} resources",
                    tenure_core::lockspace::RESOURCES_PER_OP_MAX
                ),
            ));
        }
        if let Some(s) = specs
            .iter()
            .find(|s| s.disks.is_empty() || s.disks.len() > tenure_format::spec::DISKS_MAX)
        {
            return Some(err(
                ErrorCode::BadRequest,
                format!(
                    "{}: a lease is on 1 to {} disks, not {}",
                    s.name.escaped(),
                    tenure_format::spec::DISKS_MAX,
                    s.disks.len()
                ),
            ));
        }
        let space = specs[0].lockspace.escaped();
        if specs.iter().any(|s| s.lockspace.escaped() != space) {
            return Some(err(
                ErrorCode::BadRequest,
                "all resources of one acquire must be in one lockspace",
            ));
        }
        let shared = specs[0].mode == ResourceMode::Shared;
        if specs
            .iter()
            .any(|s| (s.mode == ResourceMode::Shared) != shared)
        {
            return Some(err(
                ErrorCode::BadRequest,
                "one acquire takes either shared or exclusive resources, not both",
            ));
        }
        let Some(si) = self.space_index(&space) else {
            return Some(err(
                ErrorCode::NotFound,
                format!("no lockspace {space} (add it first)"),
            ));
        };
        if let Some(why) = &self.spaces[si].lost {
            return Some(err(
                ErrorCode::LockspaceLost,
                format!("lockspace {space} was lost: {why}"),
            ));
        }
        if self.stopping {
            return Some(err(ErrorCode::Busy, "tenured is stopping"));
        }
        for (i, s) in specs.iter().enumerate() {
            if specs[..i].iter().any(|o| o.name == s.name) {
                return Some(err(
                    ErrorCode::BadRequest,
                    format!("{} is named twice in one acquire", s.name.escaped()),
                ));
            }
        }
        // Orphans (persistent leases whose holder went, sanlock 3.2): adopted when asked in
        // their mode; otherwise the resource is refused, as sanlock does (−EUCLEAN).
        let names: Vec<Name> = specs.iter().map(|s| s.name).collect();
        let mut adopt = vec![false; names.len()];
        for (i, n) in names.iter().enumerate() {
            let Some(o) = self.reg.orphan(&ResourceKey::new(&space, *n)) else {
                continue;
            };
            let mode = |sh: bool| if sh { "shared" } else { "exclusive" };
            if !adopt_orphan || o.held.acquired.shared != shared {
                return Some(err(
                    ErrorCode::Orphan,
                    format!(
                        "{space}:{} is an orphan held {} on this host (its persistent holder went): adopt it {} or release it (release --orphan)",
                        n.escaped(),
                        mode(o.held.acquired.shared),
                        mode(o.held.acquired.shared)
                    ),
                ));
            }
            adopt[i] = true;
        }
        // Local exclusion, before anything starts (crate::host::registry): all or nothing.
        let rest: Vec<Name> = names
            .iter()
            .zip(&adopt)
            .filter(|(_, a)| !**a)
            .map(|(n, _)| *n)
            .collect();
        let mut rest_admits = match self.reg.admit_acquire(&space, &rest, shared) {
            Ok(a) => a.into_iter(),
            Err((key, r)) => return Some(refusal_reply(&key, r)),
        };
        // Per resource: None adopts the orphan, else how it proceeds.
        let admits: Vec<Option<Admit>> = adopt
            .iter()
            .map(|a| if *a { None } else { rest_admits.next() })
            .collect();
        for (n, a) in names.iter().zip(&admits) {
            let Some(a) = a else { continue };
            let lvb_missing = self
                .reg
                .shared_hold(&ResourceKey::new(&space, *n))
                .is_some_and(|l| l.held.acquired.lvb.is_none());
            if *a == Admit::Join && lvb && lvb_missing {
                return Some(err(
                    ErrorCode::BadRequest,
                    format!(
                        "{} is held shared on this host without its LVB: the first holder must acquire it with lvb",
                        n.escaped()
                    ),
                ));
            }
        }
        if self.reg.len() + specs.len() > LEASES_MAX {
            return Some(err(
                ErrorCode::Full,
                format!("too many leases ({LEASES_MAX})"),
            ));
        }
        let all_keys: Vec<ProbeKey> = specs
            .iter()
            .flat_map(|s| &s.disks)
            .map(|d| (PathBuf::from(&d.path), d.offset))
            .collect();
        if self.missing(&all_keys) {
            return None;
        }
        let client_name = self
            .clients
            .get(&me)
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let owner = if on_behalf {
            Owner::Pid(pid)
        } else {
            Owner::Conn(me)
        };
        let lease_of = |s: &ResourceSpec, held: HeldResource| {
            let location = (s.disks[0].path.clone(), s.disks[0].offset);
            let mut l = Lease::new(
                &space,
                location,
                held,
                owner,
                pid,
                &client_name,
                self.unix_ms(),
            );
            l.mirrors = disks_of(s).split_off(1);
            l
        };
        // Joiners of this host's shared holds take a copy of the hold's record.
        let mut joins = Vec::new();
        for (i, (s, a)) in specs.iter().zip(&admits).enumerate() {
            if *a == Some(Admit::Join) {
                let key = ResourceKey::new(&space, s.name);
                let Some(h) = self.reg.shared_hold(&key) else {
                    return Some(err(ErrorCode::Failed, "internal: shared hold gone"));
                };
                let mut j = lease_of(s, h.held.clone());
                j.persistent = persistent_at(i);
                joins.push(j);
            }
        }
        let mut targets = Vec::with_capacity(specs.len());
        let mut on_disk = Vec::with_capacity(specs.len());
        let mut locations = Vec::with_capacity(specs.len());
        let mut on_disk_persistent = Vec::with_capacity(specs.len());
        for (i, (s, a)) in specs.iter().zip(&admits).enumerate() {
            if *a != Some(Admit::Disk) {
                continue;
            }
            on_disk.push(ResourceKey::new(&space, s.name));
            on_disk_persistent.push(persistent_at(i));
            locations.push(disks_of(s));
            let (geometry, mut disks) = match self.lease_disks(s) {
                Ok(x) => x,
                Err(r) => return Some(r),
            };
            let (disk, area_offset) = disks.remove(0);
            targets.push(ResourceTarget {
                name: s.name,
                disk,
                area_offset,
                geometry,
                expect_lver: match s.mode {
                    ResourceMode::ExclusiveAtLver(v) => Some(v),
                    _ => None,
                },
                mirrors: disks,
            });
        }
        // Adoptions: the orphan becomes the new holder's, joining like a shared hold's joiner
        // while the rest of the acquire runs (an orphan again if it fails). Taken out last:
        // nothing above may return once they are.
        let wall = self.unix_ms();
        for (i, s) in specs.iter().enumerate() {
            if !adopt[i] {
                continue;
            }
            let key = ResourceKey::new(&space, s.name);
            for mut l in self.reg.take(|l| l.is(&key) && l.is_orphan()) {
                tracing::info!(lockspace = %space, resource = %s.name.escaped(), pid, "orphan adopted");
                l.owner = owner;
                l.pid = pid;
                l.client_name.clone_from(&client_name);
                l.location = (s.disks[0].path.clone(), s.disks[0].offset);
                l.mirrors = disks_of(s).split_off(1);
                l.acquired_unix_ms = wall;
                l.persistent = persistent_at(i);
                l.adopting = true;
                joins.push(l);
            }
        }
        let now = self.now;
        if targets.is_empty() {
            return Some(self.grant(now, k, &space, owner, pid, joins));
        }
        let opts = AcquireOptions {
            shared,
            no_wait,
            read_lvb: lvb,
        };
        let id = match self
            .set
            .start_acquire(self.spaces[si].id, targets, opts, now)
        {
            Ok(id) => id,
            Err(e) => {
                self.give_back_joins(now, joins);
                return Some(op_error_reply(specs[0].name, &e));
            }
        };
        self.reg.acquire_started(id, &on_disk, joins);
        self.pending.insert(
            id,
            Pending::Acquire {
                client: k,
                client_name,
                space,
                locations,
                owner,
                pid,
                on_disk,
                persistent: on_disk_persistent,
                owner_gone: false,
            },
        );
        None
    }

    /// The geometry and the engine's disks (with area offsets) of a lease: from its probes.
    /// A lease on one disk needs that disk's area; a lease on several disks needs every
    /// device open and a majority of its areas read (the others may be failing: every step
    /// of the protocol completes on a majority, PROTOCOL "Leases on several disks"), all of
    /// one geometry.
    fn lease_disks(&self, s: &ResourceSpec) -> Result<(Geometry, Vec<(DiskId, u64)>), Reply> {
        let n = s.disks.len();
        let mut geometry: Option<Geometry> = None;
        let mut first_error: Option<Reply> = None;
        let mut readable = 0;
        let mut disks = Vec::with_capacity(n);
        for d in &s.disks {
            let key: ProbeKey = (PathBuf::from(&d.path), d.offset);
            let Some(&disk) = self.disks.get(&key.0) else {
                return Err(err(ErrorCode::Io, format!("{}: device not open", d.path)));
            };
            disks.push((disk, d.offset));
            match self.areas.get(&key).cloned() {
                Some(Ok(info)) => {
                    if geometry.is_some_and(|g| g != info.geometry) {
                        return Err(err(
                            ErrorCode::BadRequest,
                            format!(
                                "{}: its disks have areas of different geometries",
                                s.name.escaped()
                            ),
                        ));
                    }
                    geometry = Some(info.geometry);
                    readable += 1;
                }
                other => {
                    let e = match other {
                        Some(Err(e)) => e,
                        _ => "probe failed".to_owned(),
                    };
                    if n > 1 {
                        tracing::warn!(resource = %s.name.escaped(), path = %d.path, offset = d.offset, error = %e, "a disk of a lease on several disks cannot be read: acquiring on the others' majority");
                    }
                    // No lease there (sanlock: −223, bad magic), or the device cannot be read.
                    let code = if e.starts_with("no lease area") {
                        ErrorCode::Corrupt
                    } else {
                        ErrorCode::Io
                    };
                    first_error.get_or_insert(err(code, format!("{}: {e}", d.path)));
                }
            }
        }
        match geometry {
            Some(g) if readable > n / 2 => Ok((g, disks)),
            _ => Err(first_error.unwrap_or_else(|| err(ErrorCode::Io, "probe failed"))),
        }
    }

    /// Makes `leases` (all of one acquire, held on disk now) the holder's: registers the holder
    /// pid with the supervisor, or releases them at once when the holder is gone.
    fn grant(
        &mut self,
        now: Time,
        client: ClientKey,
        space: &str,
        owner: Owner,
        pid: i32,
        leases: Vec<Lease>,
    ) -> Reply {
        let (kill_path, restrict) = match owner {
            Owner::Conn(o) => self
                .clients
                .get(&o)
                .map_or((None, 0), |c| (c.kill_path.clone(), c.restrict)),
            _ => self
                .clients
                .get(&client)
                .map_or((None, 0), |c| (c.kill_path.clone(), 0)),
        };
        let alive_owner = match owner {
            Owner::Conn(k) => self.clients.contains_key(&k),
            _ => true,
        };
        let holder = if alive_owner {
            self.sup.add_holder(space, pid, kill_path, restrict)
        } else {
            Err("client disconnected".to_owned())
        };
        if let Err(e) = holder {
            // The holder is gone: give the leases back at once (persistent ones and
            // adoptions stay as orphans).
            tracing::info!(lockspace = %space, pid, error = %e, "holder gone before the acquire ended: releasing");
            self.let_go(now, None, leases);
            return err(ErrorCode::Failed, format!("holder pid {pid}: {e}"));
        }
        if let Owner::Pid(p) = owner {
            if !self.reg.iter().any(|l| l.owner == owner) {
                self.out.push_back(Output::WatchPid(p));
            }
        }
        let reply: Vec<_> = leases
            .iter()
            .map(|l| {
                let mut v = l.view();
                v.lvb_hex = l.held.acquired.lvb.as_deref().map(hex);
                v
            })
            .collect();
        let mut leases = leases;
        let adopted = leases.iter().any(|l| l.adopting);
        for l in &mut leases {
            l.adopting = false;
            tracing::info!(lockspace = %l.space, resource = %l.resource.escaped(), lver = l.held.acquired.lver, shared = l.held.acquired.shared, persistent = l.persistent, pid, "acquired");
        }
        self.reg.extend(leases);
        // An adopted orphan is one orphan fewer: "used by orphans" may have ended. (Any
        // other grant leaves the orphans as they were: nothing to tell supervision.)
        if adopted {
            self.refresh_used(space);
        }
        Reply::Done(Done::Acquired(reply))
    }

    fn op_done(&mut self, now: Time, id: OpId, outcome: OpOutcome) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        match p {
            Pending::Acquire {
                client,
                client_name,
                space,
                locations,
                owner,
                pid,
                on_disk,
                persistent,
                owner_gone,
            } => {
                // Its joiners of shared holds (still here unless their owner went away).
                let mut joined = self.reg.acquire_ended(id, &on_disk);
                let wall = self.unix_ms();
                match outcome {
                    OpOutcome::Acquired(held) if owner_gone => {
                        // Released at once, as the leases of any pid that exits (persistent
                        // ones stay as orphans); its joiners went when it exited.
                        let leases = won_leases(
                            held,
                            locations,
                            persistent,
                            &space,
                            owner,
                            pid,
                            &client_name,
                            wall,
                        );
                        tracing::info!(lockspace = %space, pid, "holder exited while its leases were acquired: releasing them");
                        self.give_back_joins(now, joined);
                        let _ = self.let_go(now, None, leases);
                        self.reply(
                            client,
                            err(
                                ErrorCode::Failed,
                                format!("holder pid {pid} exited while its leases were acquired: released"),
                            ),
                        );
                    }
                    OpOutcome::Acquired(held) => {
                        let mut leases = won_leases(
                            held,
                            locations,
                            persistent,
                            &space,
                            owner,
                            pid,
                            &client_name,
                            wall,
                        );
                        leases.append(&mut joined);
                        let r = self.grant(now, client, &space, owner, pid, leases);
                        self.reply(client, r);
                    }
                    OpOutcome::Failed {
                        resource,
                        error,
                        still_held,
                    } => {
                        if !still_held.is_empty() {
                            tracing::error!(lockspace = %space, count = still_held.len(), "acquire failed and unwinding it failed too: leases stay ours on disk");
                            self.adopt_orphans(&space, still_held);
                        }
                        // The joiners give up: a shared hold they alone kept goes now, an
                        // adopted orphan is an orphan again.
                        self.give_back_joins(now, joined);
                        self.reply(client, op_error_reply(resource, &error));
                    }
                    OpOutcome::Released => {}
                }
            }
            Pending::Convert {
                client,
                space,
                resource,
            } => {
                self.reg
                    .end(&ResourceKey::new(&space, resource), InFlight::Convert);
                let at = self
                    .reg
                    .iter()
                    .position(|l| l.space == space && l.resource == resource);
                let reply = match outcome {
                    OpOutcome::Acquired(mut held) => {
                        let h = held.remove(0);
                        let shared = h.acquired.shared;
                        if let Some(i) = at {
                            self.reg[i].held = keep_lvb(&self.reg[i].held, h);
                        }
                        tracing::info!(lockspace = %space, resource = %resource.escaped(), shared, "converted");
                        Reply::Done(Done::Converted {
                            resource: resource.escaped(),
                            shared,
                            warning: None,
                        })
                    }
                    OpOutcome::Failed {
                        resource: r,
                        error,
                        mut still_held,
                    } => {
                        let was_shared = at.is_some_and(|i| self.reg[i].held.acquired.shared);
                        let now_shared = still_held.last().is_some_and(|h| h.acquired.shared);
                        // The hold's record is what the engine says is ours now: a conversion
                        // to exclusive rewrote our dblock; a failed conversion to shared may
                        // have landed (other hosts may hold it shared), so it is shared now.
                        if let (Some(i), Some(h)) = (at, still_held.pop()) {
                            self.reg[i].held = keep_lvb(&self.reg[i].held, h);
                        }
                        if !was_shared && now_shared {
                            // A downgrade that may have happened is reported done: the client
                            // must stop relying on exclusivity (found by the cluster
                            // simulation: told "failed", it went on as the exclusive holder
                            // while another process joined the shared hold).
                            tracing::warn!(lockspace = %space, resource = %resource.escaped(), error = %error, "conversion to shared ended with an error; the lease is held shared from here on");
                            Reply::Done(Done::Converted {
                                resource: resource.escaped(),
                                shared: true,
                                warning: Some(format!("{}: {error}", r.escaped())),
                            })
                        } else {
                            op_error_reply(r, &error)
                        }
                    }
                    OpOutcome::Released => err(ErrorCode::Failed, "internal: convert released"),
                };
                if let Some(i) = at {
                    self.reg[i].converting = false;
                    // Its owner went away meanwhile: release it now.
                    let gone = match self.reg[i].owner {
                        Owner::Conn(c) => !self.clients.contains_key(&c),
                        Owner::Pid(p) => self.exited.contains(&p),
                        Owner::Orphan => false,
                    };
                    if let Owner::Pid(p) = self.reg[i].owner {
                        if !self
                            .reg
                            .iter()
                            .any(|l| l.owner == Owner::Pid(p) && l.converting)
                        {
                            self.exited.remove(&p);
                        }
                    }
                    if gone {
                        let l = self.reg.remove(i);
                        let now = self.now;
                        let _ = self.let_go(now, None, vec![l]);
                    }
                }
                self.reply(client, reply);
            }
            Pending::Front { .. } => self.out.push_back(Output::OpDone(id, outcome)),
            Pending::Release {
                client,
                leases,
                local,
            } => {
                self.reg.release_ended(&leases);
                let reply = match outcome {
                    OpOutcome::Released => {
                        for l in &leases {
                            tracing::info!(lockspace = %l.space, resource = %l.resource.escaped(), "released");
                        }
                        let names: Vec<String> = leases
                            .iter()
                            .map(|l| l.resource)
                            .chain(local)
                            .map(|n| n.escaped())
                            .collect();
                        Reply::Done(Done::Released(names))
                    }
                    OpOutcome::Failed {
                        resource,
                        error,
                        still_held,
                    } => {
                        if matches!(error, OpError::LockspaceLost | OpError::NotJoined) {
                            // Void with the lockspace: nothing to do on disk.
                        } else if let Some(l) = leases.first() {
                            let space = l.space.clone();
                            self.adopt_orphans(&space, still_held);
                        }
                        op_error_reply(resource, &error)
                    }
                    OpOutcome::Acquired(_) => err(ErrorCode::Failed, "internal: release acquired"),
                };
                self.forget_holders(&leases);
                if let Some(c) = client {
                    self.reply(c, reply);
                }
            }
        }
    }

    fn adopt_orphans(&mut self, space: &str, held: Vec<HeldResource>) {
        for h in held {
            let location = (self.path_of(h.target.disk), h.target.area_offset);
            let mirrors: Vec<(String, u64)> = h
                .target
                .mirrors
                .iter()
                .map(|(d, o)| (self.path_of(*d), *o))
                .collect();
            let mut l = Lease::new(space, location, h, Owner::Orphan, 0, "", self.unix_ms());
            l.mirrors = mirrors;
            self.reg.push(l);
        }
        self.refresh_used(space);
    }

    /// The path a device was registered under ("?" if it is not: never for a lease's disk).
    fn path_of(&self, disk: DiskId) -> String {
        self.disks
            .iter()
            .find(|(_, d)| **d == disk)
            .map_or_else(|| "?".to_owned(), |(p, _)| p.display().to_string())
    }

    /// Unregisters holder pids that hold nothing more in a lockspace.
    fn forget_holders(&mut self, gone: &[Lease]) {
        for l in gone {
            self.forget_pid(&l.space, l.pid);
        }
    }

    /// Unregisters `pid` from `space` if it holds nothing more there.
    fn forget_pid(&mut self, space: &str, pid: i32) {
        if pid == 0 {
            return;
        }
        if !self.reg.iter().any(|x| x.space == space && x.pid == pid) {
            self.sup.remove_holder(space, pid);
        }
    }

    /// Leases whose holder went: persistent ones (and adoptions not yet granted) stay ours
    /// on disk as orphans — one per resource, none while other local holders keep a shared
    /// hold — and the others are released.
    fn let_go(
        &mut self,
        now: Time,
        client: Option<ClientKey>,
        leases: Vec<Lease>,
    ) -> Option<Reply> {
        let (keep, free): (Vec<Lease>, Vec<Lease>) = leases
            .into_iter()
            .partition(|l| l.adopting || (l.persistent && l.joining.is_none()));
        for l in keep {
            self.make_orphan(l);
        }
        self.start_release(now, client, free, None)
    }

    /// `l` (taken out of the registry) stays ours on disk without a holder, unless other
    /// local holders keep its shared hold.
    fn make_orphan(&mut self, mut l: Lease) {
        let (space, pid) = (l.space.clone(), l.pid);
        if self.reg.iter().any(|o| o.is(&l.key())) {
            tracing::info!(lockspace = %space, resource = %l.resource.escaped(), pid, "holder gone; other local holders keep the shared hold");
        } else {
            tracing::info!(lockspace = %space, resource = %l.resource.escaped(), pid, shared = l.held.acquired.shared, "holder gone: the persistent lease stays ours as an orphan");
            l.owner = Owner::Orphan;
            l.pid = 0;
            l.joining = None;
            l.adopting = false;
            l.converting = false;
            l.persistent = true;
            l.rename_to = None;
            self.reg.push(l);
        }
        self.forget_pid(&space, pid);
        self.refresh_used(&space);
    }

    /// Joiners of an acquire that did not happen: adopted orphans are orphans again, the
    /// others go (a shared hold they alone kept is released).
    fn give_back_joins(&mut self, now: Time, joins: Vec<Lease>) {
        let (adopted, rest): (Vec<Lease>, Vec<Lease>) = joins.into_iter().partition(|l| l.adopting);
        for l in adopted {
            self.make_orphan(l);
        }
        self.start_release(now, None, rest, None);
    }

    fn start_release(
        &mut self,
        now: Time,
        client: Option<ClientKey>,
        leases: Vec<Lease>,
        lvb: Option<Vec<u8>>,
    ) -> Option<Reply> {
        // A holder of a shared hold that other local holders (or joiners) keep, or a second
        // lease of one hold in this batch, goes without disk I/O; the hold's last goes to disk.
        let (kept, leases) = self.reg.split_release(leases);
        let mut local: Vec<Name> = Vec::with_capacity(kept.len());
        for l in &kept {
            tracing::info!(lockspace = %l.space, resource = %l.resource.escaped(), pid = l.pid, "released (the shared hold stays for its other local holders)");
            local.push(l.resource);
        }
        self.forget_holders(&kept);
        if leases.is_empty() {
            let names: Vec<String> = local.iter().map(|n| n.escaped()).collect();
            return Some(Reply::Done(Done::Released(names)));
        }
        // Group by lockspace, at most RESOURCES_PER_OP_MAX per operation; the client gets
        // its reply with the last group (one group in practice).
        let mut groups: Vec<Vec<Lease>> = Vec::new();
        for l in leases {
            if l.rename_to.is_some() {
                // Renamed on release: an operation of its own.
                groups.push(vec![l]);
                continue;
            }
            match groups.iter_mut().find(|g| {
                g[0].space == l.space
                    && g[0].rename_to.is_none()
                    && g.len() < tenure_core::lockspace::RESOURCES_PER_OP_MAX
            }) {
                Some(g) => g.push(l),
                None => groups.push(vec![l]),
            }
        }
        let n = groups.len();
        for (gi, g) in groups.into_iter().enumerate() {
            let Some(si) = self.space_index(&g[0].space) else {
                self.forget_holders(&g);
                continue;
            };
            let held: Vec<(HeldResource, Option<Vec<u8>>)> = g
                .iter()
                .map(|l| {
                    (
                        l.held.clone(),
                        lvb.clone().or_else(|| l.lvb_to_write.clone()),
                    )
                })
                .collect();
            let last = gi + 1 == n;
            let who = if last { client } else { None };
            let rename = g[0].rename_to;
            match self
                .set
                .start_release_renaming(self.spaces[si].id, held, rename, now)
            {
                Ok(id) => {
                    self.reg.release_started(&g);
                    self.pending.insert(
                        id,
                        Pending::Release {
                            client: who,
                            leases: g,
                            local: if last {
                                std::mem::take(&mut local)
                            } else {
                                Vec::new()
                            },
                        },
                    );
                }
                Err(e) => {
                    let void = matches!(e, OpError::LockspaceLost | OpError::NotJoined);
                    if !void {
                        // Could not even start: keep them as ours, without holder.
                        let space = g[0].space.clone();
                        self.adopt_orphans(&space, g.iter().map(|l| l.held.clone()).collect());
                    }
                    self.forget_holders(&g);
                    if let Some(c) = who {
                        self.reply(c, op_error_reply(g[0].resource, &e));
                    }
                }
            }
        }
        None
    }

    /// Releases every lease of `owner` (connection closed, pid exited).
    fn release_owner(&mut self, owner: Owner, client: Option<ClientKey>) {
        // A lease being converted is released when the conversion ends (Pending::Convert).
        let mine = self.reg.take(|l| l.owner == owner && !l.converting);
        // Leases of a lost lockspace stay until the supervisor clears it (holders dead).
        let (lost, mine): (Vec<Lease>, Vec<Lease>) = mine.into_iter().partition(|l| {
            self.spaces
                .iter()
                .any(|s| s.name == l.space && s.lost.is_some())
        });
        self.reg.extend(lost);
        if mine.is_empty() {
            return;
        }
        let now = self.now;
        if let Some(r) = self.let_go(now, client, mine) {
            if let Some(c) = client {
                self.reply(c, r);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn release(
        &mut self,
        k: ClientKey,
        leases: &Leases,
        holder: Holder,
        lvb: Option<Vec<u8>>,
    ) -> Option<Reply> {
        let (me, pid, on_behalf) = match self.holder(k, holder) {
            Ok(x) => x,
            Err(r) => return Some(r),
        };
        let owner_ok = |l: &Lease| {
            if l.joining.is_some() {
                // Not granted yet: its acquire is still running.
                false
            } else if on_behalf {
                l.pid == pid
            } else {
                l.owner == Owner::Conn(me)
            }
        };
        let (all, wanted): (bool, Vec<(String, Name)>) = match leases {
            Leases::All => (true, Vec::new()),
            Leases::These(v) if v.is_empty() => {
                return Some(err(ErrorCode::BadRequest, "give either resources or all"))
            }
            Leases::These(v) => (
                false,
                v.iter().map(|l| (l.lockspace.escaped(), l.name)).collect(),
            ),
            Leases::Renamed { lease, .. } => (false, vec![(lease.lockspace.escaped(), lease.name)]),
            Leases::Orphans { space, name } => {
                return Some(self.release_orphans(&space.escaped(), *name))
            }
        };
        if lvb.is_some() && wanted.len() != 1 {
            return Some(err(
                ErrorCode::BadRequest,
                "an LVB is written for exactly one resource",
            ));
        }
        for (ls, n) in &wanted {
            if !self
                .reg
                .iter()
                .any(|l| owner_ok(l) && &l.space == ls && l.resource == *n)
            {
                return Some(err(
                    ErrorCode::NotFound,
                    format!("{ls}:{} is not held by this client", n.escaped()),
                ));
            }
        }
        let selected = |l: &Lease| {
            owner_ok(l)
                && (all
                    || wanted
                        .iter()
                        .any(|(s, n)| *s == l.space && *n == l.resource))
        };
        if let Some(l) = self.reg.iter().find(|l| selected(l) && l.converting) {
            return Some(err(
                ErrorCode::Busy,
                format!("{}:{} is being converted", l.space, l.resource.escaped()),
            ));
        }
        let lost: Vec<&Lease> = self
            .reg
            .iter()
            .filter(|l| {
                owner_ok(l)
                    && (all
                        || wanted
                            .iter()
                            .any(|(s, n)| *s == l.space && *n == l.resource))
            })
            .filter(|l| {
                self.spaces
                    .iter()
                    .any(|s| s.name == l.space && s.lost.is_some())
            })
            .collect();
        if !lost.is_empty() {
            return Some(err(
                ErrorCode::LockspaceLost,
                format!(
                    "{}: its lockspace was lost; the lease ends when its holders are dead",
                    lost[0].resource.escaped()
                ),
            ));
        }
        let mut mine = self.reg.take(|l| {
            owner_ok(l)
                && (all
                    || wanted
                        .iter()
                        .any(|(s, n)| *s == l.space && *n == l.resource))
        });
        if let Leases::Renamed { to, .. } = leases {
            for l in &mut mine {
                l.rename_to = Some(*to);
            }
        }
        let now = self.now;
        self.start_release(now, Some(k), mine, lvb)
    }

    /// Releases the orphans of `space` (all, or `name`'s) and answers at once with their
    /// names, as sanlock answers REL_ORPHAN with their count; a lost or unknown lockspace
    /// has none to release.
    fn release_orphans(&mut self, space: &str, name: Option<Name>) -> Reply {
        let joined = self
            .space_index(space)
            .is_some_and(|i| self.spaces[i].lost.is_none());
        if !joined {
            return Reply::Done(Done::OrphansReleased(Vec::new()));
        }
        let gone = self.reg.take(|l| {
            l.owner == Owner::Orphan && l.space == space && name.is_none_or(|n| l.resource == n)
        });
        let names: Vec<String> = gone.iter().map(|l| l.resource.escaped()).collect();
        for l in &gone {
            tracing::info!(lockspace = %space, resource = %l.resource.escaped(), "releasing orphan");
        }
        let now = self.now;
        self.start_release(now, None, gone, None);
        self.refresh_used(space);
        Reply::Done(Done::OrphansReleased(names))
    }

    /// The lease `lease` of the holder.
    fn own_lease(
        &mut self,
        k: ClientKey,
        lease: &LeaseRef,
        holder: Holder,
    ) -> Result<usize, Reply> {
        let (me, pid, on_behalf) = self.holder(k, holder)?;
        let ls = lease.lockspace.escaped();
        let resource = lease.to_string();
        self.reg
            .iter()
            .position(|l| {
                l.space == ls
                    && l.resource == lease.name
                    && if on_behalf {
                        l.pid == pid
                    } else {
                        l.owner == Owner::Conn(me)
                    }
            })
            .ok_or_else(|| {
                err(
                    ErrorCode::NotFound,
                    format!("{resource} is not held by this client"),
                )
            })
    }

    fn convert(
        &mut self,
        k: ClientKey,
        lease: &LeaseRef,
        shared: bool,
        holder: Holder,
        no_wait: bool,
    ) -> Option<Reply> {
        let resource = lease.to_string();
        let i = match self.own_lease(k, lease, holder) {
            Ok(i) => i,
            Err(r) => return Some(r),
        };
        let l = &self.reg[i];
        if l.held.acquired.shared == shared {
            return Some(err(
                ErrorCode::Exists,
                format!("{resource} is already held in that mode"),
            ));
        }
        if l.converting {
            return Some(err(
                ErrorCode::Busy,
                format!("{resource} is being converted"),
            ));
        }
        let key = l.key();
        if let Err(r) = self.reg.admit_convert(&key, shared) {
            return Some(refusal_reply(&key, r));
        }
        let l = &self.reg[i];
        let Some(si) = self.space_index(&l.space) else {
            return Some(err(ErrorCode::NotFound, "lockspace gone"));
        };
        let (space, res, held) = (l.space.clone(), l.resource, l.held.clone());
        let now = self.now;
        let started = if shared {
            self.set
                .start_convert_to_shared(self.spaces[si].id, held, now)
        } else {
            self.set
                .start_convert_to_exclusive(self.spaces[si].id, held, no_wait, now)
        };
        match started {
            Ok(id) => {
                self.reg[i].converting = true;
                self.reg.begin(key, InFlight::Convert);
                self.pending.insert(
                    id,
                    Pending::Convert {
                        client: k,
                        space,
                        resource: res,
                    },
                );
                None
            }
            Err(e) => Some(op_error_reply(res, &e)),
        }
    }

    fn lvb_get(&mut self, k: ClientKey, lease: &LeaseRef, holder: Holder) -> Reply {
        let resource = lease.to_string();
        let i = match self.own_lease(k, lease, holder) {
            Ok(i) => i,
            Err(r) => return r,
        };
        match &self.reg[i].held.acquired.lvb {
            Some(v) => Reply::Done(Done::Lvb {
                resource,
                value: v.clone(),
            }),
            None => err(
                ErrorCode::BadRequest,
                format!("{resource} was acquired without reading its LVB (acquire with lvb)"),
            ),
        }
    }

    fn lvb_set(&mut self, k: ClientKey, lease: &LeaseRef, v: &[u8], holder: Holder) -> Reply {
        let resource = lease.to_string();
        let i = match self.own_lease(k, lease, holder) {
            Ok(i) => i,
            Err(r) => return r,
        };
        let l = &self.reg[i];
        let ss = l.held.target.geometry.sector_size_bytes() as usize;
        if v.len() > ss {
            return err(
                ErrorCode::BadRequest,
                format!("an LVB is at most one sector ({ss} bytes), not {}", v.len()),
            );
        }
        if let Err(e) = l.held.target.geometry.lvb_offset() {
            return err(
                ErrorCode::Failed,
                format!("{resource}: no LVB in this geometry: {e}"),
            );
        }
        self.reg[i].lvb_to_write = Some(v.to_vec());
        Reply::Done(Done::LvbSet { resource })
    }

    fn inquire(&mut self, k: ClientKey, holder: Holder) -> Reply {
        let (me, pid, on_behalf) = match self.holder(k, holder) {
            Ok(x) => x,
            Err(r) => return r,
        };
        let mine: Vec<&Lease> = self
            .reg
            .iter()
            .filter(|l| l.joining.is_none())
            .filter(|l| {
                if on_behalf {
                    l.pid == pid
                } else {
                    l.owner == Owner::Conn(me)
                }
            })
            .collect();
        let state = mine
            .iter()
            .map(|l| l.state_string())
            .collect::<Vec<_>>()
            .join(" ");
        Reply::Done(Done::Leases {
            leases: mine.iter().map(|l| l.view()).collect(),
            state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenure_core::paxos::Fault;

    #[test]
    fn hex_is_lowercase_two_digits_per_byte_and_unhex_reads_it_back() {
        let all: Vec<u8> = (0..=255).collect();
        let h = hex(&all);
        let want: String = all.iter().map(|x| format!("{x:02x}")).collect();
        assert_eq!(h, want);
        assert_eq!(unhex_any(&h).expect("hex"), all);
        assert_eq!(hex(&[]), "");
    }

    fn reply_of(e: OpError) -> ErrorReply {
        match op_error_reply(Name::new("r").expect("name"), &e) {
            Reply::Error(r) => r,
            Reply::Done(d) => panic!("not an error: {d:?}"),
        }
    }

    fn fault_of(r: &ErrorReply) -> Option<Fault> {
        r.details.as_ref().and_then(|d| d.fault)
    }

    #[test]
    fn every_failure_is_reported_with_its_fault_and_a_stall_is_not_damage() {
        let r = reply_of(OpError::Paxos(PaxosError::Stalled("acquire")));
        assert_eq!(r.code, ErrorCode::Failed);
        assert_eq!(fault_of(&r), Some(Fault::Internal));
        let r = reply_of(OpError::Paxos(PaxosError::Corrupt("bad magic".into())));
        assert_eq!(r.code, ErrorCode::Corrupt);
        assert_eq!(fault_of(&r), Some(Fault::Damaged));
        let r = reply_of(OpError::Paxos(PaxosError::OwnerAlive {
            host_id: 2,
            generation: 7,
        }));
        assert_eq!(r.code, ErrorCode::OwnerAlive);
        let d = r.details.clone().expect("details");
        assert_eq!(
            (d.host_id, d.generation, d.fault),
            (Some(2), Some(7), Some(Fault::Contention))
        );
        // The native bytes: the same keys as protocol version 1 always sent.
        let wire = serde_json::to_string(&crate::proto::Reply::Error(r)).expect("json");
        assert!(
            wire.contains(r#""details":{"fault":"contention","generation":7,"host_id":2}"#),
            "{wire}"
        );
        let r = reply_of(OpError::LockspaceLost);
        assert_eq!(r.code, ErrorCode::LockspaceLost);
        assert_eq!(fault_of(&r), Some(Fault::Storage));
        let r = reply_of(OpError::Paxos(PaxosError::HostIdAboveNumHosts {
            host_id: 9,
            num_hosts: 8,
        }));
        assert_eq!(fault_of(&r), Some(Fault::Configuration));
    }
}
