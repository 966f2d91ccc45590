//! `tenure-bench scale --curve held`: memory and acquire cost against the number of leases a
//! host holds (issue 21, curve 3's last part). For each N, one lockspace and N resources of
//! num_hosts 64 (512-byte sectors, 1 MiB areas) per system; tenure: a tenured started here,
//! 8 native connections acquiring their share one lease per call and keeping them; sanlock: a
//! sanlock daemon from sanlock-anchor's start.sh (`-w 0`), one python3-sanlock process
//! registering a client per 8 leases (sanlock's limit per client) and acquiring them one by
//! one. Figures: acquire p50 over the first and the last tenth of the acquires (how the cost
//! of one grows with what is held), acquires per second, the daemon's resident memory once all
//! are held, and its growth per lease since the join.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use tenure_core::direct::{format_lockspace, format_resource, FormatOptions};
use tenure_format::{LockspaceSpec, ResourceSpec};
use tenured::client::Client;
use tenured::proto::Request;

use crate::scale::Figures;

/// Options of `tenure-bench scale --curve held`.
#[derive(Clone, Debug)]
pub struct HeldOptions {
    /// 512-byte-sector device or file (overwritten) of at least 2 × (max(N) + 1) MiB.
    pub device: PathBuf,
    /// The N to measure.
    pub counts: Vec<usize>,
    /// io_timeout T.
    pub io_timeout_s: u16,
    /// sanlock-anchor's start.sh, to measure sanlock too (None: tenure only).
    pub sanlock_start: Option<PathBuf>,
}

const AREA: u64 = 1 << 20;
const NUM_HOSTS: u64 = 64;
const CLIENTS: usize = 8;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Formats lockspace `space` at area `first` and `n` resources `{prefix}{i}` after it.
fn format_all(
    device: &Path,
    space: &str,
    prefix: &str,
    first: u64,
    n: usize,
    t: u16,
) -> Result<(), String> {
    let force = FormatOptions {
        force: true,
        ..Default::default()
    };
    let d = device.display();
    let ls = LockspaceSpec::parse(&format!("{space}:0:{d}:{}", first * AREA)).map_err(err)?;
    format_lockspace(&ls, force, u64::from(t)).map_err(err)?;
    for i in 0..n {
        let at = (first + 1 + i as u64) * AREA;
        let r = ResourceSpec::parse(&format!("{space}:{prefix}{i}:{d}:{at}")).map_err(err)?;
        format_resource(&r, force, Some(NUM_HOSTS)).map_err(err)?;
    }
    Ok(())
}

/// p50 in µs of `v` (unsorted).
fn p50_us(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2] * 1e6
}

/// Figures from acquire times in acquire order (seconds), the wall time, and memory.
fn figures(times: &[f64], wall_s: f64, rss0: f64, rss: f64, n: usize) -> Vec<(&'static str, f64)> {
    let tenth = (times.len() / 10).max(1);
    let mut first: Vec<f64> = times[..tenth.min(times.len())].to_vec();
    let mut last: Vec<f64> = times[times.len().saturating_sub(tenth)..].to_vec();
    vec![
        ("first_tenth_p50_us", p50_us(&mut first)),
        ("last_tenth_p50_us", p50_us(&mut last)),
        ("acquires_per_s", n as f64 / wall_s),
        ("rss_kib", rss),
        ("rss_kib_per_lease", (rss - rss0) / n as f64),
    ]
}

fn tenure_run(opts: &HeldOptions, n: usize) -> Result<Figures, String> {
    let t = opts.io_timeout_s;
    format_all(&opts.device, "H", "h", 0, n, t)?;
    let d = crate::daemon::spawn_bench_tenured(
        "tenure-bench-held",
        t,
        Some(format!("H:1:{}:0", opts.device.display())),
    )?;
    let sock = d.dir.join("tenured.sock");
    crate::daemon::wait_joined(&sock)?;
    let pid = d.child.id();
    let rss0 = crate::scale::rss_kib(pid)?;
    let spec = |i: usize| format!("H:h{i}:{}:{}", opts.device.display(), (i as u64 + 1) * AREA);
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|_| Client::connect(&sock, Some("bench")).map_err(err))
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    let per: Vec<Result<Vec<(usize, f64)>, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = clients
            .iter_mut()
            .enumerate()
            .map(|(k, c)| {
                let spec = &spec;
                s.spawn(move || -> Result<Vec<(usize, f64)>, String> {
                    let mut out = Vec::new();
                    for i in (k..n).step_by(CLIENTS) {
                        let t0 = Instant::now();
                        c.call(&Request::Acquire {
                            resources: vec![spec(i)],
                            no_wait: true,
                            lvb: false,
                            pid: None,
                            persistent: false,
                            adopt_orphan: false,
                        })
                        .map_err(|e| format!("acquire of lease {i}: {e}"))?;
                        out.push((i, t0.elapsed().as_secs_f64()));
                    }
                    Ok(out)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().map_err(|_| "client panicked".to_string())?)
            .collect()
    });
    let wall = start.elapsed().as_secs_f64();
    let mut all = Vec::with_capacity(n);
    for p in per {
        all.extend(p?);
    }
    all.sort_by_key(|&(i, _)| i);
    let times: Vec<f64> = all.iter().map(|&(_, t)| t).collect();
    let rss = crate::scale::rss_kib(pid)?;
    let state = std::fs::metadata(d.dir.join(tenured::host::handover::STATE_FILE))
        .map(|m| m.len() as f64 / 1024.0)
        .unwrap_or(f64::NAN);
    for c in &mut clients {
        c.call(&Request::Release {
            resources: Vec::new(),
            all: true,
            pid: None,
            lvb_hex: None,
        })
        .map_err(err)?;
    }
    let mut f = figures(&times, wall, rss0, rss, n);
    f.push(("state_file_kib", state));
    drop(clients);
    drop(d);
    Ok(Figures {
        system: "tenure".into(),
        scenario: format!("leases held={n}"),
        figures: f,
    })
}

