//! `tenure-bench scale`: how cost grows with the work, tenure and sanlock on the same device in
//! one run (issue 21). The `lockspaces` curve: N lockspaces joined at once (N clients, each
//! asking for one join at the same instant), then renewed for a while: time until the first,
//! median and last join ended, CPU per renewal, renewal latency p50/p99 and resident memory of
//! the daemon.
//!
//! tenure: a tenured started here (no watchdog), N native clients each sending
//! `lockspace_add` with `wait`. sanlock: a sanlock daemon started by sanlock-anchor's start.sh
//! (`-w 0`), N python3-sanlock threads each calling `add_lockspace`. Both daemons get the same
//! io_timeout, areas formatted the same way (512-byte sectors, 1 MiB areas, 2000 host slots),
//! tenure's in the first half of the device and sanlock's in the second. Renewal latencies are
//! each daemon's own records (tenure's renewal history, sanlock's `client renewal`); CPU is
//! utime + stime of the daemon process over the renewal window.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use tenure_core::direct::{format_lockspace, FormatOptions};
use tenure_format::LockspaceSpec;
use tenured::client::Client;
use tenured::proto::Request;

/// Options of `tenure-bench scale --curve lockspaces`.
#[derive(Clone, Debug)]
pub struct ScaleOptions {
    /// 512-byte-sector device or file (overwritten) of at least 2 × max(N) MiB.
    pub device: PathBuf,
    /// The N to measure.
    pub counts: Vec<usize>,
    /// io_timeout T.
    pub io_timeout_s: u16,
    /// Seconds of renewals measured after the joins.
    pub renew_s: u64,
    /// sanlock-anchor's start.sh, to measure sanlock too (None: tenure only).
    pub sanlock_start: Option<PathBuf>,
}

/// One row: a system, a scenario, and figures named with their unit.
#[derive(Clone, Debug)]
pub struct Figures {
    /// "tenure" or "sanlock".
    pub system: String,
    /// e.g. "lockspaces=40".
    pub scenario: String,
    /// (name with unit, value).
    pub figures: Vec<(&'static str, f64)>,
}

impl Figures {
    /// The JSON line.
    pub fn json(&self) -> String {
        let mut v = serde_json::json!({"system": self.system, "scenario": self.scenario});
        for (k, x) in &self.figures {
            v[*k] = serde_json::json!((x * 1000.0).round() / 1000.0);
        }
        v.to_string()
    }

