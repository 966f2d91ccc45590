//! Paxos leases (one resource) as a sans-IO state machine: exclusive acquire and release on one
//! disk (spec/PROTOCOL.md "Paxos lease"; Gafni & Lamport, Disk Paxos).
//!
//! An acquire first reads the leader, the request record and the dblocks up to its own (a
//! free leader needs no more; one naming another owner costs a read of every dblock), decides
//! whether a ballot may run — asking its driver for the owner's delta-lease status when the
//! leader names a live-looking owner — then runs phase 1
//! (write our dblock, then read all dblocks), phase 2 (write our dblock with the chosen value,
//! then read all), and commits by writing the leader. A ballot that meets a higher mbal or lver
//! aborts and retries with a larger ballot after a backoff scaled to the measured I/O time.
//!
//! Invariants:
//! - Ballot numbers of different hosts never collide: `mbal ≡ host_id (mod max_hosts)`.
//! - Within one lver (one consensus instance) our dblock keeps its bal/inp across ballots, so
//!   a value that may have been chosen is never forgotten (Disk Paxos phase 1).
//! - Reads of dblocks start only after our write completed (the driver links them).
//! - Dblocks above num_hosts are never read; a host above num_hosts cannot acquire.
//!
//! Also here: conditional acquire on an expected lver, the lock value block (read before the
//! commit, written at release before the RELEASED dblock), and reading the owners of a
//! resource without acquiring it ([`owners_from_area`]).
//!
//! Shared mode (spec/PROTOCOL.md "Shared"): a shared acquire wins the leader with SHORT_HOLD,
//! writes its mode block SHARED together with its RELEASED dblock, and frees the leader; an
//! exclusive acquire that wins checks the SHARED mode blocks of its phase 2 read and gives the
//! leader back if any of those hosts is live (or not yet known dead) in that generation. A
//! dead holder's mode block is ignored but not cleared: writing another host's sector could
//! clobber a ballot that host runs after rejoining, and its own next dblock write clears it.
//! An acquire that finds another host's SHORT_HOLD leader retries up to
//! [`SHORT_HOLD_RETRIES_MAX`] times.
//!
//! An I/O failure after phase 2 began with our value is retracted (spec step 7): the ballot
//! runs again to learn whether the lease is ours, and what it wins is given back at once.
//! Leases on several disks: [`disks::Majority`] runs these machines over each disk's copy.

pub mod disks;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tenure_format::paxos::{Dblock, ModeBlock, DBLOCK_FLAG_RELEASED, MODE_FLAG_SHARED};
use tenure_format::{Geometry, LeaderKind, LeaderRecord, Name};

use crate::clock::Time;
use crate::delta::HostStatus;
use crate::io::IoOutcome;
use crate::timeouts::Timeouts;

/// Who acquires which resource.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PaxosConfig {
    /// Lockspace name.
    pub space_name: Name,
    /// Resource name.
    pub resource_name: Name,
    /// Area geometry.
    pub geometry: Geometry,
    /// Byte offset of the resource area on its device.
    pub area_offset: u64,
    /// Our host id.
    pub host_id: u64,
    /// Our lockspace generation.
    pub generation: u64,
    /// Our io_timeout and the cluster's W.
    pub timeouts: Timeouts,
    /// Fail at once with [`PaxosError::OwnedRetry`] instead of waiting for an owner whose
    /// delta lease stopped changing to be declared dead.
    pub no_wait: bool,
    /// Acquire only if the lease is still at this lver (the migration hand-off: the source
    /// releases and passes its lver; the destination fails if anyone took the lease since).
    pub expect_lver: Option<u64>,
    /// Read the lock value block (sector 2002 of the area) before committing, and return it
    /// in [`Acquired::lvb`]. Refused at once where that sector lies outside the area (4096-byte
    /// sectors with an area under 8 MiB).
    pub read_lvb: bool,
    /// Acquire in shared mode: win the leader briefly (SHORT_HOLD), mark our mode block
    /// SHARED with our dblock RELEASED, then free the leader. Any number of hosts may hold a
    /// lease shared; an exclusive acquire fails while a live host holds it shared.
    pub shared: bool,
}

/// An I/O the machine wants. Writes take their sector from [`PaxosAcquire::write_data`];
/// `WriteThenRead` must be issued as a linked chain (the read starts after the write).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PaxosIo {
    /// Read `len` bytes at `offset`.
    Read {
        /// Device offset.
        offset: u64,
        /// Length.
        len: usize,
    },
    /// Write one sector at `offset`.
    Write {
        /// Device offset.
        offset: u64,
    },
    /// Write one sector at `write_offset` and read `read_len` bytes at `read_offset`, in no
    /// particular order (both are issued at once; the outcome comes when both ended).
    WriteAndRead {
        /// Device offset of the write.
        write_offset: u64,
        /// Device offset of the read.
        read_offset: u64,
        /// Length of the read.
        read_len: usize,
    },
    /// Write one sector at `write_offset`, then read `read_len` bytes at `read_offset`.
    WriteThenRead {
        /// Device offset of the write.
        write_offset: u64,
        /// Device offset of the read.
        read_offset: u64,
        /// Length of the read.
        read_len: usize,
    },
}

/// Who is at fault when a lease operation fails (as rustls groups its errors): what the caller
/// does next depends on it — wait or give up the lease to its holder, look at the storage, look
/// at what is on disk, fix the set-up, fix the request, or report a bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Another host holds the lease or contends for it.
    Contention,
    /// Storage failed or timed out.
    Storage,
    /// The area holds foreign or damaged data.
    Damaged,
    /// The lease or lockspace is set up so that this cannot work (num_hosts, room for an LVB,
    /// its disks).
    Configuration,
    /// The request cannot be honoured as asked (too large, a mode it is already in, a
    /// lockspace not joined).
    Misuse,
    /// A bug in tenure: one of its own invariants did not hold.
    Internal,
}

/// Why an acquire or release failed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, thiserror::Error)]
pub enum PaxosError {
    /// The owner's delta lease is alive.
    #[error("lease is held by host id {host_id} generation {generation}, which is alive")]
    OwnerAlive {
        /// Owner host id.
        host_id: u64,
        /// Owner generation.
        generation: u64,
    },
    /// The owner stopped renewing but is not yet dead, and no_wait was asked.
    #[error(
        "lease is held by host id {host_id} generation {generation}; not dead yet (retry later)"
    )]
    OwnedRetry {
        /// Owner host id.
        host_id: u64,
        /// Owner generation.
        generation: u64,
    },
    /// A ballot chose another host's value.
    #[error("lease was acquired by host id {host_id} in the same ballot")]
    AcquiredByOther {
        /// The winner.
        host_id: u64,
    },
    /// The area holds something that is not this resource, or a damaged record.
    #[error("resource area: {0}")]
    Corrupt(String),
    /// An I/O failed or timed out.
    #[error("{what}: {outcome:?}")]
    Io {
        /// Which step.
        what: &'static str,
        /// How it ended.
        outcome: IoOutcome,
    },
    /// Our host id is above the resource's num_hosts.
    #[error("host id {host_id} is above this resource's num_hosts {num_hosts}")]
    HostIdAboveNumHosts {
        /// Our host id.
        host_id: u64,
        /// num_hosts.
        num_hosts: u64,
    },
    /// The lease version moved on since the caller last saw it.
    #[error("lease version is {found}, expected {expected}: someone acquired the lease since")]
    LverMismatch {
        /// The lver the caller expected.
        expected: u64,
        /// The lver on disk.
        found: u64,
    },
    /// Too many aborted ballots.
    #[error("gave up after {0} aborted ballots")]
    TooManyRetries(u32),
    /// An exclusive acquire found a live host holding the lease shared (sanlock: EAGAIN). The
    /// leader we had won was released again.
    #[error("lease is held shared by host id {host_id} generation {generation}, which is alive")]
    SharedBusy {
        /// A live shared holder.
        host_id: u64,
        /// Its generation.
        generation: u64,
    },
    /// Another host kept winning the leader briefly for shared acquires (SHORT_HOLD).
    #[error(
        "host id {host_id} holds the leader for a shared acquire; gave up after {retries} retries"
    )]
    ShortHoldRetry {
        /// The host in the leader.
        host_id: u64,
        /// Retries made.
        retries: u32,
    },
    /// This resource's geometry has no room for a lock value block.
    #[error("{0}")]
    LvbUnavailable(String),
    /// More LVB bytes than one sector.
    #[error("lock value block of {len} bytes does not fit in one {max}-byte sector")]
    LvbTooLarge {
        /// Bytes given.
        len: usize,
        /// Sector size.
        max: usize,
    },
    /// An I/O failed after phase 2 began with our value, and retracting failed too: the
    /// lease may be held by this host on disk (a later acquire by this host, or its release,
    /// or the end of its lockspace membership frees it).
    #[error("{what}: {outcome:?}; retracting failed as well: the lease may still be held by this host on disk")]
    IoMaybeHeld {
        /// Which step failed first.
        what: &'static str,
        /// How it ended.
        outcome: IoOutcome,
    },
    /// The lease's disk list cannot be used (count, offsets).
    #[error("lease disks: {0}")]
    Disks(String),
    /// A driver found its machine neither done nor asking for I/O nor waiting for a timer:
    /// a bug in tenure, never the disk's fault.
    #[error("internal error: the {0} machine stalled")]
    Stalled(&'static str),
}

impl PaxosError {
    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        use PaxosError::*;
        match self {
            OwnerAlive { .. }
            | OwnedRetry { .. }
            | AcquiredByOther { .. }
            | LverMismatch { .. }
            | TooManyRetries(_)
            | SharedBusy { .. }
            | ShortHoldRetry { .. } => Fault::Contention,
            Io { .. } | IoMaybeHeld { .. } => Fault::Storage,
            Corrupt(_) => Fault::Damaged,
            HostIdAboveNumHosts { .. } | LvbUnavailable(_) | Disks(_) => Fault::Configuration,
            LvbTooLarge { .. } => Fault::Misuse,
            Stalled(_) => Fault::Internal,
        }
    }
}

/// What a host knows of a lease right after its own release freed the leader: the leader it
/// wrote and its own RELEASED dblock. Its next acquire of the lease may start phase 1 from this
/// instead of reading the area first ([`PaxosAcquire::new_cached`]): phase 1 reads the leader
/// and every dblock anyway, and aborts if the leader moved on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct BallotCache {
    /// The free leader we wrote.
    pub leader: LeaderRecord,
    /// Our dblock as we last wrote it.
    pub ours: Dblock,
}

