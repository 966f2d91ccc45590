//! The simulated disk: the [`IoBackend`] interface over in-memory devices and a
//! [`SimClock`], deterministic from a seed, with the faults the protocols must survive.
//!
//! Model:
//! - An operation takes effect at one instant, its *due* time (flush time plus a latency
//!   drawn from the configured distribution). Writes apply sector by sector, each sector
//!   atomically; a read copies the sectors as they are at its due time. Operations on
//!   different sectors complete in whatever order their latencies give (reordering).
//! - A chain's read is due after its write (plus its own latency), and is canceled if the
//!   write failed.
//! - Faults: EIO on reads or writes (a failed write changes nothing, except a torn one);
//!   torn multi-sector writes (a random prefix of sectors lands, the write reports EIO); a
//!   write that lands after its deadline (reported timed out, applied later); a hung disk
//!   (nothing on it completes until it is released); garbage in a sector on demand.
//! - `wait(now, until)` moves the shared clock to the earlier of `until` and the next due
//!   operation, so the ordinary blocking driver runs unchanged on simulated time.
//!
//! Invariant: given the same seed, configuration and sequence of calls, every completion,
//! every byte and every timestamp is the same, so a failing run replays from its seed.

use std::time::Duration;

use crate::clock::{Clock, SimClock, Time};
use crate::dev::DeviceKind;
use crate::io::slots::SlotTable;
use crate::io::{
    Completion, DiskId, DiskInfo, EngineConfig, IoBackend, IoError, IoId, IoKind, IoRequest,
    SubmitError,
};

/// splitmix64: small, fast, and stable across versions, so seeds replay forever.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        SimRng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)`; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `p` (0.0..=1.0).
    pub fn chance(&mut self, p: f64) -> bool {
        // 53 random bits give a uniform f64 in [0, 1).
        ((self.next_u64() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }
}

/// A latency distribution: uniform in `[min, max]`, plus `tail` with probability `tail_prob`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latency {
    /// Shortest latency.
    pub min: Duration,
    /// Longest latency without the tail.
    pub max: Duration,
    /// Probability of adding the tail.
    pub tail_prob: f64,
    /// Extra latency of the tail.
    pub tail: Duration,
}

impl Latency {
    /// A fixed latency.
    pub const fn fixed(d: Duration) -> Self {
        Latency {
            min: d,
            max: d,
            tail_prob: 0.0,
            tail: Duration::ZERO,
        }
    }

    fn sample(&self, rng: &mut SimRng) -> Duration {
        let span = u64::try_from(self.max.saturating_sub(self.min).as_nanos()).unwrap_or(u64::MAX);
        let mut d = self.min + Duration::from_nanos(rng.below(span.saturating_add(1)));
        if rng.chance(self.tail_prob) {
            d += self.tail;
        }
        d
    }
}

/// Fault rates and latencies of the simulated devices.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Read latency.
    pub read_latency: Latency,
    /// Write latency.
    pub write_latency: Latency,
    /// Probability that a read fails with EIO.
    pub read_eio: f64,
    /// Probability that a write fails with EIO (nothing written).
    pub write_eio: f64,
    /// Probability that a multi-sector write is torn: a random prefix lands, EIO reported.
    pub torn_write: f64,
    /// Probability that a write is delayed past its deadline (reported timed out) and lands
    /// later.
    pub late_write: f64,
}

impl SimConfig {
    /// A healthy disk: 50–200 µs per I/O, no faults.
    pub fn healthy(seed: u64) -> Self {
        let l = Latency {
            min: Duration::from_micros(50),
            max: Duration::from_micros(200),
            tail_prob: 0.0,
            tail: Duration::ZERO,
        };
        SimConfig {
            seed,
            read_latency: l,
            write_latency: l,
            read_eio: 0.0,
            write_eio: 0.0,
            torn_write: 0.0,
            late_write: 0.0,
        }
    }
}

#[derive(Debug)]
struct SimDisk {
    info: DiskInfo,
    /// Index into the backend's storages: several disks (views) may share one, like loop
    /// devices over one file, each with its own hang state and write ordering.
    storage: usize,
    hung: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Normal,
    Eio,
    /// Only this many sectors land, then EIO.
    Torn(usize),
}

