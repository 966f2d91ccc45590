//! Delta leases (host id leases) as a sans-IO state machine: join, renew, release, and the host
//! status table built from renewal reads (spec/PROTOCOL.md "Delta lease").
//!
//! The machine never touches a device or a clock. Its driver calls [`DeltaLease::poll_io`] for
//! the next I/O (at most one is outstanding), performs it through an `IoBackend` with the
//! deadline [`DeltaLease::io_deadline`], and feeds the outcome back with
//! [`DeltaLease::handle_io`]; it calls [`DeltaLease::handle_timeout`] when
//! [`DeltaLease::poll_timeout`] is reached, and collects [`DeltaEvent`]s from
//! [`DeltaLease::poll_event`].
//!
//! Invariants:
//! - Only our own sector is ever written, and only with what we decided to write.
//! - Once joined, every renewal first checks that our sector is exactly what we last wrote;
//!   anything else (another writer, damage) loses the lockspace at once.
//! - The lockspace is lost when no renewal has succeeded for 8T (`renewal_fail`), measured
//!   from the *start* of the last successful renewal write, which is never later than the
//!   timestamp others saw change.

use std::time::Duration;

use serde::Serialize;
use tenure_format::delta::{DeltaSector, HostBitmap};
use tenure_format::{DecodeError, Geometry, LeaderKind, LeaderRecord, Name};

use crate::clock::Time;
use crate::io::IoOutcome;
use crate::timeouts::Timeouts;

/// Who we are in which lockspace.
#[derive(Clone, Debug)]
pub struct DeltaConfig {
    /// Lockspace name.
    pub space_name: Name,
    /// Our host id (1..=geometry.hosts_max()).
    pub host_id: u64,
    /// Our host name, written into the slot.
    pub host_name: Name,
    /// Area geometry.
    pub geometry: Geometry,
    /// Byte offset of the lockspace area on its device.
    pub area_offset: u64,
    /// Our io_timeout and the cluster's watchdog fire timeout.
    pub timeouts: Timeouts,
}

/// An I/O the machine wants. Writes take their bytes from [`DeltaLease::write_data`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaIo {
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
}

/// Why a join failed or the lockspace was lost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
pub enum DeltaError {
    /// Another host holds (or took) this host id.
    #[error("host id busy: held by \"{owner_name}\" generation {generation}")]
    HostIdBusy {
        /// Its host name.
        owner_name: Name,
        /// Its generation.
        generation: u64,
    },
    /// An I/O failed or timed out.
    #[error("{what}: {outcome:?}")]
    Io {
        /// Which step.
        what: &'static str,
        /// How it ended.
        outcome: IoOutcome,
    },
    /// Our sector does not decode.
    #[error("our delta lease sector is invalid: {0}")]
    Corrupt(String),
    /// Our sector holds something we did not write.
    #[error("our delta lease sector was overwritten: owner {owner_id} \"{owner_name}\" generation {generation}, timestamp {timestamp}")]
    Foreign {
        /// owner_id found.
        owner_id: u64,
        /// Host name found.
        owner_name: Name,
        /// Generation found.
        generation: u64,
        /// Timestamp found.
        timestamp: u64,
    },
    /// No renewal succeeded for 8T.
    #[error("no successful renewal for {0:?}: lockspace lost")]
    RenewalDeadlinePassed(Duration),
    /// The request does not fit the current state.
    #[error("not possible now: {0}")]
    Misuse(&'static str),
}

impl From<DecodeError> for DeltaError {
    fn from(e: DecodeError) -> Self {
        DeltaError::Corrupt(e.to_string())
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DeltaEvent {
    /// We hold our host id in this generation.
    Joined {
        /// Our generation.
        generation: u64,
    },
    /// The join did not succeed.
    JoinFailed {
        /// Why.
        error: DeltaError,
    },
    /// A renewal succeeded.
    Renewed {
        /// Read latency of the area read.
        read_latency: Duration,
        /// Write latency of our sector.
        write_latency: Duration,
    },
    /// A renewal failed; the next attempt comes in 1 s (while the lockspace is not yet lost).
    RenewalFailed {
        /// Why.
        error: DeltaError,
    },
    /// The lockspace is lost: holders must be stopped.
    Lost {
        /// Why.
        error: DeltaError,
    },
    /// We released our host id (timestamp 0 written).
    Released,
    /// Live hosts have our bit set in their bitmap: they ask us to look at the request
    /// records of the leases we hold (or send an event). Reported by each renewal read that
    /// sees it.
    BitSet {
        /// Who set it.
        from: Vec<u64>,
        /// Host events published by those of them whose timestamp changed since the last
        /// read (sanlock delivers on each such renewal while the bit stays set).
        events: Vec<ReceivedEvent>,
    },
}

/// A small message one host publishes in its delta lease for others (sanlock's
/// `sanlk_host_event`): carried in the leader's write_id / write_generation / write_timestamp
/// fields, addressed through the host bitmap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostEvent {
    /// The generation of the addressed host the sender meant (receivers filter on it).
    pub generation: u64,
    /// Event value; 0 = none.
    pub event: u64,
    /// Free data.
    pub data: u64,
}

/// A host event read from another host's delta lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ReceivedEvent {
    /// Sender's host id.
    pub from_host_id: u64,
    /// Sender's generation.
    pub from_generation: u64,
    /// What it published.
    pub event: HostEvent,
}

/// Progress of a join, for "phase and time left".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinPhase {
    /// Reading our slot.
    ReadSlot,
    /// Waiting out the long delay: the slot was last held by another host name.
    WaitOtherName,
    /// Writing our claim.
    WriteClaim,
    /// Waiting 2T before checking the claim held.
    WaitClaim,
    /// Reading the slot back.
    VerifyClaim,
}