/// Result of an acquire.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Acquired {
    /// The lease version we hold.
    pub lver: u64,
    /// The leader we committed.
    pub leader: LeaderRecord,
    /// Our dblock as last written (release marks it RELEASED).
    pub dblock: Dblock,
    /// Ballots run (1 when uncontended).
    pub ballots: u32,
    /// The lock value block as read during the acquire (one sector), when asked for.
    pub lvb: Option<Vec<u8>>,
    /// Held shared (our mode block says SHARED; the leader was freed again).
    pub shared: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Step {
    ReadArea,
    AwaitOwner,
    Backoff,
    Phase1,
    Phase2,
    ReadLvb,
    Commit,
    /// Exclusive: asking about the liveness of shared holders seen in phase 2.
    CheckShared,
    /// Driving an inner release: freeing the leader after a shared acquire, or unwinding an
    /// exclusive acquire that met a live shared holder.
    Inner,
    /// A conversion to exclusive succeeded: clearing our SHARED mode block.
    ClearMode,
    Done,
}

/// Retries of an acquire that finds another host's SHORT_HOLD leader (sanlock: 8).
pub const SHORT_HOLD_RETRIES_MAX: u32 = 8;

/// Why an inner release runs, and what to report when it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum InnerGoal {
    /// Shared acquire: our mode block is SHARED, the leader is being freed.
    Shared,
    /// Exclusive acquire met this live shared holder: unwinding.
    Busy(u64, u64),
    /// A retract won the lease: giving it back.
    Retract,
}

/// Attempts to retract after an I/O failure past phase 2 before reporting that the lease may
/// still be ours on disk.
pub const RETRACTS_MAX: u32 = 3;

/// Ballots before giving up.
pub const BALLOTS_MAX: u32 = 64;

/// One exclusive acquire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaxosAcquire {
    cfg: PaxosConfig,
    step: Step,
    pending: Option<PaxosIo>,
    io_started: Time,
    /// Longest I/O seen, for scaling backoff.
    io_time_max: Duration,
    timer: Option<Time>,
    owner_query: Option<(u64, u64)>,
    result: Option<Result<Acquired, PaxosError>>,
    sector: Vec<u8>,
    leader: Option<LeaderRecord>,
    num_hosts: u64,
    lver: u64,
    mbal: u64,
    ours: Dblock,
    ballots: u32,
    /// Deterministic jitter source (host id, ballot) for backoff.
    jitter: u64,
    /// An owner found free or dead: (host id, generation, lver) of the leader naming it.
    owner_cleared: Option<(u64, u64, u64)>,
    /// Phase 2 chose another host's value: we commit it for them and report.
    other_won: Option<u64>,
    /// The lock value block read before the commit.
    lvb: Option<Vec<u8>>,
    /// What we won (kept while shared holders are checked or an inner release runs).
    won: Option<Acquired>,
    /// Other hosts' SHARED mode blocks seen in the phase 2 read: (host id, generation).
    shared_holders: Vec<(u64, u64)>,
    /// The inner release and why it runs.
    inner: Option<(Box<PaxosRelease>, InnerGoal)>,
    /// Retries after finding another host's SHORT_HOLD leader.
    short_hold_retries: u32,
    /// Converting a shared hold to exclusive: our SHARED mode block, kept in every dblock
    /// write (and in the unwind's RELEASED one) so the shared hold lasts until we are
    /// exclusive; cleared by one last write after success.
    keep_mode: Option<ModeBlock>,
    /// Our dblock as last written (flags included), for a conversion that fails: its shared
    /// hold must release exactly this, never an older dblock (that would erase a ballot of
    /// ours another host may rely on — found by tests/paxos_model.rs).
    last_written: Option<Dblock>,
    /// Retracting after this I/O failure past phase 2 (spec/PROTOCOL.md "Paxos lease" step
    /// 7): our value may have been chosen without us knowing, so the lease may be ours on
    /// disk. The machine runs the acquire again (exclusive, no waiting) to learn the outcome:
    /// if it wins, it releases at once; if another host holds the lease, it was not ours.
    /// Either way the failure is reported; only when that fails too is the lease reported as
    /// possibly held ([`PaxosError::IoMaybeHeld`]).
    retracting: Option<(&'static str, IoOutcome)>,
    retracts: u32,
    /// The time of the last input.
    now: Time,
}

impl PaxosAcquire {
    /// Starts an acquire at `now`: the first I/O reads the resource area.
    pub fn new(cfg: PaxosConfig, now: Time) -> Self {
        let ss = cfg.geometry.sector_size_bytes() as usize;
        let jitter = cfg.host_id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut me = PaxosAcquire {
            cfg,
            step: Step::ReadArea,
            pending: None,
            io_started: now,
            io_time_max: Duration::ZERO,
            timer: None,
            owner_query: None,
            result: None,
            sector: vec![0; ss],
            leader: None,
            num_hosts: 0,
            lver: 0,
            mbal: 0,
            ours: Dblock::default(),
            ballots: 0,
            jitter,
            owner_cleared: None,
            other_won: None,
            lvb: None,
            won: None,
            shared_holders: Vec::new(),
            inner: None,
            short_hold_retries: 0,
            keep_mode: None,
            last_written: None,
            retracting: None,
            retracts: 0,
            now,
        };
        // The first read covers the leader, the request record and the dblocks up to ours
        // (our bal/inp must survive into the ballot). A free leader needs nothing more: the
        // ballot's own reads see every dblock, and phase 1 aborts on whatever the skipped
        // ones would have told (higher mbal or lver, an instance already released).
        // A leader naming another owner costs a full read (its dblock may say RELEASED).
        me.read_prefix(now);
        if me.cfg.read_lvb {
            if let Err(e) = me.cfg.geometry.lvb_offset() {
                me.finish(Err(PaxosError::LvbUnavailable(e.to_string())));
            }
        }
        me
    }

    /// Starts an acquire at `now` from what our own last release of this lease left
    /// (`cache`): phase 1 at once, without the first read. Phase 1's read covers the leader and
    /// every dblock, and a leader that moved on (another host acquired since) aborts the ballot
    /// into the usual path: a full read and the owner check. Falls back to [`PaxosAcquire::new`]
    /// for a conditional acquire (its lver is checked before any write) and for a cache of
    /// another resource or geometry.
    pub fn new_cached(cfg: PaxosConfig, cache: &BallotCache, now: Time) -> Self {
        let mut me = Self::new(cfg, now);
        let l = &cache.leader;
        let usable = me.step == Step::ReadArea
            && me.cfg.expect_lver.is_none()
            && l.timestamp == 0
            && l.resource_name == me.cfg.resource_name
            && l.space_name == me.cfg.space_name
            && l.sector_size == me.cfg.geometry.sector_size_bytes()
            && me.cfg.host_id <= l.num_hosts
            && l.num_hosts <= me.cfg.geometry.hosts_max()
            && cache.ours.lver == l.lver
            && cache.ours.flags & DBLOCK_FLAG_RELEASED != 0;
        if !usable {
            return me;
        }
        me.pending = None;
        me.leader = Some(*l);
        me.num_hosts = l.num_hosts;
        me.start_ballot(now, &[(me.cfg.host_id, cache.ours)]);
        me
    }

    /// Converts a lease we hold shared (`held`, acquired in `cfg.generation`) to exclusive:
    /// an exclusive acquire whose dblock writes keep our SHARED mode block, so we stay a
    /// shared holder throughout. Success: we hold it exclusively and our mode block is
    /// cleared. [`PaxosError::SharedBusy`] (another live shared holder) or any other failure:
    /// we still hold it shared (our mode block still says SHARED).
    pub fn convert_to_exclusive(cfg: PaxosConfig, held: &Acquired, now: Time) -> Self {
        debug_assert!(held.shared && !cfg.shared);
        let generation = cfg.generation;
        let mut me = Self::new(cfg, now);
        me.keep_mode = Some(shared_mode(generation));
        me
    }

    /// The shared hold a failed [`PaxosAcquire::convert_to_exclusive`] leaves: `held` with
    /// our dblock as the conversion last wrote it (a ballot's, or RELEASED after meeting a
    /// live shared holder). Its release writes that dblock back with the mode block zeroed.
    pub fn shared_hold_after_failure(&self, held: &Acquired) -> Acquired {
        Acquired {
            dblock: self.last_written.unwrap_or(held.dblock),
            ..held.clone()
        }
    }

    fn ss(&self) -> usize {
        self.cfg.geometry.sector_size_bytes() as usize
    }

    /// Leader, request and dblocks 1..num_hosts (all hosts until num_hosts is known).
    fn area_len(&self, num_hosts: Option<u64>) -> usize {
        let n = num_hosts.unwrap_or(self.cfg.geometry.hosts_max());
        usize::try_from(n + 2).unwrap_or(usize::MAX) * self.ss()
    }

    fn read_prefix(&mut self, now: Time) {
        let n = self.cfg.host_id.min(self.cfg.geometry.hosts_max());
        self.step = Step::ReadArea;
        self.pending = Some(PaxosIo::Read {
            offset: self.cfg.area_offset,
            len: self.area_len(Some(n)),
        });
        self.io_started = now;
    }

    fn read_area(&mut self, now: Time, num_hosts: Option<u64>) {
        self.step = Step::ReadArea;
        self.pending = Some(PaxosIo::Read {
            offset: self.cfg.area_offset,
            len: self.area_len(num_hosts),
        });
        self.io_started = now;
    }

    fn dblock_offset(&self) -> u64 {
        self.cfg.area_offset + self.cfg.geometry.dblock_offset(self.cfg.host_id)
    }

    /// The next I/O (taken: each is returned once).
    pub fn poll_io(&mut self) -> Option<PaxosIo> {
        match &mut self.inner {
            Some((r, _)) => r.poll_io(),
            None => self.pending.take(),
        }
    }

    /// Deadline of the I/O just taken.
    pub fn io_deadline(&self) -> Time {
        match &self.inner {
            Some((r, _)) => r.io_deadline(),
            None => self.io_started.saturating_add(self.cfg.timeouts.io()),
        }
    }

    /// The sector to write.
    pub fn write_data(&self) -> &[u8] {
        match &self.inner {
            Some((r, _)) => r.write_data(),
            None => &self.sector,
        }
    }

    /// A host whose delta-lease status the machine needs: (host id, generation named by the
    /// leader). Answer with [`PaxosAcquire::handle_owner_status`].
    pub fn poll_owner_query(&mut self) -> Option<(u64, u64)> {
        self.owner_query.take()
    }