#[derive(Debug)]
struct Pending {
    id: IoId,
    disk: usize,
    /// When it takes effect; `None` until flushed, or while its disk hangs.
    due: Option<Time>,
    latency: Duration,
    fate: Fate,
    /// Sequence number: ties on `due` resolve in submission order.
    seq: u64,
    /// A chained read that follows this write.
    then: Option<IoId>,
    /// This is the read of a chain (scheduled by its write).
    chained: bool,
}

/// The simulated backend.
#[derive(Debug)]
pub struct SimBackend {
    clock: SimClock,
    rng: SimRng,
    config: SimConfig,
    disks: Vec<SimDisk>,
    storages: Vec<Vec<u8>>,
    slots: SlotTable,
    pending: Vec<Pending>,
    seq: u64,
    data: Vec<u8>,
}

impl SimBackend {
    /// Simulated devices of the given (sector size, size in bytes), all zero.
    pub fn new(
        devices: &[(u32, u64)],
        engine: &EngineConfig,
        config: SimConfig,
        clock: SimClock,
    ) -> Self {
        let disks = devices
            .iter()
            .enumerate()
            .map(|(i, &(sector_size, size_bytes))| SimDisk {
                info: DiskInfo {
                    path: format!("sim{i}").into(),
                    kind: DeviceKind::Block,
                    io_align: sector_size,
                    size_bytes,
                },
                storage: i,
                hung: false,
            })
            .collect();
        let storages = devices
            .iter()
            .map(|&(_, size)| {
                vec![0u8; usize::try_from(size).expect("simulated disk fits in memory")]
            })
            .collect();
        let limit = engine.ring_entries.max(2) as usize * 2;
        SimBackend {
            rng: SimRng::new(config.seed),
            config,
            clock,
            disks,
            storages,
            slots: SlotTable::new(&engine.buffer_classes, limit),
            pending: Vec::with_capacity(limit),
            seq: 0,
            data: Vec::new(),
        }
    }

    /// A write and a read queued together (both or neither): the read starts when the write
    /// completed if `linked`, else each runs on its own.
    fn start_two(
        &mut self,
        write: IoRequest,
        data: &[u8],
        read: IoRequest,
        linked: bool,
    ) -> Result<(IoId, IoId), SubmitError> {
        let w = self.start(IoKind::Write, write, Some(data), false)?;
        let r = match self.start(IoKind::Read, read, None, linked) {
            Ok(r) => r,
            Err(e) => {
                self.pending.retain(|p| p.id != w);
                self.slots.unqueue(w);
                return Err(e);
            }
        };
        if linked {
            if let Some(p) = self.pending.iter_mut().find(|p| p.id == w) {
                p.then = Some(r);
            }
        }
        Ok((w, r))
    }

    /// The shared clock.
    pub fn clock(&self) -> &SimClock {
        &self.clock
    }

    /// Makes a disk hang (nothing on it completes) or releases it (pending operations are
    /// rescheduled from now).
    pub fn set_hung(&mut self, disk: DiskId, hung: bool) {
        let now = self.clock.now();
        let d = usize::from(disk.0);
        self.disks[d].hung = hung;
        if !hung {
            for p in self
                .pending
                .iter_mut()
                .filter(|p| p.disk == d && p.due.is_none() && !p.chained)
            {
                if self
                    .slots
                    .get(p.id)
                    .is_some_and(|s| s.state != crate::io::slots::SlotState::Queued)
                {
                    p.due = Some(now.saturating_add(p.latency));
                }
            }
        }
    }

    /// Overwrites one sector with garbage (a damaged sector, as a reader would find it).
    pub fn corrupt_sector(&mut self, disk: DiskId, sector: u64) {
        let d = &mut self.disks[usize::from(disk.0)];
        let ss = d.info.io_align as usize;
        let at = usize::try_from(sector)
            .unwrap_or(usize::MAX)
            .saturating_mul(ss);
        if let Some(s) = self.storages[d.storage].get_mut(at..at + ss) {
            for b in s.iter_mut() {
                *b = (self.rng.next_u64() & 0xFF) as u8;
            }
        }
    }

