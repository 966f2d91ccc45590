//! `tenure-bench scale --curve hosts` (issue 21, curve 2): one lockspace of 2000 host slots
//! where a load generator plays hosts 2..=2000 and the daemon under test is host 1.
//!
//! The generator writes each of its hosts' delta leases as that host would: joined once
//! (generation 1, its own name), then its own timestamp every 2T, each host in its own phase
//! of the 2T period (due slots that lie side by side go out in one write, as the same bytes
//! their own writes would put there). The daemon under test — a tenured started here, or
//! sanlock started by sanlock-anchor's start.sh — joins as host 1 and renews normally.
//!
//! Once every host was seen renewing, a window starts: hosts 1901..=1950 stop renewing (as a
//! host that hung), hosts 1951..=2000 release their slot (timestamp 0). At the window's end
//! the daemon's host table must say: 1..=1900 live, 1901..=1950 fail (8T..8T + W since their
//! last change), 1951..=2000 free. Figures: the daemon's renewal latency p50/p99 over the
//! window, its CPU per renewal (from its threads' schedstat, ns: the window is too short for
//! utime + stime's 10 ms ticks), how many of the 2000 host states were as expected, and the
//! device's read and write bandwidth (the block device's /sys stat; the generator's writes
//! shown beside, since the daemon's one sector per renewal is lost in them).

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenure_core::dev::AlignedBuf;
use tenure_format::delta::{DeltaSector, HostBitmap};
use tenure_format::{Geometry, LeaderRecord, Name};
use tenured::client::Client;
use tenured::proto::Request;

use crate::scale::Figures;

/// Options of the hosts curve.
#[derive(Clone, Debug)]
pub struct HostsOptions {
    /// 512-byte-sector device or file (overwritten) of at least 2 MiB.
    pub device: PathBuf,
    /// io_timeout T.
    pub io_timeout_s: u16,
    /// Length of the measured window (10T ≤ window ≤ 8T + W − 6T).
    pub window_s: u64,
    /// sanlock-anchor's start.sh, to measure sanlock too (None: tenure only).
    pub sanlock_start: Option<PathBuf>,
}

const AREA: u64 = 1 << 20;
const HOSTS: u64 = 2000;
/// The first host id that stops renewing at the window's start.
const STOP_FROM: u64 = 1901;
/// The first host id that releases its slot at the window's start.
const RELEASE_FROM: u64 = 1951;
/// W other hosts are assumed to use (sanlock's, fixed at 60).
const W_S: u64 = 60;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// What host `id` should be at the window's end.
fn expected(id: u64) -> &'static str {
    if id >= RELEASE_FROM {
        "free"
    } else if id >= STOP_FROM {
        "fail"
    } else {
        "live"
    }
}

fn mono_s() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64)
        .unwrap_or(0)
}