#[derive(Clone, Debug)]
enum State {
    Idle,
    Join(JoinPhase),
    Joined,
    RenewRead,
    RenewWrite { read_latency: Duration },
    Release,
    Done,
}

/// What a joined delta lease needs to go on renewing in another process — a daemon upgrade
/// hands it over, a restart after a crash reads it back from the state file the dead process
/// wrote at each renewal ([`DeltaLease::handover`], [`DeltaLease::adopted`]). Nothing is
/// re-joined: the generation stays, so other hosts see no change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaHandover {
    /// Our slot as last confirmed written (its generation is ours).
    pub last_written: LeaderRecord,
    /// Start of the last successful renewal write (the renewal deadline counts from it).
    pub last_renewal: Time,
    /// Highest timestamp written (a write still in flight may land with it).
    pub max_written_ts: u64,
    /// The host event our renewals publish.
    pub published: HostEvent,
}

/// Why a handed-over delta lease cannot be adopted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdoptError {
    /// The record is not this host's in this lockspace.
    #[error("the handed-over slot is not ours: host id {host_id}, name {name:?}")]
    NotOurs {
        /// Its host id.
        host_id: u64,
        /// Its owner name.
        name: String,
    },
    /// The renewal deadline has passed: the lockspace counts as lost (the watchdog decides).
    #[error("the last renewal is {age_ms} ms old, past the renewal deadline ({limit_ms} ms)")]
    DeadlinePassed {
        /// Age of the last renewal.
        age_ms: u64,
        /// 8T.
        limit_ms: u64,
    },
    /// No room for another lockspace.
    #[error("lockspace table full ({0} lockspaces)")]
    TableFull(usize),
}

/// One host's delta lease in one lockspace.
#[derive(Debug)]
pub struct DeltaLease {
    cfg: DeltaConfig,
    state: State,
    pending: Option<DeltaIo>,
    io_started: Time,
    timer: Option<Time>,
    event: Option<DeltaEvent>,
    sector: Vec<u8>,
    /// The slot as first read (join), or as we last wrote it (joined).
    seen: Option<LeaderRecord>,
    /// 2T with T recorded in the slot before we claimed it.
    claim_delay: Duration,
    last_written: Option<LeaderRecord>,
    /// Highest timestamp we have written (a timed-out write may still land with it).
    max_written_ts: u64,
    /// A release asked for during a renewal.
    release_requested: bool,
    /// The join's claim was confirmed too late to count as our last renewal (the slot's
    /// recorded T, which sets the wait, is much longer than ours): a renewal runs first and
    /// its success completes the join.
    join_renewal: bool,
    last_renewal: Option<Time>,
    bitmap: HostBitmap,
    /// The host event our renewals publish.
    published: HostEvent,
    hosts: HostTable,
}

fn same_leader(a: &LeaderRecord, b: &LeaderRecord) -> bool {
    LeaderRecord { checksum: 0, ..*a } == LeaderRecord { checksum: 0, ..*b }
}

impl DeltaLease {
    /// A lease not yet joined. `cfg.host_id` must fit the geometry (asserted: validated by the
    /// caller).
    pub fn new(cfg: DeltaConfig) -> Self {
        assert!(
            (1..=cfg.geometry.hosts_max()).contains(&cfg.host_id),
            "host id out of range"
        );
        let ss = cfg.geometry.sector_size_bytes() as usize;
        let hosts = HostTable::new(cfg.host_id, cfg.timeouts.watchdog_fire_s);
        DeltaLease {
            cfg,
            state: State::Idle,
            pending: None,
            io_started: Time::ZERO,
            timer: None,
            event: None,
            sector: vec![0; ss],
            seen: None,
            claim_delay: Duration::ZERO,
            last_written: None,
            max_written_ts: 0,
            release_requested: false,
            join_renewal: false,
            last_renewal: None,
            bitmap: HostBitmap::default(),
            published: HostEvent::default(),
            hosts,
        }
    }

