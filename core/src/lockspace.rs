//! The lockspace API: several lockspaces' delta leases driven over one I/O engine, their I/O
//! batched into one submission per step. The daemon's reactor (and the tests) call
//! [`LockspaceSet::step`] whenever [`LockspaceSet::next_wakeup`] arrives or I/O may have
//! completed; everything else is queries.
//!
//! Invariants: each lockspace has at most one I/O outstanding; an I/O's completion is routed
//! only to the lockspace that issued it (by IoId); a lockspace limit bounds the table.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;

mod ops;
pub use ops::{
    AcquireOptions, HeldResource, OpError, OpId, OpOutcome, ResourceTarget, OPS_MAX,
    RESOURCES_PER_OP_MAX,
};

use crate::clock::Time;
use crate::delta::{
    AdoptError, DeltaConfig, DeltaError, DeltaEvent, DeltaHandover, DeltaIo, DeltaLease, HostEntry,
    HostEvent, HostStatus, JoinPhase,
};
use crate::io::{
    Completion, DiskId, IoBackend, IoError, IoId, IoKind, IoOutcome, IoRequest, SubmitError,
};

/// Renewals remembered per lockspace.
pub const RENEWAL_HISTORY_LEN: usize = 64;

/// Lockspaces one set can hold.
pub const LOCKSPACES_MAX: usize = 256;

/// Handle of a lockspace in a [`LockspaceSet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct LockspaceId(pub usize);

/// One renewal attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RenewalRecord {
    /// When it ended (our clock).
    pub at: Time,
    /// Area read latency, when the read completed.
    pub read_latency: Option<Duration>,
    /// Slot write latency, when the write completed.
    pub write_latency: Option<Duration>,
    /// None when it succeeded; the reason otherwise.
    pub error: Option<String>,
}

/// Where a lockspace stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LockspaceState {
    /// Added, not joining.
    Idle,
    /// Joining: phase and, while waiting, when the wait ends.
    Joining {
        /// Phase.
        phase: JoinPhase,
        /// End of the current wait.
        wait_until: Option<Time>,
    },
    /// Holding our host id.
    Joined {
        /// Our generation.
        generation: u64,
    },
    /// The join failed.
    JoinFailed {
        /// Why.
        error: DeltaError,
    },
    /// The lockspace was lost (renewals failed for 8T, or our slot was overwritten).
    Lost {
        /// Why.
        error: DeltaError,
    },
    /// We left (released our host id).
    Left,
}

/// Errors of the lockspace API.
#[derive(Debug, thiserror::Error)]
pub enum LockspaceError {
    /// No such lockspace.
    #[error("unknown lockspace {0:?}")]
    Unknown(LockspaceId),
    /// Too many lockspaces.
    #[error("lockspace table full ({0} lockspaces)")]
    Full(usize),
    /// A protocol-level refusal.
    #[error(transparent)]
    Delta(#[from] DeltaError),
    /// The engine refused an I/O.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// The engine failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// A change to the host event this host publishes (sanlock's SET_EVENT and its flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetEvent {
    /// The addressed host id (1..=max hosts), whose bit is set.
    pub host_id: u64,
    /// What to publish (`generation` 0 with `cur_generation`: the target's current one).
    pub event: HostEvent,
    /// Fill in the target's current generation when `event.generation` is 0.
    pub cur_generation: bool,
    /// Clear the target's bit (every bit with `all_hosts`) instead of setting it.
    pub clear_host: bool,
    /// Stop publishing an event.
    pub clear_event: bool,
    /// Replace a different event (event or data) published less than 6T ago (else: busy).
    /// The same event and data for another host is always accepted.
    pub replace: bool,
    /// Address every host.
    pub all_hosts: bool,
}

/// Why a [`SetEvent`] was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// No such lockspace.
    #[error("unknown lockspace")]
    Unknown,
    /// The lockspace is not joined.
    #[error("lockspace not joined")]
    NotJoined,
    /// The host id is outside 1..=max.
    #[error("host id {host_id} outside 1..={max}")]
    HostId {
        /// Given.
        host_id: u64,
        /// Largest valid.
        max: u64,
    },
    /// Another event was published less than 6T ago (pass `replace`).
    #[error("a different event was published {age_ms} ms ago (less than 6 io timeouts): set replace to overwrite it")]
    Busy {
        /// Its age.
        age_ms: u64,
    },
}

#[derive(Debug)]
struct Entry {
    lease: DeltaLease,
    disk: DiskId,
    inflight: Option<(IoId, bool)>,
    /// The lease's pending I/O was given back for want of room in the engine: it is issued
    /// again at the next step, and times out at its deadline.
    deferred: bool,
    state: LockspaceState,
    history: VecDeque<RenewalRecord>,
    events: VecDeque<DeltaEvent>,
    /// When the published host event was last set.
    event_set_at: Option<Time>,
}

/// Lockspaces on one engine.
#[derive(Debug)]
pub struct LockspaceSet {
    backend: Box<dyn IoBackend + Send>,
    /// Slots of lockspaces; a removed lockspace leaves `None` for reuse.
    entries: Vec<Option<Entry>>,
    completions: Vec<Completion>,
    /// Paxos lease operations in progress (see [`ops`]).
    ops: ops::Ops,
    /// Bitmap bits to clear at a time: (lockspace, host id, when).
    bit_expiry: Vec<(LockspaceId, u64, Time)>,
    /// The lockspace whose delta-lease I/O each id is: a completion finds it in O(1).
    delta_of: std::collections::HashMap<crate::io::IoId, LockspaceId>,
}

impl LockspaceSet {
    /// A set driving its lockspaces over `backend`.
    pub fn new(backend: Box<dyn IoBackend + Send>) -> Self {
        LockspaceSet {
            backend,
            entries: Vec::new(),
            completions: Vec::with_capacity(256),
            ops: ops::Ops::default(),
            bit_expiry: Vec::new(),
            delta_of: std::collections::HashMap::new(),
        }
    }

