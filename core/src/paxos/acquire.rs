//! The acquire machine (exclusive and shared, conversions to exclusive, retracts): read the
//! area, ask about the owner, run ballots (phase 1, phase 2, commit), check shared holders, and
//! drive an inner release when it must give the leader back (see the module docs of
//! [`crate::paxos`]).

use super::*;

/// Where the acquire is. The states after the commit carry what they work on: the lease won,
/// and the inner release that gives the leader back.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Step {
    ReadArea,
    AwaitOwner,
    Backoff,
    Phase1,
    Phase2,
    ReadLvb,
    Commit,
    /// Exclusive, committed: asking about the liveness of the first shared holder seen in
    /// phase 2 (`shared_holders`).
    CheckShared {
        /// The lease won.
        won: Acquired,
    },
    /// Driving an inner release: freeing the leader after a shared acquire, unwinding an
    /// exclusive acquire that met a live shared holder, or giving back what a retract won.
    Inner {
        /// The release.
        release: Box<PaxosRelease>,
        /// Why it runs, and what to report when it ends.
        goal: InnerGoal,
    },
    /// A conversion to exclusive succeeded: clearing our SHARED mode block.
    ClearMode {
        /// The lease won (exclusive).
        won: Acquired,
    },
    Done,
}

/// Retries of an acquire that finds another host's SHORT_HOLD leader (sanlock: 8).
pub const SHORT_HOLD_RETRIES_MAX: u32 = 8;

/// Why an inner release runs, and what to report when it ends.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum InnerGoal {
    /// Shared acquire: our mode block is SHARED, the leader is being freed; this lease is
    /// reported (shared) once it is.
    Shared(Box<Acquired>),
    /// Exclusive acquire met this live shared holder (host id, generation): unwinding.
    Busy(u64, u64),
    /// A retract won the lease: giving it back, then reporting the failure that started
    /// the retract (what, outcome).
    Retract(&'static str, IoOutcome),
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
    /// Other hosts' SHARED mode blocks seen in the phase 2 read: (host id, generation).
    shared_holders: Vec<(u64, u64)>,
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
    /// Its configuration.
    pub(crate) fn config(&self) -> &PaxosConfig {
        &self.cfg
    }

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
            shared_holders: Vec::new(),
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
        let usable = matches!(me.step, Step::ReadArea)
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
        match &mut self.step {
            Step::Inner { release, .. } => release.poll_io(),
            _ => self.pending.take(),
        }
    }

    /// Deadline of the I/O just taken.
    pub fn io_deadline(&self) -> Time {
        match &self.step {
            Step::Inner { release, .. } => release.io_deadline(),
            _ => self.io_started.saturating_add(self.cfg.timeouts.io()),
        }
    }

    /// The sector to write.
    pub fn write_data(&self) -> &[u8] {
        match &self.step {
            Step::Inner { release, .. } => release.write_data(),
            _ => &self.sector,
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
            // Ours after all: give it back.
            Ok(won) => self.give_back(won, InnerGoal::Retract(what, outcome), self.now),
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

    /// Gives a lease we won back (our dblock RELEASED, the leader freed) for `goal`. A
    /// conversion keeps its shared hold: its SHARED mode block stays with the RELEASED dblock.
    fn give_back(&mut self, won: Acquired, goal: InnerGoal, now: Time) {
        self.last_written = Some(Dblock {
            flags: won.dblock.flags | DBLOCK_FLAG_RELEASED,
            ..won.dblock
        });
        let r = PaxosRelease::leader_release(
            self.cfg.clone(),
            won,
            self.keep_mode.unwrap_or_default(),
            now,
        );
        self.step = Step::Inner {
            release: Box::new(r),
            goal,
        };
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
        if let Step::Inner { release, .. } = &mut self.step {
            release.handle_io(now, outcome, data);
            let Some(res) = release.poll_result() else {
                return;
            };
            let Step::Inner { goal, .. } = std::mem::replace(&mut self.step, Step::Done) else {
                return;
            };
            let r = match (res, goal) {
                (res, InnerGoal::Retract(what, outcome)) => {
                    return self.finish_raw(Err(match res {
                        Ok(()) => PaxosError::Io { what, outcome },
                        Err(_) => PaxosError::IoMaybeHeld { what, outcome },
                    }));
                }
                (Err(e), _) => Err(e),
                (Ok(()), InnerGoal::Busy(host_id, generation)) => Err(PaxosError::SharedBusy {
                    host_id,
                    generation,
                }),
                (Ok(()), InnerGoal::Shared(won)) => Ok(Acquired {
                    dblock: Dblock {
                        flags: won.dblock.flags | DBLOCK_FLAG_RELEASED,
                        ..won.dblock
                    },
                    shared: true,
                    ..*won
                }),
            };
            return self.finish(r);
        }
        if outcome != IoOutcome::Done && matches!(self.step, Step::ClearMode { .. }) {
            // A conversion won the leader; only clearing our SHARED mode block failed. We hold
            // the lease exclusively (the leader says so); the stale SHARED block only makes
            // exclusive acquirers more cautious, and our release writes it zero.
            if let Step::ClearMode { won } = std::mem::replace(&mut self.step, Step::Done) {
                return self.finish_raw(Ok(won));
            }
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
                    self.step = Step::Inner {
                        release: Box::new(r),
                        goal: InnerGoal::Shared(Box::new(won)),
                    };
                    return;
                }
                self.next_shared_holder(won);
            }
            Step::ClearMode { .. } => {
                if let Step::ClearMode { won } = std::mem::replace(&mut self.step, Step::Done) {
                    self.finish(Ok(won));
                }
            }
            Step::AwaitOwner
            | Step::Backoff
            | Step::CheckShared { .. }
            | Step::Inner { .. }
            | Step::Done => {}
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
        .map_err(PaxosError::of_leader)
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
        if matches!(self.step, Step::CheckShared { .. }) {
            let Step::CheckShared { won } = std::mem::replace(&mut self.step, Step::Done) else {
                return;
            };
            let (host, generation) = self.shared_holders.remove(0);
            match (status, same_generation) {
                // A live (or not yet known dead) shared holder: give the leader back.
                (HostStatus::Live | HostStatus::Unknown | HostStatus::Fail, true) => {
                    self.give_back(won, InnerGoal::Busy(host, generation), now)
                }
                // Dead, free, or rejoined since: that shared lease is void. Its mode block is
                // left alone (writing another host's sector could clobber a ballot it runs
                // after rejoining); its own next dblock write clears it.
                _ => self.next_shared_holder(won),
            }
            return;
        }
        if !matches!(self.step, Step::AwaitOwner) {
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
    fn next_shared_holder(&mut self, won: Acquired) {
        match self.shared_holders.first() {
            Some(&(host, generation)) => {
                self.step = Step::CheckShared { won };
                self.owner_query = Some((host, generation));
            }
            // (A retract that won keeps the mode block: it gives the lease back as shared.)
            None if self.keep_mode.is_some() && self.retracting.is_none() => {
                // Converted: exclusive now; our mode block goes with one more write.
                self.keep_mode = None;
                self.sector.fill(0);
                self.ours.encode_into(&mut self.sector);
                self.step = Step::ClearMode { won };
                self.pending = Some(PaxosIo::Write {
                    offset: self.dblock_offset(),
                });
            }
            None => self.finish(Ok(won)),
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
            shared_holders,
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
            shared_holders,
            short_hold_retries,
            keep_mode,
            last_written,
        )
            .hash(h);
        (retracting, retracts).hash(h);
    }
}
