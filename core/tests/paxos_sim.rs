//! Paxos leases in simulation: hosts contend for one resource on a simulated disk with seeded
//! latencies and faults, in exclusive and shared mode, converting between the two, and some
//! crash while holding. The safety statement of PROTOCOL.md is checked after every step: at
//! most one host holds the resource exclusively and never while another holds it shared,
//! counting a crashed holder as holding (in its mode) until its watchdog would have fenced it
//! (8T + W after its last renewal); a converting host counts as a shared holder. Failures
//! print the seed.

use std::time::Duration;

use tenure_core::clock::{Clock, SimClock, Time};
use tenure_core::delta::HostStatus;
use tenure_core::io::sim::{Latency, SimBackend, SimConfig, SimRng};
use tenure_core::io::{DiskId, EngineConfig, IoBackend, IoId, IoKind, IoOutcome, IoRequest};
use tenure_core::paxos::{
    Acquired, BallotCache, PaxosAcquire, PaxosConfig, PaxosError, PaxosIo, PaxosRelease,
};
use tenure_core::timeouts::Timeouts;
use tenure_format::area::encode_resource_area;
use tenure_format::{Geometry, Name};

const T: u16 = 1;
const W: u32 = 10;
const HOSTS: u64 = 4;

// A test-only state per host; sizes do not matter here.
#[allow(clippy::large_enum_variant)]
enum Op {
    Idle {
        next: Time,
    },
    Acquiring(Box<PaxosAcquire>),
    Holding {
        held: Acquired,
        until: Time,
    },
    Releasing(PaxosRelease),
    /// Shared → exclusive; the shared hold it keeps on failure.
    ConvertingUp(Box<PaxosAcquire>, Acquired),
    /// Exclusive → shared.
    ConvertingDown(PaxosRelease, Acquired),
}

struct Host {
    id: u64,
    /// This host's own view of the shared disk.
    disk: DiskId,
    op: Op,
    /// Outstanding I/O: one id, or a linked write→read pair.
    io: Vec<IoId>,
    outcome: IoOutcome,
    data: Vec<u8>,
    /// I/O was handed out and its completion not yet delivered.
    awaiting: bool,
    crashed_at: Option<Time>,
    /// Held when it crashed: counts as holding until fenced.
    held_at_crash: bool,
    /// ...in shared mode.
    shared_at_crash: bool,
    /// The lver it held when it crashed.
    crashed_lver: Option<u64>,
    /// Another host acquired a later lver after this one crashed holding.
    taken_over: bool,
    acquired: u64,
    /// What its last release left, for a cached start of its next acquire.
    cache: Option<BallotCache>,
}

fn cfg(host_id: u64, no_wait: bool, shared: bool) -> PaxosConfig {
    PaxosConfig {
        space_name: Name::new("LS").expect("name"),
        resource_name: Name::new("vm1").expect("name"),
        geometry: Geometry::LEGACY_512,
        area_offset: 0,
        host_id,
        generation: 1,
        timeouts: Timeouts::new(T, W),
        no_wait,
        // No hint, the right one, one too small (costs a re-read) and one too large.
        expect_lver: None,
        read_lvb: false,
        shared,
    }
}

/// Ground-truth delta-lease status of a host, as every observer would report it.
fn status(h: &Host, now: Time, t: &Timeouts) -> HostStatus {
    match h.crashed_at {
        None => HostStatus::Live,
        Some(c) if now < c.saturating_add(t.renewal_fail()) => HostStatus::Live,
        Some(c) if now < c.saturating_add(t.host_dead()) => HostStatus::Fail,
        Some(_) => HostStatus::Dead,
    }
}

struct Stats {
    steps: u64,
    acquires: u64,
    shared_acquires: u64,
    conversions_up: u64,
    conversions_down: u64,
    crashes: u64,
    takeovers: u64,
    /// Acquires that failed past phase 2 and retracted.
    retracted: u64,
    /// Acquires started from a release's ballot cache.
    cached_starts: u64,
}