    /// The engine's completion eventfd (see [`IoBackend::notify_fd`]).
    pub fn notify_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.backend.notify_fd()
    }

    /// I/Os of the engine queued, submitted, or timed out and not yet reaped.
    pub fn io_in_flight(&self) -> usize {
        self.backend.in_flight()
    }

    /// The engine (for sharing it with other protocol drivers, and for tests).
    pub fn backend_mut(&mut self) -> &mut dyn IoBackend {
        self.backend.as_mut()
    }

    /// Adds a lockspace whose area is on `disk`.
    pub fn add(&mut self, cfg: DeltaConfig, disk: DiskId) -> Result<LockspaceId, LockspaceError> {
        let entry = Entry {
            lease: DeltaLease::new(cfg),
            disk,
            inflight: None,
            deferred: false,
            state: LockspaceState::Idle,
            history: VecDeque::with_capacity(RENEWAL_HISTORY_LEN),
            events: VecDeque::with_capacity(8),
            event_set_at: None,
        };
        if let Some(i) = self.entries.iter().position(Option::is_none) {
            self.entries[i] = Some(entry);
            return Ok(LockspaceId(i));
        }
        if self.entries.len() >= LOCKSPACES_MAX {
            return Err(LockspaceError::Full(LOCKSPACES_MAX));
        }
        self.entries.push(Some(entry));
        Ok(LockspaceId(self.entries.len() - 1))
    }

    /// Adds a lockspace joined by another process (a daemon upgrade or a restart after a
    /// crash) from what it handed over: joined at once with the same generation, renewing
    /// from where that process left off ([`DeltaLease::adopted`]).
    pub fn adopt(
        &mut self,
        cfg: DeltaConfig,
        disk: DiskId,
        handover: DeltaHandover,
        now: Time,
    ) -> Result<LockspaceId, AdoptError> {
        let generation = handover.last_written.owner_generation;
        let lease = DeltaLease::adopted(cfg, handover, now)?;
        let id = self
            .add(lease.config().clone(), disk)
            .map_err(|_| AdoptError::TableFull(LOCKSPACES_MAX))?;
        // Just added: present.
        let e = self.entry(id).expect("added");
        e.lease = lease;
        e.state = LockspaceState::Joined { generation };
        Ok(id)
    }

    /// True while lockspace `id`'s own I/O (a join, renewal or release step) is in flight.
    pub fn delta_io_in_flight(&self, id: LockspaceId) -> bool {
        self.entry_ref(id).is_some_and(|e| e.inflight.is_some())
    }

    /// What another process needs to go on renewing lockspace `id` (`None` unless joined and
    /// not leaving).
    pub fn handover(&self, id: LockspaceId) -> Option<DeltaHandover> {
        self.entry_ref(id)?.lease.handover()
    }

    /// Forgets a lockspace that is idle, left, lost or failed to join (its slot is reused).
    /// Refused while it is joining or joined, or while lease operations of it run.
    pub fn remove(&mut self, id: LockspaceId) -> Result<(), LockspaceError> {
        let busy_ops = self.ops.count_for(id) > 0;
        let e = self.entry(id)?;
        if e.lease.is_joined()
            || matches!(e.state, LockspaceState::Joining { .. })
            || e.inflight.is_some()
            || busy_ops
        {
            return Err(LockspaceError::Delta(DeltaError::Misuse(
                "lockspace is in use: leave it first",
            )));
        }
        self.entries[id.0] = None;
        Ok(())
    }

    fn entry(&mut self, id: LockspaceId) -> Result<&mut Entry, LockspaceError> {
        self.entries
            .get_mut(id.0)
            .and_then(Option::as_mut)
            .ok_or(LockspaceError::Unknown(id))
    }

    fn entry_ref(&self, id: LockspaceId) -> Option<&Entry> {
        self.entries.get(id.0).and_then(Option::as_ref)
    }

    /// The configuration a lockspace was added with.
    pub fn config(&self, id: LockspaceId) -> Option<&DeltaConfig> {
        self.entry_ref(id).map(|e| e.lease.config())
    }

    /// The disk a lockspace's area is on.
    pub fn disk(&self, id: LockspaceId) -> Option<DiskId> {
        self.entry_ref(id).map(|e| e.disk)
    }

    /// Starts joining; follow it with [`LockspaceSet::state`].
    pub fn join(&mut self, id: LockspaceId, now: Time) -> Result<(), LockspaceError> {
        let e = self.entry(id)?;
        e.lease.start_join(now)?;
        e.state = LockspaceState::Joining {
            phase: JoinPhase::ReadSlot,
            wait_until: None,
        };
        // Its first read starts now, as a release's write does (see `leave`).
        self.issue(now);
        self.backend.flush()?;
        Ok(())
    }

    /// Starts leaving (releases our host id); `state` becomes Left when done.
    pub fn leave(&mut self, id: LockspaceId, now: Time) -> Result<(), LockspaceError> {
        let e = self.entry(id)?;
        e.lease.start_release(now)?;
        // Hand the release's write to the engine and submit it now: its deadline runs from
        // `now`, and the caller may not step the set again before its next timer (a removal
        // decided while completions were handled left the write unsubmitted until the set
        // woke for the write's own deadline, io_timeout later, and it timed out there: the
        // lockspace counted as lost and rem_lockspace failed).
        self.issue(now);
        self.backend.flush()?;
        Ok(())
    }

    /// True while leaving: from [`LockspaceSet::leave`] until the state is Left.
    pub fn is_leaving(&self, id: LockspaceId) -> bool {
        self.entry_ref(id).is_some_and(|e| e.lease.is_releasing())
    }

    /// Where the lockspace stands.
    pub fn state(&self, id: LockspaceId) -> Option<LockspaceState> {
        let e = self.entry_ref(id)?;
        Some(match (&e.state, e.lease.join_progress()) {
            (LockspaceState::Joining { .. }, Some((phase, wait_until))) => {
                LockspaceState::Joining { phase, wait_until }
            }
            (s, _) => s.clone(),
        })
    }

    /// True once a renewal has read the other hosts' slots (sanlock answers GET_HOSTS with
    /// EAGAIN before that).
    pub fn hosts_checked(&self, id: LockspaceId) -> bool {
        self.entry_ref(id)
            .is_some_and(|e| e.lease.hosts().observed())
    }

    /// Host statuses seen from this lockspace's renewals.
    pub fn hosts(&self, id: LockspaceId, now: Time) -> Vec<(HostEntry, HostStatus)> {
        self.entry_ref(id)
            .map(|e| e.lease.hosts().entries(now))
            .unwrap_or_default()
    }

    /// Status of one host id.
    pub fn host_status(&self, id: LockspaceId, host_id: u64, now: Time) -> HostStatus {
        self.entry_ref(id)
            .map_or(HostStatus::Free, |e| e.lease.hosts().status(host_id, now))
    }

    /// The last renewals, oldest first.
    pub fn renewal_history(&self, id: LockspaceId) -> Vec<RenewalRecord> {
        self.entry_ref(id)
            .map(|e| e.history.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The instant after which the lockspace must be considered lost (for the watchdog).
    pub fn renewal_deadline(&self, id: LockspaceId) -> Option<Time> {
        self.entry_ref(id)
            .filter(|e| e.lease.is_joined())
            .and_then(|e| e.lease.renewal_deadline())
    }

    /// Events since the last call (joined, renewed, lost, ...).
    pub fn take_events(&mut self, id: LockspaceId) -> Vec<DeltaEvent> {
        self.entries
            .get_mut(id.0)
            .and_then(Option::as_mut)
            .map(|e| e.events.drain(..).collect())
            .unwrap_or_default()
    }

    /// Sets host `host_id`'s bit in our bitmap of lockspace `id` until `until` (then it is
    /// cleared by `step`): how a request or event reaches that host (PROTOCOL "Requests": for
    /// 6T).
    pub fn set_bitmap_bit_until(
        &mut self,
        id: LockspaceId,
        host_id: u64,
        until: Time,
    ) -> Result<(), LockspaceError> {
        self.entry(id)?.lease.set_bitmap_bit(host_id, true);
        self.bit_expiry
            .retain(|(i, h, _)| !(*i == id && *h == host_id));
        if self.bit_expiry.len() < 4096 {
            self.bit_expiry.push((id, host_id, until));
        }
        Ok(())
    }

    /// Publishes, replaces or clears the host event of lockspace `id` and sets or clears the
    /// addressed bits (set bits expire after 6T). Published at our next renewal; receivers
    /// see it on each of our renewals while their bit stays set.
    pub fn set_event(
        &mut self,
        id: LockspaceId,
        req: SetEvent,
        now: Time,
    ) -> Result<(), EventError> {
        let e = self
            .entries
            .get_mut(id.0)
            .and_then(Option::as_mut)
            .ok_or(EventError::Unknown)?;
        if !e.lease.is_joined() {
            return Err(EventError::NotJoined);
        }
        let cfg = e.lease.config();
        let (max, ours) = (cfg.geometry.hosts_max().min(2000), cfg.host_id);
        let six_t = Duration::from_secs(6 * u64::from(cfg.timeouts.io_timeout_s));
        if !(1..=max).contains(&req.host_id) {
            return Err(EventError::HostId {
                host_id: req.host_id,
                max,
            });
        }
        let targets: Vec<u64> = if req.all_hosts {
            (1..=max).filter(|h| *h != ours).collect()
        } else {
            vec![req.host_id]
        };
        if req.clear_host || req.clear_event {
            if req.clear_event {
                e.lease.set_published_event(HostEvent::default());
                e.event_set_at = None;
            }
            if req.clear_host {
                for h in &targets {
                    e.lease.set_bitmap_bit(*h, false);
                }
                self.bit_expiry
                    .retain(|(i, h, _)| !(*i == id && targets.contains(h)));
            }
            return Ok(());
        }
        let mut event = req.event;
        if req.cur_generation && event.generation == 0 {
            event.generation = e
                .lease
                .hosts()
                .entries(now)
                .iter()
                .find(|(h, _)| h.host_id == req.host_id)
                .map_or(0, |(h, _)| h.generation);
        }
        let current = e.lease.published_event();
        if let Some(at) = e.event_set_at {
            let age = now.saturating_since(at);
            let different = (current.event, current.data) != (event.event, event.data);
            if current.event != 0 && different && age < six_t && !req.replace {
                return Err(EventError::Busy {
                    age_ms: age.as_millis() as u64,
                });
            }
        }
        e.lease.set_published_event(event);
        e.event_set_at = Some(now);
        let until = now.saturating_add(six_t);
        self.bit_expiry
            .retain(|(i, h, _)| !(*i == id && targets.contains(h)));
        for h in targets {
            e.lease.set_bitmap_bit(h, true);
            self.bit_expiry.push((id, h, until));
        }
        Ok(())
    }

    /// Sets host `host_id`'s bit in our bitmap of lockspace `id`.
    pub fn set_bitmap_bit(
        &mut self,
        id: LockspaceId,
        host_id: u64,
        on: bool,
    ) -> Result<(), LockspaceError> {
        self.entry(id)?.lease.set_bitmap_bit(host_id, on);
        Ok(())
    }

    /// When `step` must run next at the latest (timers, renewal deadlines, I/O deadlines).
    pub fn next_wakeup(&self) -> Option<Time> {
        self.entries
            .iter()
            .flatten()
            .filter_map(|e| e.lease.poll_timeout())
            .chain(self.entries.iter().flatten().filter_map(|e| {
                // I/O asked for and not issued: at its deadline when it waits for room in the
                // engine, at once (the time it was asked, past) otherwise.
                let asked = e
                    .lease
                    .io_waiting_since()
                    .filter(|_| e.inflight.is_none())?;
                Some(if e.deferred {
                    e.lease.io_deadline()
                } else {
                    asked
                })
            }))
            .chain(self.ops.next_timeout())
            .chain(self.bit_expiry.iter().map(|(_, _, t)| *t))
            .chain(self.backend.next_deadline())
            .min()
    }

    fn issue(&mut self, now: Time) {
        for (ls, e) in self
            .entries
            .iter_mut()
            .enumerate()
            .filter_map(|(i, e)| Some((LockspaceId(i), e.as_mut()?)))
            .filter(|(_, e)| e.inflight.is_none())
        {
            let Some(io) = e.lease.poll_io() else {
                continue;
            };
            let deadline = e.lease.io_deadline();
            let started = match io {
                DeltaIo::Read { offset, len } => self
                    .backend
                    .start_read(IoRequest {
                        disk: e.disk,
                        offset,
                        len,
                        deadline,
                    })
                    .map(|id| (id, true)),
                DeltaIo::Write { offset } => {
                    let data = e.lease.write_data();
                    self.backend
                        .start_write(
                            IoRequest {
                                disk: e.disk,
                                offset,
                                len: data.len(),
                                deadline,
                            },
                            data,
                        )
                        .map(|id| (id, false))
                }
            };
            match started {
                Ok(x) => {
                    self.delta_of.insert(x.0, ls);
                    e.inflight = Some(x);
                    e.deferred = false;
                }
                // No room in the engine now: issued again at the next step (a completion steps
                // the set), or timed out at its deadline like an I/O that never completed.
                Err(SubmitError::Full { .. }) if deadline > now => {
                    e.lease.give_back(io);
                    e.deferred = true;
                }
                Err(SubmitError::Full { .. }) => {
                    e.deferred = false;
                    e.lease.handle_io(now, IoOutcome::TimedOut, &[]);
                }
                // An older write to our slot may still land, or a request the engine can never
                // take: this attempt fails like an I/O error and the protocol retries by its
                // rules.
                Err(_) => e
                    .lease
                    .handle_io(now, IoOutcome::Failed { errno: libc::EBUSY }, &[]),
            }
        }
    }

    /// One round: collect completions and expiries, advance every lockspace, hand all new I/O
    /// to the engine in one batch. Never blocks.
    pub fn step(&mut self, now: Time) -> Result<(), LockspaceError> {
        let mut i = 0;
        while i < self.bit_expiry.len() {
            let (id, host, until) = self.bit_expiry[i];
            if until <= now {
                self.bit_expiry.swap_remove(i);
                if let Some(e) = self.entries.get_mut(id.0).and_then(Option::as_mut) {
                    e.lease.set_bitmap_bit(host, false);
                }
            } else {
                i += 1;
            }
        }
        self.completions.clear();
        self.backend.poll(now, &mut self.completions)?;
        for i in 0..self.completions.len() {
            let c = self.completions[i];
            let Some(e) = self
                .delta_of
                .remove(&c.id)
                .and_then(|ls| self.entries.get_mut(ls.0))
                .and_then(Option::as_mut)
                .filter(|e| e.inflight.is_some_and(|(id, _)| id == c.id))
            else {
                // A paxos operation's I/O, or a late completion of an I/O whose owner moved
                // on (nothing to route).
                self.ops.complete(self.backend.as_mut(), c);
                continue;
            };
            e.inflight = None;
            // The lease reads the engine's buffer in place (a renewal reads the whole area:
            // 1 MiB with 512-byte sectors, 8 MiB with 4 KiB ones), then the buffer goes back.
            let data = match (c.kind, c.outcome) {
                (IoKind::Read, IoOutcome::Done) => self.backend.read_data(c.id).unwrap_or(&[]),
                _ => &[],
            };
            e.lease.handle_io(now, c.outcome, data);
            self.backend.release(c.id);
        }
        for e in self.entries.iter_mut().flatten() {
            if e.lease.poll_timeout().is_some_and(|t| t <= now) {
                e.lease.handle_timeout(now);
            }
            while let Some(ev) = e.lease.poll_event() {
                Self::record(e, now, &ev);
                if e.events.len() == e.events.capacity() {
                    e.events.pop_front();
                }
                e.events.push_back(ev);
            }
        }
        self.issue(now);
        self.ops.advance(now, self.backend.as_mut(), &self.entries);
        self.backend.flush()?;
        Ok(())
    }

    fn record(e: &mut Entry, now: Time, ev: &DeltaEvent) {
        let rec = match ev {
            DeltaEvent::Joined { generation } => {
                e.state = LockspaceState::Joined {
                    generation: *generation,
                };
                None
            }
            DeltaEvent::JoinFailed { error } => {
                e.state = LockspaceState::JoinFailed {
                    error: error.clone(),
                };
                None
            }
            DeltaEvent::Lost { error } => {
                e.state = LockspaceState::Lost {
                    error: error.clone(),
                };
                Some(RenewalRecord {
                    at: now,
                    read_latency: None,
                    write_latency: None,
                    error: Some(error.to_string()),
                })
            }
            DeltaEvent::Released => {
                e.state = LockspaceState::Left;
                None
            }
            DeltaEvent::Renewed {
                read_latency,
                write_latency,
            } => Some(RenewalRecord {
                at: now,
                read_latency: Some(*read_latency),
                write_latency: Some(*write_latency),
                error: None,
            }),
            DeltaEvent::BitSet { .. } => None,
            DeltaEvent::RenewalFailed { error } => Some(RenewalRecord {
                at: now,
                read_latency: None,
                write_latency: None,
                error: Some(error.to_string()),
            }),
        };
        if let Some(r) = rec {
            if e.history.len() == RENEWAL_HISTORY_LEN {
                e.history.pop_front();
            }
            e.history.push_back(r);
        }
    }

    /// Blocks on the engine until `until` or until I/O may have completed (real backends; the
    /// simulator advances its clock instead).
    pub fn wait(&mut self, now: Time, until: Time) -> Result<(), LockspaceError> {
        let until = self.next_wakeup().map_or(until, |w| w.min(until));
        Ok(self.backend.wait(now, until)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, SimClock};
    use crate::io::sim::{SimBackend, SimConfig};
    use crate::io::EngineConfig;
    use crate::paxos::PaxosError;
    use crate::timeouts::Timeouts;
    use tenure_format::area::{encode_lockspace_area, lockspace_sector0};
    use tenure_format::{Geometry, LeaderRecord, Name};

    /// A simulated 512-byte-sector disk of `size` bytes on a clock of its own, healthy.
    fn sim_disk(size: u64, seed: u64) -> (SimClock, SimBackend) {
        let clock = SimClock::new(Time::from_nanos(50_000_000_000));
        let engine = EngineConfig {
            ring_entries: 32,
            buffer_classes: vec![(512, 32), (1 << 20, 8)],
            sync_workers: 0,
        };
        let sim = SimBackend::new(
            &[(512, size)],
            &engine,
            SimConfig::healthy(seed),
            clock.clone(),
        );
        (clock, sim)
    }

    /// Steps the set on its simulated clock until `until` holds (at most 30 s).
    fn run_until(set: &mut LockspaceSet, clock: &SimClock, until: &dyn Fn(&LockspaceSet) -> bool) {
        let end = clock.now().saturating_add(Duration::from_secs(30));
        while !until(set) {
            assert!(clock.now() < end, "timed out");
            let now = clock.now();
            set.step(now).expect("step");
            set.wait(now, end).expect("wait");
        }
    }

    /// Steps the set until operation `id` ends (at most 30 s) and returns its outcome.
    fn op_outcome(set: &mut LockspaceSet, clock: &SimClock, id: OpId) -> OpOutcome {
        let end = clock.now().saturating_add(Duration::from_secs(30));
        loop {
            let now = clock.now();
            set.step(now).expect("step");
            while let Some((got, o)) = set.take_op_result() {
                if got == id {
                    return o;
                }
            }
            assert!(now < end, "operation did not end");
            set.wait(now, end).expect("wait");
        }
    }

    fn formatted(name: &str) -> Vec<u8> {
        formatted_with_t(name, 1)
    }

    fn formatted_with_t(name: &str, io_timeout: u16) -> Vec<u8> {
        let g = Geometry::LEGACY_512;
        let mut area = vec![0u8; 1 << 20];
        let n = Name::new(name).expect("name");
        encode_lockspace_area(&mut area, g, n, io_timeout);
        lockspace_sector0(&mut area[..512], g, n, io_timeout);
        area
    }

    /// Regression: free slots formatted with io_timeout 10, joined with io_timeout 1. The
    /// claim wait (2 × the slot's 10 s) outlasts our 8 × 1 s budget; the join used to end
    /// "lost" the moment it completed. It now renews first and reports Joined after that.
    #[test]
    fn joining_a_slot_with_a_longer_recorded_t_renews_before_reporting_joined() {
        let (clock, mut sim) = sim_disk(1 << 20, 5);
        sim.load(DiskId(0), 0, &formatted_with_t("A", 10));
        let mut set = LockspaceSet::new(Box::new(sim));
        let id = set
            .add(
                DeltaConfig {
                    space_name: Name::new("A").expect("name"),
                    host_id: 2,
                    host_name: Name::new("node-2").expect("name"),
                    geometry: Geometry::LEGACY_512,
                    area_offset: 0,
                    timeouts: Timeouts::new(1, 10),
                },
                DiskId(0),
            )
            .expect("add");
        let start = clock.now();
        set.join(id, start).expect("join");
        let end = start.saturating_add(Duration::from_secs(40));
        let mut joined_at = None;
        while clock.now() < end {
            let now = clock.now();
            set.step(now).expect("step");
            match set.state(id) {
                Some(LockspaceState::Joined { .. }) if joined_at.is_none() => joined_at = Some(now),
                Some(LockspaceState::Lost { error } | LockspaceState::JoinFailed { error }) => {
                    panic!("{error}")
                }
                _ => {}
            }
            set.wait(now, end).expect("wait");
        }
        let joined_at = joined_at.expect("joined");
        assert!(
            joined_at.saturating_since(start) >= Duration::from_secs(20),
            "waited 2 × 10 s"
        );
        let now = clock.now();
        assert!(matches!(set.state(id), Some(LockspaceState::Joined { .. })));
        let deadline = set.renewal_deadline(id).expect("deadline");
        assert!(deadline > now, "renewals keep the lockspace");
    }

    /// The other hosts are unknown until a renewal read after the join took them in (sanlock
    /// answers GET_HOSTS with EAGAIN until its first check of them; the front end asks this).
    #[test]
    fn other_hosts_are_checked_only_by_a_renewal_after_the_join() {
        let (clock, mut sim) = sim_disk(1 << 20, 5);
        sim.load(DiskId(0), 0, &formatted("A"));
        let mut set = LockspaceSet::new(Box::new(sim));
        let id = set
            .add(
                DeltaConfig {
                    space_name: Name::new("A").expect("name"),
                    host_id: 2,
                    host_name: Name::new("node-2").expect("name"),
                    geometry: Geometry::LEGACY_512,
                    area_offset: 0,
                    timeouts: Timeouts::new(1, 10),
                },
                DiskId(0),
            )
            .expect("add");
        let start = clock.now();
        set.join(id, start).expect("join");
        let end = start.saturating_add(Duration::from_secs(20));
        let mut joined = false;
        while clock.now() < end && !set.hosts_checked(id) {
            let now = clock.now();
            set.step(now).expect("step");
            if matches!(set.state(id), Some(LockspaceState::Joined { .. })) && !joined {
                joined = true;
                assert!(!set.hosts_checked(id), "checked at the moment of the join");
            }
            assert!(joined || !set.hosts_checked(id), "checked before the join");
            set.wait(now, end).expect("wait");
        }
        assert!(
            joined && set.hosts_checked(id),
            "a renewal after the join checks them"
        );
        assert!(!set.hosts(id, clock.now()).is_empty());
    }

    /// A daemon restarted after a crash adopts its lockspace from the last handover it wrote
    /// (at each renewal): crashed at many points of the renewal cycle — a renewal write in
    /// flight included, which lands after the crash — the adopter goes on renewing with the
    /// same generation, and a peer watching sees the host live all along. A slot another
    /// generation wrote meanwhile is refused at the first renewal (the guard bites).
    #[test]
    fn a_restarted_host_adopts_its_lockspace_and_a_peer_sees_no_change() {
        use crate::io::shared_sim::SharedSim;
        let cfg = |host_id, name: &str| DeltaConfig {
            space_name: Name::new("A").expect("name"),
            host_id,
            host_name: Name::new(name).expect("name"),
            geometry: Geometry::LEGACY_512,
            area_offset: 0,
            timeouts: Timeouts::new(1, 10),
        };
        for (round, crash_after_ms) in (0u64..24)
            .map(|i| (i, 2_000 + i * 173))
            .chain([(50, 10_000), (99, 0)])
        {
            // Round 50 crashes while a renewal write is in flight (it lands after the crash,
            // with a timestamp the saved handover never saw).
            let in_flight = round == 50;
            let overwritten = round == 99;
            let (clock, mut sim) = sim_disk(1 << 20, 30 + round);
            sim.load(DiskId(0), 0, &formatted("A"));
            let storage = SharedSim::new(sim);
            let mut a = LockspaceSet::new(Box::new(storage.port()));
            let mut b = LockspaceSet::new(Box::new(storage.port()));
            let ia = a.add(cfg(1, "node-1"), DiskId(0)).expect("add");
            let ib = b.add(cfg(2, "node-2"), DiskId(0)).expect("add");
            a.join(ia, clock.now()).expect("join");
            b.join(ib, clock.now()).expect("join");
            let step_both = |a: &mut LockspaceSet, b: &mut LockspaceSet| {
                let now = clock.now();
                storage.settle(now).expect("settle");
                a.step(now).expect("step");
                b.step(now).expect("step");
                storage.settle(now).expect("settle");
                let next = [storage.next_due(), a.next_wakeup(), b.next_wakeup()]
                    .into_iter()
                    .flatten()
                    .filter(|t| *t > now)
                    .min()
                    .unwrap_or(now.saturating_add(Duration::from_millis(10)));
                clock.advance_to(next.min(now.saturating_add(Duration::from_millis(100))));
            };
            let deadline = clock.now().saturating_add(Duration::from_secs(30));
            let live = |b: &LockspaceSet, now| {
                b.hosts(ib, now)
                    .iter()
                    .any(|(e, s)| e.host_id == 1 && *s == HostStatus::Live)
            };
            while !(matches!(a.state(ia), Some(LockspaceState::Joined { .. }))
                && live(&b, clock.now()))
            {
                assert!(clock.now() < deadline, "joins");
                step_both(&mut a, &mut b);
            }
            let Some(LockspaceState::Joined { generation }) = a.state(ia) else {
                unreachable!()
            };
            // Run, keeping the handover as a state file would (after each renewal), then crash.
            let mut saved = a.handover(ia).expect("joined");
            let crash_at = clock
                .now()
                .saturating_add(Duration::from_millis(crash_after_ms));
            let mut caught_in_flight = false;
            while clock.now() < crash_at {
                step_both(&mut a, &mut b);
                if let Some(h) = a.handover(ia) {
                    if in_flight && h.max_written_ts > h.last_written.timestamp {
                        caught_in_flight = true;
                        break;
                    }
                    if h.last_renewal != saved.last_renewal {
                        saved = h;
                    }
                }
            }
            assert_eq!(
                caught_in_flight, in_flight,
                "round {round}: a write in flight"
            );
            storage.crash(0);
            drop(a);
            // Restarted 1.5 s later (within the 8 s deadline).
            let back = clock.now().saturating_add(Duration::from_millis(1_500));
            while clock.now() < back {
                let now = clock.now();
                storage.settle(now).expect("settle");
                b.step(now).expect("step");
                clock.advance_to(now.saturating_add(Duration::from_millis(50)));
            }
            if overwritten {
                // Someone else's generation took the slot while we were down (after our last write landed).
                let mut sector = vec![0u8; 512];
                LeaderRecord {
                    owner_generation: generation + 1,
                    timestamp: saved.last_written.timestamp + 1,
                    ..saved.last_written
                }
                .encode_into(&mut sector);
                storage.with(|s| s.load(DiskId(0), 0, &sector));
            }
            let mut a = LockspaceSet::new(Box::new(storage.restart()));
            let ia = a
                .adopt(cfg(1, "node-1"), DiskId(0), saved, clock.now())
                .expect("adopt");
            assert_eq!(a.state(ia), Some(LockspaceState::Joined { generation }));
            let end = clock.now().saturating_add(Duration::from_secs(20));
            while clock.now() < end {
                step_both(&mut a, &mut b);
                let seen = b.hosts(ib, clock.now());
                let (entry, status) = seen
                    .iter()
                    .find(|(e, _)| e.host_id == 1)
                    .expect("host 1 in the table");
                if overwritten {
                    if let Some(LockspaceState::Lost { error }) = a.state(ia) {
                        assert!(matches!(error, DeltaError::Foreign { .. }), "{error}");
                        break;
                    }
                    continue;
                }
                assert_eq!(
                    entry.generation, generation,
                    "round {round}: same generation"
                );
                assert_eq!(*status, HostStatus::Live, "round {round}: live all along");
                assert_eq!(
                    a.state(ia),
                    Some(LockspaceState::Joined { generation }),
                    "round {round}: the adopter keeps it"
                );
            }
            if overwritten {
                assert!(
                    matches!(a.state(ia), Some(LockspaceState::Lost { .. })),
                    "a slot overwritten meanwhile is never renewed over"
                );
            } else {
                assert!(
                    a.renewal_history(ia)
                        .iter()
                        .filter(|r| r.error.is_none())
                        .count()
                        >= 5,
                    "round {round}: renewing"
                );
            }
        }
    }

    /// Adoption is refused past the renewal deadline and for a slot that is not ours.
    #[test]
    fn adoption_is_refused_past_the_deadline_or_for_another_slot() {
        let cfg = DeltaConfig {
            space_name: Name::new("A").expect("name"),
            host_id: 1,
            host_name: Name::new("node-1").expect("name"),
            geometry: Geometry::LEGACY_512,
            area_offset: 0,
            timeouts: Timeouts::new(1, 10),
        };
        let rec = LeaderRecord {
            owner_id: 1,
            owner_generation: 3,
            timestamp: 50,
            resource_name: cfg.host_name,
            ..LeaderRecord::new_delta_free(Geometry::LEGACY_512, cfg.space_name, 1)
        };
        let h = DeltaHandover {
            last_written: rec,
            last_renewal: Time::from_nanos(50_000_000_000),
            max_written_ts: 50,
            published: HostEvent::default(),
        };
        let late = Time::from_nanos(58_000_000_000);
        assert!(matches!(
            DeltaLease::adopted(cfg.clone(), h, late),
            Err(AdoptError::DeadlinePassed { .. })
        ));
        let other = DeltaHandover {
            last_written: LeaderRecord { owner_id: 2, ..rec },
            ..h
        };
        assert!(matches!(
            DeltaLease::adopted(cfg.clone(), other, Time::from_nanos(51_000_000_000)),
            Err(AdoptError::NotOurs { .. })
        ));
        let d = DeltaLease::adopted(cfg, h, Time::from_nanos(57_900_000_000)).expect("in time");
        assert!(d.is_joined());
        assert_eq!(
            d.handover(),
            Some(DeltaHandover {
                max_written_ts: 57,
                ..h
            })
        );
    }

    #[test]
    fn two_lockspaces_on_one_engine_join_renew_and_leave() {
        let (clock, mut sim) = sim_disk(2 << 20, 9);
        sim.load(DiskId(0), 0, &formatted("A"));
        sim.load(DiskId(0), 1 << 20, &formatted("B"));
        let mut set = LockspaceSet::new(Box::new(sim));
        let cfg = |name: &str, offset| DeltaConfig {
            space_name: Name::new(name).expect("name"),
            host_id: 4,
            host_name: Name::new("node-1").expect("name"),
            geometry: Geometry::LEGACY_512,
            area_offset: offset,
            timeouts: Timeouts::new(1, 10),
        };
        let a = set.add(cfg("A", 0), DiskId(0)).expect("add");
        let b = set.add(cfg("B", 1 << 20), DiskId(0)).expect("add");
        let start = clock.now();
        set.join(a, start).expect("join");
        set.join(b, start).expect("join");
        // Both reads go out in the first step's single batch.
        set.step(start).expect("step");
        assert_eq!(
            set.backend_mut().in_flight(),
            2,
            "both lockspaces' I/O in one batch"
        );
        let mut saw_wait = false;
        let end = start.saturating_add(Duration::from_secs(9));
        while clock.now() < end {
            let now = clock.now();
            set.step(now).expect("step");
            if let Some(LockspaceState::Joining {
                phase: JoinPhase::WaitClaim,
                wait_until: Some(t),
            }) = set.state(a)
            {
                assert!(t > now);
                saw_wait = true;
            }
            set.wait(now, end).expect("wait");
        }
        assert!(saw_wait, "join progress shows the 2T wait and when it ends");
        let now = clock.now();
        assert_eq!(set.state(a), Some(LockspaceState::Joined { generation: 1 }));
        assert_eq!(set.state(b), Some(LockspaceState::Joined { generation: 1 }));
        assert_eq!(set.host_status(a, 4, now), HostStatus::Live);
        let h = set.renewal_history(a);
        assert!(
            h.len() >= 3
                && h.iter()
                    .all(|r| r.error.is_none() && r.write_latency.is_some()),
            "{h:?}"
        );
        let deadline = set.renewal_deadline(a).expect("deadline");
        assert!(
            deadline > now && deadline <= now.saturating_add(Timeouts::new(1, 10).renewal_fail())
        );
        set.leave(a, now).expect("leave");
        let end = now.saturating_add(Duration::from_secs(1));
        while clock.now() < end && set.state(a) != Some(LockspaceState::Left) {
            let now = clock.now();
            set.step(now).expect("step");
            set.wait(now, end).expect("wait");
        }
        assert_eq!(set.state(a), Some(LockspaceState::Left));
        assert_eq!(set.renewal_deadline(a), None);
        assert!(matches!(
            set.leave(a, clock.now()),
            Err(LockspaceError::Delta(DeltaError::Misuse(_)))
        ));
        // On disk: our slot in A has timestamp 0, in B it is still renewed.
        let id = set
            .backend_mut()
            .start_read(IoRequest {
                disk: DiskId(0),
                offset: 3 * 512,
                len: 512,
                deadline: clock.now().saturating_add(Duration::from_secs(1)),
            })
            .expect("read");
        let got = crate::io::drive::complete_on(set.backend_mut(), &clock, 1).expect("complete");
        assert_eq!(got[0].outcome, IoOutcome::Done);
        let slot =
            LeaderRecord::decode(set.backend_mut().read_data(id).expect("data")).expect("decode");
        assert_eq!(
            (slot.timestamp, slot.owner_id, slot.owner_generation),
            (0, 4, 1)
        );
    }

    /// Two hosts (two entries of one lockspace on two views of one disk) contend through the
    /// operation API: exclusion, all-or-nothing unwinding, release, hand-off.
    #[test]
    fn paxos_operations_exclude_unwind_and_hand_off() {
        use tenure_format::area::encode_resource_area;
        let (clock, mut sim) = sim_disk(4 << 20, 11);
        let g = Geometry::LEGACY_512;
        let ls = Name::new("A").expect("name");
        sim.load(DiskId(0), 0, &formatted("A"));
        for (i, r) in ["R1", "R2"].iter().enumerate() {
            let mut area = vec![0u8; 1 << 20];
            encode_resource_area(&mut area, g, ls, Name::new(r).expect("name"), 4);
            sim.load(DiskId(0), (i as u64 + 1) << 20, &area);
        }
        let view2 = sim.add_view(DiskId(0));
        let mut set = LockspaceSet::new(Box::new(sim));
        let cfg = |host_id| DeltaConfig {
            space_name: ls,
            host_id,
            host_name: Name::new(&format!("node-{host_id}")).expect("name"),
            geometry: g,
            area_offset: 0,
            timeouts: Timeouts::new(1, 10),
        };
        let h1 = set.add(cfg(1), DiskId(0)).expect("add");
        let h2 = set.add(cfg(2), view2).expect("add");
        let target = |name: &str, disk, mb: u64| ResourceTarget {
            name: Name::new(name).expect("name"),
            disk,
            area_offset: mb << 20,
            geometry: g,
            expect_lver: None,
            mirrors: Vec::new(),
        };
        // Not joined yet: refused with a typed error.
        assert_eq!(
            set.start_acquire(
                h1,
                vec![target("R1", DiskId(0), 1)],
                AcquireOptions::default(),
                clock.now()
            ),
            Err(OpError::NotJoined)
        );
        let run = |set: &mut LockspaceSet, until: &dyn Fn(&LockspaceSet) -> bool| {
            run_until(set, &clock, until)
        };
        set.join(h1, clock.now()).expect("join");
        set.join(h2, clock.now()).expect("join");
        run(&mut set, &|s| {
            matches!(s.state(h1), Some(LockspaceState::Joined { .. }))
                && matches!(s.state(h2), Some(LockspaceState::Joined { .. }))
        });
        // Let each see the other renew (live, not merely unknown).
        let t = clock.now().saturating_add(Duration::from_secs(5));
        run(&mut set, &|_| clock.now() >= t);
        let outcome = |set: &mut LockspaceSet, id: OpId| op_outcome(set, &clock, id);
        let opts = AcquireOptions::default();
        let id = set
            .start_acquire(h1, vec![target("R2", DiskId(0), 2)], opts, clock.now())
            .expect("start");
        let OpOutcome::Acquired(h1_r2) = outcome(&mut set, id) else {
            panic!("host 1 acquires R2");
        };
        assert_eq!(h1_r2[0].acquired.leader.owner_id, 1);
        // Host 2 asks for R1 and R2 together: R2 is held by live host 1, so nothing is held.
        let id = set
            .start_acquire(
                h2,
                vec![target("R1", view2, 1), target("R2", view2, 2)],
                opts,
                clock.now(),
            )
            .expect("start");
        match outcome(&mut set, id) {
            OpOutcome::Failed {
                resource,
                error: OpError::Paxos(PaxosError::OwnerAlive { host_id: 1, .. }),
                still_held,
            } => {
                assert_eq!(resource, Name::new("R2").expect("name"));
                assert!(still_held.is_empty());
            }
            other => panic!("expected OwnerAlive on R2, got {other:?}"),
        }
        // R1 was won and given back: host 1 takes it without contention.
        let id = set
            .start_acquire(h1, vec![target("R1", DiskId(0), 1)], opts, clock.now())
            .expect("start");
        let OpOutcome::Acquired(h1_r1) = outcome(&mut set, id) else {
            panic!("host 1 acquires R1 after host 2 unwound it");
        };
        assert!(
            h1_r1[0].acquired.lver >= 2,
            "R1 was held once by host 2 and released"
        );
        // Host 1 releases both; host 2 then gets both in one call.
        let held = h1_r1.into_iter().chain(h1_r2).map(|h| (h, None)).collect();
        let id = set.start_release(h1, held, clock.now()).expect("start");
        assert_eq!(outcome(&mut set, id), OpOutcome::Released);
        let id = set
            .start_acquire(
                h2,
                vec![target("R1", view2, 1), target("R2", view2, 2)],
                opts,
                clock.now(),
            )
            .expect("start");
        let OpOutcome::Acquired(h2_both) = outcome(&mut set, id) else {
            panic!("host 2 acquires both");
        };
        assert!(h2_both.iter().all(|h| h.acquired.leader.owner_id == 2));
        assert_eq!(set.ops_in_flight(), 0);
        // Host 2 releases R1 and asks for it again at once (a client that exits and a new one
        // that connects): the acquire waits for the release — two writes of host 2's dblock
        // must not race — then starts from what the release left and wins the next lver.
        let (r1, r2): (Vec<_>, Vec<_>) = h2_both
            .into_iter()
            .partition(|h| h.target.name == Name::new("R1").expect("name"));
        let r1_lver = r1[0].acquired.lver;
        let rel = set
            .start_release(h2, r1.into_iter().map(|h| (h, None)).collect(), clock.now())
            .expect("start");
        let again = set
            .start_acquire(h2, vec![target("R1", view2, 1)], opts, clock.now())
            .expect("start");
        assert_eq!(outcome(&mut set, rel), OpOutcome::Released);
        let OpOutcome::Acquired(r1_again) = outcome(&mut set, again) else {
            panic!("host 2 acquires R1 again right after releasing it");
        };
        assert_eq!(r1_again[0].acquired.lver, r1_lver + 1);
        assert_eq!(r1_again[0].acquired.ballots, 1);
        assert_eq!(r1_again.len() + r2.len(), 2, "host 2 holds both again");
        assert_eq!(set.ops_in_flight(), 0);
        // A lockspace in use cannot be removed.
        assert!(set.remove(h2).is_err());
    }
    /// Two lockspaces join at once on an engine with room for one area read: the second's
    /// read finds no room, waits for the first's to complete (it used to fail the join with
    /// EBUSY), and both join and renew.
    #[test]
    fn joins_beyond_the_engines_buffers_wait_for_room_and_both_join() {
        let clock = SimClock::new(Time::from_nanos(50_000_000_000));
        let engine = EngineConfig {
            ring_entries: 32,
            buffer_classes: vec![(512, 32), (1 << 20, 1)],
            sync_workers: 0,
        };
        // Reads slow enough (0.3 s) that the two lockspaces' reads overlap.
        let slow = crate::io::sim::Latency {
            min: Duration::from_millis(300),
            max: Duration::from_millis(300),
            tail_prob: 0.0,
            tail: Duration::ZERO,
        };
        let mut sim = SimBackend::new(
            &[(512, 2 << 20)],
            &engine,
            SimConfig {
                read_latency: slow,
                ..SimConfig::healthy(23)
            },
            clock.clone(),
        );
        sim.load(DiskId(0), 0, &formatted("A"));
        sim.load(DiskId(0), 1 << 20, &formatted("B"));
        let mut set = LockspaceSet::new(Box::new(sim));
        let cfg = |name: &str, offset| DeltaConfig {
            space_name: Name::new(name).expect("name"),
            host_id: 4,
            host_name: Name::new("node-1").expect("name"),
            geometry: Geometry::LEGACY_512,
            area_offset: offset,
            timeouts: Timeouts::new(1, 10),
        };
        let a = set.add(cfg("A", 0), DiskId(0)).expect("add");
        let b = set.add(cfg("B", 1 << 20), DiskId(0)).expect("add");
        let start = clock.now();
        set.join(a, start).expect("join");
        set.join(b, start).expect("join");
        run_until(&mut set, &clock, &|s| {
            [a, b].iter().all(|&id| {
                let st = s.state(id);
                assert!(
                    !matches!(
                        st,
                        Some(LockspaceState::JoinFailed { .. } | LockspaceState::Lost { .. })
                    ),
                    "{st:?}"
                );
                matches!(st, Some(LockspaceState::Joined { .. }))
            })
        });
        // And they keep renewing through the one buffer.
        let t = clock.now().saturating_add(Duration::from_secs(6));
        run_until(&mut set, &clock, &|_| clock.now() >= t);
        for id in [a, b] {
            let h = set.renewal_history(id);
            assert!(h.len() >= 3 && h.iter().all(|r| r.error.is_none()), "{h:?}");
        }
    }

    /// More acquires than the engine has area buffers for, with a renewal competing for them:
    /// the I/O that finds no room waits for some (it used to fail the acquire with EBUSY), and
    /// every acquire wins; then all are released at once the same way.
    #[test]
    fn acquires_beyond_the_engines_buffers_wait_for_room_and_all_win() {
        use tenure_format::area::encode_resource_area;
        const LEASES: usize = 7;
        let clock = SimClock::new(Time::from_nanos(50_000_000_000));
        let engine = EngineConfig {
            ring_entries: 32,
            buffer_classes: vec![(512, 32), (1 << 20, 2)],
            sync_workers: 0,
        };
        let size = (LEASES as u64 + 1) << 20;
        let mut sim = SimBackend::new(
            &[(512, size)],
            &engine,
            SimConfig::healthy(21),
            clock.clone(),
        );
        let g = Geometry::LEGACY_512;
        let ls = Name::new("A").expect("name");
        sim.load(DiskId(0), 0, &formatted("A"));
        let names: Vec<Name> = (0..LEASES)
            .map(|i| Name::new(&format!("R{i}")).expect("name"))
            .collect();
        for (i, r) in names.iter().enumerate() {
            let mut area = vec![0u8; 1 << 20];
            encode_resource_area(&mut area, g, ls, *r, 4);
            sim.load(DiskId(0), (i as u64 + 1) << 20, &area);
        }
        let mut set = LockspaceSet::new(Box::new(sim));
        let h = set
            .add(
                DeltaConfig {
                    space_name: ls,
                    host_id: 1,
                    host_name: Name::new("node-1").expect("name"),
                    geometry: g,
                    area_offset: 0,
                    timeouts: Timeouts::new(1, 10),
                },
                DiskId(0),
            )
            .expect("add");
        set.join(h, clock.now()).expect("join");
        run_until(&mut set, &clock, &|s| {
            matches!(s.state(h), Some(LockspaceState::Joined { .. }))
        });
        let target = |i: usize| ResourceTarget {
            name: names[i],
            disk: DiskId(0),
            area_offset: (i as u64 + 1) << 20,
            geometry: g,
            expect_lver: None,
            mirrors: Vec::new(),
        };
        let ids: Vec<OpId> = (0..LEASES)
            .map(|i| {
                set.start_acquire(h, vec![target(i)], AcquireOptions::default(), clock.now())
                    .expect("start")
            })
            .collect();
        let mut held = Vec::new();
        let mut left: Vec<OpId> = ids.clone();
        let end = clock.now().saturating_add(Duration::from_secs(30));
        while !left.is_empty() {
            let now = clock.now();
            assert!(now < end, "acquires did not end: {left:?}");
            set.step(now).expect("step");
            while let Some((id, o)) = set.take_op_result() {
                match o {
                    OpOutcome::Acquired(h) => held.extend(h),
                    other => panic!("acquire {id:?}: {other:?}"),
                }
                left.retain(|&l| l != id);
            }
            set.wait(now, end).expect("wait");
        }
        assert_eq!(held.len(), LEASES);
        assert!(held.iter().all(|r| r.acquired.leader.owner_id == 1));
        assert!(matches!(set.state(h), Some(LockspaceState::Joined { .. })));
        let mut left: Vec<OpId> = held
            .into_iter()
            .map(|r| {
                set.start_release(h, vec![(r, None)], clock.now())
                    .expect("start")
            })
            .collect();
        let end = clock.now().saturating_add(Duration::from_secs(30));
        while !left.is_empty() {
            let now = clock.now();
            assert!(now < end, "releases did not end: {left:?}");
            set.step(now).expect("step");
            while let Some((id, o)) = set.take_op_result() {
                assert_eq!(o, OpOutcome::Released, "release {id:?}");
                left.retain(|&l| l != id);
            }
            set.wait(now, end).expect("wait");
        }
        // The renewals went on meanwhile, none of them failed for want of a buffer.
        let hist = set.renewal_history(h);
        assert!(hist.iter().all(|r| r.error.is_none()), "{hist:?}");
    }

    /// A lease on three disks through the set's operations: one copy damaged (never
    /// formatted), the other two carry it; the owner check, release and hand-over work across
    /// the copies, and the damaged one is repaired by the commits. A lock value block is
    /// refused on several disks.
    #[test]
    fn leases_on_three_disks_run_on_a_majority_of_copies() {
        use tenure_format::area::encode_resource_area;
        let clock = SimClock::new(Time::from_nanos(50_000_000_000));
        let engine = EngineConfig {
            ring_entries: 32,
            buffer_classes: vec![(512, 32), (1 << 20, 8)],
            sync_workers: 0,
        };
        let mut sim = SimBackend::new(
            &[(512, 2 << 20), (512, 2 << 20), (512, 2 << 20)],
            &engine,
            SimConfig::healthy(13),
            clock.clone(),
        );
        let g = Geometry::LEGACY_512;
        let ls = Name::new("A").expect("name");
        sim.load(DiskId(0), 0, &formatted("A"));
        let mut area = vec![0u8; 1 << 20];
        encode_resource_area(&mut area, g, ls, Name::new("R").expect("name"), 4);
        // Copies at 1M on disk 0 and at 0 on disk 1; disk 2's copy (at 1M) is all zeros.
        sim.load(DiskId(0), 1 << 20, &area);
        sim.load(DiskId(1), 0, &area);
        let views2: Vec<DiskId> = (0..3).map(|d| sim.add_view(DiskId(d))).collect();
        let mut set = LockspaceSet::new(Box::new(sim));
        let cfg = |host_id| DeltaConfig {
            space_name: ls,
            host_id,
            host_name: Name::new(&format!("node-{host_id}")).expect("name"),
            geometry: g,
            area_offset: 0,
            timeouts: Timeouts::new(1, 10),
        };
        let h1 = set.add(cfg(1), DiskId(0)).expect("add");
        let h2 = set.add(cfg(2), views2[0]).expect("add");
        let target = |disks: &[DiskId]| ResourceTarget {
            name: Name::new("R").expect("name"),
            disk: disks[0],
            area_offset: 1 << 20,
            geometry: g,
            expect_lver: None,
            mirrors: vec![(disks[1], 0), (disks[2], 1 << 20)],
        };
        let mine = [DiskId(0), DiskId(1), DiskId(2)];
        let run = |set: &mut LockspaceSet, until: &dyn Fn(&LockspaceSet) -> bool| {
            run_until(set, &clock, until)
        };
        set.join(h1, clock.now()).expect("join");
        set.join(h2, clock.now()).expect("join");
        run(&mut set, &|s| {
            matches!(s.state(h1), Some(LockspaceState::Joined { .. }))
                && matches!(s.state(h2), Some(LockspaceState::Joined { .. }))
        });
        let t = clock.now().saturating_add(Duration::from_secs(5));
        run(&mut set, &|_| clock.now() >= t);
        let outcome = |set: &mut LockspaceSet, id: OpId| op_outcome(set, &clock, id);
        let opts = AcquireOptions::default();
        assert!(matches!(
            set.start_acquire(
                h1,
                vec![target(&mine)],
                AcquireOptions {
                    read_lvb: true,
                    ..opts
                },
                clock.now()
            ),
            Err(OpError::Paxos(PaxosError::LvbUnavailable(_)))
        ));
        let id = set
            .start_acquire(h1, vec![target(&mine)], opts, clock.now())
            .expect("start");
        let OpOutcome::Acquired(held) = outcome(&mut set, id) else {
            panic!("host 1 acquires R on two sound copies of three");
        };
        assert_eq!(held[0].acquired.leader.owner_id, 1);
        let id = set
            .start_acquire(h2, vec![target(&views2)], opts, clock.now())
            .expect("start");
        assert!(
            matches!(
                outcome(&mut set, id),
                OpOutcome::Failed {
                    error: OpError::Paxos(PaxosError::OwnerAlive { host_id: 1, .. }),
                    ..
                }
            ),
            "host 2 sees host 1's lease through the copies"
        );
        let id = set
            .start_release(
                h1,
                held.into_iter().map(|h| (h, None)).collect(),
                clock.now(),
            )
            .expect("start");
        assert_eq!(outcome(&mut set, id), OpOutcome::Released);
        let id = set
            .start_acquire(h2, vec![target(&views2)], opts, clock.now())
            .expect("start");
        let OpOutcome::Acquired(held2) = outcome(&mut set, id) else {
            panic!("host 2 acquires R after host 1 released it");
        };
        assert_eq!(held2[0].acquired.leader.owner_id, 2);
        assert_eq!(held2[0].acquired.lver, 2);
        assert_eq!(set.ops_in_flight(), 0);
    }

    /// Host events: host 2 publishes one for host 1, which receives it (with host 2's id and
    /// generation and its own generation filled in) on host 2's renewals while the bit lasts
    /// (6T), and no more after; a different event within 6T is refused unless replaced.
    #[test]
    fn host_events_reach_the_addressed_host_while_its_bit_lasts() {
        let (clock, mut sim) = sim_disk(1 << 20, 12);
        sim.load(DiskId(0), 0, &formatted("A"));
        let view2 = sim.add_view(DiskId(0));
        let mut set = LockspaceSet::new(Box::new(sim));
        let cfg = |host_id| DeltaConfig {
            space_name: Name::new("A").expect("name"),
            host_id,
            host_name: Name::new(&format!("node-{host_id}")).expect("name"),
            geometry: Geometry::LEGACY_512,
            area_offset: 0,
            timeouts: Timeouts::new(1, 10),
        };
        let h1 = set.add(cfg(1), DiskId(0)).expect("add");
        let h2 = set.add(cfg(2), view2).expect("add");
        let ev = |event, data| SetEvent {
            host_id: 1,
            event: HostEvent {
                generation: 0,
                event,
                data,
            },
            cur_generation: true,
            ..SetEvent::default()
        };
        assert_eq!(
            set.set_event(h2, ev(0x55, 0x66), clock.now()),
            Err(EventError::NotJoined)
        );
        set.join(h1, clock.now()).expect("join");
        set.join(h2, clock.now()).expect("join");
        // Runs for `secs`, returning the events host 1 received.
        let run = |set: &mut LockspaceSet, secs| {
            let end = clock.now().saturating_add(Duration::from_secs(secs));
            let mut got = Vec::new();
            while clock.now() < end {
                let now = clock.now();
                set.step(now).expect("step");
                for e in set.take_events(h1) {
                    if let DeltaEvent::BitSet { events, .. } = e {
                        got.extend(events.into_iter().map(|x| (now, x)));
                    }
                }
                set.take_events(h2);
                set.wait(now, end).expect("wait");
            }
            got
        };
        assert!(run(&mut set, 6).is_empty(), "no event before one is set");
        let Some(LockspaceState::Joined { generation: gen1 }) = set.state(h1) else {
            panic!("host 1 joined");
        };
        let Some(LockspaceState::Joined { generation: gen2 }) = set.state(h2) else {
            panic!("host 2 joined");
        };
        assert_eq!(
            set.set_event(
                h2,
                SetEvent {
                    host_id: 0,
                    ..ev(1, 1)
                },
                clock.now()
            ),
            Err(EventError::HostId {
                host_id: 0,
                max: 2000
            })
        );
        let t0 = clock.now();
        set.set_event(h2, ev(0x55, 0x66), t0).expect("set");
        assert!(
            matches!(
                set.set_event(h2, ev(0x56, 0), clock.now()),
                Err(EventError::Busy { .. })
            ),
            "a different event within 6T is refused"
        );
        set.set_event(h2, ev(0x55, 0x66), clock.now())
            .expect("the same event again is accepted");
        let got = run(&mut set, 14);
        assert!(!got.is_empty(), "host 1 received the event");
        for (at, e) in &got {
            assert_eq!(
                *e,
                crate::delta::ReceivedEvent {
                    from_host_id: 2,
                    from_generation: gen2,
                    event: HostEvent {
                        generation: gen1,
                        event: 0x55,
                        data: 0x66
                    }
                }
            );
            assert!(
                at.saturating_since(t0) <= Duration::from_secs(6 + 2 + 1),
                "delivered only while the bit lasts (6T) plus one renewal round"
            );
        }
        assert!(got.len() >= 2, "repeated on each renewal: {}", got.len());
        // Replace: accepted within 6T, delivered with the new value.
        set.set_event(h2, ev(0x77, 1), clock.now())
            .expect("after 6T");
        set.set_event(
            h2,
            SetEvent {
                replace: true,
                ..ev(0x78, 2)
            },
            clock.now(),
        )
        .expect("replace");
        let got = run(&mut set, 5);
        assert!(!got.is_empty() && got.iter().all(|(_, e)| e.event.event == 0x78));
        // Clearing the bit stops deliveries at once.
        set.set_event(
            h2,
            SetEvent {
                clear_host: true,
                ..ev(0, 0)
            },
            clock.now(),
        )
        .expect("clear");
        run(&mut set, 3);
        assert!(
            run(&mut set, 6).is_empty(),
            "nothing after the bit is cleared"
        );
    }
}