    /// Puts `bytes` on the disk at `offset` directly (test set-up, no I/O).
    pub fn load(&mut self, disk: DiskId, offset: u64, bytes: &[u8]) {
        let d = &self.disks[usize::from(disk.0)];
        let at = usize::try_from(offset).expect("offset fits");
        self.storages[d.storage][at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Another disk over the same storage as `of` (a second loop device over one file): its
    /// own hang state and write ordering, the same bytes.
    pub fn add_view(&mut self, of: DiskId) -> DiskId {
        let base = &self.disks[usize::from(of.0)];
        let n = self.disks.len();
        let view = SimDisk {
            info: DiskInfo {
                path: format!("sim{n}").into(),
                ..base.info.clone()
            },
            storage: base.storage,
            hung: false,
        };
        self.disks.push(view);
        DiskId(u16::try_from(n).expect("fewer than 65536 simulated disks"))
    }

    /// The disk's current bytes (what a reader would see now).
    pub fn disk_bytes(&self, disk: DiskId) -> &[u8] {
        &self.storages[self.disks[usize::from(disk.0)].storage]
    }

    /// The earliest instant at which an operation takes effect.
    pub fn next_due(&self) -> Option<Time> {
        self.pending.iter().filter_map(|p| p.due).min()
    }

    fn start(
        &mut self,
        kind: IoKind,
        req: IoRequest,
        data: Option<&[u8]>,
        chained: bool,
    ) -> Result<IoId, SubmitError> {
        let info = self.disks.get(usize::from(req.disk.0)).map(|d| &d.info);
        let ss = info.map_or(512, |i| i.io_align as usize);
        let id = self.slots.alloc(kind, req, info, data)?;
        let (latency, fate) = match kind {
            IoKind::Read => {
                let fate = if self.rng.chance(self.config.read_eio) {
                    Fate::Eio
                } else {
                    Fate::Normal
                };
                (self.config.read_latency.sample(&mut self.rng), fate)
            }
            IoKind::Write => {
                let sectors = req.len / ss;
                let fate = if self.rng.chance(self.config.write_eio) {
                    Fate::Eio
                } else if sectors > 1 && self.rng.chance(self.config.torn_write) {
                    Fate::Torn(usize::try_from(self.rng.below(sectors as u64)).unwrap_or(0))
                } else {
                    Fate::Normal
                };
                let mut latency = self.config.write_latency.sample(&mut self.rng);
                if self.rng.chance(self.config.late_write) {
                    // Past the deadline by up to one more of the same span.
                    let to_deadline = req.deadline.saturating_since(self.clock.now());
                    latency = to_deadline
                        + Duration::from_nanos(
                            1 + self
                                .rng
                                .below(1 + u64::try_from(to_deadline.as_nanos()).unwrap_or(0)),
                        );
                }
                (latency, fate)
            }
        };
        self.seq += 1;
        self.pending.push(Pending {
            id,
            disk: usize::from(req.disk.0),
            due: None,
            latency,
            fate,
            seq: self.seq,
            then: None,
            chained,
        });
        Ok(id)
    }

    /// Applies the earliest due operation; returns false when none is due by `now`.
    fn step(&mut self, now: Time, out: &mut Vec<Completion>) -> bool {
        let Some(i) = self
            .pending
            .iter()
            .enumerate()
            .filter(|(_, p)| p.due.is_some_and(|d| d <= now))
            .min_by_key(|(_, p)| (p.due, p.seq))
            .map(|(i, _)| i)
        else {
            return false;
        };
        let p = self.pending.swap_remove(i);
        let due = p.due.expect("filtered on due");
        let slot = self
            .slots
            .get(p.id)
            .expect("pending operation has a live slot");
        let (kind, offset, len) = (
            slot.kind,
            usize::try_from(slot.offset).unwrap_or(usize::MAX),
            slot.len,
        );
        let disk = &mut self.disks[p.disk];
        let ss = disk.info.io_align as usize;
        let res: i32 = match (kind, p.fate) {
            (_, Fate::Eio) => -libc::EIO,
            (IoKind::Read, _) => {
                let slot = self.slots.get_mut(p.id).expect("live slot");
                slot.buf.as_mut().expect("slot buffer").as_mut_slice()[..len]
                    .copy_from_slice(&self.storages[disk.storage][offset..offset + len]);
                i32::try_from(len).unwrap_or(i32::MAX)
            }
            (IoKind::Write, fate) => {
                let sectors = match fate {
                    Fate::Torn(n) => n,
                    _ => len / ss,
                };
                self.data.clear();
                self.data.extend_from_slice(
                    &self
                        .slots
                        .get(p.id)
                        .expect("live slot")
                        .buf
                        .as_ref()
                        .expect("buffer")
                        .as_slice()[..sectors * ss],
                );
                self.storages[disk.storage][offset..offset + sectors * ss]
                    .copy_from_slice(&self.data);
                if matches!(fate, Fate::Torn(_)) {
                    -libc::EIO
                } else {
                    i32::try_from(len).unwrap_or(i32::MAX)
                }
            }
        };
        if let Some(next) = p.then {
            if res >= 0 {
                if let Some(r) = self.pending.iter_mut().find(|q| q.id == next) {
                    r.due = if self.disks[r.disk].hung {
                        None
                    } else {
                        Some(due.saturating_add(r.latency))
                    };
                    r.chained = false;
                }
            } else {
                // The write failed: its read never runs.
                self.pending.retain(|q| q.id != next);
                if let Some(c) = self.slots.complete(next, -libc::ECANCELED) {
                    out.push(c);
                }
            }
        }
        if let Some(c) = self.slots.complete(p.id, res) {
            out.push(c);
        }
        true
    }
}

impl IoBackend for SimBackend {
    fn add_disk(&mut self, device: crate::dev::Device) -> Result<DiskId, IoError> {
        Err(IoError::AddDisk(format!(
            "the simulator has no real devices ({})",
            device.path().display()
        )))
    }

    fn notify_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }

    fn name(&self) -> &'static str {
        "sim"
    }

