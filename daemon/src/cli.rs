//! The `tenure` command line: argument parsing and dispatch. Logic lives in tenure-core; the
//! human rendering in [`crate::render`].
//!
//! Exit codes: 0 success; 1 the operation failed (message on stderr); 2 usage error (clap);
//! 3 `dump` finished but some records or areas could not be decoded (listed in the output).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tenure_core::direct::{self, BackendKind, FormatOptions};
use tenure_format::{AlignSize, DumpTarget, LockspaceSpec, ResourceMode, ResourceSpec, SectorSize};

use crate::render;

/// tenure: shared-storage leases, compatible with sanlock's on-disk format.
#[derive(Debug, Parser)]
#[command(name = "tenure", version, about, long_about = None)]
pub struct Cli {
    /// I/O backend: auto (io_uring, or the pread/pwrite fallback when io_uring is unavailable),
    /// io_uring, or sync.
    #[arg(long, global = true, value_name = "BACKEND", default_value = "auto", value_parser = parse_backend, env = "TENURE_IO_BACKEND")]
    io_backend: BackendKind,
    /// tenured's socket (default: /run/tenure/tenured.sock, or tenured-data/tenured.sock in
    /// this directory when only that one exists — the embedded default).
    #[arg(long, global = true, value_name = "PATH", env = "TENURE_SOCKET")]
    socket: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Lockspaces (sets of hosts sharing a delta-lease area).
    #[command(subcommand)]
    Lockspace(LockspaceCmd),
    /// Resources (paxos leases).
    #[command(subcommand)]
    Resource(ResourceCmd),
    /// Lock value blocks of held leases (through tenured).
    #[command(subcommand)]
    Lvb(LvbCmd),
    /// Resource index (sanlock's rindex) through tenured: format, lookup, add, remove, and —
    /// under the index's private lease, in a joined lockspace — create, delete, rebuild.
    Rindex {
        /// What to do.
        #[arg(value_enum)]
        action: crate::proto::RindexAction,
        /// The index: LOCKSPACE:PATH:OFFSET (offsets accept an M suffix).
        rindex: String,
        /// Resource name (lookup, add, create, delete).
        #[arg(long)]
        name: Option<String>,
        /// Lease offset in bytes (lookup, add, remove).
        #[arg(long)]
        offset: Option<u64>,
        /// num_hosts of a created lease (default: the geometry's maximum).
        #[arg(long)]
        num_hosts: Option<u64>,
        /// Entries of a formatted index (default 4096).
        #[arg(long)]
        max_resources: Option<u32>,
        /// Sector size for format (default: the device's).
        #[arg(long)]
        sector_size: Option<u32>,
        /// Align size in MiB for format: 1, 2, 4 or 8.
        #[arg(long)]
        align_mb: Option<u32>,
        /// Create / delete / rebuild without the private lease (no lockspace needed; you
        /// serialise).
        #[arg(long)]
        no_lockspace: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Watchdogs: probe devices, test one, or run the emulated watchdog.
    #[command(subcommand)]
    Watchdog(crate::watchdog_cmd::WatchdogCmd),
    /// The daemon itself.
    #[command(subcommand)]
    Daemon(DaemonCmd),
    /// Write the man pages and shell completions of `tenure` into DIR (packaging).
    #[command(name = "__assets", hide = true)]
    Assets {
        /// Output directory.
        dir: std::path::PathBuf,
    },
    /// What tenured is doing: lockspaces with renewals and deadlines, leases with holders,
    /// the watchdog.
    Status {
        /// Print the daemon's reply as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The daemon's metrics in Prometheus' text exposition format (what `[metrics] listen`
    /// serves over HTTP; docs/operations.md "Metrics").
    Metrics,
    /// Run a command while holding leases: acquire, exec the command (same pid, the lease
    /// connection stays open in it), leases released when it exits; exit code of the command.
    Run {
        /// Resource to hold (LS:NAME:PATH:OFFSET[:LVER|:SH]); repeat for several.
        #[arg(long = "lease", value_name = "RES", required = true)]
        leases: Vec<String>,
        /// Fail at once when an owner is not yet dead instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        orphans: OrphanArgs,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// The whole cluster from the storage, no daemon needed: every host id of the lockspace
    /// (name, generation, io_timeout, live/fail/dead from two reads a renewal apart) and every
    /// lease of its resources on the device (owner, mode, lver, shared holders, requests).
    Cluster {
        /// The lockspace area: PATH[:OFFSET] (as `dump` takes it).
        target: String,
        /// Seconds between the two reads (default: 2T of its slowest host + 1).
        #[arg(long, value_name = "S")]
        wait: Option<u64>,
        /// The W assumed for every host (dead = 8T + W without a renewal).
        #[arg(long, value_name = "S", default_value_t = 60)]
        fire_timeout: u32,
        /// Offset of the lockspace's resource index on the same device (M suffix accepted):
        /// only the areas it lists are read, instead of every area of the device.
        #[arg(long, value_name = "OFFSET", value_parser = parse_offset_arg)]
        rindex: Option<u64>,
        /// One JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Do the timeouts of every layer agree? tenured.toml, the watchdog device, multipath,
    /// NFS mount options of lease files, libvirt's qemu-sanlock.conf and the other hosts'
    /// io_timeout; findings with severity and fix; exit code 0 ok, 1 warning, 2 error.
    Doctor {
        /// tenured's configuration.
        #[arg(long, value_name = "PATH", default_value = crate::config::CONFIG_PATH_DEFAULT)]
        config: std::path::PathBuf,
        /// multipath's configuration (default: `multipath -t`, else /etc/multipath.conf).
        #[arg(long, value_name = "PATH")]
        multipath_conf: Option<std::path::PathBuf>,
        /// The mount table.
        #[arg(long, value_name = "PATH", default_value = "/proc/self/mountinfo")]
        mountinfo: std::path::PathBuf,
        /// libvirt's sanlock plugin configuration.
        #[arg(
            long,
            value_name = "PATH",
            default_value = "/etc/libvirt/qemu-sanlock.conf"
        )]
        qemu_sanlock_conf: std::path::PathBuf,
        /// Do not read the lockspace areas (the other hosts' io_timeout).
        #[arg(long)]
        no_storage: bool,
        /// JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Why was this host reset? The fence records tenured wrote before losing a lockspace.
    WhyReset {
        /// tenured's state directory.
        #[arg(long, value_name = "DIR", default_value = "/var/lib/tenure")]
        state_dir: std::path::PathBuf,
        /// Print the records as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Read lease areas directly from storage and show every record (sanlock's too).
    Dump {
        /// PATH[:OFFSET[:SIZE]]; OFFSET and SIZE in bytes or with an M suffix (MiB).
        target: String,
        /// One JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
}

/// `tenure daemon ...`.
#[derive(Debug, Subcommand)]
pub enum DaemonCmd {
    /// Replace the running tenured by a new binary without losing a lease, a client
    /// connection or a watchdog keepalive: it hands everything over and exits once the new
    /// one took over (docs/operations.md "Upgrading tenured"). If the new one fails, the old
    /// one goes on serving and this says why.
    Upgrade {
        /// The new binary (default: the path the running tenured was started from).
        #[arg(long, value_name = "PATH")]
        binary: Option<std::path::PathBuf>,
        /// Print the reply as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Persistent leases and orphans (sanlock's RES_PERSISTENT and ACQUIRE_ORPHAN).
#[derive(Debug, clap::Args)]
struct OrphanArgs {
    /// Keep the leases on this host as orphans when their holder exits (until adopted
    /// with --adopt-orphan or released with `resource release --orphan`).
    #[arg(long)]
    persistent: bool,
    /// Adopt this host's orphan of a resource, in the mode asked for (without it, a
    /// resource with an orphan is refused); a resource without one is acquired.
    #[arg(long)]
    adopt_orphan: bool,
}

#[derive(Debug, Subcommand)]
enum LockspaceCmd {
    /// Format a lockspace area (all host ids free). Direct: no daemon involved.
    Init {
        /// NAME:0:PATH:OFFSET (`\:` escapes a colon; OFFSET in bytes or with an M suffix).
        spec: String,
        #[command(flatten)]
        geometry: GeometryArgs,
        /// io_timeout recorded in the free slots, in seconds.
        #[arg(long, value_name = "S", default_value_t = u64::from(direct::IO_TIMEOUT_DEFAULT_S))]
        io_timeout: u64,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Join a lockspace through tenured (shows progress until joined).
    Join {
        /// NAME:HOST_ID:PATH:OFFSET
        spec: String,
        /// This lockspace's io_timeout T in seconds (default: tenured's io_timeout_s).
        #[arg(long)]
        io_timeout: Option<u64>,
        /// Return at once instead of following the join.
        #[arg(long)]
        no_wait: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Leave a lockspace (release our host id); refused while leases are held in it.
    Leave {
        /// Lockspace name.
        name: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mark a joined lockspace used (or not): while used it cannot be left, and if it is
    /// lost the watchdog resets the host even when no process holds a lease in it (sanlock's
    /// `set_config -u`). `--used-by-orphans`: the same while orphan leases exist (`-O`).
    Config {
        /// Lockspace name.
        name: String,
        /// Mark used (true) or not (false).
        #[arg(long)]
        used: Option<bool>,
        /// Mark used while orphan leases exist (true) or not (false).
        #[arg(long)]
        used_by_orphans: Option<bool>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lockspaces tenured holds, with join progress, renewals and deadlines.
    List {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Hosts of a lockspace as this host sees them (live, fail, dead, ...).
    Hosts {
        /// Lockspace name.
        name: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ResourceCmd {
    /// Acquire resources for a running process (root): the leases live until it exits or
    /// they are released. All or nothing.
    Acquire {
        /// LS:NAME:PATH:OFFSET[:LVER|:SH], one or more.
        #[arg(required = true)]
        resources: Vec<String>,
        /// The holder pid.
        #[arg(short, long)]
        pid: i32,
        /// Fail at once when an owner is not yet dead instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
        /// Read the lock value block (see `tenure lvb get`).
        #[arg(long)]
        lvb: bool,
        #[command(flatten)]
        orphans: OrphanArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Release resources (LS:NAME) of a process, or all of them with --all; or with
    /// --orphan the orphans of a lockspace.
    Release {
        /// LS:NAME of each lease.
        resources: Vec<String>,
        /// Release every lease of the pid.
        #[arg(long, conflicts_with = "resources")]
        all: bool,
        /// The holder pid.
        #[arg(short, long, required_unless_present = "orphan")]
        pid: Option<i32>,
        /// Release the orphans of lockspace LS (all), or the one of LS:NAME.
        #[arg(long, value_name = "LS[:NAME]", conflicts_with_all = ["resources", "all", "pid"])]
        orphan: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Orphans: persistent leases whose holder went, still held by this host (all
    /// lockspaces, or one).
    Orphans {
        /// Only this lockspace's.
        lockspace: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Convert a process's lease (LS:NAME) from exclusive to shared, or with --exclusive from
    /// shared to exclusive (refused with SharedBusy while another live host holds it shared;
    /// the lease stays shared then).
    Convert {
        /// LS:NAME of the lease.
        resource: String,
        /// The holder pid.
        #[arg(short, long)]
        pid: i32,
        /// Convert shared → exclusive (default: exclusive → shared).
        #[arg(long)]
        exclusive: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the host holding a resource to give it up (its holder gets SIGTERM or its kill
    /// path; SIGKILL with --force). Our lockspace must be joined.
    Request {
        /// LS:NAME:PATH:OFFSET
        resource: String,
        /// SIGKILL the holder instead of the graceful SIGTERM / kill path.
        #[arg(long)]
        force: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Leases of a process, with their state strings (LS:NAME:PATH:OFFSET:LVER).
    Inquire {
        /// The holder pid.
        #[arg(short, long)]
        pid: i32,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Format a resource (paxos lease) area on each of its disks. Direct: no daemon involved.
    Init {
        /// LS:NAME:PATH:OFFSET[:PATH:OFFSET...]
        spec: String,
        #[command(flatten)]
        geometry: GeometryArgs,
        /// Number of hosts that take part in ballots (default: the geometry's maximum).
        #[arg(long, value_name = "N")]
        num_hosts: Option<u64>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Show who holds a resource (exclusive owner, shared holders, lver), read directly from
    /// its area without acquiring it.
    Owners {
        /// LS:NAME:PATH:OFFSET[:PATH:OFFSET...]
        spec: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum LvbCmd {
    /// The LVB read when the lease was acquired (it must have been acquired with --lvb).
    Get {
        /// LS:NAME of the lease.
        resource: String,
        /// The holder pid.
        #[arg(short, long)]
        pid: i32,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sets the LVB written when the lease is released.
    Set {
        /// LS:NAME of the lease.
        resource: String,
        /// The value in hex (at most one sector).
        hex: String,
        /// The holder pid.
        #[arg(short, long)]
        pid: i32,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct GeometryArgs {
    /// Sector size: 512 or 4096. Probed from block devices (a mismatch is an error); files
    /// default to 512 as in sanlock.
    #[arg(long, value_name = "BYTES", value_parser = parse_sector_size)]
    sector_size: Option<SectorSize>,
    /// Area size: 1M, 2M, 4M or 8M (default 1M for 512-byte sectors, 8M for 4096).
    #[arg(long, value_name = "SIZE", value_parser = parse_align)]
    align: Option<AlignSize>,
}

#[derive(Debug, Args)]
struct CommonArgs {
    /// Overwrite a valid lockspace, resource or resource index at that place.
    #[arg(long)]
    force: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

impl GeometryArgs {
    fn options(&self, force: bool, backend: BackendKind) -> FormatOptions {
        FormatOptions {
            backend,
            sector_size: self.sector_size,
            align: self.align,
            force,
        }
    }
}

fn parse_backend(s: &str) -> Result<BackendKind, String> {
    match s {
        "auto" => Ok(BackendKind::Auto),
        "io_uring" | "uring" => Ok(BackendKind::Uring),
        "sync" => Ok(BackendKind::Sync),
        other => Err(format!(
            "{other:?} is not an I/O backend (auto, io_uring, sync)"
        )),
    }
}

fn parse_offset_arg(s: &str) -> Result<u64, String> {
    tenure_format::spec::parse_offset("offset", s).map_err(|e| e.to_string())
}

fn parse_sector_size(s: &str) -> Result<SectorSize, String> {
    let n: u64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    SectorSize::from_bytes(n).map_err(|e| e.to_string())
}

fn parse_align(s: &str) -> Result<AlignSize, String> {
    AlignSize::parse(s).map_err(|e| e.to_string())
}

/// Parses the process arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("tenure: {message}");
            ExitCode::from(1)
        }
    }
}

/// Says once, on stderr, that the pread/pwrite fallback ran instead of io_uring, and why.
fn warn_fallback<'a>(reasons: impl IntoIterator<Item = &'a Option<String>>) {
    if let Some(reason) = reasons.into_iter().flatten().next() {
        eprintln!(
            "tenure: io_uring is not available here ({reason}); using the pread/pwrite fallback"
        );
    }
}

fn emit(
    json: bool,
    value: &impl serde::Serialize,
    human: impl FnOnce() -> String,
) -> Result<(), String> {
    let text = if json {
        serde_json::to_string_pretty(value).map_err(|e| e.to_string())?
    } else {
        human()
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").map_err(|e| format!("writing output: {e}"))
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    use crate::daemon_cmd as d;
    let socket = || d::socket_path(cli.socket.as_deref());
    match cli.command {
        Command::Status { json } => d::status(&socket(), json),
        Command::Assets { dir } => {
            use clap::CommandFactory;
            let files = crate::assets::write(Cli::command(), "1", &dir)
                .map_err(|e| format!("writing into {}: {e}", dir.display()))?;
            for f in files {
                println!("{}", f.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Metrics => d::metrics(&socket()),
        Command::Doctor {
            config,
            multipath_conf,
            mountinfo,
            qemu_sanlock_conf,
            no_storage,
            json,
        } => {
            let cfg = crate::config::Config::load(&config).map_err(|e| e.to_string())?;
            let inputs = crate::doctor::gather(
                cfg,
                multipath_conf.as_deref(),
                &mountinfo,
                &qemu_sanlock_conf,
                !no_storage,
            );
            let findings = crate::doctor::diagnose(&inputs);
            if json {
                let v = serde_json::json!({ "findings": findings });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
                );
            } else {
                for f in &findings {
                    let sev = serde_json::to_value(f.severity)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    println!("{sev:<5} {:<12} {}", f.check, f.message);
                    if let Some(fix) = &f.fix {
                        println!("      {:<12} fix: {fix}", "");
                    }
                }
            }
            Ok(ExitCode::from(crate::doctor::exit_code(&findings)))
        }
        Command::Daemon(DaemonCmd::Upgrade { binary, json }) => {
            d::upgrade(&socket(), binary.as_deref(), json)
        }
        Command::Run {
            leases,
            no_wait,
            orphans,
            command,
        } => d::run(
            &socket(),
            &leases,
            (no_wait, orphans.persistent, orphans.adopt_orphan),
            &command,
        ),
        Command::WhyReset { state_dir, json } => d::why_reset(&state_dir, json),
        Command::Lockspace(LockspaceCmd::Join {
            spec,
            io_timeout,
            no_wait,
            json,
        }) => d::join(&socket(), &spec, io_timeout, !no_wait, json),
        Command::Lockspace(LockspaceCmd::Leave { name, json }) => d::leave(&socket(), &name, json),
        Command::Lockspace(LockspaceCmd::Config {
            name,
            used,
            used_by_orphans,
            json,
        }) => d::config(&socket(), &name, used, used_by_orphans, json),
        Command::Lockspace(LockspaceCmd::List { json }) => d::list(&socket(), json),
        Command::Lockspace(LockspaceCmd::Hosts { name, json }) => d::hosts(&socket(), &name, json),
        Command::Resource(ResourceCmd::Acquire {
            resources,
            pid,
            no_wait,
            lvb,
            orphans,
            json,
        }) => d::acquire(
            &socket(),
            &resources,
            pid,
            (no_wait, lvb, orphans.persistent, orphans.adopt_orphan),
            json,
        ),
        Command::Rindex {
            action,
            rindex,
            name,
            offset,
            num_hosts,
            max_resources,
            sector_size,
            align_mb,
            no_lockspace,
            json,
        } => d::rindex(
            &socket(),
            &crate::proto::Request::Rindex {
                rindex,
                action,
                name,
                offset,
                num_hosts,
                max_resources,
                sector_size,
                align_mb,
                no_lockspace,
            },
            json,
        ),
        Command::Lvb(LvbCmd::Get {
            resource,
            pid,
            json,
        }) => d::lvb_get(&socket(), &resource, pid, json),
        Command::Lvb(LvbCmd::Set {
            resource,
            hex,
            pid,
            json,
        }) => d::lvb_set(&socket(), &resource, &hex, pid, json),
        Command::Resource(ResourceCmd::Release {
            orphan: Some(target),
            json,
            ..
        }) => d::release_orphans(&socket(), &target, json),
        Command::Resource(ResourceCmd::Release {
            resources,
            all,
            pid,
            orphan: None,
            json,
        }) => d::release(&socket(), &resources, all, pid.unwrap_or(0), json),
        Command::Resource(ResourceCmd::Orphans { lockspace, json }) => {
            d::orphans(&socket(), lockspace.as_deref(), json)
        }
        Command::Resource(ResourceCmd::Inquire { pid, json }) => d::inquire(&socket(), pid, json),
        Command::Resource(ResourceCmd::Convert {
            resource,
            pid,
            exclusive,
            json,
        }) => d::convert(&socket(), &resource, pid, !exclusive, json),
        Command::Resource(ResourceCmd::Request {
            resource,
            force,
            json,
        }) => d::request(&socket(), &resource, force, json),
        Command::Lockspace(LockspaceCmd::Init {
            spec,
            geometry,
            io_timeout,
            common,
        }) => {
            let spec =
                LockspaceSpec::parse(&spec).map_err(|e| format!("lockspace {spec:?}: {e}"))?;
            let opts = geometry.options(common.force, cli.io_backend);
            let report =
                direct::format_lockspace(&spec, opts, io_timeout).map_err(|e| e.to_string())?;
            warn_fallback([&report.io_fallback_reason]);
            emit(common.json, &report, || {
                render::format_report(
                    "lockspace",
                    &spec.name.escaped(),
                    std::slice::from_ref(&report),
                )
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Resource(ResourceCmd::Init {
            spec,
            geometry,
            num_hosts,
            common,
        }) => {
            let spec = ResourceSpec::parse(&spec).map_err(|e| format!("resource {spec:?}: {e}"))?;
            if spec.mode != ResourceMode::Exclusive {
                return Err(format!(
                    "resource {spec}: init formats a lease; a :LVER or :SH suffix only applies to acquire"
                ));
            }
            let opts = geometry.options(common.force, cli.io_backend);
            let reports =
                direct::format_resource(&spec, opts, num_hosts).map_err(|e| e.to_string())?;
            warn_fallback(reports.iter().map(|r| &r.io_fallback_reason));
            emit(common.json, &reports, || {
                render::format_report("resource", &spec.name.escaped(), &reports)
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Resource(ResourceCmd::Owners { spec, json }) => {
            let spec = ResourceSpec::parse(&spec).map_err(|e| format!("resource {spec:?}: {e}"))?;
            let reports = direct::owners(&spec, cli.io_backend).map_err(|e| e.to_string())?;
            warn_fallback(reports.iter().map(|r| &r.io_fallback_reason));
            emit(json, &reports, || {
                render::owners(&spec.name.escaped(), &reports)
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Watchdog(cmd) => crate::watchdog_cmd::run(cmd),
        Command::Cluster {
            target,
            wait,
            fire_timeout,
            rindex,
            json,
        } => {
            let t = DumpTarget::parse(&target)
                .map_err(|e| format!("cluster target {target:?}: {e}"))?;
            let v = crate::cluster_cmd::run(
                Path::new(&t.path),
                t.offset,
                wait.map(std::time::Duration::from_secs),
                fire_timeout,
                rindex,
                cli.io_backend,
            )?;
            emit(json, &v, || crate::cluster_cmd::render(&v))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dump { target, json } => {
            let t =
                DumpTarget::parse(&target).map_err(|e| format!("dump target {target:?}: {e}"))?;
            let report = direct::dump(Path::new(&t.path), t.offset, t.size, cli.io_backend)
                .map_err(|e| e.to_string())?;
            warn_fallback([&report.io_fallback_reason]);
            emit(json, &report, || render::dump(&report))?;
            Ok(if report.has_problems() {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