    /// When [`PaxosAcquire::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.timer
    }

    /// Ballots started so far (1 when uncontended).
    pub fn ballots(&self) -> u32 {
        self.ballots
    }

    /// Retract attempts so far (after an I/O failure past phase 2).
    pub fn retracts(&self) -> u32 {
        self.retracts
    }

    /// Retries so far after finding another host's SHORT_HOLD leader.
    pub fn short_hold_retries(&self) -> u32 {
        self.short_hold_retries
    }

    /// The outcome, once.
    pub fn poll_result(&mut self) -> Option<Result<Acquired, PaxosError>> {
        self.result.take()
    }

    /// Ends the acquire with `r` — or, while retracting, turns `r` into the retract's end:
    /// a lease won is given back first, and the outcome reported is the original failure
    /// (or [`PaxosError::IoMaybeHeld`] when whether the lease is ours stays unknown).
    fn finish(&mut self, r: Result<Acquired, PaxosError>) {
        let Some((what, outcome)) = self.retracting else {
            return self.finish_raw(r);
        };
        match r {
            Ok(won) => {
                // Ours after all: give it back (keeping a converting host's SHARED mode block,
                // as the unwinding after a live shared holder does).
                self.last_written = Some(Dblock {
                    flags: won.dblock.flags | DBLOCK_FLAG_RELEASED,
                    ..won.dblock
                });
                let r = PaxosRelease::leader_release(
                    self.cfg.clone(),
                    won,
                    self.keep_mode.unwrap_or_default(),
                    self.now,
                );
                self.step = Step::Inner;
                self.inner = Some((Box::new(r), InnerGoal::Retract));
            }
            // Another host holds or owns the lease, or we won and gave it back to a live
            // shared holder: it is not ours.
            Err(
                PaxosError::OwnerAlive { .. }
                | PaxosError::OwnedRetry { .. }
                | PaxosError::AcquiredByOther { .. }
                | PaxosError::SharedBusy { .. }
                | PaxosError::ShortHoldRetry { .. },
            ) => self.finish_raw(Err(PaxosError::Io { what, outcome })),
            Err(_) => self.finish_raw(Err(PaxosError::IoMaybeHeld { what, outcome })),
        }
    }

    fn finish_raw(&mut self, r: Result<Acquired, PaxosError>) {
        self.step = Step::Done;
        self.timer = None;
        self.pending = None;
        self.result = Some(r);
    }

    fn note_io_time(&mut self, now: Time) {
        self.io_time_max = self.io_time_max.max(now.saturating_since(self.io_started));
    }

    /// The outcome of the I/O taken last. For `WriteThenRead`, `outcome` is the first failure
    /// of the pair (or Done) and `data` the read's bytes.
    pub fn handle_io(&mut self, now: Time, outcome: IoOutcome, data: &[u8]) {
        self.now = now;
        self.note_io_time(now);
        if let Some((r, goal)) = &mut self.inner {
            r.handle_io(now, outcome, data);
            let goal = *goal;
            if let Some(res) = r.poll_result() {
                self.inner = None;
                if goal == InnerGoal::Retract {
                    let (what, outcome) = self.retracting.expect("retracting");
                    return self.finish_raw(Err(match res {
                        Ok(()) => PaxosError::Io { what, outcome },
                        Err(_) => PaxosError::IoMaybeHeld { what, outcome },
                    }));
                }
                let r = match (res, goal) {
                    (_, InnerGoal::Retract) => unreachable!("handled above"),
                    (Err(e), _) => Err(e),
                    (Ok(()), InnerGoal::Busy(host_id, generation)) => Err(PaxosError::SharedBusy {
                        host_id,
                        generation,
                    }),
                    (Ok(()), InnerGoal::Shared) => {
                        // Set when the inner release started.
                        let won = self.won.take().expect("won lease");
                        Ok(Acquired {
                            dblock: Dblock {
                                flags: won.dblock.flags | DBLOCK_FLAG_RELEASED,
                                ..won.dblock
                            },
                            shared: true,
                            ..won
                        })
                    }
                };
                self.finish(r);
            }
            return;
        }
        if outcome != IoOutcome::Done && self.step == Step::ClearMode {
            // A conversion won the leader; only clearing our SHARED mode block failed. We hold
            // the lease exclusively (the leader says so); the stale SHARED block only makes
            // exclusive acquirers more cautious, and our release writes it zero.
            let won = self.won.take().expect("won lease");
            return self.finish_raw(Ok(won));
        }
        if outcome != IoOutcome::Done {
            let what = match self.step {
                Step::ReadArea => "read resource area",
                Step::Phase1 => "phase 1",
                Step::Phase2 => "phase 2",
                Step::ReadLvb => "read lock value block",
                Step::Commit => "commit",
                _ => "acquire",
            };
            // Failing before phase 2 is harmless; after it began with our value, that value
            // may be chosen without us knowing: retract. While retracting, any failure leaves
            // that question open: try again (bounded).
            let ours_in_play = self.ours.inp == self.cfg.host_id
                && self.ours.inp2 == self.cfg.generation
                && self.other_won.is_none();
            let past_phase2 = matches!(self.step, Step::Phase2 | Step::ReadLvb | Step::Commit);
            if !(past_phase2 && ours_in_play) && self.retracting.is_none() {
                return self.finish_raw(Err(PaxosError::Io { what, outcome }));
            }
            return self.retract(now, what, outcome);
        }
        match self.step {
            Step::ReadArea => self.decide(now, data),
            Step::Phase1 => self.after_phase1(now, data),
            Step::Phase2 => self.after_phase2(now, data),
            Step::ReadLvb => {
                let ss = self.ss();
                self.lvb = Some(data.get(..ss).unwrap_or(data).to_vec());
                self.commit(now);
            }
            Step::Commit => {
                if let Some(host_id) = self.other_won {
                    return self.finish(Err(PaxosError::AcquiredByOther { host_id }));
                }
                // Checked when committing: leader is set.
                let leader = self.leader.expect("committed leader");
                let won = Acquired {
                    lver: self.lver,
                    leader,
                    dblock: self.ours,
                    ballots: self.ballots,
                    lvb: self.lvb.take(),
                    shared: false,
                };
                if self.cfg.shared {
                    // Mode block SHARED with our dblock RELEASED, then free the leader.
                    let mode = shared_mode(self.cfg.generation);
                    let r = PaxosRelease::leader_release(self.cfg.clone(), won.clone(), mode, now);
                    self.won = Some(won);
                    self.step = Step::Inner;
                    self.inner = Some((Box::new(r), InnerGoal::Shared));
                    return;
                }
                self.won = Some(won);
                self.next_shared_holder();
            }
            Step::ClearMode => {
                let won = self.won.take().expect("won lease");
                self.finish(Ok(won));
            }
            Step::AwaitOwner | Step::Backoff | Step::CheckShared | Step::Inner | Step::Done => {}
        }
    }

    /// Starts (again) retracting after a failure past phase 2: after one io_timeout (a write
    /// that timed out may land meanwhile), the acquire runs again — exclusive, without waiting
    /// for a silent owner, without conditions — to finish whatever instance is open.
    fn retract(&mut self, now: Time, what: &'static str, outcome: IoOutcome) {
        let first = *self.retracting.get_or_insert((what, outcome));
        self.retracts += 1;
        if self.retracts > RETRACTS_MAX {
            return self.finish_raw(Err(PaxosError::IoMaybeHeld {
                what: first.0,
                outcome: first.1,
            }));
        }
        self.cfg.shared = false;
        self.cfg.no_wait = true;
        self.cfg.expect_lver = None;
        self.cfg.read_lvb = false;
        self.other_won = None;
        self.won = None;
        self.lvb = None;
        self.shared_holders.clear();
        self.owner_query = None;
        self.pending = None;
        self.step = Step::Backoff;
        self.timer = Some(now.saturating_add(self.cfg.timeouts.io()));
    }

    fn decode_leader(&self, data: &[u8]) -> Result<LeaderRecord, PaxosError> {
        LeaderRecord::decode_expect(
            data,
            LeaderKind::Paxos,
            self.cfg.geometry,
            &self.cfg.space_name,
            Some(&self.cfg.resource_name),
        )
        .map_err(|e| PaxosError::Corrupt(e.to_string()))
    }

    fn dblocks(&self, data: &[u8]) -> Result<Vec<(u64, Dblock)>, PaxosError> {
        let ss = self.ss();
        let mut out = Vec::with_capacity(usize::try_from(self.num_hosts).unwrap_or(0));
        for host in 1..=self.num_hosts {
            let bytes = host_sector(data, ss, host)
                .ok_or_else(|| PaxosError::Corrupt("short dblock read".into()))?;
            let d = Dblock::decode(bytes)
                .map_err(|e| PaxosError::Corrupt(format!("dblock of host {host}: {e}")))?;
            out.push((host, d));
        }
        Ok(out)
    }

    fn decide(&mut self, now: Time, data: &[u8]) {
        let leader = match self.decode_leader(data) {
            Ok(l) => l,
            Err(e) => return self.finish(Err(e)),
        };
        self.num_hosts = leader.num_hosts;
        if self.cfg.host_id > leader.num_hosts {
            return self.finish(Err(PaxosError::HostIdAboveNumHosts {
                host_id: self.cfg.host_id,
                num_hosts: leader.num_hosts,
            }));
        }
        let full = data.len() >= self.area_len(Some(leader.num_hosts));
        self.leader = Some(leader);
        if let Some(expected) = self.cfg.expect_lver.filter(|&l| l != leader.lver) {
            return self.finish(Err(PaxosError::LverMismatch {
                expected,
                found: leader.lver,
            }));
        }
        let free = leader.timestamp == 0;
        let ours =
            leader.owner_id == self.cfg.host_id && leader.owner_generation <= self.cfg.generation;
        let cleared =
            self.owner_cleared == Some((leader.owner_id, leader.owner_generation, leader.lver));
        if !free && !ours && !cleared && !full {
            // Another owner: its dblock (RELEASED?) and everyone's are needed.
            return self.read_area(now, Some(leader.num_hosts));
        }
        let dblocks = if full {
            self.dblocks(data)
        } else {
            // Only ours matters before the ballot (see `read_prefix`).
            let ss = self.ss();
            host_sector(data, ss, self.cfg.host_id)
                .ok_or_else(|| PaxosError::Corrupt("short dblock read".into()))
                .and_then(|b| {
                    Dblock::decode(b).map_err(|e| {
                        PaxosError::Corrupt(format!("dblock of host {}: {e}", self.cfg.host_id))
                    })
                })
                .map(|d| vec![(self.cfg.host_id, d)])
        };
        let dblocks = match dblocks {
            Ok(d) => d,
            Err(e) => return self.finish(Err(e)),
        };
        if !free && !ours && !cleared {
            // The owner released in this lver: its dblock says so.
            let owner_released = dblocks.iter().any(|(h, d)| {
                *h == leader.owner_id
                    && d.lver == leader.lver
                    && d.flags & DBLOCK_FLAG_RELEASED != 0
            });
            if !owner_released {
                self.step = Step::AwaitOwner;
                self.owner_query = Some((leader.owner_id, leader.owner_generation));
                return;
            }
        }
        self.start_ballot(now, &dblocks);
    }

    /// The owner's delta-lease status, and whether the delta lease still shows the generation
    /// the leader names.
    pub fn handle_owner_status(&mut self, now: Time, status: HostStatus, same_generation: bool) {
        self.now = now;
        if self.step == Step::CheckShared {
            let (host, generation) = self.shared_holders.remove(0);
            match (status, same_generation) {
                (HostStatus::Live | HostStatus::Unknown | HostStatus::Fail, true) => {
                    // A live (or not yet known dead) shared holder: give the leader back.
                    let won = self.won.clone().expect("won lease");
                    self.last_written = Some(Dblock {
                        flags: won.dblock.flags | DBLOCK_FLAG_RELEASED,
                        ..won.dblock
                    });
                    // A conversion keeps its shared hold: SHARED stays with the RELEASED dblock.
                    let r = PaxosRelease::leader_release(
                        self.cfg.clone(),
                        won,
                        self.keep_mode.unwrap_or_default(),
                        now,
                    );
                    self.step = Step::Inner;
                    self.inner = Some((Box::new(r), InnerGoal::Busy(host, generation)));
                }
                // Dead, free, or rejoined since: that shared lease is void. Its mode block is
                // left alone (writing another host's sector could clobber a ballot it runs
                // after rejoining); its own next dblock write clears it.
                _ => self.next_shared_holder(),
            }
            return;
        }
        if self.step != Step::AwaitOwner {
            return;
        }
        // Checked in decide: leader is set while awaiting the owner.
        let leader = self.leader.expect("leader read");
        let (host_id, generation) = (leader.owner_id, leader.owner_generation);
        match (status, same_generation) {
            (HostStatus::Free | HostStatus::Dead, _) | (_, false) => {
                // Free, dead, or rejoined in a newer generation: its old lease is void. Re-read
                // the area so the ballot starts from fresh dblocks; this owner is not asked
                // about again while the leader still names it.
                self.owner_cleared = Some((host_id, generation, leader.lver));
                self.read_area(now, Some(self.num_hosts));
            }
            (HostStatus::Live, true)
                if leader.flags & tenure_format::leader::LEADER_FLAG_SHORT_HOLD != 0 =>
            {
                // A shared acquire holds the leader for a moment: try again shortly.
                self.short_hold_retries += 1;
                if self.short_hold_retries > SHORT_HOLD_RETRIES_MAX {
                    return self.finish(Err(PaxosError::ShortHoldRetry {
                        host_id,
                        retries: SHORT_HOLD_RETRIES_MAX,
                    }));
                }
                self.backoff(now);
            }
            (HostStatus::Live, true) => self.finish(Err(PaxosError::OwnerAlive {
                host_id,
                generation,
            })),
            (HostStatus::Unknown | HostStatus::Fail, true) => {
                if self.cfg.no_wait {
                    return self.finish(Err(PaxosError::OwnedRetry {
                        host_id,
                        generation,
                    }));
                }
                // Ask again after one io_timeout.
                self.timer = Some(now.saturating_add(self.cfg.timeouts.io()));
            }
        }
    }

    fn start_ballot(&mut self, now: Time, dblocks: &[(u64, Dblock)]) {
        // Checked by callers: leader is set once the area was read.
        let leader = self.leader.expect("leader read");
        // The next instance follows the leader's lver — and any lver a host won and released:
        // a release's leader write that lands late (its host crashed or stalled with it in
        // flight) can roll the leader back. Re-running an instance that was already chosen
        // and released would let its winner "win" it again while a reader that saw the old
        // RELEASED flag moves past it: two holders (found by tests/paxos_model.rs).
        let released_max = dblocks
            .iter()
            .filter(|(_, d)| d.flags & DBLOCK_FLAG_RELEASED != 0)
            .map(|(_, d)| d.lver)
            .max()
            .unwrap_or(0);
        self.lver = leader.lver.max(released_max) + 1;
        let max_hosts = leader.max_hosts.max(1);
        let max_mbal = dblocks
            .iter()
            .filter(|(_, d)| d.lver >= self.lver)
            .map(|(_, d)| d.mbal)
            .max()
            .unwrap_or(0);
        let floor = max_mbal.max(self.mbal);
        // Disjoint ballots: ours are ≡ host_id (mod max_hosts) and above every mbal seen.
        self.mbal = if floor == 0 {
            self.cfg.host_id
        } else {
            floor - (floor % max_hosts) + max_hosts + self.cfg.host_id
        };
        let mine = dblocks
            .iter()
            .find(|(h, _)| *h == self.cfg.host_id)
            .map(|(_, d)| *d)
            .unwrap_or_default();
        // Keep bal/inp of this lver's instance; a new lver starts empty.
        let (bal, inp, inp2, inp3) = if mine.lver == self.lver {
            (mine.bal, mine.inp, mine.inp2, mine.inp3)
        } else {
            (0, 0, 0, 0)
        };
        self.ours = Dblock {
            mbal: self.mbal,
            bal,
            inp,
            inp2,
            inp3,
            lver: self.lver,
            checksum: 0,
            flags: 0,
        };
        self.ballots += 1;
        self.step = Step::Phase1;
        self.write_dblock_then_read(now);
    }

    fn write_dblock_then_read(&mut self, now: Time) {
        self.sector.fill(0);
        self.ours.encode_into(&mut self.sector);
        self.last_written = Some(self.ours);
        if let Some(mode) = self.keep_mode {
            mode.encode_into(&mut self.sector);
        }
        self.pending = Some(PaxosIo::WriteThenRead {
            write_offset: self.dblock_offset(),
            read_offset: self.cfg.area_offset,
            read_len: self.area_len(Some(self.num_hosts)),
        });
        self.io_started = now;
    }

    /// Disk Paxos abort rule: someone started a higher ballot, or a later lver exists.
    fn must_abort(&self, dblocks: &[(u64, Dblock)]) -> bool {
        dblocks
            .iter()
            .filter(|(h, _)| *h != self.cfg.host_id)
            .any(|(_, d)| d.lver > self.lver || (d.lver == self.lver && d.mbal > self.mbal))
    }

    fn abort(&mut self, now: Time) {
        if self.ballots >= BALLOTS_MAX {
            return self.finish(Err(PaxosError::TooManyRetries(self.ballots)));
        }
        self.backoff(now);
    }

    fn backoff(&mut self, now: Time) {
        // Back off for 1..=4 times the slowest I/O seen (at least 100 µs), varied by host and
        // ballot so contenders spread out.
        self.jitter = self.jitter.rotate_left(17)
            ^ u64::from(self.ballots + self.short_hold_retries).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let unit = self.io_time_max.max(Duration::from_micros(100));
        let factor = 1 + (self.jitter % 4) as u32;
        self.step = Step::Backoff;
        self.timer = Some(now.saturating_add(unit * factor));
    }

    fn after_phase1(&mut self, now: Time, data: &[u8]) {
        let dblocks = match self.dblocks(data) {
            Ok(d) => d,
            Err(e) => return self.finish(Err(e)),
        };
        if let Ok(leader) = self.decode_leader(data) {
            if leader.lver >= self.lver {
                // Someone committed this lver meanwhile: start over from the new leader.
                self.leader = Some(leader);
                return self.abort(now);
            }
        }
        if self.must_abort(&dblocks) {
            return self.abort(now);
        }
        // This instance was already chosen and released by someone (the leader we started
        // from was rolled back by a late release write, and our first read skipped that
        // host's dblock). Going on would re-commit its chosen value — naming a host that
        // released — and leave the lease stuck with it; start over from a full read, which
        // moves past the instance. (Safety does not rest on this: the model check holds
        // without it; our own RELEASED dblock, which the first read does cover, is what
        // keeps a winner from re-running its own instance.)
        let decided = dblocks.iter().any(|(h, d)| {
            *h != self.cfg.host_id && d.lver == self.lver && d.flags & DBLOCK_FLAG_RELEASED != 0
        });
        if decided {
            return self.abort(now);
        }
        // Phase 2 value: the inp of the highest bal among this lver's dblocks, else ours.
        let best = dblocks
            .iter()
            .filter(|(_, d)| d.lver == self.lver && d.bal > 0 && d.inp != 0)
            .max_by_key(|(_, d)| d.bal)
            .map(|(_, d)| *d);
        let (inp, inp2, inp3) = match best {
            Some(d) => (d.inp, d.inp2, d.inp3),
            None => (self.cfg.host_id, self.cfg.generation, now.as_secs().max(1)),
        };
        self.ours = Dblock {
            bal: self.mbal,
            inp,
            inp2,
            inp3,
            ..self.ours
        };
        self.step = Step::Phase2;
        self.write_dblock_then_read(now);
    }

    fn after_phase2(&mut self, now: Time, data: &[u8]) {
        let dblocks = match self.dblocks(data) {
            Ok(d) => d,
            Err(e) => return self.finish(Err(e)),
        };
        if self.must_abort(&dblocks) {
            return self.abort(now);
        }
        // Chosen: commit the leader.
        let prev = self.leader.expect("leader read");
        let leader = LeaderRecord {
            owner_id: self.ours.inp,
            owner_generation: self.ours.inp2,
            timestamp: self.ours.inp3,
            lver: self.lver,
            write_id: self.cfg.host_id,
            write_generation: self.cfg.generation,
            write_timestamp: now.as_secs().max(1),
            flags: if self.cfg.shared {
                prev.flags | tenure_format::leader::LEADER_FLAG_SHORT_HOLD
            } else {
                prev.flags & !tenure_format::leader::LEADER_FLAG_SHORT_HOLD
            },
            ..prev
        };
        if !self.cfg.shared {
            // Shared holders as of phase 2: a new one needs the leader we now hold, and every
            // one that got it earlier wrote its mode block before freeing it, so before this
            // read began.
            let ss = self.ss();
            self.shared_holders.clear();
            for host in (1..=self.num_hosts).filter(|&h| h != self.cfg.host_id) {
                if let Some(Ok(mode)) =
                    host_sector(data, ss, host).map(ModeBlock::decode_from_sector)
                {
                    if mode.is_shared() {
                        self.shared_holders.push((host, mode.generation));
                    }
                }
            }
        }
        if leader.owner_id != self.cfg.host_id || leader.owner_generation != self.cfg.generation {
            // Another host's value was chosen — or ours from an earlier generation (a ballot
            // this host ran before it was reset, found in a dblock): commit it for them, then
            // report. An old incarnation's win is not ours: the other hosts see that
            // generation as ended and the lease as free (found by the whole-cluster
            // simulation, where the rebooted host took it for its own and another host then
            // took it too).
            self.other_won = Some(leader.owner_id);
        }
        self.leader = Some(leader);
        if self.cfg.read_lvb && self.other_won.is_none() {
            // Only a holder writes the LVB, at its release and before its RELEASED dblock,
            // which we saw (or it is dead): reading it now gives what it left.
            let lvb_offset = self.cfg.geometry.lvb_offset().unwrap_or(0);
            self.step = Step::ReadLvb;
            self.pending = Some(PaxosIo::Read {
                offset: self.cfg.area_offset + lvb_offset,
                len: self.ss(),
            });
            self.io_started = now;
            return;
        }
        self.commit(now);
    }

    fn commit(&mut self, now: Time) {
        // Checked by callers: the leader to commit is set.
        let leader = self.leader.expect("leader to commit");
        self.sector.fill(0);
        leader.encode_into(&mut self.sector);
        self.step = Step::Commit;
        self.pending = Some(PaxosIo::Write {
            offset: self.cfg.area_offset,
        });
        self.io_started = now;
    }

    /// Exclusive acquire after the commit: ask about the next shared holder seen in phase 2,
    /// or finish.
    fn next_shared_holder(&mut self) {
        match self.shared_holders.first() {
            Some(&(host, generation)) => {
                self.step = Step::CheckShared;
                self.owner_query = Some((host, generation));
            }
            // (A retract that won keeps the mode block: it gives the lease back as shared.)
            None if self.keep_mode.is_some() && self.retracting.is_none() => {
                // Converted: exclusive now; our mode block goes with one more write.
                self.keep_mode = None;
                self.sector.fill(0);
                self.ours.encode_into(&mut self.sector);
                self.step = Step::ClearMode;
                self.pending = Some(PaxosIo::Write {
                    offset: self.dblock_offset(),
                });
            }
            None => {
                // Set at the commit.
                let won = self.won.take().expect("won lease");
                self.finish(Ok(won));
            }
        }
    }

    /// Time passed: backoff ends, or the owner is asked about again.
    pub fn handle_timeout(&mut self, now: Time) {
        if self.timer.is_none_or(|t| t > now) {
            return;
        }
        self.now = now;
        self.timer = None;
        match self.step {
            Step::Backoff => self.read_area(now, Some(self.num_hosts)),
            Step::AwaitOwner => {
                let leader = self.leader.expect("leader read");
                self.owner_query = Some((leader.owner_id, leader.owner_generation));
            }
            _ => {}
        }
    }
}

