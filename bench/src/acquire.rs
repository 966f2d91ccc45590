//! `tenure-bench acquire`: acquire and release latency of free exclusive leases, throughput with
//! several acquirers at once, and the device's bound for an acquire's dependent chain (a read of
//! the leader up to our dblock, then write→read of every dblock twice, then the leader
//! write), measured in the same run; with
//! `--compare-sanlock RUNDIR`, sanlock-anchor's bench.py against a running sanlock daemon on the
//! same device afterwards (same geometry, same durability).

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use tenure_core::clock::MonotonicClock;
use tenure_core::delta::DeltaConfig;
use tenure_core::dev::{Access, AlignedBuf, Device};
use tenure_core::direct::{format_lockspace, format_resource, FormatOptions};
use tenure_core::io::{open_backend, BackendKind, DiskId, EngineConfig};
use tenure_core::lockspace::{AcquireOptions, OpOutcome, ResourceTarget};
use tenure_core::lockspace::{LockspaceId, LockspaceSet, LockspaceState};
use tenure_core::paxos::{blocking, Acquired, PaxosConfig};
use tenure_core::timeouts::{Timeouts, WATCHDOG_FIRE_DEFAULT_S};
use tenure_format::{Geometry, LockspaceSpec, Name, ResourceSpec};

use crate::report::{percentiles_us, Measurement};

