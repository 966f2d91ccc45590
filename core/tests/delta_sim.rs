//! Delta leases in simulation: several hosts on one simulated disk, seeded latencies and
//! faults, invariants checked after every step. Every failure message carries its seed.

use std::time::Duration;

use tenure_core::clock::{Clock, SimClock, Time};
use tenure_core::delta::{DeltaConfig, DeltaError, DeltaEvent, DeltaIo, DeltaLease, HostStatus};
use tenure_core::io::sim::{Latency, SimBackend, SimConfig};
use tenure_core::io::{DiskId, EngineConfig, IoBackend, IoId, IoKind, IoRequest};
use tenure_core::timeouts::Timeouts;
use tenure_format::area::{encode_lockspace_area, lockspace_sector0};
use tenure_format::{Geometry, Name};

const T: u16 = 1;
const W: u32 = 10;

struct Host {
    lease: DeltaLease,
    /// This host's own view of the shared disk (its "loop device").
    disk: DiskId,
    inflight: Option<IoId>,
    /// False once crashed: nothing more happens to this host.
    running: bool,
    /// True while paused (SIGSTOP-like): time runs, nothing is processed, completions wait.
    paused: bool,
    held: Vec<(tenure_core::io::IoOutcome, Vec<u8>)>,
    events: Vec<(Time, DeltaEvent)>,
}

struct World {
    clock: SimClock,
    disk: SimBackend,
    hosts: Vec<Host>,
    seed: u64,
}

