//! Leases on several disks (Disk Paxos with a majority of disks; DESIGN.md "Core: I/O"):
//! [`Majority`] runs one paxos machine ([`PaxosAcquire`], [`PaxosRelease`]) over 1..=4 disks,
//! each holding a copy of the resource area at its own offset.
//!
//! Every I/O the machine asks for is issued on every disk at once (a write→read pair linked per
//! disk), and the machine hears of it as soon as a **majority** of disks answered Done — or as
//! soon as a majority can no longer answer Done. The reads of that majority are merged into one
//! area for the machine: per host the latest dblock any of them holds, the newest leader.
//!
//! Why the merge is Disk Paxos: a process's disk set D_p is the disks where its write and then
//! its read both completed. Two processes' sets are majorities, so they share a disk d, and on d
//! one's write came before the other's read: one sees the other, which is all the single-disk
//! argument needs. Per host, writes reach each disk in order (the engine refuses a write over
//! one still in flight, and this layer issues one I/O per disk at a time), and a host's dblock
//! writes only grow in (lver, mbal, bal) with RELEASED and a cleared mode block coming after the
//! same ballot's plain write — so the greatest one read is that host's latest write seen on D_p,
//! and it subsumes every earlier one for the abort rule and the choice of value.
//!
//! Invariants:
//! - At most one I/O (or linked pair) per disk in flight; a disk still busy with an earlier
//!   step joins the current one when it answers.
//! - A disk whose leader or any dblock fails its checks in a read is left out of that read's
//!   majority entirely (never per sector: D_p must be one set of disks for the argument above).
//! - The lock value block is refused on several disks: it carries no version to merge by.

use tenure_format::paxos::{Dblock, ModeBlock, RequestRecord, DBLOCK_FLAG_RELEASED};
use tenure_format::{LeaderKind, LeaderRecord};

use super::{Acquired, PaxosAcquire, PaxosConfig, PaxosError, PaxosIo, PaxosRelease};
use crate::clock::Time;
use crate::delta::HostStatus;
use crate::io::IoOutcome;

/// Disks a lease may span (sanlock: 4).
pub const DISKS_MAX: usize = 4;

/// A paxos machine's face: what [`Majority`] and its one driver, [`Majority::pump`], drive.
pub trait PaxosMachine {
    /// What it ends with.
    type Output;
    /// The next I/O (taken).
    fn poll_io(&mut self) -> Option<PaxosIo>;
    /// Deadline of the I/O just taken.
    fn io_deadline(&self) -> Time;
    /// The sector to write for the I/O just taken.
    fn write_data(&self) -> &[u8];
    /// The outcome of the I/O taken last.
    fn handle_io(&mut self, now: Time, outcome: IoOutcome, data: &[u8]);
    /// The outcome, once.
    fn poll_result(&mut self) -> Option<Result<Self::Output, PaxosError>>;
    /// A host whose delta-lease status the machine needs: (host id, generation).
    fn poll_owner_query(&mut self) -> Option<(u64, u64)> {
        None
    }
    /// The answer to [`PaxosMachine::poll_owner_query`].
    fn handle_owner_status(&mut self, _now: Time, _status: HostStatus, _same_generation: bool) {}
    /// When [`PaxosMachine::handle_timeout`] is due.
    fn poll_timeout(&self) -> Option<Time> {
        None
    }
    /// Time passed.
    fn handle_timeout(&mut self, _now: Time) {}
}

impl PaxosMachine for PaxosAcquire {
    type Output = Acquired;
    fn poll_io(&mut self) -> Option<PaxosIo> {
        PaxosAcquire::poll_io(self)
    }
    fn io_deadline(&self) -> Time {
        PaxosAcquire::io_deadline(self)
    }
    fn write_data(&self) -> &[u8] {
        PaxosAcquire::write_data(self)
    }
    fn handle_io(&mut self, now: Time, outcome: IoOutcome, data: &[u8]) {
        PaxosAcquire::handle_io(self, now, outcome, data)
    }
    fn poll_result(&mut self) -> Option<Result<Acquired, PaxosError>> {
        PaxosAcquire::poll_result(self)
    }
    fn poll_owner_query(&mut self) -> Option<(u64, u64)> {
        PaxosAcquire::poll_owner_query(self)
    }
    fn handle_owner_status(&mut self, now: Time, status: HostStatus, same_generation: bool) {
        PaxosAcquire::handle_owner_status(self, now, status, same_generation)
    }
    fn poll_timeout(&self) -> Option<Time> {
        PaxosAcquire::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Time) {
        PaxosAcquire::handle_timeout(self, now)
    }
}

impl PaxosMachine for PaxosRelease {
    type Output = ();
    fn poll_io(&mut self) -> Option<PaxosIo> {
        PaxosRelease::poll_io(self)
    }
    fn io_deadline(&self) -> Time {
        PaxosRelease::io_deadline(self)
    }
    fn write_data(&self) -> &[u8] {
        PaxosRelease::write_data(self)
    }
    fn handle_io(&mut self, now: Time, outcome: IoOutcome, data: &[u8]) {
        PaxosRelease::handle_io(self, now, outcome, data)
    }
    fn poll_result(&mut self) -> Option<Result<(), PaxosError>> {
        PaxosRelease::poll_result(self)
    }
}

/// How a driver carried out one I/O handed to it by [`Majority::pump`].
#[derive(Debug)]
pub enum Issued {
    /// Started: its outcome comes back later through [`Majority::handle_io`].
    Started,
    /// Done already (a blocking driver): its outcome, and the read's bytes.
    Completed(IoOutcome, Vec<u8>),
    /// Not started (the engine refused it): the disk fails the step with this outcome, and
    /// the protocol goes on by its rules.
    Refused(IoOutcome),
    /// Not started for want of room in the engine (every slot or buffer of the size in use):
    /// the I/O stays the step's, and the next [`Majority::pump`] hands it over again — once
    /// the engine completed something — with a deadline a full io_timeout after it is handed
    /// over. It waits for room at most [`ROOM_WAIT_MAX`] past its first deadline, then counts
    /// as timed out.
    Deferred,
}