/// Releasing an exclusive lease: mark our dblock RELEASED, re-read the leader, and free the
/// leader (timestamp 0) unless another host has written it since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaxosRelease {
    cfg: PaxosConfig,
    held: Acquired,
    pending: Option<PaxosIo>,
    io_started: Time,
    sector: Vec<u8>,
    freeing_leader: bool,
    writing_lvb: bool,
    /// Mode block written with our RELEASED dblock (zero, or SHARED for a shared acquire).
    mode: ModeBlock,
    /// Releasing a shared hold: one write of our sector with the mode block zeroed.
    only_dblock: bool,
    result: Option<Result<(), PaxosError>>,
    /// Set when we freed the leader ourselves and both writes landed.
    cache: Option<BallotCache>,
}

impl PaxosRelease {
    /// Starts releasing `held` at `now`. A shared hold is released by zeroing our mode
    /// block (our dblock already says RELEASED); an exclusive one by marking our dblock
    /// RELEASED and freeing the leader.
    pub fn new(cfg: PaxosConfig, held: Acquired, now: Time) -> Self {
        let only_dblock = held.shared;
        let mut me = Self::leader_release(cfg, held, ModeBlock::default(), now);
        me.only_dblock = only_dblock;
        me
    }

    /// Converts a lease we hold exclusively to shared: our dblock RELEASED with our mode
    /// block SHARED in one write, then the leader freed — the tail of a shared acquire, so an
    /// exclusive acquirer that finds the leader released still meets our SHARED mode block.
    /// On success the lease is held as [`PaxosRelease::as_shared`] describes. (Shared →
    /// exclusive: [`PaxosAcquire::convert_to_exclusive`].)
    pub fn to_shared(cfg: PaxosConfig, held: Acquired, now: Time) -> Self {
        let mode = shared_mode(cfg.generation);
        Self::leader_release(cfg, held, mode, now)
    }

