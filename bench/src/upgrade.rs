//! `tenure-bench upgrade`: planned upgrades of a tenured holding leases (issue 18). A real
//! tenured is started here on the device with one lockspace and `leases` leases held by one
//! client connection; `upgrades` times, at a varying phase of the renewal cycle, it is told
//! to hand over to the other of two builds (two files of the binary). Measured:
//! - the time from the upgrade request until the new process answers it (it answers once it
//!   serves);
//! - the longest gap in service around each upgrade, seen by a client asking for the
//!   lockspace list every millisecond;
//! - every interval between two renewals of the lockspace over the whole run (from the
//!   renewal deadline the daemon reports), against its normal 2T slot.
//!
//! With n ≤ 100 samples, the nearest-rank p99 is the largest sample.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tenure_core::direct::{format_lockspace, format_resource, FormatOptions};
use tenure_format::{LockspaceSpec, ResourceSpec};
use tenured::client::Client;
use tenured::proto::Request;

use crate::report::{percentiles_us, Measurement};

/// Options of `tenure-bench upgrade`.
#[derive(Clone, Debug)]
pub struct UpgradeBenchOptions {
    /// 512-byte-sector device or file (overwritten) with room for `leases + 1` areas of 1 MiB.
    pub device: PathBuf,
    /// Leases held through the upgrades.
    pub leases: usize,
    /// Upgrades.
    pub upgrades: usize,
    /// io_timeout T.
    pub io_timeout_s: u16,
}

const ALIGN: u64 = 1 << 20;

/// When the poller got an answer, and the renewal deadline it reported (ms from then).
type Answer = (Instant, Option<i64>);

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

struct Run {
    dir: PathBuf,
    first: Child,
}