/// What a machine waits for after [`Majority::pump`].
#[derive(Debug, PartialEq, Eq)]
pub enum Pumped<R> {
    /// It ended, and every disk answered (no straggler of ours is left to race a next
    /// operation's write).
    Done(Result<R, PaxosError>),
    /// I/O in flight: pump again once some of it completed.
    Io,
    /// A timer: pump again at this time.
    Until(Time),
    /// The engine had no room for an I/O ([`Issued::Deferred`]): pump again once some I/O of
    /// the engine completed, and at this time (when it stops waiting) at the latest.
    Room(Time),
    /// Nothing in flight, no timer, no result: a machine that stalled (a bug).
    Stalled,
}

/// How long past its first deadline an I/O may wait for room in the engine
/// ([`Issued::Deferred`]), in io_timeouts: as long as a host may go without renewing its
/// delta lease (8T). Room comes back as the engine's I/Os complete or time out, and the
/// set's renewals take it first; an engine with no room for that long belongs to a host that
/// lost its lockspace, which ends the operation anyway.
pub const ROOM_WAIT_MAX: u32 = 8;

/// Passes of [`Majority::pump`] before it gives the driver back: each pass ends, starts
/// I/O, or answers a question / timer that moves the machine on, and a machine asks at most
/// a few questions in a row.
const PUMP_PASSES_MAX: usize = 64;

/// One I/O on one disk. Answer it with [`Majority::handle_io`] giving back `disk` and `tag`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DiskIo {
    /// Index of the disk in the lease's disk list.
    pub disk: usize,
    /// The I/O, at that disk's offsets.
    pub io: PaxosIo,
    /// Which step of the machine it belongs to.
    pub tag: u64,
}

/// What the disks answered for the current step.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Answer {
    /// Not issued yet (the disk was busy with an earlier step).
    Waiting,
    Issued,
    Done,
    Failed(IoOutcome),
}

/// One step of the machine, replicated on every disk.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Step {
    tag: u64,
    io: PaxosIo,
    data: Vec<u8>,
    deadline: Time,
    answers: Vec<Answer>,
    /// Its I/O waited for room in the engine: each disk's gets a full io_timeout from when
    /// it is handed over.
    deferred: bool,
}

/// A paxos machine over several disks, completing each step on a majority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Majority<M> {
    machine: M,
    cfg: PaxosConfig,
    /// Area offset on each disk.
    areas: Vec<u64>,
    /// Tag of the I/O in flight on each disk.
    busy: Vec<Option<u64>>,
    step: Option<Step>,
    next_tag: u64,
    /// Read data per disk for the current step (reused).
    reads: Vec<Vec<u8>>,
    merged: Vec<u8>,
    /// Disks left out of a read's majority for failing its checks, over the whole run.
    rejected_reads: u32,
}

/// What decides the layer's future (for state-space search): the machine, the current step
/// without its tag, which disks are busy with it or with an older one, and the reads it will
/// merge. Scratch buffers and counters are left out.
impl<M: std::hash::Hash> std::hash::Hash for Majority<M> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.machine.hash(h);
        self.areas.hash(h);
        let tag = self.step.as_ref().map(|s| s.tag);
        for b in &self.busy {
            b.map(|t| Some(t) == tag).hash(h);
        }
        if let Some(s) = &self.step {
            (s.io, &s.data, s.deadline, &s.answers, s.deferred).hash(h);
            for (d, a) in s.answers.iter().enumerate() {
                if *a == Answer::Done {
                    self.reads[d].hash(h);
                }
            }
        }
    }
}

impl<M: PaxosMachine> Majority<M> {
    /// The one driver of the paxos machines (the daemon's engine and the blocking drivers
    /// both run it): hands each I/O to `issue`, answers owner queries with
    /// `owner_status(host id, generation, now)`, fires timers that are due by `now()`, and
    /// takes the result once every disk answered.
    pub fn pump(
        &mut self,
        now: &mut dyn FnMut() -> Time,
        issue: &mut dyn FnMut(DiskIo, &[u8], Time) -> Issued,
        owner_status: &mut dyn FnMut(u64, u64, Time) -> (HostStatus, bool),
    ) -> Pumped<M::Output> {
        for _ in 0..PUMP_PASSES_MAX {
            let mut moved = false;
            while let Some(dio) = self.poll_io() {
                let deadline = match &self.step {
                    Some(s) if s.deferred => {
                        s.deadline.max(now().saturating_add(self.cfg.timeouts.io()))
                    }
                    _ => self.io_deadline(),
                };
                match issue(dio, self.write_data(), deadline) {
                    Issued::Started => {}
                    Issued::Completed(outcome, data) => {
                        self.handle_io(now(), dio.disk, dio.tag, outcome, &data);
                        moved = true;
                    }
                    Issued::Refused(outcome) => {
                        self.handle_io(now(), dio.disk, dio.tag, outcome, &[]);
                        moved = true;
                    }
                    Issued::Deferred => {
                        let t = now();
                        if self.room_wait_end().is_some_and(|end| end <= t) {
                            // No room for that long: as if it had timed out in flight.
                            self.handle_io(t, dio.disk, dio.tag, IoOutcome::TimedOut, &[]);
                            moved = true;
                        } else {
                            // Kept for the next pump; the other disks wait for room too.
                            self.give_back(dio);
                            break;
                        }
                    }
                }
            }
            if !self.in_flight() {
                if let Some(r) = self.machine.poll_result() {
                    return Pumped::Done(r);
                }
            }
            if let Some((host, generation)) = self.machine.poll_owner_query() {
                let t = now();
                let (status, same) = owner_status(host, generation, t);
                self.machine.handle_owner_status(t, status, same);
                moved = true;
            } else if let Some(due) = self.machine.poll_timeout() {
                let t = now();
                if due <= t {
                    self.machine.handle_timeout(t);
                    moved = true;
                } else if !moved && !self.in_flight() {
                    return Pumped::Until(due);
                }
            }
            if !moved {
                return if self.in_flight() {
                    Pumped::Io
                } else if let Some(deadline) = self.deferred_until() {
                    Pumped::Room(deadline)
                } else {
                    match self.machine.poll_timeout() {
                        Some(due) => Pumped::Until(due),
                        None => Pumped::Stalled,
                    }
                };
            }
        }
        // Still moving after the passes: give the driver back, it pumps again.
        if self.in_flight() || self.deferred_until().is_some() {
            Pumped::Io
        } else {
            Pumped::Until(now())
        }
    }