    /// A lease that goes on from `h` (handed over by the process that joined): joined at
    /// once, its next renewal due 2T after the last one (at once if that is past). The first
    /// renewal checks our slot as every renewal does; a write the old process left in flight
    /// may have landed, so any timestamp of ours up to now is accepted there.
    pub fn adopted(cfg: DeltaConfig, h: DeltaHandover, now: Time) -> Result<Self, AdoptError> {
        let rec = h.last_written;
        if rec.owner_id != cfg.host_id
            || rec.resource_name != cfg.host_name
            || rec.space_name != cfg.space_name
            || rec.timestamp == 0
        {
            return Err(AdoptError::NotOurs {
                host_id: rec.owner_id,
                name: rec.resource_name.escaped(),
            });
        }
        let age = now.saturating_since(h.last_renewal);
        let limit = cfg.timeouts.renewal_fail();
        if age >= limit {
            return Err(AdoptError::DeadlinePassed {
                age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
                limit_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            });
        }
        let interval = cfg.timeouts.renewal_interval();
        let mut d = DeltaLease::new(cfg);
        d.state = State::Joined;
        d.seen = Some(rec);
        d.last_written = Some(rec);
        d.last_renewal = Some(h.last_renewal);
        d.max_written_ts = h.max_written_ts.max(rec.timestamp).max(Self::stamp(now));
        d.published = h.published;
        d.timer = Some(h.last_renewal.saturating_add(interval).max(now));
        Ok(d)
    }

    /// What another process needs to go on renewing (see [`DeltaHandover`]): `None` unless
    /// joined and not leaving. During a renewal it is the last confirmed state, with the
    /// timestamp being written counted in `max_written_ts`.
    pub fn handover(&self) -> Option<DeltaHandover> {
        if !self.is_joined() || self.is_releasing() {
            return None;
        }
        Some(DeltaHandover {
            last_written: self.last_written?,
            last_renewal: self.last_renewal?,
            max_written_ts: self.max_written_ts,
            published: self.published,
        })
    }

    fn slot_offset(&self) -> u64 {
        self.cfg.area_offset + self.cfg.geometry.delta_slot_offset(self.cfg.host_id)
    }

    fn ss(&self) -> usize {
        self.cfg.geometry.sector_size_bytes() as usize
    }

    fn read_slot(&mut self, now: Time) {
        self.pending = Some(DeltaIo::Read {
            offset: self.slot_offset(),
            len: self.ss(),
        });
        self.io_started = now;
    }

    fn write_slot(&mut self, now: Time, rec: &LeaderRecord, with_bitmap: bool) {
        self.max_written_ts = self.max_written_ts.max(rec.timestamp);
        self.sector.fill(0);
        if with_bitmap {
            DeltaSector {
                leader: *rec,
                bitmap: self.bitmap,
            }
            .encode_into(&mut self.sector);
        } else {
            rec.encode_into(&mut self.sector);
        }
        self.pending = Some(DeltaIo::Write {
            offset: self.slot_offset(),
        });
        self.io_started = now;
    }

    /// Our timestamp for `now`: monotonic seconds, never 0 (0 means "free").
    fn stamp(now: Time) -> u64 {
        now.as_secs().max(1)
    }

    /// Starts joining (PROTOCOL "Join").
    pub fn start_join(&mut self, now: Time) -> Result<(), DeltaError> {
        if !matches!(self.state, State::Idle | State::Done) {
            return Err(DeltaError::Misuse("join while joining or joined"));
        }
        self.state = State::Join(JoinPhase::ReadSlot);
        self.read_slot(now);
        Ok(())
    }

    /// Releases our host id (writes timestamp 0). During a renewal, the release follows as
    /// soon as the renewal's I/O is done.
    pub fn start_release(&mut self, now: Time) -> Result<(), DeltaError> {
        match self.state {
            State::Joined => {
                // Joined implies a record was written.
                let rec = LeaderRecord {
                    timestamp: 0,
                    ..self.last_written.expect("joined has written")
                };
                self.state = State::Release;
                self.release_requested = false;
                self.timer = None;
                self.write_slot(now, &rec, false);
                Ok(())
            }
            State::RenewRead | State::RenewWrite { .. } => {
                self.release_requested = true;
                Ok(())
            }
            _ => Err(DeltaError::Misuse("release when not joined")),
        }
    }

    /// The next I/O to perform, if any (taken: each is returned once, unless given back).
    pub fn poll_io(&mut self) -> Option<DeltaIo> {
        self.pending.take()
    }

    /// An I/O just polled that the driver could not start yet (its engine had no room): the
    /// next [`DeltaLease::poll_io`] returns it again, with the same data and deadline.
    pub fn give_back(&mut self, io: DeltaIo) {
        debug_assert!(self.pending.is_none(), "gave back over a newer I/O");
        self.pending.get_or_insert(io);
    }

    /// When the I/O waiting to be polled was asked for, if one waits.
    pub fn io_waiting_since(&self) -> Option<Time> {
        self.pending.map(|_| self.io_started)
    }

    /// Deadline for the I/O just taken: T after it was asked for.
    pub fn io_deadline(&self) -> Time {
        self.io_started.saturating_add(self.cfg.timeouts.io())
    }

    /// The sector to write for a [`DeltaIo::Write`].
    pub fn write_data(&self) -> &[u8] {
        &self.sector
    }

    /// When [`DeltaLease::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Time> {
        let fail = self.renewal_deadline().filter(|_| {
            matches!(
                self.state,
                State::Joined | State::RenewRead | State::RenewWrite { .. }
            )
        });
        match (self.timer, fail) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<DeltaEvent> {
        self.event.take()
    }