fn run_seed(seed: u64, crashes: bool, stats: &mut Stats) {
    let t = Timeouts::new(T, W);
    let clock = SimClock::new(Time::from_nanos(1_000_000_000_000));
    let slow = Latency {
        min: Duration::from_micros(20),
        max: Duration::from_millis(3),
        tail_prob: 0.02,
        tail: Duration::from_millis(400),
    };
    let config = SimConfig {
        read_latency: slow,
        write_latency: slow,
        read_eio: 0.01,
        write_eio: 0.01,
        late_write: 0.005,
        ..SimConfig::healthy(seed)
    };
    let engine = EngineConfig {
        ring_entries: 64,
        buffer_classes: vec![(512, 64), (8192, 32), (1 << 20, 8)],
        sync_workers: 0,
    };
    let mut disk = SimBackend::new(&[(512, 1 << 20)], &engine, config, clock.clone());
    let mut area = vec![0u8; 1 << 20];
    encode_resource_area(
        &mut area,
        Geometry::LEGACY_512,
        Name::new("LS").expect("n"),
        Name::new("vm1").expect("n"),
        HOSTS,
    );
    disk.load(DiskId(0), 0, &area);
    let mut rng = SimRng::new(seed ^ 0x5eed);
    let start = clock.now();
    let mut hosts: Vec<Host> = (1..=HOSTS)
        .map(|id| Host {
            id,
            disk: if id == 1 {
                DiskId(0)
            } else {
                disk.add_view(DiskId(0))
            },
            op: Op::Idle {
                next: start.saturating_add(Duration::from_micros(rng.below(2000))),
            },
            io: Vec::new(),
            outcome: IoOutcome::Done,
            data: Vec::new(),
            awaiting: false,
            crashed_at: None,
            held_at_crash: false,
            shared_at_crash: false,
            crashed_lver: None,
            taken_over: false,
            acquired: 0,
            cache: None,
        })
        .collect();
    let end = start.saturating_add(Duration::from_secs(if crashes { 60 } else { 20 }));
    let mut completions = Vec::new();
    let mut crashes_left = if crashes { 1 + rng.below(2) } else { 0 };
    // Holders crash at seeded times early enough that host-dead time (8T + W) passes
    // before the run ends, so every seed exercises a takeover.
    let mut next_crash = start.saturating_add(Duration::from_millis(1000 + rng.below(20_000)));
    while clock.now() < end {
        let now = clock.now();
        stats.steps += 1;
        // Completions: a chain reports its write and its read; the read's data is what counts.
        completions.clear();
        disk.poll(now, &mut completions).expect("poll");
        for c in &completions {
            let Some(h) = hosts.iter_mut().find(|h| h.io.contains(&c.id)) else {
                disk.release(c.id);
                continue;
            };
            if c.outcome != IoOutcome::Done && h.outcome == IoOutcome::Done {
                h.outcome = c.outcome;
            }
            if c.kind == IoKind::Read {
                if let Some(d) = disk.read_data(c.id) {
                    h.data.clear();
                    h.data.extend_from_slice(d);
                }
            }
            disk.release(c.id);
            h.io.retain(|id| *id != c.id);
        }
        // Advance every live host.
        let statuses: Vec<HostStatus> = hosts.iter().map(|h| status(h, now, &t)).collect();
        let crashed: Vec<(usize, u64)> = hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.taken_over)
            .filter_map(|(i, h)| h.crashed_lver.map(|l| (i, l)))
            .collect();
        let mut taken: Vec<usize> = Vec::new();
        for h in hosts.iter_mut().filter(|h| h.crashed_at.is_none()) {
            if h.awaiting && h.io.is_empty() {
                h.awaiting = false;
                let outcome = std::mem::replace(&mut h.outcome, IoOutcome::Done);
                match &mut h.op {
                    Op::Acquiring(a) | Op::ConvertingUp(a, _) => a.handle_io(now, outcome, &h.data),
                    Op::Releasing(r) | Op::ConvertingDown(r, _) => {
                        r.handle_io(now, outcome, &h.data)
                    }
                    _ => {}
                }
                h.data.clear();
            }
            let next = match &mut h.op {
                Op::Idle { next } if *next <= now => {
                    let c = cfg(h.id, rng.below(2) == 0, rng.below(3) == 0);
                    // Half the time from what its last release left (if anything).
                    let a = match h.cache.take().filter(|_| rng.below(2) == 0) {
                        Some(cache) => {
                            stats.cached_starts += 1;
                            PaxosAcquire::new_cached(c, &cache, now)
                        }
                        None => PaxosAcquire::new(c, now),
                    };
                    Some(Op::Acquiring(Box::new(a)))
                }
                Op::Acquiring(a) => {
                    if a.poll_timeout().is_some_and(|x| x <= now) {
                        a.handle_timeout(now);
                    }
                    if let Some((owner, _gen)) = a.poll_owner_query() {
                        a.handle_owner_status(now, statuses[(owner - 1) as usize], true);
                    }
                    match a.poll_result() {
                        Some(Ok(held)) => {
                            h.acquired += 1;
                            stats.acquires += 1;
                            stats.shared_acquires += u64::from(held.shared);
                            taken.extend(
                                crashed
                                    .iter()
                                    .filter(|(_, l)| held.lver > *l)
                                    .map(|(i, _)| *i),
                            );
                            let until =
                                now.saturating_add(Duration::from_micros(rng.below(30_000)));
                            Some(Op::Holding { held, until })
                        }
                        Some(Err(e)) => {
                            stats.retracted += u64::from(a.retracts() > 0);
                            if matches!(
                                e,
                                PaxosError::Corrupt(_) | PaxosError::HostIdAboveNumHosts { .. }
                            ) {
                                panic!("seed {seed}: host {}: {e}", h.id);
                            }
                            Some(Op::Idle {
                                next: now
                                    .saturating_add(Duration::from_micros(200 + rng.below(20_000))),
                            })
                        }
                        None => None,
                    }
                }
                Op::Holding { held, until } if *until <= now => Some(match rng.below(4) {
                    // Now and then a holder converts instead of releasing.
                    0 if held.shared => Op::ConvertingUp(
                        Box::new(PaxosAcquire::convert_to_exclusive(
                            cfg(h.id, false, false),
                            held,
                            now,
                        )),
                        held.clone(),
                    ),
                    0 => Op::ConvertingDown(
                        PaxosRelease::to_shared(cfg(h.id, false, false), held.clone(), now),
                        held.clone(),
                    ),
                    _ => Op::Releasing(PaxosRelease::new(
                        cfg(h.id, false, false),
                        held.clone(),
                        now,
                    )),
                }),
                Op::ConvertingUp(a, shared_hold) => {
                    if a.poll_timeout().is_some_and(|x| x <= now) {
                        a.handle_timeout(now);
                    }
                    if let Some((owner, _gen)) = a.poll_owner_query() {
                        a.handle_owner_status(now, statuses[(owner - 1) as usize], true);
                    }
                    let until = now.saturating_add(Duration::from_micros(rng.below(30_000)));
                    match a.poll_result() {
                        Some(Ok(held)) => {
                            stats.conversions_up += 1;
                            taken.extend(
                                crashed
                                    .iter()
                                    .filter(|(_, l)| held.lver > *l)
                                    .map(|(i, _)| *i),
                            );
                            Some(Op::Holding { held, until })
                        }
                        Some(Err(_)) => Some(Op::Holding {
                            held: a.shared_hold_after_failure(shared_hold),
                            until,
                        }),
                        None => None,
                    }
                }
                Op::ConvertingDown(r, exclusive_hold) => r.poll_result().map(|res| {
                    stats.conversions_down += u64::from(res.is_ok());
                    // Failed or not, it is held shared from now on (our RELEASED+SHARED
                    // dblock may have landed).
                    Op::Holding {
                        held: PaxosRelease::as_shared(exclusive_hold),
                        until: now.saturating_add(Duration::from_micros(rng.below(30_000))),
                    }
                }),
                Op::Releasing(r) => r.poll_result().map(|_| {
                    h.cache = r.cache();
                    Op::Idle {
                        next: now.saturating_add(Duration::from_micros(rng.below(5_000))),
                    }
                }),
                _ => None,
            };
            if let Some(n) = next {
                h.op = n;
            }
            // Hand out the next I/O.
            if h.io.is_empty() {
                let (io, data, deadline) = match &mut h.op {
                    Op::Acquiring(a) | Op::ConvertingUp(a, _) => {
                        (a.poll_io(), a.write_data().to_vec(), a.io_deadline())
                    }
                    Op::Releasing(r) | Op::ConvertingDown(r, _) => {
                        (r.poll_io(), r.write_data().to_vec(), r.io_deadline())
                    }
                    _ => (None, Vec::new(), now),
                };
                let view = h.disk;
                let req = |offset, len| IoRequest {
                    disk: view,
                    offset,
                    len,
                    deadline,
                };
                let started = match io {
                    Some(PaxosIo::Read { offset, len }) => {
                        disk.start_read(req(offset, len)).map(|r| vec![r])
                    }
                    Some(PaxosIo::Write { offset }) => disk
                        .start_write(req(offset, data.len()), &data)
                        .map(|w| vec![w]),
                    Some(PaxosIo::WriteThenRead {
                        write_offset,
                        read_offset,
                        read_len,
                    }) => disk
                        .start_chain(
                            req(write_offset, data.len()),
                            &data,
                            req(read_offset, read_len),
                        )
                        .map(|(w, r)| vec![w, r]),
                    Some(PaxosIo::WriteAndRead {
                        write_offset,
                        read_offset,
                        read_len,
                    }) => disk
                        .start_pair(
                            req(write_offset, data.len()),
                            &data,
                            req(read_offset, read_len),
                        )
                        .map(|(w, r)| vec![w, r]),
                    None => Ok(Vec::new()),
                };
                match started {
                    Ok(ids) => h.io = ids,
                    Err(tenure_core::io::SubmitError::WriteInFlight { .. }) => {
                        // An older write of ours to that sector may still land: this attempt
                        // fails like an I/O error.
                        h.outcome = IoOutcome::Failed { errno: libc::EBUSY };
                        h.awaiting = true;
                        h.io.clear();
                        continue;
                    }
                    Err(e) => panic!("seed {seed} step {} host {}: {e}", stats.steps, h.id),
                }
                h.awaiting = !h.io.is_empty();
            }
        }
        disk.flush().expect("flush");
        for i in taken {
            if !hosts[i].taken_over {
                hosts[i].taken_over = true;
                stats.takeovers += 1;
            }
        }
        // A holder crashes now and then (no release; its I/O in flight may still land).
        if crashes_left > 0 && now >= next_crash {
            if let Some(h) = hosts
                .iter_mut()
                .find(|h| h.crashed_at.is_none() && matches!(h.op, Op::Holding { .. }))
            {
                h.crashed_at = Some(now);
                h.held_at_crash = true;
                if let Op::Holding { held, .. } = &h.op {
                    h.crashed_lver = Some(held.lver);
                    h.shared_at_crash = held.shared;
                }
                crashes_left -= 1;
                stats.crashes += 1;
                next_crash = now.saturating_add(Duration::from_millis(1000 + rng.below(10_000)));
            }
        }
        // Safety: at most one exclusive holder and never beside a shared one; a crashed
        // holder holds (in its mode) until fenced; a converting host holds shared.
        let mode = |h: &Host| -> Option<bool> {
            match h.crashed_at {
                None => match &h.op {
                    Op::Holding { held, .. } => Some(held.shared),
                    Op::ConvertingUp(..) | Op::ConvertingDown(..) => Some(true),
                    _ => None,
                },
                Some(c) if h.held_at_crash && now < c.saturating_add(t.host_dead()) => {
                    Some(h.shared_at_crash)
                }
                Some(_) => None,
            }
        };
        let exclusive: Vec<u64> = hosts
            .iter()
            .filter(|h| mode(h) == Some(false))
            .map(|h| h.id)
            .collect();
        let shared: Vec<u64> = hosts
            .iter()
            .filter(|h| mode(h) == Some(true))
            .map(|h| h.id)
            .collect();
        let violation = exclusive.len() > 1 || (!exclusive.is_empty() && !shared.is_empty());
        if violation {
            for h in &hosts {
                let st = match &h.op {
                    Op::Holding { held, .. } => format!(
                        "holding lver {} since? leader {:?}",
                        held.lver, held.leader.owner_id
                    ),
                    Op::Idle { .. } => "idle".into(),
                    Op::Acquiring(_) => "acquiring".into(),
                    Op::Releasing(_) => "releasing".into(),
                    Op::ConvertingUp(..) => "converting to exclusive".into(),
                    Op::ConvertingDown(..) => "converting to shared".into(),
                };
                eprintln!(
                    "host {}: {st}; crashed_at {:?} held_at_crash {}",
                    h.id, h.crashed_at, h.held_at_crash
                );
            }
            let l = tenure_format::LeaderRecord::decode(&disk.disk_bytes(DiskId(0))[..512]);
            eprintln!("leader on disk: {l:?}");
            for id in 1..=HOSTS {
                let at = (id as usize + 1) * 512;
                eprintln!(
                    "dblock {id}: {:?}",
                    tenure_format::Dblock::decode(&disk.disk_bytes(DiskId(0))[at..at + 512])
                );
            }
        }
        assert!(
            !violation,
            "seed {seed}: hosts {exclusive:?} hold the resource exclusively while {shared:?} hold it shared at {now:?}"
        );
        // Next instant.
        let mut next = end;
        for h in hosts.iter().filter(|h| h.crashed_at.is_none()) {
            match &h.op {
                Op::Idle { next: n } => next = next.min(*n),
                Op::Holding { until, .. } => next = next.min(*until),
                Op::Acquiring(a) | Op::ConvertingUp(a, _) => {
                    if let Some(x) = a.poll_timeout() {
                        next = next.min(x);
                    }
                }
                Op::Releasing(_) | Op::ConvertingDown(..) => {}
            }
        }
        for x in disk.next_due().into_iter().chain(disk.next_deadline()) {
            next = next.min(x);
        }
        clock.advance_to(next.max(now.saturating_add(Duration::from_micros(1))));
    }
    assert!(
        hosts.iter().map(|h| h.acquired).sum::<u64>() > 0,
        "seed {seed}: nobody ever acquired"
    );
}