/// Options of `tenure-bench acquire`.
#[derive(Clone, Debug)]
pub struct AcquireBenchOptions {
    /// Device or file with room for `2 * leases + 1` areas of `geometry`.
    pub device: PathBuf,
    /// Sector and area size of the lockspace and every resource (the device's sector size).
    pub geometry: Geometry,
    /// num_hosts of every resource.
    pub num_hosts: u64,
    /// Leases acquired (and released) one after another, and then in parallel.
    pub leases: usize,
    /// Acquirers at once in the throughput run.
    pub concurrency: usize,
    /// io_timeout.
    pub io_timeout_s: u16,
    /// A running sanlock daemon's SANLOCK_RUN_DIR.
    pub sanlock_rundir: Option<PathBuf>,
    /// sanlock-anchor's bench.py.
    pub sanlock_bench: PathBuf,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn engine(
    opts: &AcquireBenchOptions,
) -> Result<Box<dyn tenure_core::io::IoBackend + Send>, String> {
    let config = EngineConfig {
        ring_entries: 16,
        buffer_classes: vec![
            (opts.geometry.sector_size_bytes() as usize, 16),
            (opts.geometry.area_bytes() as usize, 4),
        ],
        sync_workers: 1,
    };
    let dev = Device::open(&opts.device, Access::ReadWrite).map_err(err)?;
    Ok(open_backend(vec![dev], &config, BackendKind::Uring)
        .map_err(err)?
        .0)
}

/// Rounds of the in-flight throughput run (all leases acquired at once, then released).
const IN_FLIGHT_ROUNDS: usize = 10;

/// Acquires every lease at once through the lockspace set's operations (one operation per
/// lease, all on the set's one engine — the daemon's path), then releases them all at once;
/// `IN_FLIGHT_ROUNDS` times. Returns (acquires/s, releases/s).
fn in_flight(
    set: &mut LockspaceSet,
    id: LockspaceId,
    opts: &AcquireBenchOptions,
) -> Result<(f64, f64), String> {
    let clock = MonotonicClock;
    let (mut acq_time, mut rel_time) = (Duration::ZERO, Duration::ZERO);
    let run = |set: &mut LockspaceSet,
               ops: &mut std::collections::HashSet<tenure_core::lockspace::OpId>|
     -> Result<Vec<tenure_core::lockspace::HeldResource>, String> {
        let mut held = Vec::new();
        while !ops.is_empty() {
            let now = clock.now();
            set.step(now).map_err(err)?;
            while let Some((op, outcome)) = set.take_op_result() {
                ops.remove(&op);
                match outcome {
                    OpOutcome::Acquired(h) => held.extend(h),
                    OpOutcome::Released => {}
                    other => return Err(format!("in-flight run: {other:?}")),
                }
            }
            if !ops.is_empty() {
                set.wait(now, now.saturating_add(Duration::from_millis(20)))
                    .map_err(err)?;
            }
        }
        Ok(held)
    };
    for _ in 0..IN_FLIGHT_ROUNDS {
        let t0 = Instant::now();
        let mut ops = std::collections::HashSet::new();
        for i in 0..opts.leases {
            let target = ResourceTarget {
                name: Name::new(&format!("r{i}")).map_err(err)?,
                disk: DiskId(0),
                area_offset: (i as u64 + 1) * opts.geometry.area_bytes(),
                geometry: opts.geometry,
                expect_lver: None,
                mirrors: Vec::new(),
            };
            let op = set
                .start_acquire(id, vec![target], AcquireOptions::default(), clock.now())
                .map_err(err)?;
            ops.insert(op);
        }
        let held = run(set, &mut ops)?;
        acq_time += t0.elapsed();
        if held.len() != opts.leases {
            return Err(format!("{} of {} leases acquired", held.len(), opts.leases));
        }
        let t0 = Instant::now();
        for h in held {
            let op = set
                .start_release(id, vec![(h, None)], clock.now())
                .map_err(err)?;
            ops.insert(op);
        }
        run(set, &mut ops)?;
        rel_time += t0.elapsed();
    }
    let n = (opts.leases * IN_FLIGHT_ROUNDS) as f64;
    Ok((n / acq_time.as_secs_f64(), n / rel_time.as_secs_f64()))
}

fn pcfg(opts: &AcquireBenchOptions, i: usize, generation: u64) -> PaxosConfig {
    PaxosConfig {
        space_name: Name::new("BENCH").expect("valid name"),
        resource_name: Name::new(&format!("r{i}")).expect("valid name"),
        geometry: opts.geometry,
        area_offset: (i as u64 + 1) * opts.geometry.area_bytes(),
        host_id: 1,
        generation,
        timeouts: Timeouts::new(opts.io_timeout_s, WATCHDOG_FIRE_DEFAULT_S),
        no_wait: true,
        expect_lver: None,
        read_lvb: false,
        shared: false,
    }
}

/// The device's bound: the same dependent I/O chain as an uncontended acquire, on a raw ring.
fn chain_bound(opts: &AcquireBenchOptions, iterations: usize) -> Result<Vec<Duration>, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(&opts.device)
        .map_err(err)?;
    let mut ring = IoUring::new(8).map_err(err)?;
    let ss = opts.geometry.sector_size_bytes();
    let align = opts.geometry.area_bytes();
    let area_len = u32::try_from((opts.num_hosts + 2) * u64::from(ss)).map_err(err)?;
    let mut area = AlignedBuf::new(area_len as usize);
    let mut sector = AlignedBuf::new(ss as usize);
    let fd = types::Fd(file.as_raw_fd());
    // Formatted areas past the leases, each used once and never read before, like the leases
    // an acquire reads (a warm area would be faster than any real first acquire).
    let first_spare = opts.leases as u64 + 1;
    let mut one = |e: io_uring::squeue::Entry| -> Result<(), String> {
        // SAFETY: the buffers and the file outlive the operation; we wait for it right here.
        unsafe { ring.submission().push(&e) }.map_err(|_| "sq full".to_string())?;
        ring.submit_and_wait(1).map_err(err)?;
        let c = ring.completion().next().ok_or("no completion")?;
        if c.result() < 0 {
            return Err(format!("raw I/O failed: {}", c.result()));
        }
        Ok(())
    };
    let mut samples = Vec::with_capacity(iterations);
    for k in 0..iterations as u64 {
        let base = (first_spare + k) * align;
        let t0 = Instant::now();
        // Leader, request record and host 1's dblock: what an acquire of a free lease reads
        // before its ballot.
        one(
            opcode::Read::new(fd, area.as_mut_slice().as_mut_ptr(), 3 * ss)
                .offset(base)
                .build(),
        )?;
        for _ in 0..2 {
            one(
                opcode::Write::new(fd, sector.as_mut_slice().as_mut_ptr(), ss)
                    .offset(base + 2 * u64::from(ss))
                    .build(),
            )?;
            one(
                opcode::Read::new(fd, area.as_mut_slice().as_mut_ptr(), area_len)
                    .offset(base)
                    .build(),
            )?;
        }
        one(
            opcode::Write::new(fd, sector.as_mut_slice().as_mut_ptr(), ss)
                .offset(base)
                .build(),
        )?;
        samples.push(t0.elapsed());
    }
    Ok(samples)
}

