//! `tenure-bench io`: what the I/O engine costs over the device.
//!
//! Scenarios, all with sector-sized I/O and durable (O_DSYNC) writes on one device:
//! - the dependent chain write→read→write→read→write (a Disk Paxos acquire's shape: phase 1,
//!   phase 2, commit) at queue depth 1, through a minimal raw io_uring loop ("device"), through
//!   the engine one I/O at a time, and through the engine with the write→read pairs linked;
//! - many independent chains in flight at once through the engine (io_uring and sync), as
//!   operations per second.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use tenure_core::clock::{MonotonicClock, Time};
use tenure_core::dev::{Access, AlignedBuf, Device};
use tenure_core::io::drive::complete;
use tenure_core::io::{
    open_backend, BackendKind, DiskId, EngineConfig, IoBackend, IoOutcome, IoRequest,
};

use crate::report::{percentiles_us, Measurement};

/// Options of `tenure-bench io`.
#[derive(Clone, Debug)]
pub struct IoBenchOptions {
    /// Device (or file) to use; it is overwritten in its first MiB.
    pub device: PathBuf,
    /// I/O size.
    pub sector_size: u32,
    /// Chains measured per latency scenario.
    pub iterations: usize,
    /// Chains in flight in the throughput scenario.
    pub parallel: usize,
    /// Chains completed in the throughput scenario.
    pub parallel_total: usize,
}

const STEPS: [bool; 5] = [true, false, true, false, true]; // true = write

fn raw_chains(opts: &IoBenchOptions) -> Result<Vec<Duration>, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(&opts.device)
        .map_err(|e| format!("{}: {e}", opts.device.display()))?;
    let mut ring = IoUring::new(8).map_err(|e| format!("io_uring: {e}"))?;
    let mut buf = AlignedBuf::new(opts.sector_size as usize);
    buf.as_mut_slice().fill(0x5a);
    let fd = types::Fd(file.as_raw_fd());
    let mut samples = Vec::with_capacity(opts.iterations);
    for _ in 0..opts.iterations {
        let t0 = Instant::now();
        for &write in &STEPS {
            let ptr = buf.as_mut_slice().as_mut_ptr();
            let e = if write {
                opcode::Write::new(fd, ptr, opts.sector_size)
                    .offset(0)
                    .build()
            } else {
                opcode::Read::new(fd, ptr, opts.sector_size)
                    .offset(0)
                    .build()
            };
            // SAFETY: `buf` and `file` outlive the operation: we wait for its completion
            // right below before touching either again.
            unsafe { ring.submission().push(&e) }
                .map_err(|_| "submission queue full".to_string())?;
            ring.submit_and_wait(1)
                .map_err(|e| format!("io_uring_enter: {e}"))?;
            let cqe = ring.completion().next().ok_or("no completion")?;
            if cqe.result() != opts.sector_size as i32 {
                return Err(format!("raw I/O failed: {}", cqe.result()));
            }
        }
        samples.push(t0.elapsed());
    }
    Ok(samples)
}

fn engine(opts: &IoBenchOptions, kind: BackendKind) -> Result<Box<dyn IoBackend + Send>, String> {
    let dev = Device::open(&opts.device, Access::ReadWrite).map_err(|e| e.to_string())?;
    let config = EngineConfig {
        ring_entries: 512,
        buffer_classes: vec![(opts.sector_size as usize, 1024)],
        sync_workers: 8,
    };
    Ok(open_backend(vec![dev], &config, kind)
        .map_err(|e| e.to_string())?
        .0)
}

fn req(offset: u64, len: usize) -> IoRequest {
    IoRequest {
        disk: DiskId(0),
        offset,
        len,
        deadline: MonotonicClock.now().saturating_add(Duration::from_secs(30)),
    }
}

fn check(c: &[tenure_core::io::Completion]) -> Result<(), String> {
    match c.iter().find(|c| c.outcome != IoOutcome::Done) {
        Some(bad) => Err(format!("engine I/O failed: {bad:?}")),
        None => Ok(()),
    }
}

fn engine_chains(opts: &IoBenchOptions, linked: bool) -> Result<Vec<Duration>, String> {
    let mut b = engine(opts, BackendKind::Uring)?;
    let ss = opts.sector_size as usize;
    let data = vec![0x5a; ss];
    let mut samples = Vec::with_capacity(opts.iterations);
    for _ in 0..opts.iterations {
        let t0 = Instant::now();
        if linked {
            for _ in 0..2 {
                let (_, r) = b
                    .start_chain(req(0, ss), &data, req(0, ss))
                    .map_err(|e| e.to_string())?;
                check(&complete(b.as_mut(), 2).map_err(|e| e.to_string())?)?;
                b.release(r);
            }
            b.start_write(req(0, ss), &data)
                .map_err(|e| e.to_string())?;
            check(&complete(b.as_mut(), 1).map_err(|e| e.to_string())?)?;
        } else {
            for &write in &STEPS {
                let id = if write {
                    b.start_write(req(0, ss), &data)
                } else {
                    b.start_read(req(0, ss))
                }
                .map_err(|e| e.to_string())?;
                check(&complete(b.as_mut(), 1).map_err(|e| e.to_string())?)?;
                b.release(id);
            }
        }
        samples.push(t0.elapsed());
    }
    Ok(samples)
}

