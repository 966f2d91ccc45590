//! The emulated watchdog: a small separate process that behaves like a watchdog device and,
//! when starved, SIGKILLs a whole simulated host (a process group or a cgroup) and appends a
//! record of the firing to a file.
//!
//! It speaks a line protocol over a Unix stream socket that mirrors the kernel's watchdog
//! API one to one, so the same emulator serves the daemon's `emulated` mode (through
//! [`EmulatedWatchdog`]) and the LD_PRELOAD device test bed (`testbed/wdshim.c`):
//!
//! ```text
//! OPEN <pid>        open the device; arms it (BUSY <pid> while another connection holds it)
//! INFO              OK <options> <firmware_version> <identity...>
//! SETTIMEOUT <s>    OK <s> (and a keepalive) | ERR 22 when outside min..=max
//! GETTIMEOUT        OK <s>
//! GETTIMELEFT       OK <s>
//! KEEPALIVE         OK
//! WRITE V|-         a write(2) to the device: a keepalive; "V" arms the magic close
//! CLOSE             OK disarmed (after WRITE V) | OK armed; the connection ends
//! STATUS            OK idle | OK armed <ms left> holder <pid> connected|orphaned | ...
//! SHUTDOWN          OK (only while idle; ERR 16 while armed)
//! ```
//!
//! Invariants (those of a hardware timer):
//! - Once armed, only a `CLOSE` after `WRITE V` disarms it. A holder that disconnects any
//!   other way — exits, is killed, sends garbage — leaves it armed, and it fires at the old
//!   deadline. Like the kernel, a new `OPEN` of an orphaned armed device is allowed and does
//!   not extend the deadline; tenure's own marker (see `marker`) is what keeps a restarted
//!   daemon from feeding it.
//! - SIGTERM, SIGINT and SIGHUP are ignored; `SHUTDOWN` works only while idle.
//! - The emulator refuses to start when it would kill itself (it is in the target group or
//!   cgroup).
//! - The firing record is appended and fsync'd after the kill, so a record means the host was
//!   killed.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read as _, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::device::{WDIOF_KEEPALIVEPING, WDIOF_MAGICCLOSE, WDIOF_SETTIMEOUT};

/// Longest protocol line accepted (bytes, newline included).
pub const LINE_MAX_BYTES: usize = 256;
/// Most simultaneous connections; more are closed at once.
pub const CONNECTIONS_MAX: usize = 16;

/// What the emulator kills when it fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KillTarget {
    /// Every process of this process group.
    ProcessGroup(i32),
    /// Every process of this cgroup directory (v2 `cgroup.kill`, or v1 `cgroup.procs`).
    Cgroup(PathBuf),
}

impl std::fmt::Display for KillTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KillTarget::ProcessGroup(g) => write!(f, "process group {g}"),
            KillTarget::Cgroup(p) => write!(f, "cgroup {}", p.display()),
        }
    }
}

/// The emulated device's properties and what it does when it fires.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Listening socket path (created; an existing socket file is replaced).
    pub socket: PathBuf,
    /// What to kill.
    pub target: KillTarget,
    /// File the firing record is appended to.
    pub record: PathBuf,
    /// Identity reported by INFO.
    pub identity: String,
    /// Firmware version reported by INFO.
    pub firmware_version: u32,
    /// WDIOF_* options reported by INFO.
    pub options: u32,
    /// Timeout when opened, before any SETTIMEOUT.
    pub default_timeout_s: u32,
    /// Smallest timeout SETTIMEOUT accepts.
    pub min_timeout_s: u32,
    /// Largest timeout SETTIMEOUT accepts.
    pub max_timeout_s: u32,
    /// The device fires after this many timeouts without a keepalive (iTCO_wdt: 2).
    pub fire_after_timeouts: u32,
    /// Files removed after firing — what a reboot would clear (e.g. the armed marker).
    pub clear_on_fire: Vec<PathBuf>,
}

