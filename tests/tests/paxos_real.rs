//! Paxos leases contended on real devices: three hosts (each a lockspace thread with its own
//! loop device over one file, io_timeout 1), two acquirer threads per host, each contending
//! for one of two resources against the other hosts. A devcount-style oracle proves exclusion:
//! every holder marks a counter sector it owns while holding — it must find the sector
//! unmarked on entry and still its own on exit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tenure_core::clock::MonotonicClock;
use tenure_core::delta::{DeltaConfig, HostStatus};
use tenure_core::dev::{Access, Device};
use tenure_core::io::drive::{complete, deadline_in};
use tenure_core::io::{
    open_backend, BackendKind, DiskId, EngineConfig, IoBackend, IoOutcome, IoRequest,
};
use tenure_core::paxos::{blocking, PaxosConfig, PaxosError};
use tenure_core::timeouts::Timeouts;
use tenure_format::{Geometry, Name};
use tenure_tests::{loop_devices_available, tenure_ok, BackingFile, LockspaceThread, LoopDevice};

const T: u16 = 1;
const W: u32 = 10;
const HOSTS: u64 = 3;
const RESOURCES: u64 = 2;
/// Counter sectors live after the lease areas.
const COUNTERS: u64 = 8 << 20;

fn sector_io(e: &mut dyn IoBackend, offset: u64, write: Option<&[u8]>) -> Vec<u8> {
    let req = IoRequest {
        disk: DiskId(0),
        offset,
        len: 512,
        deadline: deadline_in(Duration::from_secs(5)),
    };
    let id = match write {
        Some(d) => e.start_write(req, d),
        None => e.start_read(req),
    }
    .expect("start");
    let c = complete(e, 1).expect("complete");
    assert_eq!(c[0].outcome, IoOutcome::Done);
    let data = e.read_data(id).map(<[u8]>::to_vec).unwrap_or_default();
    e.release(id);
    data
}

fn mark(holder: u64, count: u64) -> Vec<u8> {
    let mut s = vec![0u8; 512];
    s[..8].copy_from_slice(&holder.to_le_bytes());
    s[8..16].copy_from_slice(&count.to_le_bytes());
    s
}

fn read_mark(s: &[u8]) -> (u64, u64) {
    (
        u64::from_le_bytes(s[..8].try_into().expect("8")),
        u64::from_le_bytes(s[8..16].try_into().expect("8")),
    )
}

/// The oracle's visit while holding: finds the counter sector unmarked, marks it ours, waits,
/// finds it still ours, unmarks it. Returns the overlaps seen (0, 1 or 2).
fn visit_counter(e: &mut dyn IoBackend, counter: u64, host_id: u64) -> u64 {
    let mut seen = 0;
    let (holder, count) = read_mark(&sector_io(e, counter, None));
    if holder != 0 {
        seen += 1;
    }
    sector_io(e, counter, Some(&mark(host_id, count + 1)));
    std::thread::sleep(Duration::from_millis(2));
    if read_mark(&sector_io(e, counter, None)) != (host_id, count + 1) {
        seen += 1;
    }
    sector_io(e, counter, Some(&mark(0, count + 1)));
    seen
}

/// 0.2–3.2 ms between an acquirer's attempts, varied by a per-acquirer sequence.
fn next_pause(jitter: &mut u64) -> Duration {
    *jitter = jitter
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1);
    Duration::from_micros(200 + (*jitter >> 33) % 3000)
}

