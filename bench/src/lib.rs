//! tenure-bench: criterion micro-benchmarks (`cargo bench -p tenure-bench`) and the
//! `tenure-bench` command (macro benchmarks on real devices, against a raw io_uring loop and,
//! in later issues, against sanlock).

pub mod acquire;
pub mod bench_py;
pub mod daemon;
pub mod held;
pub mod hosts;
pub mod io;
pub mod join;
pub mod report;
pub mod scale;
pub mod upgrade;
