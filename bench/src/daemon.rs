//! `tenure-bench daemon`: acquire/release latency and throughput through tenured's socket
//! (native protocol, the Rust client), with a real tenured started here on the device; with
//! `--compare-sanlock RUNDIR`, sanlock-anchor's bench.py against a running sanlock daemon on
//! the same device afterwards (same geometry: 512-byte sectors, 1 MiB areas, `--num-hosts`
//! dblocks, bench.py at 2000 and a script of its shape otherwise; both daemons without a
//! watchdog — sanlock runs `-w 0` — so neither pays for feeding one).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tenure_core::direct::{format_lockspace, format_resource, FormatOptions};
use tenure_format::{LockspaceSpec, ResourceSpec};
use tenured::client::Client;
use tenured::proto::Request;

use crate::report::{percentiles_us, Measurement};

/// Options of `tenure-bench daemon`.
#[derive(Clone, Debug)]
pub struct DaemonBenchOptions {
    /// 512-byte-sector device or file (overwritten) with room for `leases + 1` areas.
    pub device: PathBuf,
    /// Leases.
    pub leases: usize,
    /// num_hosts of every resource.
    pub num_hosts: u64,
    /// Clients at once in the throughput run.
    pub concurrency: usize,
    /// io_timeout.
    pub io_timeout_s: u16,
    /// Rounds of acquire+release per lease in the latency run.
    pub rounds: usize,
    /// A running sanlock daemon's SANLOCK_RUN_DIR.
    pub sanlock_rundir: Option<PathBuf>,
    /// sanlock-anchor's bench.py.
    pub sanlock_bench: PathBuf,
    /// Drive tenured through its sanlock-compatible socket with bench.py (python3-sanlock),
    /// the same client workload as for the sanlock daemon, instead of the native protocol.
    pub sanlock_protocol: bool,
}

const ALIGN: u64 = 1 << 20;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A tenured started by a bench (watchdog none), killed and its directory removed on drop.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Nothing is held any more when we get here on success; on failure, kill it (no
        // watchdog is armed: it runs with watchdog none).
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where the benchmarked tenured keeps its run directory: on tmpfs as in production (/run;
/// here /dev/shm) — tenured rewrites its state file there before each grant's reply, which
/// costs a flush of the data on ext4 (docs/benchmarks.md).
pub fn run_base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

/// The tenured binary beside this bench binary.
pub(crate) fn tenured_path() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(err)?;
    let p = exe.with_file_name("tenured");
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} not found: build it with `cargo build --release -p tenured`",
            p.display()
        ))
    }
}

/// Whether the tenured at `sock` answers and its first lockspace is joined.
fn first_joined(sock: &Path) -> bool {
    Client::connect(sock, Some("bench"))
        .and_then(|mut c| c.call(&Request::LockspaceList {}))
        .is_ok_and(|v| v["lockspaces"][0]["state"] == "joined")
}

/// A tenured started for a benchmark (no watchdog, logging warnings, kill grace and SIGKILL
/// retries of 2 s) with its run and state directory `<run_base>/<name>-<our pid>`, joining
/// `lockspace` (`NAME:HOST_ID:PATH:OFFSET`) when given; killed and its directory removed on
/// drop.
pub(crate) fn spawn_bench_tenured(
    name: &str,
    io_timeout_s: u16,
    lockspace: Option<String>,
) -> Result<Daemon, String> {
    let dir = run_base().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(err)?;
    let mut cmd = std::process::Command::new(tenured_path()?);
    cmd.args(["--config", "/dev/null", "--run-dir"])
        .arg(&dir)
        .arg("--state-dir")
        .arg(&dir)
        .args([
            "--watchdog",
            "none",
            "--io-timeout",
            &io_timeout_s.to_string(),
        ])
        .args(["--log", "warn", "--kill-grace", "2", "--sigkill-max", "2"]);
    if let Some(ls) = lockspace {
        cmd.arg("--lockspace").arg(ls);
    }
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| format!("tenured: {e}"))?;
    Ok(Daemon { child, dir })
}

