//! sanlock-anchor's `bench.py` (python3-sanlock against a daemon's sanlock socket): runs it
//! and reads its figures. Used for the sanlock daemon, and for tenured's sanlock-compatible
//! socket by `tenure-bench daemon --protocol sanlock`.

use std::path::Path;
use std::process::Command;

/// What bench.py printed (milliseconds are medians and p90s; it reports no p99).
#[derive(Clone, Debug, PartialEq)]
pub struct BenchPy {
    /// Join time, seconds.
    pub join_s: Option<f64>,
    /// Acquire (median, p90), ms.
    pub acquire_ms: Option<(f64, f64)>,
    /// Release (median, p90), ms.
    pub release_ms: Option<(f64, f64)>,
    /// Acquires per second with several threads.
    pub parallel_per_s: Option<f64>,
}

/// A workload of the same shape as bench.py (join, sequential acquires then releases, then
/// `threads` registered clients acquiring their share at once), whose resources take part
/// with `--num-hosts` dblocks. python3-sanlock's write_resource sends max_hosts where the
/// daemon reads num_hosts (spec/SANLOCK-WIRE.md, WRITE_RESOURCE), so passing the wanted
/// num_hosts as max_hosts formats exactly that. Prints bench.py's lines.
pub const NUM_HOSTS_SCRIPT: &str = r#"
import argparse, os, sys, threading, time
import sanlock

ap = argparse.ArgumentParser()
ap.add_argument("device")
ap.add_argument("--io-timeout", type=int, default=10)
ap.add_argument("--leases", type=int, default=100)
ap.add_argument("--threads", type=int, default=8)
ap.add_argument("--sector", type=int, default=512)
ap.add_argument("--num-hosts", type=int, default=2000)
o = ap.parse_args()
align = (1 << 20) if o.sector == 512 else (8 << 20)
geo = dict(sector=o.sector, align=align)
space = b"BENCH"

def median_p90(v):
    v = sorted(v)
    at = lambda q: v[min(len(v) - 1, int(len(v) * q))] * 1e3
    return at(0.5), at(0.9)

sanlock.write_lockspace(space, o.device, offset=0, iotimeout=o.io_timeout, **geo)
t0 = time.perf_counter()
sanlock.add_lockspace(space, 1, o.device, offset=0, iotimeout=o.io_timeout)
print("join_s %.2f" % (time.perf_counter() - t0))
leases = [(b"n%d" % k, (k + 1) * align) for k in range(o.leases)]
for name, at in leases:
    sanlock.write_resource(space, name, [(o.device, at)], max_hosts=o.num_hosts, **geo)
reg = sanlock.register()
times = {"acquire": [], "release": []}
for op in ("acquire", "release"):
    for name, at in leases:
        t0 = time.perf_counter()
        getattr(sanlock, op)(space, name, [(o.device, at)], slkfd=reg)
        times[op].append(time.perf_counter() - t0)
for op in ("acquire", "release"):
    print("%s_ms median %.3f p90 %.3f" % ((op,) + median_p90(times[op])))

failures, finished = [], []
release_now = threading.Event()
def client(share):
    me = sanlock.register()
    for name, at in share:
        try:
            sanlock.acquire(space, name, [(o.device, at)], slkfd=me)
        except sanlock.SanlockException as e:
            failures.append(e)
    finished.append(time.perf_counter())
    release_now.wait()
    os.close(me)
clients = [threading.Thread(target=client, args=(leases[k::o.threads],)) for k in range(o.threads)]
t0 = time.perf_counter()
for c in clients:
    c.start()
while len(finished) < len(clients):
    time.sleep(0.001)
elapsed = max(finished) - t0
release_now.set()
for c in clients:
    c.join()
time.sleep(0.5)
print("parallel_acquires_per_s %.0f (threads %d, leases %d, errors %d)" % (o.leases / elapsed, o.threads, o.leases, len(failures)))
os.close(reg)
# Leave, so the daemon lets go of the device (and a next run can join again).
sanlock.rem_lockspace(space, 1, o.device, offset=0)
"#;

/// Runs bench.py on `device` against the daemon whose socket is in `rundir`.
pub fn run(
    script: &Path,
    device: &Path,
    io_timeout_s: u16,
    leases: usize,
    threads: usize,
    rundir: &Path,
) -> Result<BenchPy, String> {
    run_with(script, device, io_timeout_s, leases, threads, rundir, &[])
}