    fn disk(&self, disk: DiskId) -> Option<&DiskInfo> {
        self.disks.get(usize::from(disk.0)).map(|d| &d.info)
    }

    fn start_read(&mut self, req: IoRequest) -> Result<IoId, SubmitError> {
        self.start(IoKind::Read, req, None, false)
    }

    fn start_write(&mut self, req: IoRequest, data: &[u8]) -> Result<IoId, SubmitError> {
        self.start(IoKind::Write, req, Some(data), false)
    }

    fn start_chain(
        &mut self,
        write: IoRequest,
        data: &[u8],
        read: IoRequest,
    ) -> Result<(IoId, IoId), SubmitError> {
        self.start_two(write, data, read, true)
    }

    fn start_pair(
        &mut self,
        write: IoRequest,
        data: &[u8],
        read: IoRequest,
    ) -> Result<(IoId, IoId), SubmitError> {
        // Independent: each gets its own latency, so either may complete first.
        self.start_two(write, data, read, false)
    }

    fn flush(&mut self) -> Result<(), IoError> {
        let now = self.clock.now();
        for p in self
            .pending
            .iter_mut()
            .filter(|p| p.due.is_none() && !p.chained)
        {
            if self
                .slots
                .get(p.id)
                .is_some_and(|s| s.state == crate::io::slots::SlotState::Queued)
            {
                self.slots.mark_in_flight(p.id);
                if !self.disks[p.disk].hung {
                    p.due = Some(now.saturating_add(p.latency));
                }
            }
        }
        for p in self.pending.iter().filter(|p| p.chained) {
            self.slots.mark_in_flight(p.id);
        }
        Ok(())
    }

    fn poll(&mut self, now: Time, out: &mut Vec<Completion>) -> Result<(), IoError> {
        while self.step(now, out) {}
        self.slots.expire(now, out);
        Ok(())
    }

    fn wait(&mut self, now: Time, until: Time) -> Result<(), IoError> {
        self.flush()?;
        let target = self.next_due().map_or(until, |d| d.min(until)).max(now);
        self.clock.advance_to(target);
        Ok(())
    }

    fn read_data(&self, id: IoId) -> Option<&[u8]> {
        self.slots.read_data(id)
    }

    fn release(&mut self, id: IoId) {
        self.slots.release(id);
    }

    fn in_flight(&self) -> usize {
        self.slots.in_flight()
    }