    /// The instant after which this lockspace must be considered lost (for the watchdog).
    pub fn renewal_deadline(&self) -> Option<Time> {
        self.last_renewal
            .map(|t| t.saturating_add(self.cfg.timeouts.renewal_fail()))
    }

    /// Join progress: phase and when the current wait ends.
    pub fn join_progress(&self) -> Option<(JoinPhase, Option<Time>)> {
        match self.state {
            State::Join(p) => Some((p, self.timer)),
            _ => None,
        }
    }

    /// True from [`DeltaLease::start_release`] until the release is done.
    pub fn is_releasing(&self) -> bool {
        matches!(self.state, State::Release) || self.release_requested
    }

    /// True while we hold our host id.
    pub fn is_joined(&self) -> bool {
        !self.join_renewal
            && matches!(
                self.state,
                State::Joined | State::RenewRead | State::RenewWrite { .. }
            )
    }

    /// The configuration this lease was made with.
    pub fn config(&self) -> &DeltaConfig {
        &self.cfg
    }

    /// The host status table from renewal reads.
    pub fn hosts(&self) -> &HostTable {
        &self.hosts
    }

    /// Sets or clears host `host_id`'s bit in our bitmap (carried by the next renewals).
    pub fn set_bitmap_bit(&mut self, host_id: u64, on: bool) {
        self.bitmap.set(host_id, on);
    }

    /// Sets every host's bit but our own (an event for all hosts).
    pub fn set_all_bitmap_bits(&mut self) {
        for h in 1..=self.cfg.geometry.hosts_max().min(2000) {
            self.bitmap.set(h, h != self.cfg.host_id);
        }
    }

    /// The host event the next renewals publish (all zero: none).
    pub fn set_published_event(&mut self, event: HostEvent) {
        self.published = event;
    }

    /// The host event our renewals publish.
    pub fn published_event(&self) -> HostEvent {
        self.published
    }

    fn fail_join(&mut self, error: DeltaError) {
        self.state = State::Done;
        self.timer = None;
        self.event = Some(DeltaEvent::JoinFailed { error });
    }

    fn lose(&mut self, error: DeltaError) {
        self.state = State::Done;
        self.timer = None;
        self.pending = None;
        self.event = Some(DeltaEvent::Lost { error });
    }

    fn claim(&mut self, now: Time, prev: &LeaderRecord) {
        let rec = LeaderRecord {
            owner_id: self.cfg.host_id,
            owner_generation: prev.owner_generation + 1,
            timestamp: Self::stamp(now),
            resource_name: self.cfg.host_name,
            io_timeout: self.cfg.timeouts.io_timeout_s,
            write_id: 0,
            write_generation: 0,
            write_timestamp: 0,
            ..*prev
        };
        // 2T with the T recorded in the slot we take over (sanlock's other_io_timeout).
        let recorded = if prev.io_timeout == 0 {
            self.cfg.timeouts.io_timeout_s
        } else {
            prev.io_timeout
        };
        self.claim_delay =
            Timeouts::new(recorded, self.cfg.timeouts.watchdog_fire_s).join_delay_short();
        self.seen = Some(rec);
        self.state = State::Join(JoinPhase::WriteClaim);
        self.write_slot(now, &rec, false);
    }

    fn decode_own(&self, data: &[u8]) -> Result<LeaderRecord, DeltaError> {
        Ok(DeltaSector::decode(data, self.cfg.geometry, &self.cfg.space_name)?.leader)
    }