#[test]
fn contention_with_faults_never_two_holders() {
    let mut stats = Stats {
        steps: 0,
        acquires: 0,
        shared_acquires: 0,
        conversions_up: 0,
        conversions_down: 0,
        crashes: 0,
        takeovers: 0,
        retracted: 0,
        cached_starts: 0,
    };
    for seed in 0..40 {
        run_seed(seed, false, &mut stats);
    }
    eprintln!(
        "{} steps, {} acquires ({} shared), {} conversions to exclusive, {} to shared, {} retracted after a failure past phase 2, {} started from a ballot cache, no violation",
        stats.steps, stats.acquires, stats.shared_acquires, stats.conversions_up, stats.conversions_down, stats.retracted, stats.cached_starts
    );
    assert!(stats.retracted > 0, "no failure past phase 2 was retracted");
    assert!(
        stats.cached_starts > 0,
        "no acquire started from a ballot cache"
    );
    assert!(stats.steps >= 100_000, "only {} steps", stats.steps);
    assert!(
        stats.shared_acquires > 0 && stats.conversions_up > 0 && stats.conversions_down > 0,
        "shared mode and both conversions exercised"
    );
}

#[test]
fn crashed_holders_are_taken_over_only_after_they_are_fenced() {
    let mut stats = Stats {
        steps: 0,
        acquires: 0,
        shared_acquires: 0,
        conversions_up: 0,
        conversions_down: 0,
        crashes: 0,
        takeovers: 0,
        retracted: 0,
        cached_starts: 0,
    };
    for seed in 100..120 {
        run_seed(seed, true, &mut stats);
    }
    eprintln!("{} steps, {} acquires, {} holder crashes, {} takeovers of a crashed holder's lease, no violation", stats.steps, stats.acquires, stats.crashes, stats.takeovers);
    assert!(
        stats.takeovers > 0 && stats.takeovers * 2 >= stats.crashes,
        "only {} of {} crashed holders' leases were taken over: the test proves too little about takeover",
        stats.takeovers,
        stats.crashes
    );
}