/// Registers a client per 8 leases, acquires all one by one, prints the times (JSON), then
/// holds them until stdin closes.
const SANLOCK_HOLD: &str = r#"
import json, os, sys, time, sanlock
path, space, first, n = sys.argv[1].encode(), sys.argv[2].encode(), int(sys.argv[3]), int(sys.argv[4])
sanlock.add_lockspace(space, 1, path, first * 1048576)
regs, times = [], []
t0 = time.perf_counter()
for i in range(n):
    if i % 8 == 0:
        regs.append(sanlock.register())
    a = time.perf_counter()
    sanlock.acquire(space, b"s%d" % i, [(path, (first + 1 + i) * 1048576)], slkfd=regs[-1])
    times.append(time.perf_counter() - a)
print(json.dumps({"times": times, "wall": time.perf_counter() - t0}), flush=True)
sys.stdin.readline()
for r in regs:
    os.close(r)
time.sleep(1)
sanlock.rem_lockspace(space, 1, path, first * 1048576)
"#;

fn sanlock_run(
    opts: &HeldOptions,
    start_sh: &Path,
    n: usize,
    first: u64,
) -> Result<Figures, String> {
    format_all(&opts.device, "S", "s", first, n, opts.io_timeout_s)?;
    let rundir =
        crate::daemon::run_base().join(format!("tenure-bench-held-sl-{}", std::process::id()));
    let s = crate::scale::Sanlock::start(start_sh, &rundir)?;
    let rss0 = crate::scale::rss_kib(s.pid)?;
    let mut py = Command::new("/usr/bin/python3")
        .args(["-c", SANLOCK_HOLD])
        .arg(&opts.device)
        .args(["S", &first.to_string(), &n.to_string()])
        .env("SANLOCK_RUN_DIR", &rundir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("python3: {e}"))?;
    let mut line = String::new();
    let read = py
        .stdout
        .take()
        .map(|o| BufReader::new(o).read_line(&mut line));
    let result = (|| -> Result<Figures, String> {
        read.ok_or("no stdout")?.map_err(err)?;
        let v: serde_json::Value = serde_json::from_str(line.trim())
            .map_err(|e| format!("sanlock holder: {e} ({line:?})"))?;
        let times: Vec<f64> = v["times"]
            .as_array()
            .ok_or("no times")?
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .collect();
        let wall = v["wall"].as_f64().ok_or("no wall time")?;
        let rss = crate::scale::rss_kib(s.pid)?;
        Ok(Figures {
            system: "sanlock".into(),
            scenario: format!("leases held={n}"),
            figures: figures(&times, wall, rss0, rss, n),
        })
    })();
    if let Some(mut i) = py.stdin.take() {
        let _ = i.write_all(b"\n");
    }
    let _ = py.wait();
    drop(s);
    result
}

/// Runs the held-leases curve: for each N, tenure then sanlock.
pub fn held(opts: &HeldOptions, mut each: impl FnMut(&Figures)) -> Result<Vec<Figures>, String> {
    let max = opts.counts.iter().copied().max().unwrap_or(1) as u64;
    let mut rows = Vec::new();
    for &n in &opts.counts {
        let f = tenure_run(opts, n)?;
        each(&f);
        rows.push(f);
        if let Some(sh) = &opts.sanlock_start {
            let f = sanlock_run(opts, sh, n, max + 1)?;
            each(&f);
            rows.push(f);
        }
    }
    Ok(rows)
}