    /// Feeds back the outcome of the I/O taken last; `data` holds what a read returned.
    pub fn handle_io(&mut self, now: Time, outcome: IoOutcome, data: &[u8]) {
        let ok = outcome == IoOutcome::Done;
        match self.state.clone() {
            State::Join(phase) => {
                if !ok {
                    return self.fail_join(DeltaError::Io {
                        what: "join",
                        outcome,
                    });
                }
                match phase {
                    JoinPhase::ReadSlot => {
                        let prev = match self.decode_own(data) {
                            Ok(p) => p,
                            Err(e) => return self.fail_join(e),
                        };
                        if prev.timestamp == 0 || prev.resource_name == self.cfg.host_name {
                            self.claim(now, &prev);
                        } else {
                            // Last held by another name: wait out its possible lease (its T).
                            let theirs = Timeouts::new(
                                prev.io_timeout.max(1),
                                self.cfg.timeouts.watchdog_fire_s,
                            );
                            self.seen = Some(prev);
                            self.state = State::Join(JoinPhase::WaitOtherName);
                            self.timer = Some(now.saturating_add(theirs.join_delay_other_name()));
                        }
                    }
                    JoinPhase::WaitOtherName => {
                        let cur = match self.decode_own(data) {
                            Ok(c) => c,
                            Err(e) => return self.fail_join(e),
                        };
                        // Checked in the transition: seen is set while waiting.
                        let seen = self.seen.expect("seen while waiting");
                        if cur.timestamp == 0 || same_leader(&cur, &seen) {
                            self.claim(now, &cur);
                        } else {
                            self.fail_join(DeltaError::HostIdBusy {
                                owner_name: cur.resource_name,
                                generation: cur.owner_generation,
                            });
                        }
                    }
                    JoinPhase::WriteClaim => {
                        self.state = State::Join(JoinPhase::WaitClaim);
                        self.last_renewal = Some(self.io_started);
                        self.timer = Some(now.saturating_add(self.claim_delay));
                    }
                    JoinPhase::WaitClaim => {}
                    JoinPhase::VerifyClaim => {
                        let cur = match self.decode_own(data) {
                            Ok(c) => c,
                            Err(e) => return self.fail_join(e),
                        };
                        let mine = self.seen.expect("claim written");
                        if !same_leader(&cur, &mine) {
                            self.last_renewal = None;
                            return self.fail_join(DeltaError::HostIdBusy {
                                owner_name: cur.resource_name,
                                generation: cur.owner_generation,
                            });
                        }
                        self.last_written = Some(mine);
                        self.state = State::Joined;
                        let claimed = self.last_renewal.unwrap_or(now);
                        let budget_left = self
                            .cfg
                            .timeouts
                            .renewal_fail()
                            .saturating_sub(now.saturating_since(claimed));
                        if budget_left <= self.cfg.timeouts.renewal_interval() {
                            // The wait used the slot's old T, longer than ours: the claim is
                            // too old to hold the lockspace by. Renew now, with no deadline
                            // running yet (nothing can be held before Joined), and report the
                            // join when that renewal is confirmed.
                            self.join_renewal = true;
                            self.last_renewal = None;
                            self.timer = Some(now);
                            return;
                        }
                        self.timer = self
                            .last_renewal
                            .map(|t| t.saturating_add(self.cfg.timeouts.renewal_interval()));
                        self.event = Some(DeltaEvent::Joined {
                            generation: mine.owner_generation,
                        });
                    }
                }
            }
            State::RenewRead => {
                let read_latency = now.saturating_since(self.io_started);
                if !ok {
                    return self.renewal_failed(
                        now,
                        DeltaError::Io {
                            what: "renewal read",
                            outcome,
                        },
                    );
                }
                let ss = self.ss();
                let own = usize::try_from(self.cfg.host_id - 1).unwrap_or(0) * ss;
                let Some(own_sector) = data.get(own..own + ss) else {
                    return self.renewal_failed(now, DeltaError::Corrupt("short area read".into()));
                };
                let cur = match self.decode_own(own_sector) {
                    Ok(c) => c,
                    Err(e) => return self.lose(e),
                };
                let confirmed = self.last_written.expect("renewing implies written");
                // Renewal writes that timed out may land at any later time, in any order: the
                // sector is ours if it is what we confirmed with a timestamp we wrote since.
                // The event fields are ours too and change between renewals.
                let strip = |r: &LeaderRecord| LeaderRecord {
                    timestamp: 0,
                    checksum: 0,
                    write_id: 0,
                    write_generation: 0,
                    write_timestamp: 0,
                    ..*r
                };
                let is_ours = strip(&cur) == strip(&confirmed)
                    && (confirmed.timestamp..=self.max_written_ts).contains(&cur.timestamp);
                if !is_ours {
                    return self.lose(DeltaError::Foreign {
                        owner_id: cur.owner_id,
                        owner_name: cur.resource_name,
                        generation: cur.owner_generation,
                        timestamp: cur.timestamp,
                    });
                }
                let last = confirmed;
                self.hosts
                    .observe(now, self.cfg.geometry, &self.cfg.space_name, data);
                let mut from = Vec::new();
                let mut events = Vec::new();
                for e in self.hosts.entries.iter().flatten() {
                    if !e.bit_for_us || e.host_id == self.cfg.host_id {
                        continue;
                    }
                    from.push(e.host_id);
                    if e.changed && e.event.event != 0 {
                        events.push(ReceivedEvent {
                            from_host_id: e.host_id,
                            from_generation: e.generation,
                            event: e.event,
                        });
                    }
                }
                if !from.is_empty() {
                    // Drained by the driver before the renewal write completes.
                    self.event = Some(DeltaEvent::BitSet { from, events });
                }
                // A timestamp must change to count as a renewal, and must differ from every
                // timestamp a late write of ours may still bring.
                let stamp = Self::stamp(now).max(self.max_written_ts + 1);
                let rec = LeaderRecord {
                    timestamp: stamp,
                    write_id: self.published.generation,
                    write_generation: self.published.event,
                    write_timestamp: self.published.data,
                    ..last
                };
                self.seen = Some(rec);
                self.state = State::RenewWrite { read_latency };
                self.write_slot(now, &rec, true);
            }
            State::RenewWrite { read_latency } => {
                if !ok {
                    return self.renewal_failed(
                        now,
                        DeltaError::Io {
                            what: "renewal write",
                            outcome,
                        },
                    );
                }
                let write_latency = now.saturating_since(self.io_started);
                self.last_written = self.seen;
                self.last_renewal = Some(self.io_started);
                self.state = State::Joined;
                self.timer = Some(
                    self.io_started
                        .saturating_add(self.cfg.timeouts.renewal_interval()),
                );
                self.event = Some(if std::mem::take(&mut self.join_renewal) {
                    DeltaEvent::Joined {
                        generation: self.seen.map_or(0, |r| r.owner_generation),
                    }
                } else {
                    DeltaEvent::Renewed {
                        read_latency,
                        write_latency,
                    }
                });
            }
            State::Release => {
                self.state = State::Done;
                self.last_renewal = None;
                self.event = Some(if ok {
                    DeltaEvent::Released
                } else {
                    DeltaEvent::Lost {
                        error: DeltaError::Io {
                            what: "release",
                            outcome,
                        },
                    }
                });
            }
            State::Idle | State::Joined | State::Done => {}
        }
        if self.release_requested && matches!(self.state, State::Joined) {
            // The renewal in progress when release was asked for has ended.
            let _ = self.start_release(now);
        }
    }