    /// The machine, given back.
    pub fn into_machine(self) -> M {
        self.machine
    }

    /// `machine` (configured with `cfg`, whose `area_offset` is `areas[0]`) over the disks
    /// whose resource areas start at `areas`. Refuses the lock value block on more than one
    /// disk, and more than [`DISKS_MAX`] disks.
    pub fn new(machine: M, cfg: &PaxosConfig, areas: Vec<u64>) -> Result<Self, PaxosError> {
        if areas.is_empty() || areas.len() > DISKS_MAX {
            return Err(PaxosError::Disks(format!(
                "a lease has 1 to {DISKS_MAX} disks, not {}",
                areas.len()
            )));
        }
        if areas[0] != cfg.area_offset {
            return Err(PaxosError::Disks(format!(
                "the machine's area offset {} is not the first disk's {}",
                cfg.area_offset, areas[0]
            )));
        }
        if areas.len() > 1 && cfg.read_lvb {
            return Err(PaxosError::LvbUnavailable(
                "the lock value block of a lease on several disks (it has no version to tell \
                 the disks' copies apart)"
                    .into(),
            ));
        }
        let n = areas.len();
        Ok(Majority {
            machine,
            cfg: cfg.clone(),
            areas,
            busy: vec![None; n],
            step: None,
            next_tag: 1,
            reads: vec![Vec::new(); n],
            merged: Vec::new(),
            rejected_reads: 0,
        })
    }

    /// The machine (for its owner queries, timers and result).
    pub fn machine(&mut self) -> &mut M {
        &mut self.machine
    }

    /// The machine, read-only.
    pub fn machine_ref(&self) -> &M {
        &self.machine
    }

    /// Number of disks.
    pub fn disks(&self) -> usize {
        self.areas.len()
    }

    /// Disks that must answer Done for a step to succeed.
    pub fn majority(&self) -> usize {
        self.areas.len() / 2 + 1
    }

    /// Reads in which a disk was left out for a damaged or foreign leader or dblock.
    pub fn rejected_reads(&self) -> u32 {
        self.rejected_reads
    }

    /// True while an I/O is in flight on some disk (a straggler of an earlier step included).
    pub fn in_flight(&self) -> bool {
        self.busy.iter().any(Option::is_some)
    }

    /// Until when the current step's I/O may wait for room in the engine.
    fn room_wait_end(&self) -> Option<Time> {
        let step = self.step.as_ref()?;
        Some(
            step.deadline
                .saturating_add(self.cfg.timeouts.io() * ROOM_WAIT_MAX),
        )
    }

    /// Until when a step's I/O that the driver gave back for want of room in its engine
    /// ([`Issued::Deferred`]) waits to be issued again, if one waits.
    pub fn deferred_until(&self) -> Option<Time> {
        let step = self.step.as_ref()?;
        let waiting = if self.areas.len() == 1 {
            // One disk: the step is current exactly while its I/O is out, unless given back.
            self.busy[0].is_none()
        } else {
            (0..self.areas.len())
                .any(|d| step.answers[d] == Answer::Waiting && self.busy[d].is_none())
        };
        if waiting {
            self.room_wait_end()
        } else {
            None
        }
    }

    /// An I/O just polled that the driver could not start: it is the step's again, polled
    /// once more at the next pump.
    fn give_back(&mut self, dio: DiskIo) {
        if self.busy[dio.disk] == Some(dio.tag) {
            self.busy[dio.disk] = None;
        }
        if let Some(step) = self.step.as_mut().filter(|s| s.tag == dio.tag) {
            step.deferred = true;
            if let Some(a) = step.answers.get_mut(dio.disk) {
                *a = Answer::Waiting;
            }
        }
    }

    /// The next I/O to issue, on some disk (taken: each is returned once, unless given back).
    pub fn poll_io(&mut self) -> Option<DiskIo> {
        if self.areas.len() == 1 {
            // One disk: the machine's own I/O, nothing copied or allocated.
            if self.busy[0].is_some() {
                return None;
            }
            if let Some(step) = &self.step {
                // Given back by the driver: the same I/O again.
                self.busy[0] = Some(step.tag);
                return Some(DiskIo {
                    disk: 0,
                    io: step.io,
                    tag: step.tag,
                });
            }
            let io = self.machine.poll_io()?;
            let tag = self.next_tag;
            self.next_tag += 1;
            self.busy[0] = Some(tag);
            self.step = Some(Step {
                tag,
                io,
                data: Vec::new(),
                deadline: self.machine.io_deadline(),
                answers: Vec::new(),
                deferred: false,
            });
            return Some(DiskIo { disk: 0, io, tag });
        }
        if self.step.is_none() {
            let io = self.machine.poll_io()?;
            let tag = self.next_tag;
            self.next_tag += 1;
            self.step = Some(Step {
                tag,
                io,
                data: self.machine.write_data().to_vec(),
                deadline: self.machine.io_deadline(),
                answers: vec![Answer::Waiting; self.areas.len()],
                deferred: false,
            });
        }
        // Set just above.
        let step = self.step.as_mut().expect("current step");
        let disk = (0..self.areas.len())
            .find(|&d| step.answers[d] == Answer::Waiting && self.busy[d].is_none())?;
        step.answers[disk] = Answer::Issued;
        self.busy[disk] = Some(step.tag);
        let shift = |offset: u64| offset - self.cfg.area_offset + self.areas[disk];
        let io = match step.io {
            PaxosIo::Read { offset, len } => PaxosIo::Read {
                offset: shift(offset),
                len,
            },
            PaxosIo::Write { offset } => PaxosIo::Write {
                offset: shift(offset),
            },
            PaxosIo::WriteThenRead {
                write_offset,
                read_offset,
                read_len,
            } => PaxosIo::WriteThenRead {
                write_offset: shift(write_offset),
                read_offset: shift(read_offset),
                read_len,
            },
            PaxosIo::WriteAndRead {
                write_offset,
                read_offset,
                read_len,
            } => PaxosIo::WriteAndRead {
                write_offset: shift(write_offset),
                read_offset: shift(read_offset),
                read_len,
            },
        };
        Some(DiskIo {
            disk,
            io,
            tag: step.tag,
        })
    }