fn lockspace_image() -> Vec<u8> {
    let g = Geometry::LEGACY_512;
    let mut area = vec![0u8; 1 << 20];
    let name = Name::new("LS").expect("name");
    encode_lockspace_area(&mut area, g, name, T);
    lockspace_sector0(&mut area[..512], g, name, T);
    area
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl World {
    fn new(seed: u64, config: SimConfig) -> Self {
        let clock = SimClock::new(Time::from_nanos(100_000_000_000));
        let engine = EngineConfig {
            ring_entries: 64,
            buffer_classes: vec![(512, 64), (1 << 20, 16)],
            sync_workers: 0,
        };
        let mut disk = SimBackend::new(&[(512, 1 << 20)], &engine, config, clock.clone());
        disk.load(DiskId(0), 0, &lockspace_image());
        World {
            clock,
            disk,
            hosts: Vec::new(),
            seed,
        }
    }

    fn add_host(&mut self, host_id: u64, name: &str) -> usize {
        let cfg = DeltaConfig {
            space_name: Name::new("LS").expect("name"),
            host_id,
            host_name: Name::new(name).expect("name"),
            geometry: Geometry::LEGACY_512,
            area_offset: 0,
            timeouts: Timeouts::new(T, W),
        };
        let disk = if self.hosts.is_empty() {
            DiskId(0)
        } else {
            self.disk.add_view(DiskId(0))
        };
        self.hosts.push(Host {
            lease: DeltaLease::new(cfg),
            disk,
            inflight: None,
            running: true,
            paused: false,
            held: Vec::new(),
            events: Vec::new(),
        });
        self.hosts.len() - 1
    }

    fn now(&self) -> Time {
        self.clock.now()
    }

    fn issue_io(&mut self) {
        let now = self.now();
        for h in self
            .hosts
            .iter_mut()
            .filter(|h| h.running && !h.paused && h.inflight.is_none())
        {
            if let Some(io) = h.lease.poll_io() {
                let deadline = h.lease.io_deadline();
                let started = match io {
                    DeltaIo::Read { offset, len } => self.disk.start_read(IoRequest {
                        disk: h.disk,
                        offset,
                        len,
                        deadline,
                    }),
                    DeltaIo::Write { offset } => {
                        let data = h.lease.write_data();
                        self.disk.start_write(
                            IoRequest {
                                disk: h.disk,
                                offset,
                                len: data.len(),
                                deadline,
                            },
                            data,
                        )
                    }
                };
                match started {
                    Ok(id) => h.inflight = Some(id),
                    // An older write to the slot may still land: fails like an I/O error.
                    Err(tenure_core::io::SubmitError::WriteInFlight { .. }) => {
                        h.lease.handle_io(
                            now,
                            tenure_core::io::IoOutcome::Failed { errno: libc::EBUSY },
                            &[],
                        );
                    }
                    Err(e) => panic!("seed {}: submit: {e}", self.seed),
                }
            }
        }
        self.disk.flush().expect("flush");
    }

    /// Runs until `until`, calling `check` after every step.
    fn run(&mut self, until: Time, mut check: impl FnMut(&World)) {
        let mut completions = Vec::new();
        loop {
            let now = self.now();
            self.issue_io();
            completions.clear();
            self.disk.poll(now, &mut completions).expect("poll");
            for c in &completions {
                let Some(h) = self.hosts.iter_mut().find(|h| h.inflight == Some(c.id)) else {
                    continue;
                };
                h.inflight = None;
                let data = if c.kind == IoKind::Read {
                    self.disk.read_data(c.id).map(<[u8]>::to_vec)
                } else {
                    None
                };
                self.disk.release(c.id);
                if h.paused {
                    // Delivered when the host runs again.
                    h.held.push((c.outcome, data.unwrap_or_default()));
                } else if h.running {
                    h.lease
                        .handle_io(now, c.outcome, data.as_deref().unwrap_or(&[]));
                }
            }
            for h in self.hosts.iter_mut().filter(|h| h.running && !h.paused) {
                for (outcome, data) in std::mem::take(&mut h.held) {
                    h.lease.handle_io(now, outcome, &data);
                }
                if h.lease.poll_timeout().is_some_and(|t| t <= now) {
                    h.lease.handle_timeout(now);
                }
                while let Some(e) = h.lease.poll_event() {
                    h.events.push((now, e));
                }
            }
            check(self);
            if now >= until {
                return;
            }
            // New I/O asked for in this step starts now, not at the next event.
            self.issue_io();
            let candidates: Vec<Time> = self
                .hosts
                .iter()
                .filter(|h| h.running && !h.paused)
                .filter_map(|h| h.lease.poll_timeout())
                .chain(self.disk.next_due())
                .chain(self.disk.next_deadline())
                .collect();
            let next = candidates
                .into_iter()
                .fold(until, |a, t| a.min(t))
                .max(now.saturating_add(Duration::from_micros(1)));
            self.clock.advance_to(next.min(until.max(now)));
            if self.now() == now {
                self.clock.advance(Duration::from_micros(1));
            }
        }
    }

    fn joined_at(&self, h: usize) -> Option<Time> {
        self.hosts[h]
            .events
            .iter()
            .find(|(_, e)| matches!(e, DeltaEvent::Joined { .. }))
            .map(|(t, _)| *t)
    }
}

#[test]
fn free_slot_join_completes_at_2t_plus_a_few_ios() {
    for seed in 0..20 {
        let mut w = World::new(seed, SimConfig::healthy(seed));
        let h = w.add_host(1, "host-a");
        let start = w.now();
        w.hosts[h].lease.start_join(start).expect("join");
        w.run(start.saturating_add(secs(5)), |_| {});
        let joined = w
            .joined_at(h)
            .unwrap_or_else(|| panic!("seed {seed}: not joined: {:?}", w.hosts[h].events));
        let took = joined.saturating_since(start);
        assert!(
            took >= secs(2 * u64::from(T)),
            "seed {seed}: joined after {took:?}, before 2T"
        );
        assert!(
            took < secs(2 * u64::from(T)) + Duration::from_millis(5),
            "seed {seed}: join took {took:?}"
        );
    }
}

#[test]
fn hosts_see_each_other_live_then_a_stopped_host_fail_and_dead_never_early() {
    let t = Timeouts::new(T, W);
    for seed in 0..10 {
        let mut w = World::new(seed, SimConfig::healthy(seed));
        for id in 1..=3 {
            let h = w.add_host(id, &format!("host-{id}"));
            let now = w.now();
            w.hosts[h].lease.start_join(now).expect("join");
        }
        let t0 = w.now();
        w.run(t0.saturating_add(secs(10)), |_| {});
        let now = w.now();
        for (i, h) in w.hosts.iter().enumerate() {
            assert!(
                h.lease.is_joined(),
                "seed {seed}: host {} not joined: {:?}",
                i + 1,
                h.events
            );
            for other in 1..=3 {
                assert_eq!(
                    h.lease.hosts().status(other, now),
                    HostStatus::Live,
                    "seed {seed}: host {} sees {other}",
                    i + 1
                );
            }
        }
        // Host 3 stops (a crash: no release). Its last renewal landed no later than `stopped`
        // and no earlier than one renewal interval (plus an I/O) before it.
        w.hosts[2].running = false;
        let stopped = w.now();
        let (mut fail_seen, mut dead_seen) = ([None::<Time>; 2], [None::<Time>; 2]);
        let end = stopped.saturating_add(t.host_dead() + secs(10));
        let earliest_last_renewal = t.renewal_interval() + t.io();
        w.run(end, |w| {
            let now = w.now();
            let since = now.saturating_since(stopped);
            for obs in 0..2 {
                let st = w.hosts[obs].lease.hosts().status(3, now);
                // Never earlier than 8T / 8T+W after host 3's last renewal.
                if since + earliest_last_renewal < t.renewal_fail() {
                    assert_eq!(
                        st,
                        HostStatus::Live,
                        "seed {}: observer {} at +{since:?}",
                        w.seed,
                        obs + 1
                    );
                }
                if since + earliest_last_renewal < t.host_dead() {
                    assert_ne!(
                        st,
                        HostStatus::Dead,
                        "seed {}: observer {} at +{since:?}",
                        w.seed,
                        obs + 1
                    );
                }
                if st == HostStatus::Fail && fail_seen[obs].is_none() {
                    fail_seen[obs] = Some(now);
                }
                if st == HostStatus::Dead && dead_seen[obs].is_none() {
                    dead_seen[obs] = Some(now);
                }
            }
        });
        for obs in 0..2 {
            let fail = fail_seen[obs]
                .unwrap_or_else(|| panic!("seed {seed}: observer {} never saw FAIL", obs + 1));
            let dead = dead_seen[obs]
                .unwrap_or_else(|| panic!("seed {seed}: observer {} never saw DEAD", obs + 1));
            let (f, d) = (
                fail.saturating_since(stopped),
                dead.saturating_since(stopped),
            );
            // On time: the observer notices at its next renewal read after the threshold.
            assert!(
                f <= t.renewal_fail() + t.renewal_interval() + t.io(),
                "seed {seed}: FAIL late at +{f:?}"
            );
            assert!(
                d <= t.host_dead() + t.renewal_interval() + t.io(),
                "seed {seed}: DEAD late at +{d:?}"
            );
            assert!(
                w.hosts[obs].lease.is_joined(),
                "seed {seed}: observer {} lost its own lockspace",
                obs + 1
            );
        }
    }
}

#[test]
fn concurrent_joins_of_one_host_id_admit_exactly_one() {
    for seed in 0..200 {
        let jittery = Latency {
            min: Duration::from_micros(10),
            max: Duration::from_millis(30),
            tail_prob: 0.05,
            tail: Duration::from_millis(300),
        };
        let config = SimConfig {
            read_latency: jittery,
            write_latency: jittery,
            ..SimConfig::healthy(seed)
        };
        let mut w = World::new(seed, config);
        let a = w.add_host(7, "host-a");
        let b = w.add_host(7, "host-b");
        let now = w.now();
        w.hosts[a].lease.start_join(now).expect("join");
        w.clock.advance(Duration::from_micros(seed * 37 % 5000));
        let now = w.now();
        w.hosts[b].lease.start_join(now).expect("join");
        let end = now.saturating_add(Timeouts::new(T, W).host_dead() + secs(10));
        w.run(end, |w| {
            let holders = w.hosts.iter().filter(|h| h.lease.is_joined()).count();
            assert!(
                holders <= 1,
                "seed {}: two hosts hold host id 7 at once",
                w.seed
            );
        });
        let joined = w
            .hosts
            .iter()
            .filter(|h| {
                h.events
                    .iter()
                    .any(|(_, e)| matches!(e, DeltaEvent::Joined { .. }))
            })
            .count();
        let busy = w
            .hosts
            .iter()
            .filter(|h| {
                h.events.iter().any(|(_, e)| {
                    matches!(
                        e,
                        DeltaEvent::JoinFailed {
                            error: DeltaError::HostIdBusy { .. }
                        }
                    )
                })
            })
            .count();
        assert_eq!(
            (joined, busy),
            (1, 1),
            "seed {seed}: {:?} / {:?}",
            w.hosts[a].events,
            w.hosts[b].events
        );
    }
}

#[test]
fn taking_a_slot_of_another_name_waits_the_long_delay_but_our_own_name_only_2t() {
    let t = Timeouts::new(T, W);
    for (second_name, expect_long) in [("host-b", true), ("host-a", false)] {
        let mut w = World::new(5, SimConfig::healthy(5));
        let a = w.add_host(3, "host-a");
        let now = w.now();
        w.hosts[a].lease.start_join(now).expect("join");
        w.run(now.saturating_add(secs(6)), |_| {});
        assert!(w.hosts[a].lease.is_joined());
        // host-a crashes; a newcomer takes host id 3.
        w.hosts[a].running = false;
        let crashed = w.now();
        let b = w.add_host(3, second_name);
        w.hosts[b].lease.start_join(crashed).expect("join");
        w.run(crashed.saturating_add(t.host_dead() + secs(10)), |_| {});
        let took = w.joined_at(b).expect("joined").saturating_since(crashed);
        let generation = w.hosts[b].events.iter().find_map(|(_, e)| match e {
            DeltaEvent::Joined { generation } => Some(*generation),
            _ => None,
        });
        assert_eq!(
            generation,
            Some(2),
            "{second_name}: generation increments on every join"
        );
        if expect_long {
            assert!(
                took >= t.join_delay_other_name() + t.join_delay_short(),
                "{second_name}: joined after {took:?}"
            );
        } else {
            assert!(
                took < t.join_delay_short() + Duration::from_millis(5),
                "{second_name}: joined after {took:?}"
            );
        }
    }
}

#[test]
fn renewals_under_faults_never_leave_a_gap_above_8t_while_joined() {
    let t = Timeouts::new(T, W);
    for seed in 0..30 {
        let config = SimConfig {
            read_eio: 0.2,
            write_eio: 0.2,
            late_write: 0.1,
            ..SimConfig::healthy(seed)
        };
        let mut w = World::new(seed, config);
        let h = w.add_host(1, "host-a");
        let now = w.now();
        w.hosts[h].lease.start_join(now).expect("join");
        w.run(now.saturating_add(secs(60)), |w| {
            // While joined, the last confirmed renewal is never more than 8T old.
            let lease = &w.hosts[0].lease;
            if lease.is_joined() {
                let deadline = lease.renewal_deadline().expect("joined has a deadline");
                assert!(
                    w.now() < deadline,
                    "seed {}: still joined past the renewal deadline",
                    w.seed
                );
            }
        });
        let lost = w.hosts[h].events.iter().find_map(|(_, e)| match e {
            DeltaEvent::Lost { error } => Some(error.clone()),
            _ => None,
        });
        if let Some(e) = lost {
            // Faults may lose the lockspace, but only by the rules.
            assert!(
                matches!(e, DeltaError::RenewalDeadlinePassed(d) if d == t.renewal_fail()),
                "seed {seed}: lost for {e}"
            );
        }
    }
}

#[test]
fn pauses_hangs_and_slow_io_never_let_two_hosts_hold_one_host_id() {
    use tenure_core::io::sim::SimRng;
    let t = Timeouts::new(T, W);
    let (mut b_joined, mut b_busy, mut a_reset) = (0, 0, 0);
    for seed in 0..60 {
        let mut rng = SimRng::new(seed ^ 0xABCD);
        // Latency tails above T, EIO, late-landing writes.
        let slow = Latency {
            min: Duration::from_micros(50),
            max: Duration::from_millis(20),
            tail_prob: 0.03,
            tail: Duration::from_millis(1500),
        };
        let config = SimConfig {
            read_latency: slow,
            write_latency: slow,
            read_eio: 0.02,
            write_eio: 0.02,
            late_write: 0.03,
            ..SimConfig::healthy(seed)
        };
        let mut w = World::new(seed, config);
        let a = w.add_host(5, "host-a");
        let now = w.now();
        w.hosts[a].lease.start_join(now).expect("join");
        w.run(now.saturating_add(secs(5)), |_| {});
        // A contender with another name, while host-a is paused for a random time (sometimes
        // far beyond 8T + W) and the disk hangs for a while.
        let b = w.add_host(5, "host-b");
        let now = w.now();
        w.hosts[b].lease.start_join(now).expect("join");
        w.hosts[a].paused = true;
        let pause = Duration::from_millis(
            rng.below(2 * u64::try_from(t.host_dead().as_millis()).unwrap_or(0)),
        );
        let hang_at = now.saturating_add(Duration::from_millis(rng.below(20_000)));
        let hang_for = Duration::from_millis(rng.below(3_000));
        // The protocol's assumption: a host's watchdog resets it by 8T + W after its last
        // renewal unless it renews — a paused host counts as holding until then.
        let fenced_at = |h: &Host| {
            h.lease
                .renewal_deadline()
                .map(|d| d.saturating_add(Duration::from_secs(u64::from(W))))
        };
        let check = move |w: &World| {
            let now = w.now();
            let holders = w
                .hosts
                .iter()
                .filter(|h| {
                    h.running
                        && h.lease.is_joined()
                        && !(h.paused && fenced_at(h).is_some_and(|f| now >= f))
                })
                .count();
            assert!(
                holders <= 1,
                "seed {}: two hosts hold host id 5 at {now:?}",
                w.seed
            );
        };
        w.run(hang_at, check);
        let views: Vec<DiskId> = w.hosts.iter().map(|h| h.disk).collect();
        views.iter().for_each(|d| w.disk.set_hung(*d, true));
        w.run(hang_at.saturating_add(hang_for), check);
        views.iter().for_each(|d| w.disk.set_hung(*d, false));
        w.run(now.saturating_add(pause), check);
        // Resumed — unless its watchdog reset it meanwhile.
        if fenced_at(&w.hosts[a]).is_some_and(|f| w.now() >= f) {
            w.hosts[a].running = false;
        }
        w.hosts[a].paused = false;
        w.run(now.saturating_add(pause + t.host_dead() + secs(20)), check);
        let has =
            |h: usize, f: &dyn Fn(&DeltaEvent) -> bool| w.hosts[h].events.iter().any(|(_, e)| f(e));
        b_joined += usize::from(has(b, &|e| matches!(e, DeltaEvent::Joined { .. })));
        b_busy += usize::from(has(b, &|e| {
            matches!(
                e,
                DeltaEvent::JoinFailed {
                    error: DeltaError::HostIdBusy { .. }
                }
            )
        }));
        a_reset += usize::from(!w.hosts[a].running);
    }
    eprintln!("60 seeds: contender joined {b_joined}, contender refused as busy {b_busy}, paused holder reset {a_reset}");
    // Both outcomes must have been exercised, or the test proves little.
    assert!(
        b_joined > 0 && b_busy > 0 && a_reset > 0,
        "joined {b_joined}, busy {b_busy}, reset {a_reset}"
    );
}

#[test]
fn foreign_or_corrupt_content_in_our_slot_loses_the_lockspace_at_once() {
    for corrupt in [false, true] {
        let mut w = World::new(21, SimConfig::healthy(21));
        let h = w.add_host(2, "host-a");
        let now = w.now();
        w.hosts[h].lease.start_join(now).expect("join");
        w.run(now.saturating_add(secs(4)), |_| {});
        assert!(w.hosts[h].lease.is_joined());
        if corrupt {
            w.disk.corrupt_sector(DiskId(0), 1);
        } else {
            // Another host wrote our slot (a misconfigured duplicate host id).
            let mut sector = w.disk.disk_bytes(DiskId(0))[512..1024].to_vec();
            let mut rec = tenure_format::LeaderRecord::decode(&sector).expect("ours");
            rec.resource_name = Name::new("intruder").expect("name");
            rec.timestamp += 100;
            rec.encode_into(&mut sector);
            w.disk.load(DiskId(0), 512, &sector);
        }
        let at = w.now();
        w.run(at.saturating_add(secs(3)), |_| {});
        let lost = w.hosts[h].events.iter().find_map(|(t, e)| match e {
            DeltaEvent::Lost { error } => Some((*t, error.clone())),
            _ => None,
        });
        let (t, error) =
            lost.unwrap_or_else(|| panic!("corrupt={corrupt}: not lost: {:?}", w.hosts[h].events));
        // At the next renewal (within 2T), not at the 8T deadline.
        assert!(
            t.saturating_since(at) <= secs(2 * u64::from(T)) + Duration::from_millis(10),
            "lost after {:?}",
            t.saturating_since(at)
        );
        if corrupt {
            assert!(matches!(error, DeltaError::Corrupt(_)), "{error}");
        } else {
            assert!(matches!(error, DeltaError::Foreign { .. }), "{error}");
        }
        assert!(!w.hosts[h].lease.is_joined());
    }
}
