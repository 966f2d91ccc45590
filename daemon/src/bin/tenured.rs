//! `tenured`: the host daemon. Not implemented yet; this placeholder says so and holds nothing.

fn main() -> std::process::ExitCode {
    println!(
        "tenured {}: the lease daemon is not implemented yet.\n\
         \n\
         When it is, `tenured` with no configuration will start on an embedded default: a\n\
         file-backed lockspace in a data directory (formatted if absent), host id 1, an\n\
         emulated watchdog and a client socket in that directory, and will serve the\n\
         `tenure` lockspace/resource/status commands.\n\
         \n\
         This process joins no lockspace and holds no lease. What works today, without a\n\
         daemon: `tenure lockspace init`, `tenure resource init`, `tenure dump` (see README.md).",
        env!("CARGO_PKG_VERSION")
    );
    std::process::ExitCode::SUCCESS
}