    /// The sector to write for the I/O just polled (the same on every disk).
    pub fn write_data(&self) -> &[u8] {
        if self.areas.len() == 1 {
            return self.machine.write_data();
        }
        self.step.as_ref().map_or(&[], |s| &s.data)
    }

    /// Deadline of the I/O just polled.
    pub fn io_deadline(&self) -> Time {
        self.step
            .as_ref()
            .map_or_else(|| self.machine.io_deadline(), |s| s.deadline)
    }

    /// The outcome of an I/O polled earlier (for a linked pair: its first failure, or Done
    /// with the read's bytes).
    pub fn handle_io(&mut self, now: Time, disk: usize, tag: u64, outcome: IoOutcome, data: &[u8]) {
        if self.busy.get(disk).copied().flatten() == Some(tag) {
            self.busy[disk] = None;
        }
        if self.areas.len() == 1 {
            // One disk is its own majority and its read needs no merging.
            if self.step.as_ref().is_some_and(|s| s.tag == tag) {
                self.step = None;
                self.machine.handle_io(now, outcome, data);
            }
            return;
        }
        let Some(step) = self.step.as_mut() else {
            return;
        };
        if step.tag != tag || step.answers.get(disk) != Some(&Answer::Issued) {
            // A straggler of a step that already ended: the disk is free again.
            return;
        }
        if outcome == IoOutcome::Done {
            step.answers[disk] = Answer::Done;
            self.reads[disk].clear();
            self.reads[disk].extend_from_slice(data);
        } else {
            step.answers[disk] = Answer::Failed(outcome);
        }
        let reads = match step.io {
            PaxosIo::Write { .. } => false,
            PaxosIo::Read { .. } | PaxosIo::WriteThenRead { .. } | PaxosIo::WriteAndRead { .. } => {
                true
            }
        };
        let answers = step.answers.clone();
        let majority = self.majority();
        let done: Vec<usize> = (0..answers.len())
            .filter(|&d| answers[d] == Answer::Done)
            .collect();
        if done.len() >= majority && !reads {
            self.step = None;
            return self.machine.handle_io(now, IoOutcome::Done, &[]);
        }
        if done.len() >= majority {
            // Reads: merge those of the disks that pass the checks, if still a majority.
            let (good, bad): (Vec<usize>, Vec<usize>) = done
                .iter()
                .partition(|&&d| self.area_checks_out(&self.reads[d]));
            if let Some(s) = self.step.as_mut() {
                for &d in &bad {
                    // Left out of this read's majority; `Failed(Done)` marks a damaged copy.
                    s.answers[d] = Answer::Failed(IoOutcome::Done);
                }
            }
            self.rejected_reads += bad.len() as u32;
            if good.len() >= majority {
                self.merge(&good);
                self.step = None;
                let merged = std::mem::take(&mut self.merged);
                self.machine.handle_io(now, IoOutcome::Done, &merged);
                self.merged = merged;
                return;
            }
            let outstanding = answers
                .iter()
                .filter(|a| matches!(a, Answer::Waiting | Answer::Issued))
                .count();
            if good.len() + outstanding >= majority {
                return; // Another disk may still make a majority.
            }
            // No majority of sound copies: hand the machine a damaged one, so that it
            // reports what is wrong with it.
            self.step = None;
            let d = bad[0];
            let damaged = std::mem::take(&mut self.reads[d]);
            self.machine.handle_io(now, IoOutcome::Done, &damaged);
            self.reads[d] = damaged;
            return;
        }
        let failed = answers
            .iter()
            .filter(|a| matches!(a, Answer::Failed(_)))
            .count();
        if answers.len() - failed < majority {
            // A majority can no longer answer Done: report the first I/O failure (or, if
            // only damaged copies failed, the damage through one of them).
            self.step = None;
            let first = answers.iter().find_map(|a| match a {
                Answer::Failed(o) if *o != IoOutcome::Done => Some(*o),
                _ => None,
            });
            match first {
                Some(o) => self.machine.handle_io(now, o, &[]),
                None => {
                    let d = (0..answers.len())
                        .find(|&d| answers[d] == Answer::Failed(IoOutcome::Done))
                        .unwrap_or(0);
                    let damaged = std::mem::take(&mut self.reads[d]);
                    self.machine.handle_io(now, IoOutcome::Done, &damaged);
                    self.reads[d] = damaged;
                }
            }
        }
    }

    /// The leader decodes as this resource's, and every dblock in the read decodes.
    fn area_checks_out(&self, data: &[u8]) -> bool {
        let ss = self.cfg.geometry.sector_size_bytes() as usize;
        let Some(leader) = data.get(..ss) else {
            return false;
        };
        if LeaderRecord::decode_expect(
            leader,
            LeaderKind::Paxos,
            self.cfg.geometry,
            &self.cfg.space_name,
            Some(&self.cfg.resource_name),
        )
        .is_err()
        {
            return false;
        }
        data.chunks(ss)
            .skip(2)
            .all(|sector| Dblock::decode(sector).is_ok())
    }

