//! `tenure-bench join`: how long joining a lockspace takes, on a free slot and after an
//! unclean stop, for tenure and (with `--compare-sanlock RUNDIR`) for a running sanlock daemon
//! on the same device in the same run.
//!
//! "After an unclean stop" means: the slot was last renewed by this host's previous instance,
//! which crashed. tenure's previous instance had the same (stable) host name, so the join takes
//! the 2T path; sanlock's daemon picks a new random name on every start, so to it the slot looks
//! held by another host and it waits 8T + W first. The bench reproduces both situations with a
//! tenure host that joins and stops without leaving (named like this host for tenure, and
//! differently for sanlock).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tenure_core::clock::MonotonicClock;
use tenure_core::delta::DeltaConfig;
use tenure_core::dev::{Access, Device};
use tenure_core::direct::{format_lockspace, FormatOptions};
use tenure_core::io::{open_backend, BackendKind, DiskId, EngineConfig};
use tenure_core::lockspace::{LockspaceSet, LockspaceState};
use tenure_core::timeouts::{Timeouts, WATCHDOG_FIRE_DEFAULT_S};
use tenure_format::{Geometry, LockspaceSpec, Name};

use crate::report::{percentiles_us, Measurement};

/// Options of `tenure-bench join`.
#[derive(Clone, Debug)]
pub struct JoinBenchOptions {
    /// A 512-byte-sector device or file with room for `2 * runs + 2` 1 MiB areas.
    pub device: std::path::PathBuf,
    /// io_timeout T.
    pub io_timeout_s: u16,
    /// Joins per scenario.
    pub runs: usize,
    /// A running sanlock daemon's SANLOCK_RUN_DIR, to measure it too.
    pub sanlock_rundir: Option<std::path::PathBuf>,
}

fn format(opts: &JoinBenchOptions, name: &str, area: u64) -> Result<(), String> {
    let spec = LockspaceSpec::parse(&format!(
        "{name}:0:{}:{}",
        opts.device.display(),
        area << 20
    ))
    .map_err(|e| e.to_string())?;
    format_lockspace(
        &spec,
        FormatOptions {
            force: true,
            ..Default::default()
        },
        u64::from(opts.io_timeout_s),
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Joins host id 1 of lockspace `name` at `area` as `host_name`; returns the time it took. With
/// `crash`, returns without leaving (the lease stays on disk, no longer renewed).
fn tenure_join(
    opts: &JoinBenchOptions,
    name: &str,
    area: u64,
    host_name: &str,
    crash: bool,
) -> Result<Duration, String> {
    let config = EngineConfig {
        ring_entries: 8,
        buffer_classes: vec![(512, 8), (1 << 20, 2)],
        sync_workers: 1,
    };
    let dev = Device::open(&opts.device, Access::ReadWrite).map_err(|e| e.to_string())?;
    let (backend, _) =
        open_backend(vec![dev], &config, BackendKind::Auto).map_err(|e| e.to_string())?;
    let mut set = LockspaceSet::new(backend);
    let cfg = DeltaConfig {
        space_name: Name::new(name).map_err(|e| e.to_string())?,
        host_id: 1,
        host_name: Name::new(host_name).map_err(|e| e.to_string())?,
        geometry: Geometry::LEGACY_512,
        area_offset: area << 20,
        timeouts: Timeouts::new(opts.io_timeout_s, WATCHDOG_FIRE_DEFAULT_S),
    };
    let ls = set.add(cfg, DiskId(0)).map_err(|e| e.to_string())?;
    let clock = MonotonicClock;
    let t0 = Instant::now();
    set.join(ls, clock.now()).map_err(|e| e.to_string())?;
    loop {
        let now = clock.now();
        set.step(now).map_err(|e| e.to_string())?;
        match set.state(ls) {
            Some(LockspaceState::Joined { .. }) => break,
            Some(LockspaceState::JoinFailed { error }) => {
                return Err(format!("tenure join failed: {error}"))
            }
            _ => {}
        }
        set.wait(now, now.saturating_add(Duration::from_secs(1)))
            .map_err(|e| e.to_string())?;
    }
    let took = t0.elapsed();
    if !crash {
        set.leave(ls, clock.now()).map_err(|e| e.to_string())?;
        while set.state(ls) != Some(LockspaceState::Left) {
            let now = clock.now();
            set.step(now).map_err(|e| e.to_string())?;
            set.wait(now, now.saturating_add(Duration::from_millis(100)))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(took)
}

/// sanlock's add_lockspace (host id 1), timed inside python; then rem_lockspace.
fn sanlock_join(
    opts: &JoinBenchOptions,
    rundir: &Path,
    name: &str,
    area: u64,
) -> Result<Duration, String> {
    let script = format!(
        "import sanlock, time\nt = time.monotonic()\nsanlock.add_lockspace(b'{name}', 1, '{dev}', {off}, iotimeout={t})\nprint(time.monotonic() - t)\nsanlock.rem_lockspace(b'{name}', 1, '{dev}', {off})",
        dev = opts.device.display(),
        off = area << 20,
        t = opts.io_timeout_s
    );
    let out = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .env("SANLOCK_RUN_DIR", rundir)
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "sanlock join failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let secs: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("python printed {:?}: {e}", out.stdout))?;
    Ok(Duration::from_secs_f64(secs))
}

/// Runs the scenarios.
pub fn run(opts: &JoinBenchOptions) -> Result<Vec<Measurement>, String> {
    let t = opts.io_timeout_s;
    let mut rows = Vec::new();
    let row = |system: &str, scenario: String, mut s: Vec<Duration>| Measurement {
        system: system.into(),
        scenario,
        n: s.len(),
        percentiles_us: Some(percentiles_us(&mut s)),
        ops_per_s: None,
    };
    let me = "bench-host";
    let mut area = 0;
    let (mut free, mut rejoin) = (Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        format(opts, "JT", area)?;
        free.push(tenure_join(opts, "JT", area, me, false)?);
        // Crash, then the same host (same stable name) rejoins.
        tenure_join(opts, "JT", area, me, true)?;
        rejoin.push(tenure_join(opts, "JT", area, me, false)?);
        area += 1;
    }
    rows.push(row(
        "tenure",
        format!("join free slot, io_timeout {t}"),
        free,
    ));
    rows.push(row(
        "tenure",
        format!("rejoin after unclean stop, io_timeout {t}"),
        rejoin,
    ));
    if let Some(rundir) = &opts.sanlock_rundir {
        let (mut free, mut rejoin) = (Vec::new(), Vec::new());
        for _ in 0..opts.runs {
            format(opts, "JS", area)?;
            free.push(sanlock_join(opts, rundir, "JS", area)?);
            // The previous sanlock instance had another (random) name: a crashed holder named
            // differently from the daemon now joining.
            tenure_join(opts, "JS", area, "previous-sanlock-instance", true)?;
            rejoin.push(sanlock_join(opts, rundir, "JS", area)?);
            area += 1;
        }
        rows.push(row(
            "sanlock",
            format!("join free slot, io_timeout {t}"),
            free,
        ));
        rows.push(row(
            "sanlock",
            format!("rejoin after unclean stop, io_timeout {t}"),
            rejoin,
        ));
    }
    Ok(rows)
}
