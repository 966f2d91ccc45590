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
use crate::io::{Completion, DiskId, IoBackend, IoId, IoKind, IoOutcome};
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

#[derive(Debug)]
struct Sub {
    /// Index of the target this machine works on.
    target: usize,
    disk: DiskId,
    machine: Machine,
    /// Outstanding I/O: the write and/or the read of a linked pair.
    write: Option<IoId>,
    read: Option<IoId>,
    /// Combined outcome of the I/O that completed (first failure wins).
    outcome: IoOutcome,
    /// Whether a completed I/O waits to be handed to the machine.
    ready: bool,
    data: Vec<u8>,
    /// Acquire: Ok(Some); release: Ok(None).
    done: Option<Result<Option<Acquired>, PaxosError>>,
    /// A release that freed the leader itself: what our next acquire may start from.
    cache: Option<BallotCache>,
}

impl Sub {
    fn new(target: usize, disk: DiskId, machine: Machine) -> Self {
        Sub {
            target,
            disk,
            machine,
            write: None,
            read: None,
            outcome: IoOutcome::Done,
            ready: false,
            data: Vec::new(),
            done: None,
            cache: None,
        }
    }

    fn waiting_io(&self) -> bool {
        self.write.is_some() || self.read.is_some()
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

/// The operations of a set.
#[derive(Debug, Default)]
pub(super) struct Ops {
    next_id: u64,
    ops: Vec<Op>,
    results: VecDeque<(OpId, OpOutcome)>,
    /// What our last release of a lease left, by (lockspace, disk, area offset): its next
    /// acquire starts phase 1 at once ([`PaxosAcquire::new_cached`]).
    caches: std::collections::HashMap<(LockspaceId, DiskId, u64), BallotCache>,
}

impl Ops {
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
            .filter_map(|s| match &s.machine {
                Machine::Acquire(m) if s.done.is_none() && !s.waiting_io() => m.poll_timeout(),
                _ => None,
            })
            .min()
    }

    /// Routes a completion to the machine that issued it (or returns its buffer when nobody
    /// owns it any more).
    pub(super) fn complete(&mut self, backend: &mut dyn IoBackend, c: Completion) {
        let sub = self
            .ops
            .iter_mut()
            .flat_map(|o| o.subs.iter_mut())
            .find(|s| s.write == Some(c.id) || s.read == Some(c.id));
        if let Some(s) = sub {
            if c.outcome != IoOutcome::Done && s.outcome == IoOutcome::Done {
                s.outcome = c.outcome;
            }
            if c.kind == IoKind::Read && c.outcome == IoOutcome::Done {
                s.data.clear();
                if let Some(d) = backend.read_data(c.id) {
                    s.data.extend_from_slice(d);
                }
            }
            if s.write == Some(c.id) {
                s.write = None;
            } else {
                s.read = None;
            }
            s.ready = !s.waiting_io();
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
                let op = self.ops.swap_remove(i);
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
                        s.machine =
                            Machine::Acquire(Box::new(PaxosAcquire::new_cached(c, &cache, now)));
                    }
                }
            }
            let op = &mut self.ops[i];
            for s in &mut op.subs {
                drive(now, backend, s, entry);
            }
            if op.subs.iter().all(|s| s.done.is_some()) {
                if let Some(outcome) = conclude(now, op) {
                    let op = self.ops.swap_remove(i);
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
                for s in &mut op.subs {
                    drive(now, backend, s, entry);
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
fn drive(now: Time, backend: &mut dyn IoBackend, s: &mut Sub, entry: Option<&Entry>) {
    if s.done.is_some() || s.waiting_io() {
        return;
    }
    if s.ready {
        s.ready = false;
        let outcome = std::mem::replace(&mut s.outcome, IoOutcome::Done);
        match &mut s.machine {
            Machine::Acquire(m) => m.handle_io(now, outcome, &s.data),
            Machine::Release(m) => m.handle_io(now, outcome, &s.data),
        }
    }
    // Bounded: each pass either ends, starts I/O, or answers a question / timer that moves
    // the machine on; a machine asks at most a few questions in a row.
    for _ in 0..64 {
        match &mut s.machine {
            Machine::Acquire(m) => {
                if let Some(r) = m.poll_result() {
                    s.done = Some(r.map(Some));
                    return;
                }
                if let Some(io) = m.poll_io() {
                    let deadline = m.io_deadline();
                    start(backend, io, deadline, s);
                    return;
                }
                if let Some((host, generation)) = m.poll_owner_query() {
                    let (status, same) = entry
                        .map_or((crate::delta::HostStatus::Free, false), |e| {
                            e.lease.hosts().owner_status(host, generation, now)
                        });
                    m.handle_owner_status(now, status, same);
                    continue;
                }
                match m.poll_timeout() {
                    Some(t) if t <= now => m.handle_timeout(now),
                    _ => return,
                }
            }
            Machine::Release(m) => {
                if let Some(r) = m.poll_result() {
                    s.cache = m.cache();
                    s.done = Some(r.map(|()| None));
                    return;
                }
                if let Some(io) = m.poll_io() {
                    let deadline = m.io_deadline();
                    start(backend, io, deadline, s);
                }
                return;
            }
        }
    }
}

fn start(backend: &mut dyn IoBackend, io: PaxosIo, deadline: Time, s: &mut Sub) {
    let disk = s.disk;
    let data = match &s.machine {
        Machine::Acquire(m) => m.write_data(),
        Machine::Release(m) => m.write_data(),
    };
    let started = crate::paxos::start_io(backend, disk, io, data, deadline);
    match started {
        Ok((w, r)) => {
            s.write = w;
            s.read = r;
            s.outcome = IoOutcome::Done;
            s.data.clear();
        }
        Err(_) => {
            // Engine full: the step fails like an I/O error and the protocol retries by its
            // rules (nothing was queued).
            s.outcome = IoOutcome::Failed { errno: libc::EBUSY };
            s.data.clear();
            s.ready = true;
        }
    }
}

/// All machines of `op` are done: the outcome, or None when an unwind was started.
fn conclude(now: Time, op: &mut Op) -> Option<OpOutcome> {
    if op.kind == Kind::ToExclusive {
        let s = op.subs.remove(0);
        let shared_hold = op.won[0].clone().expect("converting what is held");
        let Machine::Acquire(m) = &s.machine else {
            unreachable!("a conversion to exclusive runs an acquire");
        };
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
                    acquired: m.shared_hold_after_failure(&shared_hold),
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
                    op.subs.push(Sub::new(
                        k,
                        op.targets[k].disk,
                        Machine::Release(Box::new(m)),
                    ));
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
                    t.disk,
                    Machine::Acquire(Box::new(PaxosAcquire::new(c.clone(), now))),
                )
            })
            .collect();
        let id = self.ops.next_id();
        let n = targets.len();
        self.ops.ops.push(Op {
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
            let k = op.subs.len();
            op.subs
                .push(Sub::new(k, h.target.disk, Machine::Release(Box::new(m))));
            op.targets.push(h.target);
            op.cfgs.push(h.cfg);
            op.won.push(Some(h.acquired));
        }
        op.id = self.ops.next_id();
        let id = op.id;
        self.ops.ops.push(op);
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
        self.ops.ops.push(Op {
            id,
            ls,
            kind: Kind::ToShared,
            subs: vec![Sub::new(0, held.target.disk, Machine::Release(Box::new(m)))],
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
        self.ops.ops.push(Op {
            id,
            ls,
            kind: Kind::ToExclusive,
            subs: vec![Sub::new(0, held.target.disk, Machine::Acquire(Box::new(m)))],
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