    /// Merges the reads of disks `good` (same length, starting at the leader) into
    /// `self.merged`: the newest leader, the request with the highest lver, and per host the
    /// latest dblock sector.
    fn merge(&mut self, good: &[usize]) {
        let ss = self.cfg.geometry.sector_size_bytes() as usize;
        let len = good.iter().map(|&d| self.reads[d].len()).min().unwrap_or(0);
        self.merged.clear();
        self.merged.resize(len, 0);
        for (i, out) in self.merged.chunks_mut(ss).enumerate() {
            let sector = |d: usize| &self.reads[d][i * ss..i * ss + out.len()];
            let best = match i {
                // Same lver: a free leader (release, or a shared acquire's hand-back) is written
                // after the held one.
                0 => good.iter().copied().max_by_key(|&d| {
                    LeaderRecord::decode(sector(d))
                        .map(|l| (l.lver, l.timestamp == 0))
                        .unwrap_or((0, false))
                }),
                1 => good.iter().copied().max_by_key(|&d| {
                    RequestRecord::decode(sector(d))
                        .map(|r| r.lver)
                        .unwrap_or(0)
                }),
                _ => good
                    .iter()
                    .copied()
                    .max_by_key(|&d| dblock_order(sector(d))),
            };
            // `good` is not empty: a majority of at least one disk.
            let best = best.expect("a disk to merge from");
            out.copy_from_slice(sector(best));
        }
    }
}

/// A host's writes of its dblock sector, in the order it makes them, compare increasing:
/// (lver, mbal, bal), then RELEASED after the same ballot's plain write, then a cleared mode
/// block after a SHARED one of the same dblock (a shared hold's release; a conversion's last
/// write).
fn dblock_order(sector: &[u8]) -> (u64, u64, u64, bool, bool) {
    let d = Dblock::decode(sector).unwrap_or_default();
    let shared = ModeBlock::decode_from_sector(sector).is_ok_and(|m| m.is_shared());
    (
        d.lver,
        d.mbal,
        d.bal,
        d.flags & DBLOCK_FLAG_RELEASED != 0,
        !shared,
    )
}

/// Blocking drivers for a lease on several disks (direct use, tests and tools).
pub mod blocking {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::{DiskIo, Majority, PaxosMachine};
    use crate::clock::{Clock, Time};
    use crate::delta::HostStatus;
    use crate::io::{Completion, DiskId, IoBackend, IoError, IoId, IoKind, IoOutcome};
    use crate::paxos::{start_io, Acquired, PaxosAcquire, PaxosConfig, PaxosError, PaxosRelease};

    /// Longest single wait, so that deadlines are noticed promptly.
    const WAIT_SLICE: Duration = Duration::from_millis(50);

    /// One disk's I/O (or linked pair) in flight.
    #[derive(Default)]
    struct Flight {
        remaining: u8,
        outcome: Option<IoOutcome>,
        data: Vec<u8>,
    }

    /// I/Os in flight, by engine id.
    #[derive(Default)]
    struct Flights {
        by_id: HashMap<IoId, (usize, u64)>,
        open: HashMap<(usize, u64), Flight>,
    }

    impl Flights {
        fn is_empty(&self) -> bool {
            self.open.is_empty()
        }
    }

    /// Issues every I/O the machine wants on every disk that is free.
    fn issue<M: PaxosMachine>(
        backend: &mut dyn IoBackend,
        clock: &dyn Clock,
        disks: &[DiskId],
        maj: &mut Majority<M>,
        flights: &mut Flights,
    ) {
        while let Some(DiskIo { disk, io, tag }) = maj.poll_io() {
            let data = maj.write_data().to_vec();
            match start_io(backend, disks[disk], io, &data, maj.io_deadline()) {
                Ok((w, r)) => {
                    let ids: Vec<IoId> = w.into_iter().chain(r).collect();
                    for id in &ids {
                        flights.by_id.insert(*id, (disk, tag));
                    }
                    flights.open.insert(
                        (disk, tag),
                        Flight {
                            remaining: ids.len() as u8,
                            ..Flight::default()
                        },
                    );
                }
                Err(_) => maj.handle_io(
                    clock.now(),
                    disk,
                    tag,
                    IoOutcome::Failed { errno: libc::EBUSY },
                    &[],
                ),
            }
        }
    }

    /// Waits until at least one completion arrived or `until` passed, and hands the finished
    /// I/Os to the machine.
    fn collect<M: PaxosMachine>(
        backend: &mut dyn IoBackend,
        clock: &dyn Clock,
        maj: &mut Majority<M>,
        flights: &mut Flights,
        until: Option<Time>,
    ) -> Result<(), IoError> {
        let mut out: Vec<Completion> = Vec::new();
        loop {
            let now = clock.now();
            backend.poll(now, &mut out)?;
            if !out.is_empty() || until.is_some_and(|u| u <= now) {
                break;
            }
            let mut wake = now.saturating_add(WAIT_SLICE);
            if let Some(d) = backend.next_deadline() {
                wake = wake.min(d);
            }
            if let Some(u) = until {
                wake = wake.min(u);
            }
            backend.wait(now, wake)?;
        }
        for c in out {
            let Some((disk, tag)) = flights.by_id.remove(&c.id) else {
                if c.kind == IoKind::Read {
                    backend.release(c.id);
                }
                continue;
            };
            let f = flights.open.entry((disk, tag)).or_default();
            f.remaining = f.remaining.saturating_sub(1);
            if c.outcome != IoOutcome::Done && f.outcome.is_none() {
                f.outcome = Some(c.outcome);
            }
            if c.kind == IoKind::Read {
                if let Some(d) = backend.read_data(c.id) {
                    f.data.clear();
                    f.data.extend_from_slice(d);
                }
                backend.release(c.id);
            }
            if f.remaining == 0 {
                // Just looked up.
                let f = flights.open.remove(&(disk, tag)).expect("open flight");
                let outcome = f.outcome.unwrap_or(IoOutcome::Done);
                maj.handle_io(clock.now(), disk, tag, outcome, &f.data);
            }
        }
        Ok(())
    }

    /// Lets every straggler answer, so that nothing of this run is left in the engine.
    fn drain<M: PaxosMachine>(
        backend: &mut dyn IoBackend,
        clock: &dyn Clock,
        maj: &mut Majority<M>,
        flights: &mut Flights,
    ) -> Result<(), IoError> {
        while !flights.is_empty() {
            collect(backend, clock, maj, flights, None)?;
        }
        Ok(())
    }

