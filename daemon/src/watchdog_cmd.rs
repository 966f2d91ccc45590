//! `tenure watchdog probe|test|emulate`: operator commands over tenure-watchdog.
//!
//! `probe` reads sysfs and lists holders without opening anything; it opens (arms, then
//! disarms with the magic close) only with `--open`, never a device sysfs marks `nowayout`,
//! and never while the armed marker says a reset is pending. `test` deliberately starves a
//! watchdog and refuses to run without `--yes`. `emulate` runs the emulated watchdog process.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use tenure_watchdog::device::{self, Holder, SysfsInfo};
use tenure_watchdog::emulated::{self, EmulatorConfig, KillTarget};
use tenure_watchdog::{ArmedWatchdog, WatchdogError, WatchdogSpec};

/// Default directory of the armed marker (cleared by a reboot).
pub const MARKER_DIR_DEFAULT: &str = "/run/tenure";

#[derive(Debug, Subcommand)]
pub enum WatchdogCmd {
    /// List watchdog devices: identity, timeouts, nowayout, who holds them.
    Probe(ProbeArgs),
    /// Arm a watchdog, feed it briefly, then starve it: the machine is reset if it works.
    Test(TestArgs),
    /// Run an emulated watchdog (for tests and machines without one; see docs/watchdog.md).
    Emulate(EmulateArgs),
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Probe these devices instead of every /dev/watchdog*.
    #[arg(long = "device", value_name = "PATH")]
    devices: Vec<PathBuf>,
    /// Directory searched for watchdog* devices.
    #[arg(long, value_name = "DIR", default_value = "/dev")]
    dev_dir: PathBuf,
    /// Open each device to read its identity and check the fire timeout (arms it for a
    /// moment, then disarms it with the magic close). Never done for nowayout devices.
    #[arg(long)]
    open: bool,
    /// Fire timeout checked with --open, in seconds.
    #[arg(long, value_name = "S", default_value_t = 60)]
    fire_timeout: u32,
    /// Directory of the armed marker.
    #[arg(long, value_name = "DIR", default_value = MARKER_DIR_DEFAULT)]
    marker_dir: PathBuf,
    /// One JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The device to test.
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "emulated",
        required_unless_present = "emulated"
    )]
    device: Option<PathBuf>,
    /// Test an emulated watchdog at this socket instead.
    #[arg(long, value_name = "SOCKET")]
    emulated: Option<PathBuf>,
    /// Fire timeout to program, in seconds.
    #[arg(long, value_name = "S", default_value_t = 10)]
    fire_timeout: u32,
    /// Seconds to feed before starving it.
    #[arg(long, value_name = "S", default_value_t = 3)]
    feed_for: u32,
    /// Directory of the armed marker.
    #[arg(long, value_name = "DIR", default_value = MARKER_DIR_DEFAULT)]
    marker_dir: PathBuf,
    /// Yes, reset this machine if the watchdog works.
    #[arg(long)]
    yes: bool,
}

#[derive(Debug, Args)]
pub struct EmulateArgs {
    /// Socket to listen on (the test bed uses `<device>.sock` beside a placeholder device).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// Process group to SIGKILL when it fires (the simulated host).
    #[arg(
        long,
        value_name = "PGID",
        conflicts_with = "kill_cgroup",
        required_unless_present = "kill_cgroup"
    )]
    kill_pgid: Option<i32>,
    /// Cgroup directory whose processes are SIGKILLed when it fires.
    #[arg(long, value_name = "DIR")]
    kill_cgroup: Option<PathBuf>,
    /// File the firing record is appended to (one JSON line, fsync'd).
    #[arg(long, value_name = "FILE")]
    record: PathBuf,
    /// Identity reported to WDIOC_GETSUPPORT (at most 31 bytes).
    #[arg(long, default_value = "tenure emulated watchdog")]
    identity: String,
    /// Timeout when opened, before any SETTIMEOUT.
    #[arg(long, value_name = "S", default_value_t = 60)]
    default_timeout: u32,
    /// Smallest accepted timeout.
    #[arg(long, value_name = "S", default_value_t = 1)]
    min_timeout: u32,
    /// Largest accepted timeout.
    #[arg(long, value_name = "S", default_value_t = 3600)]
    max_timeout: u32,
    /// Fires after this many timeouts without a keepalive (2 emulates iTCO_wdt).
    #[arg(long, value_name = "N", default_value_t = 1)]
    fire_after_timeouts: u32,
    /// Files to remove after firing, as a reboot would (e.g. the armed marker).
    #[arg(long, value_name = "PATH")]
    clear_on_fire: Vec<PathBuf>,
}