#[test]
fn three_hosts_contend_and_the_counter_oracle_sees_no_overlap() {
    if !loop_devices_available() {
        return;
    }
    let file = BackingFile::new(16 << 20);
    let devs: Vec<LoopDevice> = (0..HOSTS)
        .map(|_| LoopDevice::attach(file.path(), 512))
        .collect();
    let p = devs[0].path_str();
    tenure_ok(&[
        "lockspace",
        "init",
        &format!("DC:0:{p}:0"),
        "--io-timeout",
        "1",
    ]);
    for r in 1..=RESOURCES {
        tenure_ok(&[
            "resource",
            "init",
            &format!("DC:r{r}:{p}:{}M", r),
            "--num-hosts",
            "4",
        ]);
    }
    let acquired = AtomicU64::new(0);
    let refused = AtomicU64::new(0);
    let overlaps = AtomicU64::new(0);
    let run_for = Duration::from_secs(12);
    std::thread::scope(|s| {
        let lockspaces: Vec<LockspaceThread> = devs
            .iter()
            .enumerate()
            .map(|(i, dev)| {
                let cfg = DeltaConfig {
                    space_name: Name::new("DC").expect("name"),
                    host_id: i as u64 + 1,
                    host_name: Name::new(&format!("dc-host-{}", i + 1)).expect("name"),
                    geometry: Geometry::LEGACY_512,
                    area_offset: 0,
                    timeouts: Timeouts::new(T, W),
                };
                LockspaceThread::spawn(s, dev.path(), cfg)
            })
            .collect();
        let generations: Vec<u64> = lockspaces
            .iter()
            .map(|l| {
                l.wait_for("join", Duration::from_secs(10), |s| {
                    s.generation().is_some()
                })
                .generation()
                .expect("joined")
            })
            .collect();
        for l in &lockspaces {
            l.wait_for("all hosts LIVE", Duration::from_secs(10), |s| {
                (1..=HOSTS).all(|h| s.host(h).0 == HostStatus::Live)
            });
        }
        let start = Instant::now();
        // Workers in an inner scope: they end before the lockspace threads are stopped.
        std::thread::scope(|w| {
            for (h, dev) in devs.iter().enumerate() {
                for r in 1..=RESOURCES {
                    let (ls, generation) = (&lockspaces[h], generations[h]);
                    let (acquired, refused, overlaps) = (&acquired, &refused, &overlaps);
                    w.spawn(move || {
                        let host_id = h as u64 + 1;
                        let config = EngineConfig {
                            ring_entries: 8,
                            buffer_classes: vec![(512, 8), (1 << 20, 2)],
                            sync_workers: 1,
                        };
                        let (mut e, _) = open_backend(
                            vec![Device::open(dev.path(), Access::ReadWrite).expect("open")],
                            &config,
                            BackendKind::Uring,
                        )
                        .expect("engine");
                        let cfg = PaxosConfig {
                            space_name: Name::new("DC").expect("name"),
                            resource_name: Name::new(&format!("r{r}")).expect("name"),
                            geometry: Geometry::LEGACY_512,
                            area_offset: r << 20,
                            host_id,
                            generation,
                            timeouts: Timeouts::new(T, W),
                            no_wait: true,
                            expect_lver: None,
                            read_lvb: false,
                            shared: false,
                        };
                        let counter = COUNTERS + r * 512;
                        let clock = MonotonicClock;
                        let mut status = |host: u64, gen: u64| {
                            let (st, g) = ls.snapshot().host(host);
                            (st, g == gen)
                        };
                        let mut jitter = host_id * 7919 + r * 104_729;
                        while start.elapsed() < run_for {
                            match blocking::acquire(
                                e.as_mut(),
                                &clock,
                                DiskId(0),
                                cfg.clone(),
                                &mut status,
                            )
                            .expect("engine")
                            {
                                Ok(held) => {
                                    acquired.fetch_add(1, Ordering::SeqCst);
                                    let seen = visit_counter(e.as_mut(), counter, host_id);
                                    overlaps.fetch_add(seen, Ordering::SeqCst);
                                    blocking::release(
                                        e.as_mut(),
                                        &clock,
                                        DiskId(0),
                                        cfg.clone(),
                                        held,
                                    )
                                    .expect("engine")
                                    .expect("release");
                                }
                                Err(
                                    PaxosError::OwnerAlive { .. }
                                    | PaxosError::AcquiredByOther { .. }
                                    | PaxosError::OwnedRetry { .. },
                                ) => {
                                    refused.fetch_add(1, Ordering::SeqCst);
                                }
                                Err(other) => panic!("host {host_id} r{r}: {other}"),
                            }
                            std::thread::sleep(next_pause(&mut jitter));
                        }
                    });
                }
            }
        });
    });
    let (a, f, o) = (
        acquired.load(Ordering::SeqCst),
        refused.load(Ordering::SeqCst),
        overlaps.load(Ordering::SeqCst),
    );
    eprintln!(
        "{a} acquisitions, {f} refusals (owner alive / lost ballot), {o} overlaps in {run_for:?}"
    );
    assert_eq!(o, 0, "two holders were inside at once");
    assert!(
        a >= 50 && f > 0,
        "too little contention to prove anything: {a} acquired, {f} refused"
    );
}