impl EmulatorConfig {
    /// Defaults of a plain software watchdog (60 s, 1..=3600 s, fires after one timeout).
    pub fn new(socket: PathBuf, target: KillTarget, record: PathBuf) -> Self {
        Self {
            socket,
            target,
            record,
            identity: "tenure emulated watchdog".into(),
            firmware_version: 0,
            options: WDIOF_SETTIMEOUT | WDIOF_MAGICCLOSE | WDIOF_KEEPALIVEPING,
            default_timeout_s: 60,
            min_timeout_s: 1,
            max_timeout_s: 3600,
            fire_after_timeouts: 1,
            clear_on_fire: Vec::new(),
        }
    }
}

/// Why the emulator could not run.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// Bad configuration (e.g. it would kill itself).
    #[error("emulated watchdog: {0}")]
    Config(String),
    /// Socket or record file failure.
    #[error("emulated watchdog: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EmulatorError {
    let what = what.into();
    move |source| EmulatorError::Io { what, source }
}

/// The record appended when the emulator fires (one JSON line).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FireRecord {
    /// Wall-clock time of the firing, ms since the Unix epoch.
    pub fired_at_unix_ms: u64,
    /// One sentence: why it fired.
    pub reason: String,
    /// Timeout programmed (s).
    pub timeout_s: u32,
    /// Timeouts before firing (2 for an iTCO-like device).
    pub fire_after_timeouts: u32,
    /// `timeout_s * fire_after_timeouts`.
    pub effective_timeout_s: u32,
    /// Milliseconds from the last keepalive to the firing.
    pub since_last_keepalive_ms: u64,
    /// Pid that armed (opened) the device last.
    pub holder_pid: Option<i32>,
    /// "connected", "closed without magic close" or "connection lost".
    pub holder: String,
    /// What was killed.
    pub target: String,
    /// Pids found in the target and sent SIGKILL.
    pub killed_pids: Vec<i32>,
}

/// Reads every record of a fire-record file (missing file: none). Lines that do not parse
/// are returned as errors with their line number, never a panic.
pub fn read_fire_records(path: &Path) -> Vec<Result<FireRecord, String>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HolderState {
    Connected,
    ClosedUnclean,
    Lost,
}

#[derive(Debug)]
struct Armed {
    timeout_s: u32,
    last_ping: Instant,
    holder_pid: Option<i32>,
    holder_conn: Option<u64>,
    holder_state: HolderState,
    expect_close: bool,
}

#[derive(Debug, Default)]
struct State {
    armed: Option<Armed>,
    fired: bool,
    shutdown: bool,
    timeout_s: u32,
    connections: usize,
    next_conn: u64,
}

struct Shared {
    cfg: EmulatorConfig,
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock means a connection thread panicked; the timer state is still
        // consistent (every update is a single assignment), so keep the timer running.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Armed {
    fn deadline(&self, fire_after: u32) -> Instant {
        self.last_ping + Duration::from_secs(u64::from(self.timeout_s) * u64::from(fire_after))
    }
}

/// Runs the emulator until it fires (returns the record) or is shut down while idle
/// (returns `None`). Call [`crate::sys::ignore_stop_signals`] first in a dedicated process.
pub fn run(cfg: EmulatorConfig) -> Result<Option<FireRecord>, EmulatorError> {
    check_not_in_target(&cfg.target)?;
    if cfg.min_timeout_s == 0
        || cfg.min_timeout_s > cfg.max_timeout_s
        || cfg.fire_after_timeouts == 0
        || !(cfg.min_timeout_s..=cfg.max_timeout_s).contains(&cfg.default_timeout_s)
    {
        return Err(EmulatorError::Config(format!(
            "timeouts must satisfy 1 <= min ({}) <= default ({}) <= max ({}), fire after >= 1 ({})",
            cfg.min_timeout_s, cfg.default_timeout_s, cfg.max_timeout_s, cfg.fire_after_timeouts
        )));
    }
    if cfg.identity.len() > 31 || cfg.identity.contains('\n') {
        return Err(EmulatorError::Config(
            "identity must be one line of at most 31 bytes".into(),
        ));
    }
    if cfg.socket.exists() {
        std::fs::remove_file(&cfg.socket).map_err(io_err(format!(
            "removing stale socket {}",
            cfg.socket.display()
        )))?;
    }
    let listener = UnixListener::bind(&cfg.socket)
        .map_err(io_err(format!("binding {}", cfg.socket.display())))?;
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            timeout_s: cfg.default_timeout_s,
            ..State::default()
        }),
        cfg,
        cv: Condvar::new(),
    });
    {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("wdemu-accept".into())
            .spawn(move || accept_loop(listener, shared))
            .map_err(io_err("spawning the accept thread"))?;
    }
    let result = timer_loop(&shared);
    let _ = std::fs::remove_file(&shared.cfg.socket);
    // Wake the accept thread so it sees the end (it exits on the next connection).
    let _ = UnixStream::connect(&shared.cfg.socket);
    result
}