/// [`run`] with extra arguments for the script.
pub fn run_with(
    script: &Path,
    device: &Path,
    io_timeout_s: u16,
    leases: usize,
    threads: usize,
    rundir: &Path,
    extra: &[String],
) -> Result<BenchPy, String> {
    let out = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(device)
        .args(["--io-timeout", &io_timeout_s.to_string()])
        .args(["--leases", &leases.to_string()])
        .args(["--threads", &threads.to_string(), "--sector", "512"])
        .args(extra)
        .env("SANLOCK_RUN_DIR", rundir)
        .output()
        .map_err(|e| format!("bench.py: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "bench.py failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(parse(&text))
}

/// bench.py for num_hosts 2000 (the only one it formats), our script of the same shape
/// ([`NUM_HOSTS_SCRIPT`]) for another: the figures, and a label naming the geometry and which
/// script ran.
pub fn run_num_hosts(
    bench_py: &Path,
    device: &Path,
    io_timeout_s: u16,
    leases: usize,
    threads: usize,
    rundir: &Path,
    num_hosts: u64,
) -> Result<(BenchPy, String), String> {
    if num_hosts == 2000 {
        let b = run(bench_py, device, io_timeout_s, leases, threads, rundir)?;
        return Ok((b, "512/1M, num_hosts 2000, bench.py".to_owned()));
    }
    let script =
        std::env::temp_dir().join(format!("tenure-bench-num-hosts-{}.py", std::process::id()));
    std::fs::write(&script, NUM_HOSTS_SCRIPT).map_err(|e| format!("{}: {e}", script.display()))?;
    let b = run_with(
        &script,
        device,
        io_timeout_s,
        leases,
        threads,
        rundir,
        &["--num-hosts".to_owned(), num_hosts.to_string()],
    );
    let _ = std::fs::remove_file(&script);
    Ok((
        b?,
        format!("512/1M, num_hosts {num_hosts}, python3-sanlock"),
    ))
}

/// The measurements of one bench.py run, as `system`, scenarios named `label` plus what
/// they measure (a join row only when `with_join`).
pub fn rows(
    b: &BenchPy,
    system: &str,
    label: &str,
    leases: usize,
    threads: usize,
    with_join: bool,
) -> Vec<crate::report::Measurement> {
    use crate::report::Measurement;
    let lat = |scenario: String, v: Option<(f64, f64)>| Measurement {
        system: system.into(),
        scenario,
        n: leases,
        // bench.py prints the median and p90; it has no p99.
        percentiles_us: v.map(|(p50, p90)| (p50 * 1e3, p90 * 1e3, f64::NAN)),
        ops_per_s: None,
    };
    let mut out = Vec::with_capacity(4);
    if with_join {
        out.push(Measurement {
            system: system.into(),
            scenario: format!("join a lockspace ({label})"),
            n: 1,
            percentiles_us: b.join_s.map(|s| (s * 1e6, s * 1e6, s * 1e6)),
            ops_per_s: None,
        });
    }
    out.push(lat(format!("acquire free lease ({label})"), b.acquire_ms));
    out.push(lat(format!("release ({label})"), b.release_ms));
    out.push(Measurement {
        system: system.into(),
        scenario: format!("acquires/s, {threads} threads ({label})"),
        n: leases,
        percentiles_us: None,
        ops_per_s: b.parallel_per_s,
    });
    out
}

/// Reads bench.py's output lines.
pub fn parse(text: &str) -> BenchPy {
    let field = |key: &str, idx: usize| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(idx)?
            .parse()
            .ok()
    };
    let pair = |key: &str| field(key, 2).zip(field(key, 4));
    BenchPy {
        join_s: field("join_s", 1),
        acquire_ms: pair("acquire_ms"),
        release_ms: pair("release_ms"),
        parallel_per_s: field("parallel_acquires_per_s", 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bench_py_output() {
        let b = parse(
            "join_s 3.01\nacquire_ms median 6.000 p90 9.500\nrelease_ms median 0.830 p90 0.950\nparallel_acquires_per_s 306 (threads 8, leases 30, errors 0)\n",
        );
        assert_eq!(b.join_s, Some(3.01));
        assert_eq!(b.acquire_ms, Some((6.0, 9.5)));
        assert_eq!(b.release_ms, Some((0.83, 0.95)));
        assert_eq!(b.parallel_per_s, Some(306.0));
    }
}