    fn next_deadline(&self) -> Option<Time> {
        self.slots.next_deadline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::drive::complete_on;
    use crate::io::{conformance, IoOutcome};

    fn engine() -> EngineConfig {
        EngineConfig {
            ring_entries: 32,
            buffer_classes: vec![(4096, 40), (65536, 4)],
            sync_workers: 0,
        }
    }

    fn sim(config: SimConfig) -> SimBackend {
        SimBackend::new(
            &[(512, 1 << 20), (512, 1 << 20)],
            &engine(),
            config,
            SimClock::new(Time::from_nanos(1_000_000_000)),
        )
    }

    fn req(b: &SimBackend, disk: u16, offset: u64, len: usize, timeout: Duration) -> IoRequest {
        IoRequest {
            disk: DiskId(disk),
            offset,
            len,
            deadline: b.clock().now().saturating_add(timeout),
        }
    }

    #[test]
    fn healthy_sim_passes_the_conformance_suite() {
        let mut b = sim(SimConfig::healthy(1));
        let clock = b.clock().clone();
        conformance::write_then_read(&mut b, &clock, DiskId(0), 512);
        conformance::chain_reads_after_write(&mut b, &clock, DiskId(0), 512);
        conformance::pair_completes_both(&mut b, &clock, DiskId(0), 512);
        conformance::many_in_flight(&mut b, &clock, DiskId(0), 512, 30);
        conformance::full_is_typed_and_recovers(&mut b, &clock, DiskId(0), 512);
        conformance::bad_requests_refused(&mut b, &clock, DiskId(0), 512, 1 << 20);
    }

    /// Runs a fixed workload with faults and returns its full trace.
    fn trace(seed: u64) -> Vec<(u64, Completion)> {
        let config = SimConfig {
            seed,
            read_latency: Latency {
                min: Duration::from_micros(10),
                max: Duration::from_millis(2),
                tail_prob: 0.1,
                tail: Duration::from_millis(30),
            },
            write_latency: Latency {
                min: Duration::from_micros(10),
                max: Duration::from_millis(2),
                tail_prob: 0.1,
                tail: Duration::from_millis(30),
            },
            read_eio: 0.05,
            write_eio: 0.05,
            torn_write: 0.2,
            late_write: 0.1,
        };
        let mut b = sim(config);
        let clock = b.clock().clone();
        let mut out = Vec::new();
        for round in 0..40u64 {
            let data = vec![round as u8; 2048];
            let t = Duration::from_millis(20);
            let _ = b.start_write(req(&b, 0, (round % 8) * 2048, 2048, t), &data);
            let _ = b.start_chain(req(&b, 1, 0, 512, t), &data[..512], req(&b, 1, 0, 1024, t));
            let _ = b.start_read(req(&b, 0, 0, 4096, t));
            let got = complete_on(&mut b, &clock, 1).expect("complete");
            for c in got {
                if c.kind == IoKind::Read {
                    b.release(c.id);
                }
                out.push((clock.now().as_nanos(), c));
            }
        }
        out
    }

    #[test]
    fn same_seed_same_trace_and_faults_all_occur() {
        let a = trace(42);
        assert_eq!(a, trace(42), "a seed must replay exactly");
        assert_ne!(a, trace(43));
        let outcomes: Vec<IoOutcome> = (0..20).flat_map(trace).map(|(_, c)| c.outcome).collect();
        for wanted in [
            IoOutcome::Done,
            IoOutcome::Failed { errno: libc::EIO },
            IoOutcome::TimedOut,
            IoOutcome::Canceled,
        ] {
            assert!(outcomes.contains(&wanted), "{wanted:?} never happened");
        }
    }

    #[test]
    fn completions_are_reordered_across_sectors() {
        let reordered = (0..50).any(|seed| {
            let mut b = sim(SimConfig {
                write_latency: Latency {
                    min: Duration::ZERO,
                    max: Duration::from_millis(5),
                    tail_prob: 0.0,
                    tail: Duration::ZERO,
                },
                ..SimConfig::healthy(seed)
            });
            let clock = b.clock().clone();
            let first = b
                .start_write(req(&b, 0, 0, 512, Duration::from_secs(1)), &[1; 512])
                .expect("w1");
            b.start_write(req(&b, 0, 512, 512, Duration::from_secs(1)), &[2; 512])
                .expect("w2");
            let c = complete_on(&mut b, &clock, 2).expect("complete");
            c[0].id != first
        });
        assert!(reordered, "no seed in 50 completed the second write first");
    }

    #[test]
    fn timed_out_write_lands_later_and_its_slot_is_kept() {
        let mut b = sim(SimConfig {
            late_write: 1.0,
            ..SimConfig::healthy(7)
        });
        let clock = b.clock().clone();
        let w = b
            .start_write(req(&b, 0, 0, 512, Duration::from_millis(10)), &[9; 512])
            .expect("write");
        let c = complete_on(&mut b, &clock, 1).expect("complete");
        assert_eq!((c[0].id, c[0].outcome), (w, IoOutcome::TimedOut));
        assert!(
            b.disk_bytes(DiskId(0))[..512].iter().all(|&x| x == 0),
            "not landed yet"
        );
        assert_eq!(b.in_flight(), 1);
        // Run time forward until the device finishes: reaped silently, data landed.
        let mut out = Vec::new();
        while b.in_flight() > 0 {
            let next = b.next_due().expect("still pending");
            clock.advance_to(next);
            b.poll(clock.now(), &mut out).expect("poll");
        }
        assert!(out.is_empty());
        assert!(
            b.disk_bytes(DiskId(0))[..512].iter().all(|&x| x == 9),
            "the late write landed"
        );
    }

    #[test]
    fn hung_disk_times_out_then_completes_when_released() {
        let mut b = sim(SimConfig::healthy(3));
        let clock = b.clock().clone();
        b.set_hung(DiskId(1), true);
        let r = b
            .start_read(req(&b, 1, 0, 512, Duration::from_millis(50)))
            .expect("read");
        let ok = b
            .start_read(req(&b, 0, 0, 512, Duration::from_millis(50)))
            .expect("read");
        let c = complete_on(&mut b, &clock, 2).expect("complete");
        assert!(c.contains(&Completion {
            id: ok,
            kind: IoKind::Read,
            outcome: IoOutcome::Done
        }));
        assert!(c.contains(&Completion {
            id: r,
            kind: IoKind::Read,
            outcome: IoOutcome::TimedOut
        }));
        clock.advance(Duration::from_secs(60));
        let mut out = Vec::new();
        b.poll(clock.now(), &mut out).expect("poll");
        assert_eq!(b.in_flight(), 1, "a hung disk never completes");
        b.set_hung(DiskId(1), false);
        clock.advance(Duration::from_secs(1));
        b.poll(clock.now(), &mut out).expect("poll");
        assert!(
            !out.iter().any(|c| c.id == r),
            "the zombie read was reported again: {out:?}"
        );
        assert_eq!(b.in_flight(), 0, "released disk completed the zombie read");
    }

    #[test]
    fn torn_write_lands_a_prefix_and_garbage_sector_fails_checksum() {
        let mut b = sim(SimConfig {
            torn_write: 1.0,
            ..SimConfig::healthy(11)
        });
        let clock = b.clock().clone();
        b.start_write(req(&b, 0, 0, 4096, Duration::from_secs(1)), &[0xEE; 4096])
            .expect("write");
        let c = complete_on(&mut b, &clock, 1).expect("complete");
        assert_eq!(c[0].outcome, IoOutcome::Failed { errno: libc::EIO });
        let landed = b.disk_bytes(DiskId(0))[..4096]
            .chunks(512)
            .take_while(|s| s.iter().all(|&x| x == 0xEE))
            .count();
        assert!(landed < 8, "a torn write does not land whole");
        assert!(
            b.disk_bytes(DiskId(0))[landed * 512..4096]
                .iter()
                .all(|&x| x == 0),
            "only a prefix lands"
        );
        // A valid leader, then garbage in its sector: the decoder reports it.
        let g = tenure_format::Geometry::LEGACY_512;
        let mut sector = [0u8; 512];
        tenure_format::LeaderRecord::new_delta_free(
            g,
            tenure_format::Name::new("ls").expect("name"),
            10,
        )
        .encode_into(&mut sector);
        let mut b = sim(SimConfig::healthy(12));
        let clock = b.clock().clone();
        b.start_write(req(&b, 0, 0, 512, Duration::from_secs(1)), &sector)
            .expect("write");
        complete_on(&mut b, &clock, 1).expect("complete");
        assert!(tenure_format::LeaderRecord::decode(&b.disk_bytes(DiskId(0))[..512]).is_ok());
        b.corrupt_sector(DiskId(0), 0);
        assert!(tenure_format::LeaderRecord::decode(&b.disk_bytes(DiskId(0))[..512]).is_err());
    }
}
