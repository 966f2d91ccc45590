//! `tenure-bench`: macro benchmarks. Thin glue over the `tenure_bench` library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tenure_bench::io::{describe, run, AutoDevice, IoBenchOptions};
use tenure_bench::report::table;

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
}

fn main() -> ExitCode {
    let Cmd::Io {
        device,
        sector_size,
        iterations,
        parallel,
        parallel_total,
        json,
    } = Cli::parse().command;
    if ![512, 4096].contains(&sector_size) {
        eprintln!("tenure-bench: --sector-size must be 512 or 4096");
        return ExitCode::from(2);
    }
    let auto = if device == "auto" {
        match AutoDevice::create(sector_size) {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("tenure-bench: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        None
    };
    let path = auto
        .as_ref()
        .map_or_else(|| PathBuf::from(&device), |a| a.path.clone());
    let opts = IoBenchOptions {
        device: path.clone(),
        sector_size,
        iterations: iterations.max(2),
        parallel,
        parallel_total: parallel_total.max(1),
    };
    match run(&opts) {
        Ok(rows) => {
            if json {
                rows.iter().for_each(|r| println!("{}", r.json()));
            } else {
                println!("device: {}", describe(&path));
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