fn sanlock_rows(
    opts: &AcquireBenchOptions,
    rundir: &std::path::Path,
) -> Result<Vec<Measurement>, String> {
    if opts.geometry != Geometry::LEGACY_512 {
        return Err("--compare-sanlock measures 512-byte sectors only (bench.py's areas)".into());
    }
    // bench.py formats num_hosts 2000; another num_hosts runs our script of the same shape.
    let (b, label) = crate::bench_py::run_num_hosts(
        &opts.sanlock_bench,
        &opts.device,
        opts.io_timeout_s,
        opts.leases,
        opts.concurrency,
        rundir,
        opts.num_hosts,
    )?;
    Ok(crate::bench_py::rows(
        &b,
        "sanlock",
        &label,
        opts.leases,
        opts.concurrency,
        false,
    ))
}

/// Runs the scenarios.
pub fn run(opts: &AcquireBenchOptions) -> Result<Vec<Measurement>, String> {
    let t = opts.io_timeout_s;
    let ls = LockspaceSpec::parse(&format!("BENCH:0:{}:0", opts.device.display())).map_err(err)?;
    let force = FormatOptions {
        force: true,
        sector_size: Some(opts.geometry.sector_size()),
        align: Some(opts.geometry.align()),
        ..Default::default()
    };
    format_lockspace(&ls, force, u64::from(t)).map_err(err)?;
    // The leases, then as many spare areas for the device bound.
    for i in 0..2 * opts.leases {
        let spec = ResourceSpec::parse(&format!(
            "BENCH:r{i}:{}:{}",
            opts.device.display(),
            (i as u64 + 1) * opts.geometry.area_bytes()
        ))
        .map_err(err)?;
        format_resource(&spec, force, Some(opts.num_hosts)).map_err(err)?;
    }
    // Hold host id 1 for the whole run, renewing in the background like a daemon would.
    let stop = Arc::new(AtomicBool::new(false));
    // The set's engine carries the in-flight run too: tenured's own, whose I/O waits for room
    // when more leases are in flight than it has buffers or ring entries for.
    let set_engine = {
        let config = tenured::server::engine_config();
        let dev = Device::open(&opts.device, Access::ReadWrite).map_err(err)?;
        open_backend(vec![dev], &config, BackendKind::Uring)
            .map_err(err)?
            .0
    };
    let mut set = LockspaceSet::new(set_engine);
    let cfg = DeltaConfig {
        space_name: Name::new("BENCH").map_err(err)?,
        host_id: 1,
        host_name: Name::new("bench-acquirer").map_err(err)?,
        geometry: opts.geometry,
        area_offset: 0,
        timeouts: Timeouts::new(t, WATCHDOG_FIRE_DEFAULT_S),
    };
    let id = set.add(cfg, DiskId(0)).map_err(err)?;
    let clock = MonotonicClock;
    set.join(id, clock.now()).map_err(err)?;
    let generation = loop {
        let now = clock.now();
        set.step(now).map_err(err)?;
        match set.state(id) {
            Some(LockspaceState::Joined { generation }) => break generation,
            Some(LockspaceState::JoinFailed { error }) => return Err(error.to_string()),
            _ => {}
        }
        set.wait(now, now.saturating_add(Duration::from_millis(100)))
            .map_err(err)?;
    };
    let stop2 = Arc::clone(&stop);
    let renewer = std::thread::spawn(move || {
        while !stop2.load(Ordering::SeqCst) {
            let now = clock.now();
            let _ = set.step(now);
            let _ = set.wait(now, now.saturating_add(Duration::from_millis(50)));
        }
        set
    });
    let mut no_owner = |_: u64, _: u64| (tenure_core::delta::HostStatus::Free, false);
    let result = (|| -> Result<Vec<Measurement>, String> {
        let mut e = engine(opts)?;
        let (mut acq, mut rel, mut held) =
            (Vec::new(), Vec::new(), Vec::<(usize, Acquired)>::new());
        let mut ballots = 0u64;
        for i in 0..opts.leases {
            let t0 = Instant::now();
            let a = blocking::acquire(
                e.as_mut(),
                &clock,
                DiskId(0),
                pcfg(opts, i, generation),
                &mut no_owner,
            )
            .map_err(err)?
            .map_err(err)?;
            acq.push(t0.elapsed());
            ballots += u64::from(a.ballots);
            held.push((i, a));
        }
        let mut caches = Vec::new();
        for (i, a) in held.drain(..) {
            let t0 = Instant::now();
            let cache = blocking::release_keeping_cache(
                e.as_mut(),
                &clock,
                DiskId(0),
                pcfg(opts, i, generation),
                a,
            )
            .map_err(err)?
            .map_err(err)?;
            rel.push(t0.elapsed());
            caches.push((i, cache.ok_or("release left no ballot cache")?));
        }
        // Again, each from what its release left (as tenured does for a lease it acquires
        // again): phase 1 at once, no first read.
        let mut acq_cached = Vec::new();
        for (i, cache) in caches {
            let t0 = Instant::now();
            let a = blocking::acquire_cached(
                e.as_mut(),
                &clock,
                DiskId(0),
                pcfg(opts, i, generation),
                &cache,
                &mut no_owner,
            )
            .map_err(err)?
            .map_err(err)?;
            acq_cached.push(t0.elapsed());
            blocking::release(e.as_mut(), &clock, DiskId(0), pcfg(opts, i, generation), a)
                .map_err(err)?
                .map_err(err)?;
        }
        // Throughput: `concurrency` acquirers, each with its own engine, over all leases.
        let t0 = Instant::now();
        let chunks: Vec<Vec<usize>> = (0..opts.concurrency)
            .map(|c| (c..opts.leases).step_by(opts.concurrency).collect())
            .collect();
        let all: Result<Vec<Vec<(usize, Acquired)>>, String> = std::thread::scope(|s| {
            let handles: Vec<_> = chunks
                .iter()
                .map(|chunk| {
                    s.spawn(move || -> Result<Vec<(usize, Acquired)>, String> {
                        let mut e = engine(opts)?;
                        let mut no_owner =
                            |_: u64, _: u64| (tenure_core::delta::HostStatus::Free, false);
                        chunk
                            .iter()
                            .map(|&i| {
                                blocking::acquire(
                                    e.as_mut(),
                                    &clock,
                                    DiskId(0),
                                    pcfg(opts, i, generation),
                                    &mut no_owner,
                                )
                                .map_err(err)?
                                .map(|a| (i, a))
                                .map_err(err)
                            })
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| "acquirer panicked".to_string())?)
                .collect()
        });
        let elapsed = t0.elapsed();
        for (i, a) in all?.into_iter().flatten() {
            blocking::release(e.as_mut(), &clock, DiskId(0), pcfg(opts, i, generation), a)
                .map_err(err)?
                .map_err(err)?;
        }
        let bound = chain_bound(opts, opts.leases)?;
        let n = opts.num_hosts;
        let lat = |scenario: String, mut s: Vec<Duration>| Measurement {
            system: "tenure".into(),
            scenario,
            n: s.len(),
            percentiles_us: Some(percentiles_us(&mut s)),
            ops_per_s: None,
        };
        let mut rows = vec![
            lat(
                format!(
                    "acquire free lease, {}/{}M, num_hosts {n}, {:.1} ballots",
                    opts.geometry.sector_size_bytes(),
                    opts.geometry.area_bytes() >> 20,
                    ballots as f64 / opts.leases as f64
                ),
                acq,
            ),
            lat(
                format!("acquire again, from our release's ballot cache, num_hosts {n}"),
                acq_cached,
            ),
            lat("release".into(), rel),
            Measurement {
                system: "tenure".into(),
                scenario: format!("acquires/s, {} acquirers", opts.concurrency),
                n: opts.leases,
                percentiles_us: None,
                ops_per_s: Some(opts.leases as f64 / elapsed.as_secs_f64()),
            },
        ];
        let mut b = bound;
        rows.push(Measurement {
            system: "device".into(),
            scenario: format!("acquire chain bound (r, W-R, W-R, W), num_hosts {n}"),
            n: b.len(),
            percentiles_us: Some(percentiles_us(&mut b)),
            ops_per_s: None,
        });
        Ok(rows)
    })();
    stop.store(true, Ordering::SeqCst);
    let mut set = renewer
        .join()
        .map_err(|_| "renewer thread panicked".to_string())?;
    let mut rows = result?;
    // Many in flight on one engine, as tenured runs them (the renewals go on in the same loop).
    let (acq_rate, rel_rate) = in_flight(&mut set, id, opts)?;
    for (scenario, rate) in [
        (
            format!(
                "acquires/s, all {} leases in flight on one engine",
                opts.leases
            ),
            acq_rate,
        ),
        (
            format!(
                "releases/s, all {} leases in flight on one engine",
                opts.leases
            ),
            rel_rate,
        ),
    ] {
        rows.push(Measurement {
            system: "tenure".into(),
            scenario,
            n: opts.leases * IN_FLIGHT_ROUNDS,
            percentiles_us: None,
            ops_per_s: Some(rate),
        });
    }
    if let Some(rundir) = &opts.sanlock_rundir {
        rows.extend(sanlock_rows(opts, rundir)?);
    }
    Ok(rows)
}