/// Waits (60 s at most) until the tenured at `sock` has joined its first lockspace.
pub(crate) fn wait_joined(sock: &Path) -> Result<(), String> {
    let t0 = Instant::now();
    while !first_joined(sock) {
        if t0.elapsed() > Duration::from_secs(60) {
            return Err("tenured did not join within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn start(opts: &DaemonBenchOptions) -> Result<Daemon, String> {
    let dir = run_base().join(format!("tenure-bench-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(err)?;
    let mut cmd = Command::new(tenured_path()?);
    cmd.args(["--config", "/dev/null"])
        .arg("--run-dir")
        .arg(&dir)
        .arg("--state-dir")
        .arg(&dir)
        .args(["--watchdog", "none", "--io-timeout"])
        .arg(opts.io_timeout_s.to_string())
        .args(["--kill-grace", "2", "--sigkill-max", "2", "--log", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if opts.sanlock_protocol {
        // bench.py formats, joins and leaves by itself through the sanlock socket.
        cmd.arg("--sanlock-compat")
            .arg("--sanlock-run-dir")
            .arg(dir.join("sl"));
    } else {
        cmd.arg("--lockspace")
            .arg(format!("BENCH:1:{}:0", opts.device.display()));
    }
    let child = cmd.spawn().map_err(|e| format!("starting tenured: {e}"))?;
    let d = Daemon { child, dir };
    let t0 = Instant::now();
    loop {
        let ready = if opts.sanlock_protocol {
            d.dir.join("sl/sanlock.sock").exists()
        } else {
            first_joined(&d.dir.join("tenured.sock"))
        };
        if ready {
            return Ok(d);
        }
        if t0.elapsed() > Duration::from_secs(60) {
            return Err("tenured did not get ready within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn acquire(opts: &DaemonBenchOptions, i: usize) -> Request {
    Request::Acquire {
        resources: vec![spec(opts, i)],
        no_wait: true,
        lvb: false,
        pid: None,
        persistent: false,
        adopt_orphan: false,
    }
}

fn release(i: usize) -> Request {
    Request::Release {
        resources: vec![format!("BENCH:r{i}")],
        all: false,
        pid: None,
        lvb_hex: None,
    }
}

fn spec(opts: &DaemonBenchOptions, i: usize) -> String {
    format!(
        "BENCH:r{i}:{}:{}",
        opts.device.display(),
        (i as u64 + 1) * ALIGN
    )
}

/// Runs the scenarios.
pub fn run(opts: &DaemonBenchOptions) -> Result<Vec<Measurement>, String> {
    if opts.sanlock_protocol {
        let d = start(opts)?;
        let mut rows = bench_py_rows(opts, &d.dir.join("sl"), "tenure")?;
        drop(d);
        if let Some(rundir) = &opts.sanlock_rundir {
            rows.extend(bench_py_rows(opts, rundir, "sanlock")?);
        }
        return Ok(rows);
    }
    let ls = LockspaceSpec::parse(&format!("BENCH:0:{}:0", opts.device.display())).map_err(err)?;
    let force = FormatOptions {
        force: true,
        ..Default::default()
    };
    format_lockspace(&ls, force, u64::from(opts.io_timeout_s)).map_err(err)?;
    for i in 0..opts.leases {
        let r = ResourceSpec::parse(&spec(opts, i)).map_err(err)?;
        format_resource(&r, force, Some(opts.num_hosts)).map_err(err)?;
    }
    let d = start(opts)?;
    let sock = d.dir.join("tenured.sock");
    let mut c = Client::connect(&sock, Some("bench")).map_err(err)?;
    // Warm-up: the daemon opens the device and learns each area's geometry on first use.
    for i in 0..opts.leases {
        c.call(&acquire(opts, i)).map_err(err)?;
        c.call(&release(i)).map_err(err)?;
    }
    let (mut acq, mut rel) = (Vec::new(), Vec::new());
    for _ in 0..opts.rounds {
        for i in 0..opts.leases {
            let t0 = Instant::now();
            c.call(&acquire(opts, i)).map_err(err)?;
            acq.push(t0.elapsed());
        }
        for i in 0..opts.leases {
            let t0 = Instant::now();
            c.call(&release(i)).map_err(err)?;
            rel.push(t0.elapsed());
        }
    }
    // Many clients at once: `concurrency` connections, each acquiring its share of the
    // leases one call at a time (every call timed), then, once all hold theirs, each
    // releasing them one by one.
    let start = std::sync::Barrier::new(opts.concurrency + 1);
    let acquired = std::sync::Barrier::new(opts.concurrency + 1);
    let released = std::sync::Barrier::new(opts.concurrency + 1);
    type Times = (Vec<Duration>, Vec<Duration>);
    let (results, acquire_wall, release_wall) = std::thread::scope(|s| {
        let hs: Vec<_> = (0..opts.concurrency)
            .map(|k| {
                let sock = sock.clone();
                let (start, acquired, released) = (&start, &acquired, &released);
                s.spawn(move || -> Result<Times, String> {
                    let mut c = Client::connect(&sock, Some("bench")).map_err(err);
                    let mine: Vec<usize> = (k..opts.leases).step_by(opts.concurrency).collect();
                    let (mut a, mut r) = (Vec::new(), Vec::new());
                    start.wait();
                    let mut outcome = Ok(());
                    if let Ok(c) = c.as_mut() {
                        for &i in &mine {
                            let t0 = Instant::now();
                            if let Err(e) = c.call(&acquire(opts, i)) {
                                outcome = Err(err(e));
                                break;
                            }
                            a.push(t0.elapsed());
                        }
                    }
                    // Every client reaches both barriers, even one that failed.
                    acquired.wait();
                    if let (Ok(c), Ok(())) = (c.as_mut(), &outcome) {
                        for &i in &mine {
                            let t0 = Instant::now();
                            if let Err(e) = c.call(&release(i)) {
                                outcome = Err(err(e));
                                break;
                            }
                            r.push(t0.elapsed());
                        }
                    }
                    released.wait();
                    c?;
                    outcome.map(|()| (a, r))
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        acquired.wait();
        let acquire_wall = t0.elapsed();
        let t1 = Instant::now();
        released.wait();
        let release_wall = t1.elapsed();
        let results: Vec<Result<Times, String>> = hs
            .into_iter()
            .map(|h| h.join().map_err(|_| "client panicked".to_string())?)
            .collect();
        (results, acquire_wall, release_wall)
    });
    let (mut cacq, mut crel) = (Vec::new(), Vec::new());
    for r in results {
        let (a, rl) = r?;
        cacq.extend(a);
        crel.extend(rl);
    }
    leave(&sock, d)?;
    let lat = |scenario: &str, mut s: Vec<Duration>| Measurement {
        system: "tenure".into(),
        scenario: scenario.into(),
        n: s.len(),
        percentiles_us: Some(percentiles_us(&mut s)),
        ops_per_s: None,
    };
    let n = opts.num_hosts;
    let c = opts.concurrency;
    let rate = |scenario: String, wall: Duration| Measurement {
        system: "tenure".into(),
        scenario,
        n: opts.leases,
        percentiles_us: None,
        ops_per_s: Some(opts.leases as f64 / wall.as_secs_f64()),
    };
    let mut rows = vec![
        lat(
            &format!("daemon acquire free lease, 512/1M, num_hosts {n}"),
            acq,
        ),
        lat("daemon release", rel),
        lat(&format!("daemon acquire, {c} clients at once"), cacq),
        lat(&format!("daemon release, {c} clients at once"), crel),
        rate(format!("daemon acquires/s, {c} clients"), acquire_wall),
        rate(format!("daemon releases/s, {c} clients"), release_wall),
    ];
    if let Some(rundir) = &opts.sanlock_rundir {
        rows.extend(bench_py_rows(opts, rundir, "sanlock")?);
    }
    Ok(rows)
}

/// Leaves the lockspace and lets the daemon exit cleanly.
fn leave(sock: &Path, mut d: Daemon) -> Result<(), String> {
    let mut c = Client::connect(sock, Some("bench")).map_err(err)?;
    c.call(&Request::LockspaceRemove {
        name: "BENCH".into(),
        wait: true,
    })
    .map_err(err)?;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let t0 = Instant::now();
    while d.child.try_wait().map_err(err)?.is_none() {
        if t0.elapsed() > Duration::from_secs(10) {
            return Err("tenured did not exit after SIGTERM".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// bench.py (python3-sanlock) against the daemon whose sanlock socket is in `rundir`.
fn bench_py_rows(
    opts: &DaemonBenchOptions,
    rundir: &Path,
    system: &str,
) -> Result<Vec<Measurement>, String> {
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
        system,
        &format!("daemon, {label}"),
        opts.leases,
        opts.concurrency,
        true,
    ))
}