    /// Runs an acquire of the lease whose areas are at `areas[i]` on `disks[i]` (`cfg`'s
    /// area offset is `areas[0]`) to its end.
    pub fn acquire(
        backend: &mut dyn IoBackend,
        clock: &dyn Clock,
        disks: &[DiskId],
        areas: Vec<u64>,
        cfg: PaxosConfig,
        owner_status: &mut dyn FnMut(u64, u64) -> (HostStatus, bool),
    ) -> Result<Result<Acquired, PaxosError>, IoError> {
        if disks.len() != areas.len() {
            return Ok(Err(PaxosError::Disks(format!(
                "{} disks given with {} area offsets",
                disks.len(),
                areas.len()
            ))));
        }
        let m = PaxosAcquire::new(cfg.clone(), clock.now());
        let mut maj = match Majority::new(m, &cfg, areas) {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        let mut flights = Flights::default();
        loop {
            issue(backend, clock, disks, &mut maj, &mut flights);
            if let Some(r) = maj.machine().poll_result() {
                drain(backend, clock, &mut maj, &mut flights)?;
                return Ok(r);
            }
            if let Some((host, generation)) = maj.machine().poll_owner_query() {
                let (status, same) = owner_status(host, generation);
                maj.machine().handle_owner_status(clock.now(), status, same);
                continue;
            }
            let timer = maj.machine().poll_timeout();
            if !flights.is_empty() {
                collect(backend, clock, &mut maj, &mut flights, timer)?;
            } else if let Some(t) = timer {
                let now = clock.now();
                if t > now {
                    backend.wait(now, t)?;
                }
            } else {
                return Ok(Err(PaxosError::Stalled("acquire")));
            }
            if timer.is_some_and(|t| t <= clock.now()) {
                maj.machine().handle_timeout(clock.now());
            }
        }
    }

    /// Runs a release of `held` on the lease's disks to its end.
    pub fn release(
        backend: &mut dyn IoBackend,
        clock: &dyn Clock,
        disks: &[DiskId],
        areas: Vec<u64>,
        cfg: PaxosConfig,
        held: Acquired,
    ) -> Result<Result<(), PaxosError>, IoError> {
        if disks.len() != areas.len() {
            return Ok(Err(PaxosError::Disks(format!(
                "{} disks given with {} area offsets",
                disks.len(),
                areas.len()
            ))));
        }
        let m = PaxosRelease::new(cfg.clone(), held, clock.now());
        let mut maj = match Majority::new(m, &cfg, areas) {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        let mut flights = Flights::default();
        loop {
            issue(backend, clock, disks, &mut maj, &mut flights);
            if let Some(r) = maj.machine().poll_result() {
                drain(backend, clock, &mut maj, &mut flights)?;
                return Ok(r);
            }
            if flights.is_empty() {
                return Ok(Err(PaxosError::Stalled("release")));
            }
            collect(backend, clock, &mut maj, &mut flights, None)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tenure_format::area::encode_resource_area;
    use tenure_format::{Geometry, Name};

    use super::*;
    use crate::delta::HostStatus;
    use crate::paxos::Acquired;
    use crate::timeouts::Timeouts;

    const MIB: usize = 1 << 20;
    /// Where the resource area sits on each of the three test disks.
    const AREAS: [u64; 3] = [0, MIB as u64, 0];

    fn cfg(host_id: u64) -> PaxosConfig {
        PaxosConfig {
            space_name: Name::new("LS").expect("name"),
            resource_name: Name::new("r").expect("name"),
            geometry: Geometry::LEGACY_512,
            area_offset: AREAS[0],
            host_id,
            generation: 1,
            timeouts: Timeouts::new(1, 10),
            no_wait: true,
            expect_lver: None,
            read_lvb: false,
            shared: false,
        }
    }

    /// Three in-memory disks; a disk may fail every I/O, or hold its I/Os until let go.
    struct Disks {
        data: Vec<Vec<u8>>,
        failing: [bool; 3],
        holding: [bool; 3],
        held: Vec<(DiskIo, Vec<u8>)>,
        now: Time,
    }

    impl Disks {
        fn new() -> Self {
            let mut data = Vec::new();
            for &off in &AREAS {
                let mut disk = vec![0u8; 2 * MIB];
                encode_resource_area(
                    &mut disk[off as usize..off as usize + MIB],
                    Geometry::LEGACY_512,
                    Name::new("LS").expect("n"),
                    Name::new("r").expect("n"),
                    8,
                );
                data.push(disk);
            }
            Disks {
                data,
                failing: [false; 3],
                holding: [false; 3],
                held: Vec::new(),
                now: Time::from_nanos(1_000_000_000_000),
            }
        }

        fn apply(&mut self, d: usize, io: PaxosIo, data: &[u8]) -> Vec<u8> {
            let disk = &mut self.data[d];
            let mut write = |off: u64| {
                disk[off as usize..off as usize + data.len()].copy_from_slice(data);
            };
            match io {
                PaxosIo::Read { offset, len } => {
                    disk[offset as usize..offset as usize + len].to_vec()
                }
                PaxosIo::Write { offset } => {
                    write(offset);
                    Vec::new()
                }
                PaxosIo::WriteThenRead {
                    write_offset,
                    read_offset,
                    read_len,
                }
                | PaxosIo::WriteAndRead {
                    write_offset,
                    read_offset,
                    read_len,
                } => {
                    write(write_offset);
                    disk[read_offset as usize..read_offset as usize + read_len].to_vec()
                }
            }
        }

        /// Issues every I/O the layer has ready (all of them before any answers, as a real
        /// engine would), then answers them; true if there was any.
        fn pump<M: PaxosMachine>(&mut self, maj: &mut Majority<M>) -> bool {
            let mut ready = Vec::new();
            while let Some(dio) = maj.poll_io() {
                ready.push((dio, maj.write_data().to_vec()));
            }
            let any = !ready.is_empty();
            for (dio, data) in ready {
                self.now = self.now.saturating_add(Duration::from_micros(100));
                if self.failing[dio.disk] {
                    let eio = IoOutcome::Failed { errno: libc::EIO };
                    maj.handle_io(self.now, dio.disk, dio.tag, eio, &[]);
                } else if self.holding[dio.disk] {
                    self.held.push((dio, data));
                } else {
                    let out = self.apply(dio.disk, dio.io, &data);
                    maj.handle_io(self.now, dio.disk, dio.tag, IoOutcome::Done, &out);
                }
            }
            any
        }

        /// Lets the held I/Os of `d` land and answer.
        fn let_go<M: PaxosMachine>(&mut self, d: usize, maj: &mut Majority<M>) {
            self.holding[d] = false;
            for (dio, data) in std::mem::take(&mut self.held) {
                let out = self.apply(dio.disk, dio.io, &data);
                maj.handle_io(self.now, dio.disk, dio.tag, IoOutcome::Done, &out);
            }
        }

        fn acquire(
            &mut self,
            cfg: PaxosConfig,
            status: HostStatus,
        ) -> (Result<Acquired, PaxosError>, Majority<PaxosAcquire>) {
            let m = PaxosAcquire::new(cfg.clone(), self.now);
            let mut maj = Majority::new(m, &cfg, AREAS.to_vec()).expect("majority");
            loop {
                if let Some(r) = maj.machine().poll_result() {
                    return (r, maj);
                }
                if self.pump(&mut maj) {
                    continue;
                }
                if maj.machine().poll_owner_query().is_some() {
                    maj.machine().handle_owner_status(self.now, status, true);
                } else if let Some(t) = maj.machine().poll_timeout() {
                    self.now = t;
                    maj.machine().handle_timeout(t);
                } else {
                    panic!("acquire stalled");
                }
            }
        }

        fn release(&mut self, cfg: PaxosConfig, held: Acquired) -> Result<(), PaxosError> {
            let m = PaxosRelease::new(cfg.clone(), held, self.now);
            let mut maj = Majority::new(m, &cfg, AREAS.to_vec()).expect("majority");
            loop {
                if let Some(r) = maj.machine().poll_result() {
                    return r;
                }
                assert!(self.pump(&mut maj), "release stalled");
            }
        }

        fn leader(&self, d: usize) -> LeaderRecord {
            let off = AREAS[d] as usize;
            LeaderRecord::decode(&self.data[d][off..off + 512]).expect("leader")
        }
    }

    #[test]
    fn a_lease_on_three_disks_is_committed_and_freed_on_every_disk() {
        let mut disks = Disks::new();
        let (r, maj) = disks.acquire(cfg(1), HostStatus::Dead);
        let held = r.expect("acquired");
        assert_eq!(maj.rejected_reads(), 0);
        for d in 0..3 {
            let l = disks.leader(d);
            assert_eq!((l.owner_id, l.lver), (1, 1), "disk {d}");
            assert_ne!(l.timestamp, 0, "disk {d}");
        }
        disks.release(cfg(1), held).expect("released");
        for d in 0..3 {
            assert_eq!(disks.leader(d).timestamp, 0, "disk {d}");
        }
    }

    #[test]
    fn one_failing_disk_is_outvoted_and_two_fail_the_acquire() {
        let mut disks = Disks::new();
        disks.failing[1] = true;
        let (r, _) = disks.acquire(cfg(1), HostStatus::Dead);
        let held = r.expect("acquired on two of three disks");
        assert_eq!(disks.leader(0).owner_id, 1);
        assert_eq!(
            disks.leader(1).timestamp,
            0,
            "the failing disk was never written"
        );
        disks
            .release(cfg(1), held)
            .expect("released on two of three");
        disks.failing[2] = true;
        let (r, _) = disks.acquire(cfg(2), HostStatus::Dead);
        assert!(
            matches!(r, Err(PaxosError::Io { .. })),
            "one disk of three is no majority: {r:?}"
        );
    }

    #[test]
    fn a_holder_on_two_disks_is_seen_by_an_acquirer_reading_the_other_two() {
        // Host 1 acquires while disk 2 fails: its leader and dblocks are on disks 0 and 1.
        let mut disks = Disks::new();
        disks.failing[2] = true;
        let (r, _) = disks.acquire(cfg(1), HostStatus::Dead);
        r.expect("acquired");
        // Host 2 meets disk 0 failing instead: its majority {1, 2} still shows host 1.
        disks.failing = [true, false, false];
        let (r, _) = disks.acquire(cfg(2), HostStatus::Live);
        assert_eq!(
            r,
            Err(PaxosError::OwnerAlive {
                host_id: 1,
                generation: 1
            })
        );
        // Once host 1 is dead, host 2 takes over on its majority.
        let (r, _) = disks.acquire(cfg(2), HostStatus::Dead);
        let held = r.expect("taken over");
        assert_eq!(held.lver, 2);
        assert_eq!(disks.leader(2).owner_id, 2);
    }

    #[test]
    fn a_damaged_copy_is_left_out_of_the_majority() {
        let mut disks = Disks::new();
        // Disk 1's area was never formatted (or was overwritten by something else).
        disks.data[1].fill(0);
        let (r, maj) = disks.acquire(cfg(1), HostStatus::Dead);
        r.expect("acquired on the two sound copies");
        assert!(maj.rejected_reads() > 0);
        // The commit wrote disk 1's leader again; damage it and another copy: no majority
        // is left, and the machine reports the damage.
        disks.data[1].fill(0);
        disks.data[2].fill(0xA5);
        let (r, _) = disks.acquire(cfg(2), HostStatus::Dead);
        assert!(matches!(r, Err(PaxosError::Corrupt(_))), "{r:?}");
    }

    #[test]
    fn a_slow_disk_does_not_hold_up_the_acquire_and_catches_up_later() {
        let mut disks = Disks::new();
        disks.holding[2] = true;
        let (r, mut maj) = disks.acquire(cfg(1), HostStatus::Dead);
        let held = r.expect("acquired on disks 0 and 1");
        // Disk 2 got only the first I/O (the others waited for it to answer).
        assert_eq!(disks.held.len(), 1);
        assert!(maj.in_flight());
        disks.let_go(2, &mut maj);
        assert!(!maj.in_flight());
        assert_eq!(
            disks.leader(2).timestamp,
            0,
            "disk 2 saw only the first read"
        );
        // The release reaches all three.
        disks.release(cfg(1), held).expect("released");
        let (r, _) = disks.acquire(cfg(2), HostStatus::Live);
        assert_eq!(r.expect("free lease").lver, 2);
    }

    #[test]
    fn the_lock_value_block_and_bad_disk_lists_are_refused() {
        let mut c = cfg(1);
        c.read_lvb = true;
        let m = PaxosAcquire::new(c.clone(), Time::from_nanos(1));
        assert!(matches!(
            Majority::new(m.clone(), &c, AREAS.to_vec()),
            Err(PaxosError::LvbUnavailable(_))
        ));
        assert!(Majority::new(m.clone(), &c, vec![0]).is_ok());
        let c = cfg(1);
        let m = PaxosAcquire::new(c.clone(), Time::from_nanos(1));
        assert!(matches!(
            Majority::new(m.clone(), &c, vec![0; 5]),
            Err(PaxosError::Disks(_))
        ));
        assert!(matches!(
            Majority::new(m, &c, vec![4096, 0]),
            Err(PaxosError::Disks(_))
        ));
    }

    #[test]
    fn a_hosts_dblock_writes_compare_in_the_order_it_makes_them() {
        let sector = |d: Dblock, shared: bool| {
            let mut s = vec![0u8; 512];
            d.encode_into(&mut s);
            if shared {
                ModeBlock {
                    flags: tenure_format::paxos::MODE_FLAG_SHARED,
                    unused: 0,
                    generation: 1,
                }
                .encode_into(&mut s);
            }
            dblock_order(&s)
        };
        let phase1 = Dblock {
            mbal: 9,
            lver: 3,
            ..Dblock::default()
        };
        let phase2 = Dblock {
            bal: 9,
            inp: 1,
            ..phase1
        };
        let released = Dblock {
            flags: DBLOCK_FLAG_RELEASED,
            ..phase2
        };
        let next = Dblock {
            mbal: 1,
            lver: 4,
            ..Dblock::default()
        };
        let writes = [
            sector(Dblock::default(), false),
            sector(phase1, false),
            sector(phase2, false),
            sector(released, true),
            sector(released, false),
            sector(next, false),
        ];
        assert!(writes.windows(2).all(|w| w[0] < w[1]), "{writes:?}");
    }

    /// An I/O the driver has no room for stays the step's and is handed over again at the
    /// next pump with a fresh deadline (one disk and three); one that finds no room for
    /// ROOM_WAIT_MAX io_timeouts past its first deadline fails the step as timed out.
    #[test]
    fn an_io_without_room_is_handed_over_again_with_a_fresh_deadline() {
        for areas in [vec![AREAS[0]], AREAS.to_vec()] {
            let mut disks = Disks::new();
            let c = cfg(1);
            let m = PaxosAcquire::new(c.clone(), disks.now);
            let mut maj = Majority::new(m, &c, areas.clone()).expect("majority");
            let (mut deferred, mut started) = (0, 0);
            let mut pumps = 0;
            let result = loop {
                pumps += 1;
                assert!(pumps < 1000, "acquire stalled");
                let now = disks.now;
                let mut out = Vec::new();
                let mut issue = |dio: DiskIo, data: &[u8], deadline: Time| {
                    assert!(deadline > now, "handed over before its deadline only");
                    // Room for every other I/O.
                    if (deferred + started) % 2 == 0 {
                        deferred += 1;
                        return Issued::Deferred;
                    }
                    started += 1;
                    out.push((dio, data.to_vec()));
                    Issued::Started
                };
                let pumped = maj.pump(&mut || now, &mut issue, &mut |_, _, _| {
                    (HostStatus::Free, true)
                });
                match pumped {
                    Pumped::Done(r) => break r,
                    Pumped::Room(t) => {
                        assert!(t > now);
                        assert_eq!(maj.deferred_until(), Some(t));
                    }
                    Pumped::Io => {}
                    other => panic!("{other:?} with {} disks", areas.len()),
                }
                for (dio, data) in out {
                    let read = disks.apply(dio.disk, dio.io, &data);
                    maj.handle_io(now, dio.disk, dio.tag, IoOutcome::Done, &read);
                }
                disks.now = disks.now.saturating_add(Duration::from_micros(100));
            };
            let won = result.expect("acquired through deferred I/O");
            assert_eq!(won.leader.owner_id, 1);
            assert!(
                deferred >= 4 && started >= 4,
                "{deferred} deferred, {started} started"
            );
            let committed = (0..areas.len())
                .filter(|&d| disks.leader(d).owner_id == 1)
                .count();
            assert!(committed > areas.len() / 2, "committed on a majority");
            // Never any room: kept, offered again with a fresh deadline, and failed as timed
            // out once it waited ROOM_WAIT_MAX io_timeouts past its first deadline.
            let t0 = disks.now;
            let io = Duration::from_secs(1);
            let m = PaxosAcquire::new(cfg(2), t0);
            let mut maj = Majority::new(m, &cfg(2), areas.clone()).expect("majority");
            let mut offered = Vec::new();
            let mut never = |_: DiskIo, _: &[u8], deadline: Time| {
                offered.push(deadline);
                Issued::Deferred
            };
            let mut owner = |_: u64, _: u64, _: Time| (HostStatus::Free, true);
            let end = t0.saturating_add(io * (ROOM_WAIT_MAX + 1));
            let Pumped::Room(until) = maj.pump(&mut || t0, &mut never, &mut owner) else {
                panic!("kept for room");
            };
            assert_eq!((until, maj.deferred_until()), (end, Some(end)));
            let later = t0.saturating_add(io * 5);
            assert!(matches!(
                maj.pump(&mut || later, &mut never, &mut owner),
                Pumped::Room(u) if u == end
            ));
            match maj.pump(&mut || end, &mut never, &mut owner) {
                Pumped::Done(Err(_)) => {}
                other => panic!("timed out after waiting, got {other:?}"),
            }
            assert_eq!(
                offered[0],
                t0.saturating_add(io),
                "first offer: T after asking"
            );
            assert_eq!(
                offered[1],
                later.saturating_add(io),
                "again: T after the offer"
            );
        }
    }
}
