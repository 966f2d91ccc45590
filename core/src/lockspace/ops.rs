//! Paxos lease operations of a [`LockspaceSet`](super::LockspaceSet): acquire (one or several
//! resources, all or nothing) and release, many in flight at once on the set's engine.
//!
//! Each resource of an operation runs its own [`PaxosAcquire`] or [`PaxosRelease`] machine;
//! the resources of one operation run in parallel. An owner-liveness question is answered from
//! the host table of the lockspace's own delta lease.
//!
//! All or nothing: when any resource of an acquire fails, the ones that were won are released
//! again (the operation is "unwinding") before the failure is reported; a resource whose
//! unwinding release also failed is reported as still held on disk, so the caller can retry.
//!
//! Invariants: a machine has at most one I/O (or one linked write→read pair) outstanding; a
//! completion is routed to the machine that issued it by IoId, and a completion nobody owns
//! (its operation ended, e.g. because the lockspace was lost) is returned to the engine; the
//! number of operations and of resources per operation is bounded.

use std::collections::VecDeque;

use serde::Serialize;
use tenure_format::{Geometry, Name};

use super::{Entry, LockspaceId};
use crate::clock::Time;
use crate::io::{Completion, DiskId, IoBackend, IoId, IoKind, IoOutcome, SubmitError};
use crate::paxos::disks::{DiskIo, Issued, Majority, PaxosMachine, Pumped};
use crate::paxos::{
    Acquired, BallotCache, PaxosAcquire, PaxosConfig, PaxosError, PaxosIo, PaxosRelease,
};

/// Operations in flight at once in one set.
pub const OPS_MAX: usize = 1024;

/// Resources in one operation (sanlock: 8).
pub const RESOURCES_PER_OP_MAX: usize = 8;

/// Ballot caches kept (one per lease released by us and not acquired again since); past this
/// the set starts over with none, which only costs the next acquires their first read.
pub const BALLOT_CACHES_MAX: usize = 4096;

/// Handle of a lease operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct OpId(pub u64);

/// A resource (paxos lease area) to acquire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResourceTarget {
    /// Resource name.
    pub name: Name,
    /// The disk its area is on (registered with the set's engine).
    pub disk: DiskId,
    /// Byte offset of the area on that disk.
    pub area_offset: u64,
    /// The area's geometry.
    pub geometry: Geometry,
    /// Acquire only if the lease is still at this lver.
    pub expect_lver: Option<u64>,
    /// Further copies of the area for a lease on several disks: (disk, area offset). Every
    /// step runs on all of them and completes on a majority ([`crate::paxos::disks`]).
    /// Empty for a lease on one disk.
    pub mirrors: Vec<(DiskId, u64)>,
}

/// How to acquire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AcquireOptions {
    /// Shared mode.
    pub shared: bool,
    /// Fail at once (OwnedRetry) instead of waiting for a silent owner to be declared dead.
    pub no_wait: bool,
    /// Read the lock value block.
    pub read_lvb: bool,
}

/// A resource we hold: what release needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeldResource {
    /// Where it is.
    pub target: ResourceTarget,
    /// The configuration it was acquired with (our host id and generation).
    #[serde(skip)]
    pub cfg: PaxosConfig,
    /// What the acquire won.
    pub acquired: Acquired,
}