/// A lease on three disks (two plain loop devices and one over a FUSE file that fails and
/// then hangs its writes for a while), three hosts with two acquirers each: the counter oracle
/// sees no overlap, and acquires keep succeeding on the majority while the third disk is bad.
#[test]
fn three_hosts_on_three_disks_keep_exclusion_while_one_disk_fails() {
    if !loop_devices_available() || !tenure_tests::fuse_available() {
        return;
    }
    use tenure_core::paxos::disks;
    let files = [BackingFile::new(16 << 20), BackingFile::new(16 << 20)];
    let faulty = tenure_tests::StallFs::start(16 << 20);
    // Per host: its own loop device on each disk; the third disk through the FUSE file.
    let devs: Vec<[LoopDevice; 3]> = (0..HOSTS)
        .map(|_| {
            [
                LoopDevice::attach(files[0].path(), 512),
                LoopDevice::attach(files[1].path(), 512),
                LoopDevice::attach(&faulty.lun(), 512),
            ]
        })
        .collect();
    // Resource r1 and r2 (one per acquirer of a host: a host's acquirers share its host id,
    // so only different hosts exclude each other); each area sits at a different offset on
    // each disk.
    let areas_of = |r: u64| -> [u64; 3] { [r << 20, (r + 2) << 20, (r + 4) << 20] };
    tenure_ok(&[
        "lockspace",
        "init",
        &format!("MD:0:{}:0", devs[0][0].path_str()),
        "--io-timeout",
        "1",
    ]);
    for r in 1..=RESOURCES {
        for (d, &off) in areas_of(r).iter().enumerate() {
            tenure_ok(&[
                "resource",
                "init",
                &format!("MD:r{r}:{}:{off}", devs[0][d].path_str()),
                "--num-hosts",
                "4",
            ]);
        }
    }
    let acquired = AtomicU64::new(0);
    let acquired_in_fault = AtomicU64::new(0);
    let refused = AtomicU64::new(0);
    let overlaps = AtomicU64::new(0);
    let fault_on = std::sync::atomic::AtomicBool::new(false);
    let run_for = Duration::from_secs(14);
    std::thread::scope(|s| {
        let lockspaces: Vec<LockspaceThread> = devs
            .iter()
            .enumerate()
            .map(|(i, dev)| {
                let cfg = DeltaConfig {
                    space_name: Name::new("MD").expect("name"),
                    host_id: i as u64 + 1,
                    host_name: Name::new(&format!("md-host-{}", i + 1)).expect("name"),
                    geometry: Geometry::LEGACY_512,
                    area_offset: 0,
                    timeouts: Timeouts::new(T, W),
                };
                LockspaceThread::spawn(s, dev[0].path(), cfg)
            })
            .collect();
        let generations: Vec<u64> = lockspaces
            .iter()
            .map(|l| {
                l.wait_for("join", Duration::from_secs(10), |s| {
                    s.generation().is_some()
                })
                .generation()
                .expect("joined")
            })
            .collect();
        for l in &lockspaces {
            l.wait_for("all hosts LIVE", Duration::from_secs(10), |s| {
                (1..=HOSTS).all(|h| s.host(h).0 == HostStatus::Live)
            });
        }
        let start = Instant::now();
        std::thread::scope(|w| {
            // The fault schedule: 3-6 s EIO on writes, 7-10 s writes hang.
            let (faulty, fault_flag) = (&faulty, &fault_on);
            w.spawn(move || {
                let at = |secs| {
                    let t = start + Duration::from_secs(secs);
                    std::thread::sleep(t.saturating_duration_since(Instant::now()));
                };
                at(3);
                fault_flag.store(true, Ordering::SeqCst);
                faulty.eio_writes(true);
                at(6);
                faulty.eio_writes(false);
                at(7);
                faulty.hang_writes(true);
                at(10);
                faulty.hang_writes(false);
                fault_flag.store(false, Ordering::SeqCst);
            });
            for (h, dev) in devs.iter().enumerate() {
                for r in 1..=RESOURCES {
                    let (ls, generation) = (&lockspaces[h], generations[h]);
                    let (acquired, acquired_in_fault, refused, overlaps, fault_on) = (
                        &acquired,
                        &acquired_in_fault,
                        &refused,
                        &overlaps,
                        &fault_on,
                    );
                    w.spawn(move || {
                        let host_id = h as u64 + 1;
                        let config = EngineConfig {
                            ring_entries: 16,
                            buffer_classes: vec![(512, 16), (1 << 20, 4)],
                            sync_workers: 1,
                        };
                        let devices = dev
                            .iter()
                            .map(|d| Device::open(d.path(), Access::ReadWrite).expect("open"))
                            .collect();
                        let (mut e, _) =
                            open_backend(devices, &config, BackendKind::Uring).expect("engine");
                        let ids = [DiskId(0), DiskId(1), DiskId(2)];
                        let cfg = PaxosConfig {
                            space_name: Name::new("MD").expect("name"),
                            resource_name: Name::new(&format!("r{r}")).expect("name"),
                            geometry: Geometry::LEGACY_512,
                            area_offset: areas_of(r)[0],
                            host_id,
                            generation,
                            timeouts: Timeouts::new(T, W),
                            no_wait: true,
                            expect_lver: None,
                            read_lvb: false,
                            shared: false,
                        };
                        let counter = COUNTERS + r * 512;
                        let areas = areas_of(r);
                        let clock = MonotonicClock;
                        let mut status = |host: u64, gen: u64| {
                            let (st, g) = ls.snapshot().host(host);
                            (st, g == gen)
                        };
                        let mut jitter = host_id * 7919 + r * 104_729;
                        while start.elapsed() < run_for {
                            let outcome = disks::blocking::acquire(
                                e.as_mut(),
                                &clock,
                                &ids,
                                areas.to_vec(),
                                cfg.clone(),
                                &mut status,
                            )
                            .expect("engine");
                            match outcome {
                                Ok(held) => {
                                    acquired.fetch_add(1, Ordering::SeqCst);
                                    if fault_on.load(Ordering::SeqCst) {
                                        acquired_in_fault.fetch_add(1, Ordering::SeqCst);
                                    }
                                    let seen = visit_counter(e.as_mut(), counter, host_id);
                                    overlaps.fetch_add(seen, Ordering::SeqCst);
                                    disks::blocking::release(
                                        e.as_mut(),
                                        &clock,
                                        &ids,
                                        areas.to_vec(),
                                        cfg.clone(),
                                        held,
                                    )
                                    .expect("engine")
                                    .expect("release");
                                }
                                Err(
                                    PaxosError::OwnerAlive { .. }
                                    | PaxosError::AcquiredByOther { .. }
                                    | PaxosError::OwnedRetry { .. },
                                ) => {
                                    refused.fetch_add(1, Ordering::SeqCst);
                                }
                                Err(other) => panic!("host {host_id} r{r}: {other}"),
                            }
                            std::thread::sleep(next_pause(&mut jitter));
                        }
                    });
                }
            }
        });
    });
    let (a, af, f, o) = (
        acquired.load(Ordering::SeqCst),
        acquired_in_fault.load(Ordering::SeqCst),
        refused.load(Ordering::SeqCst),
        overlaps.load(Ordering::SeqCst),
    );
    eprintln!(
        "three disks: {a} acquisitions ({af} while the third disk failed or hung), {f} refusals, {o} overlaps in {run_for:?}"
    );
    assert_eq!(o, 0, "two holders were inside at once");
    assert!(
        a >= 50 && f > 0,
        "too little contention: {a} acquired, {f} refused"
    );
    assert!(
        af >= 5,
        "the majority carried only {af} acquires through the fault"
    );
}