    fn renewal_failed(&mut self, now: Time, error: DeltaError) {
        if std::mem::take(&mut self.join_renewal) {
            // The renewal that was to complete a join failed: the join fails.
            return self.fail_join(error);
        }
        // A timed-out renewal write may land later; the next renewal's check of our sector
        // accepts any timestamp we wrote since the last confirmed renewal.
        self.state = State::Joined;
        self.timer = Some(now.saturating_add(Duration::from_secs(1)));
        self.event = Some(DeltaEvent::RenewalFailed { error });
        self.check_deadline(now);
    }

    fn check_deadline(&mut self, now: Time) {
        if let Some(deadline) = self.renewal_deadline() {
            if self.is_joined() && now >= deadline {
                self.lose(DeltaError::RenewalDeadlinePassed(
                    self.cfg.timeouts.renewal_fail(),
                ));
            }
        }
    }

    /// Time passed: delays end, renewals start, the renewal deadline is enforced.
    pub fn handle_timeout(&mut self, now: Time) {
        self.check_deadline(now);
        if self.timer.is_none_or(|t| t > now) {
            return;
        }
        self.timer = None;
        match self.state {
            State::Join(JoinPhase::WaitOtherName) => self.read_slot(now),
            State::Join(JoinPhase::WaitClaim) => {
                self.state = State::Join(JoinPhase::VerifyClaim);
                self.read_slot(now);
            }
            State::Joined => {
                self.state = State::RenewRead;
                let len = usize::try_from(self.cfg.geometry.hosts_max()).unwrap_or(0) * self.ss();
                self.pending = Some(DeltaIo::Read {
                    offset: self.cfg.area_offset,
                    len,
                });
                self.io_started = now;
            }
            _ => {}
        }
    }
}

/// A host's status as another host sees it (PROTOCOL "Host status").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HostStatus {
    /// Timestamp 0.
    Free,
    /// No change seen yet since we started watching (and not yet long enough to call it FAIL).
    Unknown,
    /// Changed within 8T (its T).
    Live,
    /// 8T..8T+W since the last observed change.
    Fail,
    /// More than 8T+W since the last observed change: its leases may be taken.
    Dead,
}

/// What we know of one host id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostEntry {
    /// Host id.
    pub host_id: u64,
    /// Its host name.
    pub owner_name: Name,
    /// Its generation.
    pub generation: u64,
    /// Its last timestamp (its clock, never compared with ours).
    pub timestamp: u64,
    /// Its io_timeout.
    pub io_timeout: u16,
    /// When we first saw this generation (our clock).
    pub first_seen: Time,
    /// When we last saw its timestamp change (our clock).
    pub last_change: Option<Time>,
    /// Its bitmap has our host id's bit set (a request for a lease we hold, or an event).
    pub bit_for_us: bool,
    /// The host event it publishes.
    pub event: HostEvent,
    /// Its timestamp changed (or it appeared) in the last read.
    pub changed: bool,
}

fn event_of(l: &LeaderRecord) -> HostEvent {
    HostEvent {
        generation: l.write_id,
        event: l.write_generation,
        data: l.write_timestamp,
    }
}

/// Host statuses from renewal reads, on our own monotonic clock.
#[derive(Clone, Debug)]
pub struct HostTable {
    our_host_id: u64,
    watchdog_fire_s: u32,
    entries: Vec<Option<HostEntry>>,
}

impl HostTable {
    /// An empty table.
    pub fn new(our_host_id: u64, watchdog_fire_s: u32) -> Self {
        HostTable {
            our_host_id,
            watchdog_fire_s,
            entries: Vec::new(),
        }
    }

    /// True once a whole-area read was taken in (the first renewal after the join): before
    /// that, nothing is known of the other hosts.
    pub fn observed(&self) -> bool {
        !self.entries.is_empty()
    }

