//! `tenured`: the host daemon. Thin glue: flags and configuration, the embedded default,
//! logging, then [`tenured::server::Server`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use tenure_core::direct::{self, BackendKind, FormatOptions};
use tenure_format::{LockspaceSpec, ResourceSpec};
use tenured::config::{
    Config, CONFIG_PATH_DEFAULT, EMBEDDED_FILE_BYTES, EMBEDDED_LOCKSPACE, EMBEDDED_RESOURCES,
};
use tenured::server::Server;

/// tenured: the tenure lease daemon.
///
/// With no configuration file (neither --config nor /etc/tenure/tenured.toml), it starts on
/// the embedded default: a file-backed lockspace in --data-dir (formatted if absent), host
/// id 1, an emulated watchdog, and the client socket in that directory.
#[derive(Debug, Parser)]
#[command(name = "tenured", version, about, long_about = None)]
struct Flags {
    /// Configuration file (default: /etc/tenure/tenured.toml if it exists).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Data directory of the embedded default.
    #[arg(long, value_name = "DIR", default_value = "tenured-data")]
    data_dir: PathBuf,
    /// Host name written into delta leases.
    #[arg(long, value_name = "NAME")]
    host_name: Option<String>,
    /// io_timeout in seconds.
    #[arg(long, value_name = "S")]
    io_timeout: Option<u64>,
    /// Client socket path.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Run directory (socket, armed marker).
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// State directory (fence records).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Watchdog: device, emulated or none.
    #[arg(long, value_name = "KIND")]
    watchdog: Option<String>,
    /// Watchdog device path.
    #[arg(long, value_name = "PATH")]
    watchdog_device: Option<PathBuf>,
    /// Emulated watchdog socket.
    #[arg(long, value_name = "PATH")]
    emulated_socket: Option<PathBuf>,
    /// Start the emulated watchdog if none listens (targets tenured's process group).
    #[arg(long)]
    spawn_emulator: bool,
    /// Watchdog fire timeout W in seconds.
    #[arg(long, value_name = "S")]
    fire_timeout: Option<u32>,
    /// The W assumed for other hosts, seconds (default 60, sanlock's; never below ours).
    #[arg(long, value_name = "S")]
    other_hosts_fire_timeout: Option<u32>,
    /// Kill grace period in seconds.
    #[arg(long, value_name = "S")]
    kill_grace: Option<u64>,
    /// SIGKILLs before giving up.
    #[arg(long, value_name = "N")]
    sigkill_max: Option<u32>,
    /// Lockspaces to join at start (NAME:HOST_ID:PATH:OFFSET), in addition to the config's.
    #[arg(long = "lockspace", value_name = "SPEC")]
    lockspaces: Vec<String>,
    /// Serve the sanlock-compatible socket (sanlock.sock) for unmodified sanlock clients.
    #[arg(long)]
    sanlock_compat: bool,
    /// Directory of sanlock.sock (default: $SANLOCK_RUN_DIR, else /run/sanlock).
    #[arg(long, value_name = "DIR")]
    sanlock_run_dir: Option<PathBuf>,
    /// I/O backend: auto, io_uring or sync.
    #[arg(long, value_name = "BACKEND", default_value = "auto")]
    io_backend: String,
    /// Log filter (tracing EnvFilter syntax), e.g. info or tenured=debug.
    #[arg(
        long,
        value_name = "FILTER",
        env = "TENURED_LOG",
        default_value = "info"
    )]
    log: String,
    /// Internal: take over from the running tenured through this hand-over socket (started
    /// by its `upgrade`; docs/operations.md "Upgrading tenured").
    #[arg(long, hide = true, value_name = "SOCKET")]
    takeover: Option<PathBuf>,
    /// Internal: run the emulated watchdog for the embedded default.
    #[arg(long, hide = true, num_args = 4, value_names = ["SOCKET", "PGID", "RECORD", "MARKER"])]
    emulate_watchdog: Option<Vec<String>>,
    /// Internal: write tenured's man page and shell completions into DIR, then exit
    /// (packaging).
    #[arg(long, hide = true, value_name = "DIR")]
    assets: Option<PathBuf>,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    if let Some(dir) = &flags.assets {
        use clap::CommandFactory;
        return match tenured::assets::write(Flags::command(), "8", dir) {
            Ok(files) => {
                for f in files {
                    println!("{}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tenured: writing into {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&flags.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(args) = &flags.emulate_watchdog {
        return emulate(args);
    }
    match run(flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tenured: {e}");
            ExitCode::FAILURE
        }
    }
}

fn emulate(args: &[String]) -> ExitCode {
    use tenure_watchdog::emulated::{run, EmulatorConfig, KillTarget};
    let pgid: i32 = match args[1].parse() {
        Ok(p) => p,
        Err(_) => return ExitCode::from(2),
    };
    let mut cfg = EmulatorConfig::new(
        PathBuf::from(&args[0]),
        KillTarget::ProcessGroup(pgid),
        PathBuf::from(&args[2]),
    );
    cfg.clear_on_fire = vec![PathBuf::from(&args[3])];
    if let Err(e) = tenure_watchdog::sys::ignore_stop_signals() {
        eprintln!("tenured watchdog emulator: {e}");
        return ExitCode::FAILURE;
    }
    match run(cfg) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tenured watchdog emulator: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(flags: Flags) -> Result<(), String> {
    let backend = match flags.io_backend.as_str() {
        "auto" => BackendKind::Auto,
        "io_uring" => BackendKind::Uring,
        "sync" => BackendKind::Sync,
        o => return Err(format!("--io-backend {o}: auto, io_uring or sync")),
    };
    let (mut cfg, embedded) = match &flags.config {
        Some(p) => (Config::load(p).map_err(|e| e.to_string())?, false),
        None if Path::new(CONFIG_PATH_DEFAULT).exists() => (
            Config::load(Path::new(CONFIG_PATH_DEFAULT)).map_err(|e| e.to_string())?,
            false,
        ),
        None => {
            let dir = absolute(&flags.data_dir)?;
            (Config::embedded(&dir), true)
        }
    };
    if let Some(v) = flags.host_name {
        cfg.host_name = Some(v);
    }
    if let Some(v) = flags.io_timeout {
        cfg.io_timeout_s = v;
    }
    if let Some(v) = flags.socket {
        cfg.socket = Some(v);
    }
    if let Some(v) = flags.run_dir {
        cfg.run_dir = v;
    }
    if let Some(v) = flags.state_dir {
        cfg.state_dir = v;
    }
    if let Some(v) = flags.watchdog {
        cfg.watchdog.kind = v;
    }
    if let Some(v) = flags.watchdog_device {
        cfg.watchdog.device = v;
    }
    if let Some(v) = flags.emulated_socket {
        cfg.watchdog.emulated_socket = Some(v);
    }
    if flags.spawn_emulator {
        cfg.watchdog.spawn_emulator = true;
    }
    if let Some(v) = flags.fire_timeout {
        cfg.watchdog.fire_timeout_s = v;
    }
    if let Some(v) = flags.other_hosts_fire_timeout {
        cfg.watchdog.other_hosts_fire_timeout_s = Some(v);
    }
    if let Some(v) = flags.kill_grace {
        cfg.supervision.kill_grace_s = v;
    }
    if let Some(v) = flags.sigkill_max {
        cfg.supervision.sigkill_max = v;
    }
    if flags.sanlock_compat {
        cfg.sanlock.enabled = true;
    }
    if let Some(v) = flags.sanlock_run_dir {
        cfg.sanlock.run_dir = Some(v);
    }
    for spec in &flags.lockspaces {
        let s = LockspaceSpec::parse(spec).map_err(|e| format!("--lockspace {spec}: {e}"))?;
        cfg.lockspaces.push(tenured::config::LockspaceConfig {
            name: s.name.escaped(),
            host_id: s.host_id,
            path: PathBuf::from(&s.disk.path),
            offset: tenured::config::OffsetValue::Bytes(s.disk.offset),
        });
    }
    cfg.validate().map_err(|e| e.to_string())?;
    let takeover = flags.takeover.clone();
    if embedded && takeover.is_none() {
        prepare_embedded(&cfg, backend)?;
    }
    let spawned = match &takeover {
        // The emulator the old tenured started goes on; this one shuts it down at a clean exit.
        Some(_) => (cfg.watchdog.kind == "emulated" && cfg.watchdog.spawn_emulator)
            .then(|| cfg.emulated_socket()),
        None if cfg.watchdog.kind == "emulated" && cfg.watchdog.spawn_emulator => {
            spawn_emulator(&cfg)?
        }
        None => None,
    };
    let server = match &takeover {
        Some(sock) => Server::take_over(cfg, backend, sock).map_err(|e| e.to_string())?,
        None => Server::new(cfg, backend).map_err(|e| e.to_string())?,
    };
    eprintln!(
        "tenured: serving on {} (I/O: {})",
        server.socket_path().display(),
        server.backend_name()
    );
    if embedded {
        eprintln!(
            "tenured: try `tenure --socket {} status`",
            server.socket_path().display()
        );
    }
    server.run().map_err(|e| e.to_string())?;
    if let Some(socket) = spawned {
        // Clean exit: every lockspace was left and the watchdog disarmed; the emulator we
        // started is idle and can go.
        if let Err(e) = tenure_watchdog::emulated::shutdown(&socket) {
            eprintln!("tenured: the emulated watchdog did not shut down: {e}");
        }
    }
    Ok(())
}

fn absolute(p: &Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// Creates and formats the embedded default's lease file when it does not exist yet.
fn prepare_embedded(cfg: &Config, backend: BackendKind) -> Result<(), String> {
    let dir = &cfg.state_dir;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let file = &cfg.lockspaces[0].path;
    eprintln!(
        "tenured: no configuration file ({CONFIG_PATH_DEFAULT} absent, no --config): embedded \
         default in {}: lockspace {EMBEDDED_LOCKSPACE} on {} (host id 1), resources r0..r{} at \
         1M..{}M, emulated watchdog (fires after {} s; other hosts assumed to fire as fast: a single-host \
         trial), io_timeout {} s",
        dir.display(),
        file.display(),
        EMBEDDED_RESOURCES - 1,
        EMBEDDED_RESOURCES,
        cfg.watchdog.fire_timeout_s,
        cfg.io_timeout_s
    );
    if file.exists() {
        return Ok(());
    }
    let f = std::fs::File::create(file).map_err(|e| format!("creating {}: {e}", file.display()))?;
    f.set_len(EMBEDDED_FILE_BYTES)
        .map_err(|e| format!("sizing {}: {e}", file.display()))?;
    drop(f);
    let p = tenure_format::spec::escape_field(&file.display().to_string());
    let opts = FormatOptions {
        backend,
        ..FormatOptions::default()
    };
    let ls = LockspaceSpec::parse(&format!("{EMBEDDED_LOCKSPACE}:0:{p}:0"))
        .map_err(|e| e.to_string())?;
    direct::format_lockspace(&ls, opts, cfg.io_timeout_s).map_err(|e| e.to_string())?;
    for r in 0..EMBEDDED_RESOURCES {
        let spec = ResourceSpec::parse(&format!("{EMBEDDED_LOCKSPACE}:r{r}:{p}:{}M", r + 1))
            .map_err(|e| e.to_string())?;
        direct::format_resource(&spec, opts, Some(8)).map_err(|e| e.to_string())?;
    }
    eprintln!("tenured: formatted {}", file.display());
    Ok(())
}

/// Starts the emulated watchdog (a re-execution of this binary in its own process group)
/// unless one already listens on the socket; returns its socket when it started one.
fn spawn_emulator(cfg: &Config) -> Result<Option<PathBuf>, String> {
    use std::os::unix::process::CommandExt;
    let socket = cfg.emulated_socket();
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        return Ok(None);
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let pgid = nix::unistd::getpgrp().as_raw();
    std::fs::create_dir_all(&cfg.run_dir).map_err(|e| format!("{}: {e}", cfg.run_dir.display()))?;
    let record = cfg.state_dir.join("watchdog-fired.log");
    let marker = cfg.run_dir.join(tenure_watchdog::marker::MARKER_FILE);
    let child = std::process::Command::new(exe)
        .arg("--emulate-watchdog")
        .arg(&socket)
        .arg(pgid.to_string())
        .arg(&record)
        .arg(&marker)
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the emulated watchdog: {e}"))?;
    // Wait until it listens (it binds at once).
    for _ in 0..100 {
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            eprintln!(
                "tenured: emulated watchdog pid {} on {} (kills process group {pgid} when starved)",
                child.id(),
                socket.display()
            );
            return Ok(Some(socket));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(format!(
        "the emulated watchdog did not start listening on {}",
        socket.display()
    ))
}