    /// A table line.
    pub fn line(&self) -> String {
        let mut s = format!("{:<8} {:<16}", self.system, self.scenario);
        for (k, x) in &self.figures {
            s.push_str(&format!(" {k}={x:.3}"));
        }
        s
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

const AREA: u64 = 1 << 20;

pub(crate) fn format_areas(
    device: &Path,
    prefix: &str,
    first_area: u64,
    n: usize,
    t: u16,
) -> Result<(), String> {
    for i in 0..n {
        let spec = LockspaceSpec::parse(&format!(
            "{prefix}{i}:0:{}:{}",
            device.display(),
            (first_area + i as u64) * AREA
        ))
        .map_err(err)?;
        format_lockspace(
            &spec,
            FormatOptions {
                force: true,
                ..Default::default()
            },
            u64::from(t),
        )
        .map_err(err)?;
    }
    Ok(())
}

/// CPU time of each thread of `pid` (ns, from /proc/PID/task/TID/schedstat).
pub(crate) fn thread_cpu_ns(pid: u32) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        let ns = std::fs::read_to_string(e.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
        if let Some(ns) = ns {
            out.insert(tid, ns);
        }
    }
    out
}

/// CPU ms used between two [`thread_cpu_ns`] samples by the threads alive at both, unless
/// `ticks_ms` (utime + stime over the same span, 10 ms resolution, counting threads that
/// ended) is more than two ticks above it: then that.
pub(crate) fn cpu_between(a: &BTreeMap<u32, u64>, b: &BTreeMap<u32, u64>, ticks_ms: f64) -> f64 {
    let precise: u64 = b
        .iter()
        .filter_map(|(tid, ns)| a.get(tid).map(|x| ns.saturating_sub(*x)))
        .sum();
    let precise = precise as f64 / 1e6;
    if ticks_ms > precise + 20.0 {
        ticks_ms
    } else {
        precise
    }
}

/// utime + stime of `pid`, in milliseconds.
pub(crate) fn cpu_ms(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(err)?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or("bad stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f
        .get(11)
        .zip(f.get(12))
        .and_then(|(u, s)| Some(u.parse::<f64>().ok()? + s.parse::<f64>().ok()?))
        .ok_or("bad stat fields")?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Ok(ticks * 1000.0 / hz)
}

/// VmRSS of `pid` in KiB.
pub(crate) fn rss_kib(pid: u32) -> Result<f64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(err)?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no VmRSS".into())
}

fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// first/median/last of join times (s), sorted in place.
fn join_figures(times: &mut [f64]) -> Vec<(&'static str, f64)> {
    times.sort_by(f64::total_cmp);
    vec![
        ("first_s", quantile(times, 0.0)),
        ("median_s", quantile(times, 50.0)),
        ("last_s", quantile(times, 100.0)),
    ]
}

/// The renewal window's figures: `cpu_ms` used over `window_s`, the renewals' latencies.
pub(crate) fn renewal_figures(
    window_s: f64,
    cpu_ms: f64,
    rss: f64,
    mut lat: Vec<f64>,
) -> Vec<(&'static str, f64)> {
    lat.sort_by(f64::total_cmp);
    let renewals = lat.len().max(1) as f64;
    vec![
        ("window_s", window_s),
        ("renewals", lat.len() as f64),
        ("cpu_ms_per_renewal", cpu_ms / renewals),
        ("cpu_pct", cpu_ms / (window_s * 10.0)),
        ("renewal_p50_ms", quantile(&lat, 50.0)),
        ("renewal_p99_ms", quantile(&lat, 99.0)),
        ("rss_kib", rss),
    ]
}

/// Latencies (ms) of the renewals tenured at `control` made between `w0` and `deadline`,
/// from its renewal history, polled until `deadline`.
pub(crate) fn tenure_renewals(
    control: &mut Client,
    w0: Instant,
    deadline: Instant,
    t: u16,
) -> Result<Vec<f64>, String> {
    // Per lockspace: (seconds into the window, latency ms) of each renewal seen.
    let mut seen: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    loop {
        let now = Instant::now();
        let v = control.call(&Request::LockspaceList {}).map_err(err)?;
        for ls in v["lockspaces"].as_array().into_iter().flatten() {
            let name = ls["name"].as_str().unwrap_or("").to_owned();
            let list = seen.entry(name).or_default();
            for r in ls["last_renewals"].as_array().into_iter().flatten() {
                let (Some(ago), Some(rd), Some(wr)) = (
                    r["ago_ms"].as_u64(),
                    r["read_ms"].as_f64(),
                    r["write_ms"].as_f64(),
                ) else {
                    continue;
                };
                let Some(at) = now.checked_sub(Duration::from_millis(ago)) else {
                    continue;
                };
                if at < w0 {
                    continue;
                }
                let at = at.duration_since(w0).as_secs_f64();
                // Renewals of one lockspace are 2T apart; polls see one again a few ms off.
                if !list.iter().any(|&(x, _)| (x - at).abs() < 0.3) {
                    list.push((at, rd + wr));
                }
            }
        }
        if now >= deadline {
            break;
        }
        // Each lockspace shows its last 8 renewals (16T): polling every 12T misses none, and
        // the polls cost tenured little of the CPU measured.
        std::thread::sleep(Duration::from_secs(12 * u64::from(t)).min(deadline - now));
    }
    Ok(seen.values().flatten().map(|&(_, l)| l).collect())
}

fn tenure_run(opts: &ScaleOptions, n: usize) -> Result<Figures, String> {
    let t = opts.io_timeout_s;
    format_areas(&opts.device, "T", 0, n, t)?;
    let d = crate::daemon::spawn_bench_tenured("tenure-bench-scale", t, None)?;
    let sock = d.dir.join("tenured.sock");
    let t0 = Instant::now();
    while Client::connect(&sock, Some("bench")).is_err() {
        if t0.elapsed() > Duration::from_secs(30) {
            return Err("tenured did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // N clients connected first; then all ask at once.
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut threads = Vec::new();
    for i in 0..n {
        let mut c = Client::connect(&sock, Some("bench")).map_err(err)?;
        let b = Arc::clone(&barrier);
        let spec = format!("T{i}:1:{}:{}", opts.device.display(), i as u64 * AREA);
        threads.push(std::thread::spawn(move || -> Result<Instant, String> {
            b.wait();
            c.call(&Request::LockspaceAdd {
                spec,
                wait: true,
                io_timeout_s: None,
            })
            .map_err(err)?;
            Ok(Instant::now())
        }));
    }
    barrier.wait();
    let start = Instant::now();
    let mut joined = Vec::new();
    for th in threads {
        let at = th.join().map_err(|_| "join thread panicked")??;
        joined.push(at.duration_since(start).as_secs_f64());
    }
    let mut figures = join_figures(&mut joined);
    // Renewals: collected from the daemon's renewal history while they happen.
    let pid = d.child.id();
    let mut control = Client::connect(&sock, Some("bench")).map_err(err)?;
    let w0 = Instant::now();
    let c0 = cpu_ms(pid)?;
    let deadline = w0 + Duration::from_secs(opts.renew_s);
    let lat = tenure_renewals(&mut control, w0, deadline, t)?;
    let c1 = cpu_ms(pid)?;
    let window = w0.elapsed().as_secs_f64();
    let rss = rss_kib(pid)?;
    figures.extend(renewal_figures(window, c1 - c0, rss, lat));
    Ok(Figures {
        system: "tenure".into(),
        scenario: format!("lockspaces={n}"),
        figures,
    })
}

/// Latencies (ms) of the renewals of lockspace `spec` the sanlock at `rundir` made in the
/// last `window` seconds: its own renewal history (`client renewal`), one line per renewal
/// with its timestamp (seconds of CLOCK_MONOTONIC), read_ms and write_ms.
pub(crate) fn sanlock_renewals(spec: &str, rundir: &Path, window: f64) -> Result<Vec<f64>, String> {
    let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map_err(err)?
        .tv_sec() as u64;
    let since = mono.saturating_sub(window.floor() as u64);
    let out = Command::new("sanlock")
        .args(["client", "renewal", "-s", spec])
        .env("SANLOCK_RUN_DIR", rundir)
        .output()
        .map_err(err)?;
    let mut lat = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(k))
                .and_then(|v| v.parse::<f64>().ok())
        };
        if let (Some(ts), Some(r), Some(w)) =
            (field("timestamp="), field("read_ms="), field("write_ms="))
        {
            if ts as u64 >= since {
                lat.push(r + w);
            }
        }
    }
    Ok(lat)
}

/// A sanlock daemon started by sanlock-anchor's start.sh, shut down (then killed) on drop.
pub(crate) struct Sanlock {
    pub(crate) pid: u32,
    pub(crate) rundir: PathBuf,
}

impl Sanlock {
    /// Starts one with run directory `rundir`.
    pub(crate) fn start(start_sh: &Path, rundir: &Path) -> Result<Sanlock, String> {
        let out = Command::new("bash")
            .arg(start_sh)
            .arg(rundir)
            .output()
            .map_err(|e| format!("{}: {e}", start_sh.display()))?;
        if !out.status.success() {
            return Err(format!(
                "start.sh: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let pid: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| "start.sh printed no pid")?;
        Ok(Sanlock {
            pid,
            rundir: rundir.to_owned(),
        })
    }
}

impl Drop for Sanlock {
    fn drop(&mut self) {
        let _ = Command::new("sanlock")
            .args(["client", "shutdown", "-f", "1"])
            .env("SANLOCK_RUN_DIR", &self.rundir)
            .output();
        let t0 = Instant::now();
        while Path::new(&format!("/proc/{}", self.pid)).exists()
            && t0.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = std::fs::remove_dir_all(&self.rundir);
    }
}

const SANLOCK_JOINS: &str = r#"
import json, sys, threading, time, sanlock
path, first, n, t = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
barrier = threading.Barrier(n + 1)
done = [None] * n
def join(i):
    barrier.wait()
    sanlock.add_lockspace(b"S%d" % i, 1, path, (first + i) * 1048576, iotimeout=t)
    done[i] = time.monotonic()
ths = [threading.Thread(target=join, args=(i,)) for i in range(n)]
for th in ths: th.start()
barrier.wait()
start = time.monotonic()
for th in ths: th.join()
print(json.dumps([d - start for d in done]))
"#;

fn sanlock_run(
    opts: &ScaleOptions,
    start_sh: &Path,
    n: usize,
    first_area: u64,
) -> Result<Figures, String> {
    let t = opts.io_timeout_s;
    format_areas(&opts.device, "S", first_area, n, t)?;
    let rundir =
        crate::daemon::run_base().join(format!("tenure-bench-scale-sl-{}", std::process::id()));
    let s = Sanlock::start(start_sh, &rundir)?;
    let pid = s.pid;
    let out = Command::new("/usr/bin/python3")
        .args(["-c", SANLOCK_JOINS])
        .arg(&opts.device)
        .args([first_area.to_string(), n.to_string(), t.to_string()])
        .env("SANLOCK_RUN_DIR", &s.rundir)
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "sanlock joins: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut joined: Vec<f64> = serde_json::from_slice(&out.stdout).map_err(err)?;
    let mut figures = join_figures(&mut joined);
    let w0 = Instant::now();
    let c0 = cpu_ms(pid)?;
    std::thread::sleep(Duration::from_secs(opts.renew_s));
    let c1 = cpu_ms(pid)?;
    let window = w0.elapsed().as_secs_f64();
    let rss = rss_kib(pid)?;
    let mut lat = Vec::new();
    for i in 0..n {
        let spec = format!(
            "S{i}:1:{}:{}",
            opts.device.display(),
            (first_area + i as u64) * AREA
        );
        lat.extend(sanlock_renewals(&spec, &s.rundir, window)?);
    }
    figures.extend(renewal_figures(window, c1 - c0, rss, lat));
    drop(s);
    Ok(Figures {
        system: "sanlock".into(),
        scenario: format!("lockspaces={n}"),
        figures,
    })
}

/// Runs the lockspaces curve: for each N, tenure then sanlock.
pub fn lockspaces(
    opts: &ScaleOptions,
    mut each: impl FnMut(&Figures),
) -> Result<Vec<Figures>, String> {
    let max = opts.counts.iter().copied().max().unwrap_or(1) as u64;
    let mut rows = Vec::new();
    for &n in &opts.counts {
        let f = tenure_run(opts, n)?;
        each(&f);
        rows.push(f);
        if let Some(sh) = &opts.sanlock_start {
            let f = sanlock_run(opts, sh, n, max)?;
            each(&f);
            rows.push(f);
        }
    }
    Ok(rows)
}