    /// What an exclusive lease becomes once [`PaxosRelease::to_shared`] succeeded.
    pub fn as_shared(held: &Acquired) -> Acquired {
        Acquired {
            dblock: Dblock {
                flags: held.dblock.flags | DBLOCK_FLAG_RELEASED,
                ..held.dblock
            },
            shared: true,
            ..held.clone()
        }
    }

    /// Our RELEASED dblock with `mode` in one write, then the leader freed if still ours.
    fn leader_release(cfg: PaxosConfig, held: Acquired, mode: ModeBlock, now: Time) -> Self {
        let mut me = PaxosRelease {
            sector: vec![0u8; cfg.geometry.sector_size_bytes() as usize],
            cfg,
            held,
            pending: None,
            io_started: now,
            freeing_leader: false,
            writing_lvb: false,
            mode,
            only_dblock: false,
            result: None,
            cache: None,
        };
        me.write_released(now);
        me
    }

    /// Starts releasing `held` at `now`, first writing `lvb` (at most one sector, padded with
    /// zeros) as the resource's lock value block — before the RELEASED dblock, so the next
    /// holder, which waits for that flag, reads it.
    pub fn with_lvb(
        cfg: PaxosConfig,
        held: Acquired,
        lvb: &[u8],
        now: Time,
    ) -> Result<Self, PaxosError> {
        let ss = cfg.geometry.sector_size_bytes() as usize;
        let lvb_offset = cfg
            .geometry
            .lvb_offset()
            .map_err(|e| PaxosError::LvbUnavailable(e.to_string()))?;
        if lvb.len() > ss {
            return Err(PaxosError::LvbTooLarge {
                len: lvb.len(),
                max: ss,
            });
        }
        let mut me = Self::new(cfg, held, now);
        me.sector.fill(0);
        me.sector[..lvb.len()].copy_from_slice(lvb);
        me.writing_lvb = true;
        me.pending = Some(PaxosIo::Write {
            offset: me.cfg.area_offset + lvb_offset,
        });
        Ok(me)
    }

    /// Our dblock with RELEASED (other fields kept, mode block zeroed), then the leader. A
    /// shared hold writes its recorded dblock back as it is (RELEASED since its acquire —
    /// unless a failed conversion left a ballot's dblock, which must not be marked RELEASED:
    /// that instance was not won).
    fn write_released(&mut self, now: Time) {
        let ss = self.sector.len();
        self.sector.fill(0);
        let flags = if self.only_dblock {
            self.held.dblock.flags
        } else {
            self.held.dblock.flags | DBLOCK_FLAG_RELEASED
        };
        Dblock {
            flags,
            ..self.held.dblock
        }
        .encode_into(&mut self.sector);
        self.mode.encode_into(&mut self.sector);
        let write_offset = self.cfg.area_offset + self.cfg.geometry.dblock_offset(self.cfg.host_id);
        // The leader is read at the same time as our RELEASED dblock is written (spec: "write
        // our dblock ...; re-read the leader"): the re-read guards against a leader another
        // host wrote while we were not looking (a takeover after we were declared dead), and
        // any such write began before this release did — a host that would take over because
        // of our RELEASED flag needs to read it, then win two phases, before it writes the
        // leader, which is after our read either way. Saves one I/O time per release;
        // tests/paxos_model.rs and tests/paxos_sim.rs check it.
        self.pending = Some(if self.only_dblock {
            PaxosIo::Write {
                offset: write_offset,
            }
        } else {
            PaxosIo::WriteAndRead {
                write_offset,
                read_offset: self.cfg.area_offset,
                read_len: ss,
            }
        });
        self.io_started = now;
    }

    /// The next I/O (taken).
    pub fn poll_io(&mut self) -> Option<PaxosIo> {
        self.pending.take()
    }

    /// Deadline of the I/O just taken.
    pub fn io_deadline(&self) -> Time {
        self.io_started.saturating_add(self.cfg.timeouts.io())
    }

    /// The sector to write.
    pub fn write_data(&self) -> &[u8] {
        &self.sector
    }

    /// The outcome, once.
    pub fn poll_result(&mut self) -> Option<Result<(), PaxosError>> {
        self.result.take()
    }

    /// After a successful exclusive release that freed the leader itself: what the next
    /// acquire of this lease by this host may start from (see [`BallotCache`]).
    pub fn cache(&self) -> Option<BallotCache> {
        self.cache
    }

    /// The outcome of the I/O taken last.
    pub fn handle_io(&mut self, now: Time, outcome: IoOutcome, data: &[u8]) {
        if outcome != IoOutcome::Done {
            self.result = Some(Err(PaxosError::Io {
                what: "release",
                outcome,
            }));
            return;
        }
        if self.freeing_leader {
            // Both our RELEASED dblock and the free leader are on disk (the mode block zero:
            // a conversion to shared never frees with a cache, its mode block is SHARED).
            if self.mode == ModeBlock::default() {
                if let Ok(leader) = LeaderRecord::decode(&self.sector) {
                    self.cache = Some(BallotCache {
                        leader,
                        ours: Dblock {
                            flags: self.held.dblock.flags | DBLOCK_FLAG_RELEASED,
                            ..self.held.dblock
                        },
                    });
                }
            }
            self.result = Some(Ok(()));
            return;
        }
        if self.only_dblock && !self.writing_lvb {
            self.result = Some(Ok(()));
            return;
        }
        if self.writing_lvb {
            self.writing_lvb = false;
            return self.write_released(now);
        }
        let leader = match LeaderRecord::decode(data) {
            Ok(l) => l,
            Err(e) => {
                self.result = Some(Err(PaxosError::Corrupt(e.to_string())));
                return;
            }
        };
        let mine = self.held.leader;
        if leader.owner_id != mine.owner_id
            || leader.owner_generation != mine.owner_generation
            || leader.lver != mine.lver
        {
            // Another host wrote the leader since: our RELEASED dblock is all it needs.
            self.result = Some(Ok(()));
            return;
        }
        let freed = LeaderRecord {
            timestamp: 0,
            write_id: self.cfg.host_id,
            write_generation: self.cfg.generation,
            write_timestamp: now.as_secs().max(1),
            ..leader
        };
        self.sector.fill(0);
        freed.encode_into(&mut self.sector);
        self.freeing_leader = true;
        self.pending = Some(PaxosIo::Write {
            offset: self.cfg.area_offset,
        });
        self.io_started = now;
    }
}

/// A host holding a resource, as read from its area.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Holder {
    /// Host id.
    pub host_id: u64,
    /// Lockspace generation it holds the lease in.
    pub generation: u64,
    /// Leader timestamp for the exclusive owner; 0 for shared holders (none is recorded).
    pub timestamp: u64,
}

/// Host `host`'s dblock sector (area sector host + 1) within `data`, read from the start of a
/// resource area; `None` when the read was too short.
fn host_sector(data: &[u8], ss: usize, host: u64) -> Option<&[u8]> {
    let at = usize::try_from(host + 1).ok()?.checked_mul(ss)?;
    data.get(at..at.checked_add(ss)?)
}

/// Who holds a resource, read without acquiring it (sanlock's read_resource_owners).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Owners {
    /// The leader's lease version.
    pub lver: u64,
    /// The resource's num_hosts.
    pub num_hosts: u64,
    /// The exclusive owner: the host the leader names, unless the lease is free or that host
    /// marked its dblock RELEASED in this lver.
    pub exclusive: Option<Holder>,
    /// Hosts whose mode block says SHARED, in host id order.
    pub shared: Vec<Holder>,
    /// The leader names an owner that released (its dblock has RELEASED at this lver).
    pub owner_released: bool,
    /// The leader as read.
    pub leader: LeaderRecord,
}