/// Why an operation failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
pub enum OpError {
    /// No such lockspace.
    #[error("unknown lockspace")]
    UnknownLockspace,
    /// The lockspace is not joined (yet, or any more).
    #[error("lockspace is not joined")]
    NotJoined,
    /// The lockspace was lost while the operation ran.
    #[error("lockspace was lost")]
    LockspaceLost,
    /// Too many operations in flight.
    #[error("too many lease operations in flight ({0})")]
    Full(usize),
    /// Too many or no resources in one call.
    #[error("an operation takes 1 to {RESOURCES_PER_OP_MAX} resources, not {0}")]
    ResourceCount(usize),
    /// The protocol refused or failed.
    #[error(transparent)]
    Paxos(#[from] PaxosError),
    /// A conversion to the mode the lease is already held in.
    #[error("the lease is already held in that mode")]
    AlreadyInMode,
}

impl OpError {
    /// Who is at fault ([`crate::paxos::Fault`]).
    pub fn fault(&self) -> crate::paxos::Fault {
        use crate::paxos::Fault;
        match self {
            OpError::Paxos(e) => e.fault(),
            // Lost because its renewals failed: storage (or a pause) is the cause.
            OpError::LockspaceLost => Fault::Storage,
            OpError::UnknownLockspace
            | OpError::NotJoined
            | OpError::Full(_)
            | OpError::ResourceCount(_)
            | OpError::AlreadyInMode => Fault::Misuse,
        }
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum OpOutcome {
    /// Every resource was acquired, in the order asked.
    Acquired(Vec<HeldResource>),
    /// Every resource was released.
    Released,
    /// The operation failed on `resource`. For an acquire nothing is held except what is
    /// listed in `still_held` (the release that should have undone it failed too); for a
    /// release, `still_held` lists what is still ours on disk.
    Failed {
        /// The resource that failed.
        resource: Name,
        /// Why.
        error: OpError,
        /// Resources held on disk despite the failure.
        still_held: Vec<HeldResource>,
    },
}

#[derive(Debug)]
enum Machine {
    Acquire(Box<PaxosAcquire>),
    Release(Box<PaxosRelease>),
}

impl PaxosMachine for Machine {
    /// Acquire: Some; release: None.
    type Output = Option<Acquired>;
    fn poll_result(&mut self) -> Option<Result<Option<Acquired>, PaxosError>> {
        match self {
            Machine::Acquire(m) => m.poll_result().map(|r| r.map(Some)),
            Machine::Release(m) => m.poll_result().map(|r| r.map(|()| None)),
        }
    }
    fn poll_owner_query(&mut self) -> Option<(u64, u64)> {
        match self {
            Machine::Acquire(m) => m.poll_owner_query(),
            Machine::Release(_) => None,
        }
    }
    fn handle_owner_status(
        &mut self,
        now: Time,
        status: crate::delta::HostStatus,
        same_generation: bool,
    ) {
        if let Machine::Acquire(m) = self {
            m.handle_owner_status(now, status, same_generation);
        }
    }
    fn poll_timeout(&self) -> Option<Time> {
        match self {
            Machine::Acquire(m) => m.poll_timeout(),
            Machine::Release(_) => None,
        }
    }
    fn handle_timeout(&mut self, now: Time) {
        if let Machine::Acquire(m) = self {
            m.handle_timeout(now);
        }
    }
    fn poll_io(&mut self) -> Option<PaxosIo> {
        match self {
            Machine::Acquire(m) => m.poll_io(),
            Machine::Release(m) => m.poll_io(),
        }
    }
    fn io_deadline(&self) -> Time {
        match self {
            Machine::Acquire(m) => m.io_deadline(),
            Machine::Release(m) => m.io_deadline(),
        }
    }
    fn write_data(&self) -> &[u8] {
        match self {
            Machine::Acquire(m) => m.write_data(),
            Machine::Release(m) => m.write_data(),
        }
    }
    fn handle_io(&mut self, now: Time, outcome: IoOutcome, data: &[u8]) {
        match self {
            Machine::Acquire(m) => m.handle_io(now, outcome, data),
            Machine::Release(m) => m.handle_io(now, outcome, data),
        }
    }
}

/// One disk's outstanding I/O of a machine: the write and/or the read of a pair.
#[derive(Debug, Default)]
struct DiskFlight {
    /// The machine step it belongs to ([`Majority`]'s tag).
    tag: u64,
    write: Option<IoId>,
    read: Option<IoId>,
    /// First failure of the pair.
    failure: Option<IoOutcome>,
    /// Both ended: waits to be handed to the machine.
    ready: bool,
    data: Vec<u8>,
}

#[derive(Debug)]
struct Sub {
    /// Index of the target this machine works on.
    target: usize,
    /// The lease's disks (the target's, then its mirrors').
    disks: Vec<DiskId>,
    /// The machine over those disks (one disk: a plain pass-through).
    maj: Majority<Machine>,
    flights: Vec<DiskFlight>,
    /// Acquire: Ok(Some); release: Ok(None).
    done: Option<Result<Option<Acquired>, PaxosError>>,
    /// A release that freed the leader itself: what our next acquire may start from.
    cache: Option<BallotCache>,
}

impl Sub {
    fn new(
        target: usize,
        t: &ResourceTarget,
        cfg: &PaxosConfig,
        machine: Machine,
    ) -> Result<Self, PaxosError> {
        let disks: Vec<DiskId> = std::iter::once(t.disk)
            .chain(t.mirrors.iter().map(|m| m.0))
            .collect();
        let areas: Vec<u64> = std::iter::once(t.area_offset)
            .chain(t.mirrors.iter().map(|m| m.1))
            .collect();
        let maj = Majority::new(machine, cfg, areas)?;
        Ok(Sub {
            target,
            flights: disks.iter().map(|_| DiskFlight::default()).collect(),
            disks,
            maj,
            done: None,
            cache: None,
        })
    }

    fn waiting_io(&self) -> bool {
        self.flights
            .iter()
            .any(|f| f.write.is_some() || f.read.is_some())
    }

    fn acquire(&self) -> Option<&PaxosAcquire> {
        match self.maj.machine_ref() {
            Machine::Acquire(m) => Some(m),
            Machine::Release(_) => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Acquire,
    /// An acquire failed; releasing what it won.
    Unwind,
    Release,
    /// Exclusive → shared.
    ToShared,
    /// Shared → exclusive.
    ToExclusive,
}

#[derive(Debug)]
struct Op {
    id: OpId,
    ls: LockspaceId,
    kind: Kind,
    targets: Vec<ResourceTarget>,
    cfgs: Vec<PaxosConfig>,
    subs: Vec<Sub>,
    /// Acquire: what was won, per target.
    won: Vec<Option<Acquired>>,
    failure: Option<(Name, OpError)>,
    /// Ballot caches left by this operation's releases: (disk, area offset, cache).
    caches: Vec<(DiskId, u64, BallotCache)>,
    /// An acquire not started yet: it waits while an earlier operation of this host works on
    /// one of its resources (a release still writing our dblock, say — two of our writes to
    /// one sector must not race), then starts from the ballot cache that one may have left.
    waiting: bool,
}

/// The flight of each I/O in flight: (operation, machine, disk).
type FlightRoutes = std::collections::HashMap<IoId, (OpId, usize, usize)>;

/// The operations of a set.
#[derive(Debug, Default)]
pub(super) struct Ops {
    next_id: u64,
    ops: Vec<Op>,
    /// Where each operation is in `ops`.
    at: std::collections::HashMap<OpId, usize>,
    /// The flight each I/O in flight belongs to: (operation, machine, disk). A completion
    /// finds its machine from its id in O(1); a stale entry (the machine was replaced, the
    /// operation ended) no longer matches the flight's ids and its buffer is just returned.
    flight_of: FlightRoutes,
    results: VecDeque<(OpId, OpOutcome)>,
    /// What our last release of a lease left, by (lockspace, disk, area offset): its next
    /// acquire starts phase 1 at once ([`PaxosAcquire::new_cached`]).
    caches: std::collections::HashMap<(LockspaceId, DiskId, u64), BallotCache>,
}

impl Ops {
    fn push(&mut self, op: Op) {
        self.at.insert(op.id, self.ops.len());
        self.ops.push(op);
    }

    fn remove_at(&mut self, i: usize) -> Op {
        let op = self.ops.swap_remove(i);
        self.at.remove(&op.id);
        if let Some(moved) = self.ops.get(i) {
            self.at.insert(moved.id, i);
        }
        op
    }

    pub(super) fn count_for(&self, ls: LockspaceId) -> usize {
        self.ops.iter().filter(|o| o.ls == ls).count()
    }

    fn next_id(&mut self) -> OpId {
        self.next_id += 1;
        OpId(self.next_id)
    }

    pub(super) fn next_timeout(&self) -> Option<Time> {
        self.ops
            .iter()
            .flat_map(|o| &o.subs)
            .filter(|s| s.done.is_none())
            .filter_map(|s| {
                let timer = s.acquire().and_then(|m| m.poll_timeout());
                // An I/O waiting for room in the engine stops waiting then.
                match (timer, s.maj.deferred_until()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            })
            .min()
    }

    /// Routes a completion to the machine that issued it (or returns its buffer when nobody
    /// owns it any more).
    pub(super) fn complete(&mut self, backend: &mut dyn IoBackend, c: Completion) {
        let flight = self
            .flight_of
            .remove(&c.id)
            .and_then(|(op, sub, disk)| {
                let i = *self.at.get(&op)?;
                self.ops
                    .get_mut(i)?
                    .subs
                    .get_mut(sub)?
                    .flights
                    .get_mut(disk)
            })
            .filter(|f| f.write == Some(c.id) || f.read == Some(c.id));
        if let Some(f) = flight {
            if c.outcome != IoOutcome::Done && f.failure.is_none() {
                f.failure = Some(c.outcome);
            }
            if c.kind == IoKind::Read && c.outcome == IoOutcome::Done {
                f.data.clear();
                if let Some(d) = backend.read_data(c.id) {
                    f.data.extend_from_slice(d);
                }
            }
            if f.write == Some(c.id) {
                f.write = None;
            } else {
                f.read = None;
            }
            f.ready = f.write.is_none() && f.read.is_none();
        }
        backend.release(c.id);
    }

    /// Advances every operation: hands completed I/O and timers to machines, answers owner
    /// questions from the lockspace's host table, starts new I/O, finishes operations.
    pub(super) fn advance(
        &mut self,
        now: Time,
        backend: &mut dyn IoBackend,
        entries: &[Option<Entry>],
    ) {
        let mut i = 0;
        let mut concluded = false;
        while i < self.ops.len() {
            let op = &mut self.ops[i];
            let entry = entries.get(op.ls.0).and_then(Option::as_ref);
            let joined_gen = entry.and_then(|e| match e.state {
                super::LockspaceState::Joined { generation } if e.lease.is_joined() => {
                    Some(generation)
                }
                _ => None,
            });
            // Lost (or left) while running: the operation ends now; I/O still in flight is
            // returned to the engine when it completes. Whatever landed on disk is void with
            // our generation.
            let lost = joined_gen != op.cfgs.first().map(|c| c.generation);
            if lost {
                let op = self.remove_at(i);
                let resource = op.targets.first().map_or(Name::EMPTY, |t| t.name);
                self.results.push_back((
                    op.id,
                    OpOutcome::Failed {
                        resource,
                        error: OpError::LockspaceLost,
                        still_held: Vec::new(),
                    },
                ));
                continue;
            }
            if op.waiting {
                let (id, ls) = (op.id, op.ls);
                let mine: Vec<(DiskId, u64)> =
                    op.targets.iter().map(|t| (t.disk, t.area_offset)).collect();
                let earlier_on_same = self.ops.iter().any(|o| {
                    o.id < id
                        && o.ls == ls
                        && o.targets
                            .iter()
                            .any(|t| mine.contains(&(t.disk, t.area_offset)))
                });
                if earlier_on_same {
                    i += 1;
                    continue;
                }
                let op = &mut self.ops[i];
                op.waiting = false;
                for s in &mut op.subs {
                    let t = &op.targets[s.target];
                    if let Some(cache) = self.caches.remove(&(op.ls, t.disk, t.area_offset)) {
                        let c = op.cfgs[s.target].clone();
                        let m = Machine::Acquire(Box::new(PaxosAcquire::new_cached(
                            c.clone(),
                            &cache,
                            now,
                        )));
                        // Same target and configuration as the machine it replaces.
                        *s = Sub::new(s.target, t, &c, m).expect("target checked at start");
                    }
                }
            }
            let op = &mut self.ops[i];
            for (k, s) in op.subs.iter_mut().enumerate() {
                drive(now, backend, s, entry, (op.id, k, &mut self.flight_of));
            }
            if op.subs.iter().all(|s| s.done.is_some()) {
                if let Some(outcome) = conclude(now, op) {
                    let op = self.remove_at(i);
                    for (disk, offset, cache) in op.caches {
                        if self.caches.len() >= BALLOT_CACHES_MAX {
                            self.caches.clear();
                        }
                        self.caches.insert((op.ls, disk, offset), cache);
                    }
                    self.results.push_back((op.id, outcome));
                    concluded = true;
                    continue;
                }
                // An unwind started: drive its releases at once.
                for (k, s) in op.subs.iter_mut().enumerate() {
                    drive(now, backend, s, entry, (op.id, k, &mut self.flight_of));
                }
            }
            i += 1;
        }
        // An operation that ended may have been what a waiting acquire (passed over above)
        // waited for: go round again so it starts now, not at the next event. Each round
        // needs an operation to end, so this stops.
        if concluded && self.ops.iter().any(|o| o.waiting) {
            self.advance(now, backend, entries);
        }
    }

    pub(super) fn take_result(&mut self) -> Option<(OpId, OpOutcome)> {
        self.results.pop_front()
    }
}

/// Runs one machine until it waits for I/O, a timer, or is done.
fn drive(
    now: Time,
    backend: &mut dyn IoBackend,
    s: &mut Sub,
    entry: Option<&Entry>,
    route: (OpId, usize, &mut FlightRoutes),
) {
    let (op_id, sub, flight_of) = route;
    if s.done.is_some() {
        return;
    }
    for d in 0..s.flights.len() {
        if s.flights[d].ready {
            let f = &mut s.flights[d];
            f.ready = false;
            let outcome = f.failure.take().unwrap_or(IoOutcome::Done);
            let (tag, data) = (f.tag, std::mem::take(&mut f.data));
            s.maj.handle_io(now, d, tag, outcome, &data);
            s.flights[d].data = data;
        }
    }
    let disks = &s.disks;
    let flights = &mut s.flights;
    let mut issue = |dio: DiskIo, data: &[u8], deadline: Time| {
        match crate::paxos::start_io(backend, disks[dio.disk], dio.io, data, deadline) {
            Ok((w, r)) => {
                for id in w.iter().chain(r.iter()) {
                    flight_of.insert(*id, (op_id, sub, dio.disk));
                }
                let f = &mut flights[dio.disk];
                f.tag = dio.tag;
                f.write = w;
                f.read = r;
                f.failure = None;
                f.data.clear();
                Issued::Started
            }
            // No room in the engine now: the I/O waits for some to complete (every completion
            // steps the set, which drives this machine again), with a fresh deadline then.
            Err(SubmitError::Full { .. }) => Issued::Deferred,
            // An older write of ours there may still land, or a request the engine can never
            // take: this disk fails the step like an I/O error (nothing was queued).
            Err(_) => Issued::Refused(IoOutcome::Failed { errno: libc::EBUSY }),
        }
    };
    let mut owner_status = |host: u64, generation: u64, t: Time| {
        entry.map_or((crate::delta::HostStatus::Free, false), |e| {
            e.lease.hosts().owner_status(host, generation, t)
        })
    };
    let pumped = s.maj.pump(&mut || now, &mut issue, &mut owner_status);
    // The engine's flights and the layer's busy disks tell the same story.
    debug_assert_eq!(
        s.waiting_io(),
        s.maj.in_flight(),
        "flights and busy disks differ"
    );
    if let Pumped::Done(r) = pumped {
        if let Machine::Release(m) = s.maj.machine_ref() {
            s.cache = m.cache();
        }
        s.done = Some(r);
    }
}

/// All machines of `op` are done: the outcome, or None when an unwind was started.
fn conclude(now: Time, op: &mut Op) -> Option<OpOutcome> {
    if op.kind == Kind::ToExclusive {
        let s = op.subs.remove(0);
        let shared_hold = op.won[0].clone().expect("converting what is held");
        let Some(m) = s.acquire() else {
            unreachable!("a conversion to exclusive runs an acquire");
        };
        // Still held shared if it failed, with our dblock as the conversion left it.
        let kept = m.shared_hold_after_failure(&shared_hold);
        let target = op.targets[0].clone();
        return Some(match s.done {
            Some(Ok(Some(acquired))) => OpOutcome::Acquired(vec![HeldResource {
                target,
                cfg: PaxosConfig {
                    shared: false,
                    ..op.cfgs[0].clone()
                },
                acquired,
            }]),
            Some(Err(e)) => OpOutcome::Failed {
                resource: target.name,
                error: OpError::Paxos(e),
                // Still held shared, with our dblock as the conversion left it.
                still_held: vec![HeldResource {
                    target,
                    cfg: op.cfgs[0].clone(),
                    acquired: kept,
                }],
            },
            _ => unreachable!("concluded with a machine running"),
        });
    }
    for s in &op.subs {
        if let (Some(cache), Some(t)) = (s.cache, op.targets.get(s.target)) {
            op.caches.push((t.disk, t.area_offset, cache));
        }
    }
    let results: Vec<_> = op.subs.drain(..).map(|s| (s.target, s.done)).collect();
    match op.kind {
        Kind::Acquire => {
            let mut failure = None;
            for (k, r) in results {
                match r {
                    Some(Ok(Some(a))) => op.won[k] = Some(a),
                    Some(Err(e)) if failure.is_none() => {
                        failure = Some((op.targets[k].name, OpError::Paxos(e)));
                    }
                    _ => {}
                }
            }
            let Some(failure) = failure else {
                let held = op
                    .targets
                    .iter()
                    .zip(&op.cfgs)
                    .zip(op.won.drain(..))
                    .filter_map(|((t, c), a)| {
                        a.map(|acquired| HeldResource {
                            target: t.clone(),
                            cfg: c.clone(),
                            acquired,
                        })
                    })
                    .collect();
                return Some(OpOutcome::Acquired(held));
            };
            op.failure = Some(failure);
            op.kind = Kind::Unwind;
            for k in 0..op.targets.len() {
                if let Some(a) = op.won[k].clone() {
                    let m = PaxosRelease::new(op.cfgs[k].clone(), a, now);
                    // This target's acquire started on the same disks and configuration.
                    op.subs.push(
                        Sub::new(
                            k,
                            &op.targets[k],
                            &op.cfgs[k],
                            Machine::Release(Box::new(m)),
                        )
                        .expect("target checked at start"),
                    );
                }
            }
            if op.subs.is_empty() {
                return conclude(now, op);
            }
            None
        }
        Kind::ToShared => {
            let (k, r) = results.into_iter().next().expect("one resource");
            let held = HeldResource {
                target: op.targets[k].clone(),
                cfg: op.cfgs[k].clone(),
                acquired: op.won[k].clone().expect("converting what is held"),
            };
            Some(match r {
                Some(Ok(_)) => OpOutcome::Acquired(vec![HeldResource {
                    acquired: PaxosRelease::as_shared(&held.acquired),
                    ..held
                }]),
                Some(Err(e)) => OpOutcome::Failed {
                    resource: held.target.name,
                    error: OpError::Paxos(e),
                    // Our RELEASED+SHARED dblock may have landed (and the leader been freed):
                    // another host may hold it shared now, so it is held shared from here on,
                    // never exclusively again.
                    still_held: vec![HeldResource {
                        acquired: PaxosRelease::as_shared(&held.acquired),
                        ..held
                    }],
                },
                None => unreachable!("concluded with a machine running"),
            })
        }
        Kind::ToExclusive => unreachable!("concluded above"),
        Kind::Unwind | Kind::Release => {
            let mut still_held = Vec::new();
            let mut first_err = None;
            for (k, r) in results {
                if let Some(Err(e)) = r {
                    if first_err.is_none() {
                        first_err = Some((op.targets[k].name, OpError::Paxos(e)));
                    }
                    let acquired = op.won[k].clone().expect("released what was won");
                    still_held.push(HeldResource {
                        target: op.targets[k].clone(),
                        cfg: op.cfgs[k].clone(),
                        acquired,
                    });
                }
            }
            if op.kind == Kind::Unwind {
                let (resource, error) = op.failure.take().expect("unwind has a failure");
                return Some(OpOutcome::Failed {
                    resource,
                    error,
                    still_held,
                });
            }
            Some(match first_err {
                None => OpOutcome::Released,
                Some((resource, error)) => OpOutcome::Failed {
                    resource,
                    error,
                    still_held,
                },
            })
        }
    }
}

impl super::LockspaceSet {
    fn check_op(&self, ls: LockspaceId, n: usize) -> Result<(u64, &super::DeltaConfig), OpError> {
        let e = self.entry_ref(ls).ok_or(OpError::UnknownLockspace)?;
        let generation = match e.state {
            super::LockspaceState::Joined { generation } if e.lease.is_joined() => generation,
            _ => return Err(OpError::NotJoined),
        };
        if n == 0 || n > RESOURCES_PER_OP_MAX {
            return Err(OpError::ResourceCount(n));
        }
        if self.ops.ops.len() >= OPS_MAX {
            return Err(OpError::Full(OPS_MAX));
        }
        Ok((generation, e.lease.config()))
    }

    /// A resource of lockspace `ls` (joined) that another process of this host acquired in
    /// the same generation — handed over by an upgrade, or read back after a restart — as
    /// this set's own hold, to be released, converted and inquired like one. `None` unless
    /// `ls` is joined in the generation `acquired` was won with.
    pub fn adopt_held(
        &self,
        ls: LockspaceId,
        target: ResourceTarget,
        acquired: Acquired,
    ) -> Option<HeldResource> {
        let (generation, dcfg) = self.check_op(ls, 1).ok()?;
        // Exclusive: the leader names us. Shared: what is ours is our mode block, written
        // in the generation the hold was taken in (the leader and dblock may be anyone's).
        let ours = acquired.shared
            || (acquired.leader.owner_id == dcfg.host_id
                && acquired.leader.owner_generation == generation);
        if !ours {
            return None;
        }
        let cfg = PaxosConfig {
            space_name: dcfg.space_name,
            resource_name: target.name,
            geometry: target.geometry,
            area_offset: target.area_offset,
            host_id: dcfg.host_id,
            generation,
            timeouts: dcfg.timeouts,
            no_wait: false,
            expect_lver: None,
            read_lvb: acquired.lvb.is_some(),
            shared: acquired.shared,
        };
        Some(HeldResource {
            target,
            cfg,
            acquired,
        })
    }

    /// Starts acquiring `targets` in lockspace `ls` (joined), all or nothing. The outcome
    /// comes from [`LockspaceSet::take_op_result`] after some steps.
    pub fn start_acquire(
        &mut self,
        ls: LockspaceId,
        targets: Vec<ResourceTarget>,
        opts: AcquireOptions,
        now: Time,
    ) -> Result<OpId, OpError> {
        let (generation, dcfg) = self.check_op(ls, targets.len())?;
        let cfgs: Vec<PaxosConfig> = targets
            .iter()
            .map(|t| PaxosConfig {
                space_name: dcfg.space_name,
                resource_name: t.name,
                geometry: t.geometry,
                area_offset: t.area_offset,
                host_id: dcfg.host_id,
                generation,
                timeouts: dcfg.timeouts,
                no_wait: opts.no_wait,
                expect_lver: t.expect_lver,
                read_lvb: opts.read_lvb,
                shared: opts.shared,
            })
            .collect();
        let subs = targets
            .iter()
            .zip(&cfgs)
            .enumerate()
            .map(|(k, (t, c))| {
                Sub::new(
                    k,
                    t,
                    c,
                    Machine::Acquire(Box::new(PaxosAcquire::new(c.clone(), now))),
                )
            })
            .collect::<Result<Vec<Sub>, PaxosError>>()?;
        let id = self.ops.next_id();
        let n = targets.len();
        self.ops.push(Op {
            id,
            ls,
            kind: Kind::Acquire,
            targets,
            cfgs,
            subs,
            won: vec![None; n],
            failure: None,
            caches: Vec::new(),
            waiting: true,
        });
        Ok(id)
    }

    /// Starts releasing held resources of lockspace `ls`, each with an optional lock value
    /// block to write first.
    pub fn start_release(
        &mut self,
        ls: LockspaceId,
        held: Vec<(HeldResource, Option<Vec<u8>>)>,
        now: Time,
    ) -> Result<OpId, OpError> {
        self.start_release_renaming(ls, held, None, now)
    }

    /// [`Self::start_release`], the freed leaders getting resource name `rename` when given
    /// (sanlock's REL_RENAME; one resource).
    pub fn start_release_renaming(
        &mut self,
        ls: LockspaceId,
        held: Vec<(HeldResource, Option<Vec<u8>>)>,
        rename: Option<Name>,
        now: Time,
    ) -> Result<OpId, OpError> {
        let (generation, _) = self.check_op(ls, held.len())?;
        let mut op = Op {
            id: OpId(0),
            ls,
            kind: Kind::Release,
            targets: Vec::with_capacity(held.len()),
            cfgs: Vec::with_capacity(held.len()),
            subs: Vec::with_capacity(held.len()),
            won: Vec::with_capacity(held.len()),
            failure: None,
            caches: Vec::new(),
            waiting: false,
        };
        for (h, lvb) in held {
            if h.cfg.generation != generation {
                // Acquired in an earlier generation of ours: that lease is void already.
                return Err(OpError::LockspaceLost);
            }
            let m = match lvb {
                Some(v) => PaxosRelease::with_lvb(h.cfg.clone(), h.acquired.clone(), &v, now)?,
                None => PaxosRelease::new(h.cfg.clone(), h.acquired.clone(), now),
            };
            let m = match rename {
                Some(n) => m.renaming(n),
                None => m,
            };
            let k = op.subs.len();
            op.subs.push(Sub::new(
                k,
                &h.target,
                &h.cfg,
                Machine::Release(Box::new(m)),
            )?);
            op.targets.push(h.target);
            op.cfgs.push(h.cfg);
            op.won.push(Some(h.acquired));
        }
        op.id = self.ops.next_id();
        let id = op.id;
        self.ops.push(op);
        Ok(id)
    }

    /// Starts converting a lease held exclusively to shared (the result is
    /// [`OpOutcome::Acquired`] with the lease as now held).
    pub fn start_convert_to_shared(
        &mut self,
        ls: LockspaceId,
        held: HeldResource,
        now: Time,
    ) -> Result<OpId, OpError> {
        let (generation, _) = self.check_op(ls, 1)?;
        if held.cfg.generation != generation {
            return Err(OpError::LockspaceLost);
        }
        if held.acquired.shared {
            return Err(OpError::AlreadyInMode);
        }
        let m = PaxosRelease::to_shared(held.cfg.clone(), held.acquired.clone(), now);
        let id = self.ops.next_id();
        self.ops.push(Op {
            id,
            ls,
            kind: Kind::ToShared,
            subs: vec![Sub::new(
                0,
                &held.target,
                &held.cfg,
                Machine::Release(Box::new(m)),
            )?],
            targets: vec![held.target],
            cfgs: vec![held.cfg],
            won: vec![Some(held.acquired)],
            failure: None,
            caches: Vec::new(),
            waiting: false,
        });
        Ok(id)
    }

    /// Starts converting a lease held shared to exclusive. Success: [`OpOutcome::Acquired`]
    /// with the lease held exclusively. Failure ([`PaxosError::SharedBusy`] while another
    /// live host holds it shared, or any other): [`OpOutcome::Failed`] whose `still_held`
    /// is the shared hold to keep — its record must replace the caller's (the conversion
    /// rewrote our dblock; releasing an older one would be unsafe).
    pub fn start_convert_to_exclusive(
        &mut self,
        ls: LockspaceId,
        held: HeldResource,
        no_wait: bool,
        now: Time,
    ) -> Result<OpId, OpError> {
        let (generation, _) = self.check_op(ls, 1)?;
        if held.cfg.generation != generation {
            return Err(OpError::LockspaceLost);
        }
        if !held.acquired.shared {
            return Err(OpError::AlreadyInMode);
        }
        let cfg = PaxosConfig {
            shared: false,
            no_wait,
            expect_lver: None,
            read_lvb: false,
            ..held.cfg.clone()
        };
        let m = PaxosAcquire::convert_to_exclusive(cfg, &held.acquired, now);
        let id = self.ops.next_id();
        self.ops.push(Op {
            id,
            ls,
            kind: Kind::ToExclusive,
            subs: vec![Sub::new(
                0,
                &held.target,
                &held.cfg,
                Machine::Acquire(Box::new(m)),
            )?],
            targets: vec![held.target],
            cfgs: vec![held.cfg],
            won: vec![Some(held.acquired)],
            failure: None,
            caches: Vec::new(),
            waiting: false,
        });
        Ok(id)
    }

    /// The next finished operation.
    pub fn take_op_result(&mut self) -> Option<(OpId, OpOutcome)> {
        self.ops.take_result()
    }

    /// Operations running.
    pub fn ops_in_flight(&self) -> usize {
        self.ops.ops.len()
    }
}