fn timer_loop(shared: &Shared) -> Result<Option<FireRecord>, EmulatorError> {
    let fire_after = shared.cfg.fire_after_timeouts;
    let mut st = shared.lock();
    loop {
        if st.shutdown {
            return Ok(None);
        }
        let now = Instant::now();
        match &st.armed {
            None => {
                st = shared
                    .cv
                    .wait_timeout(st, Duration::from_secs(1))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            Some(a) if a.deadline(fire_after) > now => {
                let wait = a.deadline(fire_after) - now;
                st = shared
                    .cv
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            Some(a) => {
                let since = now.duration_since(a.last_ping);
                let holder = match a.holder_state {
                    HolderState::Connected => "connected",
                    HolderState::ClosedUnclean => "closed without magic close",
                    HolderState::Lost => "connection lost",
                };
                let timeout_s = a.timeout_s;
                let holder_pid = a.holder_pid;
                st.fired = true;
                // Killed with the lock held: no client gets another reply before its host is
                // dead, as nothing answers after a hardware reset.
                let killed = kill_target(&shared.cfg.target);
                drop(st);
                let rec = FireRecord {
                    fired_at_unix_ms: crate::unix_ms(),
                    reason: format!(
                        "not fed for {} ms (timeout {} s x {}); holder {}",
                        since.as_millis(),
                        timeout_s,
                        fire_after,
                        holder
                    ),
                    timeout_s,
                    fire_after_timeouts: fire_after,
                    effective_timeout_s: timeout_s * fire_after,
                    since_last_keepalive_ms: since.as_millis() as u64,
                    holder_pid,
                    holder: holder.into(),
                    target: shared.cfg.target.to_string(),
                    killed_pids: killed,
                };
                append_record(&shared.cfg.record, &rec)?;
                for p in &shared.cfg.clear_on_fire {
                    let _ = std::fs::remove_file(p);
                }
                return Ok(Some(rec));
            }
        }
    }
}

fn append_record(path: &Path, rec: &FireRecord) -> Result<(), EmulatorError> {
    let mut line = serde_json::to_string(rec).map_err(|e| EmulatorError::Io {
        what: "encoding the record".into(),
        source: std::io::Error::other(e),
    })?;
    line.push('\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    f.write_all(line.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err(format!("writing {}", path.display())))
}

/// Pids whose process group is `pgid` (from /proc/*/stat).
pub fn pids_in_group(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some((_, pgrp)) = stat_ppid_pgrp(pid) {
            if pgrp == pgid {
                out.push(pid);
            }
        }
    }
    out
}

/// (ppid, pgrp) of a process from /proc/PID/stat (the comm field may contain spaces and
/// parentheses, so fields are counted after the last ')').
fn stat_ppid_pgrp(pid: i32) -> Option<(i32, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let _state = f.next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((ppid, pgrp))
}

fn cgroup_pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn check_not_in_target(target: &KillTarget) -> Result<(), EmulatorError> {
    let me = std::process::id() as i32;
    match target {
        KillTarget::ProcessGroup(g) => {
            if *g <= 1 {
                return Err(EmulatorError::Config(format!(
                    "process group {g} is not a simulated host"
                )));
            }
            if stat_ppid_pgrp(me).map(|(_, p)| p) == Some(*g) {
                return Err(EmulatorError::Config(format!(
                    "the emulator is itself in process group {g}; start it in its own group"
                )));
            }
        }
        KillTarget::Cgroup(dir) => {
            if !dir.join("cgroup.procs").exists() {
                return Err(EmulatorError::Config(format!(
                    "{} is not a cgroup directory (no cgroup.procs)",
                    dir.display()
                )));
            }
            if cgroup_pids(dir).contains(&me) {
                return Err(EmulatorError::Config(format!(
                    "the emulator is itself in cgroup {}",
                    dir.display()
                )));
            }
        }
    }
    Ok(())
}

/// SIGKILLs every process of the target; returns the pids it found there.
fn kill_target(target: &KillTarget) -> Vec<i32> {
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::Pid;
    match target {
        KillTarget::ProcessGroup(g) => {
            let pids = pids_in_group(*g);
            let _ = killpg(Pid::from_raw(*g), Signal::SIGKILL);
            pids
        }
        KillTarget::Cgroup(dir) => {
            let mut seen = Vec::new();
            let kill_file = dir.join("cgroup.kill");
            // Bounded: a fork bomb inside the cgroup cannot keep the emulator here forever.
            for _ in 0..100 {
                let pids = cgroup_pids(dir);
                if pids.is_empty() {
                    break;
                }
                for &p in &pids {
                    if !seen.contains(&p) {
                        seen.push(p);
                    }
                }
                if kill_file.exists() {
                    let _ = std::fs::write(&kill_file, "1");
                } else {
                    for p in pids {
                        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            seen
        }
    }
}

fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        {
            let st = shared.lock();
            if st.fired || st.shutdown {
                return;
            }
        }
        let Ok(conn) = conn else { continue };
        let id = {
            let mut st = shared.lock();
            if st.connections >= CONNECTIONS_MAX {
                drop(st);
                let _ = (&conn).write_all(b"ERR 24 too many connections\n");
                continue;
            }
            st.connections += 1;
            st.next_conn += 1;
            st.next_conn
        };
        let shared2 = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("wdemu-conn".into())
            .spawn(move || {
                serve(&shared2, id, conn);
                let mut st = shared2.lock();
                st.connections -= 1;
                if let Some(a) = st.armed.as_mut() {
                    if a.holder_conn == Some(id) {
                        a.holder_conn = None;
                        if a.holder_state == HolderState::Connected {
                            a.holder_state = HolderState::Lost;
                        }
                    }
                }
            });
        if spawned.is_err() {
            shared.lock().connections -= 1;
        }
    }
}

fn serve(shared: &Shared, id: u64, conn: UnixStream) {
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut out = write_half;
    let mut reader = BufReader::with_capacity(LINE_MAX_BYTES, conn);
    let mut line = Vec::with_capacity(LINE_MAX_BYTES);
    loop {
        line.clear();
        // Read at most LINE_MAX_BYTES: a longer line ends the connection (unclean).
        let n = match (&mut reader)
            .take(LINE_MAX_BYTES as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(n) => n,
            Err(_) => return,
        };
        if n == 0 {
            return;
        }
        if line.last() != Some(&b'\n') {
            let _ = out.write_all(b"ERR 7 line too long\n");
            return;
        }
        let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
        let (reply, end) = handle(shared, id, text.trim_end_matches('\r'));
        if out.write_all(reply.as_bytes()).is_err() || end {
            return;
        }
    }
}

/// Handles one command; returns the reply line and whether the connection ends.
fn handle(shared: &Shared, id: u64, cmd: &str) -> (String, bool) {
    let fire_after = shared.cfg.fire_after_timeouts;
    let mut st = shared.lock();
    if st.fired {
        return ("ERR 19 fired\n".into(), true);
    }
    let mut words = cmd.split_ascii_whitespace();
    let verb = words.next().unwrap_or("");
    let arg = words.next();
    let is_holder = st.armed.as_ref().is_some_and(|a| a.holder_conn == Some(id));
    let now = Instant::now();
    let reply = match verb {
        "OPEN" => {
            let pid = arg.and_then(|s| s.parse::<i32>().ok());
            let timeout_s = st.timeout_s;
            match st.armed.as_mut() {
                Some(a) if a.holder_conn.is_some() => {
                    format!("BUSY {}\n", a.holder_pid.unwrap_or(0))
                }
                Some(a) => {
                    // Re-open of an orphaned armed timer: allowed, deadline unchanged.
                    a.holder_conn = Some(id);
                    a.holder_pid = pid;
                    a.holder_state = HolderState::Connected;
                    a.expect_close = false;
                    "OK\n".into()
                }
                None => {
                    st.armed = Some(Armed {
                        timeout_s,
                        last_ping: now,
                        holder_pid: pid,
                        holder_conn: Some(id),
                        holder_state: HolderState::Connected,
                        expect_close: false,
                    });
                    shared.cv.notify_all();
                    "OK\n".into()
                }
            }
        }
        "INFO" => format!(
            "OK {} {} {}\n",
            shared.cfg.options, shared.cfg.firmware_version, shared.cfg.identity
        ),
        "GETTIMEOUT" => format!("OK {}\n", st.timeout_s),
        "STATUS" => match &st.armed {
            None => "OK idle\n".into(),
            Some(a) => format!(
                "OK armed {} holder {} {}\n",
                a.deadline(fire_after)
                    .saturating_duration_since(now)
                    .as_millis(),
                a.holder_pid.unwrap_or(0),
                if a.holder_conn.is_some() {
                    "connected"
                } else {
                    "orphaned"
                }
            ),
        },
        "SHUTDOWN" => {
            if st.armed.is_some() {
                "ERR 16 armed\n".into()
            } else {
                st.shutdown = true;
                shared.cv.notify_all();
                return ("OK\n".into(), true);
            }
        }
        _ if !is_holder => {
            if matches!(
                verb,
                "SETTIMEOUT" | "GETTIMELEFT" | "KEEPALIVE" | "WRITE" | "CLOSE"
            ) {
                "ERR 9 not open\n".into()
            } else {
                "ERR 22 unknown command\n".into()
            }
        }
        "SETTIMEOUT" => match arg.and_then(|s| s.parse::<u32>().ok()) {
            Some(t) if (shared.cfg.min_timeout_s..=shared.cfg.max_timeout_s).contains(&t) => {
                st.timeout_s = t;
                if let Some(a) = st.armed.as_mut() {
                    a.timeout_s = t;
                    a.last_ping = now;
                }
                shared.cv.notify_all();
                format!("OK {t}\n")
            }
            _ => "ERR 22 timeout out of range\n".into(),
        },
        "GETTIMELEFT" => {
            let left = st
                .armed
                .as_ref()
                .map(|a| a.deadline(fire_after).saturating_duration_since(now))
                .unwrap_or_default();
            format!("OK {}\n", left.as_secs())
        }
        "KEEPALIVE" | "WRITE" => {
            if let Some(a) = st.armed.as_mut() {
                a.last_ping = now;
                if verb == "WRITE" {
                    a.expect_close = arg == Some("V");
                }
            }
            shared.cv.notify_all();
            "OK\n".into()
        }
        "CLOSE" => {
            let clean = st.armed.as_ref().is_some_and(|a| a.expect_close);
            if clean {
                st.armed = None;
                shared.cv.notify_all();
                return ("OK disarmed\n".into(), true);
            }
            if let Some(a) = st.armed.as_mut() {
                a.holder_conn = None;
                a.holder_state = HolderState::ClosedUnclean;
            }
            return ("OK armed\n".into(), true);
        }
        _ => "ERR 22 unknown command\n".into(),
    };
    (reply, false)
}

/// Errors of the emulated-watchdog client.
#[derive(Debug, thiserror::Error)]
pub enum EmulatedError {
    /// The emulator is not listening.
    #[error("emulated watchdog at {socket}: cannot connect: {source}")]
    Connect {
        /// Socket path.
        socket: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// Another process holds it.
    #[error("emulated watchdog at {socket} is busy: held by pid {pid}")]
    Busy {
        /// Socket path.
        socket: PathBuf,
        /// Holder pid.
        pid: i32,
    },
    /// The emulator answered with an error or something unexpected.
    #[error("emulated watchdog at {socket}: {command} answered {reply:?}")]
    Protocol {
        /// Socket path.
        socket: PathBuf,
        /// The command sent.
        command: String,
        /// The reply.
        reply: String,
    },
    /// The emulator refused the timeout.
    #[error("emulated watchdog at {socket} cannot fire after {fire_timeout_s} s: {reply}")]
    TimeoutUnsupported {
        /// Socket path.
        socket: PathBuf,
        /// Requested.
        fire_timeout_s: u32,
        /// What it answered.
        reply: String,
    },
    /// Socket I/O failed (the emulator died or hung for more than the reply timeout).
    #[error("emulated watchdog at {socket}: {source}")]
    Io {
        /// Socket path.
        socket: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
}

/// How long the client waits for a reply before calling the emulator hung.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// A client connection to an emulator: the daemon's `emulated` watchdog.
#[derive(Debug)]
pub struct EmulatedWatchdog {
    socket: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    fire_timeout_s: u32,
    identity: String,
}

impl EmulatedWatchdog {
    /// A connection that has not opened the device (status and shutdown use it as is).
    fn connect(socket: &Path) -> Result<Self, EmulatedError> {
        let s = UnixStream::connect(socket).map_err(|source| EmulatedError::Connect {
            socket: socket.to_owned(),
            source,
        })?;
        let io = |source| EmulatedError::Io {
            socket: socket.to_owned(),
            source,
        };
        s.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
        s.set_write_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
        let writer = s.try_clone().map_err(io)?;
        Ok(Self {
            socket: socket.to_owned(),
            reader: BufReader::new(s),
            writer,
            fire_timeout_s: 0,
            identity: String::new(),
        })
    }

    /// The connection of a daemon that hands over to its successor (a duplicate of
    /// [`EmulatedWatchdog::fd`], passed over a socket): it holds the device already; the
    /// timeout is checked and it is fed.
    pub fn from_fd(
        socket: &Path,
        fd: std::os::fd::OwnedFd,
        fire_timeout_s: u32,
    ) -> Result<Self, EmulatedError> {
        let s = UnixStream::from(fd);
        let io = |source| EmulatedError::Io {
            socket: socket.to_owned(),
            source,
        };
        s.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
        s.set_write_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
        let writer = s.try_clone().map_err(io)?;
        let mut me = Self {
            socket: socket.to_owned(),
            reader: BufReader::new(s),
            writer,
            fire_timeout_s,
            identity: String::new(),
        };
        let info = me.call("INFO")?;
        me.identity = info.splitn(4, ' ').nth(3).unwrap_or("").to_owned();
        let got = me.call("GETTIMEOUT")?;
        if got != format!("OK {fire_timeout_s}") {
            return Err(EmulatedError::TimeoutUnsupported {
                socket: socket.to_owned(),
                fire_timeout_s,
                reply: format!("GETTIMEOUT: {got}"),
            });
        }
        me.keepalive()?;
        Ok(me)
    }

    /// A duplicate of the connection (for a successor). Neither process may talk on it while
    /// the other does: the predecessor stops before it hands it over.
    pub fn fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.writer.as_fd().try_clone_to_owned()
    }

    /// Opens (arms) the emulated device and programs `fire_timeout_s`, verified by reading
    /// it back. A refused timeout disarms it again.
    pub fn open(socket: &Path, fire_timeout_s: u32) -> Result<Self, EmulatedError> {
        let mut me = Self::connect(socket)?;
        me.fire_timeout_s = fire_timeout_s;
        let r = me.call(&format!("OPEN {}", std::process::id()))?;
        if let Some(pid) = r.strip_prefix("BUSY ") {
            return Err(EmulatedError::Busy {
                socket: socket.to_owned(),
                pid: pid.trim().parse().unwrap_or(0),
            });
        }
        me.expect_ok("OPEN", &r)?;
        let info = me.call("INFO")?;
        me.identity = info.splitn(4, ' ').nth(3).unwrap_or("").to_owned();
        let set = me.call(&format!("SETTIMEOUT {fire_timeout_s}"))?;
        let got = me.call("GETTIMEOUT")?;
        if set != format!("OK {fire_timeout_s}") || got != format!("OK {fire_timeout_s}") {
            let _ = me.disarm_inner();
            return Err(EmulatedError::TimeoutUnsupported {
                socket: socket.to_owned(),
                fire_timeout_s,
                reply: format!("SETTIMEOUT: {set}; GETTIMEOUT: {got}"),
            });
        }
        Ok(me)
    }

    fn call(&mut self, cmd: &str) -> Result<String, EmulatedError> {
        let io = |source| EmulatedError::Io {
            socket: self.socket.clone(),
            source,
        };
        self.writer
            .write_all(format!("{cmd}\n").as_bytes())
            .map_err(io)?;
        let mut line = String::new();
        let n = (&mut self.reader)
            .take(LINE_MAX_BYTES as u64)
            .read_line(&mut line)
            .map_err(|source| EmulatedError::Io {
                socket: self.socket.clone(),
                source,
            })?;
        if n == 0 {
            return Err(EmulatedError::Io {
                socket: self.socket.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the emulator closed the connection",
                ),
            });
        }
        Ok(line.trim_end().to_owned())
    }

    fn expect_ok(&self, command: &str, reply: &str) -> Result<(), EmulatedError> {
        if reply == "OK" || reply.starts_with("OK ") {
            Ok(())
        } else {
            Err(EmulatedError::Protocol {
                socket: self.socket.clone(),
                command: command.into(),
                reply: reply.into(),
            })
        }
    }

    /// Feeds it.
    pub fn keepalive(&mut self) -> Result<(), EmulatedError> {
        let r = self.call("KEEPALIVE")?;
        self.expect_ok("KEEPALIVE", &r)
    }

    /// Seconds left before it fires.
    pub fn time_left_s(&mut self) -> Option<i32> {
        let r = self.call("GETTIMELEFT").ok()?;
        r.strip_prefix("OK ")?.parse().ok()
    }

    /// The identity it reported.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The fire timeout it was programmed with.
    pub fn fire_timeout_s(&self) -> u32 {
        self.fire_timeout_s
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn disarm_inner(&mut self) -> Result<(), EmulatedError> {
        let r = self.call("WRITE V")?;
        self.expect_ok("WRITE V", &r)?;
        let r = self.call("CLOSE")?;
        if r == "OK disarmed" {
            Ok(())
        } else {
            Err(EmulatedError::Protocol {
                socket: self.socket.clone(),
                command: "CLOSE".into(),
                reply: r,
            })
        }
    }

    /// Disarms cleanly (magic close). Dropping without this leaves it armed.
    pub fn disarm(mut self) -> Result<(), EmulatedError> {
        self.disarm_inner()
    }
}

/// Asks an emulator for its state line ("idle", "armed <ms> holder <pid> ...").
pub fn query_status(socket: &Path) -> Result<String, EmulatedError> {
    let mut c = EmulatedWatchdog::connect(socket)?;
    let r = c.call("STATUS")?;
    match r.strip_prefix("OK ") {
        Some(s) => Ok(s.to_owned()),
        None => Err(EmulatedError::Protocol {
            socket: socket.to_owned(),
            command: "STATUS".into(),
            reply: r,
        }),
    }
}

/// Asks an idle emulator to exit.
pub fn shutdown(socket: &Path) -> Result<(), EmulatedError> {
    let mut c = EmulatedWatchdog::connect(socket)?;
    let r = c.call("SHUTDOWN")?;
    c.expect_ok("SHUTDOWN", &r)
}