#[derive(Debug, serde::Serialize)]
struct ProbeEntry {
    path: PathBuf,
    sysfs: Option<SysfsInfo>,
    holders: Vec<Holder>,
    opened: bool,
    identity: Option<device::Identity>,
    options: Vec<&'static str>,
    fire_timeout_s: Option<u32>,
    programmed_timeout_s: Option<u32>,
    fire_timeout_ok: Option<bool>,
    note: Option<String>,
}

/// Runs a `tenure watchdog` subcommand.
pub fn run(cmd: WatchdogCmd) -> Result<ExitCode, String> {
    match cmd {
        WatchdogCmd::Probe(a) => probe(a),
        WatchdogCmd::Test(a) => test(a),
        WatchdogCmd::Emulate(a) => emulate(a),
    }
}

fn probe(a: ProbeArgs) -> Result<ExitCode, String> {
    let paths = if a.devices.is_empty() {
        device::candidates(&a.dev_dir)
    } else {
        a.devices.clone()
    };
    if paths.is_empty() {
        return Err(format!(
            "no watchdog device in {} (looked for watchdog and watchdogN). Load a driver for \
             the hardware watchdog (or `modprobe softdog`), or run tenured with the emulated \
             watchdog (docs/watchdog.md)",
            a.dev_dir.display()
        ));
    }
    let mut entries = Vec::new();
    for path in paths {
        let sysfs = device::sysfs_info(&path);
        let mut e = ProbeEntry {
            holders: device::holders_of(&path),
            path: path.clone(),
            sysfs: sysfs.clone(),
            opened: false,
            identity: None,
            options: Vec::new(),
            fire_timeout_s: None,
            programmed_timeout_s: None,
            fire_timeout_ok: None,
            note: None,
        };
        if !path.exists() {
            e.note = Some("does not exist".into());
        } else if !a.open {
            e.note = Some("not opened (--open arms it briefly and disarms it cleanly)".into());
        } else if sysfs.as_ref().and_then(|s| s.nowayout) == Some(true) {
            e.note =
                Some("nowayout: opening would arm it until the next reboot; not opened".into());
        } else if !e.holders.is_empty() {
            e.note = Some("held open by another process; not opened".into());
        } else {
            e.fire_timeout_s = Some(a.fire_timeout);
            match open_briefly(&path, a.fire_timeout, &a.marker_dir) {
                Ok((identity, programmed)) => {
                    e.opened = true;
                    e.options = identity.option_names();
                    e.identity = Some(identity);
                    e.programmed_timeout_s = Some(programmed);
                    e.fire_timeout_ok = Some(true);
                }
                Err(WatchdogError::Device(device::DeviceError::TimeoutUnsupported {
                    identity,
                    actual_s,
                    disarmed,
                    ..
                })) => {
                    e.opened = true;
                    e.fire_timeout_ok = Some(false);
                    e.note = Some(format!(
                        "{identity}: cannot fire after {} s (it runs with {actual_s} s){}",
                        a.fire_timeout,
                        if disarmed {
                            ""
                        } else {
                            "; the magic close failed, it may stay armed"
                        }
                    ));
                }
                Err(err) => e.note = Some(err.to_string()),
            }
        }
        entries.push(e);
    }
    if a.json {
        let text = serde_json::to_string_pretty(&entries).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        print!("{}", render_probe(&entries));
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens (through the marker), reads identity and checks the timeout, disarms cleanly.
fn open_briefly(
    path: &Path,
    fire_timeout_s: u32,
    marker_dir: &Path,
) -> Result<(device::Identity, u32), WatchdogError> {
    let spec = WatchdogSpec::Device(path.to_owned());
    let wd = ArmedWatchdog::arm(&spec, fire_timeout_s, marker_dir)?;
    let identity = wd.device_identity().cloned();
    let programmed = wd.programmed_timeout_s();
    wd.disarm()?;
    Ok((
        identity.unwrap_or_else(|| device::Identity {
            identity: String::new(),
            firmware_version: 0,
            options: 0,
        }),
        programmed,
    ))
}

fn render_probe(entries: &[ProbeEntry]) -> String {
    let mut out = String::new();
    for e in entries {
        out.push_str(&format!("{}\n", e.path.display()));
        let ident = e
            .identity
            .as_ref()
            .map(|i| i.identity.clone())
            .or_else(|| e.sysfs.as_ref().and_then(|s| s.identity.clone()));
        if let Some(i) = ident {
            out.push_str(&format!("  identity       {i}\n"));
        }
        if let Some(s) = &e.sysfs {
            let n = |v: Option<u32>| v.map_or("?".to_string(), |v| v.to_string());
            out.push_str(&format!(
                "  sysfs          timeout {} s, min {} s, max {} s, nowayout {}, state {}\n",
                n(s.timeout_s),
                n(s.min_timeout_s),
                n(s.max_timeout_s),
                s.nowayout.map_or("?", |b| if b { "yes" } else { "no" }),
                s.state.as_deref().unwrap_or("?")
            ));
        } else {
            out.push_str("  sysfs          no entry in /sys/class/watchdog\n");
        }
        if !e.options.is_empty() {
            out.push_str(&format!("  options        {}\n", e.options.join(", ")));
        }
        if let (Some(w), Some(p)) = (e.fire_timeout_s, e.programmed_timeout_s) {
            out.push_str(&format!(
                "  fire timeout   {w} s: ok (programmed {p} s{})\n",
                if p != w {
                    ", fires after two timeouts"
                } else {
                    ""
                }
            ));
        }
        if e.holders.is_empty() {
            out.push_str("  held by        nobody\n");
        } else {
            let v: Vec<String> = e.holders.iter().map(ToString::to_string).collect();
            out.push_str(&format!("  held by        {}\n", v.join(", ")));
        }
        if let Some(n) = &e.note {
            out.push_str(&format!("  note           {n}\n"));
        }
    }
    out
}

fn test(a: TestArgs) -> Result<ExitCode, String> {
    let spec = match (&a.device, &a.emulated) {
        (Some(d), _) => WatchdogSpec::Device(d.clone()),
        (None, Some(s)) => WatchdogSpec::Emulated(s.clone()),
        (None, None) => return Err("give --device PATH or --emulated SOCKET".into()),
    };
    eprintln!(
        "WARNING: this arms the watchdog ({spec}) with a fire timeout of {} s, feeds it for {} s \
         and then stops feeding it. If the watchdog works, THIS MACHINE WILL BE RESET (or, for \
         an emulated watchdog, its target killed) about {} s after the last keepalive.",
        a.fire_timeout, a.feed_for, a.fire_timeout
    );
    if !a.yes {
        eprintln!("Not armed. Add --yes to run the test.");
        return Ok(ExitCode::from(2));
    }
    let mut wd =
        ArmedWatchdog::arm(&spec, a.fire_timeout, &a.marker_dir).map_err(|e| e.to_string())?;
    eprintln!(
        "armed: identity {:?}, fire timeout {} s",
        wd.identity(),
        wd.fire_timeout_s()
    );
    for _ in 0..a.feed_for {
        wd.keepalive()
            .map_err(|e| format!("keepalive failed: {e}"))?;
        eprintln!(
            "fed; time left {}",
            wd.time_left_s()
                .map_or("unknown".into(), |s| format!("{s} s"))
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    wd.keepalive()
        .map_err(|e| format!("keepalive failed: {e}"))?;
    let last = Instant::now();
    eprintln!("last keepalive sent; starving it now");
    let give_up =
        Duration::from_secs(u64::from(a.fire_timeout) + u64::from(a.fire_timeout / 2).max(5));
    while last.elapsed() < give_up {
        std::thread::sleep(Duration::from_secs(1));
        eprintln!("not fed for {} s", last.elapsed().as_secs());
    }
    eprintln!(
        "the watchdog did NOT fire {} s after the last keepalive (fire timeout {} s): it does not \
         protect this host. Disarming it.",
        give_up.as_secs(),
        a.fire_timeout
    );
    wd.disarm().map_err(|e| e.to_string())?;
    Ok(ExitCode::from(1))
}

fn emulate(a: EmulateArgs) -> Result<ExitCode, String> {
    let target = match (a.kill_pgid, a.kill_cgroup) {
        (Some(g), _) => KillTarget::ProcessGroup(g),
        (None, Some(c)) => KillTarget::Cgroup(c),
        (None, None) => return Err("give --kill-pgid or --kill-cgroup".into()),
    };
    let mut cfg = EmulatorConfig::new(a.socket, target, a.record);
    cfg.identity = a.identity;
    cfg.default_timeout_s = a.default_timeout;
    cfg.min_timeout_s = a.min_timeout;
    cfg.max_timeout_s = a.max_timeout;
    cfg.fire_after_timeouts = a.fire_after_timeouts;
    cfg.clear_on_fire = a.clear_on_fire;
    tenure_watchdog::sys::ignore_stop_signals().map_err(|e| format!("signals: {e}"))?;
    eprintln!(
        "tenure: emulated watchdog on {}: kills {} when starved, records to {} (SIGTERM is ignored while armed; SHUTDOWN works when idle)",
        cfg.socket.display(),
        cfg.target,
        cfg.record.display()
    );
    match emulated::run(cfg).map_err(|e| e.to_string())? {
        Some(rec) => {
            let line = serde_json::to_string(&rec).map_err(|e| e.to_string())?;
            println!("{line}");
            eprintln!("tenure: emulated watchdog fired: {}", rec.reason);
        }
        None => eprintln!("tenure: emulated watchdog shut down while idle"),
    }
    Ok(ExitCode::SUCCESS)
}