/// Reads the owners from a resource area's bytes: leader, request record and the dblock
/// sectors of hosts 1..num_hosts (fewer bytes is a `Corrupt` "short" error).
pub fn owners_from_area(
    data: &[u8],
    geometry: Geometry,
    space: &Name,
    resource: Option<&Name>,
) -> Result<Owners, PaxosError> {
    let leader = LeaderRecord::decode_expect(data, LeaderKind::Paxos, geometry, space, resource)
        .map_err(|e| PaxosError::Corrupt(e.to_string()))?;
    let ss = geometry.sector_size_bytes() as usize;
    let mut shared = Vec::new();
    let mut owner_released = false;
    for host in 1..=leader.num_hosts {
        let sector = host_sector(data, ss, host)
            .ok_or_else(|| PaxosError::Corrupt(format!("short read: no dblock for host {host}")))?;
        let d = Dblock::decode(sector)
            .map_err(|e| PaxosError::Corrupt(format!("dblock of host {host}: {e}")))?;
        if host == leader.owner_id && d.lver == leader.lver && d.flags & DBLOCK_FLAG_RELEASED != 0 {
            owner_released = true;
        }
        let mode = tenure_format::paxos::ModeBlock::decode_from_sector(sector)
            .map_err(|e| PaxosError::Corrupt(format!("mode block of host {host}: {e}")))?;
        if mode.is_shared() {
            shared.push(Holder {
                host_id: host,
                generation: mode.generation,
                timestamp: 0,
            });
        }
    }
    let exclusive = (leader.timestamp != 0 && !owner_released).then_some(Holder {
        host_id: leader.owner_id,
        generation: leader.owner_generation,
        timestamp: leader.timestamp,
    });
    Ok(Owners {
        lver: leader.lver,
        num_hosts: leader.num_hosts,
        exclusive,
        shared,
        owner_released,
        leader,
    })
}

// Hash leaves out the write scratch sector: it is derived from the other fields while a
// write is pending and stale otherwise, and it is the largest field by far (model checking
// hashes millions of machines). Equal machines still hash equally.
impl std::hash::Hash for PaxosAcquire {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let PaxosAcquire {
            cfg,
            step,
            pending,
            io_started,
            io_time_max,
            timer,
            owner_query,
            result,
            sector: _,
            leader,
            num_hosts,
            lver,
            mbal,
            ours,
            ballots,
            jitter,
            owner_cleared,
            other_won,
            lvb,
            won,
            shared_holders,
            inner,
            short_hold_retries,
            keep_mode,
            last_written,
            retracting,
            retracts,
            // Only sets the deadline of a retract's release.
            now: _,
        } = self;
        (
            cfg,
            step,
            pending,
            io_started,
            io_time_max,
            timer,
            owner_query,
        )
            .hash(h);
        (result, leader, num_hosts, lver, mbal, ours, ballots, jitter).hash(h);
        (
            owner_cleared,
            other_won,
            lvb,
            won,
            shared_holders,
            inner,
            short_hold_retries,
            keep_mode,
            last_written,
        )
            .hash(h);
        (retracting, retracts).hash(h);
    }
}

impl std::hash::Hash for PaxosRelease {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let PaxosRelease {
            cfg,
            held,
            pending,
            io_started,
            sector: _,
            freeing_leader,
            writing_lvb,
            mode,
            only_dblock,
            result,
            cache,
        } = self;
        (cfg, held, pending, io_started, freeing_leader, writing_lvb).hash(h);
        (mode, only_dblock, result, cache).hash(h);
    }
}

/// Our mode block while holding a lease shared in `generation`.
fn shared_mode(generation: u64) -> ModeBlock {
    ModeBlock {
        flags: MODE_FLAG_SHARED,
        unused: 0,
        generation,
    }
}

/// Hands one I/O of a paxos machine to an engine: a read, a write of `data`, or a linked
/// write→read chain. Returns the (write, read) ids started.
pub fn start_io(
    backend: &mut dyn crate::io::IoBackend,
    disk: crate::io::DiskId,
    io: PaxosIo,
    data: &[u8],
    deadline: Time,
) -> Result<(Option<crate::io::IoId>, Option<crate::io::IoId>), crate::io::SubmitError> {
    let req = |offset, len| crate::io::IoRequest {
        disk,
        offset,
        len,
        deadline,
    };
    match io {
        PaxosIo::Read { offset, len } => backend
            .start_read(req(offset, len))
            .map(|r| (None, Some(r))),
        PaxosIo::Write { offset } => backend
            .start_write(req(offset, data.len()), data)
            .map(|w| (Some(w), None)),
        PaxosIo::WriteThenRead {
            write_offset,
            read_offset,
            read_len,
        } => backend
            .start_chain(
                req(write_offset, data.len()),
                data,
                req(read_offset, read_len),
            )
            .map(|(w, r)| (Some(w), Some(r))),
        PaxosIo::WriteAndRead {
            write_offset,
            read_offset,
            read_len,
        } => backend
            .start_pair(
                req(write_offset, data.len()),
                data,
                req(read_offset, read_len),
            )
            .map(|(w, r)| (Some(w), Some(r))),
    }
}

/// Blocking drivers for one acquire or release over an engine (direct use, tests and tools;
/// the daemon drives the machines from its reactor).
pub mod blocking {
    use super::*;
    use crate::clock::Clock;
    use crate::io::drive::complete_on;
    use crate::io::{DiskId, IoBackend, IoError, IoKind};

    /// One I/O of a machine, performed to completion: (combined outcome, read data).
    fn perform(
        backend: &mut dyn IoBackend,
        clock: &dyn Clock,
        disk: DiskId,
        io: PaxosIo,
        data: &[u8],
        deadline: Time,
        out: &mut Vec<u8>,
    ) -> Result<IoOutcome, IoError> {
        let started = start_io(backend, disk, io, data, deadline);
        let Ok((w, r)) = started else {
            return Ok(IoOutcome::Failed { errno: libc::EBUSY });
        };
        let n = usize::from(w.is_some()) + usize::from(r.is_some());
        let done = complete_on(backend, clock, n)?;
        let mut outcome = IoOutcome::Done;
        for c in &done {
            if c.outcome != IoOutcome::Done && outcome == IoOutcome::Done {
                outcome = c.outcome;
            }
            if c.kind == IoKind::Read {
                out.clear();
                if let Some(d) = backend.read_data(c.id) {
                    out.extend_from_slice(d);
                }
                backend.release(c.id);
            }
        }
        Ok(outcome)
    }

    /// Runs an acquire to its end. `owner_status(host_id, generation)` answers the owner's
    /// delta-lease status and whether it still has that generation.
    pub fn acquire(
        backend: &mut dyn IoBackend,
        clock: &dyn Clock,
        disk: DiskId,
        cfg: PaxosConfig,
        owner_status: &mut dyn FnMut(u64, u64) -> (HostStatus, bool),
    ) -> Result<Result<Acquired, PaxosError>, IoError> {
        let mut m = PaxosAcquire::new(cfg, clock.now());
        run_acquire(backend, clock, disk, &mut m, owner_status)
    }

    /// Runs an acquire that starts from what our last release of the lease left (see
    /// [`PaxosAcquire::new_cached`]) to its end.
    pub fn acquire_cached(
        backend: &mut dyn IoBackend,
        clock: &dyn Clock,
        disk: DiskId,
        cfg: PaxosConfig,
        cache: &BallotCache,
        owner_status: &mut dyn FnMut(u64, u64) -> (HostStatus, bool),
    ) -> Result<Result<Acquired, PaxosError>, IoError> {
        let mut m = PaxosAcquire::new_cached(cfg, cache, clock.now());
        run_acquire(backend, clock, disk, &mut m, owner_status)
    }

    /// Runs a conversion of the shared hold `held` to exclusive to its end: Ok(exclusive
    /// hold), or Err with why and the shared hold to keep (see
    /// [`PaxosAcquire::shared_hold_after_failure`]).
    pub fn convert_to_exclusive(
        backend: &mut dyn IoBackend,
        clock: &dyn Clock,
        disk: DiskId,
        cfg: PaxosConfig,
        held: &Acquired,
        owner_status: &mut dyn FnMut(u64, u64) -> (HostStatus, bool),
    ) -> Result<Result<Acquired, (PaxosError, Acquired)>, IoError> {
        let mut m = PaxosAcquire::convert_to_exclusive(cfg, held, clock.now());
        let r = run_acquire(backend, clock, disk, &mut m, owner_status)?;
        Ok(r.map_err(|e| (e, m.shared_hold_after_failure(held))))
    }

    fn run_acquire(
        backend: &mut dyn IoBackend,
        clock: &dyn Clock,
        disk: DiskId,
        m: &mut PaxosAcquire,
        owner_status: &mut dyn FnMut(u64, u64) -> (HostStatus, bool),
    ) -> Result<Result<Acquired, PaxosError>, IoError> {
        let mut buf = Vec::new();
        loop {
            if let Some(r) = m.poll_result() {
                return Ok(r);
            }
            if let Some(io) = m.poll_io() {
                let data = m.write_data().to_vec();
                let outcome = perform(backend, clock, disk, io, &data, m.io_deadline(), &mut buf)?;
                m.handle_io(clock.now(), outcome, &buf);
                continue;
            }
            if let Some((host, generation)) = m.poll_owner_query() {
                let (status, same) = owner_status(host, generation);
                m.handle_owner_status(clock.now(), status, same);
                continue;
            }
            if let Some(t) = m.poll_timeout() {
                let now = clock.now();
                if t > now {
                    backend.wait(now, t)?;
                }
                m.handle_timeout(clock.now());
            }
        }
    }

    /// Runs a release to its end.
    pub fn release(
        backend: &mut dyn IoBackend,
        clock: &dyn Clock,
        disk: DiskId,
        cfg: PaxosConfig,
        held: Acquired,
    ) -> Result<Result<(), PaxosError>, IoError> {
        release_keeping_cache(backend, clock, disk, cfg, held).map(|r| r.map(|_| ()))
    }

    /// Runs a release to its end, returning what a next acquire of the lease may start from
    /// (None when another host had written the leader, or for a shared hold).
    pub fn release_keeping_cache(
        backend: &mut dyn IoBackend,
        clock: &dyn Clock,
        disk: DiskId,
        cfg: PaxosConfig,
        held: Acquired,
    ) -> Result<Result<Option<BallotCache>, PaxosError>, IoError> {
        let mut m = PaxosRelease::new(cfg, held, clock.now());
        let r = drive_release(backend, clock, disk, &mut m)?;
        Ok(r.map(|()| m.cache()))
    }

    /// Runs a release that first writes `lvb` as the lock value block.
    pub fn release_with_lvb(
        backend: &mut dyn IoBackend,
        clock: &dyn Clock,
        disk: DiskId,
        cfg: PaxosConfig,
        held: Acquired,
        lvb: &[u8],
    ) -> Result<Result<(), PaxosError>, IoError> {
        match PaxosRelease::with_lvb(cfg, held, lvb, clock.now()) {
            Ok(mut m) => drive_release(backend, clock, disk, &mut m),
            Err(e) => Ok(Err(e)),
        }
    }