    /// Takes in a whole-area read made at `now`. Undecodable slots are skipped (they keep
    /// their previous entry: damage is not evidence of life).
    pub fn observe(&mut self, now: Time, geometry: Geometry, space_name: &Name, area: &[u8]) {
        let ss = geometry.sector_size_bytes() as usize;
        let hosts = usize::try_from(geometry.hosts_max()).unwrap_or(0);
        if self.entries.len() < hosts {
            self.entries.resize(hosts, None);
        }
        for (i, sector) in area.chunks_exact(ss).take(hosts).enumerate() {
            // A slot never written (most of a 2000-host area) has no delta magic: skipped
            // before the record is copied out and checksummed, as its decode would fail.
            // So is one no host joined when we have no entry for it: it stays without.
            if sector[..4] != tenure_format::leader::DELTA_MAGIC.to_le_bytes()
                || (self.entries[i].is_none() && DeltaSector::never_joined(sector))
            {
                continue;
            }
            let Ok(l) =
                LeaderRecord::decode_expect(sector, LeaderKind::Delta, geometry, space_name, None)
            else {
                continue;
            };
            let bit_for_us = DeltaSector::bit_of(sector, self.our_host_id);
            let host_id = i as u64 + 1;
            let entry = &mut self.entries[i];
            match entry {
                Some(e)
                    if e.generation == l.owner_generation && e.owner_name == l.resource_name =>
                {
                    e.changed = e.timestamp != l.timestamp;
                    if e.changed {
                        e.timestamp = l.timestamp;
                        e.last_change = Some(now);
                    }
                    e.io_timeout = l.io_timeout;
                    e.bit_for_us = bit_for_us;
                    e.event = event_of(&l);
                }
                _ => {
                    if l.timestamp == 0 && l.owner_generation == 0 {
                        *entry = None;
                        continue;
                    }
                    *entry = Some(HostEntry {
                        host_id,
                        owner_name: l.resource_name,
                        generation: l.owner_generation,
                        timestamp: l.timestamp,
                        io_timeout: l.io_timeout,
                        first_seen: now,
                        last_change: None,
                        bit_for_us,
                        event: event_of(&l),
                        changed: l.timestamp != 0,
                    });
                }
            }
        }
    }

    /// Status of `host_id` at `now` (FREE when never seen or released).
    pub fn status(&self, host_id: u64, now: Time) -> HostStatus {
        let Some(Some(e)) = usize::try_from(host_id.saturating_sub(1))
            .ok()
            .and_then(|i| self.entries.get(i))
        else {
            return HostStatus::Free;
        };
        if e.timestamp == 0 {
            return HostStatus::Free;
        }
        let t = Timeouts::new(e.io_timeout.max(1), self.watchdog_fire_s);
        // Never seen changing: count from when we first saw it, which is no earlier than its
        // last renewal.
        let since = now.saturating_since(e.last_change.unwrap_or(e.first_seen));
        if since >= t.host_dead() {
            HostStatus::Dead
        } else if since >= t.renewal_fail() {
            HostStatus::Fail
        } else if e.last_change.is_none() && host_id != self.our_host_id {
            HostStatus::Unknown
        } else {
            HostStatus::Live
        }
    }

    /// What a paxos acquire asks about a leader's owner: its status, and whether our table
    /// still shows it in `generation` (false once it rejoined in a newer one). Our table is a
    /// copy of the delta leases from our last read: when it has not seen the owner, or only in
    /// an older generation than the leader names, that copy predates the owner's current
    /// generation and says nothing about it — the owner is Unknown (asked again after the next
    /// read), never free or rejoined. (Found by the whole-cluster simulation: a host that had
    /// just joined read another host's slot as free before that host joined, and took over
    /// the lease that host then acquired.)
    pub fn owner_status(&self, host_id: u64, generation: u64, now: Time) -> (HostStatus, bool) {
        let seen = usize::try_from(host_id.saturating_sub(1))
            .ok()
            .and_then(|i| self.entries.get(i))
            .and_then(Option::as_ref)
            .map(|e| e.generation);
        match seen {
            Some(g) if g == generation => (self.status(host_id, now), true),
            Some(g) if g > generation => (self.status(host_id, now), false),
            _ => (HostStatus::Unknown, true),
        }
    }

    /// Every host id seen, with its status.
    pub fn entries(&self, now: Time) -> Vec<(HostEntry, HostStatus)> {
        self.entries
            .iter()
            .flatten()
            .map(|e| (e.clone(), self.status(e.host_id, now)))
            .collect()
    }
}

#[cfg(test)]
mod owner_status_tests {
    use super::*;
    use std::time::Duration;

    fn seen(host_id: u64, generation: u64, first_seen: Time) -> Option<HostEntry> {
        Some(HostEntry {
            host_id,
            owner_name: Name::new("other").expect("name"),
            generation,
            timestamp: 1000,
            io_timeout: 1,
            first_seen,
            last_change: None,
            bit_for_us: false,
            event: HostEvent {
                generation: 0,
                event: 0,
                data: 0,
            },
            changed: false,
        })
    }

    /// A paxos leader names its owner's generation. A host whose table has not seen that
    /// generation yet (it joined a moment ago, or saw only the owner's earlier life, whose
    /// slot it may count as long dead) must not call the owner free or dead: found by the
    /// cluster simulation (docs/simulation.md, fix 2) — undo the `Unknown` arm and this fails.
    #[test]
    fn an_owner_unseen_or_seen_only_in_an_older_generation_is_unknown() {
        let now = Time::ZERO.saturating_add(Duration::from_secs(1000));
        let mut t = HostTable::new(1, 10);
        assert_eq!(t.owner_status(2, 5, now), (HostStatus::Unknown, true));
        // Seen long ago in generation 4 and never renewing since: dead — as generation 4.
        t.entries = vec![None, seen(2, 4, Time::ZERO)];
        assert_eq!(t.owner_status(2, 4, now), (HostStatus::Dead, true));
        // The leader names generation 5, which this table has not seen: not dead.
        assert_eq!(t.owner_status(2, 5, now), (HostStatus::Unknown, true));
        // The table has seen a newer generation than the leader's: the owner's status, and
        // the leader's generation is over.
        assert_eq!(t.owner_status(2, 3, now), (HostStatus::Dead, false));
    }
}