impl Drop for Run {
    fn drop(&mut self) {
        // Whatever tenured serves now (after upgrades, not our child): by the pid in its
        // run directory's socket answer, else the first one.
        if let Ok(mut c) = Client::connect(&self.dir.join("tenured.sock"), Some("bench")) {
            if let Ok(v) = c.call(&Request::Status {}) {
                if let Some(pid) = v["pid"].as_i64() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = self.first.kill();
        let _ = self.first.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spec(opts: &UpgradeBenchOptions, i: usize) -> String {
    format!(
        "BENCH:u{i}:{}:{}",
        opts.device.display(),
        (i as u64 + 1) * ALIGN
    )
}

/// Runs the scenario.
pub fn run(opts: &UpgradeBenchOptions) -> Result<Vec<Measurement>, String> {
    let ls = LockspaceSpec::parse(&format!("BENCH:0:{}:0", opts.device.display())).map_err(err)?;
    let force = FormatOptions {
        force: true,
        ..Default::default()
    };
    format_lockspace(&ls, force, u64::from(opts.io_timeout_s)).map_err(err)?;
    for i in 0..opts.leases {
        let r = ResourceSpec::parse(&spec(opts, i)).map_err(err)?;
        format_resource(&r, force, Some(2000)).map_err(err)?;
    }
    let exe = std::env::current_exe().map_err(err)?;
    let tenured = exe.with_file_name("tenured");
    if !tenured.exists() {
        return Err(format!(
            "{} not found: build it with `cargo build --release -p tenured`",
            tenured.display()
        ));
    }
    let dir =
        crate::daemon::run_base().join(format!("tenure-bench-upgrade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(err)?;
    // Two builds: two files of the binary, upgraded to in turn.
    let builds = [dir.join("tenured-a"), dir.join("tenured-b")];
    for b in &builds {
        std::fs::copy(&tenured, b).map_err(|e| format!("{}: {e}", b.display()))?;
    }
    let first = Command::new(&builds[0])
        .args(["--config", "/dev/null"])
        .arg("--run-dir")
        .arg(&dir)
        .arg("--state-dir")
        .arg(&dir)
        .args(["--watchdog", "none", "--io-timeout"])
        .arg(opts.io_timeout_s.to_string())
        .args(["--log", "warn", "--lockspace"])
        .arg(format!("BENCH:1:{}:0", opts.device.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting tenured: {e}"))?;
    let run = Run {
        dir: dir.clone(),
        first,
    };
    let sock = dir.join("tenured.sock");
    crate::daemon::wait_joined(&sock)?;
    // The leases, held by one connection through every upgrade.
    let mut holder = Client::connect(&sock, Some("bench-holder")).map_err(err)?;
    for i in 0..opts.leases {
        holder
            .call(&Request::Acquire {
                resources: vec![spec(opts, i)],
                no_wait: true,
                lvb: false,
                pid: None,
                persistent: false,
                adopt_orphan: false,
            })
            .map_err(err)?;
    }
    // The poller: (when, renewal deadline in ms) for every answer.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<Answer>>> = Arc::new(Mutex::new(Vec::new()));
    let poller = {
        let (stop, seen, sock) = (Arc::clone(&stop), Arc::clone(&seen), sock.clone());
        std::thread::spawn(move || -> Result<(), String> {
            let mut c = Client::connect(&sock, Some("bench-poller")).map_err(err)?;
            while !stop.load(Ordering::Relaxed) {
                let v = c.call(&Request::LockspaceList {}).map_err(err)?;
                let at = Instant::now();
                let deadline = v["lockspaces"][0]["renewal_deadline_in_ms"].as_i64();
                seen.lock().map_err(err)?.push((at, deadline));
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        })
    };
    let start = Instant::now();
    let mut answered = Vec::new();
    let mut windows = Vec::new();
    for k in 0..opts.upgrades {
        // A varying phase of the 2T renewal cycle.
        let phase = Duration::from_millis(300 + (k as u64 * 373) % 1400);
        std::thread::sleep(phase);
        let mut c = Client::connect(&sock, Some("bench-upgrade")).map_err(err)?;
        c.set_timeout(Some(Duration::from_secs(60))).map_err(err)?;
        let t = Instant::now();
        let r = c
            .call(&Request::Upgrade {
                binary: Some(builds[(k + 1) % 2].display().to_string()),
            })
            .map_err(|e| format!("upgrade {k}: {e}"))?;
        let took = t.elapsed();
        if r["upgraded"] != true {
            return Err(format!("upgrade {k}: {r}"));
        }
        answered.push(took);
        windows.push((t, t + took));
    }
    std::thread::sleep(Duration::from_millis(2500));
    stop.store(true, Ordering::Relaxed);
    poller
        .join()
        .map_err(|_| "poller panicked".to_string())?
        .map_err(|e| format!("poller: {e}"))?;
    let elapsed = start.elapsed();
    // Still held, by the same connection.
    let v = holder.call(&Request::Status {}).map_err(err)?;
    let held = v["leases"].as_array().map_or(0, Vec::len);
    if held != opts.leases {
        return Err(format!(
            "{held} leases held after the upgrades, not {}",
            opts.leases
        ));
    }
    let seen = seen.lock().map_err(err)?.clone();
    // Service gaps: the longest interval between answers around each upgrade.
    let mut gaps = Vec::new();
    for (a, b) in &windows {
        let (lo, hi) = (
            *a - Duration::from_millis(50),
            *b + Duration::from_millis(50),
        );
        let times: Vec<Instant> = seen
            .iter()
            .map(|(t, _)| *t)
            .filter(|t| *t >= lo && *t <= hi)
            .collect();
        let g = times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(*b - *a);
        gaps.push(g);
    }
    // Renewals: last renewal = answer time + deadline − 8T; a new value is a new renewal.
    let eight_t = Duration::from_secs(8 * u64::from(opts.io_timeout_s));
    let mut renewals: Vec<Instant> = Vec::new();
    for (at, d) in &seen {
        let Some(d) = d else { continue };
        let Some(r) = at
            .checked_add(Duration::from_millis((*d).max(0) as u64))
            .and_then(|x| x.checked_sub(eight_t))
        else {
            continue;
        };
        // Millisecond rounding of the deadline: the same renewal within 5 ms.
        if renewals
            .last()
            .is_none_or(|l| r > *l + Duration::from_millis(5))
        {
            renewals.push(r);
        }
    }
    let mut intervals: Vec<Duration> = renewals.windows(2).map(|w| w[1] - w[0]).collect();
    drop(holder);
    drop(run);
    let row = |scenario: String, mut s: Vec<Duration>| Measurement {
        system: "tenure".into(),
        scenario,
        n: s.len(),
        percentiles_us: (!s.is_empty()).then(|| percentiles_us(&mut s)),
        ops_per_s: None,
    };
    let n = opts.leases;
    let mut rows = vec![
        row(
            format!("upgrade: request until the new one answers, {n} leases"),
            answered,
        ),
        row(
            "upgrade: longest gap in service (1 ms polling)".into(),
            gaps,
        ),
    ];
    intervals.sort();
    rows.push(row(
        format!(
            "renewal intervals over {:.0} s of upgrades (2T = {} s)",
            elapsed.as_secs_f64(),
            2 * opts.io_timeout_s
        ),
        intervals,
    ));
    Ok(rows)
}