/// Runs `opts.parallel_total` chains with `opts.parallel` in flight; returns I/Os per second.
fn engine_parallel(opts: &IoBenchOptions, kind: BackendKind) -> Result<f64, String> {
    let mut b = engine(opts, kind)?;
    let ss = opts.sector_size as usize;
    let data = vec![0x5a; ss];
    let slots = opts.parallel.clamp(1, 256);
    // Per chain: the id in flight and the step it is at.
    let mut chains: Vec<(tenure_core::io::IoId, usize)> = Vec::with_capacity(slots);
    let start = |b: &mut Box<dyn IoBackend + Send>, chain: usize, step: usize| {
        let off = (chain * ss) as u64;
        if STEPS[step] {
            b.start_write(req(off, ss), &data)
        } else {
            b.start_read(req(off, ss))
        }
        .map_err(|e| e.to_string())
    };
    let t0 = Instant::now();
    for c in 0..slots {
        chains.push((start(&mut b, c, 0)?, 0));
    }
    let (mut started, mut done_chains, mut ios) = (slots, 0usize, 0usize);
    let mut out = Vec::with_capacity(slots);
    b.flush().map_err(|e| e.to_string())?;
    while done_chains < opts.parallel_total {
        let now: Time = MonotonicClock.now();
        out.clear();
        b.poll(now, &mut out).map_err(|e| e.to_string())?;
        check(&out)?;
        for c in &out {
            ios += 1;
            b.release(c.id);
            let Some(chain) = chains.iter().position(|(id, _)| *id == c.id) else {
                continue;
            };
            let step = chains[chain].1 + 1;
            if step < STEPS.len() {
                chains[chain] = (start(&mut b, chain, step)?, step);
            } else {
                done_chains += 1;
                if started < opts.parallel_total {
                    started += 1;
                    chains[chain] = (start(&mut b, chain, 0)?, 0);
                }
            }
        }
        if out.is_empty() {
            b.wait(now, now.saturating_add(Duration::from_millis(10)))
                .map_err(|e| e.to_string())?;
        } else {
            b.flush().map_err(|e| e.to_string())?;
        }
    }
    Ok(ios as f64 / t0.elapsed().as_secs_f64())
}

/// Runs every scenario and returns the measurements.
pub fn run(opts: &IoBenchOptions) -> Result<Vec<Measurement>, String> {
    // Warm up the device and page tables once, unmeasured.
    let warm = IoBenchOptions {
        iterations: opts.iterations.min(50),
        ..opts.clone()
    };
    raw_chains(&warm)?;
    engine_chains(&warm, false)?;
    let lat = |system: &str, scenario: &str, mut s: Vec<Duration>| Measurement {
        system: system.into(),
        scenario: scenario.into(),
        n: s.len(),
        percentiles_us: Some(percentiles_us(&mut s)),
        ops_per_s: None,
    };
    let ss = opts.sector_size;
    let mut rows = Vec::new();
    // Interleave raw and engine runs in halves so drift of a noisy machine hits both alike.
    let half = IoBenchOptions {
        iterations: opts.iterations / 2,
        ..opts.clone()
    };
    let mut raw = raw_chains(&half)?;
    let mut eng = engine_chains(&half, false)?;
    raw.extend(raw_chains(&half)?);
    eng.extend(engine_chains(&half, false)?);
    rows.push(lat(
        "device",
        &format!("chain W-R-W-R-W qd1 raw io_uring {ss}B"),
        raw,
    ));
    rows.push(lat(
        "tenure",
        &format!("chain W-R-W-R-W qd1 engine {ss}B"),
        eng,
    ));
    rows.push(lat(
        "tenure",
        &format!("chain W-R-W-R-W qd1 engine linked {ss}B"),
        engine_chains(opts, true)?,
    ));
    for (kind, name) in [
        (BackendKind::Uring, "io_uring"),
        (BackendKind::Sync, "sync"),
    ] {
        let ops = engine_parallel(opts, kind)?;
        rows.push(Measurement {
            system: "tenure".into(),
            scenario: format!("{} chains in flight, engine {name} {ss}B", opts.parallel),
            n: opts.parallel_total * STEPS.len(),
            percentiles_us: None,
            ops_per_s: Some(ops),
        });
    }
    Ok(rows)
}

/// A loop device created for the benchmark (`--device auto`), removed on drop.
#[derive(Debug)]
pub struct AutoDevice {
    dir: PathBuf,
    /// The loop device.
    pub path: PathBuf,
}

impl AutoDevice {
    /// A 64 MiB file on /var/tmp under a loop device with direct I/O and `sector_size`.
    pub fn create(sector_size: u32) -> Result<Self, String> {
        Self::create_sized(sector_size, 64 << 20)
    }

    /// [`AutoDevice::create`] of `bytes` bytes.
    pub fn create_sized(sector_size: u32, bytes: u64) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("tenure-bench-{}", std::process::id()));
        let dir = if dir.starts_with("/tmp") {
            PathBuf::from(format!("/var/tmp/tenure-bench-{}", std::process::id()))
        } else {
            dir
        };
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let file = dir.join("lun");
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(bytes))
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let out = Command::new("losetup")
            .args([
                "-f",
                "--show",
                "--direct-io=on",
                "--sector-size",
                &sector_size.to_string(),
            ])
            .arg(&file)
            .output()
            .map_err(|e| format!("losetup: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!(
                "losetup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Ok(AutoDevice { dir, path })
    }
}

impl Drop for AutoDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A line describing the device: loop direct I/O and write-cache mode, where it has them.
pub fn describe(device: &Path) -> String {
    let name = device
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let read = |f: &str| {
        std::fs::read_to_string(format!("/sys/block/{name}/{f}"))
            .map(|s| s.trim().to_owned())
            .ok()
    };
    let mut parts = vec![device.display().to_string()];
    if let Some(dio) = read("loop/dio") {
        parts.push(format!("loop dio={dio}"));
    }
    if let Some(wc) = read("queue/write_cache") {
        parts.push(format!("write_cache=\"{wc}\""));
    }
    if let Some(lbs) = read("queue/logical_block_size") {
        parts.push(format!("logical_block_size={lbs}"));
    }
    parts.join(", ")
}