#[cfg(test)]
mod observe_tests {
    use super::*;
    use std::time::Duration;
    use tenure_format::area::encode_lockspace_area;
    use tenure_format::delta::HostBitmap;

    /// The table as a whole decode of every slot makes it (what `observe` did before it
    /// skipped slots no host joined): the reference the fast path must match.
    fn observe_slowly(t: &mut HostTable, now: Time, g: Geometry, name: &Name, area: &[u8]) {
        let ss = g.sector_size_bytes() as usize;
        let hosts = usize::try_from(g.hosts_max()).unwrap_or(0);
        if t.entries.len() < hosts {
            t.entries.resize(hosts, None);
        }
        for (i, sector) in area.chunks_exact(ss).take(hosts).enumerate() {
            let Ok(d) = DeltaSector::decode(sector, g, name) else {
                continue;
            };
            let l = d.leader;
            let entry = &mut t.entries[i];
            match entry {
                Some(e)
                    if e.generation == l.owner_generation && e.owner_name == l.resource_name =>
                {
                    e.changed = e.timestamp != l.timestamp;
                    if e.changed {
                        e.timestamp = l.timestamp;
                        e.last_change = Some(now);
                    }
                    e.io_timeout = l.io_timeout;
                    e.bit_for_us = d.bitmap.get(t.our_host_id);
                    e.event = event_of(&l);
                }
                _ => {
                    if l.timestamp == 0 && l.owner_generation == 0 {
                        *entry = None;
                        continue;
                    }
                    *entry = Some(HostEntry {
                        host_id: i as u64 + 1,
                        owner_name: l.resource_name,
                        generation: l.owner_generation,
                        timestamp: l.timestamp,
                        io_timeout: l.io_timeout,
                        first_seen: now,
                        last_change: None,
                        bit_for_us: d.bitmap.get(t.our_host_id),
                        event: event_of(&l),
                        changed: l.timestamp != 0,
                    });
                }
            }
        }
    }

    /// Slots formatted and never joined, joined, renewed, released, rejoined, zeroed, damaged,
    /// of another lockspace, with our bitmap bit set and cleared, in random order over many
    /// reads: the table `observe` keeps (skipping slots no host joined without decoding them)
    /// is the one a whole decode of every slot keeps.
    #[test]
    fn observe_keeps_the_table_a_whole_decode_keeps() {
        let g = Geometry::LEGACY_512;
        let ls = Name::new("LS").expect("name");
        let other = Name::new("OTHER").expect("name");
        let slots = 64usize;
        let mut area = vec![0u8; usize::try_from(g.area_bytes()).expect("size")];
        encode_lockspace_area(&mut area, g, ls, 10);
        let mut fast = HostTable::new(3, 60);
        let mut slow = HostTable::new(3, 60);
        let mut x: u64 = 0x5eed_1234;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut now = Time::ZERO.saturating_add(Duration::from_secs(100));
        let mut skipped_some = false;
        for _round in 0..400 {
            for _ in 0..1 + next(6) {
                let i = usize::try_from(next(slots as u64)).expect("slot");
                let sector = &mut area[i * 512..(i + 1) * 512];
                let mut l = LeaderRecord::new_delta_free(g, ls, 10);
                l.owner_id = i as u64 + 1;
                match next(8) {
                    0 => {}
                    1 | 2 => {
                        l.owner_generation = 1 + next(3);
                        l.timestamp = 1 + next(1000);
                        l.resource_name = Name::new("host").expect("name");
                    }
                    3 => l.owner_generation = 1 + next(3),
                    4 => {
                        sector.fill(0);
                        continue;
                    }
                    5 => {
                        sector[100] ^= 0x40;
                        continue;
                    }
                    6 => {
                        l.space_name = other;
                        l.timestamp = 5;
                    }
                    _ => {
                        // Host 3's bit: the third of the bitmap's first byte.
                        sector[tenure_format::delta::HOST_BITMAP_OFFSET] ^= 0x04;
                        continue;
                    }
                }
                let mut bitmap = HostBitmap::default();
                bitmap.set(3, next(2) == 0);
                DeltaSector { leader: l, bitmap }.encode_into(sector);
            }
            now = now.saturating_add(Duration::from_millis(1 + next(3000)));
            fast.observe(now, g, &ls, &area);
            observe_slowly(&mut slow, now, g, &ls, &area);
            assert_eq!(fast.entries, slow.entries);
            skipped_some |= fast.entries.iter().any(Option::is_none);
        }
        assert!(skipped_some);
        assert!(fast.entries.iter().any(Option::is_some));
    }
}