    fn drive_release(
        backend: &mut dyn IoBackend,
        clock: &dyn Clock,
        disk: DiskId,
        m: &mut PaxosRelease,
    ) -> Result<Result<(), PaxosError>, IoError> {
        let mut buf = Vec::new();
        loop {
            if let Some(r) = m.poll_result() {
                return Ok(r);
            }
            let Some(io) = m.poll_io() else {
                return Ok(Err(PaxosError::Stalled("release")));
            };
            let data = m.write_data().to_vec();
            let outcome = perform(backend, clock, disk, io, &data, m.io_deadline(), &mut buf)?;
            m.handle_io(clock.now(), outcome, &buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenure_format::area::encode_resource_area;

    fn cfg() -> PaxosConfig {
        PaxosConfig {
            space_name: Name::new("LS").expect("name"),
            resource_name: Name::new("r").expect("name"),
            geometry: Geometry::LEGACY_512,
            area_offset: 0,
            host_id: 1,
            generation: 1,
            timeouts: Timeouts::new(1, 10),
            no_wait: true,
            expect_lver: None,
            read_lvb: false,
            shared: false,
        }
    }

    #[test]
    fn the_first_read_stops_at_our_dblock_and_another_owner_costs_a_full_read() {
        let mut area = vec![0u8; 1 << 20];
        encode_resource_area(
            &mut area,
            Geometry::LEGACY_512,
            Name::new("LS").expect("n"),
            Name::new("r").expect("n"),
            8,
        );
        let now = Time::from_nanos(1_000_000_000);
        // Host 1: leader, request and dblock 1.
        let mut m = PaxosAcquire::new(cfg(), now);
        assert_eq!(
            m.poll_io(),
            Some(PaxosIo::Read {
                offset: 0,
                len: 3 * 512
            })
        );
        // A free leader: the ballot starts at once and reads all 8 dblocks.
        m.handle_io(now, IoOutcome::Done, &area[..3 * 512]);
        assert!(
            matches!(m.poll_io(), Some(PaxosIo::WriteThenRead { read_len, .. }) if read_len == 10 * 512)
        );
        // A leader naming host 2: its dblock (RELEASED?) is needed, so everything is read.
        let mut held = LeaderRecord::decode(&area[..512]).expect("leader");
        held.owner_id = 2;
        held.owner_generation = 1;
        held.timestamp = 77;
        held.lver = 1;
        held.encode_into(&mut area[..512]);
        let mut m = PaxosAcquire::new(cfg(), now);
        assert!(m.poll_io().is_some());
        m.handle_io(now, IoOutcome::Done, &area[..3 * 512]);
        assert_eq!(
            m.poll_io(),
            Some(PaxosIo::Read {
                offset: 0,
                len: 10 * 512
            })
        );
    }

    #[test]
    fn conditional_acquire_fails_when_the_lver_moved() {
        let mut area = vec![0u8; 1 << 20];
        encode_resource_area(
            &mut area,
            Geometry::LEGACY_512,
            Name::new("LS").expect("n"),
            Name::new("r").expect("n"),
            8,
        );
        // The lease was acquired and released twice since format: lver 2 on disk.
        let mut leader = LeaderRecord::decode(&area[..512]).expect("leader");
        leader.lver = 2;
        leader.encode_into(&mut area[..512]);
        let now = Time::from_nanos(1_000_000_000);
        for (expect, ok) in [(Some(2), true), (Some(1), false), (None, true)] {
            let mut m = PaxosAcquire::new(
                PaxosConfig {
                    expect_lver: expect,
                    read_lvb: false,
                    shared: false,
                    ..cfg()
                },
                now,
            );
            m.poll_io();
            m.handle_io(now, IoOutcome::Done, &area[..10 * 512]);
            if ok {
                assert!(
                    matches!(m.poll_io(), Some(PaxosIo::WriteThenRead { .. })),
                    "{expect:?}: ballot starts"
                );
            } else {
                assert_eq!(
                    m.poll_result(),
                    Some(Err(PaxosError::LverMismatch {
                        expected: 1,
                        found: 2
                    }))
                );
                assert_eq!(m.poll_io(), None, "no write after a mismatch");
            }
        }
    }

    #[test]
    fn owners_come_from_the_leader_the_owners_released_flag_and_the_mode_blocks() {
        let g = Geometry::LEGACY_512;
        let (ls, r) = (Name::new("LS").unwrap(), Name::new("r").unwrap());
        let mut area = vec![0u8; 1 << 20];
        encode_resource_area(&mut area, g, ls, r, 4);
        let area = &mut area[..6 * 512];
        let free = owners_from_area(area, g, &ls, Some(&r)).unwrap();
        assert_eq!((free.exclusive, free.shared.len(), free.lver), (None, 0, 0));
        // Host 3 holds lver 2.
        let mut leader = LeaderRecord::decode(area).unwrap();
        leader.owner_id = 3;
        leader.owner_generation = 9;
        leader.timestamp = 77;
        leader.lver = 2;
        area[..512].fill(0);
        leader.encode_into(&mut area[..512]);
        let o = owners_from_area(area, g, &ls, Some(&r)).unwrap();
        assert_eq!(
            o.exclusive,
            Some(Holder {
                host_id: 3,
                generation: 9,
                timestamp: 77
            })
        );
        // It released: its dblock says RELEASED at lver 2.
        let d = Dblock {
            lver: 2,
            mbal: 3,
            flags: DBLOCK_FLAG_RELEASED,
            ..Dblock::default()
        };
        d.encode_into(&mut area[4 * 512..5 * 512]);
        let o = owners_from_area(area, g, &ls, Some(&r)).unwrap();
        assert!(o.exclusive.is_none() && o.owner_released);
        // Host 2 holds it shared.
        tenure_format::paxos::ModeBlock {
            flags: tenure_format::paxos::MODE_FLAG_SHARED,
            unused: 0,
            generation: 5,
        }
        .encode_into(&mut area[3 * 512..4 * 512]);
        let o = owners_from_area(area, g, &ls, Some(&r)).unwrap();
        assert_eq!(
            o.shared,
            vec![Holder {
                host_id: 2,
                generation: 5,
                timestamp: 0
            }]
        );
        // Too few bytes for num_hosts: a typed error, not a panic.
        assert!(matches!(
            owners_from_area(&area[..4 * 512], g, &ls, Some(&r)),
            Err(PaxosError::Corrupt(_))
        ));
        // Another resource's area is refused.
        let other = Name::new("x").unwrap();
        assert!(owners_from_area(area, g, &ls, Some(&other)).is_err());
    }

    /// Runs a machine's I/O synchronously on an in-memory area (owners answer Dead).
    fn drive_acquire(area: &mut [u8], cfg: PaxosConfig) -> Result<Acquired, PaxosError> {
        drive_acquire_with(area, cfg, |_| HostStatus::Dead)
    }

    fn drive_acquire_with(
        area: &mut [u8],
        cfg: PaxosConfig,
        status: impl Fn(u64) -> HostStatus,
    ) -> Result<Acquired, PaxosError> {
        let mut now = Time::from_nanos(1_000_000_000_000);
        let mut m = PaxosAcquire::new(cfg, now);
        loop {
            if let Some(r) = m.poll_result() {
                return r;
            }
            now = now.saturating_add(Duration::from_millis(1));
            if let Some(io) = m.poll_io() {
                let data = m.write_data().to_vec();
                let out = apply(area, io, &data);
                m.handle_io(now, IoOutcome::Done, &out);
            } else if let Some((host, _)) = m.poll_owner_query() {
                m.handle_owner_status(now, status(host), true);
            } else if let Some(t) = m.poll_timeout() {
                m.handle_timeout(t);
            }
        }
    }

    fn apply(area: &mut [u8], io: PaxosIo, data: &[u8]) -> Vec<u8> {
        let read =
            |area: &[u8], off: u64, len: usize| area[off as usize..off as usize + len].to_vec();
        match io {
            PaxosIo::Read { offset, len } => read(area, offset, len),
            PaxosIo::Write { offset } => {
                area[offset as usize..offset as usize + data.len()].copy_from_slice(data);
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
                area[write_offset as usize..write_offset as usize + data.len()]
                    .copy_from_slice(data);
                read(area, read_offset, read_len)
            }
        }
    }

    fn drive_release(area: &mut [u8], mut m: PaxosRelease) -> Result<(), PaxosError> {
        let now = Time::from_nanos(2_000_000_000_000);
        loop {
            if let Some(r) = m.poll_result() {
                return r;
            }
            let io = m.poll_io().expect("release I/O");
            let data = m.write_data().to_vec();
            let out = apply(area, io, &data);
            m.handle_io(now, IoOutcome::Done, &out);
        }
    }

    #[test]
    fn the_lock_value_block_passes_from_holder_to_holder() {
        let mut area = vec![0u8; 1 << 20];
        encode_resource_area(
            &mut area,
            Geometry::LEGACY_512,
            Name::new("LS").unwrap(),
            Name::new("r").unwrap(),
            4,
        );
        let lvb_at = Geometry::LEGACY_512.lvb_offset().unwrap() as usize;
        area[lvb_at..lvb_at + 5].copy_from_slice(b"hello");
        let cfg_lvb = PaxosConfig {
            read_lvb: true,
            ..cfg()
        };
        let held = drive_acquire(&mut area, cfg_lvb.clone()).unwrap();
        let lvb = held.lvb.clone().expect("lvb read");
        assert_eq!(lvb.len(), 512);
        assert_eq!(&lvb[..6], b"hello\0");
        // Too large: refused before any I/O.
        assert_eq!(
            PaxosRelease::with_lvb(
                cfg_lvb.clone(),
                held.clone(),
                &[1; 513],
                Time::from_nanos(1)
            )
            .err(),
            Some(PaxosError::LvbTooLarge { len: 513, max: 512 })
        );
        let m =
            PaxosRelease::with_lvb(cfg_lvb.clone(), held, b"next", Time::from_nanos(1)).unwrap();
        drive_release(&mut area, m).unwrap();
        assert_eq!(&area[lvb_at..lvb_at + 5], b"next\0", "written, zero padded");
        // Host 2 acquires after the release and reads what host 1 left.
        let host2 = PaxosConfig {
            host_id: 2,
            ..cfg_lvb
        };
        let held2 = drive_acquire(&mut area, host2).unwrap();
        assert_eq!(&held2.lvb.unwrap()[..5], b"next\0");
        assert_eq!(held2.lver, 2);
        // Without read_lvb there is no LVB in the result.
        let mut area2 = area.clone();
        let host3 = PaxosConfig {
            host_id: 3,
            ..cfg()
        };
        assert_eq!(drive_acquire(&mut area2, host3).unwrap().lvb, None);
    }

    #[test]
    fn an_lvb_outside_the_area_is_refused_before_any_io() {
        let g = Geometry::new(
            tenure_format::SectorSize::B4096,
            tenure_format::AlignSize::M1,
        )
        .unwrap();
        let cfg = PaxosConfig {
            geometry: g,
            read_lvb: true,
            ..cfg()
        };
        let mut m = PaxosAcquire::new(cfg, Time::from_nanos(1));
        assert_eq!(m.poll_io(), None, "no I/O");
        assert!(
            matches!(m.poll_result(), Some(Err(PaxosError::LvbUnavailable(msg))) if msg.contains("outside"))
        );
    }

    #[test]
    fn shared_holders_coexist_and_keep_an_exclusive_acquirer_out_until_they_release() {
        let g = Geometry::LEGACY_512;
        let (ls, r) = (Name::new("LS").unwrap(), Name::new("r").unwrap());
        let mut area = vec![0u8; 1 << 20];
        encode_resource_area(&mut area, g, ls, r, 4);
        let host = |id: u64, shared: bool| PaxosConfig {
            host_id: id,
            shared,
            ..cfg()
        };
        let s2 = drive_acquire(&mut area, host(2, true)).unwrap();
        let s3 = drive_acquire_with(&mut area, host(3, true), |_| HostStatus::Live).unwrap();
        assert!(s2.shared && s3.shared);
        let o = owners_from_area(&area, g, &ls, Some(&r)).unwrap();
        assert_eq!(o.exclusive, None, "a shared acquire frees the leader again");
        let shared: Vec<u64> = o.shared.iter().map(|h| h.host_id).collect();
        assert_eq!(shared, vec![2, 3]);
        // Exclusive while they live: busy, and the leader it won is given back.
        let e = drive_acquire_with(&mut area, host(1, false), |_| HostStatus::Live).unwrap_err();
        assert_eq!(
            e,
            PaxosError::SharedBusy {
                host_id: 2,
                generation: 1
            }
        );
        let o = owners_from_area(&area, g, &ls, Some(&r)).unwrap();
        assert!(o.exclusive.is_none(), "unwound: {o:?}");
        // A dead shared holder does not count; a live one still does.
        let e = drive_acquire_with(&mut area, host(1, false), |h| {
            if h == 2 {
                HostStatus::Dead
            } else {
                HostStatus::Live
            }
        })
        .unwrap_err();
        assert!(
            matches!(e, PaxosError::SharedBusy { host_id: 3, .. }),
            "{e}"
        );
        // Both release (one write each: mode block zeroed): exclusive succeeds.
        for (id, held) in [(2, s2), (3, s3)] {
            drive_release(
                &mut area,
                PaxosRelease::new(host(id, true), held, Time::from_nanos(1)),
            )
            .unwrap();
        }
        let x = drive_acquire_with(&mut area, host(1, false), |_| HostStatus::Live).unwrap();
        assert!(!x.shared);
        let o = owners_from_area(&area, g, &ls, Some(&r)).unwrap();
        assert_eq!(o.exclusive.map(|h| h.host_id), Some(1));
        assert!(o.shared.is_empty());
        // Now a shared acquirer meets a live exclusive owner.
        let e = drive_acquire_with(&mut area, host(2, true), |_| HostStatus::Live).unwrap_err();
        assert!(
            matches!(e, PaxosError::OwnerAlive { host_id: 1, .. }),
            "{e}"
        );
    }

    /// Drives an acquire where `fault(n, io)` decides the fate of the n-th I/O: None = done;
    /// Some((landed, outcome)) = fails with `outcome`, its write landing or not.
    fn drive_with_faults(
        area: &mut [u8],
        mut m: PaxosAcquire,
        fault: &mut dyn FnMut(usize, PaxosIo) -> Option<(bool, IoOutcome)>,
    ) -> (Result<Acquired, PaxosError>, usize) {
        let mut now = Time::from_nanos(1_000_000_000_000);
        let mut n = 0;
        loop {
            if let Some(r) = m.poll_result() {
                return (r, n);
            }
            now = now.saturating_add(Duration::from_millis(1));
            if let Some(io) = m.poll_io() {
                let data = m.write_data().to_vec();
                match fault(n, io) {
                    None => {
                        let out = apply(area, io, &data);
                        m.handle_io(now, IoOutcome::Done, &out);
                    }
                    Some((landed, outcome)) => {
                        if landed {
                            apply(area, io, &data);
                        }
                        m.handle_io(now, outcome, &[]);
                    }
                }
                n += 1;
            } else if m.poll_owner_query().is_some() {
                m.handle_owner_status(now, HostStatus::Live, true);
            } else if let Some(t) = m.poll_timeout() {
                now = now.max(t);
                m.handle_timeout(now);
            } else {
                panic!("acquire stalled");
            }
        }
    }

    fn formatted_area() -> Vec<u8> {
        let mut area = vec![0u8; 1 << 20];
        encode_resource_area(
            &mut area,
            Geometry::LEGACY_512,
            Name::new("LS").expect("n"),
            Name::new("r").expect("n"),
            8,
        );
        area
    }

    const EIO: IoOutcome = IoOutcome::Failed { errno: libc::EIO };

    /// A host reset after its phase 2 landed and before its commit, rejoined in a new
    /// generation and acquiring again, finds its old value in its dblock and commits it: that
    /// win is its old incarnation's (the leader names generation 1), not this acquire's.
    /// Found by the whole-cluster simulation; without the generation check the acquire
    /// reported success while the other hosts saw the lease's owner as gone.
    #[test]
    fn a_ballot_that_commits_our_earlier_generations_value_is_not_ours() {
        let mut area = formatted_area();
        let now = Time::from_nanos(1_000_000_000);
        let mut m = PaxosAcquire::new(cfg(), now);
        // The area read, phase 1 and phase 2 land; the host is reset before committing.
        for _ in 0..3 {
            let io = m.poll_io().expect("next I/O");
            let data = m.write_data().to_vec();
            let out = apply(&mut area, io, &data);
            m.handle_io(now, IoOutcome::Done, &out);
        }
        assert!(m.poll_result().is_none(), "not committed yet");
        drop(m);
        let reborn = PaxosConfig {
            generation: 2,
            ..cfg()
        };
        let e = drive_acquire_with(&mut area, reborn, |_| HostStatus::Dead).unwrap_err();
        assert_eq!(e, PaxosError::AcquiredByOther { host_id: 1 });
        let leader = LeaderRecord::decode(&area[..512]).expect("leader");
        assert_eq!((leader.owner_id, leader.owner_generation), (1, 1));
    }

    #[test]
    fn a_failure_before_phase_2_is_reported_without_retracting() {
        let mut area = formatted_area();
        let m = PaxosAcquire::new(cfg(), Time::from_nanos(1));
        // I/O 0 reads the area, I/O 1 is phase 1.
        let (r, ios) = drive_with_faults(&mut area, m, &mut |n, _| (n == 1).then_some((true, EIO)));
        assert_eq!(
            r,
            Err(PaxosError::Io {
                what: "phase 1",
                outcome: EIO
            })
        );
        assert_eq!(ios, 2, "nothing more was done");
    }

    #[test]
    fn a_commit_that_landed_but_failed_is_retracted_and_the_lease_left_free() {
        for landed in [true, false] {
            let mut area = formatted_area();
            let m = PaxosAcquire::new(cfg(), Time::from_nanos(1));
            // I/O 3 is the commit: read, phase 1, phase 2, commit.
            let (r, ios) =
                drive_with_faults(&mut area, m, &mut |n, _| (n == 3).then_some((landed, EIO)));
            assert_eq!(
                r,
                Err(PaxosError::Io {
                    what: "commit",
                    outcome: EIO
                }),
                "landed {landed}"
            );
            assert!(ios > 4, "the retract ran its own ballot and release");
            let leader = LeaderRecord::decode(&area[..512]).expect("leader");
            assert_eq!(
                leader.timestamp, 0,
                "landed {landed}: the leader is free again"
            );
            let ours = Dblock::decode(&area[512 * 2..512 * 3]).expect("dblock");
            assert_ne!(ours.flags & DBLOCK_FLAG_RELEASED, 0, "landed {landed}");
            // Another host acquires it at once.
            let mut other = cfg();
            other.host_id = 2;
            drive_acquire(&mut area, other).expect("free for host 2");
        }
    }

    #[test]
    fn a_phase_2_failure_whose_value_was_chosen_is_retracted() {
        let mut area = formatted_area();
        let m = PaxosAcquire::new(cfg(), Time::from_nanos(1));
        // Phase 2's write lands, its read fails: our value is chosen on disk.
        let (r, _) = drive_with_faults(&mut area, m, &mut |n, _| (n == 2).then_some((true, EIO)));
        assert_eq!(
            r,
            Err(PaxosError::Io {
                what: "phase 2",
                outcome: EIO
            })
        );
        // Without the retract host 2 would commit host 1's value for it ("acquired by
        // another") and find the lease stuck with host 1; after it, the lease is free.
        let mut other = cfg();
        other.host_id = 2;
        let held = drive_acquire(&mut area, other).expect("free for host 2");
        assert_eq!(held.leader.owner_id, 2);
    }

    #[test]
    fn a_retract_that_keeps_failing_reports_the_lease_as_possibly_held() {
        let mut area = formatted_area();
        let m = PaxosAcquire::new(cfg(), Time::from_nanos(1));
        // The disk breaks for good at the commit (the write lands).
        let (r, ios) =
            drive_with_faults(&mut area, m, &mut |n, _| (n >= 3).then_some((n == 3, EIO)));
        assert_eq!(
            r,
            Err(PaxosError::IoMaybeHeld {
                what: "commit",
                outcome: EIO
            })
        );
        assert_eq!(
            ios,
            4 + RETRACTS_MAX as usize,
            "one failed read per retract attempt"
        );
        let leader = LeaderRecord::decode(&area[..512]).expect("leader");
        assert_eq!(
            (leader.owner_id, leader.lver),
            (1, 1),
            "the commit is on disk"
        );
        assert_ne!(leader.timestamp, 0);
    }

    #[test]
    fn a_conversion_whose_mode_clearing_write_fails_still_holds_exclusively() {
        let mut area = formatted_area();
        let mut shared = cfg();
        shared.shared = true;
        let held = drive_acquire(&mut area, shared).expect("shared");
        assert!(held.shared);
        let m = PaxosAcquire::convert_to_exclusive(cfg(), &held, Time::from_nanos(1));
        // Host 1's dblock is sector 2: the only plain write there is the last one, clearing
        // the SHARED mode block.
        let (r, _) = drive_with_faults(&mut area, m, &mut |_, io| {
            matches!(io, PaxosIo::Write { offset } if offset == 2 * 512).then_some((false, EIO))
        });
        let won = r.expect("exclusive despite the failed clearing write");
        assert!(!won.shared);
        let leader = LeaderRecord::decode(&area[..512]).expect("leader");
        assert_eq!((leader.owner_id, leader.lver), (1, won.lver));
        // Its release clears the mode block; host 2 then gets the lease exclusively.
        drive_release(
            &mut area,
            PaxosRelease::new(cfg(), won, Time::from_nanos(2)),
        )
        .expect("released");
        assert!(!ModeBlock::decode_from_sector(&area[2 * 512..3 * 512])
            .expect("mode")
            .is_shared());
        let mut other = cfg();
        other.host_id = 2;
        drive_acquire(&mut area, other).expect("host 2 acquires");
    }
}
