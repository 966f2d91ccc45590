//! `tenure-bench`: macro benchmarks. Thin glue over the `tenure_bench` library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tenure_bench::io::{describe, run, AutoDevice, IoBenchOptions};
use tenure_bench::join::{self, JoinBenchOptions};
use tenure_bench::report::table;
use tenure_bench::report::Measurement;

/// tenure benchmarks: human table by default, one JSON object per line with --json.
#[derive(Debug, Parser)]
#[command(name = "tenure-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// I/O engine against a raw io_uring loop on the same device (overwrites its first MiB).
    Io {
        /// Block device or file, or `auto` for a loop device created (and removed) here.
        #[arg(long)]
        device: String,
        /// I/O size: 512 or 4096 (with `auto`, also the loop device's sector size).
        #[arg(long, default_value_t = 512)]
        sector_size: u32,
        /// Chains measured per latency scenario.
        #[arg(long, default_value_t = 2000)]
        iterations: usize,
        /// Chains in flight in the throughput scenario.
        #[arg(long, default_value_t = 64)]
        parallel: usize,
        /// Chains completed in the throughput scenario.
        #[arg(long, default_value_t = 4000)]
        parallel_total: usize,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Acquire/release of free exclusive leases, throughput, and the device's chain bound.
    Acquire {
        /// 512-byte-sector block device or file (overwritten), or `auto`.
        #[arg(long)]
        device: String,
        /// num_hosts of every resource.
        #[arg(long, default_value_t = 2000)]
        num_hosts: u64,
        /// Leases, 1 to 1000 (`auto` makes a device of 2 × leases + 1 areas).
        #[arg(long, default_value_t = 30)]
        leases: usize,
        /// Acquirers at once in the throughput run.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Sector size of `auto`'s loop device and of every area: 512 (1 MiB areas) or 4096
        /// (8 MiB areas); a given device must have it.
        #[arg(long, default_value_t = 512)]
        sector_size: u32,
        /// io_timeout T in seconds.
        #[arg(long, default_value_t = 1)]
        io_timeout: u16,
        /// SANLOCK_RUN_DIR of a running sanlock daemon to measure side by side (bench.py).
        #[arg(long, value_name = "RUNDIR")]
        compare_sanlock: Option<PathBuf>,
        /// Path of sanlock-anchor's bench.py.
        #[arg(long, default_value = "../shared/tools/sanlock-anchor/bench.py")]
        sanlock_bench: PathBuf,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Acquire/release through the daemon's socket: tenured started here on the device, and a
    /// running sanlock daemon through python3-sanlock (bench.py) on the same device afterwards.
    Daemon {
        /// 512-byte-sector block device or file (overwritten), or `auto`.
        #[arg(long)]
        device: String,
        /// Leases, 1 to 1000 (`auto` makes a device with room for them).
        #[arg(long, default_value_t = 30)]
        leases: usize,
        /// num_hosts of every resource (sanlock: bench.py for 2000, a script of its shape
        /// otherwise).
        #[arg(long, default_value_t = 2000)]
        num_hosts: u64,
        /// Clients at once in the many-clients run.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Acquire+release rounds over all leases in the latency run.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// io_timeout T in seconds.
        #[arg(long, default_value_t = 1)]
        io_timeout: u16,
        /// SANLOCK_RUN_DIR of a running sanlock daemon to measure side by side (bench.py).
        #[arg(long, value_name = "RUNDIR")]
        compare_sanlock: Option<PathBuf>,
        /// Path of sanlock-anchor's bench.py.
        #[arg(long, default_value = "../shared/tools/sanlock-anchor/bench.py")]
        sanlock_bench: PathBuf,
        /// native (the Rust client) or sanlock (bench.py through tenured's sanlock socket: the
        /// same python3-sanlock workload for both daemons).
        #[arg(long, default_value = "native")]
        protocol: String,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Planned upgrades of a tenured holding leases: time until the new process answers,
    /// the longest gap in service, and the renewal intervals across them.
    Upgrade {
        /// 512-byte-sector block device or file (overwritten) of at least leases + 1 MiB, or
        /// `auto` (a loop device of that size made here).
        #[arg(long)]
        device: String,
        /// Leases held through the upgrades.
        #[arg(long, default_value_t = 100)]
        leases: usize,
        /// Upgrades.
        #[arg(long, default_value_t = 20)]
        upgrades: usize,
        /// io_timeout T in seconds.
        #[arg(long, default_value_t = 1)]
        io_timeout: u16,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// How cost grows with the work, tenure and sanlock in one run (curve `lockspaces`: N
    /// lockspaces joined at once, then renewed: join times, CPU per renewal, renewal latency,
    /// resident memory).
    Scale {
        /// Which curve: `lockspaces` (N joined at once, then renewed), `held` (memory and
        /// acquire cost against N leases held, N up to 16384) or `hosts` (one 2000-host
        /// lockspace, 1999 hosts played by a load generator; the window is `--renew-s`).
        #[arg(long, default_value = "lockspaces")]
        curve: String,
        /// 512-byte-sector device or file (overwritten) of 2 × max(N) + 2 MiB, or `auto`.
        #[arg(long, default_value = "auto")]
        device: String,
        /// The N, comma-separated.
        #[arg(long, default_value = "1,10,40,100", value_delimiter = ',')]
        counts: Vec<usize>,
        /// io_timeout T in seconds (both daemons).
        #[arg(long, default_value_t = 1)]
        io_timeout: u16,
        /// Seconds of renewals measured after the joins.
        #[arg(long, default_value_t = 60)]
        renew_s: u64,
        /// sanlock-anchor's start.sh (sanlock is started with it and measured too).
        #[arg(long, default_value = "../shared/tools/sanlock-anchor/start.sh")]
        sanlock_start: PathBuf,
        /// tenure only.
        #[arg(long)]
        no_sanlock: bool,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Join time on a free slot and after an unclean stop (tenure, and a running sanlock).
    Join {
        /// 512-byte-sector block device or file (overwritten), or `auto`.
        #[arg(long)]
        device: String,
        /// io_timeout T in seconds.
        #[arg(long, default_value_t = 1)]
        io_timeout: u16,
        /// Joins per scenario.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// SANLOCK_RUN_DIR of a running sanlock daemon to measure side by side.
        #[arg(long, value_name = "RUNDIR")]
        compare_sanlock: Option<PathBuf>,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Size of `--device auto` where the bench needs no more: 64 MiB.
const AUTO_BYTES: u64 = 64 << 20;

/// The device to use: a loop device made here for `auto` (removed when the guard drops), or
/// the path given ([`device_or_auto`]). Prints why and returns the exit code on failure.
fn auto_or(
    device: &str,
    sector_size: u32,
    bytes: u64,
) -> Result<(Option<AutoDevice>, PathBuf), ExitCode> {
    device_or_auto(device, sector_size, bytes).map_err(|e| {
        eprintln!("tenure-bench: {e}");
        ExitCode::from(1)
    })
}

fn emit(rows: Result<Vec<Measurement>, String>, json: bool, path: &std::path::Path) -> ExitCode {
    match rows {
        Ok(rows) => {
            if json {
                rows.iter().for_each(|r| println!("{}", r.json()));
            } else {
                println!("device: {}", describe(path));
                print!("{}", table(&rows));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tenure-bench: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Io {
            device,
            sector_size,
            iterations,
            parallel,
            parallel_total,
            json,
        } => {
            if ![512, 4096].contains(&sector_size) {
                eprintln!("tenure-bench: --sector-size must be 512 or 4096");
                return ExitCode::from(2);
            }
            let (_auto, path) = match auto_or(&device, sector_size, AUTO_BYTES) {
                Ok(x) => x,
                Err(code) => return code,
            };
            let opts = IoBenchOptions {
                device: path.clone(),
                sector_size,
                iterations: iterations.max(2),
                parallel,
                parallel_total: parallel_total.max(1),
            };
            emit(run(&opts), json, &path)
        }
        Cmd::Acquire {
            device,
            num_hosts,
            leases,
            concurrency,
            sector_size,
            io_timeout,
            compare_sanlock,
            sanlock_bench,
            json,
        } => {
            let geometry = match sector_size {
                512 => tenure_format::Geometry::LEGACY_512,
                4096 => tenure_format::Geometry::LEGACY_4096,
                other => {
                    eprintln!("tenure-bench: --sector-size {other}: 512 or 4096");
                    return ExitCode::from(2);
                }
            };
            if !(1..=1000).contains(&leases) {
                eprintln!("tenure-bench: --leases {leases}: 1 to 1000");
                return ExitCode::from(2);
            }
            let bytes = (2 * leases as u64 + 1) * geometry.area_bytes();
            let (_auto, path) = match auto_or(&device, sector_size, bytes) {
                Ok(x) => x,
                Err(code) => return code,
            };
            let opts = tenure_bench::acquire::AcquireBenchOptions {
                device: path.clone(),
                geometry,
                num_hosts: num_hosts.clamp(1, 2000),
                leases,
                concurrency: concurrency.max(1),
                io_timeout_s: io_timeout.max(1),
                sanlock_rundir: compare_sanlock,
                sanlock_bench,
            };
            emit(tenure_bench::acquire::run(&opts), json, &path)
        }
        Cmd::Daemon {
            device,
            leases,
            num_hosts,
            concurrency,
            rounds,
            io_timeout,
            compare_sanlock,
            sanlock_bench,
            protocol,
            json,
        } => {
            if !["native", "sanlock"].contains(&protocol.as_str()) {
                eprintln!("tenure-bench: --protocol must be native or sanlock");
                return ExitCode::from(2);
            }
            let leases = leases.clamp(1, 1000);
            let (_auto, path) = match auto_or(&device, 512, (leases as u64 + 2) << 20) {
                Ok(x) => x,
                Err(code) => return code,
            };
            let opts = tenure_bench::daemon::DaemonBenchOptions {
                device: path.clone(),
                leases,
                num_hosts: num_hosts.clamp(1, 2000),
                concurrency: concurrency.max(1),
                rounds: rounds.max(1),
                io_timeout_s: io_timeout.max(1),
                sanlock_rundir: compare_sanlock,
                sanlock_bench,
                sanlock_protocol: protocol == "sanlock",
            };
            emit(tenure_bench::daemon::run(&opts), json, &path)
        }
        Cmd::Upgrade {
            device,
            leases,
            upgrades,
            io_timeout,
            json,
        } => {
            let leases = leases.clamp(1, 1000);
            let (_auto, path) = match auto_or(&device, 512, (leases as u64 + 2) << 20) {
                Ok(x) => x,
                Err(code) => return code,
            };
            let opts = tenure_bench::upgrade::UpgradeBenchOptions {
                device: path.clone(),
                leases,
                upgrades: upgrades.max(1),
                io_timeout_s: io_timeout.max(1),
            };
            emit(tenure_bench::upgrade::run(&opts), json, &path)
        }
        Cmd::Scale {
            curve,
            device,
            counts,
            io_timeout,
            renew_s,
            sanlock_start,
            no_sanlock,
            json,
        } => {
            if !["lockspaces", "held", "hosts"].contains(&curve.as_str()) {
                eprintln!("tenure-bench: unknown curve {curve:?} (lockspaces, held, hosts)");
                return ExitCode::from(2);
            }
            let counts: Vec<usize> = counts.into_iter().filter(|&n| n > 0).collect();
            let max = counts.iter().copied().max().unwrap_or(1) as u64;
            let (_auto, path) = match auto_or(&device, 512, (2 * max + 2) << 20) {
                Ok(x) => x,
                Err(code) => return code,
            };
            if !json {
                println!("# {}", describe(&path));
            }
            let print = |f: &tenure_bench::scale::Figures| {
                if json {
                    println!("{}", f.json());
                } else {
                    println!("{}", f.line());
                }
            };
            let sanlock_start = (!no_sanlock).then_some(sanlock_start);
            let io_timeout_s = io_timeout.max(1);
            let rows = match curve.as_str() {
                "hosts" => tenure_bench::hosts::hosts(
                    &tenure_bench::hosts::HostsOptions {
                        device: path.clone(),
                        io_timeout_s,
                        window_s: renew_s,
                        sanlock_start,
                    },
                    print,
                ),
                "held" => tenure_bench::held::held(
                    &tenure_bench::held::HeldOptions {
                        device: path.clone(),
                        counts,
                        io_timeout_s,
                        sanlock_start,
                    },
                    print,
                ),
                _ => tenure_bench::scale::lockspaces(
                    &tenure_bench::scale::ScaleOptions {
                        device: path.clone(),
                        counts,
                        io_timeout_s,
                        renew_s: renew_s.max(1),
                        sanlock_start,
                    },
                    print,
                ),
            };
            match rows {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tenure-bench scale: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Join {
            device,
            io_timeout,
            runs,
            compare_sanlock,
            json,
        } => {
            let (_auto, path) = match auto_or(&device, 512, AUTO_BYTES) {
                Ok(x) => x,
                Err(code) => return code,
            };
            let opts = JoinBenchOptions {
                device: path.clone(),
                io_timeout_s: io_timeout.max(1),
                runs: runs.max(1),
                sanlock_rundir: compare_sanlock,
            };
            emit(join::run(&opts), json, &path)
        }
    }
}

/// `device`, or with `auto` a loop device of `sector_size`-byte sectors and `bytes` made here
/// (removed when the returned guard drops).
fn device_or_auto(
    device: &str,
    sector_size: u32,
    bytes: u64,
) -> Result<(Option<AutoDevice>, PathBuf), String> {
    if device == "auto" {
        let a = AutoDevice::create_sized(sector_size, bytes)?;
        let p = a.path.clone();
        Ok((Some(a), p))
    } else {
        Ok((None, PathBuf::from(device)))
    }
}