/// The load generator's thread: hosts 2..=2000 of the lockspace `space` at `offset`.
struct Generator {
    stop: Arc<AtomicBool>,
    window: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Generator {
    fn start(device: &Path, space: &str, offset: u64, t: u16) -> Result<Generator, String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_DSYNC | libc::O_CLOEXEC)
            .open(device)
            .map_err(|e| format!("{}: {e}", device.display()))?;
        let g = Geometry::LEGACY_512;
        let name = Name::new(space).map_err(err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let window = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let (s, w, n) = (Arc::clone(&stop), Arc::clone(&window), Arc::clone(&written));
        let period = Duration::from_secs(2 * u64::from(t));
        let thread = std::thread::spawn(move || -> Result<(), String> {
            let mut buf = AlignedBuf::new(AREA as usize);
            let record = |id: u64, ts: u64| -> Result<LeaderRecord, String> {
                let mut l = LeaderRecord::new_delta_free(g, name, t);
                l.owner_id = id;
                l.owner_generation = 1;
                l.timestamp = ts;
                l.resource_name = Name::new(&format!("load-{id}")).map_err(err)?;
                Ok(l)
            };
            let start = Instant::now();
            // next[i]: when host i + 2 renews next; its phase is its share of the period.
            let mut next: Vec<Instant> = (2..=HOSTS)
                .map(|id| start + period.mul_f64(id as f64 / HOSTS as f64))
                .collect();
            let mut released = false;
            let mut first = true;
            while !s.load(Ordering::Relaxed) {
                let now = Instant::now();
                let in_window = w.load(Ordering::Relaxed);
                let ts = mono_s();
                let mut due = vec![false; HOSTS as usize + 1];
                for (i, at) in next.iter_mut().enumerate() {
                    let id = i as u64 + 2;
                    let renewing = !in_window || id < STOP_FROM;
                    let release_now = in_window && !released && id >= RELEASE_FROM;
                    if first || release_now || (renewing && *at <= now) {
                        due[id as usize] = true;
                        let stamp = if release_now { 0 } else { ts };
                        let sector = &mut buf.as_mut_slice()[(id as usize - 1) * 512..][..512];
                        DeltaSector {
                            leader: record(id, stamp)?,
                            bitmap: HostBitmap::default(),
                        }
                        .encode_into(sector);
                        while *at <= now {
                            *at += period;
                        }
                    }
                }
                released |= in_window;
                first = false;
                // Runs of due slots side by side: one write each.
                let mut id = 2u64;
                while id <= HOSTS {
                    if !due[id as usize] {
                        id += 1;
                        continue;
                    }
                    let from = id;
                    while id <= HOSTS && due[id as usize] {
                        id += 1;
                    }
                    let (a, b) = ((from as usize - 1) * 512, (id as usize - 1) * 512);
                    file.write_all_at(&buf.as_slice()[a..b], offset + a as u64)
                        .map_err(|e| format!("load generator write: {e}"))?;
                    n.fetch_add((b - a) as u64, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        });
        Ok(Generator {
            stop,
            window,
            written,
            thread: Some(thread),
        })
    }

    fn finish(mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err("the load generator panicked".into()),
            None => Ok(()),
        }
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sectors read and written of the block device `device` (None for a regular file).
fn disk_sectors(device: &Path) -> Option<(u64, u64)> {
    let real = std::fs::canonicalize(device).ok()?;
    let name = real.file_name()?.to_str()?;
    let stat = std::fs::read_to_string(format!("/sys/block/{name}/stat")).ok()?;
    let f: Vec<u64> = stat
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    Some((*f.get(2)?, *f.get(6)?))
}

/// What is measured at each end of the window.
struct Sample {
    at: Instant,
    /// utime + stime (ms).
    cpu_ticks_ms: f64,
    threads: std::collections::BTreeMap<u32, u64>,
    disk: Option<(u64, u64)>,
    generated: u64,
}

impl Sample {
    fn take(pid: u32, device: &Path, gen: &Generator) -> Result<Sample, String> {
        Ok(Sample {
            at: Instant::now(),
            cpu_ticks_ms: crate::scale::cpu_ms(pid)?,
            threads: crate::scale::thread_cpu_ns(pid),
            disk: disk_sectors(device),
            generated: gen.written.load(Ordering::Relaxed),
        })
    }

    /// The window's figures from here to `end`, with the renewal latencies `lat` and the
    /// host `statuses` at its end; and the host states not as expected.
    fn figures(
        &self,
        end: &Sample,
        rss: f64,
        lat: Vec<f64>,
        statuses: &[(u64, String)],
    ) -> (Vec<(&'static str, f64)>, Vec<String>) {
        let window = end.at.duration_since(self.at).as_secs_f64();
        let cpu = crate::scale::cpu_between(
            &self.threads,
            &end.threads,
            end.cpu_ticks_ms - self.cpu_ticks_ms,
        );
        let mut figures = crate::scale::renewal_figures(window, cpu, rss, lat);
        let wrong = window_figures(
            &mut figures,
            statuses,
            self.disk.zip(end.disk),
            end.generated - self.generated,
            window,
        );
        (figures, wrong)
    }
}

/// The window's figures common to both systems.
fn window_figures(
    figures: &mut Vec<(&'static str, f64)>,
    statuses: &[(u64, String)],
    disk: Option<((u64, u64), (u64, u64))>,
    generated: u64,
    window_s: f64,
) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut right = 0;
    for id in 1..=HOSTS {
        let got = statuses
            .iter()
            .find(|(h, _)| *h == id)
            .map_or("free", |(_, s)| s.as_str());
        if got == expected(id) {
            right += 1;
        } else {
            wrong.push(format!("host {id}: {got}, expected {}", expected(id)));
        }
    }
    figures.push(("hosts_correct", f64::from(right)));
    figures.push(("hosts_wrong", wrong.len() as f64));
    if let Some(((r0, w0), (r1, w1))) = disk {
        let mib = |sectors: u64| sectors as f64 * 512.0 / f64::from(1 << 20) / window_s;
        figures.push(("read_mib_per_s", mib(r1.saturating_sub(r0))));
        // The daemon's own writes (a sector per renewal) are lost in the generator's: the
        // device's total is shown beside the generator's.
        figures.push(("write_kib_per_s", mib(w1.saturating_sub(w0)) * 1024.0));
        figures.push(("generator_write_kib_per_s", mib(generated / 512) * 1024.0));
    }
    wrong
}

fn check_window(opts: &HostsOptions) -> Result<(), String> {
    let t = u64::from(opts.io_timeout_s);
    if opts.window_s < 10 * t || opts.window_s + 6 * t > 8 * t + W_S {
        return Err(format!(
            "the window must be between 10T ({} s) and 8T + W - 6T ({} s) for the stopped hosts to be in FAIL at its end",
            10 * t,
            (8 * t + W_S).saturating_sub(6 * t)
        ));
    }
    Ok(())
}

fn tenure_run(opts: &HostsOptions) -> Result<(Figures, Vec<String>), String> {
    let t = opts.io_timeout_s;
    crate::scale::format_areas(&opts.device, "G", 0, 1, t)?;
    let space = "G0";
    let gen = Generator::start(&opts.device, space, 0, t)?;
    // Every host written twice before the daemon joins.
    std::thread::sleep(Duration::from_secs(4 * u64::from(t)));
    let d = crate::daemon::spawn_bench_tenured(
        "tenure-bench-hosts",
        t,
        Some(format!("{space}:1:{}:0", opts.device.display())),
    )?;
    let sock = d.dir.join("tenured.sock");
    crate::daemon::wait_joined(&sock)?;
    let mut control = Client::connect(&sock, Some("bench")).map_err(err)?;
    // Every host seen changing: two more renewals of ours.
    std::thread::sleep(Duration::from_secs(6 * u64::from(t)));
    let pid = d.child.id();
    let w0 = Sample::take(pid, &opts.device, &gen)?;
    gen.window.store(true, Ordering::Relaxed);
    let deadline = w0.at + Duration::from_secs(opts.window_s);
    let lat = crate::scale::tenure_renewals(&mut control, w0.at, deadline, t)?;
    let w1 = Sample::take(pid, &opts.device, &gen)?;
    let v = control
        .call(&Request::Hosts {
            lockspace: space.into(),
        })
        .map_err(err)?;
    let statuses: Vec<(u64, String)> = v["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| Some((h["host_id"].as_u64()?, h["status"].as_str()?.to_owned())))
        .collect();
    let rss = crate::scale::rss_kib(pid)?;
    gen.finish()?;
    drop(d);
    let (figures, wrong) = w0.figures(&w1, rss, lat, &statuses);
    Ok((
        Figures {
            system: "tenure".into(),
            scenario: "hosts=2000".into(),
            figures,
        },
        wrong,
    ))
}

const SANLOCK_HOSTS: &str = r#"
import json, sys, sanlock
hosts = sanlock.get_hosts(sys.argv[1].encode())
names = {sanlock.HOST_UNKNOWN: "unknown", sanlock.HOST_FREE: "free", sanlock.HOST_LIVE: "live",
         sanlock.HOST_FAIL: "fail", sanlock.HOST_DEAD: "dead"}
print(json.dumps([[h["host_id"], names.get(h["flags"] & 0xf, "flags %d" % h["flags"])] for h in hosts]))
"#;

fn sanlock_run(opts: &HostsOptions, start_sh: &Path) -> Result<(Figures, Vec<String>), String> {
    let t = opts.io_timeout_s;
    crate::scale::format_areas(&opts.device, "G", 1, 1, t)?;
    let (space, offset) = ("G0", AREA);
    let gen = Generator::start(&opts.device, space, offset, t)?;
    std::thread::sleep(Duration::from_secs(4 * u64::from(t)));
    let rundir =
        crate::daemon::run_base().join(format!("tenure-bench-hosts-sl-{}", std::process::id()));
    let s = crate::scale::Sanlock::start(start_sh, &rundir)?;
    let spec = format!("{space}:1:{}:{offset}", opts.device.display());
    let out = Command::new("sanlock")
        .args(["client", "add_lockspace", "-o", &t.to_string(), "-s", &spec])
        .env("SANLOCK_RUN_DIR", &s.rundir)
        .output()
        .map_err(err)?;
    if !out.status.success() {
        return Err(format!(
            "sanlock add_lockspace: {}",
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    std::thread::sleep(Duration::from_secs(6 * u64::from(t)));
    let pid = s.pid;
    let w0 = Sample::take(pid, &opts.device, &gen)?;
    gen.window.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(opts.window_s));
    let w1 = Sample::take(pid, &opts.device, &gen)?;
    let window = w1.at.duration_since(w0.at).as_secs_f64();
    let out = Command::new("/usr/bin/python3")
        .args(["-c", SANLOCK_HOSTS, space])
        .env("SANLOCK_RUN_DIR", &s.rundir)
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "sanlock get_hosts: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let statuses: Vec<(u64, String)> = serde_json::from_slice(&out.stdout).map_err(err)?;
    let lat = crate::scale::sanlock_renewals(&spec, &s.rundir, window)?;
    let rss = crate::scale::rss_kib(pid)?;
    gen.finish()?;
    drop(s);
    let (figures, wrong) = w0.figures(&w1, rss, lat, &statuses);
    Ok((
        Figures {
            system: "sanlock".into(),
            scenario: "hosts=2000".into(),
            figures,
        },
        wrong,
    ))
}

/// Runs the hosts curve: tenure, then sanlock. Host states not as expected are printed to
/// stderr (the figures count them).
pub fn hosts(opts: &HostsOptions, mut each: impl FnMut(&Figures)) -> Result<Vec<Figures>, String> {
    check_window(opts)?;
    let mut rows = Vec::new();
    let mut runs = vec![tenure_run(opts)?];
    each(&runs[0].0);
    if let Some(sh) = &opts.sanlock_start {
        runs.push(sanlock_run(opts, sh)?);
        each(&runs[1].0);
    }
    for (f, wrong) in runs {
        for w in wrong.iter().take(10) {
            eprintln!("{}: {w}", f.system);
        }
        rows.push(f);
    }
    Ok(rows)
}
